"""The search dinofeat used before the exact one (commit 9f13973), kept for the benchmarks only.

A capped branch and bound (``MAX_CELLS`` cells) over grid cells scored on a 1-processed-pixel
lattice, then a 1/4-pixel step within 1.5 px of the lattice winner: fast, but on near-flat
similarity surfaces it can stop short or refine in the wrong basin (what ``dinofeat.search`` fixes).
``benchmarks/bench_match.py`` and ``bench_track.py`` time it against the exact search in the same run.
"""

# ruff: noqa
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from dinofeat.features.featuremap import FeatureMap
from dinofeat.search import similarity  # unchanged since then: one matrix product

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
