"""``dinofeat track`` through ``main(argv)``: outputs (H.264 video, JSON, CSV), frame selection, bad inputs.

The model is a full-depth ViT-S/14 checkpoint with random weights made content-only (layerscale
1e-3, zero positional embedding; see tests/test_tracking.py for why), so whole-patch camera steps
are tracked to about a pixel through a real H.264 file.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from conftest import save_png, write_h264, write_resolution_change
from dinofeat.cli import main
from dinofeat.io.video import VideoWriter, probe_video, read_timed_frames
from dinofeat.models.dinov2 import DinoVisionTransformer
from dinofeat.models.registry import get_spec

W, H = 168, 126  # at --resolution 126 the model sees the frames 1:1 (12 x 9 patches)
FPS = 30000 / 1001
FRAMES = 8


@pytest.fixture(scope="module")
def model_args(tmp_path_factory) -> list[str]:
    vit = DinoVisionTransformer(get_spec("dinov2_vits14")).init_random(0, layerscale=1e-3)
    with torch.no_grad():
        vit.pos_embed.zero_()
    path = tmp_path_factory.mktemp("weights") / "content_vits14.pth"
    torch.save(vit.state_dict(), path)
    return ["--weights", str(path), "--resolution", "126", "--device", "cpu", "--precision", "fp32"]


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    """The camera moves one patch (14 px) right per frame over a real photo."""
    from skimage import data

    photo = data.astronaut()
    path = tmp_path_factory.mktemp("video") / "pan.mp4"
    with VideoWriter(path, fps=FPS, size_wh=(W, H), crf=4) as sink:
        for k in range(FRAMES):
            sink.write(np.ascontiguousarray(photo[60 : 60 + H, 100 + 14 * k : 100 + 14 * k + W]))
    return str(path)


def _files(folder) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_video_json_and_csv(tmp_path, video, model_args):
    out, js, table = tmp_path / "t.mp4", tmp_path / "t.json", tmp_path / "t.csv"
    argv = [
        "track",
        video,
        "--point",
        "130.5,48.3",
        "--query",
        "2,80,50",
        "--grid",
        "2",
        "--window",
        "40",
        "-o",
        str(out),
        "--json",
        str(js),
        "--csv",
        str(table),
        "--batch-size",
        "3",
        *model_args,
    ]
    assert main(argv) == 0

    doc = json.loads(js.read_text())
    assert list(doc) == ["model", "video", "tracks", "frame_indices", "times_s", "weights"]
    assert doc["model"] == "dinov2_vits14"
    assert doc["video"] == {"path": video, "fps": pytest.approx(FPS), "frames": FRAMES, "size": [W, H]}
    assert doc["frame_indices"] == list(range(FRAMES))
    queries = [[0, 130.5, 48.3], [2, 80.0, 50.0], [0, 41.5, 31.0], [0, 125.5, 31.0], [0, 41.5, 94.0], [0, 125.5, 94.0]]
    assert [t["query"] for t in doc["tracks"]] == queries
    for entry in doc["tracks"]:
        assert list(entry) == ["query", "points", "scores", "visible"]
        assert len(entry["points"]) == len(entry["scores"]) == len(entry["visible"]) == FRAMES
        assert all(len(p) == 2 for p in entry["points"]) and all(isinstance(v, bool) for v in entry["visible"])
    first, late = doc["tracks"][0], doc["tracks"][1]
    expected = np.array([[130.5 - 14 * k, 48.3] for k in range(FRAMES)])
    assert all(first["visible"]) and np.abs(np.array(first["points"]) - expected).max() <= 1.0
    assert late["visible"][:2] == [False, False] and late["points"][:3] == [[80.0, 50.0]] * 3
    assert late["scores"][:2] == [0.0, 0.0] and late["visible"][2]

    rows = table.read_text().splitlines()
    assert rows[0] == "track,frame,x,y,score,visible,time_s" and len(rows) == 1 + len(queries) * FRAMES
    assert rows[1].startswith("0,0,130.500,48.300,1.0000,1")

    info = probe_video(out)
    assert info.frames == FRAMES and info.size_wh == (W, H) and info.fps == pytest.approx(FPS)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == Fraction(30000, 1001)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    # the first point's marker is drawn in its palette colour where it was tracked
    from dinofeat.drawing import palette

    x, y = np.round(expected[5]).astype(int)
    assert np.abs(frames[5][y, x].astype(int) - palette(6)[0]).max() < 40


def test_backward_tracks_a_late_query_into_earlier_frames(tmp_path, video, model_args):
    js = tmp_path / "b.json"
    assert main(["track", video, "--query", "3,80,50", "--backward", "--json", str(js), *model_args]) == 0
    (entry,) = json.loads(js.read_text())["tracks"]
    assert entry["visible"] == [True] * FRAMES
    expected = np.array([[80.0 + 14 * (3 - k), 50.0] for k in range(FRAMES)])
    inside = (expected[:, 0] >= 7) & (expected[:, 0] <= W - 8)
    assert np.abs(np.array(entry["points"]) - expected)[inside].max() <= 1.0


def test_points_with_a_leading_minus_are_values(tmp_path, video, model_args):
    """``--point -0.4,60`` and ``--query 1,-0.5,60`` are positions from the left edge, not options."""
    js = tmp_path / "m.json"
    argv = ["track", video, "--point", "-0.4,60", "--query", "1,-0.5,60", "--max-frames", "2", "--json", str(js)]
    assert main([*argv, *model_args]) == 0
    assert [t["query"] for t in json.loads(js.read_text())["tracks"]] == [[0, -0.4, 60.0], [1, -0.5, 60.0]]


def _odd_video(path: Path, size_wh: tuple[int, int], frames: int) -> str:
    """An odd-sized H.264 clip written by PyAV itself (yuv444p: 4:2:0 cannot hold odd sides)."""
    from skimage import data

    w, h = size_wh
    photo = data.astronaut()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"crf": "10"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv444p"
        for k in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(photo[50 : 50 + h, 40 + 7 * k : 40 + 7 * k + w]))
            for packet in stream.encode(frame.reformat(format="yuv444p")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return str(path)


@pytest.mark.parametrize("command", ["track", "pca"])
def test_an_odd_sized_video_gives_an_output_of_the_same_size(tmp_path, model_args, command):
    """321 x 241 in, 321 x 241 out (H.264 4:4:4), frames and pixels where they were."""
    source = _odd_video(tmp_path / "odd.mp4", (321, 241), 3)
    out = tmp_path / "out.mp4"
    extra = ["--point", "160,120"] if command == "track" else ["--pca-only"]
    assert main([command, source, *extra, "-o", str(out), *model_args]) == 0
    info = probe_video(out)
    assert info.size_wh == (321, 241) and info.frames == 3
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv444p"
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert first.shape == (241, 321, 3)


def test_frame_selection_and_points_file(tmp_path, video, model_args):
    points = tmp_path / "points.csv"
    points.write_text("t,x,y\n2,130.5,48.3\n4,100,60\n")
    pairs = tmp_path / "pairs.json"
    pairs.write_text("[[120, 70]]")
    js, out = tmp_path / "s.json", tmp_path / "s.mp4"
    argv = [
        "track",
        video,
        "--points-file",
        str(points),
        "--start",
        "2",
        "--every",
        "2",
        "--max-frames",
        "3",
        "--json",
        str(js),
        "-o",
        str(out),
        *model_args,
    ]
    assert main(argv) == 0
    doc = json.loads(js.read_text())
    assert doc["frame_indices"] == [2, 4, 6] and doc["video"]["frames"] == 3
    assert [t["query"] for t in doc["tracks"]] == [[2, 130.5, 48.3], [4, 100.0, 60.0]]
    assert doc["tracks"][1]["visible"][0] is False and doc["tracks"][1]["visible"][1] is True
    assert probe_video(out).frames == 3
    assert (
        main(
            [
                "track",
                video,
                "--points-file",
                str(pairs),
                "--start",
                "1",
                "--max-frames",
                "2",
                "--json",
                str(js),
                *model_args,
            ]
        )
        == 0
    )
    assert json.loads(js.read_text())["tracks"][0]["query"] == [1, 120.0, 70.0]  # x,y: first processed frame


def _count_probes(monkeypatch) -> list:
    """Record every probe_video call (the workflows import it from dinofeat.io.video when they run)."""
    import dinofeat.io.video

    calls, probe = [], dinofeat.io.video.probe_video
    monkeypatch.setattr(dinofeat.io.video, "probe_video", lambda path: calls.append(str(path)) or probe(path))
    return calls


def test_the_video_is_probed_once(tmp_path, video, model_args, monkeypatch):
    """Probing may decode the whole file (a container without a frame count): the command probes
    it once and the workflow takes that."""
    probes = _count_probes(monkeypatch)
    argv = ["track", video, "--point", "130.5,48.3", "--max-frames", "2", "--json", str(tmp_path / "t.json")]
    assert main([*argv, *model_args]) == 0
    assert probes == [video]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--point", "500,10"], "outside"),
        (["--point", "10"], "X,Y"),
        (["--query", "1.5,10,10"], "non-negative integer"),
        (["--query", "3,10,10", "--every", "2"], "not processed"),
        (["--query", "99,10,10"], "not processed"),
        (["--point", "10,10", "--start", "50"], "past the end"),
        ([], "no points"),
        (["--points-file", "{bad}"], "t,x,y"),
        (["--points-file", "missing.csv"], "not found"),
        (["--point", "10,10", "--window", "-3"], "--window"),
        (["--point", "10,10", "--template", "fixed", "--trail", "-1"], "--trail"),
        (["--point", "10,10", "VIDEO={missing}"], "not found"),
        (["--point", "10,10", "VIDEO={image}"], "image, not a video"),
        (["--point", "10,10", "VIDEO={truncated}"], "truncated"),
        (["--point", "10,10", "VIDEO={text}"], "not a video"),
        (["--point", "10,10", "-o", "{dir}/t.avi"], ".mp4"),
        (["--point", "10,10", "-o", "{dir}/t.mp4", "--json", "{dir}/t.mp4"], "different files"),
        (["--point", "10,10", "-o", "/dev/null/t.mp4"], "is not a folder"),
        (["--point", "10,10", "NO_OUTPUTS"], "nothing to write"),
    ],
)
def test_bad_inputs_one_line_error_no_outputs(tmp_path, video, model_args, capsys, extra, message):
    from skimage import data

    (tmp_path / "bad.csv").write_text("1,2,3,4\n")
    save_png(tmp_path / "image.png", data.astronaut()[:64, :64])
    data_bytes = Path(video).read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data_bytes[: len(data_bytes) // 2])
    (tmp_path / "text.mp4").write_text("hello\n" * 50)
    names = {
        "{bad}": "bad.csv",
        "{missing}": "missing.mp4",
        "{image}": "image.png",
        "{truncated}": "truncated.mp4",
        "{text}": "text.mp4",
    }
    source = video
    argv = []
    outputs = ["-o", str(tmp_path / "out.mp4"), "--json", str(tmp_path / "out.json")]
    for item in extra:
        if item.startswith("VIDEO="):
            source = str(tmp_path / names[item[len("VIDEO=") :]])
        elif item == "NO_OUTPUTS":
            outputs = []
        else:
            argv.append(str(tmp_path / names[item]) if item in names else item.replace("{dir}", str(tmp_path)))
    if "-o" in argv or "--json" in argv:
        outputs = []
    before = _files(tmp_path)
    rc = main(["track", source, *argv, *outputs, *model_args])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert _files(tmp_path) == before  # nothing written


def test_failure_while_tracking_leaves_no_outputs(tmp_path, video, model_args, monkeypatch, capsys):
    import dinofeat.tracking

    calls = {"n": 0}
    original = dinofeat.tracking.PointTracker.step

    def failing_step(self, frame_index, fmap):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("disk full")
        return original(self, frame_index, fmap)

    monkeypatch.setattr(dinofeat.tracking.PointTracker, "step", failing_step)
    before = _files(tmp_path)
    argv = [
        "track",
        video,
        "--point",
        "60,60",
        "-o",
        str(tmp_path / "o.mp4"),
        "--json",
        str(tmp_path / "o.json"),
        "--csv",
        str(tmp_path / "o.csv"),
        *model_args,
    ]
    assert main(argv) == 2
    assert "disk full" in capsys.readouterr().err
    assert _files(tmp_path) == before


def test_help_is_instant_and_names_the_contract(capsys):
    with pytest.raises(SystemExit):
        main(["track", "--help"])
    text = capsys.readouterr().out
    for option in (
        "--point",
        "--query",
        "--points-file",
        "--grid",
        "-o",
        "--json",
        "--csv",
        "--window",
        "--batch-size",
        "--model",
        "--weights",
        "--device",
        "--precision",
        "--resolution",
        "--start",
        "--max-frames",
        "--every",
    ):
        assert option in text


def test_cli_defaults_are_the_trackers():
    from dinofeat import tracking
    from dinofeat.cli import track

    assert track.DEFAULT_MIN_SCORE == tracking.DEFAULT_MIN_SCORE
    assert tracking.DEFAULT_WINDOW_PATCHES == 4 and tracking.DEFAULT_CYCLE_TOLERANCE_PATCHES == 1.5  # as --help says


def test_resolution_change_keeps_one_raster_and_says_so_once(tmp_path, model_args, capsys):
    """Four frames at W x H, then four at 2W x 2H (MPEG-TS segments): one raster, the first's."""
    from skimage import data

    photo = data.astronaut()
    crops = [np.ascontiguousarray(photo[60 : 60 + H, 100 + 14 * k : 100 + 14 * k + W]) for k in range(FRAMES)]
    doubled = [np.repeat(np.repeat(crop, 2, axis=0), 2, axis=1) for crop in crops[4:]]
    video = write_resolution_change(tmp_path / "segments.ts", crops[:4], doubled)
    js, out = tmp_path / "r.json", tmp_path / "r.mp4"
    argv = ["track", str(video), "--point", "130.5,48.3", "--window", "40", "--json", str(js), "-o", str(out)]
    assert main([*argv, *model_args]) == 0

    err = capsys.readouterr().err
    assert err.count("changes resolution") == 1 and "scaled to the first frame's size" in err
    doc = json.loads(js.read_text())
    assert doc["video"]["size"] == [W, H] and doc["frame_indices"] == list(range(FRAMES))
    (entry,) = doc["tracks"]
    expected = np.array([[130.5 - 14 * k, 48.3] for k in range(FRAMES)])
    assert all(entry["visible"]) and np.abs(np.array(entry["points"]) - expected).max() <= 2.0
    info = probe_video(out)
    assert info.size_wh == (W, H) and info.frames == FRAMES


