"""Shared fixtures: random-weight models in the real shapes, checkpoints in real formats, photos."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from dinofeat.registry import get_spec
from dinofeat.vit import build_model


@functools.cache
def random_vit(name: str = "dinov2_vits14", depth: int | None = 2, seed: int = 0, layerscale: float = 1.0):
    """A model of the registry shape ``name`` (``depth`` blocks; DINOv2 or DINOv3) with deterministic random weights."""
    return build_model(get_spec(name), depth=depth).init_random(seed, layerscale).eval()


@pytest.fixture(scope="session")
def vits14_checkpoint(tmp_path_factory) -> Path:
    """A full-depth ViT-S/14 with random weights saved as Meta's official ``.pth`` would be."""
    path = tmp_path_factory.mktemp("weights") / "dinov2_vits14_pretrain.pth"
    torch.save(random_vit("dinov2_vits14", depth=None, seed=1).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real photo, (300, 451, 3) uint8 RGB (scikit-image's 'chelsea', public domain)."""
    from skimage import data

    return data.chelsea()


def save_png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(image).save(path)
    return path
