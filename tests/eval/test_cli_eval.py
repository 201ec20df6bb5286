"""``dinofeat eval tapvid|spair`` end to end on generated data in the official formats, with a
random-weight model; the numbers must equal an independent computation done here."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from test_spair import make_spair
from test_tapvid import PanVideo, loop_metrics

from conftest import fill_disk, smooth_vit
from dinofeat.cli import main
from dinofeat.features.extractor import Extractor


@pytest.fixture(scope="module")
def model_args(tmp_path_factory) -> list[str]:
    """A full ViT-S/14 checkpoint: the smooth content-only model (12 blocks, layer scale 0)."""
    path = tmp_path_factory.mktemp("weights") / "smooth_vits14.pth"
    torch.save(smooth_vit(depth=None, layerscale=0.0).state_dict(), path)
    return ["--weights", str(path), "--device", "cpu", "--precision", "fp32", "--batch-size", "4"]


@pytest.fixture(scope="module")
def pan(photo):
    return PanVideo(photo, frames=6, size_wh=(112, 84), origin=(150, 100), step=(4, 2), occluder=(40, 30, 60, 50))


@pytest.fixture(scope="module")
def davis(tmp_path_factory, pan):
    path = tmp_path_factory.mktemp("tapvid") / "davis.pkl"
    with path.open("wb") as handle:
        pickle.dump({"pan": pan.record()}, handle)
    return path


def _independent_tapvid(pan, model_args, protocol: str) -> dict:
    """What the command must report, computed here: frames resized to 256x256 with Lanczos, queries
    at each track's first visible frame (or every 5th frame where visible), dinofeat's tracker both
    ways from each query, the reference metrics by an independent loop."""
    from dinofeat.tracking import track_both_ways
    from dinofeat.tracks import Tracks

    record = pan.record()
    frames = np.stack([np.asarray(Image.fromarray(f).resize((256, 256), Image.LANCZOS)) for f in record["video"]])
    points = record["points"].astype(np.float64) * 256  # the reference raster, image spans [0, 256]
    occluded = record["occluded"]
    queries, targets, target_occ = [], [], []
    for n in range(len(points)):
        visible = np.flatnonzero(~occluded[n])
        chosen = visible[:1] if protocol == "first" else [t for t in visible if t % 5 == 0]
        for t in chosen:
            queries.append([t, points[n, t, 1], points[n, t, 0]])
            targets.append(points[n])
            target_occ.append(occluded[n])
    queries = np.array(queries)
    extractor = Extractor(
        smooth_vit(depth=None, layerscale=0.0), resolution=256, device="cpu", precision="fp32", batch_size=4
    )
    txy = np.column_stack([queries[:, 0], queries[:, 2] - 0.5, queries[:, 1] - 0.5])  # raster -> pixels
    tracks = Tracks.from_steps(txy, list(track_both_ways(enumerate(frames), txy, extractor)))
    pred = tracks.points_xy.permute(1, 0, 2).numpy().astype(np.float64) + 0.5
    return loop_metrics(queries, np.array(target_occ), np.array(targets), ~tracks.visible.T.numpy(), pred, protocol)


@pytest.mark.parametrize("protocol", ["first", "strided"])
def test_tapvid_on_a_generated_pickle_equals_an_independent_computation(
    tmp_path, davis, pan, model_args, capsys, protocol
):
    out = tmp_path / "eval.json"
    assert main(["eval", "tapvid", str(davis), "--protocol", protocol, "--json", str(out), *model_args]) == 0
    doc = json.loads(out.read_text())
    assert doc["protocol"] == protocol and doc["resolution"] == [256, 256] and doc["model"] == "dinov2_vits14"
    (video,) = doc["videos"]
    assert video["name"] == "pan" and len(video["pred_tracks"]) == len(video["query_points"])
    assert all(len(track) == pan.num_frames for track in video["pred_tracks"])
    expected = _independent_tapvid(pan, model_args, protocol)
    for key, value in expected.items():
        got = doc["mean"][key]
        assert (got is None and math.isnan(value)) or got == pytest.approx(value, abs=1e-9), key
    out_text = capsys.readouterr().out
    assert "pan" in out_text and "AJ" in out_text


def test_tapvid_sweep_reports_aj_per_setting(tmp_path, davis, model_args, capsys):
    out = tmp_path / "sweep.json"
    argv = ["eval", "tapvid", str(davis), "--sweep", "min_score=0.5:0.9:0.2", "--json", str(out), *model_args]
    assert main(argv) == 0
    doc = json.loads(out.read_text())["sweep"]
    assert [run["settings"]["min_score"] for run in doc["runs"]] == [0.5, 0.7, 0.9]
    assert all(0 <= run["mean"]["average_jaccard"] <= 1 for run in doc["runs"])
    assert "min_score" in capsys.readouterr().out


def test_the_sweep_document_states_the_raster_the_sweep_ran_with(tmp_path, davis, model_args, monkeypatch):
    """The document is the library's (evaluation.tapvid_sweep_json): its resolution is the one the
    frames were resized to, not a copy of it in the command."""
    import dinofeat.eval.evaluation

    monkeypatch.setattr(dinofeat.eval.evaluation, "DEFAULT_RESOLUTION", (128, 128))
    out = tmp_path / "sweep.json"
    argv = ["eval", "tapvid", str(davis), "--sweep", "min_score=0.5", "--json", str(out), "-q", *model_args]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert list(doc) == ["protocol", "resolution", "model", "sweep"]
    assert (doc["protocol"], doc["resolution"], doc["model"]) == ("first", [128, 128], "dinov2_vits14")
    assert main([*argv, "--full-resolution", "--protocol", "strided"]) == 0
    doc = json.loads(out.read_text())
    assert (doc["protocol"], doc["resolution"]) == ("strided", "full")


@pytest.fixture(scope="module")
def spair(tmp_path_factory):
    return make_spair(tmp_path_factory.mktemp("spair"))


def test_spair_on_a_generated_folder_equals_an_independent_computation(tmp_path, spair, model_args):
    from dinofeat.eval.spair import read_spair
    from dinofeat.matching import match_features

    out = tmp_path / "spair.json"
    assert (
        main(
            [
                "eval",
                "spair",
                str(spair),
                "--alpha",
                "0.1",
                "--alpha",
                "0.05",
                "--resolution",
                "112",
                "--json",
                str(out),
                *model_args,
            ]
        )
        == 0
    )
    doc = json.loads(out.read_text())
    assert doc["alphas"] == [0.1, 0.05]
    extractor = Extractor(smooth_vit(depth=None, layerscale=0.0), resolution=112, device="cpu", precision="fp32")
    correct = {0.1: [], 0.05: []}
    per_image = {0.1: [], 0.05: []}
    for pair in read_spair(spair):
        a, b = pair.load_images()
        fa, fb = extractor.extract_arrays([a, b])
        w, h = fa.image_size_wh
        src = np.stack(
            [np.clip(pair.source_kps[:, 0], -0.5, w - 0.5), np.clip(pair.source_kps[:, 1], -0.5, h - 0.5)], 1
        )
        pred = match_features(fa, fb, src).target_xy.double().numpy()
        x1, y1, x2, y2 = pair.target_bbox
        distance = np.linalg.norm(pred - pair.target_kps, axis=1)
        for alpha in (0.1, 0.05):
            ok = distance <= alpha * max(x2 - x1, y2 - y1)
            correct[alpha] += ok.tolist()
            per_image[alpha].append(ok.mean())
    for alpha in (0.1, 0.05):
        assert doc["overall"]["per_point"][f"PCK@{alpha:g}"] == pytest.approx(np.mean(correct[alpha]), abs=1e-9)
        assert doc["overall"]["per_image"][f"PCK@{alpha:g}"] == pytest.approx(np.mean(per_image[alpha]), abs=1e-9)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "tapvid", "{tmp}/missing.pkl"], "not found"),
        (["eval", "tapvid", "{tmp}/wrong.pkl"], "has no 'occluded'"),
        (["eval", "tapvid", "{tmp}/wrong.pkl", "--sweep", "min_score"], "sweep"),
        (["eval", "tapvid", "{tmp}/wrong.pkl", "--sweep", "speed=1:2:1"], "cannot sweep speed"),
        (["eval", "tapvid", "{tmp}/wrong.pkl", "--protocol", "last"], "--protocol"),
        (["eval", "spair", "{tmp}"], "no SPair-71k annotations"),
        (["eval", "spair", "{tmp}/missing"], "not found"),
        (["eval", "spair", "{tmp}", "--alpha", "2"], "--alpha"),
        (["eval", "spair", "{tmp}", "--split", "dev"], "--split"),
        (["eval"], "BENCHMARK"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, model_args, capsys, argv, message):
    with (tmp_path / "wrong.pkl").open("wb") as handle:
        pickle.dump({"v": {"video": np.zeros((2, 4, 4, 3), np.uint8), "points": np.zeros((3, 2))}}, handle)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main([*argv, *model_args] if len(argv) > 1 else argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_eval_on_a_full_disk_is_one_line_and_leaves_nothing(small_disk, davis, vits14_checkpoint, capsys):
    model = ["--weights", str(vits14_checkpoint), "--device", "cpu", "--precision", "fp32", "--resolution", "56"]
    fill_disk(small_disk)
    out = small_disk / "eval.json"
    assert main(["eval", "tapvid", str(davis), "--json", str(out), "-q", *model]) == 2
    assert capsys.readouterr().err.splitlines() == [f"dinofeat eval: error: no space left on device writing {out}"]
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
