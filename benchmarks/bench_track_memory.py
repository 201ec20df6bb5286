"""Peak memory of ``dinofeat track`` over a short and a long video, with and without handing freed
memory back to the system (:mod:`dinofeat.runtime.allocator`), in the same run.

    python benchmarks/bench_track_memory.py           # 320x180, 200 vs 2,000 frames, 224 px
    python benchmarks/bench_track_memory.py --quick   # 40 vs 400 frames

The video is a smooth random texture panning sideways (H.264, written by PyAV); the model is ViT-S/14
with random weights (all 12 blocks) saved as Meta's ``.pth``. Each run is ``dinofeat track VIDEO
--grid 4 -o --json --csv`` in a fresh process; its peak resident memory (``VmHWM``) is printed.
"Without" replaces :func:`~dinofeat.runtime.allocator.release_freed_memory` by a no-op in that
process: glibc then keeps the freed blocks, and the peak grows with the video's length.
Memory does not depend on the machine's load, so these numbers are stable; the times are not.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

# The child process: optionally disable the release, run the command, print the peak on exit.
CHILD = """
import atexit, sys
from dinofeat.runtime import allocator
if sys.argv.pop(1) == "without":
    allocator.release_freed_memory = lambda: False
from dinofeat.cli import main
atexit.register(lambda: print("peak", open("/proc/self/status").read().split("VmHWM:")[1].split()[0]))
sys.exit(main(sys.argv[1:]))
"""


def make_video(path: Path, frames: int, size_wh: tuple[int, int]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import write_h264  # the tests' PyAV writer (no dinofeat code)

    width, height = size_wh
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur((rng.random((height + 8, width + frames // 5 + 8, 3)) * 255).astype(np.uint8), (0, 0), 2)
    write_h264(path, [texture[4 : 4 + height, k // 5 : k // 5 + width] for k in range(frames)])


def make_weights(path: Path) -> None:
    from dinofeat.models.build import build_model
    from dinofeat.models.registry import get_spec

    torch.save(build_model(get_spec("dinov2_vits14")).init_random(0).state_dict(), path)


def peak_mb(mode: str, video: Path, weights: Path, frames: int, resolution: int, out: Path) -> tuple[float, float]:
    argv = [str(video), "--grid", "4", "-o", str(out / "t.mp4"), "--json", str(out / "t.json")]
    argv += ["--csv", str(out / "t.csv"), "--max-frames", str(frames), "--weights", str(weights)]
    argv += ["--resolution", str(resolution), "--device", "cpu", "-q"]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, mode, "track", *argv], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return int(done.stdout.split("peak")[-1]) / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 vs 400 frames")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--modes", nargs="+", choices=("without", "with"), default=["without", "with"])
    args = parser.parse_args()
    short, long = (40, 400) if args.quick else (200, 2000)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        video, weights = folder / "pan.mp4", folder / "dinov2_vits14_pretrain.pth"
        make_video(video, long, (320, 180))
        make_weights(weights)
        model = f"ViT-S/14 (random weights), {args.resolution} px"
        print(f"dinofeat track, 320x180 video, {model}, --grid 4, -o --json --csv")
        print(f"{'':>10} {short:>6} frames {long:>6} frames   growth   (peak resident MB; seconds)")
        for mode in args.modes:
            (a, ta), (b, tb) = (peak_mb(mode, video, weights, n, args.resolution, folder) for n in (short, long))
            print(f"{mode + ' release':>10} {a:6.0f} ({ta:4.0f}s) {b:6.0f} ({tb:4.0f}s)   {b / a - 1:+6.1%}")


if __name__ == "__main__":
    main()
