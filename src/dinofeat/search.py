"""The exact sub-pixel search of query features in a target feature map (matching and tracking).

What is maximised, over which set
---------------------------------
For a query ``q`` and a target map with L2-normalised patch features ``F``, the score of a grid
position ``p = (u, v)`` (float column, row) is the cosine ``s(p) = q . f(p) / |f(p)|`` of the query
with the bilinearly interpolated, re-normalised feature ``f(p)`` - exactly what
:meth:`FeatureMap.sample` returns on the normalised map. The search returns the maximum of ``s``
over a **lattice**: every ``1 / SUBDIVISIONS`` processed pixel from the first patch centre to the
last, ``u = k / (SUBDIVISIONS * stride)`` for ``k = 0 .. SUBDIVISIONS * stride * (w - 1)`` (the
same for ``v``), restricted to a **region**: the whole map (:func:`locate`), squares around given
peaks (:func:`refine_peaks`, the tracker's window), or everything farther than a distance from a
point (the ratio test's runner-up). It is a global maximum of that set, not a local one. Ties
(exactly equal scores as computed in float32) go to the first position in raster order (smallest
``v``, then smallest ``u``); positions whose scores differ by less than float32 rounding (~1e-7)
are ordered by that rounding.

Why it is exact and fast: a branch and bound with true upper bounds
--------------------------------------------------------------------
Between the four patch centres of a grid cell, ``f = sum_k w_k F_k`` with bilinear weights
``w_k >= 0`` summing to 1. So the dot product ``q . f`` is the bilinear interpolation of the four
corner similarities ``d_k = q . F_k`` (one matrix product gives all similarities), and
``|f|^2 = w^T G w`` with ``G`` the cell's 4x4 Gram matrix, which does not depend on the query:
:class:`NormTable` keeps, per target map, the terms that give ``1 / |f|`` at any lattice point and
its largest and smallest values ``i_max``, ``i_min`` over each cell's lattice points. Where the
corners nearly cancel (``|f|`` far below 1, as with features centred by a PCA), ``|f|^2`` is a small
difference of terms near 1 that float32 would get wrong, so such cells are computed in float64
(``tests/test_search.py`` checks such maps against a float64 reference); every other cell, in
float32, whose rounding there is below ``BOUND_SLACK``.

**Two upper bounds of every lattice score in a cell.** (1) *The norm bound.* A bilinear function
reaches its maximum over a cell at a corner (it is affine along each axis), so
``D = max_k d_k`` bounds ``q . f`` in the cell. For a lattice point ``p``: if ``D > 0``,
``s(p) = (q . f(p)) / |f(p)| <= D * i_max`` (when ``q . f(p) >= 0`` both factors are at most
their bounds; otherwise ``s(p) < 0 < D * i_max``); if ``D <= 0``,
``s(p) <= D / |f(p)| <= D * i_min`` (a non-positive number divided by a smaller norm is smaller).
(2) *The span bound.* Every ``f(p)`` lies in the span of the four corners, so
``s(p) <= |projection of q on that span| = sqrt(d^T G^-1 d)`` (computed in float64 from the same
``d`` and ``G`` the scores use, where ``G`` is well conditioned; :meth:`NormTable.span_bound`).
A cell's bound is the smaller of the two, each plus a slack against float32 rounding (``BOUND_SLACK``;
``BOUND_SLACK * i_max`` for the norm bound, as a similarity's rounding is multiplied by ``1 / |f|``).
``tests/test_search.py`` checks them against every lattice point on several kinds of maps.

**The search.** Cells are visited in rounds, vectorised over queries, best bound first; a visited
cell has all its lattice points scored exactly (one small matrix product for the norms, no Python
loop over points). A query stops when the best score found is above the bound of every cell not
visited: nothing pruned can hold a better point. An optional ``max_cells`` caps the cells visited
per query (the default, None, is exact); results say where the cap was hit (``capped``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from dinofeat.features.featuremap import FeatureMap

#: Lattice steps per processed pixel (the search's precision: 1/4 processed pixel).
SUBDIVISIONS = 4
#: Added to every bound, against float32 rounding of the scores it bounds.
BOUND_SLACK = 1e-6
#: The span bound of a cell is used where its corners' Gram matrix has no eigenvalue below this
#: (its float64 inverse is then accurate to ~1e-8); elsewhere (near-parallel corners) the cell keeps
#: the norm bound alone, which is tight there.
SPAN_MIN_EIGENVALUE = 1e-8
#: Cells whose interpolated features all have ``|f|^2`` at least this get their norms in float32
#: (absolute rounding of ``|f|^2`` ~3e-7, so a relative error of ~1e-6 in ``1/|f|`` at worst); cells
#: with a smaller norm somewhere get them in float64 (float32 is ~4x faster where it is enough).
FLOAT32_MIN_NORM2 = 0.25
_PAIR_I, _PAIR_J = torch.triu_indices(4, 4)
#: Queries searched together (bounds memory).
DEFAULT_CHUNK = 256
#: Upper limit of (query, cell) pairs scored in one round, and of lattice points scored at once
#: (bound memory).
_PAIRS_PER_ROUND = 16_384
_POINTS_PER_CHUNK = 2_000_000


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


# ---------------------------------------------------------------------------------------------
# Query-independent tables of one target map


class NormTable:
    """The inverse norms ``1 / |f|`` of one target map's interpolated features on the search lattice.

    Built once per target map (query-independent) and shared by every search in it. Holds, per
    grid cell (row-major over ``cells_hw``), the terms from which the inverse norm at any of its
    lattice points is computed (float64: see :meth:`_gram`), the largest and smallest inverse norm
    over its lattice points (``cell_max``, ``cell_min``, for the norm bound) and the coefficients
    of its span bound.

    Maps one patch wide or high are padded to two by repeating it; the padded lattice points are
    outside every search region.

    Attributes:
        grid_hw: the map's grid ``(h, w)``; ``padded_hw``: at least 2 each way.
        stride: processed pixels between patch centres; ``steps = SUBDIVISIONS * stride`` lattice
            steps per cell side.
    """

    def __init__(self, target: FeatureMap, *, chunk_cells: int = 512) -> None:
        feats = F.normalize(target.features.double(), dim=-1)  # float64 for the Gram matrices
        h, w = target.grid_hw
        hp, wp = max(h, 2), max(w, 2)
        if (hp, wp) != (h, w):
            feats = F.pad(feats.permute(2, 0, 1)[None], (0, wp - w, 0, hp - h), mode="replicate")[0].permute(1, 2, 0)
        self.device = feats.device
        self.grid_hw, self.padded_hw = (h, w), (hp, wp)
        self.stride = target.step  # an upsampled map's cells may be fractional (3.5 pixels)
        self.steps = max(1, round(SUBDIVISIONS * self.stride))
        feats64 = feats.reshape(hp * wp, -1)
        self.feats = feats64.float()
        rows, cols = torch.meshgrid(torch.arange(hp - 1), torch.arange(wp - 1), indexing="ij")
        top_left = (rows * wp + cols).reshape(-1).to(self.device)
        self.corners = torch.stack((top_left, top_left + 1, top_left + wp, top_left + wp + 1), dim=1)  # (cells, 4)
        gram = self._gram(feats64, chunk_cells)
        self._span_tables(gram)
        self.edge_terms = self._edge_terms(gram)  # (cells, steps + 1, 3) float64
        fy = torch.arange(self.steps + 1, device=self.device, dtype=torch.float64) / self.steps
        self.row_powers = torch.stack((torch.ones_like(fy), fy, fy**2), dim=1)  # (steps + 1, 3): 1, b, b^2
        self.edge_terms32, self.row_powers32 = self.edge_terms.float(), self.row_powers.float()
        n_cells = len(self.corners)
        self.cell_max = torch.empty(n_cells, device=self.device)
        self.cell_min = torch.empty(n_cells, device=self.device)
        self.needs_float64 = torch.zeros(n_cells, dtype=torch.bool, device=self.device)
        self._tabulate(torch.arange(n_cells, device=self.device), chunk_cells)
        self.needs_float64 = self.cell_max**2 > 1 / FLOAT32_MIN_NORM2
        wide_cells = torch.nonzero(self.needs_float64)[:, 0]  # (W,)
        self._tabulate(wide_cells, chunk_cells)
        # the cells that need float64 get their corner similarities in float64 too (float32's ~1e-7
        # in q . F_k is divided by |f| there): their corner patches' features are kept in float64
        self._wide_slot = torch.full((n_cells,), -1, dtype=torch.long, device=self.device)
        self._wide_slot[wide_cells] = torch.arange(len(wide_cells), device=self.device)
        patches, self._wide_corner_slots = torch.unique(self.corners[wide_cells], return_inverse=True)
        self._wide_feats64 = feats64[patches]  # (P, C): the distinct corner patches of those cells

    @property
    def cells_hw(self) -> tuple[int, int]:
        return self.padded_hw[0] - 1, self.padded_hw[1] - 1

    @property
    def lattice_hw(self) -> tuple[int, int]:
        """Lattice points per column and row of the (padded) map."""
        hp, wp = self.padded_hw
        return self.steps * (hp - 1) + 1, self.steps * (wp - 1) + 1

    def _gram(self, feats64: torch.Tensor, chunk_cells: int) -> torch.Tensor:
        """Each cell's 4x4 Gram matrix of its corner features ``(cells, 4, 4)``, in float64: where
        the corners nearly cancel (``|f|`` much below 1, as after a mean-subtracted PCA), ``|f|^2``
        is a small difference of terms near 1, and float32 would lose the digits the scores need."""
        gram = torch.empty(len(self.corners), 4, 4, dtype=torch.float64, device=self.device)
        for start in range(0, len(self.corners), chunk_cells):  # bounded memory: C float64s per corner
            c = feats64[self.corners[start : start + chunk_cells]]
            gram[start : start + chunk_cells] = c @ c.transpose(1, 2)
        return gram

    def _edge_terms(self, gram: torch.Tensor) -> torch.Tensor:
        """Per cell and lattice column ``a``, the coefficients ``(A, B, C)`` of ``|f(a, b)|^2 = A + B b
        + C b^2`` along the column (``b`` the row fraction): with ``T0 = |f_top(a)|^2``, ``T1 =
        f_top(a) . f_bottom(a)``, ``T2 = |f_bottom(a)|^2`` (``f_top``/``f_bottom`` interpolate the
        top/bottom corner pairs), ``A = T0``, ``B = 2 (T1 - T0)``, ``C = T0 - 2 T1 + T2``. Separable,
        so the lattice's norms cost three terms per point instead of a 4x4 quadratic form; in
        float64, like ``gram``, and in differences, so that a constant column has ``B = C = 0`` and
        its norms are exactly ``A`` in float32 too (ties stay ties)."""
        g = lambda i, j: gram[:, i, j][:, None]
        fx = (torch.arange(self.steps + 1, device=self.device, dtype=torch.float64) / self.steps)[None]
        l2, lr, r2 = (1 - fx) ** 2, fx * (1 - fx), fx**2
        top = l2 * g(0, 0) + 2 * lr * g(0, 1) + r2 * g(1, 1)
        cross = l2 * g(0, 2) + lr * (g(0, 3) + g(1, 2)) + r2 * g(1, 3)
        bottom = l2 * g(2, 2) + 2 * lr * g(2, 3) + r2 * g(3, 3)
        return torch.stack((top, 2 * (cross - top), top - 2 * cross + bottom), dim=-1)

    def _span_tables(self, gram: torch.Tensor) -> None:
        """Float64 coefficients of the quadratic form ``d^T G^-1 d`` of each cell (for
        :meth:`span_bound`), and which cells are well enough conditioned to use them."""
        g64 = gram
        self.span_ok = torch.linalg.eigvalsh(g64)[:, 0] >= SPAN_MIN_EIGENVALUE
        eye = torch.eye(4, dtype=torch.float64, device=self.device)
        inverse = torch.linalg.inv(torch.where(self.span_ok[:, None, None], g64, eye))
        twice = torch.where(_PAIR_I == _PAIR_J, 1.0, 2.0).double().to(self.device)
        self.span_coefficients = inverse[:, _PAIR_I, _PAIR_J] * twice  # (cells, 10): the upper triangle

    def exact_corner_dots(self, queries: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """``(m, 4)`` float64: the similarities of unit ``queries`` ``(m, C)`` with the four corners
        of their ``cells`` ``(m,)``, cells that need float64 (``needs_float64``)."""
        corners = self._wide_feats64[self._wide_corner_slots[self._wide_slot[cells]]]  # (m, 4, C)
        return (corners @ queries.double()[:, :, None])[..., 0]

    def span_bound(self, corner: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """``(m,)``: the largest cosine of each query with any vector in the span of its cell's four
        corner features, ``sqrt(d^T G^-1 d)`` from the corner similarities ``d`` (``corner`` ``(m, 4)``
        of queries paired with ``cells`` ``(m,)``) and the corners' Gram matrix ``G`` (the length of
        the query's projection on that span); +inf where the corners are too close to parallel to
        invert ``G`` reliably. Every interpolated feature of the cell lies in that span, so no
        lattice score of the cell exceeds it."""
        d = corner.double()
        value = (d[:, _PAIR_I] * d[:, _PAIR_J] * self.span_coefficients[cells]).sum(dim=-1)
        return value.clamp_min(0).sqrt().float().masked_fill(~self.span_ok[cells], math.inf)

    def inverse_norms(self, cells: torch.Tensor) -> torch.Tensor:
        """``1 / |f|`` at every lattice point of ``cells`` (offsets ``0 .. steps`` each way):
        ``(len(cells), steps + 1, steps + 1)`` float32; computed in float64 for the cells that need
        it (``needs_float64``, see ``FLOAT32_MIN_NORM2``). (Recomputed per scored cell: keeping the
        whole lattice's table measured slower to build than it saved.)"""
        wide = self.needs_float64[cells]
        inverse = (self.row_powers32 @ self.edge_terms32[cells].transpose(1, 2)).clamp_min(1e-12).rsqrt()
        if wide.any():
            norm2 = self.row_powers @ self.edge_terms[cells[wide]].transpose(1, 2)
            inverse[wide] = norm2.clamp_min(1e-12).rsqrt().float()
        return inverse

    def _tabulate(self, cells: torch.Tensor, chunk_cells: int) -> None:
        """The largest and smallest inverse norm over the lattice points of each of ``cells`` (for
        the cell bounds), chunk by chunk (the full lattice table is never held at once). Run first on
        every cell in float32, then again on the cells that this shows need float64: float32's
        rounding of ``|f|^2`` (~3e-7) is far below the margin of ``FLOAT32_MIN_NORM2``."""
        for start in range(0, len(cells), chunk_cells):
            part = cells[start : start + chunk_cells]
            inv = self.inverse_norms(part).reshape(len(part), -1)
            self.cell_max[part], self.cell_min[part] = inv.amax(dim=1), inv.amin(dim=1)


# ---------------------------------------------------------------------------------------------
# Regions: which lattice points a query may land on


@dataclass(frozen=True)
class Region:
    """Per query, the lattice points the search may return: inside at least one ``include``
    rectangle and outside the ``exclude`` rectangle (if any). Rectangles are ``[k0, r0, k1, r1]``
    in lattice steps (column ``k``, row ``r``; ``u = k / steps`` in grid units), edges included,
    so membership is an exact integer comparison.

    Attributes:
        include: ``(n, K, 4)`` int64.
        exclude: ``(n, 4)`` int64, or None.
    """

    include: torch.Tensor
    exclude: torch.Tensor | None = None
    everything: bool = False  #: every lattice point of the (unpadded) map: no point needs checking

    @staticmethod
    def whole(n: int, table: NormTable) -> Region:
        """Every lattice point of the map (its outer patch centres included)."""
        h, w = table.grid_hw
        rect = torch.tensor([0, 0, table.steps * (w - 1), table.steps * (h - 1)], device=table.device)
        return Region(rect.expand(n, 1, 4).clone(), everything=table.grid_hw == table.padded_hw)

    @staticmethod
    def around(centres_uv: torch.Tensor, radius: float, table: NormTable) -> Region:
        """The lattice points within ``radius`` grid units along each axis of ``centres_uv``
        ``(n, K, 2)`` (a square window; 1e-6 grid units of tolerance), clipped to the map."""
        h, w = table.grid_hw
        centre = centres_uv.double() * table.steps
        reach = radius * table.steps
        low = torch.ceil(centre - reach - 1e-6 * table.steps).long()
        high = torch.floor(centre + reach + 1e-6 * table.steps).long()
        limit = torch.tensor([table.steps * (w - 1), table.steps * (h - 1)], device=table.device)
        low = torch.minimum(low.clamp_min(0), limit)
        high = torch.minimum(high, limit).clamp_min(0)
        return Region(torch.cat((low, high), dim=-1))

    def excluding(self, centres: torch.Tensor, distance: float, steps: int) -> Region:
        """The same region without the lattice points within ``distance`` grid units (Chebyshev)
        of lattice points ``centres`` ``(n, 2)`` (column, row)."""
        reach = math.floor(distance * steps + 1e-9)
        return Region(self.include, torch.cat((centres - reach, centres + reach), dim=-1))

    def points_allowed(self, rows: torch.Tensor, k: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Bool ``k.shape``: which lattice points (column ``k``, row ``r``) ``(m, P)`` of queries
        ``rows`` ``(m,)`` lie in the region."""
        if self.everything:
            return torch.ones(k.shape, dtype=torch.bool, device=k.device)
        rects = self.include[rows][:, None]  # (m, 1, K, 4)
        kk, rr = k[..., None], r[..., None]
        inside = (kk >= rects[..., 0]) & (kk <= rects[..., 2]) & (rr >= rects[..., 1]) & (rr <= rects[..., 3])
        inside = inside.any(dim=-1)
        if self.exclude is not None:
            e = self.exclude[rows][:, None]
            inside &= ~((k >= e[..., 0]) & (k <= e[..., 2]) & (r >= e[..., 1]) & (r <= e[..., 3]))
        return inside

    def boxes_eligible(self, rows: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Bool ``boxes.shape[:-1]``: which boxes ``[k0, r0, k1, r1]`` ``(m, B, 4)`` of queries
        ``rows`` ``(m,)`` hold a lattice point that may be in the region (they meet an include
        rectangle and are not inside the exclude rectangle)."""
        if self.everything:
            return torch.ones(boxes.shape[:-1], dtype=torch.bool, device=boxes.device)
        rects = self.include[rows][:, None]  # (m, 1, K, 4)
        b = boxes[..., None, :]  # (m, B, 1, 4)
        meets = (
            (b[..., 0] <= rects[..., 2])
            & (b[..., 2] >= rects[..., 0])
            & (b[..., 1] <= rects[..., 3])
            & (b[..., 3] >= rects[..., 1])
        ).any(dim=-1)
        if self.exclude is not None:
            e = self.exclude[rows][:, None]
            covered = (
                (boxes[..., 0] >= e[..., 0])
                & (boxes[..., 2] <= e[..., 2])
                & (boxes[..., 1] >= e[..., 1])
                & (boxes[..., 3] <= e[..., 3])
            )
            meets &= ~covered
        return meets


# ---------------------------------------------------------------------------------------------
# The branch and bound


@dataclass(frozen=True)
class Found:
    """The best lattice point of each query: ``index`` ``(n,)`` int64 (raster index on the padded
    lattice, -1 if the region holds none), ``score`` ``(n,)`` float32 (``-inf`` if none), and
    ``capped`` ``(n,)`` bool (the ``max_cells`` cap stopped the search before it was proven best)."""

    index: torch.Tensor
    score: torch.Tensor
    capped: torch.Tensor


def cell_bounds(
    sim: torch.Tensor, table: NormTable, floor: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query and cell: the four corner similarities ``(n, cells, 4)`` and the cell's upper
    bound ``(n, cells)`` of every lattice score inside (see the module docstring): the norm bound,
    tightened by the span bound (:meth:`NormTable.span_bound`) where the norm bound reaches
    ``floor`` ``(n,)`` (a score known to be reached; cells below it are not searched anyway).
    ``sim`` ``(n, h, w)``: the queries' similarities with the padded grid (float32). Both bounds'
    slack is ``BOUND_SLACK * i_max``: the cells that need float64 are scored from exact corner
    similarities, which differ from these by float32 rounding (< ``BOUND_SLACK``) times at most
    ``i_max``."""
    corner = sim.reshape(len(sim), -1)[:, table.corners]  # (n, cells, 4)
    top = corner.amax(dim=-1)
    bound = torch.where(top > 0, top * table.cell_max, top * table.cell_min) + BOUND_SLACK * table.cell_max
    wanted = (top > 0) & (bound >= (floor[:, None] if floor is not None else -math.inf))
    rows, cells = torch.nonzero(wanted, as_tuple=True)
    tighter = table.span_bound(corner[rows, cells], cells) + BOUND_SLACK * table.cell_max[cells]
    bound[rows, cells] = torch.minimum(bound[rows, cells], tighter)
    return corner, bound


def branch_and_bound(
    sim: torch.Tensor, queries: torch.Tensor, table: NormTable, region: Region, *, max_cells: int | None = None
) -> Found:
    """The best lattice point of ``region`` for each unit query ``queries`` ``(n, C)``, whose
    similarities with the padded grid of ``table`` are ``sim`` ``(n, h, w)``. (Tightening cells with
    the span bound lazily, when they come up to be scored, measured 4x slower: cells are then tried
    in the order of the looser bound.)"""
    n, device = len(sim), sim.device
    ch, cw = table.cells_hw
    corner, remaining = cell_bounds(sim, table, _centre_floor(sim, table, region))
    k0 = (torch.arange(ch * cw, device=device) % cw) * table.steps
    r0 = (torch.arange(ch * cw, device=device) // cw) * table.steps
    boxes = torch.stack((k0, r0, k0 + table.steps, r0 + table.steps), dim=-1)
    eligible = region.boxes_eligible(torch.arange(n, device=device), boxes.expand(n, -1, -1))
    remaining = remaining.masked_fill(~eligible, -math.inf)  # bounds of the cells not visited yet
    best = torch.full((n,), -math.inf, device=device)
    best_index = torch.full((n,), -1, dtype=torch.long, device=device)
    visited = torch.zeros(n, dtype=torch.long, device=device)
    limit = ch * cw if max_cells is None else max(1, int(max_cells))
    size = 1
    while True:
        # a query goes on while an unvisited cell's bound reaches its best score
        next_bound = remaining.amax(dim=1)
        active = torch.nonzero((visited < limit) & (next_bound >= best) & (next_bound > -math.inf))[:, 0]
        if len(active) == 0:
            break
        take = min(size, ch * cw, max(1, _PAIRS_PER_ROUND // len(active)))
        if max_cells is not None:
            take = min(take, limit - int(visited[active].min()))
        bounds, cells = remaining[active].topk(take, dim=1)  # the best bounds first
        rows = active[:, None].expand_as(cells)
        use = (bounds >= best[active, None]) & (bounds > -math.inf)
        use &= (visited[active, None] + torch.arange(take, device=device)) < limit
        remaining[rows[use], cells[use]] = -math.inf
        visited[active] += use.sum(dim=1)
        _score_cells(corner, queries, table, region, rows[use], cells[use], best, best_index)
        size *= 2
    capped = (visited >= limit) & (remaining.amax(dim=1) >= best) & (remaining.amax(dim=1) > -math.inf)
    return Found(best_index, best, capped)


def _centre_floor(sim: torch.Tensor, table: NormTable, region: Region) -> torch.Tensor:
    """``(n,)``: a score some lattice point of the region reaches for sure: the best similarity
    at a patch centre inside it (centres are lattice points), less the float slack."""
    hp, wp = table.padded_hw
    rows = torch.arange(hp, device=sim.device)[:, None].expand(hp, wp).reshape(-1)
    cols = torch.arange(wp, device=sim.device)[None, :].expand(hp, wp).reshape(-1)
    n = len(sim)
    k = (cols * table.steps).expand(n, -1)
    r = (rows * table.steps).expand(n, -1)
    inside = region.points_allowed(torch.arange(n, device=sim.device), k, r)
    inside &= (rows < table.grid_hw[0]) & (cols < table.grid_hw[1])
    return sim.reshape(n, -1).masked_fill(~inside, -math.inf).amax(dim=1) - BOUND_SLACK


def _score_cells(
    corner,
    queries,
    table: NormTable,
    region: Region,
    q_rows: torch.Tensor,
    cells: torch.Tensor,
    best: torch.Tensor,
    best_index: torch.Tensor,
) -> None:
    """Score every lattice point of (query, cell) pairs exactly (in float64 for the cells that need
    it); updates ``best``/``best_index`` in place."""
    side = table.steps + 1
    chunk = max(1, _POINTS_PER_CHUNK // (side * side))
    lattice_w = table.lattice_hw[1]
    _, cw = table.cells_hw
    span = torch.arange(side, device=corner.device)
    frac = span.double() / table.steps
    for start in range(0, len(cells), chunk):  # bounded memory
        rows_q, part = q_rows[start : start + chunk], cells[start : start + chunk]
        inverse = table.inverse_norms(part)
        scores = _interpolate(corner[rows_q, part], frac.float()) * inverse  # (m, side, side)
        wide = table.needs_float64[part]
        if wide.any():
            d = table.exact_corner_dots(queries[rows_q[wide]], part[wide])
            scores[wide] = (_interpolate(d, frac) * inverse[wide].double()).float()
        scores = scores.reshape(len(part), -1)  # (m, side * side), raster order
        row0, col0 = (part // cw) * table.steps, (part % cw) * table.steps
        if not region.everything:
            k = (col0[:, None, None] + span[None, None, :]).expand(-1, side, -1).reshape(len(part), -1)
            r = (row0[:, None, None] + span[None, :, None]).expand(-1, -1, side).reshape(len(part), -1)
            scores = scores.masked_fill(~region.points_allowed(rows_q, k, r), -math.inf)
        top_score, arg = scores.max(dim=1)  # the first maximum: raster order within the cell
        index = (row0 + arg // side) * lattice_w + col0 + arg % side
        _update(rows_q, top_score[:, None], index[:, None], best, best_index)


def _interpolate(d: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
    """Bilinear interpolation of corner values ``d`` ``(m, 4)`` (top-left, top-right, bottom-left,
    bottom-right) at fractions ``frac`` ``(side,)`` each way: ``(m, side, side)`` (row, column)."""
    top = d[:, :1] * (1 - frac) + d[:, 1:2] * frac  # (m, side) along the row (x)
    bottom = d[:, 2:3] * (1 - frac) + d[:, 3:4] * frac
    return top[:, None, :] * (1 - frac)[None, :, None] + bottom[:, None, :] * frac[None, :, None]


def _update(
    q_rows: torch.Tensor, scores: torch.Tensor, index: torch.Tensor, best: torch.Tensor, best_index: torch.Tensor
) -> None:
    """Fold candidate points ``scores``/``index`` ``(m, P)`` of queries ``q_rows`` ``(m,)`` into
    ``best``/``best_index``: the highest score wins, equal scores go to the smaller raster index."""
    top, arg = scores.max(dim=1)  # first maximum within a row: rows are in raster order
    top_index = index.gather(1, arg[:, None])[:, 0]
    n = len(best)
    round_best = torch.full((n,), -math.inf, device=best.device).scatter_reduce(0, q_rows, top, "amax")
    at_best = top == round_best[q_rows]
    large = torch.iinfo(torch.long).max
    round_index = torch.full((n,), large, dtype=torch.long, device=best.device).scatter_reduce(
        0, q_rows[at_best], top_index[at_best], "amin"
    )
    better = (round_best > best) | ((round_best == best) & (round_index < best_index) & (round_index != large))
    better &= round_best > -math.inf
    best.copy_(torch.where(better, round_best, best))
    best_index.copy_(torch.where(better, round_index, best_index))


def lattice_to_grid(index: torch.Tensor, table: NormTable) -> torch.Tensor:
    """Raster lattice indices ``(n,)`` -> grid positions ``(u, v)`` ``(n, 2)`` float64; NaN for -1
    (a region that held no lattice point)."""
    lattice_w = table.lattice_hw[1]
    uv = torch.stack(((index % lattice_w).double(), (index // lattice_w).double()), dim=-1) / table.steps
    return uv.masked_fill((index < 0)[:, None], math.nan)


# ---------------------------------------------------------------------------------------------
# The searches matching and tracking use


class Located(NamedTuple):
    """Where queries are found in a target map (see :func:`locate`)."""

    points_xy: torch.Tensor  #: (N, 2) float32 target-image pixels of the best match
    scores: torch.Tensor  #: (N,) float32 cosine at ``points_xy``
    runner_up: torch.Tensor  #: (N,) float32 best cosine farther than ``exclusion`` patches (NaN if not asked)
    capped: torch.Tensor  #: (N,) bool, the ``max_cells`` cap stopped the search before it was proven best


def locate(
    queries: torch.Tensor,
    target: FeatureMap,
    *,
    exclusion: float | None = None,
    max_cells: int | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    table: NormTable | None = None,
) -> Located:
    """Best match of each query anywhere in ``target``: the best point of the 1/4-pixel lattice
    (see the module docstring for what is maximised and why it is exact).

    Args:
        queries: ``(N, C)`` float query features (L2-normalised here if they are not already).
        target: the feature map searched.
        exclusion: also find the runner-up (for a ratio test): the best lattice point farther than
            this many patches (grid units, Chebyshev distance) from the best. None skips it (NaN);
            where no point is that far, the runner-up is -1 (the lowest cosine).
        max_cells: visit at most this many grid cells per query (a speed cap; None, the default,
            is exact). ``capped`` says where it stopped the search before the answer was proven.
        chunk_size: queries searched together (bounds memory).
        table: the :class:`NormTable` of ``target`` to reuse (built once per map).

    Returns:
        :class:`Located`, positions in ORIGINAL target-image pixels.

    >>> gen = torch.Generator().manual_seed(0)
    >>> fmap = FeatureMap(torch.randn(3, 4, 8, generator=gen), image_size_wh=(56, 42), processed_size_wh=(56, 42))
    >>> q = fmap.normalized().sample(torch.tensor([[20.0, 17.0]]), normalize=True)
    >>> found = locate(q, fmap)
    >>> found.points_xy.tolist(), round(float(found.scores), 4)
    ([[20.0, 17.0]], 1.0)
    """
    table = table or NormTable(target)
    q = F.normalize(queries.float(), dim=-1).to(table.device)
    n = len(q)
    grid_uv = torch.zeros(n, 2, dtype=torch.float64, device=table.device)
    scores = torch.full((n,), -math.inf, device=table.device)
    runner_up = torch.full((n,), math.nan, device=table.device)
    capped = torch.zeros(n, dtype=torch.bool, device=table.device)
    for start in range(0, n, max(1, chunk_size)):
        part = slice(start, start + chunk_size)
        sim = _padded_similarity(q[part], table)
        region = Region.whole(len(sim), table)
        found = branch_and_bound(sim, q[part], table, region, max_cells=max_cells)
        grid_uv[part], scores[part], capped[part] = lattice_to_grid(found.index, table), found.score, found.capped
        if exclusion is not None:
            lattice_w = table.lattice_hw[1]
            best_kl = torch.stack((found.index % lattice_w, found.index // lattice_w), dim=-1)
            second = branch_and_bound(
                sim, q[part], table, region.excluding(best_kl, exclusion, table.steps), max_cells=max_cells
            )
            runner_up[part] = second.score.clamp_min(-1.0)
            capped[part] |= second.capped
    return Located(target.grid_to_pixel(grid_uv).float(), scores, runner_up, capped)


def refine_peaks(
    queries: torch.Tensor,
    target: FeatureMap,
    peaks_grid: torch.Tensor,
    *,
    radius: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
    table: NormTable | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best match of each query within ``radius`` patches of given peaks: the best point of the
    1/4-pixel lattice inside the squares of half-width ``radius`` (grid units) around the peaks
    (exact, see the module docstring). The tracker's window search.

    Args:
        queries: ``(N, C)`` float query features (L2-normalised here if they are not already).
        target: the feature map searched.
        peaks_grid: ``(N, 2)`` grid positions (col, row) to search around (e.g. the argmax patch of
            :func:`similarity`, or the last position of a tracked point), or ``(N, K, 2)`` for ``K``
            peaks per query (the best point of all ``K`` squares wins).
        radius: half-width of the square around each peak, in grid cells (patches at the map's stride).
        chunk_size: queries processed together (bounds memory).
        table: the :class:`NormTable` of ``target`` to reuse.

    Returns:
        ``points_xy``: ``(N, 2)`` float32 positions in ORIGINAL target-image pixels;
        ``scores``: ``(N,)`` float32 cosine similarity at those positions. A window holding no
        lattice point (``radius`` 0 around a peak off the lattice) gives NaN and ``-inf``.

    >>> gen = torch.Generator().manual_seed(0)
    >>> fmap = FeatureMap(torch.randn(3, 4, 8, generator=gen), image_size_wh=(56, 42), processed_size_wh=(56, 42))
    >>> q = fmap.normalized().sample(torch.tensor([[20.0, 17.0]]), normalize=True)
    >>> xy, score = refine_peaks(q, fmap, torch.tensor([[1, 1]]))
    >>> xy.tolist(), round(float(score), 4)
    ([[20.0, 17.0]], 1.0)
    """
    if not (radius >= 0 and math.isfinite(radius)):
        raise ValueError(f"radius must be a finite non-negative number of patches, got {radius}")
    table = table or NormTable(target)
    q = F.normalize(queries.float(), dim=-1).to(table.device)
    peaks = torch.as_tensor(peaks_grid).to(table.device).double()  # float32 would round the window's edges
    if peaks.ndim == 2:
        peaks = peaks[:, None]
    if peaks.ndim != 3 or peaks.shape[-1] != 2 or len(peaks) != len(q):
        raise ValueError(f"peaks_grid must be ({len(q)}, 2) or ({len(q)}, K, 2), got {tuple(peaks.shape)}")
    grid_uv = torch.zeros(len(q), 2, dtype=torch.float64, device=table.device)
    scores = torch.full((len(q),), -math.inf, device=table.device)
    h, w = table.grid_hw
    centres = torch.stack((peaks[..., 0].clamp(0, w - 1), peaks[..., 1].clamp(0, h - 1)), dim=-1)
    for start in range(0, len(q), max(1, chunk_size)):
        part = slice(start, start + chunk_size)
        sim = _padded_similarity(q[part], table)
        found = branch_and_bound(sim, q[part], table, Region.around(centres[part], float(radius), table))
        grid_uv[part], scores[part] = lattice_to_grid(found.index, table), found.score
    return target.grid_to_pixel(grid_uv).float(), scores


def _padded_similarity(queries: torch.Tensor, table: NormTable) -> torch.Tensor:
    """Cosine of unit queries ``(n, C)`` with the table's (padded) patch features: ``(n, hp, wp)``."""
    hp, wp = table.padded_hw
    return (queries @ table.feats.T).reshape(-1, hp, wp)
