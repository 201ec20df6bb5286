"""Feature maps and their geometry: the one place where pixels and patch-grid positions meet.

Coordinate conventions
----------------------
* Pixel coordinates are float ``(x, y)`` in the **original** image: x to the right, y down, the
  centre of the top-left pixel at ``(0, 0)``; the image covers ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``.
* The image is resized to the processed size ``(W', H')`` before the model. Resizing maps pixel
  centres with the half-pixel rule: ``x' = (x + 0.5) * W' / W - 0.5``.
* Patch ``(row i, col j)`` covers processed pixels ``[j*s, j*s + p)`` horizontally (``p`` the patch
  size, ``s`` the stride), and its feature belongs to its centre ``x' = j*s + (p - 1) / 2``.
* Grid coordinates ``(u, v)`` are float column/row indices: ``(j, i)`` is the centre of patch (i, j).
* An upsampled map (:mod:`dinofeat.features.upsample`) has square cells of ``cell_size`` processed
  pixels tiling the processed image: cell ``(i, j)`` covers ``[j*c, (j+1)*c)`` and its feature
  belongs to its centre ``x' = j*c + (c - 1) / 2`` (``c = 1``: one feature per processed pixel).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from dinofeat.errors import InputError


def inside_image(points_xy, size_wh: tuple[int, int]) -> np.ndarray:
    """Boolean ``(N,)``: which pixel positions ``(N, 2)`` are finite and inside a ``size_wh`` image
    (``[-0.5, W - 0.5] x [-0.5, H - 0.5]``, edges included).

    >>> inside_image([[0, 0], [-0.5, 9.5], [10, 2], [float("nan"), 1]], (10, 10)).tolist()
    [True, True, False, False]
    """
    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    w, h = size_wh
    finite = np.isfinite(pts).all(axis=1)
    with np.errstate(invalid="ignore"):
        inside = (pts[:, 0] >= -0.5) & (pts[:, 0] <= w - 0.5) & (pts[:, 1] >= -0.5) & (pts[:, 1] <= h - 0.5)
    return finite & inside


def check_inside(points_xy, size_wh: tuple[int, int], *, label: str = "the image", what: str = "point") -> None:
    """Raise :class:`InputError` naming the first of ``points_xy`` ``(N, 2)`` that is not a finite
    position inside a ``size_wh`` image (see :func:`inside_image`)."""
    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    bad = np.flatnonzero(~inside_image(pts, size_wh))
    if len(bad):
        index = int(bad[0])
        x, y = pts[index]
        w, h = size_wh
        if not (np.isfinite(x) and np.isfinite(y)):
            raise InputError(f"{what} {index} ({x}, {y}) is not a finite position")
        raise InputError(
            f"{what} {index} ({x:g}, {y:g}) is outside {label} "
            f"({w}x{h}: x in [-0.5, {w - 0.5}], y in [-0.5, {h - 0.5}])"
        )


def linear_weights(coords: torch.Tensor, size: int, *, nearest: bool = False) -> torch.Tensor:
    """``(N, size)`` float32 interpolation matrix: row n reads a 1-D grid of ``size`` samples at
    the fractional position ``coords[n]`` (linearly between the two neighbours, clamped to the
    grid; or the nearest sample), for :meth:`FeatureMap.upsample`. :meth:`FeatureMap.sample`
    (``grid_sample``) and :mod:`dinofeat.search` (separable sums over grid cells) compute the same
    bilinear rule in their own vectorised forms.

    >>> linear_weights(torch.tensor([0.25, 2.0, 5.0]), 3)
    tensor([[0.7500, 0.2500, 0.0000],
            [0.0000, 0.0000, 1.0000],
            [0.0000, 0.0000, 1.0000]])
    """
    coords = coords.to(torch.float64).clamp(0, size - 1)
    rows = torch.arange(coords.shape[0])
    weights = torch.zeros(coords.shape[0], size, dtype=torch.float64)
    if nearest:
        weights[rows, coords.round().long()] = 1.0
        return weights.float()
    low = coords.floor().long().clamp(max=size - 1)
    frac = coords - low
    weights[rows, low] += 1 - frac
    weights[rows, (low + 1).clamp(max=size - 1)] += frac
    return weights.float()


@dataclass(frozen=True)
class FeatureMap:
    """Dense features of one image with the geometry needed to place them.

    Attributes:
        features: ``(h, w, C)`` float32, one vector per patch (rows = y).
        image_size_wh: size of the original image in pixels.
        processed_size_wh: size the image was resized to for the model.
        patch_size: model patch size in processed pixels (14 for DINOv2).
        stride: step between patches in processed pixels (``patch_size`` unless overlapping).
        cls_token: ``(C,)`` or None.
        register_tokens: ``(R, C)`` or None.
        cell_size: for an upsampled map, the side of its cells in processed pixels (may be
            fractional, e.g. 3.5 for 4x a 14-pixel patch grid); None for the patch grid.
            ``patch_size`` and ``stride`` stay the backbone's either way.

    >>> fm = FeatureMap(torch.zeros(2, 3, 4), image_size_wh=(42, 28), processed_size_wh=(42, 28))
    >>> fm.grid_to_pixel(np.array([[0.0, 0.0], [2.0, 1.0]]))
    array([[ 6.5,  6.5],
           [34.5, 20.5]])
    """

    features: torch.Tensor
    image_size_wh: tuple[int, int]
    processed_size_wh: tuple[int, int]
    patch_size: int = 14
    stride: int = 14
    cls_token: torch.Tensor | None = None
    register_tokens: torch.Tensor | None = None
    cell_size: float | None = None

    def __repr__(self) -> str:
        """``FeatureMap(32x24 patches x 384 float32, image 640x480, processed 448x336, patch 14, stride 14)``
        (grid and sizes as width x height; never the tensors)."""
        (h, w), dtype = self.grid_hw, str(self.features.dtype).replace("torch.", "")
        (iw, ih), (pw, ph) = self.image_size_wh, self.processed_size_wh
        return (
            f"FeatureMap({w}x{h} patches x {self.dim} {dtype}, image {iw}x{ih}, processed {pw}x{ph}, "
            f"patch {self.patch_size}, stride {self.stride})"
        )

    # -- shape ------------------------------------------------------------------------------
    @property
    def grid_hw(self) -> tuple[int, int]:
        return int(self.features.shape[0]), int(self.features.shape[1])

    @property
    def dim(self) -> int:
        return int(self.features.shape[-1])

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Processed pixels per original pixel along x and y."""
        (w, h), (pw, ph) = self.image_size_wh, self.processed_size_wh
        return pw / w, ph / h

    @property
    def step(self) -> float:
        """Processed pixels between neighbouring feature centres: ``stride``, or ``cell_size`` if upsampled."""
        return self.stride if self.cell_size is None else self.cell_size

    @property
    def first_centre(self) -> float:
        """Processed-pixel coordinate of the first feature centre along either axis."""
        return ((self.patch_size if self.cell_size is None else self.cell_size) - 1) / 2

    # -- geometry ---------------------------------------------------------------------------
    def pixel_to_grid(self, points_xy):
        """Original-image pixels ``(N, 2)`` -> grid coordinates ``(u, v)`` (same array type)."""
        centre, step = self.first_centre, self.step
        out = _float_copy(points_xy)
        for axis, scale in enumerate(self.scale_xy):
            out[..., axis] = ((out[..., axis] + 0.5) * scale - 0.5 - centre) / step
        return out

    def grid_to_pixel(self, grid_xy):
        """Grid coordinates ``(u, v)`` ``(N, 2)`` -> original-image pixels (same array type)."""
        centre, step = self.first_centre, self.step
        out = _float_copy(grid_xy)
        for axis, scale in enumerate(self.scale_xy):
            out[..., axis] = (out[..., axis] * step + centre + 0.5) / scale - 0.5
        return out

    def patch_centers(self) -> torch.Tensor:
        """``(h, w, 2)`` pixel coordinates (x, y) of every patch centre in the original image."""
        h, w = self.grid_hw
        v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
        return self.grid_to_pixel(torch.stack((u, v), dim=-1)).float()

    def contains(self, points_xy) -> np.ndarray:
        """Boolean ``(N,)``: which pixel positions lie inside the original image (:func:`inside_image`)."""
        return inside_image(points_xy, self.image_size_wh)

    def check_inside(self, points_xy, *, label: str = "the image", what: str = "point") -> None:
        """Raise :class:`~dinofeat.errors.InputError` for the first point outside the original image."""
        check_inside(points_xy, self.image_size_wh, label=label, what=what)

    # -- sampling ---------------------------------------------------------------------------
    def sample(self, points_xy, *, normalize: bool = False) -> torch.Tensor:
        """Bilinear feature ``(N, C)`` at pixel positions ``(N, 2)``; clamps at the outer patch centres."""
        pts = torch.as_tensor(points_xy, dtype=torch.float64).reshape(-1, 2)
        grid = self._normalised_grid(self.pixel_to_grid(pts)).to(self.features.device)
        fmap = self.features.permute(2, 0, 1)[None].float()
        out = F.grid_sample(fmap, grid[None, None], mode="bilinear", padding_mode="border", align_corners=True)
        out = out[0, :, 0].T
        return F.normalize(out, dim=-1) if normalize else out

    def upsample(self, size_wh: tuple[int, int] | None = None, *, nearest: bool = False) -> torch.Tensor:
        """Features at every pixel: ``(H, W, C)`` float32 for the original size.

        Bilinear between patch centres (constant beyond the outer ones), or the nearest patch with
        ``nearest=True``. ``size_wh`` gives another output size covering the same image (pixel
        centres scaled with the half-pixel rule). Bilinear interpolation of a grid is separable, so
        this is two small matrix products with per-axis weights. Memory is ``H * W * C * 4`` bytes:
        reduce C (e.g. PCA) first for big images.

        >>> fmap = FeatureMap(torch.tensor([[[0.0], [1.0]]]), image_size_wh=(28, 14), processed_size_wh=(28, 14))
        >>> fmap.upsample()[0, [0, 6, 10, 14, 20, 27], 0]  # patch centres at x = 6.5 and 20.5
        tensor([0.0000, 0.0000, 0.2500, 0.5357, 0.9643, 1.0000])
        >>> fmap.upsample(nearest=True)[0, [0, 13, 14, 27], 0]
        tensor([0., 0., 1., 1.])
        """
        w, h = self.image_size_wh
        out_w, out_h = size_wh or (w, h)
        xs = (torch.arange(out_w, dtype=torch.float64) + 0.5) * w / out_w - 0.5
        ys = (torch.arange(out_h, dtype=torch.float64) + 0.5) * h / out_h - 0.5
        cols = self.pixel_to_grid(torch.stack((xs, torch.zeros_like(xs)), dim=-1))[:, 0]
        rows = self.pixel_to_grid(torch.stack((torch.zeros_like(ys), ys), dim=-1))[:, 1]
        grid_h, grid_w = self.grid_hw
        device = self.features.device
        weights_x = linear_weights(cols, grid_w, nearest=nearest).to(device)
        weights_y = linear_weights(rows, grid_h, nearest=nearest).to(device)
        features = self.features.float()
        return torch.einsum("Hwc,Ww->HWc", torch.einsum("Hh,hwc->Hwc", weights_y, features), weights_x)

    def _normalised_grid(self, grid_xy: torch.Tensor) -> torch.Tensor:
        """Grid coordinates -> ``grid_sample``'s [-1, 1] range (``align_corners=True``: -1 is patch 0)."""
        h, w = self.grid_hw
        out = grid_xy.clone()
        out[..., 0] = out[..., 0] * 2 / (w - 1) - 1 if w > 1 else 0.0
        out[..., 1] = out[..., 1] * 2 / (h - 1) - 1 if h > 1 else 0.0
        return out.float()

    # -- conversions ------------------------------------------------------------------------
    def normalized(self) -> FeatureMap:
        """A copy with every feature vector L2-normalised (cosine similarity = dot product)."""
        return replace(self, features=F.normalize(self.features.float(), dim=-1))

    def to(self, device: torch.device | str) -> FeatureMap:
        move = lambda t: None if t is None else t.to(device)
        return replace(
            self,
            features=self.features.to(device),
            cls_token=move(self.cls_token),
            register_tokens=move(self.register_tokens),
        )

    def numpy(self) -> np.ndarray:
        """The features as a float32 ``(h, w, C)`` numpy array."""
        return self.features.detach().float().cpu().numpy()


def _float_copy(points):
    if isinstance(points, torch.Tensor):
        return points.to(torch.float64 if points.dtype != torch.float32 else points.dtype).clone()
    return np.array(points, dtype=np.float64)
