"""PCA of dense features: what DINO sees, as colours (the DINOv2 paper's recipe, made robust).

The recipe (:meth:`FeaturePCA.fit`), over one image or jointly over several:

1. **Foreground** (:func:`fit_foreground`): a first PCA over all patches; its first component
   separates object from background. The component's sign is fixed by the *border rule* (below),
   its values are scaled to about ``[0, 1]`` by robust percentiles, and a patch is foreground when
   the scaled score is above a threshold: Otsu's (automatic, the default) or the user's.
2. **Parts** (:func:`fit_pca`): a second PCA fitted on the foreground patches only, so its
   components describe the object's parts instead of the object/background contrast.
3. **Colours** (:func:`to_rgb`): the first three components become R, G, B, each scaled on its
   own by percentiles of the fitting data (not one global min-max), background black.

Fitting jointly on several images gives the same part the same colour in every image. A fitted
:class:`FeaturePCA` is saved and loaded as ``.npz`` (:meth:`FeaturePCA.save`,
:meth:`FeaturePCA.load`) to colour new images consistently.

Determinism: fits run on the CPU in float64 with a seeded sample, and every sign is fixed by a
rule, so the picture is the same on every run and (up to the features themselves) every device.

* Component signs (:func:`fit_pca`): each component points to where the projections of the
  fitting data have their long tail (positive third moment), so a small distinctive part is
  bright rather than dark; if the third moment is ~0, the largest loading is made positive.
* Foreground sign (the border rule, :func:`foreground_sign`): split the first component at its
  Otsu threshold; the foreground is the side that is more frequent among interior patches than
  among the patches on the image border (objects are framed by background). If both are equally
  frequent, or the grid has no interior, the foreground is the smaller side.

PCA comes from ``torch.linalg.svd`` of the centred samples; nothing here is hand-written except
Otsu's threshold (ten lines of numpy, so that scikit-image is not a runtime dependency).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinofeat.display import png_bytes
from dinofeat.errors import InputError, field
from dinofeat.features.featuremap import FeatureMap
from dinofeat.options import COLOR_COMPONENTS, DEFAULT_PERCENTILES, PCAOptions

log = logging.getLogger(__name__)

#: Patches per SVD at most; more are subsampled (seeded): the SVD costs N * C^2, and 20k patches
#: (15 images at 448 px) pin down the leading components far better than the colours can show.
DEFAULT_MAX_SAMPLES = 20_000
#: Fewer foreground patches than this and the parts PCA is fitted on all patches (with a warning).
MIN_FOREGROUND_PATCHES = 8
#: Third moments below this fraction of std^3 count as zero for the sign rule.
_SKEW_TOLERANCE = 1e-3
PCA_FILE_FORMAT = "dinofeat-pca"
PCA_FILE_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Functional core


@dataclass(frozen=True)
class PCABasis:
    """A fitted PCA: ``transform(x) = (x - mean) @ components.T``.

    Attributes:
        mean: ``(C,)`` float32, the mean of the fitting samples.
        components: ``(K, C)`` float32, orthonormal rows, strongest first, signs fixed.
        explained_variance: ``(K,)`` float32, variance of the samples along each component.
    """

    mean: torch.Tensor
    components: torch.Tensor
    explained_variance: torch.Tensor

    @property
    def dim(self) -> int:
        """Feature dimension ``C`` the basis expects."""
        return int(self.components.shape[1])

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def __repr__(self) -> str:
        """``PCABasis(3 components of 384)``."""
        return f"PCABasis({self.n_components} components of {self.dim})"

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """Project ``(..., C)`` features onto the components: ``(..., K)`` float32, same device."""
        if features.shape[-1] != self.dim:
            raise InputError(f"features have {features.shape[-1]} channels but the PCA was fitted on {self.dim}")
        x = features.float()
        mean, comps = self.mean.to(x.device), self.components.to(x.device)
        return (x - mean) @ comps.T

    def head(self, k: int) -> PCABasis:
        """The first ``k`` components."""
        return PCABasis(self.mean, self.components[:k], self.explained_variance[:k])


def fit_pca(
    samples: torch.Tensor, n_components: int, *, max_samples: int | None = DEFAULT_MAX_SAMPLES, seed: int = 0
) -> PCABasis:
    """PCA of ``samples`` ``(N, C)`` by SVD (``torch.linalg.svd``, CPU, float64), signs fixed.

    Each component's sign makes the projections of the samples positively skewed (long tail on
    the positive side); when the skew is ~0 the largest-magnitude loading is made positive. More
    than ``max_samples`` rows are subsampled with a generator seeded by ``seed``.

    >>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [9.0, 0.0]])
    >>> basis = fit_pca(x, 1)
    >>> basis.components
    tensor([[1., 0.]])
    >>> basis.transform(x).squeeze(1).round(decimals=2)  # the outlier 9 ends up on the bright side
    tensor([-3., -2., -1.,  6.])
    """
    if samples.ndim != 2:
        raise InputError(f"expected samples of shape (N, C), got {tuple(samples.shape)}")
    if n_components < 1:
        raise InputError(f"the number of components must be at least 1, got {n_components}")
    n, c = samples.shape
    if n < 2:
        raise InputError(f"PCA needs at least 2 samples, got {n}")
    rows = n if max_samples is None else min(n, max_samples)
    if n_components > min(rows, c):
        raise InputError(f"cannot fit {n_components} components to {rows} samples of dimension {c}")
    x = samples.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise InputError(f"features contain NaN or infinite values; try {field('precision', 'fp32')}")
    fit_rows = x
    if max_samples is not None and n > max_samples:
        gen = torch.Generator().manual_seed(seed)
        fit_rows = x[torch.randperm(n, generator=gen)[:max_samples]]
    mean = fit_rows.mean(0)
    centred = fit_rows - mean
    if centred.shape[0] < centred.shape[1]:  # same result; LAPACK's gesdd is far slower on wide inputs
        u, singular, _ = torch.linalg.svd(centred.T, full_matrices=False)
        vh = u.T
    else:
        _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    comps = vh[:n_components].clone()
    proj = (fit_rows - mean) @ comps.T
    std = proj.std(0).clamp_min(1e-12)
    skew = (proj**3).mean(0) / std**3
    largest = comps.gather(1, comps.abs().argmax(1, keepdim=True)).squeeze(1)
    signs = torch.where(skew.abs() > _SKEW_TOLERANCE, skew.sign(), largest.sign())
    signs[signs == 0] = 1.0
    comps *= signs[:, None]
    variance = singular[:n_components] ** 2 / (fit_rows.shape[0] - 1)
    return PCABasis(mean.float(), comps.float(), variance.float())


def robust_range(
    values: torch.Tensor, percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(low, high)`` percentiles of ``values`` ``(N, K)``: two ``(K,)`` float32 tensors.

    >>> low, high = robust_range(torch.arange(101.0)[:, None], (10, 90))
    >>> low.item(), high.item()
    (10.0, 90.0)
    """
    lo, hi = _check_percentiles(percentiles)
    v = values.detach().to("cpu", torch.float64).reshape(-1, values.shape[-1])
    q = torch.tensor([lo / 100, hi / 100], dtype=torch.float64)
    low, high = torch.quantile(v, q, dim=0)
    return low.float(), high.float()


