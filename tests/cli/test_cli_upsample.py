"""``--upsample anyup`` on ``dinofeat extract`` and ``dinofeat pca``: pixel-level features and pictures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import save_png
from dinofeat.cli import main
from dinofeat.models.anyup import AnyUp

H, W = 70, 98  # --resolution 70: a 5 x 7 patch grid of a 70 x 98 processed image


@pytest.fixture(scope="module")
def anyup_checkpoint(tmp_path_factory) -> Path:
    """AnyUp with random weights, saved as the released checkpoints are (a plain state dict)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("anyup") / "anyup_multi_backbone.pth"
    torch.save(AnyUp().state_dict(), path)
    return path


@pytest.fixture
def model_args(vits14_checkpoint) -> list[str]:
    return ["--weights", str(vits14_checkpoint), "--resolution", "70", "--device", "cpu", "--precision", "fp32"]


@pytest.fixture
def image(tmp_path) -> str:
    rng = np.random.default_rng(0)
    picture = np.full((H, W, 3), 170, np.uint8)
    picture[14:56, 21:77] = rng.integers(0, 256, (42, 56, 3), dtype=np.uint8)
    return str(save_png(tmp_path / "a.png", picture))


@pytest.mark.parametrize(("scale", "grid_hw", "cell"), [(None, (H, W), 1.0), (2, (10, 14), 7.0)])
def test_extract_writes_pixel_level_features(
    tmp_path, image, model_args, anyup_checkpoint, capsys, scale, grid_hw, cell
):
    out = tmp_path / "f.npz"
    upsample = ["--upsample", "anyup", "--upsample-weights", str(anyup_checkpoint)]
    if scale is not None:
        upsample += ["--upsample-scale", str(scale)]
    assert main(["extract", image, "-o", str(out), *model_args, *upsample]) == 0
    with np.load(out) as f:
        assert f["features_0"].shape == (*grid_hw, 384) and f["features_0"].dtype == np.float32
        assert json.loads(str(f["cell_size"])) == cell and tuple(f["processed_size_0"]) == (W, H)
    assert "cells (upsampled)" in capsys.readouterr().err


def test_pca_pictures_at_pixel_level(tmp_path, image, model_args, anyup_checkpoint):
    fig, feats = tmp_path / "fig.png", tmp_path / "feats.npz"
    argv = ["pca", image, "-o", str(fig), "--save-features", str(feats), "--components", "3", *model_args]
    assert main([*argv, "--upsample", "anyup", "--upsample-weights", str(anyup_checkpoint)]) == 0
    with Image.open(fig) as picture:
        assert picture.size == (2 * W, H)  # the image beside its colours
    with np.load(feats) as f:
        assert f["features_0"].shape == (H, W, 3)


@pytest.mark.parametrize("case", ["scale_alone", "weights_alone", "stride", "missing_weights", "wrong_file"])
def test_bad_upsample_options_are_one_line_and_write_nothing(tmp_path, image, model_args, capsys, case):
    out = str(tmp_path / "f.npz")
    (tmp_path / "notes.pth").write_text("not weights\n")
    extra = {
        "scale_alone": ["-o", out, "--upsample-scale", "2"],
        "weights_alone": ["-o", out, "--upsample-weights", str(tmp_path / "notes.pth")],
        "stride": ["-o", out, "--upsample", "anyup", "--stride", "7"],
        "missing_weights": ["-o", out, "--upsample", "anyup", "--upsample-weights", str(tmp_path / "none.pth")],
        "wrong_file": ["-o", out, "--upsample", "anyup", "--upsample-weights", str(tmp_path / "notes.pth")],
    }[case]
    expected = {
        "scale_alone": "--upsample-scale needs --upsample anyup",
        "weights_alone": "--upsample-weights needs --upsample anyup",
        "stride": "--stride 7 is below the patch size 14",
        "missing_weights": "weights file not found",
        "wrong_file": "expected an AnyUp state dict",
    }[case]
    before = set(tmp_path.iterdir())
    capsys.readouterr()
    assert main(["extract", image, *extra, *model_args]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert set(tmp_path.iterdir()) == before


def test_pca_upsamples_stored_patch_features_with_their_images(tmp_path, image, model_args, anyup_checkpoint):
    folder, feats = tmp_path / "feats", tmp_path / "pca.npz"
    assert main(["extract", image, "--out-dir", str(folder), "-q", *model_args]) == 0
    upsample = ["--upsample", "anyup", "--upsample-weights", str(anyup_checkpoint)]
    argv = ["pca", image, "--features", str(folder), "-o", str(tmp_path / "fig.png"), "--save-features", str(feats)]
    assert main([*argv, *upsample]) == 0
    with np.load(feats) as f:
        assert f["features_0"].shape == (H, W, 3)


@pytest.fixture
def segment_inputs(tmp_path, image) -> list[str]:
    """Two images (the second the first shifted by a patch) and the first one's mask: the textured box."""
    picture = np.asarray(Image.open(image))
    second = str(save_png(tmp_path / "b.png", np.roll(picture, 14, axis=1)))
    mask = np.zeros((H, W), np.uint8)
    mask[14:56, 21:77] = 1
    Image.fromarray(mask).save(tmp_path / "first_mask.png")
    return [image, second, "--mask", str(tmp_path / "first_mask.png")]


@pytest.mark.parametrize("scale", [None, 2])
def test_segment_writes_masks_from_pixel_level_labels(
    tmp_path, segment_inputs, model_args, anyup_checkpoint, capsys, scale
):
    masks = tmp_path / "masks"
    upsample = ["--upsample", "anyup", "--upsample-weights", str(anyup_checkpoint)]
    if scale is not None:
        upsample += ["--upsample-scale", str(scale)]
    argv = ["segment", *segment_inputs, "--masks-dir", str(masks), "--json", str(tmp_path / "s.json"), *model_args]
    assert main([*argv, *upsample]) == 0
    assert sorted(p.name for p in masks.iterdir()) == ["a.png", "b.png"]
    second = np.asarray(Image.open(masks / "b.png"))
    assert second.shape == (H, W) and set(np.unique(second)) <= {0, 1}
    document = json.loads((tmp_path / "s.json").read_text())
    assert [image["objects"]["1"]["area_px"] > 0 for image in document["images"]] == [True, True]
    assert document["upsample"] == {"upsample": "anyup", "upsample_scale": scale}


@pytest.mark.parametrize("case", ["scale_alone", "stride", "missing_weights"])
def test_segment_refuses_bad_upsample_options_in_one_line_writing_nothing(
    tmp_path, segment_inputs, model_args, capsys, case
):
    masks = tmp_path / "masks"
    extra = {
        "scale_alone": ["--upsample-scale", "2"],
        "stride": ["--upsample", "anyup", "--stride", "7"],
        "missing_weights": ["--upsample", "anyup", "--upsample-weights", str(tmp_path / "none.pth")],
    }[case]
    expected = {
        "scale_alone": "--upsample-scale needs --upsample anyup",
        "stride": "--stride 7",
        "missing_weights": "none.pth",
    }[case]
    capsys.readouterr()
    assert main(["segment", *segment_inputs, "--json", str(tmp_path / "s.json"), *extra, *model_args]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert not masks.exists() and not (tmp_path / "s.json").exists()
