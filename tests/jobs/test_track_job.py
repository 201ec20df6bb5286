"""The track job: check() refuses bad outputs, frames and points before any model work; run() tracks
with a feature source, writes the files atomically and returns Tracks; track_video writes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import random_vit
from dinofeat.errors import InputError
from dinofeat.features.extractor import Extractor
from dinofeat.io.video import VideoWriter
from dinofeat.jobs.track import TrackJob
from dinofeat.options import FrameOptions, TrackerOptions
from dinofeat.optionspec import flag_of
from dinofeat.tracking import track_video
from dinofeat.tracks import Tracks

W, H = 84, 56


class NoModel:
    """A feature source that fails if anything asks it for features."""

    def __getattr__(self, name: str):
        raise AssertionError(f"check() must not use the feature source ({name})")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 256, (H, W + 40, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with VideoWriter(path, fps=10, size_wh=(W, H), crf=4) as sink:
        for k in range(4):
            sink.write(np.ascontiguousarray(scene[:, 4 * k : 4 * k + W]))
    return str(path)


def extractor() -> Extractor:
    return Extractor(random_vit("dinov2_vits14", depth=1), device="cpu", precision="fp32", resolution=56)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({}, "nothing to write: give output=OUT.mp4, json=OUT.json and/or csv=OUT.csv"),
        ({"json": "{dir}/t.csv"}, "json must end in .json, got"),
        ({"output": "{dir}/t.avi"}, "output video must end in"),
        ({"output": "{dir}/t.mp4", "csv": "{dir}/t.mp4"}, "output, json and csv must name different files"),
        ({"json": "/dev/null/t.json"}, "output folder /dev/null cannot be made: /dev/null is not a folder"),
        ({"json": "{dir}/t.json", "frames": FrameOptions(start=40)}, "start=40 is past the end of the video"),
        ({"json": "{dir}/t.json", "points_xy": [(500.0, 10.0)]}, "outside"),
        ({"json": "{dir}/t.json", "points_xy": [], "queries_txy": [(9, 5.0, 5.0)]}, "query frame 9 is not processed"),
        ({"json": "{dir}/t.json", "points_xy": []}, "no points to track"),
    ],
)
def test_check_refuses_before_any_model_work(tmp_path, video, changes, message):
    fields = {"points_xy": [(10.0, 10.0)]}
    fields.update({k: v.replace("{dir}", str(tmp_path)) if isinstance(v, str) else v for k, v in changes.items()})
    job = TrackJob(video, **fields)
    with pytest.raises(InputError, match=message):
        job.check()
    with pytest.raises(InputError, match=message):  # run() checks first when check() was not called
        job.run(NoModel())
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_errors_name_fields_and_the_command_line_renders_flags(tmp_path, video):
    with pytest.raises(InputError) as caught:
        TrackJob(video, points_xy=[(10.0, 10.0)], json=str(tmp_path / "t.json"), frames=FrameOptions(start=9)).check()
    assert str(caught.value) == "start=9 is past the end of the video (4 frames)"
    assert caught.value.render(flag_of) == "--start 9 is past the end of the video (4 frames)"
    with pytest.raises(InputError) as caught:
        TrackJob(video).check()
    assert caught.value.render(flag_of) == "nothing to write: give -o OUT.mp4, --json OUT.json and/or --csv OUT.csv"


def test_check_probes_once_and_run_reuses_it(tmp_path, video, monkeypatch):
    import dinofeat.io.video

    calls, probe = [], dinofeat.io.video.probe_video
    monkeypatch.setattr(dinofeat.io.video, "probe_video", lambda path: calls.append(str(path)) or probe(path))
    job = TrackJob(video, json=str(tmp_path / "t.json"), grid=2)
    job.check()
    job.run(extractor())
    assert calls == [video]


def test_run_writes_the_files_and_returns_the_tracks(tmp_path, video):
    out = {"output": tmp_path / "t.mp4", "json": tmp_path / "t.json", "csv": tmp_path / "t.csv"}
    job = TrackJob(video, **out, points_xy=[(30.0, 20.0)], queries_txy=[(1, 50.0, 30.0)], video_name="clip.mp4")
    job.check()
    seen = []
    source = extractor()
    tracks = job.run(source, lambda done, total: seen.append((done, total)))
    assert isinstance(tracks, Tracks)
    assert seen == [(k, 4) for k in range(1, 5)]
    assert all(path.is_file() for path in out.values())
    document = json.loads(out["json"].read_text())
    assert document == job.document(tracks, "dinov2_vits14", weights=source.provenance()["weights"])
    assert document["video"]["path"] == "clip.mp4"
    assert [t["query"] for t in document["tracks"]] == [[0, 30.0, 20.0], [1, 50.0, 30.0]]
    assert job.summary(tracks).endswith(f"-> {out['output']}, {out['json']}, {out['csv']}")


def test_track_video_writes_nothing_and_agrees_with_the_job(tmp_path, video, monkeypatch):
    source = extractor()
    job = TrackJob(video, json=str(tmp_path / "t.json"), points_xy=[(30.0, 20.0)], tracker=TrackerOptions(window=20))
    from_job = job.run(source)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    tracks = track_video(video, [[0, 30.0, 20.0]], source, TrackerOptions(window=20))
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert np.array_equal(tracks.numpy()["points_xy"], from_job.numpy()["points_xy"])
    assert tracks.visible.tolist() == from_job.visible.tolist()
