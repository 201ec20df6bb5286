"""Freed memory goes back to the system as a video streams, so a long video's job stays flat."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from dinofeat.runtime import allocator
from dinofeat.runtime.allocator import release_freed_memory, releasing
from tests.conftest import write_h264


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


# Runs `dinofeat track` in a fresh process and prints its peak resident memory (MB) on exit.
_PEAK_OF_TRACK = """
import atexit, sys
from dinofeat.cli import main
atexit.register(lambda: print("peak", open("/proc/self/status").read().split("VmHWM:")[1].split()[0]))
sys.exit(main(sys.argv[1:]))
"""


def _peak_mb_of_track(video, out, weights, frames: int) -> float:
    argv = [str(video), "--grid", "4", "-o", str(out / f"{frames}.mp4"), "--json", str(out / f"{frames}.json")]
    argv += ["--csv", str(out / f"{frames}.csv"), "--max-frames", str(frames), "--weights", str(weights)]
    argv += ["--resolution", "112", "--device", "cpu", "-q"]
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_OF_TRACK, "track", *argv], capture_output=True, text=True, check=True
    )
    assert json.loads((out / f"{frames}.json").read_text())["video"]["frames"] == frames
    return int(done.stdout.split("peak")[-1]) / 1024


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory read from /proc")
def test_tracking_memory_does_not_grow_with_the_video_length(tmp_path, vits14_checkpoint):
    rng = np.random.default_rng(0)
    texture = (rng.random((100, 400, 3)) * 255).astype(np.uint8)
    video = write_h264(tmp_path / "long.mp4", [texture[5:95, k // 10 : k // 10 + 160] for k in range(2000)])
    short, long = (_peak_mb_of_track(video, tmp_path, vits14_checkpoint, n) for n in (200, 2000))
    assert long <= short * 1.05, f"peak {short:.0f} MB over 200 frames, {long:.0f} MB over 2,000"
