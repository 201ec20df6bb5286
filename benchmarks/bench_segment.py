"""Speed and memory of ``dinofeat segment``'s label propagation.

* **propagation vs forward** at 480 px: one :meth:`VideoSegmenter.step` with a full context (the
  first frame and 7 recent ones) plus reading the mask back at the original pixels, against one
  forward pass of ViT-S/14 on the same 640x480 frame (CPU; the issue's target: propagation <= 15 %
  of the forward);
* **peak memory at 480 px and 1080 px** of the segmenter alone (random feature maps of the grid a
  ViT-S/14 gives at that size), next to the size of the reference's dense ``(context, patches,
  patches)`` affinity and neighbourhood mask, which ours never builds;
* **peak memory for 100 vs 1,000 frames** at 480 px (flat: the segmenter holds 8 frames);
* **segment vs track**: frames/s of the two commands end to end on the same video and model.

Memory is the peak resident set (``ru_maxrss``) of a fresh process per measurement, minus that
process's resident set before the segmenter starts. The model has random weights (speed does not
depend on them).

    python benchmarks/bench_segment.py            # 480 px timing, 480 vs 1080 p, 100 vs 1000 frames
    python benchmarks/bench_segment.py --quick    # a smoke run (smaller counts)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PATCH = 14
DIM = 384  # ViT-S
SIZES = {"480p": (640, 480), "1080p": (1920, 1080)}


def grid_of(size_wh: tuple[int, int], resolution: int) -> tuple[int, int, tuple[int, int]]:
    """Patch grid (h, w) and processed size ViT-S/14 gives a frame of ``size_wh`` at ``resolution``."""
    from dinofeat.io.images import processed_size

    processed = processed_size(size_wh, resolution, patch_size=PATCH, max_size=None)
    return processed[1] // PATCH, processed[0] // PATCH, processed


def random_map(size_wh: tuple[int, int], resolution: int, generator: torch.Generator):
    from dinofeat.features.featuremap import FeatureMap

    h, w, processed = grid_of(size_wh, resolution)
    return FeatureMap(torch.randn(h, w, DIM, generator=generator), size_wh, processed)


def first_labels(fmap) -> torch.Tensor:
    """Soft labels of a centred box, label 1 (2 labels)."""
    from dinofeat.segmentation import mask_to_patch_labels

    width, height = fmap.image_size_wh
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 1
    return mask_to_patch_labels(mask, fmap, 2)


def rss_mb() -> float:
    """This process's resident set now, MB (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def memory_worker(size: str, frames: int) -> dict:
    """In this process: a segmenter over ``frames`` random maps of ``size``; its peak memory."""
    from dinofeat.segmentation import VideoSegmenter, patch_labels_to_mask

    torch.set_num_threads(max(1, torch.get_num_threads()))
    generator = torch.Generator().manual_seed(0)
    size_wh = SIZES[size]
    resolution = size_wh[1]
    first = random_map(size_wh, resolution, generator)
    segmenter = VideoSegmenter(first, first_labels(first))
    before = rss_mb()
    start = time.perf_counter()
    for _ in range(frames - 1):
        fmap = random_map(size_wh, resolution, generator)
        patch_labels_to_mask(segmenter.step(fmap), fmap)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MB (Linux)
    h, w = first.grid_hw
    dense = 8 * (h * w) ** 2 * 4 * 2 / 2**20  # the reference: affinity + mask, 8 context frames, float32
    return {
        "size": size,
        "frames": frames,
        "grid": [h, w],
        "peak_mb": peak,
        "added_mb": peak - before,
        "seconds_per_frame": seconds / max(1, frames - 1),
        "dense_mb": dense,
    }


def measure_memory(size: str, frames: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", size, "--frames", str(frames)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def content_checkpoint(path: Path) -> Path:
    from dinofeat.models.dinov2 import DinoVisionTransformer
    from dinofeat.models.registry import get_spec

    vit = DinoVisionTransformer(get_spec("dinov2_vits14")).init_random(0, layerscale=1e-3)
    with torch.no_grad():
        vit.pos_embed.zero_()
    torch.save(vit.state_dict(), path)
    return path


def frame_640x480() -> np.ndarray:
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut(), (640, 480), interpolation=cv2.INTER_AREA)


