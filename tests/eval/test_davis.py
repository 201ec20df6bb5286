"""``dinofeat eval davis`` on a generated DAVIS 2017 folder (textured objects moving over a textured
background, indexed PNG annotations), with the tests' smooth random model; the driver with oracle
segmenters; the folder's checks; the official results layout."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import fill_disk, smooth_vit
from dinofeat.cli import main
from dinofeat.errors import InputError
from dinofeat.eval.davis import evaluate_davis, read_davis
from dinofeat.eval.davis_metrics import score_sequence
from dinofeat.eval.evaluation import evaluate_davis_folder, sweep_davis, sweep_segmenters
from dinofeat.features.extractor import Extractor
from dinofeat.io.masks import davis_palette, read_mask, save_mask
from dinofeat.options import DavisOptions

FRAMES = 8
SIZE_WH = (160, 112)


def _texture(rng: np.random.Generator, size_hw: tuple[int, int], tint: tuple[float, float, float]) -> np.ndarray:
    """A smooth random texture (noise blurred by upsampling) in the colour ``tint``, ``(H, W, 3)`` float."""
    h, w = size_hw
    coarse = rng.random((h // 8 + 2, w // 8 + 2))
    image = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC))
    shade = 0.35 + 0.65 * image[..., None] / 255.0
    return shade * np.array(tint) * 255


def _write_sequence(root: Path, name: str, objects: list[dict], seed: int) -> None:
    """Frames and annotations of one sequence: each object a textured rectangle ``size_wh`` starting
    at ``xy`` and moving by ``step`` pixels a frame; ``void`` marks a band of 255 around object 1."""
    rng = np.random.default_rng(seed)
    w, h = SIZE_WH
    background = _texture(rng, (h, w), (0.3, 0.7, 0.5))
    textures = [_texture(rng, obj["size_wh"][::-1], obj["tint"]) for obj in objects]
    (root / "JPEGImages/480p" / name).mkdir(parents=True)
    (root / "Annotations/480p" / name).mkdir(parents=True)
    for t in range(FRAMES):
        frame = background.copy()
        labels = np.zeros((h, w), np.uint8)
        for label, (obj, texture) in enumerate(zip(objects, textures), start=1):
            x, y = (int(obj["xy"][i] + t * obj["step"][i]) for i in range(2))
            ow, oh = obj["size_wh"]
            frame[y : y + oh, x : x + ow] = texture
            if obj.get("void"):
                labels[max(y - 1, 0) : y + oh + 1, max(x - 1, 0) : x + ow + 1] = 255
            labels[y : y + oh, x : x + ow] = label
        Image.fromarray(frame.astype(np.uint8)).save(root / "JPEGImages/480p" / name / f"{t:05d}.jpg", quality=95)
        save_mask(root / "Annotations/480p" / name / f"{t:05d}.png", labels)


def make_davis(root: Path) -> Path:
    """A DAVIS 2017 folder: ``moving`` (one red object crossing the frame) and ``pair`` (two
    objects, the first ringed by void pixels), both in ImageSets/2017/val.txt."""
    _write_sequence(
        root, "moving", [{"xy": (20, 30), "step": (9, 3), "size_wh": (44, 40), "tint": (0.9, 0.2, 0.2)}], seed=1
    )
    _write_sequence(
        root,
        "pair",
        [
            {"xy": (10, 10), "step": (6, 4), "size_wh": (40, 36), "tint": (0.9, 0.3, 0.1), "void": True},
            {"xy": (110, 60), "step": (-5, -2), "size_wh": (36, 40), "tint": (0.2, 0.2, 0.9)},
        ],
        seed=2,
    )
    (root / "ImageSets/2017").mkdir(parents=True)
    (root / "ImageSets/2017/val.txt").write_text("moving\npair\n")
    (root / "ImageSets/2017/train.txt").write_text("pair\n")
    return root


@pytest.fixture(scope="module")
def davis(tmp_path_factory) -> Path:
    return make_davis(tmp_path_factory.mktemp("davis") / "DAVIS")


@pytest.fixture(scope="module")
def model_args(tmp_path_factory) -> list[str]:
    """A full ViT-S/14 checkpoint: the smooth content-only model (12 blocks, layer scale 0)."""
    path = tmp_path_factory.mktemp("weights") / "smooth_vits14.pth"
    torch.save(smooth_vit(depth=None, layerscale=0.0).state_dict(), path)
    return ["--weights", str(path), "--device", "cpu", "--precision", "fp32", "-q"]


#: The resolution of the run whose scores are checked, and the one of runs that check only layouts.
SCORED = ["--resolution", "168"]
FAST = ["--resolution", "56"]


@pytest.fixture(scope="module")
def evaluated(davis, model_args, tmp_path_factory):
    """One ``eval davis`` run with --json and --results-dir: (document, results folder, stdout)."""
    out = tmp_path_factory.mktemp("out")
    json_path, results = out / "davis.json", out / "results"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        argv = ["eval", "davis", str(davis), "--json", str(json_path), "--results-dir", str(results)]
        code = main([*argv, *model_args, *SCORED])
    assert code == 0
    return json.loads(json_path.read_text()), results, stdout.getvalue()


# -- end to end ---------------------------------------------------------------------------------
def test_eval_davis_json_has_the_contract_layout(evaluated):
    document, _, _ = evaluated
    assert set(document) == {"mean", "objects"}
    assert set(document["mean"]) == {"J&F", "J", "F"}
    assert set(document["objects"]) == {"moving_1", "pair_1", "pair_2"}
    for stats in (document["mean"], *document["objects"].values()):
        for metric in ("J", "F"):
            assert set(stats[metric]) == {"mean", "recall", "decay"}
    mean = document["mean"]
    assert mean["J&F"] == pytest.approx((mean["J"]["mean"] + mean["F"]["mean"]) / 2)
    objects = document["objects"].values()
    assert mean["J"]["mean"] == pytest.approx(np.mean([o["J"]["mean"] for o in objects]))


def test_eval_davis_follows_the_moving_object_with_a_smooth_random_model(evaluated):
    # measured: J 0.89, F 0.88 (J&F 0.88) for moving_1 at --resolution 168 (J&F 0.83 over all 3 objects)
    moving = evaluated[0]["objects"]["moving_1"]
    assert moving["J"]["mean"] > 0.8 and moving["F"]["mean"] > 0.8
    assert moving["J"]["recall"] == 1.0


def test_eval_davis_segments_both_objects_of_a_pair(evaluated):
    objects = evaluated[0]["objects"]
    assert objects["pair_1"]["J"]["mean"] > 0.7 and objects["pair_2"]["J"]["mean"] > 0.7


def test_results_dir_holds_indexed_pngs_in_the_official_layout(evaluated, davis):
    _, results, _ = evaluated
    assert sorted(p.name for p in results.iterdir()) == ["moving", "pair"]
    for name in ("moving", "pair"):
        files = sorted(p.name for p in (results / name).iterdir())
        assert files == [f"{t:05d}.png" for t in range(FRAMES)]
        with Image.open(results / name / "00003.png") as image:
            assert image.mode == "P" and image.size == SIZE_WH
            assert np.array_equal(np.asarray(image.getpalette()).reshape(-1, 3)[:4], davis_palette()[:4])
        first = read_mask(results / name / "00000.png")
        assert np.array_equal(first, read_mask(davis / "Annotations/480p" / name / "00000.png"))


def test_results_dir_scored_again_gives_the_json(evaluated, davis):
    document, results, _ = evaluated
    for sequence in read_davis(davis):
        predicted = np.stack([read_mask(results / sequence.name / f"{f.stem}.png") for f in sequence.frames])
        for k, score in enumerate(score_sequence(sequence.read_annotations(), predicted), start=1):
            stats = document["objects"][f"{sequence.name}_{k}"]
            assert stats["J"]["mean"] == pytest.approx(score.j.mean)
            assert stats["F"]["decay"] == pytest.approx(score.f.decay)


def test_eval_davis_prints_a_row_per_sequence_and_the_means(evaluated):
    document, _, table = evaluated
    lines = table.splitlines()
    assert lines[0].split() == ["sequence", "objects", "frames", "J&F", "J", "F"]
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    assert rows["moving"][1:3] == ["1", str(FRAMES)] and rows["pair"][1:3] == ["2", str(FRAMES)]
    mean_row = next(line for line in lines if line.startswith("mean (2 sequences, 3 objects)"))
    assert mean_row.split()[-3] == f"{100 * document['mean']['J&F']:.1f}"
    assert lines[-1].startswith("J recall")


def test_eval_davis_sweep_reports_jf_per_setting(davis, model_args, tmp_path, capsys):
    out = tmp_path / "sweep.json"
    argv = ["eval", "davis", str(davis), "--sequences", "moving", "--sweep", "top_k=1,5", "--json", str(out)]
    assert main([*argv, *model_args, *FAST]) == 0
    document = json.loads(out.read_text())
    assert document["set"] == "val" and document["resolution"] == 56
    runs = document["sweep"]["runs"]
    assert [run["settings"] for run in runs] == [{"top_k": 1}, {"top_k": 5}]
    assert set(runs[0]["mean"]) == {"J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"}
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["top_k", "J&F", "J", "F"] and len(table) == 4


def test_eval_davis_sequences_and_set_choose_what_runs(davis, model_args, tmp_path):
    out = tmp_path / "train.json"
    assert main(["eval", "davis", str(davis), "--set", "train", "--json", str(out), *model_args, *FAST]) == 0
    assert set(json.loads(out.read_text())["objects"]) == {"pair_1", "pair_2"}


# -- bad input ----------------------------------------------------------------------------------
def _broken(tmp_path: Path, davis: Path, kind: str) -> Path:
    root = tmp_path / "broken"
    shutil.copytree(davis, root)
    if kind == "no-annotations":
        shutil.rmtree(root / "Annotations")
    elif kind == "no-imagesets":
        shutil.rmtree(root / "ImageSets")
    elif kind == "no-frames":
        (root / "JPEGImages/480p/empty").mkdir()
        (root / "ImageSets/2017/val.txt").write_text("moving\nempty\n")
    elif kind == "two-frames":
        for t in range(2, FRAMES):
            (root / f"JPEGImages/480p/moving/{t:05d}.jpg").unlink()
    elif kind == "missing-annotation":
        (root / "Annotations/480p/moving/00004.png").unlink()
    elif kind == "rgb-annotation":
        Image.new("RGB", SIZE_WH).save(root / "Annotations/480p/moving/00000.png")
    return root


@pytest.mark.parametrize(
    "kind, extra, message",
    [
        ("no-annotations", [], "has no Annotations/480p"),
        ("no-imagesets", [], "has no ImageSets/2017"),
        ("no-frames", [], "sequence empty has no frames"),
        ("two-frames", [], "at least 3"),
        ("missing-annotation", [], "have no annotation"),
        ("rgb-annotation", [], "indexed or grayscale"),
        ("ok", ["--sequences", "moving,bear"], "--sequences: bear not in ImageSets/2017/val.txt"),
        ("ok", ["--set", "test"], "--set"),
        ("ok", ["--sweep", "speed=1:2:1"], "cannot sweep speed"),
        ("ok", ["--sweep", "top_k=0,1"], "--top-k"),
        ("ok", ["--sweep", "top_k=1,2", "--results-dir", "{tmp}/results"], "--results-dir"),
        ("ok", ["--results-dir", "{root}/Annotations/480p/moving"], "inside the DAVIS inputs"),
        ("ok", ["--json", "{tmp}/out.csv"], "--json must end in .json"),
        ("ok", ["--temperature", "0"], "--temperature"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, davis, model_args, capsys, kind, extra, message):
    root = davis if kind == "ok" else _broken(tmp_path, davis, kind)
    extra = [a.replace("{tmp}", str(tmp_path)).replace("{root}", str(root)) for a in extra]
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    argv = ["eval", "davis", str(root), "--json", str(outputs / "davis.json"), *extra, *model_args]
    if "--results-dir" not in extra:
        argv += ["--results-dir", str(outputs / "results")]
    before = sorted(p.name for p in (davis / "Annotations/480p/moving").iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert list(outputs.iterdir()) == [] and not (tmp_path / "results").exists()
    assert sorted(p.name for p in (davis / "Annotations/480p/moving").iterdir()) == before


def test_read_davis_names_fields_not_flags(davis):
    with pytest.raises(InputError, match=r"^sequences: bear not in"):
        read_davis(davis, sequences=["bear"])


# -- the driver without a model -----------------------------------------------------------------
def _oracle(sequence_masks: np.ndarray):
    def segment(frames, first_mask):
        for t, _ in enumerate(frames):
            if t:
                yield np.where(sequence_masks[t] == 255, 0, sequence_masks[t]).astype(np.uint8)

    return segment


def test_a_perfect_segmenter_scores_one(davis):
    (sequence,) = read_davis(davis, sequences=["moving"])
    report = evaluate_davis([sequence], _oracle(sequence.read_annotations()))
    assert report.mean.jf == 1.0 and report.mean.j.recall == 1.0 and report.mean.j.decay == 0.0


def test_an_empty_segmenter_scores_zero_and_reads_frames_lazily(davis):
    (sequence,) = read_davis(davis, sequences=["moving"])
    read = []

    def nothing(frames, first_mask):
        for t, _frame in enumerate(frames):
            read.append(t)
            if t:
                yield np.zeros(first_mask.shape, np.uint8)

    progress = []
    report = evaluate_davis([sequence], nothing, progress=lambda done, total: progress.append((done, total)))
    assert report.mean.jf == 0.0
    assert read == list(range(FRAMES)) and progress[-1] == (FRAMES, FRAMES)


def test_a_segmenter_giving_too_few_masks_is_refused(davis):
    (sequence,) = read_davis(davis, sequences=["moving"])
    with pytest.raises(ValueError, match="expected 7"):
        evaluate_davis([sequence], lambda frames, first: [np.zeros(first.shape, np.uint8)])


def test_results_on_a_full_disk_are_one_line_and_leave_nothing(small_disk, davis, model_args, capsys):
    fill_disk(small_disk)
    results = small_disk / "results"
    argv = ["eval", "davis", str(davis), "--sequences", "moving", "--results-dir", str(results), *model_args, *FAST]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no space left on device writing {results / 'moving'}" in err, err
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_the_library_job_scores_a_folder_and_sweeps_propagation_options(davis):
    extractor = Extractor(smooth_vit(depth=2, layerscale=0.0), device="cpu", precision="fp32", resolution=56)
    options = DavisOptions(sequences="moving")
    report = evaluate_davis_folder(davis, extractor, options)
    assert list(report.objects) == ["moving_1"]
    sweep = sweep_davis(read_davis(davis, sequences=["moving"]), extractor, {"top_k": [5]})
    assert sweep.runs[0].mean["J&F-Mean"] == pytest.approx(report.mean.jf)  # the same propagation
    with pytest.raises(InputError, match="cannot sweep speed"):
        sweep_segmenters({"speed": [1.0]})
