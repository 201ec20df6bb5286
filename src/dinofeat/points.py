"""Query points: given by the user (checked), on a regular grid, chosen automatically, or read from a file.

All positions are float ``(x, y)`` pixels of the original image (centre of the top-left pixel at
``(0, 0)``); tracking queries are ``(t, x, y)`` with ``t`` a frame index.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike

from dinofeat.errors import InputError, field
from dinofeat.features.featuremap import FeatureMap, check_inside


def grid_points(size_wh: tuple[int, int], n: int) -> torch.Tensor:
    """``(n * n, 2)`` float32 pixel positions of a regular n x n grid of cell centres, row by row.

    >>> grid_points((40, 20), 2).tolist()
    [[9.5, 4.5], [29.5, 4.5], [9.5, 14.5], [29.5, 14.5]]
    """
    if n < 1:
        raise InputError(f"grid must be at least 1, got {n}")
    w, h = size_wh
    xs = (torch.arange(n, dtype=torch.float64) + 0.5) * w / n - 0.5
    ys = (torch.arange(n, dtype=torch.float64) + 0.5) * h / n - 0.5
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((xx, yy), dim=-1).reshape(-1, 2).float()


def check_points(points_xy: ArrayLike, size_wh: tuple[int, int], label: str = "image A") -> torch.Tensor:
    """Validate user query points: ``(N, 2)`` finite, inside the image; returns float32 ``(N, 2)``.

    Raises :class:`InputError` naming the first bad point.
    """
    try:
        pts = np.asarray(points_xy, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("query points must be a list of (x, y) number pairs") from None
    if pts.size == 0:
        raise InputError("no query points given")
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise InputError(f"query points must be (x, y) pairs, got an array of shape {pts.shape}")
    check_inside(pts, size_wh, label=label, what="query point")
    return torch.from_numpy(pts).float()


def mutual_nearest_patches(
    fa: FeatureMap, fb: FeatureMap, *, chunk_size: int = 4096
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours between the patches of two maps ("best buddies").

    Returns ``index_a`` ``(M,)`` and ``index_b`` ``(M,)`` flat patch indices (row-major) and their
    cosine ``(M,)``. The similarity is computed in row chunks, so memory stays
    ``chunk_size * h_b * w_b`` floats.
    """
    a = F.normalize(fa.features.float(), dim=-1).reshape(-1, fa.dim)
    b = F.normalize(fb.features.float(), dim=-1).reshape(-1, fb.dim).to(a.device)
    best_b = torch.empty(len(a), dtype=torch.long, device=a.device)
    best_ab = torch.empty(len(a), device=a.device)
    col_best = torch.full((len(b),), -math.inf, device=a.device)
    col_arg = torch.zeros(len(b), dtype=torch.long, device=a.device)
    for start in range(0, len(a), chunk_size):
        part = slice(start, start + chunk_size)
        sim = a[part] @ b.T
        best_ab[part], best_b[part] = sim.max(dim=1)
        chunk_best, chunk_arg = sim.max(dim=0)
        better = chunk_best > col_best
        col_best = torch.where(better, chunk_best, col_best)
        col_arg = torch.where(better, chunk_arg + start, col_arg)
    index_a = torch.arange(len(a), device=a.device)
    mutual = col_arg[best_b] == index_a
    return index_a[mutual], best_b[mutual], best_ab[mutual]


def auto_points(fa: FeatureMap, fb: FeatureMap, k: int) -> torch.Tensor:
    """``(<= k, 2)`` float32 image-A pixels of ``k`` distinctive, well-spread query points.

    Candidates are the patches of A that are mutual nearest neighbours with a patch of B; those
    scoring at least the median are spread over the image by farthest-point sampling (starting
    from the best), and the chosen ones are returned best score first. Fewer than ``k`` come back
    when there are fewer mutual pairs.
    """
    if k < 1:
        raise InputError(f"auto must be at least 1, got {k}")
    index_a, _, score = mutual_nearest_patches(fa, fb)
    if len(index_a) == 0:
        return torch.zeros(0, 2)
    order = score.argsort(descending=True)
    index_a, score = index_a[order], score[order]
    keep = max(min(k, len(score)), int((score >= score.median()).sum()))
    index_a, score = index_a[:keep], score[:keep]
    centres = fa.patch_centers().reshape(-1, 2).to(index_a.device)[index_a]
    chosen = farthest_points(centres, min(k, len(centres)))
    chosen = chosen[score[chosen].argsort(descending=True)]
    return centres[chosen].float().cpu()


