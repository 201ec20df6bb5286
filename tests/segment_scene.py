"""A generated scene for the segmentation tests: a textured object moving over a textured background."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from conftest import save_png
from dinofeat.io.masks import save_mask
from dinofeat.io.video import VideoWriter

W, H, SIDE = 224, 168, 56  # at resolution 168 the model sees the frames 1:1 (16 x 12 patches); the object 4 x 4
FRAMES = 8
STEP_XY = (12, 4)  # the object's motion per frame, pixels


def _texture(rng: np.random.Generator, h: int, w: int, low, high, cell: int) -> np.ndarray:
    """A smooth random colour texture: uniform colours in [low, high] on a ``cell``-pixel lattice, cubic in between."""
    small = rng.uniform(low, high, (h // cell + 2, w // cell + 2, 3))
    big = cv2.resize(small, (w + 2 * cell, h + 2 * cell), interpolation=cv2.INTER_CUBIC)
    return np.clip(big[:h, :w], 0, 255)


def moving_object(frames: int = FRAMES) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames ``(H, W, 3) uint8`` of a warm textured square moving over a cool textured background,
    and the true masks ``(H, W) uint8`` (1 on the object)."""
    rng = np.random.default_rng(0)
    background = _texture(rng, H, W, [20, 90, 120], [80, 200, 255], 10)
    thing = _texture(rng, SIDE, SIDE, [180, 60, 0], [255, 200, 60], 6)
    images, masks = [], []
    for k in range(frames):
        x0, y0 = 20 + STEP_XY[0] * k, 20 + STEP_XY[1] * k
        image = background.copy()
        image[y0 : y0 + SIDE, x0 : x0 + SIDE] = thing
        mask = np.zeros((H, W), np.uint8)
        mask[y0 : y0 + SIDE, x0 : x0 + SIDE] = 1
        images.append(image.astype(np.uint8))
        masks.append(mask)
    return images, masks


def write_scene(folder: Path, views: Sequence[int] = ()) -> tuple[Path, list[np.ndarray]]:
    """The scene as files in ``folder``: ``clip.mp4`` (nearly lossless H.264), ``first.png`` (the first
    frame's mask) and ``view<k>.png`` (frame k as a photo) for each k in ``views``; returns
    ``(folder, masks)``."""
    images, masks = moving_object()
    with VideoWriter(folder / "clip.mp4", fps=10, size_wh=(W, H), crf=2) as sink:
        for image in images:
            sink.write(image)
    save_mask(folder / "first.png", masks[0])
    for k in views:
        save_png(folder / f"view{k}.png", images[k])
    return folder, masks
