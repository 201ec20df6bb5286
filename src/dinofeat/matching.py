"""Correspondences between two images from dense DINOv2 features, with sub-patch precision.

The functional core works on :class:`~dinofeat.features.FeatureMap` objects:

* :func:`similarity` - cosine of query vectors against every patch of a target map (one matmul);
* :func:`refine_peaks` - moves integer patch peaks to the best sub-patch position;
* :func:`locate` - the best sub-pixel position of each query anywhere in the target;
* :func:`match_features` / :func:`match` - query points of image A matched into image B, with
  mutual (cycle) check, ratio test and RANSAC verification, as :class:`Matches`.

Why the exact sub-pixel search is cheap: bilinear interpolation is linear, so at a point between
four patch centres the dot product ``q . f(u, v)`` is the bilinear interpolation of the four
similarities, and ``|f(u, v)|^2 = w^T G w`` with ``G`` the 4x4 Gram matrix of those four
features. The norms do not depend on the query: they are computed once per target on a
1-processed-pixel lattice (``16 h w C`` flops for the Gram matrices). The exact cosine against
the bilinearly sampled, re-normalised target feature then costs O(1) per candidate position
instead of O(C) (only the final 1/4-pixel step uses the 3x3 patches around each answer), and no
Python loop runs over queries or patches. The whole-map search is a branch and bound over grid
cells (see :func:`locate`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from dinofeat.errors import InputError
from dinofeat.extractor import Extractor
from dinofeat.features import FeatureMap
from dinofeat.images import ImageLike, load_image
from dinofeat.registry import DEFAULT_MODEL

#: Global search: grid cells searched per query in the first round of the branch and bound ...
CELLS_PER_ROUND = 4
#: ... and at most this many cells per query in all.
MAX_CELLS = 16
#: Cells are searched every this many processed pixels, then the best one to the pixel.
CELL_STEP_PX = 1
#: Final search: this many steps per processed pixel ...
FINE_SUBDIVISIONS = 4
#: ... within this many processed pixels of the 1-pixel lattice winner.
FINE_REACH_PX = 1.5
#: Ratio test: the runner-up is the best position farther than this many patches from the best.
RATIO_EXCLUSION = 1.5
#: Queries searched together (bounds memory).
DEFAULT_CHUNK = 256


def similarity(queries: torch.Tensor, target: FeatureMap) -> torch.Tensor:
    """Cosine similarity of every query with every patch of ``target``, as one matrix product.

    Args:
        queries: ``(N, C)`` float query features (L2-normalised here if they are not already).
        target: feature map with ``(h, w, C)`` features (normalised here; a no-op if already).

    Returns:
        ``(N, h, w)`` float32 cosine similarities in [-1, 1], on the target's device.

    >>> fmap = FeatureMap(torch.eye(4).reshape(2, 2, 4), image_size_wh=(28, 28), processed_size_wh=(28, 28))
    >>> similarity(torch.tensor([[0.0, 0.0, 2.0, 0.0]]), fmap)
    tensor([[[0., 0.],
             [1., 0.]]])
    """
    feats = F.normalize(target.features.float(), dim=-1)
    h, w = target.grid_hw
    q = F.normalize(queries.float(), dim=-1).to(feats.device)
    return (q @ feats.reshape(h * w, -1).T).reshape(-1, h, w)


def refine_peaks(
    queries: torch.Tensor,
    target: FeatureMap,
    peaks_grid: torch.Tensor,
    *,
    radius: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
    refiner: Refiner | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-patch position of each query's best match near given peaks of the target grid.

    The target features are interpolated bilinearly (exactly as :meth:`FeatureMap.sample`) and
    re-normalised; the cosine with the query is evaluated at every processed pixel within
    ``radius`` patches (grid cells) of the peak, then on a 1/4-pixel lattice within
    ``FINE_REACH_PX`` (1.5) pixels of the best of those (where the cosine surface is rough, the
    best whole pixel can lie more than a pixel from the peak). Matched against its own image, a query comes back to its pixel to within 1/8
    of a processed pixel, provided the peak is within ``radius`` of it.

    Args:
        queries: ``(N, C)`` float query features (L2-normalised here if they are not already).
        target: the feature map searched.
        peaks_grid: ``(N, 2)`` grid positions (col, row) to search around, usually the integer
            argmax of :func:`similarity` (floats are fine: the window is centred on the nearest
            processed pixel); or ``(N, K, 2)`` for K candidate peaks per query, of which the one
            with the best refined cosine wins.
        radius: half-width of the search window around a peak, in grid cells (patches at the
            map's stride).
        chunk_size: queries processed together (bounds memory).
        refiner: a :class:`Refiner` of ``target`` to reuse (its norm tables are built once per map).

    Returns:
        ``points_xy``: ``(N, 2)`` float32 positions in ORIGINAL target-image pixels;
        ``scores``: ``(N,)`` float32 cosine similarity at those positions.

    >>> fmap = FeatureMap(torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0)), image_size_wh=(56, 42), processed_size_wh=(56, 42))
    >>> q = fmap.normalized().sample(torch.tensor([[20.0, 17.0]]), normalize=True)
    >>> xy, score = refine_peaks(q, fmap, torch.tensor([[1, 1]]))
    >>> xy.round().tolist(), round(float(score), 4)
    ([[20.0, 17.0]], 1.0)
    """
    refiner = refiner or Refiner(target)
    q = F.normalize(queries.float(), dim=-1).to(refiner.device)
    peaks = torch.as_tensor(peaks_grid).to(refiner.device)
    if peaks.ndim == 2:
        peaks = peaks[:, None]
    if peaks.ndim != 3 or peaks.shape[-1] != 2 or len(peaks) != len(q):
        raise ValueError(f"peaks_grid must be ({len(q)}, 2) or ({len(q)}, K, 2), got {tuple(peaks.shape)}")
    grid_uv = torch.empty(len(q), 2, device=refiner.device)
    scores = torch.empty(len(q), device=refiner.device)
    for part in _chunks(len(q), chunk_size):
        grid_uv[part], scores[part] = refiner.refine(similarity(q[part], target), peaks[part], radius=radius)
    return target.grid_to_pixel(grid_uv.double()).float(), scores


