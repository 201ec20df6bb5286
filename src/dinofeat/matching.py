"""Correspondences between two images from dense DINOv2 features, with sub-patch precision.

The functional core works on :class:`~dinofeat.features.FeatureMap` objects:

* :func:`similarity` - cosine of query vectors against every patch of a target map (one matmul);
* :func:`refine_peaks` - moves integer patch peaks to the best sub-patch position;

Why refinement is cheap: bilinear interpolation is linear, so at a point between four patch
centres the dot product ``q . f(u, v)`` is the bilinear interpolation of the four similarities,
and ``|f(u, v)|^2 = w^T G w`` with ``G`` the 4x4 Gram matrix of those four features. The norms
do not depend on the query: they are computed once per target on a 1-processed-pixel lattice
(``16 h w C`` flops for the Gram matrices). The exact cosine against the bilinearly sampled,
re-normalised target feature then costs O(1) per candidate position instead of O(C): no feature
vector is gathered per query and no Python loop runs over queries or patches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dinofeat.features import FeatureMap

#: The fine search divides one processed pixel into this many steps around the coarse best.
FINE_SUBDIVISIONS = 4
#: Queries refined together; bounds memory to about ``chunk * (2 * radius * stride + 1)^2 * 40`` bytes.
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-patch position of each query's best match around integer peaks of the target grid.

    The target features are interpolated bilinearly (exactly as :meth:`FeatureMap.sample`) and
    re-normalised; the cosine with the query is evaluated on a lattice of 1 processed pixel within
    ``radius`` patches (grid cells) of the peak, then on a 1/4-pixel lattice within 1 pixel of the
    best of those. An image matched against itself therefore comes back to the query pixel to
    within 1/8 of a processed pixel.

    Args:
        queries: ``(N, C)`` float query features (L2-normalised here if they are not already).
        target: the feature map searched.
        peaks_grid: ``(N, 2)`` integer grid positions (col, row) to refine around, usually the
            argmax of :func:`similarity`; or ``(N, K, 2)`` for K candidate peaks per query, of which
            the one with the best refined cosine wins. Floats are rounded.
        radius: half-width of the search window around a peak, in grid cells (patches at the
            map's stride).
        chunk_size: queries processed together (bounds memory).

    Returns:
        ``points_xy``: ``(N, 2)`` float32 positions in ORIGINAL target-image pixels;
        ``scores``: ``(N,)`` float32 cosine similarity at those positions.

    >>> fmap = FeatureMap(torch.randn(3, 4, 8), image_size_wh=(56, 42), processed_size_wh=(56, 42))
    >>> q = fmap.normalized().sample(torch.tensor([[20.0, 17.0]]), normalize=True)
    >>> xy, score = refine_peaks(q, fmap, torch.tensor([[1, 1]]))
    >>> xy.round().tolist(), round(float(score), 4)
    ([[20.0, 17.0]], 1.0)
    """
    refiner = Refiner(target, radius=radius)
    q = F.normalize(queries.float(), dim=-1).to(refiner.device)
    peaks = torch.as_tensor(peaks_grid).to(refiner.device)
    if peaks.ndim == 2:
        peaks = peaks[:, None]
    if peaks.ndim != 3 or peaks.shape[-1] != 2 or len(peaks) != len(q):
        raise ValueError(f"peaks_grid must be ({len(q)}, 2) or ({len(q)}, K, 2), got {tuple(peaks.shape)}")
    grid_xy = torch.empty(len(q), 2, device=refiner.device)
    scores = torch.empty(len(q), device=refiner.device)
    for start in range(0, len(q), max(1, chunk_size)):
        part = slice(start, start + max(1, chunk_size))
        grid_xy[part], scores[part] = refiner.refine(similarity(q[part], target), peaks[part])
    return target.grid_to_pixel(grid_xy.double()).float(), scores


