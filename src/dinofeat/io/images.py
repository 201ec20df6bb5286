"""Reading images and preparing them for the model.

Images inside dinofeat are ``(H, W, 3) uint8 RGB`` numpy arrays.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dinofeat.errors import InputError, field
from dinofeat.io.inputs import check_input_file
from dinofeat.options import DEFAULT_MAX_SIZE, DEFAULT_RESOLUTION

ImageLike = str | os.PathLike | np.ndarray | Image.Image


def load_image(source: ImageLike) -> np.ndarray:
    """Read an image as ``(H, W, 3) uint8 RGB`` with its EXIF orientation applied.

    Grayscale, palette, RGBA (alpha dropped) and 16-bit images become 8-bit RGB. Arrays are
    accepted as ``(H, W)`` or ``(H, W, 3|4)``, uint8 or float in [0, 1]. Problems raise
    :class:`InputError` naming the file.

    >>> load_image(np.zeros((5, 7), np.uint8)).shape
    (5, 7, 3)
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, "image")
    path = check_input_file(source, "image")
    try:
        with Image.open(path) as img:
            return _pil_to_rgb(img, str(path))
    except UnidentifiedImageError:
        raise InputError(f"not an image (or a format Pillow cannot read): {path}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot read image {path}: {err}") from None


def _pil_to_rgb(img: Image.Image, label: str) -> np.ndarray:
    img = ImageOps.exif_transpose(img)
    img.load()
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or values.max() > 255 else 255.0
        gray = np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    rgb = np.asarray(img.convert("RGB"))
    if rgb.ndim != 3 or min(rgb.shape[:2]) == 0:
        raise InputError(f"image has no pixels: {label}")
    return np.ascontiguousarray(rgb)


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or min(array.shape[:2]) == 0:
        raise InputError(f"expected an (H, W, 3) RGB image array, got shape {array.shape}")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating):
            array = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            raise InputError(f"image arrays must be uint8 or float in [0, 1], got {array.dtype}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def processed_size(
    size_wh: tuple[int, int],
    resolution: int = DEFAULT_RESOLUTION,
    *,
    patch_size: int = 14,
    stride: int | None = None,
    max_size: int | None = DEFAULT_MAX_SIZE,
) -> tuple[int, int]:
    """The (width, height) an image of ``size_wh`` is resized to before the model.

    The shorter side becomes ``resolution`` pixels and the aspect ratio is kept (no crop); each side
    is then rounded to the nearest size the patch grid fits exactly (a multiple of the patch size
    for stride 14, ``patch + k * stride`` in general). If the longer side would exceed
    ``max_size`` the whole image is scaled down to fit.

    >>> processed_size((640, 480), 448)
    (602, 448)
    >>> processed_size((100, 1000), 224, max_size=896)
    (84, 896)
    """
    stride = stride or patch_size
    width, height = size_wh
    if min(width, height) < patch_size:
        raise InputError(f"image is {width}x{height} pixels, smaller than one {patch_size}-pixel patch")
    if resolution < patch_size:
        raise InputError(f"resolution must be at least the patch size ({patch_size}), got {resolution}")
    scale = resolution / min(width, height)
    if max_size is not None and max(width, height) * scale > max_size:
        scale = max_size / max(width, height)

    def fit(side: float) -> int:
        steps = max(0, round((side - patch_size) / stride))
        return patch_size + steps * stride

    return fit(width * scale), fit(height * scale)


def size_cap_note(
    size_wh: tuple[int, int],
    resolution: int = DEFAULT_RESOLUTION,
    *,
    patch_size: int = 14,
    stride: int | None = None,
    max_size: int | None = DEFAULT_MAX_SIZE,
) -> str | None:
    """What :func:`processed_size` does to ``resolution`` when ``max_size`` caps the longer side,
    in one line (what was asked, what is used, how to change it); None when nothing is capped.
    The options are marked with :func:`~dinofeat.errors.field` (:func:`~dinofeat.errors.render`
    names them by field, the CLI by flag).

    >>> from dinofeat.errors import render
    >>> asked, used = render(size_cap_note((3024, 4032), 4000)).split(": ")
    >>> asked
    'resolution=4000 asked for, but the longer side is capped at max_size=1792'
    >>> used
    'using 1344x1792 for this 3024x4032 image (raise max_size to go higher)'
    >>> size_cap_note((640, 480), 448) is None
    True
    """
    width, height = size_wh
    if max_size is None or max(width, height) * resolution / min(width, height) <= max_size:
        return None
    used_w, used_h = processed_size(size_wh, resolution, patch_size=patch_size, stride=stride, max_size=max_size)
    note = (
        f"{field('resolution', resolution)} asked for, but the longer side is capped at "
        f"{field('max_size', max_size)}: using {used_w}x{used_h} for this {width}x{height} image "
        f"(raise {field('max_size')} to go higher)"
    )
    return note + _coarse_axis_note(size_wh, (used_w, used_h), patch_size, stride or patch_size)


#: Fewer patches than this across the shorter side and positions along it are coarse.
FEW_PATCHES = 4


def _coarse_axis_note(size_wh: tuple[int, int], used_wh: tuple[int, int], patch_size: int, stride: int) -> str:
    """``"; only 1 row of patches: y will be coarse (...)"`` when the capped shorter side holds
    fewer than :data:`FEW_PATCHES` patches, else ``""``."""
    short = 1 if size_wh[1] <= size_wh[0] else 0  # 1: height is the shorter side (rows), 0: width
    cells = (used_wh[short] - patch_size) // stride + 1
    if cells >= FEW_PATCHES:
        return ""
    what, axis = ("row", "y") if short else ("column", "x")
    span = size_wh[short] * patch_size / used_wh[short]
    return (
        f"; only {cells} {what}{'s' if cells > 1 else ''} of patches: {axis} will be coarse "
        f"(a patch spans {span:.0f} of the image's {size_wh[short]} pixels)"
    )


def enlargement_note(
    size_wh: tuple[int, int],
    resolution: int = DEFAULT_RESOLUTION,
    *,
    patch_size: int = 14,
    stride: int | None = None,
    max_size: int | None = DEFAULT_MAX_SIZE,
) -> str | None:
    """One line when :func:`processed_size` enlarges a small image more than 1.5 times per side (a
    176x144 video becomes 546x448 at the default resolution: ten times the pixels, and the time),
    saying how to keep its own size; None otherwise. Options marked with :func:`~dinofeat.errors.field`.

    >>> from dinofeat.errors import render
    >>> print(render(enlargement_note((176, 144), 448)))
    enlarging 176x144 to 546x448 for the model (resolution=448; resolution=144 keeps the input's size, 10x fewer pixels)
    >>> enlargement_note((640, 480), 448) is None
    True
    """
    used_w, used_h = processed_size(size_wh, resolution, patch_size=patch_size, stride=stride, max_size=max_size)
    width, height = size_wh
    if used_w * used_h <= 2.25 * width * height:
        return None
    own = min(width, height)
    pixels = used_w * used_h / (width * height)
    return (
        f"enlarging {width}x{height} to {used_w}x{used_h} for the model "
        f"({field('resolution', resolution)}; {field('resolution', own)} keeps the input's size, "
        f"{pixels:.0f}x fewer pixels)"
    )


def resize(image: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Resize ``(H, W, 3) uint8`` to ``size_wh`` with antialiased bicubic (Pillow); no-op if equal."""
    width, height = size_wh
    if (image.shape[1], image.shape[0]) == (width, height):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))
