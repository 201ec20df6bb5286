"""How long each command takes to exit after Ctrl-C sent in the middle of a slow forward block.

Each job runs as a user runs it (a subprocess of the ``dinofeat`` command, its own process group),
with a random-weight ViT-B/14 at a resolution where one transformer block takes a good fraction of
a second on a CPU, so the signal lands inside a block. SIGINT goes to the whole process group, as a
terminal's Ctrl-C does, once the command is in its model passes (its block bar, on stderr, is up).
The time is from the signal to the process's exit; the exit status and the files left are shown.

    python benchmarks/bench_interrupt.py              # track, pca on a video, extract, a dataset, the app
    python benchmarks/bench_interrupt.py --rounds 5 --resolution 672
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_inputs(folder: Path) -> dict[str, Path]:
    from dinofeat.registry import get_spec
    from dinofeat.video import VideoWriter
    from dinofeat.vit import DinoVisionTransformer

    rng = np.random.default_rng(0)
    weights = folder / "vitb14.pth"
    torch.save(DinoVisionTransformer(get_spec("dinov2_vitb14")).init_random(0).state_dict(), weights)
    video = folder / "clip.mp4"
    with VideoWriter(video, fps=8, size_wh=(320, 240)) as sink:
        for _ in range(6):
            sink.write(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    images = folder / "images"
    images.mkdir()
    for k in range(6):
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(images / f"{k}.png")
    return {"weights": weights, "video": video, "images": images, "image": images / "0.png"}


def commands(inputs: dict[str, Path], out: Path, resolution: int) -> dict[str, list[str]]:
    model = ["--weights", str(inputs["weights"]), "--model", "dinov2_vitb14", "--resolution", str(resolution)]
    model += ["--device", "cpu", "--precision", "fp32"]
    return {
        "track": ["track", str(inputs["video"]), "--grid", "3", "--json", str(out / "t.json"), *model],
        "pca (video)": ["pca", str(inputs["video"]), "-o", str(out / "p.mp4"), *model],
        "extract": ["extract", str(inputs["image"]), "-o", str(out / "f.npz"), *model],
        "extract --out-dir (local engine)": ["extract", str(inputs["images"]), "--out-dir", str(out / "ds"), *model],
    }


def interrupt_once(argv: list[str], out: Path) -> tuple[float, int, list[str]]:
    """Start ``dinofeat argv``; Ctrl-C once its block bar is up; (seconds to exit, exit status, files left)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "100"}
    child = subprocess.Popen(
        [sys.executable, "-c", "from dinofeat.cli import main; raise SystemExit(main())", *argv],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    in_blocks = threading.Event()

    def watch() -> None:
        text = b""
        while chunk := child.stderr.read1(4096):
            text += chunk
            if re.search(rb"running [^\r\n]*\d+/\d+ \[", text):  # the block bar is up: a pass is under way
                in_blocks.set()
        in_blocks.set()

    threading.Thread(target=watch, daemon=True).start()
    in_blocks.wait(600)
    time.sleep(0.05)  # well inside the next block
    sent = time.monotonic()
    os.killpg(child.pid, signal.SIGINT)
    status = child.wait()
    return time.monotonic() - sent, status, sorted(p.name for p in out.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=896)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_inputs(Path(tmp))
        print(f"ViT-B/14, random weights, --resolution {args.resolution}, {torch.get_num_threads()} threads")
        print(f"{'command':36s} {'median s':>9s} {'max s':>7s}  exit statuses, files left")
        for number, name in enumerate(commands(inputs, Path(tmp), args.resolution)):
            times, statuses, left = [], set(), set()
            for k in range(args.rounds):
                out = Path(tmp) / f"out-{number}-{k}"
                out.mkdir()
                seconds, status, files = interrupt_once(commands(inputs, out, args.resolution)[name], out)
                times.append(seconds)
                statuses.add(status)
                left.update(files)
            print(f"{name:36s} {statistics.median(times):9.2f} {max(times):7.2f}  {sorted(statuses)}, {sorted(left)}", flush=True)


if __name__ == "__main__":
    main()
