"""Matching speed: dinofeat's ``match`` vs the naive per-point loop, same images, same run.

    python benchmarks/bench_match.py            # 2 images at 448 px, 1,000 query points, ViT-S/14
    python benchmarks/bench_match.py --quick    # smoke run (224 px, 100 points, 2 blocks)

The naive version is the seed's script: for each point, the feature of the patch containing it,
cosine against every patch of B, argmax, centre of that patch (features normalised once,
outside the loop, to be fair to it). Ours samples each query at its exact position and finds the
best sub-pixel position in the whole of B (:func:`dinofeat.matching.locate`); ``match`` adds the
mutual (cycle) check, i.e. a second search from B back to A. Times are medians over repetitions;
"with model" adds the feature extraction of both images (the same for both methods). Ratios > 1
mean ours is faster. Random weights: speed does not depend on them. A last line reports the
precision on the image matched to itself, where the answer is known exactly.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dinofeat.extractor import Extractor
from dinofeat.features import FeatureMap
from dinofeat.images import load_image
from dinofeat.matching import locate, match_features
from dinofeat.registry import get_spec
from dinofeat.vit import DinoVisionTransformer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def naive_loop(fa: FeatureMap, fb: FeatureMap, points_xy: torch.Tensor) -> torch.Tensor:
    """One point at a time: containing patch, cosine with every patch of B, argmax, patch centre."""
    feats_a = F.normalize(fa.features, dim=-1)
    feats_b = F.normalize(fb.features, dim=-1).reshape(-1, fb.dim)
    (ha, wa), wb = fa.grid_hw, fb.grid_hw[1]
    out = torch.empty(len(points_xy), 2)
    for i, point in enumerate(points_xy):
        u, v = fa.pixel_to_grid(point[None].double())[0].round().long().tolist()
        query = feats_a[min(max(v, 0), ha - 1), min(max(u, 0), wa - 1)]
        best = int((feats_b @ query).argmax())
        out[i] = fb.grid_to_pixel(torch.tensor([[best % wb, best // wb]], dtype=torch.float64))[0]
    return out


def median_time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--resolution", type=int, default=448)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16", "auto"))
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; on a busy machine 1 avoids "
        "thread-pool waits that swamp small operations)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    depth, points, resolution, reps = None, args.points, args.resolution, args.reps
    if args.quick:
        depth, points, resolution, reps = 2, 100, 224, 2
    vit = DinoVisionTransformer(get_spec("dinov2_vits14"), depth=depth).init_random(0)
    extractor = Extractor(vit, device=args.device, precision=args.precision, resolution=resolution)
    image_a = load_image(EXAMPLES / "astronaut.jpg")
    image_b = load_image(EXAMPLES / "astronaut_warped.jpg")
    fa, fb = extractor.extract_arrays([image_a, image_b])
    h, w = image_a.shape[:2]
    query = torch.rand(points, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([w - 1.0, h - 1.0])
    sync = torch.cuda.synchronize if extractor.device.type == "cuda" else (lambda: None)

    def timed(fn):
        def run():
            fn()
            sync()

        return median_time(run, reps)

    model = timed(lambda: extractor.extract_arrays([image_a, image_b]))
    naive = timed(lambda: naive_loop(fa, fb, query))
    ours_locate = timed(lambda: locate(fa.normalized().sample(query, normalize=True), fb))
    ours_match = timed(lambda: match_features(fa, fb, query))

    print(
        f"device={extractor.device} threads={torch.get_num_threads()} precision={args.precision} "
        f"model=ViT-S/14 depth={depth or 12} images={fa.image_size_wh}->{fa.processed_size_wh} "
        f"grid={fa.grid_hw} points={points}"
    )
    print(f"{'':34} {'matching s':>11} {'with model s':>13} {'naive/ours':>11} {'(with model)':>13}")
    print(f"{'model (2 images)':34} {'':>11} {model:>13.3f}")
    for name, seconds in (
        ("naive per-point loop", naive),
        ("ours: locate (sub-pixel search)", ours_locate),
        ("ours: match_features (+ mutual)", ours_match),
    ):
        ratio = naive / seconds
        ratio_model = (naive + model) / (seconds + model)
        print(f"{name:34} {seconds:>11.3f} {seconds + model:>13.3f} {ratio:>11.2f} {ratio_model:>13.2f}")

    # precision where the answer is known: A matched to itself
    inner = torch.from_numpy(np.asarray(_between_centres(fa, query)))
    ours_err = (match_features(fa, fa, query).target_xy - query).norm(dim=1)[inner]
    naive_err = (naive_loop(fa, fa, query) - query).norm(dim=1)[inner]
    print(
        f"identity error px (ours / naive): mean {ours_err.mean():.2f} / {naive_err.mean():.2f}, "
        f"max {ours_err.max():.2f} / {naive_err.max():.2f}, within 1 px {(ours_err <= 1).float().mean():.1%} / "
        f"{(naive_err <= 1).float().mean():.1%}"
    )


def _between_centres(fmap: FeatureMap, points_xy: torch.Tensor) -> torch.Tensor:
    g = fmap.pixel_to_grid(points_xy.double())
    h, w = fmap.grid_hw
    return (g[:, 0] >= 0) & (g[:, 0] <= w - 1) & (g[:, 1] >= 0) & (g[:, 1] <= h - 1)


if __name__ == "__main__":
    main()