def test_variable_frame_rate_keeps_each_frames_time(tmp_path, model_args):
    """Frames at irregular times: JSON ``times_s``, the CSV's ``time_s`` and the output video keep them."""
    from skimage import data

    photo = data.astronaut()
    crops = [np.ascontiguousarray(photo[60 : 60 + H, 100 + 14 * k : 100 + 14 * k + W]) for k in range(FRAMES)]
    times = [0.0, 0.04, 0.08, 0.3, 0.34, 0.8, 0.84, 1.5]
    video = write_h264(tmp_path / "vfr.mp4", crops, times_s=times)
    js, table, out = tmp_path / "v.json", tmp_path / "v.csv", tmp_path / "v.mp4"
    argv = ["track", str(video), "--point", "130.5,48.3", "--json", str(js), "--csv", str(table), "-o", str(out)]
    assert main([*argv, *model_args]) == 0

    doc = json.loads(js.read_text())
    assert doc["frame_indices"] == list(range(FRAMES)) and doc["times_s"] == pytest.approx(times, abs=1e-6)
    rows = [row.split(",") for row in table.read_text().splitlines()]
    assert rows[0][-1] == "time_s" and [float(row[-1]) for row in rows[1:]] == pytest.approx(times, abs=1e-6)
    assert [frame.time_s for frame in read_timed_frames(out)] == pytest.approx(times, abs=1e-6)

    every, every_out = tmp_path / "e.json", tmp_path / "e.mp4"
    argv = ["track", str(video), "--point", "130.5,48.3", "--every", "3", "--json", str(every), "-o", str(every_out)]
    assert main([*argv, *model_args]) == 0
    assert json.loads(every.read_text())["times_s"] == pytest.approx(times[::3], abs=1e-6)
    assert [frame.time_s for frame in read_timed_frames(every_out)] == pytest.approx(times[::3], abs=1e-6)