def to_rgb(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor, mask: torch.Tensor | None = None) -> np.ndarray:
    """First three channels of ``values`` ``(..., K>=3)`` -> ``(..., 3) uint8`` RGB.

    Channel ``k`` maps ``low[k] -> 0`` and ``high[k] -> 255`` linearly, clipped; ``mask`` (``(...)``
    bool, True = foreground) blackens the rest.

    >>> to_rgb(torch.tensor([[0.0, 0.5, 2.0]]), torch.zeros(3), torch.ones(3))
    array([[  0, 128, 255]], dtype=uint8)
    """
    if values.shape[-1] < 3:
        raise InputError(f"need at least 3 components for RGB, got {values.shape[-1]}")
    v = values[..., :3].float()
    low = low[:3].to(v.device, torch.float32)
    span = (high[:3].to(v.device, torch.float32) - low).clamp_min(1e-12)
    scaled = ((v - low) / span).clamp(0, 1)
    if mask is not None:
        scaled = scaled * mask.to(v.device)[..., None]
    return (scaled * 255 + 0.5).to(torch.uint8).cpu().numpy()


def otsu_threshold(values, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any shape): the cut maximising the between-class variance.

    Same result as ``skimage.filters.threshold_otsu`` (values ``> threshold`` are the upper class);
    written out here (a histogram and two cumulative sums) to keep scikit-image a test-only
    dependency.

    >>> otsu_threshold(np.r_[np.zeros(50), np.ones(50)])
    0.001953125
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise InputError("cannot threshold an empty set of values")
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)[:-1]
    weight_high = np.cumsum(hist[::-1])[::-1][1:]
    mean_low = np.cumsum(hist * centers)[:-1] / weight_low.clip(min=1)
    mean_high = (np.cumsum((hist * centers)[::-1]) / np.cumsum(hist[::-1]).clip(min=1))[::-1][1:]
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centers[int(np.argmax(between))])


