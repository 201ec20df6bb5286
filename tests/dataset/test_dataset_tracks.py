"""Tracking datasets: ``dinofeat track DIR --out-dir``: one JSON/CSV per video equal to single-file
``dinofeat track``, broken videos in errors.jsonl, points files per video, resuming, the manifest."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from dinofeat.cli import main
from dinofeat.dataset.runs import track_output_stem
from dinofeat.io.video import VideoWriter

W, H = 84, 56  # at --resolution 56 the model sees the frames 1:1 (6 x 4 patches)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """a.mp4 and sub/b.mp4 (the camera pans over a photo), broken.mp4 (not a video) and empty.mp4."""
    from skimage import data

    photo = data.astronaut()
    root = tmp_path_factory.mktemp("videos")
    (root / "sub").mkdir()
    for name, y in (("a.mp4", 60), ("sub/b.mp4", 200)):
        with VideoWriter(root / name, fps=25, size_wh=(W, H), crf=4) as sink:
            for k in range(5):
                sink.write(np.ascontiguousarray(photo[y : y + H, 100 + 7 * k : 100 + 7 * k + W]))
    (root / "broken.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (root / "empty.mp4").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def model(vits14_checkpoint):
    fast = ["--layer", "0", "--batch-size", "5"]  # the first block only: fast
    return ["--weights", str(vits14_checkpoint), "--resolution", "56", "--device", "cpu", "--precision", "fp32", *fast]


def _json(path):
    return json.loads(path.read_text())


def _without_path(document):
    return {**document, "video": {k: v for k, v in document["video"].items() if k != "path"}}


def test_tracks_equal_single_file_and_bad_videos_are_recorded(tmp_path, videos, model, capsys):
    out = tmp_path / "out"
    argv = ["track", str(videos), "--out-dir", str(out), "--grid", "2", "--outputs", "json", "csv", *model]
    assert main(argv) == 1  # two videos failed
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert summary.startswith("dinofeat track: 4 videos: 2 done (2 now") and "2 failed" in summary
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["path"] for e in errors] == ["broken.mp4", "empty.mp4"]
    assert "not a video" in errors[0]["error"] and "empty" in errors[1]["error"]
    for name in ("a.mp4", "sub/b.mp4"):
        single_json, single_csv = tmp_path / "single.json", tmp_path / "single.csv"
        one = ["track", str(videos / name), "--grid", "2", "--json", str(single_json), "--csv", str(single_csv)]
        assert main([*one, *model, "-q"]) == 0
        stem = out / "tracks" / track_output_stem(name)
        stored = _json(stem.with_suffix(".json"))
        assert stored["video"]["path"] == name
        assert _without_path(stored) == _without_path(_json(single_json))
        assert stem.with_suffix(".csv").read_bytes() == single_csv.read_bytes()
    manifest = _json(out / "manifest.json")
    assert manifest["kind"] == "tracks" and manifest["settings"]["queries"]["grid"] == 2
    # rerunning skips the finished videos and tries the failed ones again
    before = {p.name: p.stat().st_mtime_ns for p in (out / "tracks").iterdir()}
    assert main([*argv, "-q"]) == 1
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "tracks").iterdir()}
    assert len((out / "errors.jsonl").read_text().splitlines()) == 2
    # other settings into the same folder: one line, exit status 2
    assert main([*argv[: -len(model)], "--grid", "3", *model]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "settings.queries" in err


def test_a_broken_link_and_a_fifo_named_mp4_are_failed_videos(tmp_path, videos, model, capsys):
    """``dinofeat track DIR --out-dir``: both are counted and recorded in errors.jsonl; the FIFO is
    never opened (nothing blocks); a link to a real video is tracked."""
    root = tmp_path / "clips"
    root.mkdir()
    (root / "a.mp4").symlink_to(videos / "a.mp4")
    (root / "broken.mp4").symlink_to(root / "gone.mp4")
    os.mkfifo(root / "pipe.mp4")
    out = tmp_path / "out"
    assert main(["track", str(root), "--out-dir", str(out), "--grid", "2", "--outputs", "json", *model]) == 1
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert summary.startswith("dinofeat track: 3 videos: 1 done (1 now") and "2 failed" in summary
    errors = {e["path"]: e["error"] for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert list(errors) == ["broken.mp4", "pipe.mp4"]
    assert "broken symbolic link" in errors["broken.mp4"] and "FIFO" in errors["pipe.mp4"]


def test_points_files_per_video(tmp_path, videos, model):
    points = tmp_path / "points"
    (points / "sub").mkdir(parents=True)
    (points / "a.json").write_text("[[20, 20], [2, 40, 30]]")
    (points / "sub" / "b.csv").write_text("x,y\n30.5,25\n")
    out = tmp_path / "out"
    argv = ["track", str(videos / "a.mp4"), str(videos / "sub/b.mp4"), "--out-dir", str(out), *model, "-q"]
    assert main([*argv, "--points-file", str(points)]) == 1  # b.mp4 is named sub/b.mp4 only inside the folder
    assert [
        t["query"] for t in _json(out / "tracks" / f"{track_output_stem(str(videos / 'a.mp4'))}.json")["tracks"]
    ] == [
        [0, 20.0, 20.0],
        [2, 40.0, 30.0],
    ]
    # inside the folder, videos find their points files by their paths
    folder_out = tmp_path / "folder"
    assert main(["track", str(videos), "--out-dir", str(folder_out), "--points-file", str(points), *model, "-q"]) == 1
    b = _json(folder_out / "tracks" / f"{track_output_stem('sub/b.mp4')}.json")
    assert [t["query"] for t in b["tracks"]] == [[0, 30.5, 25.0]]
    # a list file's points column names each video's points file
    table = tmp_path / "list.csv"
    table.write_text(f"path,points\n{videos / 'a.mp4'},points/sub/b.csv\n{videos / 'sub/b.mp4'},\n")
    listed = tmp_path / "listed"
    assert main(["track", str(table), "--out-dir", str(listed), *model, "-q"]) == 1
    errors = [json.loads(line) for line in (listed / "errors.jsonl").read_text().splitlines()]
    assert [e["path"] for e in errors] == [str(videos / "sub/b.mp4")] and "no points to track" in errors[0]["error"]
    a = _json(listed / "tracks" / f"{track_output_stem(str(videos / 'a.mp4'))}.json")
    assert [t["query"] for t in a["tracks"]] == [[0, 30.5, 25.0]]


def test_track_dataset_usage_errors(tmp_path, videos, capsys):
    for argv, expected in [
        (
            ["track", str(videos / "a.mp4"), str(videos / "sub/b.mp4"), "--grid", "2", "--json", "x.json"],
            "give one VIDEO",
        ),
        (
            ["track", str(videos), "--out-dir", str(tmp_path), "--grid", "2", "--json", "x.json"],
            "--json names one file",
        ),
        (["track", str(videos / "a.mp4"), "--grid", "2", "--json", "x.json", "--outputs", "csv"], "need --out-dir"),
        (["track", str(videos), "--out-dir", str(tmp_path / "o"), "--outputs", "pdf"], "invalid choice"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err


def test_output_stems_are_stable_and_distinct():
    assert track_output_stem("clips/cat 1.mp4") == "clips__cat_1-ce2cb64c"
    names = {track_output_stem(p) for p in ("a/b.mp4", "a__b.mp4", "a/b.mov", "a_b.mp4", "/abs/a/b.mp4")}
    assert len(names) == 5 and all("/" not in n for n in names)


def test_the_output_folder_inside_the_inputs_is_not_tracked_and_a_changed_listing_is_refused(
    tmp_path, videos, model, monkeypatch, capsys
):
    import shutil

    (tmp_path / "clips").mkdir()
    shutil.copy(videos / "a.mp4", tmp_path / "clips" / "a.mp4")
    monkeypatch.chdir(tmp_path)
    argv = ["track", "clips/**/*.mp4", "--out-dir", "clips/out", "--grid", "2", "--outputs", "json", "mp4", *model]
    assert main(argv) == 0
    assert (tmp_path / "clips" / "out" / "tracks" / f"{track_output_stem('a.mp4')}.mp4").is_file()
    assert main(argv) == 0  # the rerun lists a.mp4 only, not the MP4 it wrote into clips/out/tracks
    assert "1 video: 1 done (0 now)" in capsys.readouterr().err
    assert _json(tmp_path / "clips" / "out" / "manifest.json")["inputs"]["items"] == 1
    shutil.copy(videos / "a.mp4", tmp_path / "clips" / "b.mp4")
    assert main(argv) == 2  # other inputs: refused like features
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "inputs.items: 1 there, 2 now" in err


def test_workers_get_absolute_weights_and_points_paths(tmp_path, videos, monkeypatch):
    import dinofeat.dataset.runs as dataset
    from conftest import random_vit
    from dinofeat.dataset.localengine import LocalEngine
    from dinofeat.dataset.runs import QuerySpec, track_dataset
    from dinofeat.options import ExtractorOptions

    seen = []

    class Recording(LocalEngine):  # what a Ray worker, in another working folder, would receive
        def tracks(self, items, job):
            seen.append((job.extractor.weights, job.queries.points_file))
            return iter(())

    monkeypatch.setattr(dataset, "make_engine", lambda options, model=None: Recording(model))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "points.json").write_text("[[20, 20]]")
    options = ExtractorOptions(weights="w.pth", resolution=56, device="cpu")
    track_dataset([videos], "out", QuerySpec(points_file="points.json"), options, model=random_vit(depth=1))
    assert seen == [(str(tmp_path / "w.pth"), str(tmp_path / "points.json"))]


def test_any_error_of_one_video_is_recorded_and_the_run_goes_on(tmp_path, videos, monkeypatch):
    import dinofeat.jobs.track as track_job
    from conftest import random_vit
    from dinofeat.dataset.runs import QuerySpec, track_dataset
    from dinofeat.errors import InputError
    from dinofeat.options import DatasetOptions, ExtractorOptions

    def broken(*args, **kwargs):
        raise ValueError("decoder exploded\n  at frame 3")  # as PyAV's own error types reach us

    monkeypatch.setattr(track_job.TrackJob, "run", broken)
    options, model = ExtractorOptions(resolution=56, device="cpu"), random_vit(depth=1)
    report = track_dataset([videos], tmp_path / "out", QuerySpec(grid=2), options, model=model)
    assert (report.total, report.done, report.failed) == (4, 0, 4)
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert [e["error"] for e in errors if e["path"] in ("a.mp4", "sub/b.mp4")] == [
        "ValueError: decoder exploded at frame 3"
    ] * 2
    with pytest.raises(InputError, match=r"a.mp4: ValueError: decoder exploded at frame 3 \(on_error=fail\)"):
        track_dataset(
            [videos], tmp_path / "out", QuerySpec(grid=2), options, DatasetOptions(on_error="fail"), model=model
        )

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(track_job.TrackJob, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        track_dataset([videos], tmp_path / "out", QuerySpec(grid=2), options, model=model)


def test_a_tracking_run_looks_at_each_video_twice_at_most(tmp_path, videos, monkeypatch):
    """The listing is walked for its hash, to count what is done and to stream what is to do; each
    video's outputs are looked for twice (counting, streaming), not once more per report line."""
    import dinofeat.dataset.listing as listing
    import dinofeat.dataset.runs as dataset
    import dinofeat.jobs.track as track_job
    from conftest import random_vit
    from dinofeat.dataset.runs import QuerySpec, track_dataset
    from dinofeat.options import ExtractorOptions

    walks, looks = [], []
    iterate, tracked = listing.Listing.__iter__, dataset._tracked
    monkeypatch.setattr(listing.Listing, "__iter__", lambda self: walks.append(1) or iterate(self))
    monkeypatch.setattr(dataset, "_tracked", lambda *args: looks.append(args[1]) or tracked(*args))

    def broken(*args, **kwargs):
        raise ValueError("no decoder")

    monkeypatch.setattr(track_job.TrackJob, "run", broken)
    options, model = ExtractorOptions(resolution=56, device="cpu"), random_vit(depth=1)
    for _ in range(2):  # a first run, and a rerun that knows the earlier failures
        walks.clear(), looks.clear()
        report = track_dataset([videos], tmp_path / "out", QuerySpec(grid=2), options, model=model)
        assert (report.total, report.done, report.failed) == (4, 0, 4)
        assert len(walks) == 3 and sorted(looks) == sorted(["a.mp4", "broken.mp4", "empty.mp4", "sub/b.mp4"] * 2)