def farthest_points(points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of ``k`` of ``points`` ``(N, D)`` picked greedily to be far from each other, starting
    with point 0 (farthest-point sampling: a few lines; no library among our dependencies has it)."""
    chosen = [0]
    dist = (points - points[0]).norm(dim=1)
    for _ in range(k - 1):
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = torch.minimum(dist, (points - points[nxt]).norm(dim=1))
    return torch.tensor(chosen, device=points.device)


def collect_queries(
    first_frame: int,
    size_wh: tuple[int, int],
    *,
    points_xy: Iterable[Sequence[float]] = (),
    queries_txy: Iterable[Sequence[float]] = (),
    points_file: str | os.PathLike | None = None,
    grid: int | None = None,
) -> list[tuple[float, float, float]]:
    """All tracking queries of one video as ``(t, x, y)``, in this order: ``points_xy`` (in
    ``first_frame``), ``queries_txy``, the rows of ``points_file`` (``x, y`` rows in ``first_frame``),
    then an ``grid`` x ``grid`` grid over the ``size_wh`` frame in ``first_frame``.

    >>> collect_queries(0, (40, 20), points_xy=[(1, 2)], grid=1)
    [(0, 1, 2), (0, 19.5, 9.5)]
    """
    queries: list[tuple[float, float, float]] = [(first_frame, x, y) for x, y in points_xy]
    queries += [tuple(q) for q in queries_txy]  # type: ignore[misc]  # each row is (t, x, y)
    if points_file is not None:
        rows = read_points_file(points_file, with_frames=True)
        queries += [(first_frame, *row) if len(row) == 2 else row for row in rows]  # type: ignore[misc]  # rows of 2 or 3
    if grid is not None:
        queries += [(first_frame, x, y) for x, y in grid_points(size_wh, grid).tolist()]
    if not queries:
        raise InputError(
            f"no points to track: give {field('points_xy', 'X,Y')}, {field('queries_txy', 'T,X,Y')}, "
            f"{field('points_file', 'FILE')} or {field('grid', 'N')}"
        )
    return queries


def read_points_file(path: str | os.PathLike, *, with_frames: bool = False) -> list[tuple[float, ...]]:
    """Points from a JSON list of ``[x, y]`` pairs or CSV lines ``x,y`` (an optional header line is
    skipped); with ``with_frames``, ``[t, x, y]`` / ``t,x,y`` rows (frame index first) too.

    Raises :class:`~dinofeat.errors.InputError` naming the file and the first bad row, by its line
    number in the file for CSV and its position in the list (from 1) for JSON.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"points file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"points file is a folder: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read points file {path}: {err}") from None
    if not text.strip():
        raise InputError(f"points file is empty: {path}")
    form = "x, y pair or t,x,y triple" if with_frames else "x, y pair"
    if text.lstrip()[0] in "[{":
        rows: Sequence[tuple[int, object]]
        rows, where = _json_rows(text, path, with_frames), "item"
    else:
        rows, where = _csv_rows(text), "line"
    sizes = (2, 3) if with_frames else (2,)
    points = []
    for number, row in rows:
        values = _numbers(row, strings=where == "line")
        if values is None or len(values) not in sizes or not all(math.isfinite(v) for v in values):
            raise InputError(f"points file {path}: {where} {number} is not a finite {form}: {row!r}")
        if len(values) == 3 and (values[0] < 0 or values[0] != int(values[0])):
            raise InputError(
                f"points file {path}: {where} {number}: frame index must be a non-negative integer, got {values[0]:g}"
            )
        points.append(tuple(values))
    if not points:
        raise InputError(f"points file {path} holds no points")
    return points


def _json_rows(text: str, path: str | os.PathLike, with_frames: bool) -> list[tuple[int, object]]:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"points file {path} is not valid JSON: {err}") from None
    if not isinstance(rows, list):
        raise InputError(f"points file {path} must hold a JSON list of [x, y]{' or [t, x, y]' * with_frames}")
    return list(enumerate(rows, start=1))


def _csv_rows(text: str) -> list[tuple[int, list[str]]]:
    """Non-empty CSV rows with their line numbers in the file (from 1); a header line is dropped."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        row = next(csv.reader(io.StringIO(line)), [])
        if any(cell.strip() for cell in row):
            rows.append((number, row))
    if rows and _numbers(rows[0][1], strings=True) is None:
        rows = rows[1:]  # header
    return rows


def _numbers(row: object, *, strings: bool) -> list[float] | None:
    """The row as floats: CSV cells (strings) or JSON numbers (not booleans, not strings); else None."""
    allowed = (str,) if strings else (int, float)
    if not isinstance(row, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, allowed) for v in row):
        return None
    try:
        return [float(v) for v in row]
    except ValueError:
        return None