class Refiner:
    """Exact cosine at sub-patch positions of one target map, for many queries at once.

    Positions between patch centres carry the bilinearly interpolated, re-normalised feature, and
    positions beyond the outer patch centres are clamped, exactly as :meth:`FeatureMap.sample` on
    the normalised map. The search is two vectorised stages:

    * coarse: every processed pixel within ``radius`` patches of a peak. The dot products are the
      similarity map interpolated by two small matrix products; the feature norms do not depend on
      the query and are precomputed once on that 1-pixel lattice from per-cell Gram matrices.
    * fine: a 1/``FINE_SUBDIVISIONS``-pixel lattice within 1 pixel of the coarse best, with the
      norms from the Gram matrix of the 3x3 patches around it.

    Args:
        target: the feature map searched.
        radius: half-width of the coarse search window, in grid cells.
    """

    def __init__(self, target: FeatureMap, *, radius: float = 1.0) -> None:
        if not (radius >= 0 and math.isfinite(radius)):
            raise ValueError(f"radius must be a finite non-negative number of patches, got {radius}")
        feats = F.normalize(target.features.float(), dim=-1)
        self.device = feats.device
        self.h, self.w = h, w = target.grid_hw
        s = self.stride = int(target.stride)
        self.reach = int(math.floor(radius * s + 1e-9))  # coarse half-width, processed pixels
        self.cells = -(-self.reach // s)  # patches the coarse window reaches on each side
        chw = feats.permute(2, 0, 1)[None]
        self._padded_feats = F.pad(chw, (1, 1, 1, 1), mode="replicate")[0].permute(1, 2, 0).reshape((h + 2) * (w + 2), -1)
        # inverse feature norm at every processed pixel between patch centres, from the 4x4 Gram
        # matrix of each cell's corners (order 00, 01, 10, 11); the extra row/column of padding
        # makes the last centre row/column an ordinary cell corner
        padded = F.pad(chw, (0, 1, 0, 1), mode="replicate")[0].permute(1, 2, 0)
        corners = torch.stack((padded[:-1, :-1], padded[:-1, 1:], padded[1:, :-1], padded[1:, 1:]))
        gram = torch.einsum("ahwc,bhwc->hwab", corners, corners)  # (h, w, 4, 4)
        frac = torch.arange(s, device=self.device, dtype=torch.float32) / s
        weights = _bilinear_weights(frac[None, :].expand(s, s), frac[:, None].expand(s, s))  # (s, s, 4)
        norm2 = torch.einsum("kla,hwab,klb->hkwl", weights, gram, weights).reshape(h * s, w * s)
        lattice = norm2[: (h - 1) * s + 1, : (w - 1) * s + 1].clamp_min(1e-12).rsqrt()
        self._inv_norm = F.pad(lattice[None, None], (self.reach,) * 4, mode="replicate")[0, 0]
        # coarse interpolation matrix: lattice offset t (pixels) -> weights on window patches
        t = torch.arange(-self.reach, self.reach + 1, device=self.device)
        cell = torch.div(t, s, rounding_mode="floor")
        self._coarse_matrix = _interpolation_matrix(cell + self.cells, (t - cell * s).float() / s, 2 * self.cells + 2)

    def refine(self, sim: torch.Tensor, peaks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Best grid position ``(n, 2)`` (u, v) and its cosine ``(n,)`` near ``peaks`` ``(n, K, 2)``
        (integer col, row), given the queries' similarity maps ``sim`` ``(n, h, w)`` from
        :func:`similarity`."""
        best_xy, best_score = None, None
        padded = F.pad(sim[:, None], (self.cells, self.cells + 1) * 2, mode="replicate")[:, 0]
        for k in range(peaks.shape[1]):
            peak = peaks[:, k].round().long()
            peak[:, 0].clamp_(0, self.w - 1)
            peak[:, 1].clamp_(0, self.h - 1)
            xy, score = self._coarse(padded, peak)
            if best_score is None:
                best_xy, best_score = xy, score
            else:
                better = score > best_score
                best_xy = torch.where(better[:, None], xy, best_xy)
                best_score = torch.where(better, score, best_score)
        return self._fine(sim, best_xy)

    def _coarse(self, sim_padded: torch.Tensor, peak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Best 1-pixel lattice point ``(n, 2)`` long (x, y in processed pixels from the first
        centre) within ``reach`` of ``peak`` ``(n, 2)``, and its cosine ``(n,)``."""
        n, s, size = len(peak), self.stride, 2 * self.cells + 2
        # similarities of the window patches: padded rows/cols peak .. peak + size - 1
        span = torch.arange(size, device=self.device)
        width = sim_padded.shape[-1]
        index = (peak[:, 1, None, None] + span[:, None]) * width + peak[:, 0, None, None] + span
        window = sim_padded.reshape(n, -1).gather(1, index.reshape(n, -1)).reshape(n, size, size)
        matrix = self._coarse_matrix
        dot = matrix @ window @ matrix.T  # (n, T, T): rows y, columns x
        lattice = torch.arange(2 * self.reach + 1, device=self.device)
        width = self._inv_norm.shape[-1]
        index = (peak[:, 1, None, None] * s + lattice[:, None]) * width + peak[:, 0, None, None] * s + lattice
        cos = dot * self._inv_norm.reshape(-1)[index]
        score, arg = cos.reshape(n, -1).max(dim=1)
        x = peak[:, 0] * s + arg % lattice.numel() - self.reach
        y = peak[:, 1] * s + arg // lattice.numel() - self.reach
        return torch.stack((x.clamp(0, (self.w - 1) * s), y.clamp(0, (self.h - 1) * s)), dim=-1), score

    def _fine(self, sim: torch.Tensor, centre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Best position within 1 pixel of lattice points ``centre`` ``(n, 2)``, on a
        1/FINE_SUBDIVISIONS-pixel lattice: grid (u, v) ``(n, 2)`` and cosine ``(n,)``."""
        n, s, h, w = len(centre), self.stride, self.h, self.w
        steps = torch.arange(-FINE_SUBDIVISIONS, FINE_SUBDIVISIONS + 1, device=self.device).float() / FINE_SUBDIVISIONS
        cell = centre // s  # (n, 2): the window is patches cell - 1 .. cell + 1 on each axis
        u = ((centre[:, :1] + steps) / s).clamp(0, w - 1)  # (n, F)
        v = ((centre[:, 1:] + steps) / s).clamp(0, h - 1)
        kx = _interpolation_matrix(u.floor().long() - cell[:, :1] + 1, u - u.floor(), 3)  # (n, F, 3)
        ky = _interpolation_matrix(v.floor().long() - cell[:, 1:] + 1, v - v.floor(), 3)
        weights = (ky[:, :, None, :, None] * kx[:, None, :, None, :]).reshape(n, -1, 9)  # (n, F*F, 9)
        # the 3x3 window in the 1-padded map: padded rows/cols cell .. cell + 2
        span = torch.arange(3, device=self.device)
        index = ((cell[:, 1, None, None] + span[:, None]) * (w + 2) + cell[:, 0, None, None] + span).reshape(n, 9)
        feats = self._padded_feats[index]  # (n, 9, C)
        sim_padded = F.pad(sim[:, None], (1, 1, 1, 1), mode="replicate")[:, 0].reshape(n, -1)
        dot = (weights @ sim_padded.gather(1, index)[:, :, None])[..., 0]
        gram = feats @ feats.transpose(1, 2)
        norm2 = ((weights @ gram) * weights).sum(-1)
        score, arg = (dot * norm2.clamp_min(1e-12).rsqrt()).max(dim=1)
        rows = torch.arange(n, device=self.device)
        size = steps.numel()
        return torch.stack((u[rows, arg % size], v[rows, arg // size]), dim=-1), score


def _bilinear_weights(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Weights ``(..., 4)`` of corners 00, 01, 10, 11 for fractional offsets ``a`` (x) and ``b`` (y)."""
    return torch.stack(((1 - a) * (1 - b), a * (1 - b), (1 - a) * b, a * b), dim=-1)


def _interpolation_matrix(left: torch.Tensor, frac: torch.Tensor, size: int) -> torch.Tensor:
    """Linear interpolation weights ``(..., size)``: ``1 - frac`` on index ``left``, ``frac`` on
    ``left + 1`` (dropped past the end, where ``frac`` is 0)."""
    lo = F.one_hot(left.clamp(0, size - 1), size).float()
    hi = F.one_hot((left + 1).clamp(0, size - 1), size).float()
    return lo * (1 - frac)[..., None] + hi * frac[..., None]