class Located(NamedTuple):
    """Where queries are found in a target map (see :func:`locate`)."""

    points_xy: torch.Tensor  #: (N, 2) float32 target-image pixels of the best match
    scores: torch.Tensor  #: (N,) float32 cosine at ``points_xy``
    runner_up: torch.Tensor  #: (N,) float32 best cosine farther than ``exclusion`` patches away (NaN if not asked)


def locate(
    queries: torch.Tensor,
    target: FeatureMap,
    *,
    exclusion: float | None = None,
    cells_per_round: int = CELLS_PER_ROUND,
    max_cells: int = MAX_CELLS,
    chunk_size: int = DEFAULT_CHUNK,
    refiner: Refiner | None = None,
) -> Located:
    """Best match of each query anywhere in ``target``, to sub-pixel precision.

    The score of a position is the exact cosine with the bilinearly interpolated, re-normalised
    target feature there (as :meth:`FeatureMap.sample`). The search is branch and bound over the
    grid cells (the squares between four patch centres): a cell's cosine is at most its largest
    corner similarity divided by its smallest feature norm. Cells are searched every
    ``CELL_STEP_PX`` processed pixels, best estimate first (the exact cosine at corners, edge
    midpoints and centre), in rounds of ``cells_per_round``, then doubling, until the best found
    beats the bound of every cell left (or ``max_cells`` were searched). The best point is then
    refined to the processed pixel around it, then on a 1/4-pixel lattice. A query sampled
    between patch centres is thus found even
    where its containing patch is not the argmax; matched against its own image it comes back
    to within 1/8 of a processed pixel.

    Args:
        queries: ``(N, C)`` float query features (L2-normalised here if they are not already).
        target: the feature map searched.
        exclusion: also find the runner-up (for a ratio test): the best position farther than this
            many patches (Chebyshev distance between cells) from the best. None skips it (NaN).
        cells_per_round: cells searched per query in the first round of the branch and bound.
        max_cells: at most this many cells are searched per query (bounds the worst case).
        chunk_size: queries processed together (bounds memory).
        refiner: a :class:`Refiner` of ``target`` to reuse (its norm tables are built once per map).

    >>> fmap = FeatureMap(torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0)), image_size_wh=(56, 42), processed_size_wh=(56, 42))
    >>> q = fmap.normalized().sample(torch.tensor([[20.0, 17.0]]), normalize=True)
    >>> found = locate(q, fmap)
    >>> found.points_xy.round().tolist(), round(float(found.scores), 4)
    ([[20.0, 17.0]], 1.0)
    """
    refiner = refiner or Refiner(target)
    q = F.normalize(queries.float(), dim=-1).to(refiner.device)
    n = len(q)
    grid_uv = torch.empty(n, 2, device=refiner.device)
    scores = torch.empty(n, device=refiner.device)
    runner_up = torch.full((n,), float("nan"), device=refiner.device)
    for part in _chunks(n, chunk_size):
        sim = similarity(q[part], target)
        bound, order = refiner.cell_scores(sim)
        best_xy, _, best_cell = refiner.search(sim, bound, order, per_round=cells_per_round, max_cells=max_cells)
        best_xy, best = refiner._local(sim, best_xy.float() / refiner.stride, CELL_STEP_PX)
        # the search is capped at max_cells; where bounds are loose it can stop short, so the
        # neighbourhood of the best patch (the naive answer) is always searched too
        peak_xy, peak = refiner._local(sim, refiner.argmax_patch(sim).float(), refiner.stride)
        take_peak = peak > best
        best_xy = torch.where(take_peak[:, None], peak_xy, best_xy)
        best_cell = torch.where(take_peak, refiner.cell_of(peak_xy), best_cell)
        grid_uv[part], scores[part] = refiner._fine(sim, best_xy)
        if exclusion is not None:
            far = refiner.far_cells(best_cell, exclusion)
            _, runner_up[part], _ = refiner.search(sim, bound.masked_fill(~far, -math.inf), order,
                                                   per_round=cells_per_round, max_cells=max_cells)
    return Located(target.grid_to_pixel(grid_uv.double()).float(), scores, runner_up.clamp_min(-1.0))


def _chunks(n: int, size: int) -> list[slice]:
    size = max(1, int(size))
    return [slice(start, start + size) for start in range(0, n, size)]


