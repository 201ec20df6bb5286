"""Pure drawing functions: images in, new image out (``(H, W, 3) uint8 RGB``; inputs never modified).

OpenCV does the rasterising (anti-aliased lines and circles); colours here are RGB.
"""

from __future__ import annotations

import colorsys

import numpy as np


def palette(n: int) -> np.ndarray:
    """``n`` well-separated saturated colours, ``(n, 3) uint8`` RGB, the same on every call.

    >>> palette(3).shape
    (3, 3)
    """
    golden = 0.618033988749895
    hues = (np.arange(n) * golden) % 1.0
    return np.array([[round(c * 255) for c in colorsys.hsv_to_rgb(h, 0.85, 1.0)] for h in hues],
                    dtype=np.uint8).reshape(n, 3)


# -- PCA figures ---------------------------------------------------------------------------------
# These lay images out without looking at their channels: (H, W, 3) RGB or (H, W, 4) RGBA uint8
# (RGBA keeps a transparent PCA background in PNG files). Mixed inputs come out RGBA.


def _same_channels(images) -> list[np.ndarray]:
    channels = max(img.shape[2] for img in images)
    return [img if img.shape[2] == channels else np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
            for img in images]


def draw_pca_side_by_side(image: np.ndarray, colors: np.ndarray, *, gap: int = 0,
                          fill: int = 255) -> np.ndarray:
    """The image and its PCA colours (same height) next to each other: ``(H, 2W + gap, 3|4) uint8``.

    >>> draw_pca_side_by_side(np.zeros((4, 5, 3), np.uint8), np.ones((4, 5, 3), np.uint8), gap=2).shape
    (4, 12, 3)
    """
    if image.shape[:2] != colors.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and colours {colors.shape[:2]} differ in size")
    image, colors = _same_channels([image, colors])
    spacer = np.full((image.shape[0], gap, image.shape[2]), fill, np.uint8)
    return np.concatenate([image, spacer, colors], axis=1)


def draw_pca_overlay(image: np.ndarray, colors: np.ndarray, alpha: float = 0.5,
                     mask: np.ndarray | None = None) -> np.ndarray:
    """Blend PCA colours over the image: ``(1 - alpha) * image + alpha * colors`` where ``mask``.

    ``image`` and ``colors`` are ``(H, W, 3) uint8`` RGB; ``mask`` ``(H, W)`` bool marks the
    foreground (elsewhere the image is left as it is); ``alpha`` in [0, 1].

    >>> draw_pca_overlay(np.zeros((1, 2, 3), np.uint8), np.full((1, 2, 3), 200, np.uint8), 0.5,
    ...                  mask=np.array([[True, False]]))[..., 0]
    array([[100,   0]], dtype=uint8)
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    blend = image.astype(np.float32) * (1 - alpha) + colors[..., :3].astype(np.float32) * alpha
    out = np.clip(blend + 0.5, 0, 255).astype(np.uint8)
    if mask is not None:
        out = np.where(mask[..., None], out, image)
    return out


def draw_pca_grid(panels, *, columns: int | None = None, height: int | None = None, gap: int = 8,
                  fill: int = 255) -> np.ndarray:
    """Several panels (e.g. one side-by-side per image) in a grid figure, row by row.

    Every panel is resized (area interpolation) to a common ``height`` (default: the smallest
    panel height) keeping its aspect ratio; ``columns`` defaults to ``min(len(panels), 4)``;
    ``gap`` pixels of ``fill`` separate the panels.

    >>> draw_pca_grid([np.zeros((10, 20, 3), np.uint8)] * 3, columns=2, gap=2).shape
    (22, 42, 3)
    """
    import cv2

    panels = _same_channels(list(panels))
    if not panels:
        raise ValueError("no panels to draw")
    height = height or min(p.shape[0] for p in panels)
    columns = max(1, columns or min(len(panels), 4))
    resized = []
    for panel in panels:
        width = max(1, round(panel.shape[1] * height / panel.shape[0]))
        resized.append(panel if panel.shape[:2] == (height, width)
                       else cv2.resize(panel, (width, height), interpolation=cv2.INTER_AREA))
    rows = [resized[i:i + columns] for i in range(0, len(resized), columns)]
    row_widths = [sum(p.shape[1] for p in row) + gap * (len(row) - 1) for row in rows]
    channels = panels[0].shape[2]
    out = np.full((len(rows) * height + gap * (len(rows) - 1), max(row_widths), channels), fill, np.uint8)
    for r, row in enumerate(rows):
        x, y = 0, r * (height + gap)
        for panel in row:
            out[y:y + height, x:x + panel.shape[1]] = panel
            x += panel.shape[1] + gap
    return out
