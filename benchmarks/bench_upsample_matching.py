"""Matching and tracking on AnyUp-upsampled maps vs patch maps, where the answer is known.

    python benchmarks/bench_upsample_matching.py              # 224 px, 12 x 12 queries, 6-frame pan
    python benchmarks/bench_upsample_matching.py --no-pixel   # skip per-pixel maps (the slow ones)
    python benchmarks/bench_upsample_matching.py --model content

Cases (skimage's astronaut photo, resized to ``--size`` pixels square):

* **identity**: the image matched to itself (answer: the query point);
* **shift**: the image against itself translated by a known sub-pixel shift (``--shift``, default
  3.3, 1.7 px, bilinear, borders reflected; answer: query + shift);
* **pan** (tracking): ``--frames`` crops of a larger copy of the photo, the window moving by
  ``--pan`` px per frame (bilinear, so sub-pixel); answer: query - t * pan. Tracked with
  :func:`dinofeat.tracking.track_frames` through an :class:`~dinofeat.features.upsample.UpsampledSource`.

Queries: a ``--grid`` x ``--grid`` grid of points kept ``--margin`` px away from the borders.
Matching is :func:`dinofeat.matching.match_features` (the exact search, 1/4-pixel lattice) on all
queries (no mutual or ratio filter): the error of each query is the distance, in original pixels,
from the best match to the answer. Maps: the patch map (``patch``), and AnyUp at
``--upsample-scale`` 2 and 4 (``x2``, ``x4``: 2 or 4 cells per patch side) and one feature per
processed pixel (``pixel``).

Weights are random on both sides (no released weights here): the backbone is a smooth random ViT
(``smooth``: low-frequency patch filters, tiny layer scale, no positional embedding, 2 blocks: the
tests' ``smooth_vit``) or ``content`` (all 12 blocks, layer scale 1e-3, no positional embedding:
the tracking benchmark's ``content_checkpoint``), AnyUp has its released architecture with random
weights. So this measures the geometry and interpolation of the upsampled maps, not what trained
AnyUp features do. Times are seconds for the whole case (model, upsampling, search) on this
machine; the ratio is against the patch map measured in the same run.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from skimage import data

from dinofeat.features.extractor import Extractor
from dinofeat.features.featuremap import FeatureMap
from dinofeat.features.upsample import Upsampler
from dinofeat.matching import match_features
from dinofeat.models.anyup import AnyUp
from dinofeat.models.build import build_model
from dinofeat.models.registry import get_spec
from dinofeat.models.vit import DenseViT
from dinofeat.tracking import track_frames

#: map name -> AnyUp scale (None: one feature per processed pixel); "patch" is not upsampled.
SCALES: dict[str, int | None] = {"x2": 2, "x4": 4, "pixel": None}


def smooth_vit(depth: int = 2, seed: int = 0, layerscale: float = 1e-4) -> DenseViT:
    """A random ViT-S/14 with smooth features: patch filters of at most one cycle per patch, a
    tiny layer scale, no positional embedding (the construction of the tests' ``smooth_vit``)."""
    vit = build_model(get_spec("dinov2_vits14"), depth=depth).init_random(seed, layerscale=layerscale)
    p = vit.patch_size
    centres = (torch.arange(p, dtype=torch.float32) + 0.5) / p
    waves = [torch.cos(math.pi * f * centres) for f in range(3)]
    basis = torch.stack([wy[:, None] * wx[None, :] for wy in waves for wx in waves])  # (9, p, p)
    gen = torch.Generator().manual_seed(seed + 1)
    weight = vit.patch_embed.proj.weight
    mix = torch.randn(weight.shape[0], 3, len(basis), generator=gen) / (p * len(basis) ** 0.5)
    with torch.no_grad():
        weight.copy_(torch.einsum("ock,kyx->ocyx", mix, basis))
        vit.pos_embed.zero_()
    return vit.eval()


def content_vit(seed: int = 0) -> DenseViT:
    """All 12 blocks of a random ViT-S/14, layer scale 1e-3, no positional embedding."""
    vit = build_model(get_spec("dinov2_vits14")).init_random(seed, layerscale=1e-3)
    with torch.no_grad():
        vit.pos_embed.zero_()
    return vit.eval()


def translated(image: np.ndarray, shift_xy: Sequence[float], size_wh: tuple[int, int]) -> np.ndarray:
    """``image`` moved by ``shift_xy`` pixels (content at p goes to p + shift), bilinear, borders
    reflected, cropped to ``size_wh`` from the top-left corner."""
    matrix = np.array([[1.0, 0.0, shift_xy[0]], [0.0, 1.0, shift_xy[1]]])
    return cv2.warpAffine(image, matrix, size_wh, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def grid_queries(size: int, count: int, margin: float) -> np.ndarray:
    """``(count**2, 2)`` pixel positions on a regular grid ``margin`` px inside the image."""
    axis = np.linspace(margin, size - 1 - margin, count)
    xs, ys = np.meshgrid(axis, axis)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


@dataclass
class Result:
    errors: np.ndarray  # (N,) px
    seconds: float


def maps_of(extractor: Extractor, upsampler: Upsampler, images: Sequence[np.ndarray], name: str) -> list[FeatureMap]:
    """The patch maps of ``images``, or their AnyUp maps (``name`` in :data:`SCALES`)."""
    maps = extractor.extract_arrays(list(images))
    if name == "patch":
        return maps
    return [upsampler.upsample(fmap, image, scale=SCALES[name]) for fmap, image in zip(maps, images)]


def matching_case(
    extractor: Extractor,
    upsampler: Upsampler,
    name: str,
    a: np.ndarray,
    b: np.ndarray,
    queries: np.ndarray,
    answer: np.ndarray,
) -> Result:
    """Match ``queries`` of ``a`` into ``b`` on ``name`` maps; errors against ``answer``."""
    start = time.perf_counter()
    fa, fb = maps_of(extractor, upsampler, [a, b], name)
    found = match_features(fa, fb, torch.from_numpy(queries).float()).target_xy.numpy()
    seconds = time.perf_counter() - start
    return Result(np.linalg.norm(found - answer, axis=1), seconds)


def pan_frames(photo: np.ndarray, size: int, frames: int, pan_xy: Sequence[float]) -> list[np.ndarray]:
    """``frames`` crops of ``photo`` ``size`` px square, the window moving by ``pan_xy`` per frame
    (its top-left corner at ``(8, 8) + t * pan``)."""
    return [translated(photo, (-8.0 - t * pan_xy[0], -8.0 - t * pan_xy[1]), (size, size)) for t in range(frames)]


def tracking_case(
    extractor: Extractor,
    upsampler: Upsampler,
    name: str,
    frames: list[np.ndarray],
    queries: np.ndarray,
    pan_xy: Sequence[float],
) -> Result:
    """Track ``queries`` from frame 0; errors over all later frames against query - t * pan."""
    source = extractor if name == "patch" else upsampler.wrap(extractor, scale=SCALES[name])
    queries_txy = np.concatenate([np.zeros((len(queries), 1)), queries], axis=1)
    start = time.perf_counter()
    steps = list(track_frames(enumerate(frames), queries_txy, source))
    seconds = time.perf_counter() - start
    errors = [
        np.linalg.norm(step.points_xy.numpy() - (queries - step.frame_index * np.asarray(pan_xy)), axis=1)
        for step in steps[1:]
    ]
    return Result(np.concatenate(errors), seconds)


def table(rows: dict[str, dict[str, Result]]) -> str:
    """Markdown table: one row per case and map, errors in px, time and error ratios vs ``patch``."""
    lines = [
        "| case | map | mean err px | median err px | <= 1 px | time s | mean err / patch | time / patch |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case, results in rows.items():
        base = results["patch"]
        for name, res in results.items():
            mean, median = float(res.errors.mean()), float(np.median(res.errors))
            within = float((res.errors <= 1.0).mean()) * 100
            ratio = mean / max(float(base.errors.mean()), 1e-9)
            lines.append(
                f"| {case} | {name} | {mean:.2f} | {median:.2f} | {within:.0f}% | {res.seconds:.2f} "
                f"| {ratio:.2f} | {res.seconds / base.seconds:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="image side, px (default: %(default)s)")
    parser.add_argument("--grid", type=int, default=12, help="queries per side (default: %(default)s)")
    parser.add_argument("--margin", type=float, default=24.0, help="query margin, px (default: %(default)s)")
    parser.add_argument("--shift", type=float, nargs=2, default=(3.3, 1.7), help="x y px (default: 3.3 1.7)")
    parser.add_argument("--pan", type=float, nargs=2, default=(1.3, 0.7), help="x y px per frame")
    parser.add_argument("--frames", type=int, default=6, help="pan frames; 0 skips tracking")
    parser.add_argument("--model", choices=("smooth", "content"), default="smooth")
    parser.add_argument("--no-pixel", action="store_true", help="skip per-pixel maps")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vit = smooth_vit() if args.model == "smooth" else content_vit()
    extractor = Extractor(vit, device="cpu", precision="fp32", resolution=args.size, batch_size=1)
    torch.manual_seed(0)
    upsampler = Upsampler(AnyUp(), device="cpu", precision="fp32")  # random weights: geometry only
    names = ["patch", "x2", "x4"] + ([] if args.no_pixel else ["pixel"])

    big = data.astronaut()
    photo = cv2.resize(big, (args.size, args.size), interpolation=cv2.INTER_AREA)
    queries = grid_queries(args.size, args.grid, args.margin)
    shifted = translated(photo, args.shift, (args.size, args.size))
    cases: dict[str, Callable[[str], Result]] = {
        "identity": lambda n: matching_case(extractor, upsampler, n, photo, photo, queries, queries),
        "shift": lambda n: matching_case(extractor, upsampler, n, photo, shifted, queries, queries + args.shift),
    }
    if args.frames > 1:
        scale = (args.size + 16 + args.frames * max(map(abs, args.pan))) / args.size
        wide = cv2.resize(big, None, fx=scale * args.size / big.shape[1], fy=scale * args.size / big.shape[0])
        frames = pan_frames(wide, args.size, args.frames, args.pan)
        cases["pan"] = lambda n: tracking_case(extractor, upsampler, n, frames, queries, args.pan)

    for name in names:  # warm-up: first calls allocate
        maps_of(extractor, upsampler, [photo], name)
    rows = {case: {name: run(name) for name in names} for case, run in cases.items()}
    print(f"{args.size} px, {len(queries)} queries, {args.model} random ViT-S/14, random AnyUp, {args.threads} threads")
    print(table(rows))


if __name__ == "__main__":
    main()
