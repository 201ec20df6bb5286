"""Pixel-level features: a patch :class:`~dinofeat.features.featuremap.FeatureMap` upsampled by
AnyUp (:mod:`dinofeat.models.anyup`) into a map with one feature per processed pixel, or ``scale``
features per patch side, guided by the image.

The upsampled map keeps the geometry rules: its cells tile the processed image (``cell_size``
processed pixels each, centres at ``j * c + (c - 1) / 2``), so ``pixel_to_grid``, ``sample`` and the
exact search work on it unchanged.

>>> from dinofeat.models.anyup import AnyUp
>>> upsampler = Upsampler(AnyUp(dim=16, heads=2), device="cpu")
>>> patches = FeatureMap(torch.randn(2, 3, 8), image_size_wh=(84, 56), processed_size_wh=(42, 28))
>>> image = np.zeros((56, 84, 3), np.uint8)
>>> fine = upsampler.upsample(patches, image)           # one feature per processed pixel
>>> fine.grid_hw, fine.cell_size, fine.dim
((28, 42), 1.0, 8)
>>> upsampler.upsample(patches, image, scale=2).grid_hw  # 2x the patch grid, cells of 7 pixels
(4, 6)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from dinofeat.errors import InputError, field
from dinofeat.features.featuremap import FeatureMap
from dinofeat.features.source import FeatureSource, expect_images
from dinofeat.io.images import ImageLike, load_image, resize
from dinofeat.models.anyup import DEFAULT_MEMORY_BUDGET, AnyUp
from dinofeat.models.registry import ModelSpec
from dinofeat.models.weights import load_anyup
from dinofeat.options import ExtractorOptions
from dinofeat.runtime.devices import autocast, resolve_device, resolve_precision

#: AnyUp reads images normalised with the ImageNet mean and standard deviation (whatever the backbone).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def upsampled_grid_hw(fmap: FeatureMap, scale: int | None = None) -> tuple[int, int]:
    """Rows and columns of ``fmap`` upsampled: the processed size (``scale`` None), or ``scale``
    times the patch grid. Refuses maps whose patches overlap (cells must tile the image)."""
    if fmap.cell_size is not None:
        raise InputError("this feature map is already upsampled")
    if fmap.stride != fmap.patch_size:
        raise InputError(
            f"{field('upsample')} needs patches that tile the image: {field('stride', fmap.stride)} "
            f"differs from the patch size {fmap.patch_size}"
        )
    if scale is None:
        width, height = fmap.processed_size_wh
        return height, width
    if scale < 1:
        raise InputError(f"{field('upsample_scale')} must be a positive integer, got {scale}")
    h, w = fmap.grid_hw
    return h * scale, w * scale


class Upsampler:
    """AnyUp on a device, in a precision, turning patch maps into pixel-level maps.

    Args:
        model: an :class:`~dinofeat.models.anyup.AnyUp` with its weights (:meth:`from_weights`
            loads the released ones).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` (or a ``torch.device``).
        precision: ``auto`` | ``fp32`` | ``bf16`` | ``fp16`` (as the extractor's); features come back float32.
        memory_budget: bytes for each chunk of the window attention (the encoders at image size
            come on top: in all about 2.5 KB per processed pixel in float32, measured).
    """

    def __init__(
        self,
        model: AnyUp,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.model = model.eval().to(self.device)
        self.memory_budget = memory_budget
        self._mean = (torch.tensor(IMAGENET_MEAN) * 255).view(1, 3, 1, 1).to(self.device)
        self._std = (torch.tensor(IMAGENET_STD) * 255).view(1, 3, 1, 1).to(self.device)

    @classmethod
    def from_weights(
        cls,
        weights: str | os.PathLike | None = None,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> Upsampler:
        """AnyUp with weights from a file or a released name (default ``anyup_multi_backbone``;
        see :func:`~dinofeat.models.weights.load_anyup`)."""
        return cls(load_anyup(weights), device=device, precision=precision, memory_budget=memory_budget)

    def upsample(self, fmap: FeatureMap, image: ImageLike, *, scale: int | None = None) -> FeatureMap:
        """``fmap`` at pixel level.

        Args:
            fmap: a patch map (``(h, w, C)``, patches tiling the processed image).
            image: the image it was computed from, at its original size (path, PIL image or
                ``(H, W, 3) uint8`` RGB); resized to ``fmap.processed_size_wh`` as the extractor does.
            scale: None for one feature per processed pixel, or S for S x the patch grid.

        Returns:
            A :class:`FeatureMap` ``(H_out, W_out, C)`` float32 with ``cell_size`` processed
            pixels per cell (1, or ``patch_size / S``); CLS and register tokens carried over.
        """
        return self._upsampled(fmap, image, None, scale)

    def upsample_values(
        self, fmap: FeatureMap, image: ImageLike, values: torch.Tensor, *, scale: int | None = None
    ) -> FeatureMap:
        """Per-patch ``values`` brought to pixel level with ``fmap``'s attention: each output cell
        mixes the values of its window's patches with the weights that :meth:`upsample` gives their
        features, so edges follow the image (what ``dinofeat segment --upsample anyup`` does with soft labels).

        Args:
            fmap: the patch map whose features (and image) set the attention.
            image: as for :meth:`upsample`.
            values: ``(h, w, L)`` on ``fmap``'s grid, any L (``values = fmap.features`` is :meth:`upsample`).
            scale: as for :meth:`upsample`.

        Returns:
            A :class:`FeatureMap` ``(H_out, W_out, L)`` float32 of the values, with the geometry
            :meth:`upsample` gives (``cell_size``); per cell a weighted mean of window values, so
            values summing to 1 per patch sum to 1 per cell.
        """
        return self._upsampled(fmap, image, values, scale)

    def _upsampled(
        self, fmap: FeatureMap, image: ImageLike, values: torch.Tensor | None, scale: int | None
    ) -> FeatureMap:
        """``values`` ``(h, w, L)`` (None: the features) mixed with ``fmap``'s attention, upsampled geometry."""
        upsampled_grid_hw(fmap, scale)  # an upsampled map or a bad scale is refused before the image is read
        pixels = load_image(image)
        if (pixels.shape[1], pixels.shape[0]) != fmap.image_size_wh:
            raise InputError(
                f"the image is {pixels.shape[1]}x{pixels.shape[0]} but the feature map is of a "
                f"{fmap.image_size_wh[0]}x{fmap.image_size_wh[1]} image"
            )
        return self.upsample_resized(fmap, resize(pixels, fmap.processed_size_wh), values=values, scale=scale)

    def upsample_resized(
        self,
        fmap: FeatureMap,
        processed: np.ndarray,
        *,
        values: torch.Tensor | None = None,
        scale: int | None = None,
    ) -> FeatureMap:
        """:meth:`upsample` (or, with ``values``, :meth:`upsample_values`) given the image already
        resized to ``fmap.processed_size_wh`` (``(H', W', 3) uint8``, as
        :meth:`~dinofeat.features.extractor.Extractor.extract_resized` takes it)."""
        out_h, out_w = upsampled_grid_hw(fmap, scale)
        if (processed.shape[1], processed.shape[0]) != fmap.processed_size_wh:
            raise InputError(
                f"the resized image is {processed.shape[1]}x{processed.shape[0]}, the feature map's "
                f"processed size {fmap.processed_size_wh[0]}x{fmap.processed_size_wh[1]}"
            )
        if values is not None and (values.ndim != 3 or tuple(values.shape[:2]) != fmap.grid_hw):
            grid = f"{fmap.grid_hw[0]}x{fmap.grid_hw[1]}"
            raise InputError(f"values have shape {tuple(values.shape)}, the grid is {grid}")
        mixed = self._run(processed, fmap.features, (out_h, out_w), values)
        return replace(fmap, features=mixed, cell_size=fmap.processed_size_wh[0] / out_w)

    @torch.inference_mode()
    def _run(
        self,
        processed: np.ndarray,
        features: torch.Tensor,
        out_hw: tuple[int, int],
        values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(H', W', 3) uint8`` image, ``(h, w, C)`` features (and ``(h, w, L)`` values to mix
        instead of them) -> ``(H_out, W_out, C or L)`` float32 on the CPU."""
        image = torch.tensor(processed).to(self.device).permute(2, 0, 1)[None].float()
        image = (image - self._mean) / self._std
        feats = features.to(self.device).float().permute(2, 0, 1)[None]
        mixed = None if values is None else values.to(self.device).float().permute(2, 0, 1)[None]
        with autocast(self.device, self.dtype):
            out = self.model.upsample(image, feats, out_hw, values=mixed, memory_budget=self.memory_budget)
        return out[0].float().cpu().clone()  # an ordinary tensor (outside inference mode)

    def wrap(self, source: FeatureSource, *, scale: int | None = None) -> UpsampledSource:
        """A :class:`~dinofeat.features.source.FeatureSource` giving ``source``'s maps upsampled."""
        return UpsampledSource(source, self, scale)


class UpsampledSource:
    """A :class:`~dinofeat.features.source.FeatureSource` whose maps are another source's, upsampled
    (what the jobs take: ``ExtractJob(...).run(upsampler.wrap(extractor))``)."""

    def __init__(self, source: FeatureSource, upsampler: Upsampler, scale: int | None = None) -> None:
        self.source = source
        self.upsampler = upsampler
        self.scale = scale

    @property
    def options(self) -> ExtractorOptions:
        return self.source.options

    @property
    def spec(self) -> ModelSpec:
        return self.source.spec

    @property
    def stride(self) -> int:
        return self.source.stride

    @property
    def batch_size(self) -> int:
        return self.source.batch_size

    def expect_images(self, count: float) -> None:
        """Passed on to the wrapped source (:func:`~dinofeat.features.source.expect_images`)."""
        expect_images(self.source, count)

    def extract_arrays(self, images: Sequence[np.ndarray]) -> list[FeatureMap]:
        """``(H, W, 3) uint8`` RGB images -> their upsampled maps, in order."""
        maps = self.source.extract_arrays(images)
        return [self.upsampler.upsample(fmap, image, scale=self.scale) for fmap, image in zip(maps, images)]
