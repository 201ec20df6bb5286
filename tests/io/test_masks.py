"""Mask files: indexed PNGs in the DAVIS palette written and read back, grayscale (8 and 16 bit)
and gray RGB masks read as labels, colour images refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dinofeat.errors import InputError
from dinofeat.io.masks import DAVIS_PALETTE, read_mask, save_mask


def test_indexed_png_round_trip_in_the_davis_palette(tmp_path):
    labels = np.array([[0, 1, 2], [3, 254, 255]], np.uint8)
    save_mask(tmp_path / "m.png", labels)
    with Image.open(tmp_path / "m.png") as image:
        assert image.mode == "P"
        palette = np.array(image.getpalette()).reshape(-1, 3)
    assert np.array_equal(palette[:4], [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]])
    assert np.array_equal(palette, DAVIS_PALETTE[: len(palette)])
    assert np.array_equal(read_mask(tmp_path / "m.png"), labels)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_grayscale_masks_give_their_values(tmp_path, dtype):
    labels = np.array([[0, 1], [2, 300 if dtype == np.uint16 else 255]], dtype)
    Image.fromarray(labels).save(tmp_path / "g.png")
    assert read_mask(tmp_path / "g.png").tolist() == labels.tolist()


def test_gray_rgb_is_read_and_colour_is_refused(tmp_path):
    gray = np.repeat(np.array([[0, 1], [2, 0]], np.uint8)[..., None], 3, axis=2)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    assert read_mask(tmp_path / "gray.png").tolist() == [[0, 1], [2, 0]]
    colour = gray.copy()
    colour[0, 0] = (128, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(InputError, match="colour"):
        read_mask(tmp_path / "colour.png")
    (tmp_path / "text.png").write_text("not a png")
    with pytest.raises(InputError, match="not an image"):
        read_mask(tmp_path / "text.png")