def propagation_vs_forward(weights: Path, repeats: int) -> dict:
    """Median seconds of a forward pass and of one full-context propagation + mask read, 480 px, CPU."""
    from dinofeat.features.extractor import Extractor
    from dinofeat.segmentation import VideoSegmenter, patch_labels_to_mask

    extractor = Extractor("dinov2_vits14", weights=weights, device="cpu", precision="fp32", resolution=480)
    image = frame_640x480()
    fmap = extractor.extract_arrays([image])[0]
    forward = []
    for _ in range(repeats):
        start = time.perf_counter()
        extractor.extract_arrays([image])
        forward.append(time.perf_counter() - start)
    segmenter = VideoSegmenter(fmap, first_labels(fmap))
    for _ in range(8):  # fill the context: the first frame and 7 recent ones
        segmenter.step(fmap)
    propagation, reading = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        soft = segmenter.step(fmap)
        middle = time.perf_counter()
        patch_labels_to_mask(soft, fmap)
        propagation.append(middle - start)
        reading.append(time.perf_counter() - middle)
    return {
        "grid": list(fmap.grid_hw),
        "forward_s": statistics.median(forward),
        "propagation_s": statistics.median(propagation),
        "mask_read_s": statistics.median(reading),
    }


def segment_vs_track(weights: Path, folder: Path, frames: int) -> dict:
    """Frames/s of ``dinofeat segment`` (a mask) and ``dinofeat track`` (16 points) on one video, 480 px."""
    from dinofeat.cli import main
    from dinofeat.io.masks import save_mask
    from dinofeat.io.video import VideoWriter

    image = frame_640x480()
    video = folder / "clip.mp4"
    with VideoWriter(video, fps=25, size_wh=(640, 480), crf=12) as sink:
        for k in range(frames):
            sink.write(np.ascontiguousarray(np.roll(image, 4 * k, axis=1)))
    mask = np.zeros((480, 640), np.uint8)
    mask[120:360, 160:480] = 1
    save_mask(folder / "first.png", mask)
    model = ["--weights", str(weights), "--resolution", "480", "--device", "cpu", "--precision", "fp32", "-q"]
    runs = {
        "segment": ["segment", str(video), "--mask", str(folder / "first.png"), "--masks-dir", str(folder / "m")],
        "track": ["track", str(video), "--grid", "4", "--json", str(folder / "t.json")],
    }
    rates = {}
    for name, argv in runs.items():
        start = time.perf_counter()
        assert main([*argv, *model]) == 0
        rates[name] = frames / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--worker", choices=sorted(SIZES), help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, default=100, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(memory_worker(args.worker, args.frames)))
        return
    repeats, video_frames, counts = (3, 8, (20, 200)) if args.quick else (7, 48, (100, 1000))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights = content_checkpoint(folder / "content_vits14.pth")
        timing = propagation_vs_forward(weights, repeats)
        share = timing["propagation_s"] / timing["forward_s"]
        print(
            f"480 px (grid {timing['grid'][0]}x{timing['grid'][1]}), CPU: forward {timing['forward_s'] * 1000:.0f} ms, "
            f"propagation {timing['propagation_s'] * 1000:.0f} ms ({share:.0%} of the forward), "
            f"mask read {timing['mask_read_s'] * 1000:.0f} ms"
        )
        for size in SIZES:
            result = measure_memory(size, 20 if args.quick else 50)
            print(
                f"memory {size} (grid {result['grid'][0]}x{result['grid'][1]}): peak {result['peak_mb']:.0f} MB, "
                f"{result['added_mb']:.0f} MB above the inputs; the reference's dense affinity + mask would be "
                f"{result['dense_mb']:.0f} MB; {result['seconds_per_frame'] * 1000:.0f} ms/frame"
            )
        small, large = (measure_memory("480p", count) for count in counts)
        print(
            f"memory 480p, {counts[0]} vs {counts[1]} frames: peak {small['peak_mb']:.0f} vs {large['peak_mb']:.0f} MB "
            f"({large['peak_mb'] / small['peak_mb']:.2f}x)"
        )
        rates = segment_vs_track(weights, folder, video_frames)
        print(
            f"end to end, 640x480, {video_frames} frames, 480 px, CPU: segment {rates['segment']:.2f} frames/s, "
            f"track (16 points) {rates['track']:.2f} frames/s"
        )


if __name__ == "__main__":
    main()
