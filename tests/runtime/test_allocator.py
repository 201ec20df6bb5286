"""Freed memory goes back to the system as a video streams, so a long video's job stays flat."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_h264
from dinofeat.runtime import allocator
from dinofeat.runtime.allocator import release_freed_memory, releasing

TESTS = Path(__file__).resolve().parents[1]


def test_releasing_hands_on_every_item_and_releases_every_few(monkeypatch):
    released = []
    monkeypatch.setattr(allocator, "release_freed_memory", lambda: released.append(True))
    assert list(releasing(range(20), every=8)) == list(range(20))
    assert len(released) == 2


def test_closing_the_stream_closes_the_generator_it_wraps():
    closed = []

    def frames():
        try:
            yield from range(10)
        finally:
            closed.append(True)

    stream = releasing(frames())
    next(stream)
    stream.close()
    assert closed == [True]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_works_on_linux():
    assert release_freed_memory() is True


# Runs TrackJob (what `dinofeat track` runs once the model is loaded) in a fresh process, with a
# one-block random ViT-S/14 at 112 px, and prints its peak resident memory (kB) on exit.
_PEAK_OF_TRACK = """
import sys
sys.path.insert(0, sys.argv.pop(1))  # the tests folder: its conftest
from conftest import random_vit
from dinofeat.features.extractor import Extractor
from dinofeat.jobs.track import TrackJob
from dinofeat.options import FrameOptions
video, out, frames = sys.argv[1], sys.argv[2], int(sys.argv[3])
# compile off: under auto the 2,000-frame job compiles (inductor's own memory), which is not measured here
extractor = Extractor(random_vit("dinov2_vits14", depth=1), resolution=112, device="cpu", precision="fp32",
                      compile="off")
job = TrackJob(video, output=out + ".mp4", json=out + ".json", csv=out + ".csv", grid=4,
               frames=FrameOptions(max_frames=frames))
tracks = job.run(extractor)
assert len(tracks) == frames
print("peak", open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
"""


def _peak_mb_of_track(video: Path, out: Path, frames: int) -> float:
    command = [sys.executable, "-c", _PEAK_OF_TRACK, str(TESTS), str(video), str(out / str(frames)), str(frames)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split("peak")[-1]) / 1024


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory read from /proc")
def test_tracking_memory_does_not_grow_with_the_video_length(tmp_path):
    """Without the release, this peak grew 31 % (359 -> 469 MB); releasing every 8th frame, 9 %."""
    rng = np.random.default_rng(0)
    texture = (rng.random((100, 400, 3)) * 255).astype(np.uint8)
    video = write_h264(tmp_path / "long.mp4", [texture[5:95, k // 10 : k // 10 + 160] for k in range(2000)])
    short, long = (_peak_mb_of_track(video, tmp_path, n) for n in (200, 2000))
    assert long <= short * 1.05, f"peak {short:.0f} MB over 200 frames, {long:.0f} MB over 2,000"
