"""Feature files say what they hold: the input of each ``features_i``, typed numbers, the weights
(path and sha256 prefix) and the precision used; match and track JSON record the weights; a
dataset's manifest records the precision used; files written before all this still load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from conftest import make_image_dataset, random_vit, save_png
from dinofeat.dataset.runs import extract_dataset
from dinofeat.features.extractor import Extractor
from dinofeat.features.files import FEATURES_FORMAT, FEATURES_VERSION, read_features
from dinofeat.jobs.extract import ExtractJob
from dinofeat.jobs.match import MatchJob
from dinofeat.jobs.pca import PCAJob
from dinofeat.models.digest import weights_digest
from dinofeat.models.weights import load_model
from dinofeat.options import DatasetOptions, ExtractorOptions, PCAOptions
from dinofeat.runtime.devices import precision_name, resolve_precision


@pytest.fixture
def image_files(tmp_path) -> list[str]:
    rng = np.random.default_rng(0)
    return [
        str(save_png(tmp_path / f"{name}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        for name, (h, w) in (("cat", (70, 84)), ("dog", (56, 42)))
    ]


@pytest.fixture
def bf16_extractor() -> Extractor:
    """A one-block random ViT-S/14 asked for bf16 (what ``auto`` picks on most machines)."""
    return Extractor(random_vit("dinov2_vits14", depth=1), resolution=56, device="cpu", precision="bf16")


def _npz_metadata(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files if not key.startswith(("features_", "image_size_", "processed_"))}


def test_npz_records_each_input_typed_numbers_weights_and_precision(tmp_path, image_files, bf16_extractor):
    out = tmp_path / "feats.npz"
    ExtractJob([image_files[0], image_files[1]], output=out).run(bf16_extractor)
    meta = _npz_metadata(out)
    assert str(meta["input_0"]) == image_files[0] and str(meta["input_1"]) == image_files[1]
    assert meta["patch_size"].dtype == np.int64 and int(meta["patch_size"]) == 14
    assert meta["resolution"].dtype == np.int64 and int(meta["resolution"]) == 56
    assert meta["layers"].dtype == np.int64 and meta["layers"].tolist() == [-1]
    assert str(meta["model"]) == "dinov2_vits14" and str(meta["precision"]) == "bf16"
    assert str(meta["weights_sha256"]) == weights_digest(bf16_extractor.model)[:16]
    assert "weights_path" not in meta  # random weights: read from no file
    assert str(meta["format"]) == FEATURES_FORMAT and int(meta["version"]) == FEATURES_VERSION


def test_safetensors_metadata_is_json_text(tmp_path, image_files, bf16_extractor):
    out = tmp_path / "feats.safetensors"
    ExtractJob(image_files, output=out).run(bf16_extractor)
    with safe_open(str(out), framework="np") as handle:
        meta = handle.metadata()
    assert json.loads(meta["patch_size"]) == 14 and json.loads(meta["layers"]) == [-1]
    assert json.loads(meta["model"]) == "dinov2_vits14" and json.loads(meta["precision"]) == "bf16"
    assert json.loads(meta["input_1"]) == image_files[1]
    assert json.loads(meta["weights"]) == {"path": None, "sha256": weights_digest(bf16_extractor.model)[:16]}


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_read_features_gives_the_maps_and_the_same_typed_metadata_for_both_formats(
    tmp_path, image_files, bf16_extractor, suffix
):
    out = tmp_path / f"feats{suffix}"
    result = ExtractJob(image_files, output=out).run(bf16_extractor)
    maps, meta = read_features(out)
    assert [m.grid_hw for m in maps] == [m.grid_hw for m in result.maps]
    assert [m.image_size_wh for m in maps] == [(84, 70), (42, 56)]
    assert np.allclose(maps[1].numpy(), result.maps[1].numpy())
    assert meta["layers"] == [-1] and meta["patch_size"] == 14 and meta["input_0"] == image_files[0]
    assert meta["weights"] == {"path": None, "sha256": weights_digest(bf16_extractor.model)[:16]}


def test_an_image_given_as_an_array_has_no_input_entry(tmp_path, image_files, bf16_extractor):
    out = tmp_path / "feats.npz"
    ExtractJob([np.zeros((40, 40, 3), np.uint8), image_files[1]], output=out).run(bf16_extractor)
    meta = _npz_metadata(out)
    assert "input_0" not in meta and str(meta["input_1"]) == image_files[1]


def _version_1_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "features_0": rng.standard_normal((4, 6, 8)).astype(np.float32),
        "image_size_0": np.asarray([84, 56], np.int64),
        "processed_size_0": np.asarray([84, 56], np.int64),
    }


# what dinofeat 0.1 wrote: every value a string, model names unquoted
_VERSION_1_TEXT = {"patch_size": "14", "stride": "14", "model": "dinov2_vits14", "resolution": "56", "layers": "[-1]"}


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_files_of_the_first_version_still_load_with_typed_values(tmp_path, suffix):
    path = tmp_path / f"old{suffix}"
    if suffix == ".npz":
        np.savez(path, **_version_1_arrays(), **{k: np.asarray(v) for k, v in _VERSION_1_TEXT.items()})
    else:
        save_file(_version_1_arrays(), str(path), metadata=_VERSION_1_TEXT)
    maps, meta = read_features(path)
    assert len(maps) == 1 and maps[0].grid_hw == (4, 6) and maps[0].image_size_wh == (84, 56)
    assert meta == {"patch_size": 14, "stride": 14, "model": "dinov2_vits14", "resolution": 56, "layers": [-1]}


def test_weights_loaded_from_a_file_record_its_path(tmp_path, image_files, vits14_checkpoint):
    model = load_model("dinov2_vits14", vits14_checkpoint)
    extractor = Extractor(model, resolution=28, device="cpu", precision="fp32", layers=0)
    assert extractor.provenance() == {
        "weights": {"path": str(vits14_checkpoint), "sha256": weights_digest(model)[:16]},
        "precision": "fp32",
    }


def test_match_json_records_the_weights(image_files, bf16_extractor):
    result = MatchJob(*image_files, points_xy=[(10.0, 10.0)]).run(bf16_extractor)
    assert result.document["weights"] == {"path": None, "sha256": weights_digest(bf16_extractor.model)[:16]}


def test_dataset_manifest_records_the_precision_used_not_auto(tmp_path):
    root = tmp_path / "images"
    make_image_dataset(root, 4, bad=False)
    options = ExtractorOptions(resolution=28, device="cpu", precision="auto", batch_size=4)
    extract_dataset([root], tmp_path / "out", options, DatasetOptions(), model=random_vit("dinov2_vits14", depth=1))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    used = precision_name(resolve_precision("auto", torch.device("cpu")))
    assert manifest["precision_used"] == used != "auto"
    assert manifest["settings"]["precision"] == "auto"  # the option, compared on a rerun


def test_pca_save_features_records_what_an_extract_file_does(tmp_path, image_files, bf16_extractor):
    out = tmp_path / "reduced.npz"
    PCAJob(image_files, save_features=out, options=PCAOptions(components=4, foreground=None)).run(bf16_extractor)
    maps, meta = read_features(out)
    assert [m.dim for m in maps] == [4, 4]
    assert meta["input_0"] == image_files[0] and meta["layers"] == [-1] and meta["components"] == 4
    assert meta["precision"] == "bf16" and meta["weights"]["sha256"] == weights_digest(bf16_extractor.model)[:16]
