"""``extract --out-dir --upsample anyup``: feature folders of AnyUp-upsampled maps, read back with
their exact geometry (cell size), equal to upsampling the single-file extraction; with ``--pca``;
the manifest records the upsampling and a rerun with other upsampling is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_image_dataset, random_vit
from dinofeat import open_features
from dinofeat.cli import main
from dinofeat.dataset.runs import extract_dataset
from dinofeat.errors import InputError
from dinofeat.features.extractor import Extractor
from dinofeat.features.upsample import Upsampler
from dinofeat.io.images import load_image
from dinofeat.models.anyup import AnyUp
from dinofeat.options import DATASET_UPSAMPLE_SCALE, DatasetOptions, ExtractorOptions, UpsampleOptions

FAST = ExtractorOptions(resolution=28, device="cpu", precision="fp32", batch_size=4)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """12 small images of three sizes (no bad files)."""
    root = tmp_path_factory.mktemp("images")
    make_image_dataset(root, 12, bad=False)
    return root


@pytest.fixture(scope="module")
def vit():
    return random_vit("dinov2_vits14", depth=1)


@pytest.fixture(scope="module")
def anyup_file(tmp_path_factory):
    """AnyUp with random weights, saved as the released checkpoints are (a plain state dict)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("anyup") / "anyup.pth"
    torch.save(AnyUp().state_dict(), path)
    return path


def _upsampled_alone(root, path, vit, anyup_file, scale):
    image = load_image(root / path)
    patches = Extractor.from_options(FAST, model=vit).extract(image)
    upsampler = Upsampler.from_weights(anyup_file, device="cpu", precision="fp32")
    return upsampler.upsample(patches, image, scale=scale)


def test_stored_maps_are_the_upsampled_patches_with_their_geometry(tmp_path, images, vit, anyup_file):
    upsample = UpsampleOptions(upsample="anyup", upsample_weights=str(anyup_file))  # default scale
    report = extract_dataset(
        [images], tmp_path / "out", FAST, DatasetOptions(shard_size=5), model=vit, upsample=upsample
    )
    assert (report.done, report.failed) == (12, 0)
    store = open_features(tmp_path / "out")
    assert DATASET_UPSAMPLE_SCALE == 2 and store.cell_size == 7.0
    for path in store.paths()[::4]:
        stored = store[path]
        alone = _upsampled_alone(images, path, vit, anyup_file, DATASET_UPSAMPLE_SCALE)
        assert stored.cell_size == alone.cell_size == 7.0 and stored.grid_hw == alone.grid_hw
        torch.testing.assert_close(stored.features, alone.features, atol=1e-4, rtol=1e-4)  # batched vs alone
        corner = np.array([[0.0, 0.0], [stored.image_size_wh[0] - 1.0, 3.5]])
        torch.testing.assert_close(stored.sample(corner), alone.sample(corner), atol=1e-4, rtol=1e-4)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["settings"]["upsample"] == {"upsample": "anyup", "upsample_scale": 2}
    assert manifest["geometry"]["cell_size"] == 7.0 and manifest["upsample_weights"] == str(anyup_file)
    again = extract_dataset(
        [images], tmp_path / "out", FAST, DatasetOptions(shard_size=5), model=vit, upsample=upsample
    )
    assert again.done_now == 0
    for other in (None, UpsampleOptions(upsample="anyup", upsample_weights=str(anyup_file), upsample_scale=4)):
        with pytest.raises(InputError, match="other settings"):
            extract_dataset([images], tmp_path / "out", FAST, DatasetOptions(shard_size=5), model=vit, upsample=other)


def test_pca_storage_reduces_the_upsampled_maps(tmp_path, images, vit, anyup_file):
    upsample = UpsampleOptions(upsample="anyup", upsample_weights=str(anyup_file), upsample_scale=4)
    options = DatasetOptions(shard_size=6, pca=8)
    extract_dataset([images], tmp_path / "pca", FAST, options, model=vit, upsample=upsample)
    store = open_features(tmp_path / "pca")
    assert store.cell_size == 3.5 and store.pca is not None
    for path in store.paths()[::5]:
        stored, alone = store[path], _upsampled_alone(images, path, vit, anyup_file, 4)
        assert stored.features.shape == (*alone.grid_hw, 8)
        torch.testing.assert_close(stored.features, store.pca.transform(alone.features), atol=1e-4, rtol=1e-4)


def test_patch_folders_have_no_cell_size(tmp_path, images, vit):
    extract_dataset([images], tmp_path / "plain", FAST, DatasetOptions(shard_size=12), model=vit)
    store = open_features(tmp_path / "plain")
    manifest = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert (
        store.cell_size is None and "upsample" not in manifest["settings"] and "cell_size" not in manifest["geometry"]
    )
    assert store[store.paths()[0]].cell_size is None


CLI_MODEL = ["--resolution", "28", "--device", "cpu", "--precision", "fp32", "--layer", "0"]


def test_cli_extract_out_dir_upsample(tmp_path, images, vits14_checkpoint, anyup_file, capsys):
    model = ["--weights", str(vits14_checkpoint), *CLI_MODEL]
    upsample = ["--upsample", "anyup", "--upsample-weights", str(anyup_file), "--upsample-scale", "14"]
    assert main(["extract", str(images), "--out-dir", str(tmp_path / "px"), "-q", *model, *upsample]) == 0
    store = open_features(tmp_path / "px")
    fmap = store[store.paths()[0]]
    assert store.cell_size == 1.0 and fmap.grid_hw == (fmap.processed_size_wh[1], fmap.processed_size_wh[0])
    capsys.readouterr()
    missing = ["--upsample", "anyup", "--upsample-weights", str(tmp_path / "none.pth")]
    assert main(["extract", str(images), "--out-dir", str(tmp_path / "bad"), *model, *missing]) == 2
    err = capsys.readouterr().err
    assert "weights file not found" in err and err.count("\n") == 1, err
    assert not (tmp_path / "bad" / "manifest.json").exists()