@pytest.mark.parametrize(
    ("sar", "squeeze", "height"),
    [
        (Fraction(2, 1), (slice(None), slice(None, None, 2)), H),
        (Fraction(1, 2), (slice(None, None, 2), slice(None)), H + 2),  # stored 64 rows: yuv420p needs even sides
    ],
    ids=["wide-pixels", "tall-pixels"],
)
def test_non_square_pixels_are_tracked_in_display_pixels(tmp_path, model_args, sar, squeeze, height):
    """A W x height pan stored squeezed with SAR 2:1 (or 1:2): points, JSON and -o in display pixels."""
    from skimage import data

    photo = data.astronaut()
    crops = [np.ascontiguousarray(photo[60 : 60 + height, 100 + 14 * k : 100 + 14 * k + W]) for k in range(FRAMES)]
    video = write_h264(tmp_path / "sar.mp4", [np.ascontiguousarray(crop[squeeze]) for crop in crops], sar=sar)
    js, out = tmp_path / "s.json", tmp_path / "s.mp4"
    argv = ["track", str(video), "--point", "130.5,48.3", "--window", "40", "--json", str(js), "-o", str(out)]
    assert main([*argv, *model_args]) == 0

    doc = json.loads(js.read_text())
    assert doc["video"]["size"] == [W, height]
    (entry,) = doc["tracks"]
    expected = np.array([[130.5 - 14 * k, 48.3] for k in range(FRAMES)])
    assert all(entry["visible"]) and np.abs(np.array(entry["points"]) - expected).max() <= 2.0
    assert probe_video(out).size_wh == (W, height)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (W, height) and stream.sample_aspect_ratio in (None, 0, 1)


def test_compile_on_tracks_as_eager_and_says_its_compile_time_once(tmp_path, video, model_args, capsys):
    documents = []
    for mode in ("off", "on"):
        js = tmp_path / f"{mode}.json"
        assert main(["track", video, "--grid", "3", "--json", str(js), "--compile", mode, *model_args]) == 0
        documents.append(json.loads(js.read_text()))
    said = [line for line in capsys.readouterr().err.splitlines() if "compil" in line and "json" not in line]
    assert said[0] == "dinofeat track: compiling the model for 168x126, once per run (--compile off skips it)"
    assert len(said) == 2 and said[1].startswith("dinofeat track: compiled the model for 168x126 in "), said
    eager, compiled = documents
    for a, b in zip(eager["tracks"], compiled["tracks"], strict=True):
        assert a["visible"] == b["visible"]
        assert np.abs(np.array(a["points"]) - np.array(b["points"])).max() <= 1e-3
