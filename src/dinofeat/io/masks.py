"""Label masks as files: read a mask PNG (indexed or grayscale labels), write indexed PNGs in the
DAVIS palette (what the DAVIS evaluation and most annotation tools read).

A mask is ``(H, W)`` integer labels: 0 the background, 1 to 254 objects, 255 void
(:mod:`dinofeat.segmentation`).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from dinofeat.errors import InputError
from dinofeat.io.inputs import check_input_file

__all__ = ["DAVIS_PALETTE", "davis_palette", "read_mask", "save_mask"]


def davis_palette() -> np.ndarray:
    """``(256, 3) uint8`` RGB: the DAVIS / PASCAL VOC palette (label 1 dark red, 2 green, 3 olive, ...;
    255 cream), the bits of the label spread over the high bits of the three channels.

    >>> davis_palette()[[0, 1, 2, 255]].tolist()
    [[0, 0, 0], [128, 0, 0], [0, 128, 0], [224, 224, 192]]
    """
    colors = np.zeros((256, 3), dtype=np.uint8)
    for label in range(256):
        value, bits = label, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                bits[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        colors[label] = bits
    return colors


#: The DAVIS palette (:func:`davis_palette`), label -> RGB.
DAVIS_PALETTE = davis_palette()


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """The labels of a mask image: ``(H, W)`` int64. An indexed (palette) PNG gives its indices, a
    grayscale one (8 or 16 bit) its values, an RGB(A) image whose channels are all equal its gray
    values; a colour image is refused (its colours are not labels). Labels are not checked here
    (:func:`dinofeat.segmentation.check_mask` does)."""
    file = check_input_file(path, "mask")
    try:
        with Image.open(file) as img:
            img.load()
            mode = img.mode
            array = np.asarray(img)
    except UnidentifiedImageError:
        raise InputError(f"not an image (or a format Pillow cannot read): {file}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot read mask {file}: {err}") from None
    if array.ndim == 3:
        if not (array[..., :3] == array[..., :1]).all():
            raise InputError(
                f"mask {file} is a colour ({mode}) image: give an indexed (palette) or grayscale PNG of labels"
            )
        array = array[..., 0]
    if array.ndim != 2 or min(array.shape) == 0:
        raise InputError(f"mask {file} has no pixels")
    return array.astype(np.int64)


def save_mask(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write ``(H, W) uint8`` labels as an indexed PNG in the DAVIS palette (:data:`DAVIS_PALETTE`)."""
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))  # "L"
    image.putpalette(DAVIS_PALETTE.reshape(-1).tolist())  # an "L" image becomes "P", indices kept
    image.save(path, format="PNG")
