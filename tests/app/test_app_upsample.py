"""The PCA and Segment tabs' pixel-level toggles: :class:`dinofeat.app.AppSession` with an AnyUp upsampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import random_vit, save_png
from dinofeat.app import AppSession, handlers
from dinofeat.errors import InputError
from dinofeat.features.extractor import Extractor
from dinofeat.features.upsample import Upsampler
from dinofeat.models.anyup import AnyUp


@pytest.fixture(scope="module")
def extractor():
    return Extractor(random_vit("dinov2_vits14", depth=2), resolution=56, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def upsampler():
    torch.manual_seed(0)
    return Upsampler(AnyUp(dim=16, heads=2), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def image(photo):
    return np.ascontiguousarray(photo[60:180, 150:310])  # (120, 160, 3)


def test_pixel_level_pca_colours_every_pixel(extractor, upsampler, image, tmp_path):
    session = AppSession(extractor, workdir=tmp_path, upsampler=upsampler)
    patches = session.pca([image], foreground=None, nearest=True)
    pixels = session.pca([image], foreground=None, nearest=True, upsample=True)
    assert pixels.panels[0].shape == patches.panels[0].shape
    # nearest patches give blocks of one colour; pixel-level features vary inside a patch
    width = image.shape[1]
    distinct = [len(np.unique(view.panels[0][:, width:].reshape(-1, 3), axis=0)) for view in (patches, pixels)]
    assert distinct[1] > distinct[0]


def test_the_toggle_without_an_upsampler_says_how_to_get_one(extractor, image, tmp_path):
    with pytest.raises(InputError, match="upsample=anyup"):
        AppSession(extractor, workdir=tmp_path).pca([image], upsample=True)


def test_the_handler_passes_the_toggle(extractor, upsampler, image, tmp_path):
    session = AppSession(extractor, workdir=tmp_path, upsampler=upsampler)
    path = str(save_png(tmp_path / "a.png", image))
    inputs = ([path], "none", 0.5, 3, "side by side", 0.6, True, None)
    panels, _, summary, _ = handlers.pca_run(session, *inputs, True)
    assert len(panels) == 1 and "a.png" in summary


def test_pixel_level_segment_masks_follow_the_session_upsampler(extractor, upsampler, image, tmp_path):
    session = AppSession(extractor, workdir=tmp_path, upsampler=upsampler)
    path = str(save_png(tmp_path / "b.png", image))
    clicks = [[80.0, 60.0, 1]]
    patches = session.segment(path, clicks)
    pixels = session.segment(path, clicks, upsample=True)
    assert len(pixels.mask_paths) == 1 and pixels.data["images"][0]["objects"]["1"]["area_px"] > 0
    assert pixels.data["images"][0] != patches.data["images"][0]  # read through AnyUp, not bilinearly
    _, _, _, data, _ = handlers.segment_run(session, {"path": path, "video": None}, clicks, None, upsample=True)
    assert data["images"][0]["objects"] == pixels.data["images"][0]["objects"]
    with pytest.raises(InputError, match="upsample=anyup"):
        AppSession(extractor, workdir=tmp_path).segment(path, clicks, upsample=True)
