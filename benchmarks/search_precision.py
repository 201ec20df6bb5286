"""Precision of the exact search against the previous (capped) one, on the same seeds, same run.

    python benchmarks/search_precision.py

1. Brute force: on the maps of ``tests/test_search.py`` (i.i.d., smooth, a photo through a smooth
   random model, near-constant, one row/column, stride 7, patch 16 / stride 8), queries from three
   seeds; a *failure* is a query whose returned position scores more than 1e-6 below the best
   point of the 1/4-pixel lattice (every point evaluated with ``FeatureMap.sample``).
2. Identity and whole-patch shifts on two real photos with the smooth random model (flat
   similarity surfaces): PCK@1 and the queries whose answer scores below the truth's score - 1e-6.
Accuracy, not speed: the numbers do not depend on the machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import previous_search
import torch

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from test_matching import _lattice_points, _photos, _score, _smooth_extractor  # noqa: E402
from test_search import MAPS, _queries, brute_force, score_at  # noqa: E402

from dinofeat.matching import match_features  # noqa: E402
from dinofeat.search import Located, locate  # noqa: E402


def previous_locate(queries, target, exclusion=None, **_):
    found = previous_search.locate(queries, target, exclusion=exclusion)
    return Located(found.points_xy, found.scores, found.runner_up, torch.zeros(len(queries), dtype=torch.bool))


def brute_force_failures(photo) -> None:
    print(f"{'map':20} {'queries':>8} {'previous fails':>15} {'exact fails':>12}")
    totals = [0, 0, 0]
    for name in sorted(MAPS):
        fmap = MAPS[name](photo)
        n = fails_prev = fails_exact = 0
        for seed, noise in ((0, 0.0), (1, 0.05), (2, 0.3)):
            _, queries = _queries(fmap, 100, seed, noise)
            best = brute_force(fmap, queries).max(dim=1).values
            fails_prev += int((score_at(fmap, queries, previous_locate(queries, fmap).points_xy) < best - 1e-6).sum())
            fails_exact += int((score_at(fmap, queries, locate(queries, fmap).points_xy) < best - 1e-6).sum())
            n += len(queries)
        totals = [totals[0] + n, totals[1] + fails_prev, totals[2] + fails_exact]
        print(f"{name:20} {n:8d} {fails_prev:15d} {fails_exact:12d}")
    print(f"{'all':20} {totals[0]:8d} {totals[1]:15d} {totals[2]:12d}")


def identity_and_shifts() -> None:
    import dinofeat.matching as matching

    print(f"\n{'case':28} {'PCK@1 prev':>11} {'PCK@1 exact':>12} {'below truth prev':>17} {'exact':>6}")
    cases = [(0, None), (1, None), (0, (14, -28)), (1, (-28, 14))]
    for index, shift in cases:
        photo = _photos()[index]
        if shift is None:
            a = b = photo
            dx = dy = 0
        else:
            dx, dy = shift
            a = photo[28:-28, 28:-28]
            b = photo[28 - dy : photo.shape[0] - 28 - dy, 28 - dx : photo.shape[1] - 28 - dx]
        fa, fb = _smooth_extractor(a.shape[0]).extract_arrays([a, b])
        seed = index if shift is None else 10 + index
        points = _lattice_points(fa, 200, seed=seed, margin=0 if shift is None else 2)
        truth = points + torch.tensor([float(dx), float(dy)])
        queries = fa.normalized().sample(points, normalize=True)
        row = []
        for search in (previous_locate, locate):
            matching.locate = search
            m = match_features(fa, fb, points)
            pck = float(((m.target_xy - truth).norm(dim=1) <= 1.0).float().mean())
            below = int((_score(fb, queries, m.target_xy) < _score(fb, queries, truth) - 1e-6).sum())
            row.append((pck, below))
        matching.locate = locate
        label = f"photo {index} " + ("identity" if shift is None else f"shift {shift}")
        print(f"{label:28} {row[0][0]:11.3f} {row[1][0]:12.3f} {row[0][1]:17d} {row[1][1]:6d}")


if __name__ == "__main__":
    from skimage import data

    brute_force_failures(data.chelsea())
    identity_and_shifts()
