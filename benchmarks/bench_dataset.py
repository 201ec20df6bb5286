"""Dataset engines: images/s of ``--engine local`` and ``--engine ray`` against a plain loop, same run.

    python benchmarks/bench_dataset.py            # 200 images for speed; 200 vs 2,000 for memory
    python benchmarks/bench_dataset.py --quick    # smoke run (40 images; 40 vs 400)

* **speed**: the same 200 JPEGs (640x480) through ViT-S/14 (random weights, all 12 blocks) at
  224 px: a plain loop over ``Extractor.extract(path)`` (decode, then the model, one image at a
  time), :func:`~dinofeat.dataset.runs.extract_dataset` with the local engine (threads decode ahead,
  batches of 8, shards written), and with the Ray engine on this machine (one CPU worker; Ray is
  started before the clock starts, as a running cluster would be; the worker's start and model
  load are counted). Each runs in its own process, three times, interleaved; the best run counts
  (a shared machine's bursts of load only ever slow a run down), and all runs are printed.
  The local runs get the model already built, like the loop; the Ray worker loads it from a file.
* **memory**: peak resident memory (``ru_maxrss``) of a local-engine process over 200 and over
  2,000 images (at 56 px, the first block only, so it is quick): flat means the same.

Ratios are against the plain loop measured in the same run; absolute numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_images(folder: Path, count: int, size_wh=(640, 480), seed: int = 0) -> None:
    """``count`` JPEGs of smooth random content (JPEG decoding costs what it costs for photos)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        big = Image.fromarray(small).resize(size_wh, Image.Resampling.BICUBIC)
        noisy = np.clip(np.asarray(big, np.int16) + rng.integers(-20, 21, big.size[::-1] + (3,)), 0, 255)
        Image.fromarray(noisy.astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def worker(args: argparse.Namespace) -> dict:
    """One measured run in this process (``--worker MODE``); returns seconds, images and peak memory."""
    import torch

    from dinofeat.dataset.runs import extract_dataset
    from dinofeat.features.extractor import Extractor
    from dinofeat.models.weights import load_model
    from dinofeat.options import DatasetOptions, ExtractorOptions

    layers = (0,) if args.first_block else (-1,)
    options = ExtractorOptions(
        weights=args.weights, resolution=args.resolution, device="cpu", precision="fp32", layers=layers, batch_size=8
    )
    images = sorted(str(p) for p in Path(args.images).glob("*.jpg"))
    seconds_ray_init = None
    if args.worker == "loop":
        extractor = Extractor.from_options(options, model=load_model(options.model, options.weights))
        start = time.perf_counter()
        for path in images:
            extractor.extract(path)
        seconds = time.perf_counter() - start
    elif args.worker == "local":
        model = load_model(options.model, options.weights)
        start = time.perf_counter()
        report = extract_dataset([args.images], args.out, options, DatasetOptions(), model=model)
        seconds = time.perf_counter() - start
        assert report.done == len(images), report.summary()
    else:
        import ray

        start = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        seconds_ray_init = time.perf_counter() - start
        start = time.perf_counter()
        report = extract_dataset([args.images], args.out, options, DatasetOptions(engine="ray"))
        seconds = time.perf_counter() - start
        assert report.done == len(images), report.summary()
        ray.shutdown()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MB (Linux)
    return {
        "mode": args.worker,
        "images": len(images),
        "seconds": seconds,
        "ray_init_s": seconds_ray_init,
        "peak_mb": peak,
        "threads": torch.get_num_threads(),
    }


def run(mode: str, images: Path, out: Path, weights: Path, resolution: int, *, first_block: bool = False) -> dict:
    argv = [sys.executable, __file__, "--worker", mode, "--images", str(images), "--out", str(out)]
    argv += ["--weights", str(weights), "--resolution", str(resolution)] + ["--first-block"] * first_block
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer images")
    parser.add_argument("--no-ray", action="store_true", help="leave out the Ray engine")
    parser.add_argument("--attempts", type=int, help="interleaved runs of each engine; the best counts (default: 3)")
    parser.add_argument("--worker", choices=("loop", "local", "ray"), help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--resolution", type=int, default=224, help=argparse.SUPPRESS)
    parser.add_argument("--first-block", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    import torch

    from dinofeat.models.build import build_model
    from dinofeat.models.registry import get_spec

    speed_count, memory_counts = (40, (40, 400)) if args.quick else (200, (200, 2000))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        weights = root / "vits14.pth"
        torch.save(build_model(get_spec("dinov2_vits14")).init_random(0).state_dict(), weights)
        make_images(root / "speed", speed_count)
        modes = ["loop", "local"] + ([] if args.no_ray else ["ray"])
        runs: dict[str, list[dict]] = {mode: [] for mode in modes}
        for attempt in range(args.attempts or (1 if args.quick else 3)):
            for mode in modes:
                runs[mode].append(run(mode, root / "speed", root / f"out-{mode}-{attempt}", weights, 224))
        best = {mode: min(results, key=lambda r: r["seconds"]) for mode, results in runs.items()}
        base = speed_count / best["loop"]["seconds"]
        print(f"speed: {speed_count} JPEGs 640x480, ViT-S/14 at 224 px, CPU, {best['loop']['threads']} torch threads")
        print(f"{'engine':<28} {'images/s':>9} {'vs loop':>8}   all runs (images/s)")
        for mode in modes:
            rate = speed_count / best[mode]["seconds"]
            label = {"loop": "plain Extractor.extract loop", "local": "--engine local", "ray": "--engine ray"}[mode]
            spread = ", ".join(f"{speed_count / r['seconds']:.2f}" for r in runs[mode])
            print(f"{label:<28} {rate:>9.2f} {rate / base:>7.2f}x   {spread}")
        if "ray" in best:
            overhead = best["ray"]["seconds"] / best["local"]["seconds"] - 1
            print(f"ray overhead vs local: {overhead:+.0%} (ray.init, not counted: {best['ray']['ray_init_s']:.1f} s)")
        memory = {}
        for count in memory_counts:
            folder = root / f"memory-{count}"
            make_images(folder, count, size_wh=(320, 240), seed=count)
            memory[count] = run("local", folder, root / f"mem-out-{count}", weights, 56, first_block=True)
        small, large = (memory[c]["peak_mb"] for c in memory_counts)
        print(
            f"memory (--engine local, peak RSS): {memory_counts[0]} images {small:.0f} MB, "
            f"{memory_counts[1]} images {large:.0f} MB ({large / small:.2f}x)"
        )


if __name__ == "__main__":
    main()