def border_mask(grid_hw: tuple[int, int]) -> torch.Tensor:
    """``(h, w)`` bool, True on the outer ring of patches of a grid.

    >>> border_mask((3, 4)).int()
    tensor([[1, 1, 1, 1],
            [1, 0, 0, 1],
            [1, 1, 1, 1]], dtype=torch.int32)
    """
    h, w = grid_hw
    mask = torch.ones(h, w, dtype=torch.bool)
    mask[1:-1, 1:-1] = False
    return mask


def foreground_sign(upper: torch.Tensor, border: torch.Tensor) -> float:
    """The border rule: +1 if the upper side of a split is the foreground, -1 if the lower is.

    Args:
        upper: ``(N,)`` bool, patches on the upper side of the split (e.g. above Otsu's threshold).
        border: ``(N,)`` bool, patches on an image border.

    The foreground is the side more frequent among interior patches than among border patches;
    on a tie (or without interior patches) it is the smaller side.

    >>> upper = torch.tensor([True, False, False, False, True])
    >>> foreground_sign(upper, border=torch.tensor([False, True, True, True, False]))
    1.0
    """
    upper, border = upper.bool().cpu(), border.bool().cpu()
    if border.any() and (~border).any():
        at_border = upper[border].double().mean().item()
        inside = upper[~border].double().mean().item()
        if not math.isclose(at_border, inside, abs_tol=1e-9):
            return 1.0 if inside > at_border else -1.0
    return 1.0 if upper.double().mean().item() <= 0.5 else -1.0


@dataclass(frozen=True)
class Foreground:
    """Foreground/background split by the first principal component of all patches.

    ``score(x) = (x - mean) . component`` scaled so that ``low -> 0`` and ``high -> 1`` (the
    percentiles of the fitting patches); the foreground is ``score > threshold``.

    Attributes:
        basis: one-component :class:`PCABasis`, signed so that the foreground scores high.
        low, high: the score scaling (raw projection units).
        threshold: on the scaled score; Otsu's or the user's.
        method: ``"otsu"`` or ``"user"``.
    """

    basis: PCABasis
    low: float
    high: float
    threshold: float
    method: str = "otsu"

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """``(..., C)`` -> ``(...)`` float32 foreground score (about 0..1 on the fitting data)."""
        raw = self.basis.transform(features)[..., 0]
        return (raw - self.low) / max(self.high - self.low, 1e-12)

    def mask(self, features: torch.Tensor) -> torch.Tensor:
        """``(..., C)`` -> ``(...)`` bool, True for foreground."""
        return self.score(features) > self.threshold


def fit_foreground(
    grids: Sequence[torch.Tensor],
    *,
    threshold: float | str = "otsu",
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    max_samples: int | None = DEFAULT_MAX_SAMPLES,
    seed: int = 0,
) -> Foreground:
    """Fit the foreground split on the patches of one or more ``(h, w, C)`` feature grids.

    The sign follows the border rule (:func:`foreground_sign`, applied to the Otsu split of the
    first component over all grids together). ``threshold`` is ``"otsu"`` or a number on the
    scaled score (0 = low percentile of the fitting patches, 1 = high percentile).
    """
    PCAOptions(foreground=threshold)  # "otsu" or a number in [0, 1]
    samples = torch.cat([g.reshape(-1, g.shape[-1]) for g in grids])
    border = torch.cat([border_mask((g.shape[0], g.shape[1])).reshape(-1) for g in grids])
    basis = fit_pca(samples, 1, max_samples=max_samples, seed=seed)
    raw = basis.transform(samples)[:, 0].cpu()
    split = otsu_threshold(raw.numpy())
    sign = foreground_sign(raw > split, border)
    if sign < 0:
        basis = PCABasis(basis.mean, -basis.components, basis.explained_variance)
        raw = -raw
    low, high = robust_range(raw[:, None], percentiles)
    fg = Foreground(basis, float(low), float(high), 0.0, "user")
    if threshold == "otsu":
        return replace(fg, threshold=otsu_threshold(fg.score(samples).cpu().numpy()), method="otsu")
    return replace(fg, threshold=float(threshold))


