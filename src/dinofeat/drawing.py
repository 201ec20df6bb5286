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