class Refiner:
    """Exact cosine at sub-patch positions of one target map, for many queries at once.

    Positions between patch centres carry the bilinearly interpolated, re-normalised feature, and
    positions beyond the outer patch centres are clamped, exactly as :meth:`FeatureMap.sample` on
    the normalised map. Dot products with a query are its similarity map interpolated (small
    matrix products); the feature norms do not depend on the query and come from the Gram
    matrices of the patches involved: per cell, precomputed on lattices (global and 1-pixel
    searches), or of the 3x3 patches around the point (final sub-pixel search).

    Grid positions ``(u, v)`` are float (col, row); lattice positions are integer processed pixels
    from the first patch centre, ``(u * stride, v * stride)``.
    """

    def __init__(self, target: FeatureMap) -> None:
        feats = F.normalize(target.features.float(), dim=-1)
        self.device = feats.device
        self.h, self.w = h, w = target.grid_hw
        self.stride = int(target.stride)
        self._feats = feats.reshape(h * w, -1)
        chw = feats.permute(2, 0, 1)[None]
        # 4x4 Gram matrix of each cell's corners (order 00, 01, 10, 11); one replicated row and
        # column of padding make the last centre row/column an ordinary cell corner
        padded = F.pad(chw, (0, 1, 0, 1), mode="replicate")[0].permute(1, 2, 0)
        corners = torch.stack((padded[:-1, :-1], padded[:-1, 1:], padded[1:, :-1], padded[1:, 1:]))
        self._gram = torch.einsum("ahwc,bhwc->hwab", corners, corners)  # (h, w, 4, 4)
        self._inv_norms: dict[int, torch.Tensor] = {}
        self._blocks: tuple[torch.Tensor, torch.Tensor] | None = None

    def inv_norm(self, steps: int) -> torch.Tensor:
        """``((h-1) steps + 1, (w-1) steps + 1)`` inverse feature norms at grid positions k / steps."""
        if steps not in self._inv_norms:
            frac = torch.arange(steps, device=self.device, dtype=torch.float32) / steps
            weights = _bilinear_weights(frac[None, :].expand(steps, steps), frac[:, None].expand(steps, steps))
            norm2 = torch.einsum("kla,hwab,klb->hkwl", weights, self._gram, weights)
            norm2 = norm2.reshape(self.h * steps, self.w * steps)[: (self.h - 1) * steps + 1, : (self.w - 1) * steps + 1]
            self._inv_norms[steps] = norm2.clamp_min(1e-12).rsqrt()
        return self._inv_norms[steps]

    def _cell_offsets(self) -> torch.Tensor:
        """Pixel offsets from a cell's first corner searched in each cell: every ``CELL_STEP_PX``
        pixels, and the far corner."""
        s = self.stride
        t = torch.arange(0, s + 1, max(1, min(CELL_STEP_PX, s)), device=self.device)
        return t if int(t[-1]) == s else torch.cat((t, t.new_tensor([s])))

    def _cell_blocks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per cell (``i < max(h - 1, 1)``, ``j < max(w - 1, 1)``, row-major): inverse norms
        ``(cells, T * T)`` at the searched offsets, and the largest inverse norm ``(cells,)`` at any
        processed pixel of the cell (for the bound)."""
        if self._blocks is None:
            s, inv = self.stride, self.inv_norm(self.stride)
            t = self._cell_offsets()
            ch, cw = self.cells_hw
            rows = (torch.arange(ch, device=self.device)[:, None] * s + t).clamp(max=inv.shape[0] - 1)
            cols = (torch.arange(cw, device=self.device)[:, None] * s + t).clamp(max=inv.shape[1] - 1)
            blocks = inv[rows[:, None, :, None], cols[None, :, None, :]].reshape(ch * cw, -1)
            padded = F.pad(inv[None, None], (0, max(0, s + 1 - inv.shape[1]), 0, max(0, s + 1 - inv.shape[0])),
                           mode="replicate")
            largest = F.max_pool2d(padded, kernel_size=s + 1, stride=s)[0, 0, :ch, :cw].reshape(-1)
            self._blocks = blocks, largest
        return self._blocks

    @property
    def cells_hw(self) -> tuple[int, int]:
        return max(self.h - 1, 1), max(self.w - 1, 1)

    def cell_scores(self, sim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per cell, from the similarity maps ``(n, h, w)``: an upper ``bound`` ``(n, cells)`` of the
        cosine anywhere in it (largest corner similarity divided by the smallest feature norm,
        positive case; norms are at most 1) and a cheap ``estimate`` ``(n, cells)`` to search in
        order: the exact cosine at its corners, edge midpoints and centre."""
        n = len(sim)
        if self.h == 1 or self.w == 1:  # a 1-wide grid: its cells are degenerate, pad to 2
            sim = F.pad(sim[:, None], (0, int(self.w == 1), 0, int(self.h == 1)), mode="replicate")[:, 0]
        half = F.pad(self.inv_norm(2)[None, None], (0, 2 * int(self.w == 1), 0, 2 * int(self.h == 1)),
                     mode="replicate")[0, 0]  # inverse norms at half-patch steps
        top, bottom = sim[:, :-1], sim[:, 1:]
        corner = torch.maximum(torch.maximum(top[..., :-1], top[..., 1:]), torch.maximum(bottom[..., :-1], bottom[..., 1:]))
        across = (sim[..., :-1] + sim[..., 1:]) * (0.5 * half[0::2, 1::2])  # horizontal edge midpoints
        down = (top + bottom) * (0.5 * half[1::2, 0::2])  # vertical edge midpoints
        centre = (top[..., :-1] + top[..., 1:] + bottom[..., :-1] + bottom[..., 1:]) * (0.25 * half[1::2, 1::2])
        estimate = torch.maximum(torch.maximum(across[:, :-1], across[:, 1:]), torch.maximum(down[..., :-1], down[..., 1:]))
        estimate = torch.maximum(torch.maximum(estimate, centre), corner)  # corner norms are 1
        corner = corner.reshape(n, -1)
        bound = torch.where(corner > 0, corner * self._cell_blocks()[1], corner)
        return bound, estimate.reshape(n, -1)

    def argmax_patch(self, sim: torch.Tensor) -> torch.Tensor:
        """Grid position (col, row) ``(n, 2)`` long of each similarity map's best patch."""
        flat = sim.reshape(len(sim), -1).argmax(dim=1)
        return torch.stack((flat % self.w, flat // self.w), dim=-1)

    def cell_of(self, lattice_xy: torch.Tensor) -> torch.Tensor:
        """Cell index ``(n,)`` (row-major) containing 1-pixel lattice points ``(n, 2)``."""
        ch, cw = self.cells_hw
        col = (lattice_xy[:, 0] // self.stride).clamp(max=cw - 1)
        row = (lattice_xy[:, 1] // self.stride).clamp(max=ch - 1)
        return row * cw + col

    def far_cells(self, cell: torch.Tensor, exclusion: float) -> torch.Tensor:
        """``(n, cells)`` bool: cells farther than ``exclusion`` patches (Chebyshev) from ``cell`` ``(n,)``."""
        ch, cw = self.cells_hw
        i = torch.arange(ch, device=self.device)[:, None].expand(ch, cw).reshape(-1)
        j = torch.arange(cw, device=self.device)[None, :].expand(ch, cw).reshape(-1)
        di = (i - (cell // cw)[:, None]).abs()
        dj = (j - (cell % cw)[:, None]).abs()
        return torch.maximum(di, dj) > exclusion

    def search(self, sim: torch.Tensor, bound: torch.Tensor, order: torch.Tensor, *, per_round: int,
               max_cells: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Branch and bound over cells: best 1-pixel lattice point ``(n, 2)`` long, its cosine
        ``(n,)`` and its cell ``(n,)``. Cells are searched in decreasing ``order`` until the best
        found beats the ``bound`` of every cell left; cells with bound -inf are never searched.
        The first round searches ``per_round`` cells, each later one as many as all before it."""
        n, count = len(sim), bound.shape[1]
        limit = min(max(1, max_cells), count)
        ranked = order.masked_fill(bound == -math.inf, -math.inf).topk(limit, dim=1).indices
        left = bound.clone()  # bounds of the cells not searched yet
        best_xy = torch.zeros(n, 2, dtype=torch.long, device=self.device)
        best_score = torch.full((n,), -math.inf, device=self.device)
        best_cell = ranked[:, 0].clone()
        active = torch.arange(n, device=self.device)
        lo, size = 0, max(1, per_round)
        while lo < limit:
            cells = ranked[active, lo:lo + size]
            lo, size = lo + size, lo + size  # rounds double the cells searched so far: few rounds
            xy, score = self._search_cells(sim[active], cells)  # (a, m, 2), (a, m)
            score = score.masked_fill(left[active[:, None], cells] == -math.inf, -math.inf)
            left[active[:, None], cells] = -math.inf
            round_score, arg = score.max(dim=1)
            rows = torch.arange(len(active), device=self.device)
            better = round_score > best_score[active]
            improved = active[better]
            best_score[improved] = round_score[better]
            best_xy[improved] = xy[rows, arg][better]
            best_cell[improved] = cells[rows, arg][better]
            active = active[best_score[active] < left[active].max(dim=1).values]
            if len(active) == 0:
                break
        return best_xy, best_score, best_cell

    def _search_cells(self, sim: torch.Tensor, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every ``CELL_STEP_PX`` pixels of ``cells`` ``(n, m)``: best lattice point ``(n, m, 2)``
        long (processed pixels) and its cosine ``(n, m)``."""
        n, m = cells.shape
        s, (ch, cw) = self.stride, self.cells_hw
        i, j = cells // cw, cells % cw
        corners = _window_index(i.reshape(-1), j.reshape(-1), 2, self.h, self.w)  # (n*m, 2, 2)
        window = sim.reshape(n, -1).gather(1, corners.reshape(n, -1)).reshape(n, m, 2, 2)
        offsets = self._cell_offsets()
        frac = offsets.float() / s
        interp = torch.stack((1 - frac, frac), dim=-1)  # (T, 2): the same in every cell
        dot = interp @ window @ interp.T  # (n, m, T, T)
        cos = dot.reshape(n, m, -1) * self._cell_blocks()[0][cells]
        score, arg = cos.max(dim=-1)
        size = len(offsets)
        x = (j * s + offsets[arg % size]).clamp(max=(self.w - 1) * s)
        y = (i * s + offsets[arg // size]).clamp(max=(self.h - 1) * s)
        return torch.stack((x, y), dim=-1), score

    def refine(self, sim: torch.Tensor, peaks: torch.Tensor, *, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Best grid position ``(n, 2)`` and its cosine ``(n,)`` within ``radius`` patches of
        ``peaks`` ``(n, K, 2)`` (grid units), given the queries' similarity maps ``(n, h, w)``."""
        if not (radius >= 0 and math.isfinite(radius)):
            raise ValueError(f"radius must be a finite non-negative number of patches, got {radius}")
        reach = int(math.floor(radius * self.stride + 1e-9))
        best_xy, best_score = None, None
        for k in range(peaks.shape[1]):
            xy, score = self._local(sim, peaks[:, k].float(), reach)
            if best_score is None:
                best_xy, best_score = xy, score
            else:
                better = score > best_score
                best_xy = torch.where(better[:, None], xy, best_xy)
                best_score = torch.where(better, score, best_score)
        return self._fine(sim, best_xy)

    def _local(self, sim: torch.Tensor, peak_uv: torch.Tensor, reach: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Best 1-pixel lattice point ``(n, 2)`` long within ``reach`` pixels of ``peak_uv``, and its cosine."""
        n, s = len(peak_uv), self.stride
        offsets = torch.arange(-reach, reach + 1, device=self.device)
        centre = (peak_uv * s).round().long()
        x = (centre[:, :1] + offsets).clamp(0, (self.w - 1) * s)  # (n, T); clamping = border padding
        y = (centre[:, 1:] + offsets).clamp(0, (self.h - 1) * s)
        cells = 2 * reach // s + 3
        kx, col0 = _axis_weights(x.float() / s, cells)
        ky, row0 = _axis_weights(y.float() / s, cells)
        window = _window(sim, row0, col0, cells)  # (n, cells, cells)
        dot = ky @ window @ kx.transpose(1, 2)  # (n, T, T): rows y, columns x
        inv = self.inv_norm(s)
        cos = dot * inv.reshape(-1)[y[:, :, None] * inv.shape[1] + x[:, None, :]]
        score, arg = cos.reshape(n, -1).max(dim=1)
        rows, size = torch.arange(n, device=self.device), offsets.numel()
        return torch.stack((x[rows, arg % size], y[rows, arg // size]), dim=-1), score

    def _fine(self, sim: torch.Tensor, centre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Best position within ``FINE_REACH_PX`` pixels of lattice points ``centre`` ``(n, 2)``, on a
        1/FINE_SUBDIVISIONS-pixel lattice: grid (u, v) ``(n, 2)`` and cosine ``(n,)``."""
        n, s, w = len(centre), self.stride, self.w
        reach = round(FINE_REACH_PX * FINE_SUBDIVISIONS)
        steps = torch.arange(-reach, reach + 1, device=self.device).float() / FINE_SUBDIVISIONS
        u = ((centre[:, :1] + steps) / s).clamp(0, self.w - 1)  # (n, F)
        v = ((centre[:, 1:] + steps) / s).clamp(0, self.h - 1)
        kx, col0 = _axis_weights(u, 3)
        ky, row0 = _axis_weights(v, 3)
        weights = (ky[:, :, None, :, None] * kx[:, None, :, None, :]).reshape(n, -1, 9)  # (n, F*F, 9)
        index = _window_index(row0, col0, 3, self.h, w).reshape(n, 9)
        dot = (weights @ sim.reshape(n, -1).gather(1, index)[:, :, None])[..., 0]
        feats = self._feats[index]  # (n, 9, C): the 3x3 patches around each point
        norm2 = ((weights @ (feats @ feats.transpose(1, 2))) * weights).sum(-1)
        score, arg = (dot * norm2.clamp_min(1e-12).rsqrt()).max(dim=1)
        rows, size = torch.arange(n, device=self.device), steps.numel()
        return torch.stack((u[rows, arg % size], v[rows, arg // size]), dim=-1), score


def _axis_weights(pos: torch.Tensor, cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear interpolation along one axis for sorted grid positions ``pos`` ``(n, T)``:
    weights ``(n, T, cells)`` over patches ``first .. first + cells - 1`` and ``first`` ``(n,)``."""
    left = pos.floor()
    first = left[:, 0].long()
    index = left.long() - first[:, None]
    frac = pos - left
    lo = F.one_hot(index.clamp(0, cells - 1), cells).float()
    hi = F.one_hot((index + 1).clamp(0, cells - 1), cells).float()  # frac is 0 where this clamps
    return lo * (1 - frac)[..., None] + hi * frac[..., None], first


def _window(sim: torch.Tensor, row0: torch.Tensor, col0: torch.Tensor, cells: int) -> torch.Tensor:
    """Similarities ``(n, cells, cells)`` of patches ``row0 ..``, ``col0 ..``; indices past the
    last row/column repeat it (border padding)."""
    n, h, w = sim.shape
    index = _window_index(row0, col0, cells, h, w).reshape(n, -1)
    return sim.reshape(n, -1).gather(1, index).reshape(n, cells, cells)


def _window_index(row0: torch.Tensor, col0: torch.Tensor, cells: int, h: int, w: int) -> torch.Tensor:
    """Flat indices ``(n, cells, cells)`` into an ``(h, w)`` grid, clamped to its last row/column."""
    span = torch.arange(cells, device=row0.device)
    rows = (row0[:, None] + span).clamp(max=h - 1)
    cols = (col0[:, None] + span).clamp(max=w - 1)
    return rows[:, :, None] * w + cols[:, None, :]


def _bilinear_weights(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Weights ``(..., 4)`` of corners 00, 01, 10, 11 for fractional offsets ``a`` (x) and ``b`` (y)."""
    return torch.stack(((1 - a) * (1 - b), a * (1 - b), (1 - a) * b, a * b), dim=-1)


# ---------------------------------------------------------------------------------------------
# Matching two images

#: Number of automatic query points when none are given.
DEFAULT_AUTO = 20
#: Mutual check: the match is mutual when matching the target back lands within this many
#: patches (at image A's stride, Chebyshev distance in grid units) of the source.
MUTUAL_TOLERANCE = 1.0
#: RANSAC: default inlier threshold, in processed pixels of image B (converted to its pixels).
RANSAC_THRESHOLD_PX = 7.0
#: RANSAC confidence and iteration cap (OpenCV USAC_MAGSAC).
RANSAC_CONFIDENCE = 0.999
RANSAC_MAX_ITERS = 10_000
GEOMETRIES = ("homography", "fundamental")
_MIN_POINTS = {"homography": 4, "fundamental": 8}

log = logging.getLogger(__name__)


@dataclass
class Geometry:
    """A verified two-view model: ``kind`` is ``homography`` (x_b ~ H x_a) or ``fundamental``
    (x_b^T F x_a = 0), ``matrix`` a ``(3, 3)`` float64 array in original-image pixels."""

    kind: str
    matrix: np.ndarray
    threshold_px: float


@dataclass
class Matches:
    """Correspondences from image A to image B, one per query point, in query order.

    Attributes:
        source_xy: ``(N, 2)`` float32 query positions, image-A pixels.
        target_xy: ``(N, 2)`` float32 matched positions, image-B pixels (sub-pixel).
        scores: ``(N,)`` float32 cosine similarity at the match, in [-1, 1].
        mutual: ``(N,)`` bool, matching ``target_xy`` back into A lands within
            ``MUTUAL_TOLERANCE`` patches of the source (cycle-consistent).
        ratio: ``(N,)`` float32 Lowe ratio ``d_best / d_runner_up`` of feature distances
            (``d = sqrt(2 - 2 cos)``; lower is more distinctive); NaN where not computed.
        inlier: ``(N,)`` bool, consistent with the verified ``geometry`` (all True without one).
        keep: ``(N,)`` bool, passes every check asked for (mutual, ratio, geometry).
        image_size_a_wh, image_size_b_wh: original image sizes.
        geometry: the model found by RANSAC, or None.

    All tensors are on the CPU.
    """

    source_xy: torch.Tensor
    target_xy: torch.Tensor
    scores: torch.Tensor
    mutual: torch.Tensor
    ratio: torch.Tensor
    inlier: torch.Tensor
    keep: torch.Tensor
    image_size_a_wh: tuple[int, int]
    image_size_b_wh: tuple[int, int]
    geometry: Geometry | None = None

    _FIELDS = ("source_xy", "target_xy", "scores", "mutual", "ratio", "inlier", "keep")

    def __len__(self) -> int:
        return int(self.source_xy.shape[0])

    def numpy(self) -> dict[str, np.ndarray]:
        """The per-match fields as numpy arrays, keyed by field name."""
        return {name: getattr(self, name).detach().cpu().numpy() for name in self._FIELDS}

    def to(self, device: torch.device | str) -> Matches:
        return replace(self, **{name: getattr(self, name).to(device) for name in self._FIELDS})

    def select(self, mask) -> Matches:
        """The matches where ``mask`` ``(N,)`` bool is True (e.g. ``matches.select(matches.keep)``)."""
        mask = torch.as_tensor(mask, dtype=torch.bool, device=self.source_xy.device)
        return replace(self, **{name: getattr(self, name)[mask] for name in self._FIELDS})


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


def check_points(points_xy, size_wh: tuple[int, int], label: str = "image A") -> torch.Tensor:
    """Validate user query points: ``(N, 2)`` finite, inside the image; returns float32 ``(N, 2)``.

    Raises :class:`InputError` naming the first bad point.
    """
    try:
        pts = torch.as_tensor(np.asarray(points_xy, dtype=np.float64))
    except (TypeError, ValueError):
        raise InputError("query points must be a list of (x, y) number pairs") from None
    if pts.numel() == 0:
        raise InputError("no query points given")
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise InputError(f"query points must be (x, y) pairs, got an array of shape {tuple(pts.shape)}")
    w, h = size_wh
    for index, (x, y) in enumerate(pts.tolist()):
        if not (math.isfinite(x) and math.isfinite(y)):
            raise InputError(f"query point {index} ({x}, {y}) is not a finite position")
        if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
            raise InputError(f"query point {index} ({x:g}, {y:g}) is outside {label} "
                             f"({w}x{h}: x in [-0.5, {w - 0.5}], y in [-0.5, {h - 0.5}])")
    return pts.float()


def mutual_nearest_patches(fa: FeatureMap, fb: FeatureMap, *, chunk_size: int = 4096
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
    for part in _chunks(len(a), chunk_size):
        sim = a[part] @ b.T
        best_ab[part], best_b[part] = sim.max(dim=1)
        chunk_best, chunk_arg = sim.max(dim=0)
        better = chunk_best > col_best
        col_best = torch.where(better, chunk_best, col_best)
        col_arg = torch.where(better, chunk_arg + part.start, col_arg)
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
    chosen = _farthest_points(centres, min(k, len(centres)))
    chosen = chosen[score[chosen].argsort(descending=True)]
    return centres[chosen].float().cpu()


def _farthest_points(points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of ``k`` points picked greedily to be far from each other, starting with point 0
    (farthest-point sampling: a few lines, no library in our dependencies has it)."""
    chosen = [0]
    dist = (points - points[0]).norm(dim=1)
    for _ in range(k - 1):
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = torch.minimum(dist, (points - points[nxt]).norm(dim=1))
    return torch.tensor(chosen, device=points.device)


def joint_pca(fa: FeatureMap, fb: FeatureMap, dim: int) -> tuple[FeatureMap, FeatureMap]:
    """Both maps projected on the ``dim`` principal components of their features taken together.

    Features are L2-normalised first (cosine geometry), then one PCA (:func:`dinofeat.pca.fit_pca`)
    is fitted on both maps' patches jointly, so the two projections share one basis.
    """
    from dinofeat.pca import fit_pca

    c = fa.dim
    if not 1 <= dim <= c:
        raise InputError(f"pca dimension must be between 1 and the feature size {c}, got {dim}")
    a = F.normalize(fa.features.float(), dim=-1).reshape(-1, c)
    b = F.normalize(fb.features.float(), dim=-1).reshape(-1, c).to(a.device)
    basis = fit_pca(torch.cat((a, b)), dim)
    project = (lambda f, m: replace(m, features=basis.transform(f).reshape(*m.grid_hw, dim)))
    return project(a, fa), project(b, fb)


def match_features(
    fa: FeatureMap,
    fb: FeatureMap,
    points_xy=None,
    *,
    grid: int | None = None,
    auto: int | None = None,
    pca_dim: int | None = None,
    require_mutual: bool = False,
    max_ratio: float | None = None,
    ransac: str | None = None,
    ransac_threshold: float | None = None,
    mutual_tolerance: float = MUTUAL_TOLERANCE,
    exclusion: float = RATIO_EXCLUSION,
) -> Matches:
    """Match query points of feature map ``fa`` (image A) into ``fb`` (image B).

    Query points are ``points_xy`` ``(N, 2)`` image-A pixels, or a ``grid`` x ``grid`` regular
    grid, or ``auto`` distinctive well-spread points (:func:`auto_points`); with none of them,
    ``auto=DEFAULT_AUTO``. Each query feature is sampled bilinearly at its exact position and
    found in B by :func:`locate` (exact sub-pixel cosine search over the whole map).

    Args:
        pca_dim: match in the ``pca_dim``-dimensional space of a PCA fitted on both maps jointly.
        require_mutual: ``keep`` only matches that pass the mutual (cycle) check.
        max_ratio: ``keep`` only matches whose Lowe ratio is below this (computes ``ratio``).
        ransac: ``homography`` or ``fundamental``: fit that model to the matches that pass the
            checks above with OpenCV's USAC MAGSAC and ``keep`` only its inliers.
        ransac_threshold: inlier threshold in image-B pixels (default: ``RANSAC_THRESHOLD_PX``
            processed pixels of B, i.e. half a patch).
        mutual_tolerance: patches (image A grid) within which the back-match must land.
        exclusion: ratio test runner-up is searched farther than this many patches from the best.
    """
    chosen = [name for name, value in (("points", points_xy), ("grid", grid), ("auto", auto)) if value is not None]
    if len(chosen) > 1:
        raise InputError(f"give query points in one way only, got {' and '.join(chosen)}")
    if ransac is not None and ransac not in GEOMETRIES:
        raise InputError(f"unknown geometry {ransac!r}; choose one of {', '.join(GEOMETRIES)}")
    if max_ratio is not None and not (max_ratio > 0 and math.isfinite(max_ratio)):
        raise InputError(f"ratio must be a positive number, got {max_ratio}")
    if ransac_threshold is not None and not (ransac_threshold > 0 and math.isfinite(ransac_threshold)):
        raise InputError(f"RANSAC threshold must be a positive number of pixels, got {ransac_threshold}")
    if pca_dim is not None:
        fa, fb = joint_pca(fa, fb, pca_dim)
    fa, fb = fa.normalized(), fb.to(fa.features.device).normalized()
    if points_xy is not None:
        source = check_points(points_xy, fa.image_size_wh)
    elif grid is not None:
        source = grid_points(fa.image_size_wh, grid)
    else:
        source = auto_points(fa, fb, DEFAULT_AUTO if auto is None else auto)

    queries = fa.sample(source, normalize=True)
    found = locate(queries, fb, exclusion=exclusion if max_ratio is not None else None)
    # mutual (cycle) check: match the target feature back into A
    back = locate(fb.sample(found.points_xy, normalize=True), fa)
    offset = (fa.pixel_to_grid(back.points_xy.double()) - fa.pixel_to_grid(source.double().to(back.points_xy.device)))
    mutual = offset.abs().amax(dim=1) <= mutual_tolerance + 1e-6 if len(source) else torch.zeros(0, dtype=torch.bool)
    distance = lambda cos: (2 - 2 * cos).clamp_min(0).sqrt()  # noqa: E731
    ratio = distance(found.scores) / distance(found.runner_up).clamp_min(1e-12)
    keep = torch.ones(len(source), dtype=torch.bool, device=mutual.device)
    if require_mutual:
        keep &= mutual
    if max_ratio is not None:
        keep &= ratio < max_ratio
    matches = Matches(
        source_xy=source.float().cpu(), target_xy=found.points_xy.cpu(), scores=found.scores.cpu(),
        mutual=mutual.cpu(), ratio=ratio.float().cpu(), inlier=torch.ones(len(source), dtype=torch.bool),
        keep=keep.cpu(), image_size_a_wh=tuple(fa.image_size_wh), image_size_b_wh=tuple(fb.image_size_wh),
    )
    if ransac is not None:
        threshold = ransac_threshold or RANSAC_THRESHOLD_PX / fb.scale_xy[0]
        matches = verify(matches, ransac, threshold)
    return matches


def verify(matches: Matches, kind: str, threshold_px: float) -> Matches:
    """Fit a homography or fundamental matrix to the kept matches (OpenCV USAC MAGSAC); returns
    new matches with ``inlier``, ``keep`` and ``geometry`` set. With too few matches for the
    model, nothing is an inlier and ``geometry`` is None (logged as a warning)."""
    import cv2

    candidates = torch.nonzero(matches.keep)[:, 0]
    inlier = torch.zeros(len(matches), dtype=torch.bool)
    need = _MIN_POINTS[kind]
    if len(candidates) < need:
        log.warning("%s needs at least %d matches, got %d: no geometric verification", kind, need, len(candidates))
        return replace(matches, inlier=inlier, keep=inlier.clone(), geometry=None)
    src = matches.source_xy[candidates].double().numpy()
    dst = matches.target_xy[candidates].double().numpy()
    if kind == "homography":
        matrix, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, threshold_px,
                                          maxIters=RANSAC_MAX_ITERS, confidence=RANSAC_CONFIDENCE)
    else:
        matrix, mask = cv2.findFundamentalMat(src, dst, cv2.USAC_MAGSAC, threshold_px,
                                              RANSAC_CONFIDENCE, RANSAC_MAX_ITERS)
    if matrix is None or mask is None or matrix.shape != (3, 3):
        log.warning("no %s found that fits the matches", kind)
        return replace(matches, inlier=inlier, keep=inlier.clone(), geometry=None)
    inlier[candidates] = torch.from_numpy(mask.reshape(-1).astype(bool))
    return replace(matches, inlier=inlier, keep=matches.keep & inlier,
                   geometry=Geometry(kind, np.asarray(matrix, dtype=np.float64), float(threshold_px)))


def match(
    image_a: ImageLike,
    image_b: ImageLike,
    points_xy=None,
    *,
    extractor: Extractor | str | None = None,
    **options,
) -> Matches:
    """Match points of ``image_a`` into ``image_b`` (paths, PIL images or ``(H, W, 3) uint8`` arrays).

    ``extractor`` is an :class:`~dinofeat.extractor.Extractor` (model, device, resolution, layer,
    facet, stride), or a model name for one with default settings. Every other option is
    :func:`match_features`'s. Coordinates are pixels of the original images.

    >>> from dinofeat.vit import DinoVisionTransformer
    >>> from dinofeat.registry import get_spec
    >>> vit = DinoVisionTransformer(get_spec("dinov2_vits14"), depth=1).init_random()
    >>> image = np.random.default_rng(0).integers(0, 255, (56, 84, 3), dtype=np.uint8)
    >>> m = match(image, image, [[30.0, 20.0]], extractor=Extractor(vit, resolution=56, device="cpu"))
    >>> m.target_xy.round().tolist(), bool(m.mutual[0])
    ([[30.0, 20.0]], True)
    """
    if extractor is None or isinstance(extractor, str):
        extractor = Extractor(extractor or DEFAULT_MODEL)
    fa, fb = extractor.extract_arrays([load_image(image_a), load_image(image_b)])
    return match_features(fa, fb, points_xy, **options)


def matches_json(matches, *, model: str, path_a: str, path_b: str, settings: dict | None = None,
                 verified: bool = False) -> dict:
    """The JSON document of the CLI contract: model, image_a, image_b, matches (query order), then
    geometry and settings. Coordinates are original-image pixels rounded to 0.01; ``inlier`` is
    null unless geometric verification was asked for (``verified``)."""
    rows = []
    data = matches.numpy()
    for i in range(len(matches)):
        ratio = float(data["ratio"][i])
        rows.append({
            "source": [round(float(v), 2) for v in data["source_xy"][i]],
            "target": [round(float(v), 2) for v in data["target_xy"][i]],
            "score": round(float(data["scores"][i]), 4),
            "mutual": bool(data["mutual"][i]),
            "ratio": round(ratio, 4) if math.isfinite(ratio) else None,
            "inlier": bool(data["inlier"][i]) if verified else None,
            "kept": bool(data["keep"][i]),
        })
    geometry = None
    if matches.geometry is not None:
        geometry = {"type": matches.geometry.kind, "matrix": [[float(v) for v in row] for row in matches.geometry.matrix],
                    "threshold_px": round(matches.geometry.threshold_px, 3),
                    "inliers": int(matches.inlier.sum())}
    return {
        "model": model,
        "image_a": {"path": str(path_a), "size": list(matches.image_size_a_wh)},
        "image_b": {"path": str(path_b), "size": list(matches.image_size_b_wh)},
        "matches": rows,
        "geometry": geometry,
        "settings": settings or {},
    }


def similarity_image(fa, fb, point_xy, pca_dim=None):
    """Cosine of the feature at ``point_xy`` in A with B's features interpolated at every pixel
    of B (bilinear between patch centres): ``(H_b, W_b)`` float32 numpy."""
    if pca_dim is not None:
        fa, fb = joint_pca(fa, fb, pca_dim)
    fa, fb = fa.normalized(), fb.normalized()
    sim = similarity(fa.sample(point_xy, normalize=True), fb)[0]
    return replace(fb, features=sim[..., None]).upsample()[..., 0].cpu().numpy()
