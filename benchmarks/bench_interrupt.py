"""How long each command takes to exit after Ctrl-C sent in the middle of a slow forward block.

Each job runs as a user runs it (a subprocess of the ``dinofeat`` command, its own process group),
with a random-weight ViT-B/14 at a resolution where one transformer block takes a good fraction of
a second on a CPU, so the signal lands inside a block. SIGINT goes to the whole process group, as a
terminal's Ctrl-C does, a few seconds after its first progress bar is up (inside a forward pass).
The app is started the same way and asked (by HTTP, as its page does) to run a PCA; Ctrl-C comes
a few seconds into that request.
The time is from the signal to the process's exit; the exit status and the files left are shown.

    python benchmarks/bench_interrupt.py              # track, pca on a video, extract, a dataset, the app
    python benchmarks/bench_interrupt.py --rounds 5 --resolution 672
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import pty
import re
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

#: Seconds from the first progress bar (or the app's request) to Ctrl-C: well inside a forward pass.
SETTLE_SECONDS = 3.0


def make_inputs(folder: Path) -> dict[str, Path]:
    from dinofeat.io.video import VideoWriter
    from dinofeat.models.dinov2 import DinoVisionTransformer
    from dinofeat.models.registry import get_spec

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
    """Start ``dinofeat argv``; Ctrl-C inside a pass; (seconds to exit, exit status, files left).

    Its stderr is a terminal (a pseudo-terminal read here), so that it draws its bars as for a user.
    """
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a new one is 0 wide: no bars
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "100"}
    child = subprocess.Popen(
        [sys.executable, "-c", "from dinofeat.cli import main; raise SystemExit(main())", *argv],
        stderr=follower,
        stdout=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    os.close(follower)
    in_blocks = threading.Event()

    def watch() -> None:
        text = b""
        with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
            while chunk := os.read(leader, 4096):
                text += chunk
                if re.search(rb"\d+/\d+ \[", text):  # a bar is up: the work has begun
                    in_blocks.set()
        in_blocks.set()

    threading.Thread(target=watch, daemon=True).start()
    in_blocks.wait(600)
    time.sleep(SETTLE_SECONDS)  # inside a forward pass (one takes tens of seconds here)
    sent = time.monotonic()
    os.killpg(child.pid, signal.SIGINT)
    status = child.wait()
    seconds = time.monotonic() - sent
    os.close(leader)
    return seconds, status, sorted(p.name for p in out.iterdir())


def interrupt_app(inputs: dict[str, Path], resolution: int, port: int) -> tuple[float, int]:
    """Start ``dinofeat app``, ask it for a PCA, Ctrl-C during it; (seconds to exit, exit status)."""
    from gradio_client import Client, handle_file

    model = ["--weights", str(inputs["weights"]), "--model", "dinov2_vitb14", "--resolution", str(resolution)]
    argv = ["app", "--port", str(port), "--device", "cpu", "--precision", "fp32", *model]
    child = subprocess.Popen(
        [sys.executable, "-c", "from dinofeat.cli import main; raise SystemExit(main())", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    while b"open http" not in child.stdout.readline():
        pass
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    endpoint = next(
        name
        for name in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        if "pca" in name and "run" in name
    )
    client.submit([handle_file(str(inputs["image"]))], api_name=endpoint)
    time.sleep(SETTLE_SECONDS)
    sent = time.monotonic()
    os.killpg(child.pid, signal.SIGINT)
    status = child.wait()
    return time.monotonic() - sent, status


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
            report(name, times, f"{sorted(statuses)}, {sorted(left)}")
        times, statuses = [], set()
        for k in range(args.rounds):
            seconds, status = interrupt_app(inputs, args.resolution, port=7900 + k)
            times.append(seconds)
            statuses.add(status)
        report("app (during a PCA request)", times, str(sorted(statuses)))


def report(name: str, times: list[float], rest: str) -> None:
    print(f"{name:36s} {statistics.median(times):9.2f} {max(times):7.2f}  {rest}", flush=True)


if __name__ == "__main__":
    main()