# ---------------------------------------------------------------------------------------------
# The object


@dataclass(frozen=True)
class PCAColors:
    """One image coloured by a :class:`FeaturePCA`.

    Attributes:
        rgb: ``(H, W, 3) uint8`` RGB, background black.
        mask: ``(H, W)`` bool, True for foreground (all True without a foreground split).
    """

    rgb: np.ndarray
    mask: np.ndarray

    def __repr__(self) -> str:
        """``PCAColors(451x300, foreground 52%)``."""
        h, w = self.mask.shape[:2]
        return f"PCAColors({w}x{h}, foreground {float(self.mask.mean()) if self.mask.size else 0.0:.0%})"

    def _repr_png_(self) -> bytes:
        """The colours (background black), for notebooks."""
        return png_bytes(self.rgb)

    def rgba(self) -> np.ndarray:
        """``(H, W, 4) uint8`` with a transparent background (for PNG)."""
        return np.dstack([self.rgb, self.mask.astype(np.uint8) * 255])


@dataclass(frozen=True)
class FeaturePCA:
    """A fitted feature PCA: foreground split (optional), parts basis and colour scaling.

    Attributes:
        basis: the parts PCA (at least 3 components; the first three are R, G, B).
        low, high: ``(K,)`` float32, per-component percentiles of the fitting (foreground) patches.
        percentiles: the percentiles ``low``/``high`` were taken at.
        foreground: the :class:`Foreground` split, or None (every patch is foreground).
        metadata: strings describing the features it was fitted on (model, layers, ...).

    >>> from dinofeat.features.featuremap import FeatureMap
    >>> gen = torch.Generator().manual_seed(0)
    >>> fmap = FeatureMap(torch.randn(4, 6, 16, generator=gen), image_size_wh=(84, 56), processed_size_wh=(84, 56))
    >>> pca = FeaturePCA.fit([fmap], foreground=None)
    >>> colors = pca.colorize(fmap)
    >>> colors.rgb.shape, colors.rgb.dtype, bool(colors.mask.all())
    ((56, 84, 3), dtype('uint8'), True)
    """

    basis: PCABasis
    low: torch.Tensor
    high: torch.Tensor
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    foreground: Foreground | None = None
    metadata: dict | None = None

    # -- fitting ------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        maps: FeatureMap | torch.Tensor | Sequence[FeatureMap | torch.Tensor],
        *,
        n_components: int = COLOR_COMPONENTS,
        foreground: float | str | None = "otsu",
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
        max_samples: int | None = DEFAULT_MAX_SAMPLES,
        seed: int = 0,
        metadata: dict | None = None,
    ) -> FeaturePCA:
        """Fit jointly on feature maps (or ``(h, w, C)`` grids) of one or more images.

        Args:
            maps: one or several maps; all patches of all of them are fitted together, so the same
                part gets the same colour in every image.
            n_components: components kept (at least 3 are fitted: the colours need them).
            foreground: ``"otsu"`` (automatic threshold), a number (threshold on the scaled first
                component, see :func:`fit_foreground`) or None (no split: fit on every patch).
            percentiles: low/high percentiles that map each component to 0 and 255.
            max_samples: patches per SVD at most (seeded subsample above it).
            seed: seed of that subsample.
            metadata: strings stored with the PCA (model name, layers, ...).
        """
        PCAOptions(components=n_components, foreground=foreground)  # the checks of the command line
        grids = _grids(maps)
        dims = {int(g.shape[-1]) for g in grids}
        if len(dims) != 1:
            raise InputError(f"cannot fit one PCA to features of different sizes {sorted(dims)}")
        lo_hi = _check_percentiles(percentiles)
        fg = None
        if foreground is not None:
            fg = fit_foreground(grids, threshold=foreground, percentiles=lo_hi, max_samples=max_samples, seed=seed)
        samples = torch.cat([g.reshape(-1, g.shape[-1]) for g in grids])
        fit_on = samples
        k = max(int(n_components), COLOR_COMPONENTS)
        if fg is not None:
            fit_on = samples[fg.mask(samples)]
            if fit_on.shape[0] < max(MIN_FOREGROUND_PATCHES, k + 1):
                log.warning(
                    "only %d foreground patches (threshold %.3g); fitting the colours on all patches",
                    fit_on.shape[0],
                    fg.threshold,
                )
                fit_on = samples
        if fit_on.shape[0] <= k:
            raise InputError(
                f"{fit_on.shape[0]} patches are too few for {k} components; "
                f"use larger images or a higher {field('resolution')}"
            )
        basis = fit_pca(fit_on, k, max_samples=max_samples, seed=seed)
        low, high = robust_range(basis.transform(fit_on), lo_hi)
        return cls(basis, low, high, lo_hi, fg, dict(metadata or {}))

    # -- applying -----------------------------------------------------------------------------
    def __repr__(self) -> str:
        """``FeaturePCA(3 components of 384, foreground otsu threshold 0.513, model dinov2_vits14)``."""
        fg = self.foreground
        split = "no foreground split" if fg is None else f"foreground {fg.method} threshold {fg.threshold:.3g}"
        model = (self.metadata or {}).get("model")
        return f"FeaturePCA({self.n_components} components of {self.dim}, {split}{f', model {model}' if model else ''})"

    @property
    def n_components(self) -> int:
        return self.basis.n_components

    @property
    def dim(self) -> int:
        return self.basis.dim

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """``(..., C)`` features -> ``(..., K)`` float32 components (raw projection units)."""
        return self.basis.transform(features)

    def foreground_mask(self, features: torch.Tensor) -> torch.Tensor:
        """``(..., C)`` -> ``(...)`` bool, True for foreground (all True without a split)."""
        if self.foreground is None:
            return torch.ones(features.shape[:-1], dtype=torch.bool, device=features.device)
        return self.foreground.mask(features)

    def to_rgb(self, components: torch.Tensor, mask: torch.Tensor | None = None) -> np.ndarray:
        """``(..., K)`` components (from :meth:`transform`) -> ``(..., 3) uint8`` RGB, masked black."""
        return to_rgb(components, self.low, self.high, mask)

    def reduce(self, fmap: FeatureMap) -> FeatureMap:
        """The same map with ``(h, w, K)`` reduced features (geometry kept; ``.upsample`` works)."""
        return replace(fmap, features=self.transform(fmap.features), cls_token=None, register_tokens=None)

    def colorize(self, fmap: FeatureMap, *, nearest: bool = False, size_wh: tuple[int, int] | None = None) -> PCAColors:
        """Colour one image at its original size (or ``size_wh``).

        The three colour components and the foreground score are interpolated from the patch grid
        to every pixel (bilinear, or the nearest patch with ``nearest=True``), then scaled and
        thresholded, so object edges are smooth rather than blocky.
        """
        channels = self.transform(fmap.features)[..., :3]
        if self.foreground is not None:
            channels = torch.cat([channels, self.foreground.score(fmap.features)[..., None]], dim=-1)
        small = replace(fmap, features=channels, cls_token=None, register_tokens=None)
        big = small.upsample(size_wh, nearest=nearest)
        mask = big[..., 3] > self.foreground.threshold if self.foreground is not None else None
        rgb = self.to_rgb(big[..., :3], mask)
        full = mask.cpu().numpy() if mask is not None else np.ones(rgb.shape[:2], dtype=bool)
        return PCAColors(rgb, full)

    # -- files --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write to ``.npz`` (float32 arrays + metadata; loading reproduces colours exactly)."""
        arrays: dict[str, Any] = {  # Any: numpy's savez stub lets a **dict of arrays reach allow_pickle
            "format": np.asarray(PCA_FILE_FORMAT),
            "version": np.asarray(PCA_FILE_VERSION),
            "mean": self.basis.mean.numpy(),
            "components": self.basis.components.numpy(),
            "explained_variance": self.basis.explained_variance.numpy(),
            "low": self.low.numpy(),
            "high": self.high.numpy(),
            "percentiles": np.asarray(self.percentiles, dtype=np.float64),
        }
        if self.foreground is not None:
            fg = self.foreground
            arrays.update(
                {
                    "fg_mean": fg.basis.mean.numpy(),
                    "fg_component": fg.basis.components.numpy(),
                    "fg_explained_variance": fg.basis.explained_variance.numpy(),
                    "fg_low_high_threshold": np.asarray([fg.low, fg.high, fg.threshold], dtype=np.float64),
                    "fg_method": np.asarray(fg.method),
                }
            )
        for key, value in (self.metadata or {}).items():
            arrays[f"meta_{key}"] = np.asarray(str(value))
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeaturePCA:
        """Read a file written by :meth:`save`; any problem raises :class:`InputError`."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"PCA file not found: {path}")
        not_ours = f"{path} is not a dinofeat PCA file (expected an .npz written by `dinofeat pca --save-pca`)"
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except Exception:  # noqa: BLE001 - numpy raises many types for other files; its advice (allow_pickle) is not for us
            raise InputError(
                f"cannot read PCA file {path}: it is not a dinofeat PCA file (expected an .npz "
                f"written by `dinofeat pca --save-pca`)"
            ) from None
        if str(arrays.get("format", "")) != PCA_FILE_FORMAT:
            raise InputError(not_ours)
        if int(arrays.get("version", -1)) > PCA_FILE_VERSION:
            raise InputError(f"{path} was written by a newer dinofeat (format version {int(arrays['version'])})")
        try:
            return cls._from_arrays(arrays)
        except (KeyError, ValueError, IndexError, TypeError, RuntimeError) as err:
            raise InputError(f"PCA file {path} is damaged ({type(err).__name__}: {err})") from None

    @classmethod
    def _from_arrays(cls, a: dict[str, np.ndarray]) -> FeaturePCA:
        def t(key: str) -> torch.Tensor:
            return torch.from_numpy(np.asarray(a[key], dtype=np.float32).copy())

        basis = PCABasis(t("mean"), t("components"), t("explained_variance"))
        k, c = basis.components.shape
        if basis.mean.shape != (c,) or t("low").shape != (k,) or t("high").shape != (k,) or k < 3:
            raise ValueError("arrays of inconsistent shapes")
        fg = None
        if "fg_component" in a:
            fg_basis = PCABasis(t("fg_mean"), t("fg_component"), t("fg_explained_variance"))
            if fg_basis.components.shape != (1, c) or fg_basis.mean.shape != (c,):
                raise ValueError("foreground arrays of inconsistent shapes")
            low, high, threshold = (float(v) for v in a["fg_low_high_threshold"])
            fg = Foreground(fg_basis, low, high, threshold, str(a["fg_method"]))
        low_pct, high_pct = (float(v) for v in a["percentiles"])
        metadata = {key[5:]: str(value) for key, value in a.items() if key.startswith("meta_")}
        return cls(basis, t("low"), t("high"), (low_pct, high_pct), fg, metadata)


# ---------------------------------------------------------------------------------------------
# Helpers


def _grids(maps) -> list[torch.Tensor]:
    items = [maps] if isinstance(maps, (FeatureMap, torch.Tensor)) else list(maps)
    if not items:
        raise InputError("need at least one feature map to fit a PCA")
    grids = [m.features if isinstance(m, FeatureMap) else m for m in items]
    for g in grids:
        if g.ndim != 3:
            raise InputError(f"expected (h, w, C) feature grids, got shape {tuple(g.shape)}")
    return grids


def _check_percentiles(percentiles) -> tuple[float, float]:
    """Two percentiles LOW < HIGH in [0, 100], checked as :class:`~dinofeat.options.PCAOptions` does."""
    try:
        lo, hi = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise InputError(f"{field('percentiles')} must be two numbers LOW HIGH, got {percentiles!r}") from None
    return PCAOptions(percentiles=(lo, hi)).percentiles
