"""The exact search (dinofeat.search) against brute force: every lattice point evaluated.

What the search claims: the returned position is the best point of the 1/4-pixel lattice inside its
region (the whole map, windows around peaks, everything beyond an exclusion), scored by the
cosine with the bilinearly interpolated, re-normalised feature (FeatureMap.sample). The reference
here evaluates FeatureMap.sample at every lattice point. i.i.d. random features make every search
look exact, so the maps include smooth fields (low-frequency features; a real photo through a
smooth random model, whose similarity surfaces are nearly flat), near-constant fields with one
distinct patch, grids one patch wide, and overlapping strides.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import smooth_vit
from dinofeat.features.extractor import Extractor
from dinofeat.features.featuremap import FeatureMap
from dinofeat.search import (
    SUBDIVISIONS,
    NormTable,
    cell_bounds,
    locate,
    refine_peaks,
    similarity,
)

TOLERANCE = 1e-6  # the issue's: the returned score is at least the brute-force maximum minus this


def lattice(fmap: FeatureMap) -> torch.Tensor:
    """``(P, 2)`` float64 grid positions (u, v) of every lattice point, in raster order."""
    h, w = fmap.grid_hw
    steps = SUBDIVISIONS * fmap.stride
    rows, cols = torch.meshgrid(torch.arange(steps * (h - 1) + 1), torch.arange(steps * (w - 1) + 1), indexing="ij")
    return torch.stack((cols, rows), dim=-1).reshape(-1, 2).double() / steps


def brute_force(fmap: FeatureMap, queries: torch.Tensor, allowed=None) -> torch.Tensor:
    """``(N, P)`` float64 cosine of each query at every lattice point (FeatureMap.sample on the
    normalised map); ``allowed`` ``(N, P)`` bool masks the others to -inf."""
    grid = lattice(fmap)
    q = F.normalize(queries.double(), dim=-1)
    normalised = fmap.normalized()
    cos = torch.cat(
        [q @ normalised.sample(fmap.grid_to_pixel(part), normalize=True).double().T for part in grid.split(20_000)],
        dim=1,
    )
    return cos if allowed is None else cos.masked_fill(~allowed, -math.inf)


def score_at(fmap: FeatureMap, queries: torch.Tensor, points_xy: torch.Tensor) -> torch.Tensor:
    """The reference cosine at the returned positions (float64)."""
    feats = fmap.normalized().sample(points_xy.double(), normalize=True).double()
    return (F.normalize(queries.double(), dim=-1) * feats).sum(-1)


def _map(features: torch.Tensor, stride: int = 14, patch: int = 14, scale: float = 1.0) -> FeatureMap:
    h, w = features.shape[:2]
    processed = (patch + (w - 1) * stride, patch + (h - 1) * stride)
    original = (round(processed[0] * scale), round(processed[1] * scale))
    return FeatureMap(features, image_size_wh=original, processed_size_wh=processed, patch_size=patch, stride=stride)


def smooth_field(h: int, w: int, c: int = 24, seed: int = 0) -> torch.Tensor:
    """Low-frequency features: a common vector plus slowly varying terms of the grid position."""
    gen = torch.Generator().manual_seed(seed)
    v, u = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    base, gu, gv, f = (torch.randn(c, generator=gen) for _ in range(4))
    return base + 0.05 * (u[..., None] * gu + v[..., None] * gv) + 0.02 * torch.sin(0.7 * u[..., None] * f)


def near_constant(h: int, w: int, c: int = 24, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    features = torch.ones(h, w, c) + 1e-4 * torch.randn(h, w, c, generator=gen)
    features[h // 2, w // 2] = torch.randn(c, generator=gen)
    return features


def photo_field(photo: np.ndarray) -> FeatureMap:
    """A real photo through the smooth random model, 4 x 5 patches (resized 3:1, so pixel
    positions are not on the lattice)."""
    extractor = Extractor(smooth_vit(), resolution=56, device="cpu", precision="fp32")
    return extractor.extract(photo[60:228, 120:330])


def _queries(fmap: FeatureMap, n: int, seed: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Features sampled at random original pixels (a third at integer pixels, a few at the border),
    plus noise: ``(points (n, 2), queries (n, C))``."""
    gen = torch.Generator().manual_seed(seed)
    w, h = fmap.image_size_wh
    points = torch.rand(n, 2, generator=gen) * torch.tensor([w - 1.0, h - 1.0])
    points[: n // 3] = points[: n // 3].round()
    points[-4:] = torch.tensor([[0.0, 0.0], [w - 1.0, h - 1.0], [0.0, h / 2], [w / 2, 0.0]])
    queries = fmap.normalized().sample(points, normalize=True)
    return points, queries + noise * torch.randn(queries.shape, generator=gen)


MAPS = {
    "iid": lambda photo: _map(torch.randn(5, 6, 24, generator=torch.Generator().manual_seed(3))),
    "smooth": lambda photo: _map(smooth_field(5, 6)),
    "photo_smooth_model": photo_field,
    "near_constant": lambda photo: _map(near_constant(5, 6)),
    "nearly_cancelling": lambda photo: _map(_alternating(6, 5, 0.1).transpose(0, 1).contiguous()),
    "one_row": lambda photo: _map(smooth_field(1, 7, seed=1)),
    "one_column": lambda photo: _map(smooth_field(6, 1, seed=2)),
    "one_patch": lambda photo: _map(torch.randn(1, 1, 24)),
    "stride_7": lambda photo: _map(smooth_field(6, 8, seed=4), stride=7, scale=1.7),
    "patch_16_stride_8": lambda photo: _map(smooth_field(5, 6, seed=5), stride=8, patch=16, scale=0.6),
}


@pytest.fixture(scope="module", params=sorted(MAPS))
def field(request, photo):
    return request.param, MAPS[request.param](photo)


def test_locate_returns_the_best_lattice_point(field):
    name, fmap = field
    for seed, noise in ((0, 0.0), (1, 0.05), (2, 0.3)):
        _, queries = _queries(fmap, 100, seed, noise)
        found = locate(queries, fmap)
        best = brute_force(fmap, queries).max(dim=1).values
        assert (score_at(fmap, queries, found.points_xy) >= best - TOLERANCE).all(), name
        assert not found.capped.any()
        torch.testing.assert_close(found.scores.double(), score_at(fmap, queries, found.points_xy), atol=1e-6, rtol=0)


def test_runner_up_is_the_best_point_beyond_the_exclusion(field):
    _name, fmap = field
    _, queries = _queries(fmap, 100, 3, 0.1)
    found = locate(queries, fmap, exclusion=1.5)
    steps = SUBDIVISIONS * fmap.stride
    best_uv = (fmap.pixel_to_grid(found.points_xy.double()) * steps).round() / steps  # on the lattice
    far = (lattice(fmap)[None] - best_uv[:, None]).abs().amax(dim=-1) > 1.5 + 1e-9
    expected = brute_force(fmap, queries, far).max(dim=1).values.clamp_min(-1.0)
    torch.testing.assert_close(found.runner_up.double(), expected, atol=2e-6, rtol=0)


def test_window_search_returns_the_best_point_of_the_windows(field):
    """refine_peaks (the tracker's window): the best lattice point within ``radius`` grid units of
    any of K peaks, peaks anywhere (between centres, near borders, outside the map)."""
    name, fmap = field
    h, w = fmap.grid_hw
    gen = torch.Generator().manual_seed(4)
    _points, queries = _queries(fmap, 120, 4, 0.05)
    peaks = torch.rand(120, 2, 2, generator=gen).double() * torch.tensor([w + 1.0, h + 1.0]) - 1.0
    cos = brute_force(fmap, queries)
    centres = torch.stack((peaks[..., 0].clamp(0, w - 1), peaks[..., 1].clamp(0, h - 1)), dim=-1)
    for radius in (0.0, 0.3, 1.0, 2.5):
        xy, _scores = refine_peaks(queries, fmap, peaks, radius=radius)
        inside = ((lattice(fmap)[None, None] - centres[:, :, None]).abs() <= radius + 1e-6).all(-1).any(1)
        best = cos.masked_fill(~inside, -math.inf).max(dim=1).values
        has_point = inside.any(dim=1)
        got = score_at(fmap, queries, xy)
        assert (got[has_point] >= best[has_point] - TOLERANCE).all(), (name, radius)


def test_bounds_hold_at_every_lattice_point(field):
    """The proof's claim, checked: no lattice score of a cell exceeds the cell's bound."""
    name, fmap = field
    _, queries = _queries(fmap, 60, 5, 0.2)
    table = NormTable(fmap)
    unit = F.normalize(queries, dim=-1)
    sim = (unit @ table.feats.T).reshape(len(queries), *table.padded_hw)
    _, bound = cell_bounds(sim, table)
    cos = brute_force(fmap, queries)
    ch, cw = table.cells_hw
    grid = lattice(fmap)
    for index in range(ch * cw):  # a point on a cell edge belongs to both cells: check each one
        i, j = divmod(index, cw)
        mine = (grid[:, 0] >= j - 1e-9) & (grid[:, 0] <= j + 1 + 1e-9) & (grid[:, 1] >= i - 1e-9)
        mine &= grid[:, 1] <= i + 1 + 1e-9
        if mine.any():
            assert (cos[:, mine].max(dim=1).values <= bound[:, index].double() + 1e-7).all(), (name, index)


def test_norm_table_extremes_are_those_of_the_lattice(field):
    """The inverse-norm extremes per cell equal those of FeatureMap.sample's interpolated features."""
    name, fmap = field
    table = NormTable(fmap)
    h, w = fmap.grid_hw
    if min(h, w) < 2:
        return  # padded maps: the padding's norms are those of the repeated row or column
    grid = lattice(fmap)
    raw = (
        FeatureMap(
            F.normalize(fmap.features.float(), dim=-1),
            fmap.image_size_wh,
            fmap.processed_size_wh,
            fmap.patch_size,
            fmap.stride,
        )
        .sample(fmap.grid_to_pixel(grid))
        .double()
    )
    inverse = raw.norm(dim=-1).reciprocal()
    ch, cw = table.cells_hw
    for index in range(ch * cw):
        i, j = divmod(index, cw)
        mine = (grid[:, 0] >= j - 1e-9) & (grid[:, 0] <= j + 1 + 1e-9) & (grid[:, 1] >= i - 1e-9)
        mine &= grid[:, 1] <= i + 1 + 1e-9
        top, bottom = float(inverse[mine].max()), float(inverse[mine].min())
        assert abs(top - float(table.cell_max[index])) < 1e-5 * top, name  # relative: 1/|f| reaches ~300
        assert abs(bottom - float(table.cell_min[index])) < 1e-5 * bottom, name


def test_ties_go_to_the_first_point_in_raster_order():
    """A constant map: every position ties; the search returns the first patch centre."""
    fmap = _map(torch.ones(4, 5, 8))
    found = locate(torch.ones(3, 8), fmap)
    torch.testing.assert_close(found.points_xy, fmap.grid_to_pixel(torch.zeros(3, 2)).float())
    xy, _ = refine_peaks(torch.ones(3, 8), fmap, torch.tensor([[2.0, 2.0]] * 3), radius=1.0)
    torch.testing.assert_close(xy, fmap.grid_to_pixel(torch.tensor([[1.0, 1.0]] * 3)).float())


def test_a_capped_search_says_so():
    fmap = _map(smooth_field(5, 6))
    _, queries = _queries(fmap, 50, 6, 0.3)
    capped = locate(queries, fmap, max_cells=1)
    exact = locate(queries, fmap)
    assert not exact.capped.any()
    worse = capped.scores < exact.scores - 1e-6
    assert capped.capped[worse].all()  # wherever the cap cost precision, the result says it was hit


def test_similarity_is_cosine_against_every_patch():
    fmap = FeatureMap(torch.randn(3, 5, 8), image_size_wh=(70, 42), processed_size_wh=(70, 42))
    q = torch.randn(4, 8)
    expected = F.normalize(q, dim=-1) @ F.normalize(fmap.features.reshape(-1, 8), dim=-1).T
    assert similarity(q, fmap).shape == (4, 3, 5)
    torch.testing.assert_close(similarity(q, fmap).reshape(4, -1), expected)


def test_refine_peaks_accepts_several_peaks_and_checks_shapes():
    gen = torch.Generator().manual_seed(1)
    fmap = FeatureMap(torch.randn(4, 6, 16, generator=gen), image_size_wh=(120, 80), processed_size_wh=(84, 56))
    points = torch.tensor([[30.0, 20.0], [75.3, 41.9], [50.0, 60.0]])
    q = fmap.normalized().sample(points, normalize=True)
    near = fmap.pixel_to_grid(points.double()).round()
    xy, scores = refine_peaks(q, fmap, near)
    assert xy.shape == (3, 2) and xy.dtype == torch.float32 and scores.shape == (3,)
    assert (scores > 0.999).all()
    far = torch.tensor([[0, 0], [5, 0], [0, 3]])  # a wrong peak first: the right one must win
    xy2, _ = refine_peaks(q, fmap, torch.stack((far, near.long()), dim=1))
    torch.testing.assert_close(xy2, xy)
    with pytest.raises(ValueError):
        refine_peaks(q, fmap, near[:2])
    with pytest.raises(ValueError):
        refine_peaks(q, fmap, near, radius=-1.0)


def test_lattice_points_come_back_exactly(photo):
    """Queries sampled at lattice points of their own map are found at that point (0 px error)
    wherever no other point ties with them (within 1e-6)."""
    fmap = photo_field(photo)
    grid = lattice(fmap)
    pick = torch.randperm(len(grid), generator=torch.Generator().manual_seed(7))[:150]
    truth = fmap.grid_to_pixel(grid[pick])
    queries = fmap.normalized().sample(truth, normalize=True)
    found = locate(queries, fmap)
    cos = brute_force(fmap, queries)
    no_tie = (cos > cos[torch.arange(150), pick][:, None] - 1e-6).sum(dim=1) == 1
    error = (found.points_xy.double() - truth).norm(dim=1)
    assert no_tie.float().mean() > 0.5
    assert (error[no_tie] < 1e-3).all()


def _alternating(h: int, w: int, eps: float, c: int = 24, seed: int = 6) -> torch.Tensor:
    """Neighbouring columns nearly opposite (``±base`` plus a little smooth field): the interpolated
    feature between them nearly cancels, ``|f|`` down to about ``eps / 30`` mid-cell (as features
    centred by a PCA can); ``|f|^2`` is then a tiny difference of terms near 1."""
    gen = torch.Generator().manual_seed(seed)
    base = F.normalize(torch.randn(c, generator=gen), dim=0)
    sign = torch.tensor([(-1.0) ** j for j in range(w)])
    return sign[None, :, None] * base + eps * F.normalize(smooth_field(h, w, c, seed), dim=-1)


def _bilinear64(fmap: FeatureMap, queries: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """``(N, P)`` cosines at grid positions ``uv`` ``(P, 2)``, interpolated in float64 by hand: a
    reference free of float32 cancellation (``FeatureMap.sample`` works in float32)."""
    f = F.normalize(fmap.features.double(), dim=-1)
    h, w = fmap.grid_hw
    u, v = uv[:, 0], uv[:, 1]
    u0, v0 = u.floor().long().clamp(max=w - 2), v.floor().long().clamp(max=h - 2)
    fu, fv = (u - u0)[:, None], (v - v0)[:, None]
    mixed = (
        (1 - fu) * (1 - fv) * f[v0, u0]
        + fu * (1 - fv) * f[v0, u0 + 1]
        + (1 - fu) * fv * f[v0 + 1, u0]
        + fu * fv * f[v0 + 1, u0 + 1]
    )
    return F.normalize(queries.double(), dim=-1) @ F.normalize(mixed, dim=-1).T


@pytest.mark.parametrize("across", ["columns", "rows"])
@pytest.mark.parametrize("eps", [0.1, 0.03, 0.01])
def test_corners_that_nearly_cancel_still_give_the_best_point(eps, across):
    field = _alternating(4, 5, eps)  # neighbouring columns cancel; transposed, neighbouring rows
    fmap = _map(field if across == "columns" else field.transpose(0, 1).contiguous())
    grid = lattice(fmap)
    for seed, noise in ((0, 0.0), (1, 0.05), (2, 0.3)):
        _, queries = _queries(fmap, 100, seed, noise)
        best = _bilinear64(fmap, queries, grid).max(dim=1).values
        found = locate(queries, fmap)
        reached = _bilinear64(fmap, queries, fmap.pixel_to_grid(found.points_xy.double())).diagonal()
        assert (reached >= best - TOLERANCE).all(), (seed, float((best - reached).max()))


def test_a_window_without_lattice_points_gives_nan_and_minus_infinity():
    fmap = _map(smooth_field(3, 4))
    queries = fmap.normalized().features[0, :2]
    xy, scores = refine_peaks(queries, fmap, torch.tensor([[1.1, 1.0], [1.0, 1.0]]), radius=0.0)
    assert torch.isnan(xy[0]).all() and scores[0] == -math.inf  # 1.1 is between lattice points
    assert torch.isfinite(xy[1]).all() and scores[1] > 0.99  # a patch centre is a lattice point


def test_only_maps_with_near_cancelling_cells_are_searched_in_float64():
    """Float64 costs ~4x on a CPU: ordinary maps keep float32 norms and similarities."""
    assert not NormTable(_map(smooth_field(4, 5))).needs_float64.any()
    table = NormTable(_map(_alternating(4, 5, 0.03)))
    wide = torch.nonzero(table.needs_float64)[:, 0]
    assert len(wide) and table.exact_corner_dots(torch.ones(len(wide), 24), wide).dtype == torch.float64
