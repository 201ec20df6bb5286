"""Building a backbone from its :class:`~dinofeat.models.registry.ModelSpec`, untrained."""

from __future__ import annotations

import torch

from dinofeat.models.dinov2 import DinoVisionTransformer
from dinofeat.models.dinov3 import DinoV3VisionTransformer
from dinofeat.models.registry import ModelSpec
from dinofeat.models.vit import DenseViT


def build_model(spec: ModelSpec, depth: int | None = None) -> DenseViT:
    """The model class of ``spec``'s family, untrained: a :class:`DinoVisionTransformer` (DINOv2) or
    a :class:`~dinofeat.models.dinov3.DinoV3VisionTransformer` (DINOv3). Both have the same interface.

    >>> from dinofeat.models.registry import get_spec
    >>> type(build_model(get_spec("dinov3_vits16"), depth=1)).__name__
    'DinoV3VisionTransformer'
    """
    if spec.family == "dinov3":
        return DinoV3VisionTransformer(spec, depth=depth)
    return DinoVisionTransformer(spec, depth=depth)


def count_parameters(spec: ModelSpec) -> int:
    """Number of parameters of the full model, counted without allocating it."""
    with torch.device("meta"):
        model = build_model(spec)
    return sum(p.numel() for p in model.parameters())
