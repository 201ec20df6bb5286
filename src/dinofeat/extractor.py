"""Turning images into :class:`~dinofeat.features.FeatureMap` objects, batched, on any device."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from dinofeat.devices import autocast, resolve_device, resolve_precision
from dinofeat.dinov3 import DinoV3VisionTransformer
from dinofeat.features import FeatureMap
from dinofeat.images import DEFAULT_MAX_SIZE, DEFAULT_RESOLUTION, ImageLike, load_image, processed_size, resize
from dinofeat.registry import DEFAULT_MODEL, ModelSpec
from dinofeat.vit import DinoVisionTransformer
from dinofeat.weights import load_model

_MODEL_CLASSES = (DinoVisionTransformer, DinoV3VisionTransformer)


class Extractor:
    """A loaded model plus the settings that turn images into feature maps.

    Args:
        model: a registry name (weights are found as :func:`~dinofeat.weights.load_model` says)
            or an already built :class:`~dinofeat.vit.DinoVisionTransformer` or
            :class:`~dinofeat.dinov3.DinoV3VisionTransformer`.
        weights: checkpoint file or Hugging Face folder for a named model.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``mps`` (or a ``torch.device``).
        precision: ``auto`` | ``fp32`` | ``bf16`` | ``fp16``; features always come back float32.
        resolution: shorter image side in pixels before rounding to the patch grid.
        max_size: cap on the longer side (protects memory on panoramas).
        stride: patch stride in processed pixels; below the patch size (14 for DINOv2, 16 for DINOv3)
            gives overlapping patches (denser grid).
        layers: block index or indices (negative from the end); several are concatenated along C.
        facet: ``token`` (default, normalised block output) or ``key`` / ``query`` / ``value``.
        batch_size: images per forward pass.

    >>> from dinofeat.registry import get_spec
    >>> vit = DinoVisionTransformer(get_spec("dinov2_vits14"), depth=1).init_random()
    >>> fmap = Extractor(vit, resolution=28, device="cpu").extract(np.zeros((30, 60, 3), np.uint8))
    >>> fmap.grid_hw, fmap.processed_size_wh, fmap.dim
    ((2, 4), (56, 28), 384)
    """

    def __init__(
        self,
        model: str | DinoVisionTransformer | DinoV3VisionTransformer = DEFAULT_MODEL,
        *,
        weights: str | os.PathLike | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        resolution: int = DEFAULT_RESOLUTION,
        max_size: int | None = DEFAULT_MAX_SIZE,
        stride: int | None = None,
        layers: int | Sequence[int] = -1,
        facet: str = "token",
        batch_size: int = 8,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        vit = model if isinstance(model, _MODEL_CLASSES) else load_model(model, weights)
        self.model = vit.eval().to(self.device)
        self.resolution = resolution
        self.max_size = max_size
        self.stride = stride or vit.patch_size
        self.layers = [layers] if isinstance(layers, int) else list(layers)
        self.facet = facet
        self.batch_size = max(1, int(batch_size))
        vit.resolve_layers(self.layers)  # fail early on a bad layer
        self._check_options()
        mean, std = torch.tensor(vit.spec.mean), torch.tensor(vit.spec.std)
        self._mean = (mean * 255).view(1, 3, 1, 1).to(self.device)
        self._std = (std * 255).view(1, 3, 1, 1).to(self.device)

    def _check_options(self) -> None:
        from dinofeat.errors import InputError
        from dinofeat.vit import FACETS

        if self.facet not in FACETS:
            raise InputError(f"unknown facet {self.facet!r}; choose one of {', '.join(FACETS)}")
        if not 1 <= self.stride <= self.model.patch_size:
            raise InputError(f"stride must be between 1 and {self.model.patch_size}, got {self.stride}")
        processed_size((self.model.patch_size,) * 2, self.resolution, patch_size=self.model.patch_size)

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    def processed_size(self, size_wh: tuple[int, int]) -> tuple[int, int]:
        """The (width, height) an image of ``size_wh`` is resized to (see :func:`~dinofeat.images.processed_size`)."""
        return processed_size(size_wh, self.resolution, patch_size=self.model.patch_size, stride=self.stride,
                              max_size=self.max_size)

    def extract(self, image: ImageLike) -> FeatureMap:
        """Feature map of one image (path, PIL image or ``(H, W, 3) uint8`` array)."""
        return self.extract_arrays([load_image(image)])[0]

    def extract_many(self, images: Iterable[ImageLike]) -> list[FeatureMap]:
        """Feature maps of many images, in input order, batched by processed size."""
        return self.extract_arrays([load_image(img) for img in images])

    def extract_arrays(self, images: Sequence[np.ndarray]) -> list[FeatureMap]:
        """Feature maps of ``(H, W, 3) uint8 RGB`` arrays, batched by processed size, in input order."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(self.processed_size((image.shape[1], image.shape[0])), []).append(index)
        results: list[FeatureMap | None] = [None] * len(images)
        for size_wh, indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                maps = self._forward([resize(images[i], size_wh) for i in chunk])
                for i, fmap in zip(chunk, maps):
                    h, w = images[i].shape[:2]
                    fmap.image_size_wh = (w, h)
                    results[i] = fmap
        return results  # type: ignore[return-value]

    def _forward(self, batch: list[np.ndarray]) -> list[FeatureMap]:
        tokens, cls, regs = self._run_model(batch)
        size_wh = (batch[0].shape[1], batch[0].shape[0])
        # clone outside inference mode: callers get ordinary tensors they may modify
        return [
            FeatureMap(
                features=tokens[b].clone(),
                image_size_wh=size_wh,
                processed_size_wh=size_wh,
                patch_size=self.model.patch_size,
                stride=self.stride,
                cls_token=cls[b].clone(),
                register_tokens=regs[b].clone(),
            )
            for b in range(len(batch))
        ]

    @torch.inference_mode()
    def _run_model(self, batch: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Same-size ``(H, W, 3) uint8`` images -> patch tokens (B, h, w, C), CLS (B, C), registers (B, R, C)."""
        pixels = torch.from_numpy(np.stack(batch)).to(self.device).permute(0, 3, 1, 2).float()
        pixels = (pixels - self._mean) / self._std
        with autocast(self.device, self.dtype):
            out = self.model.forward_features(pixels, layers=self.layers, facet=self.facet, stride=self.stride)
        gh, gw = out.grid_hw
        tokens = torch.cat(out.patch_tokens, dim=-1).float().reshape(len(batch), gh, gw, -1)
        return tokens, out.cls_token.float(), out.register_tokens.float()
