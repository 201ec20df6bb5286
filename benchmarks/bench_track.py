"""Speed and accuracy of ``dinofeat track`` against the seed's approach, same video, same run.

The seed's approach (as in the original example scripts): OpenCV decodes the video, the model runs
on one frame at a time in fp32, each point's template is the feature of the patch containing it in
frame 0, and every frame a Python loop over the points takes the global argmax of the cosine
(answers snap to patch centres); trails are drawn with OpenCV and written as mp4v.

Ours: the ``dinofeat track`` command end to end (PyAV decoding, batched model in the automatic
precision, exact window search, visibility checks, H.264 output with trails, JSON), exactly as a
user runs it, in several configurations measured in the same run: the exact search with one frame
per forward pass and with eight, and the previous (capped) search (``previous_search.py``) put in
its place, to show what exactness costs in frames/s; and with ``--compile on`` against ``off``
(frames/s end to end, the compile included, and after it: ``compile s`` is the time the command
said it spent compiling, inductor's cache warm after the first configuration that compiles).

The video is synthetic with known motion: a real photo (scikit-image's astronaut, upscaled) under
a smooth sub-pixel camera pan, so both trackers' errors can be measured. The model has random
weights (speed does not depend on them), made content-only (layerscale 1e-3, zero positional
embedding; see tests/test_tracking.py) so that accuracy is meaningful; pass ``--weights`` to use a
real checkpoint instead.

    python benchmarks/bench_track.py            # 640x480, 64 frames, 448 px, 16 points
    python benchmarks/bench_track.py --quick    # a smoke run in a few seconds
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import re
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch


def make_video(path: Path, size_wh: tuple[int, int], origins, fps: float) -> None:
    """Frames of a real photo seen by a camera whose top-left corner is at ``origins`` (float pixels)."""
    from skimage import data

    from dinofeat.io.video import VideoWriter

    width, height = size_wh
    photo = cv2.resize(data.astronaut(), (2 * max(size_wh), 2 * max(size_wh)), interpolation=cv2.INTER_CUBIC)
    with VideoWriter(path, fps=fps, size_wh=size_wh, crf=12) as sink:
        for ox, oy in origins:
            shift = np.float32([[1, 0, -ox], [0, 1, -oy]])
            sink.write(
                cv2.warpAffine(photo, shift, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            )


def content_checkpoint(path: Path) -> Path:
    from dinofeat.models.dinov2 import DinoVisionTransformer
    from dinofeat.models.registry import get_spec

    vit = DinoVisionTransformer(get_spec("dinov2_vits14")).init_random(0, layerscale=1e-3)
    with torch.no_grad():
        vit.pos_embed.zero_()
    torch.save(vit.state_dict(), path)
    return path


def seed_track(
    video: Path, points_xy: np.ndarray, weights: Path, resolution: int, out: Path, trail: int = 12
) -> np.ndarray:
    """The seed's tracker (see module docstring); returns ``(T, N, 2)`` positions."""
    from dinofeat.drawing import palette
    from dinofeat.features.extractor import Extractor

    extractor = Extractor(
        "dinov2_vits14", weights=weights, device="cpu", precision="fp32", resolution=resolution, batch_size=1
    )
    capture = cv2.VideoCapture(str(video))
    fps = capture.get(cv2.CAP_PROP_FPS)
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    colors = [tuple(int(c) for c in color[::-1]) for color in palette(len(points_xy))]
    templates, history = None, []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        fmap = extractor.extract(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).normalized()
        h, w = fmap.grid_hw
        feats = fmap.features.reshape(h * w, -1)
        if templates is None:  # the containing patch of each point in frame 0
            cols_rows = np.floor(fmap.pixel_to_grid(points_xy) + 0.5).astype(int)
            cols_rows = np.clip(cols_rows, 0, [w - 1, h - 1])
            templates = [feats[r * w + c] for c, r in cols_rows]
        positions = []
        for template in templates:  # the seed's loop over points
            best = int(torch.argmax(feats @ template))
            positions.append(fmap.grid_to_pixel(np.array([[best % w, best // w]], dtype=np.float64))[0])
        history.append(positions)
        for i in range(len(templates)):
            recent = [frame[i] for frame in history[-trail:]]
            for a, b in itertools.pairwise(recent):
                cv2.line(bgr, tuple(int(v) for v in a), tuple(int(v) for v in b), colors[i], 2)
            cv2.circle(bgr, tuple(int(v) for v in recent[-1]), 4, colors[i], -1)
        writer.write(bgr)
    capture.release()
    writer.release()
    return np.array(history)


def errors(found: np.ndarray, truth: np.ndarray, patch_px: float) -> dict:
    e = np.linalg.norm(found - truth, axis=-1)[1:]  # frame 0 is the query itself
    return {
        "mean_px": float(e.mean()),
        "median_px": float(np.median(e)),
        "within_half_patch": float((e <= patch_px / 2).mean()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (small video, resolution 112)")
    parser.add_argument("--size", default="640x480", help="video size WxH (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=448)
    parser.add_argument("--points", type=int, default=4, help="an N x N grid of points (default: %(default)s)")
    parser.add_argument("--weights", help="a real checkpoint (default: random content-only weights)")
    parser.add_argument("--precision", default="auto", help="ours (default: %(default)s; the seed is fp32)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="frames per forward pass")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions; the fastest counts")
    parser.add_argument(
        "--compile-modes", nargs="+", default=["off", "on"], help="--compile values to run (default: off on)"
    )
    parser.add_argument(
        "--motion",
        choices=("pan", "steps"),
        default="pan",
        help="pan: smooth sub-pixel camera pan; steps: the camera moves by whole patches "
        "(back and forth), where exact trackers are exact (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.frames, args.resolution, args.points = "224x168", 6, 112, 2
    width, height = (int(v) for v in args.size.lower().split("x"))
    torch.manual_seed(0)

    from dinofeat.cli import main as dinofeat
    from dinofeat.points import grid_points

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        video = folder / "pan.mp4"
        fps = 25.0
        patch_px = 14 * min(width, height) / args.resolution  # one patch in video pixels (square pixels)
        if args.motion == "pan":
            step = (width / 250 + 0.37, height / 400 + 0.21)  # smooth, never whole pixels
            origins = [(40 + step[0] * k, 40 + step[1] * k) for k in range(args.frames)]
            motion = f"pan {step[0]:.2f},{step[1]:.2f} px/frame"
        else:
            origins = [(40 + patch_px * (k % 6), 40 + patch_px * (k % 2)) for k in range(args.frames)]
            motion = f"whole-patch steps of {patch_px:.2f} px"
        make_video(video, (width, height), origins, fps)
        weights = Path(args.weights) if args.weights else content_checkpoint(folder / "content_vits14.pth")
        margin = np.array([0.2 * width, 0.2 * height])
        points = grid_points((int(0.5 * width), int(0.5 * height)), args.points).numpy() + margin
        truth = np.array([points + np.subtract(origins[0], o) for o in origins])

        start = time.perf_counter()
        seed_xy = seed_track(video, points, weights, args.resolution, folder / "seed.mp4")
        seed_s = time.perf_counter() - start

        configs = {
            f"exact, batch {size}" + (", compiled" if mode == "on" else ""): ("exact", size, mode)
            for size in args.batch_sizes
            for mode in args.compile_modes
        }
        configs[f"previous search, batch {args.batch_sizes[-1]}"] = ("previous", args.batch_sizes[-1], "off")
        ours = {}
        for _ in range(args.rounds):  # rounds interleave the configurations against load drift
            for name, (search, batch, compile_mode) in configs.items():
                argv = [
                    "track",
                    str(video),
                    "-o",
                    str(folder / "ours.mp4"),
                    "--json",
                    str(folder / "ours.json"),
                    "--weights",
                    str(weights),
                    "--resolution",
                    str(args.resolution),
                    "--device",
                    "cpu",
                    "--precision",
                    args.precision,
                    "--batch-size",
                    str(batch),
                    "--compile",
                    compile_mode,
                    "--quiet",
                ]
                for x, y in points:
                    argv += ["--point", f"{x},{y}"]
                with _search(search), _compile_seconds() as compiling:
                    start = time.perf_counter()
                    if dinofeat(argv) != 0:
                        raise SystemExit("dinofeat track failed")
                    seconds = time.perf_counter() - start
                doc = json.loads((folder / "ours.json").read_text())
                found = np.array([track["points"] for track in doc["tracks"]]).transpose(1, 0, 2)
                visible = np.array([track["visible"] for track in doc["tracks"]]).T
                best = ours.get(name)
                if best is None or seconds < best[0]:
                    ours[name] = (seconds, found, visible, sum(compiling))

    frames = len(origins)
    from dinofeat.runtime.devices import resolve_precision

    precision = str(resolve_precision(args.precision, torch.device("cpu"))).replace("torch.", "")
    result = {
        "video": f"{width}x{height}, {frames} frames, {motion}",
        "resolution": args.resolution,
        "points": len(points),
        "threads": torch.get_num_threads(),
        "precision": precision,
        "seed": {"fps": frames / seed_s, **errors(seed_xy, truth, patch_px)},
    }
    for name, (seconds, found, visible, compile_s) in ours.items():
        result[name] = {
            "fps": frames / seconds,
            "fps_after_compile": frames / (seconds - compile_s),
            "compile_s": compile_s,
            **errors(found, truth, patch_px),
            "visible": float(visible[1:].mean()),
        }
    print(
        f"video {result['video']}; model input {args.resolution} px; {len(points)} points; "
        f"{result['threads']} torch threads; ours in {precision}, the seed in float32"
    )
    print(
        f"{'':28} {'frames/s':>9} {'vs seed':>8} {'compile s':>10} {'after it':>9} {'mean err':>9} {'median':>7} "
        f"{'<= 1/2 patch':>13} {'visible':>8}"
    )
    for name in ("seed", *ours):
        r = result[name]
        print(
            f"{name:28} {r['fps']:9.2f} {r['fps'] / result['seed']['fps']:7.2f}x {r.get('compile_s', 0):10.1f} "
            f"{r.get('fps_after_compile', r['fps']):9.2f} {r['mean_px']:8.2f}px "
            f"{r['median_px']:6.2f}px {r['within_half_patch']:12.0%} {r.get('visible', 1.0):8.0%}"
        )
    print(json.dumps(result))
    return 0


@contextlib.contextmanager
def _compile_seconds():
    """Collects the seconds of each "compiled the model for WxH in S s" the command says."""
    found: list[float] = []

    class Listener(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said = re.search(r"compiled the model for \S+ in ([0-9.]+) s", record.getMessage())
            if said:
                found.append(float(said.group(1)))

    logger, listener = logging.getLogger("dinofeat"), Listener()
    logger.addHandler(listener)
    try:
        yield found
    finally:
        logger.removeHandler(listener)


@contextlib.contextmanager
def _search(which: str):
    """Run the tracker with the exact search (as shipped) or with the previous one in its place."""
    if which == "exact":
        yield
        return
    import previous_search

    import dinofeat.tracking as tracking

    saved = tracking.refine_peaks, tracking.locate, tracking.NormTable
    tracking.refine_peaks = lambda q, fmap, peaks, radius, table=None: previous_search.refine_peaks(
        q, fmap, peaks, radius=radius
    )
    tracking.locate = lambda q, fmap, table=None: previous_search.locate(q, fmap)
    tracking.NormTable = lambda fmap: None
    try:
        yield
    finally:
        tracking.refine_peaks, tracking.locate, tracking.NormTable = saved


if __name__ == "__main__":
    raise SystemExit(main())
