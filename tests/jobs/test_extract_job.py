"""ExtractJob: check() refuses before any model work (errors name fields), run() writes one feature
file atomically and returns an ExtractResult."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import save_png
from dinofeat.errors import InputError
from dinofeat.features.files import FEATURE_SUFFIXES
from dinofeat.jobs.extract import ExtractJob, ExtractResult
from dinofeat.options import DatasetOptions


@pytest.fixture
def image_files(tmp_path) -> list[str]:
    rng = np.random.default_rng(0)
    sizes = [(112, 140), (84, 56)]
    return [
        str(save_png(tmp_path / f"{i}.png", rng.integers(0, 256, (*hw, 3), dtype=np.uint8)))
        for i, hw in enumerate(sizes)
    ]


def _read(path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    with np.load(path) as f:
        return dict(f)


def _files(folder) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, r"^nothing to write: give output=OUT.npz\|.safetensors, or out_dir=DIR for a dataset$"),
        ({"output": "f.npz", "out_dir": "d"}, r"^give output=OUT \(one file\) or out_dir=DIR \(a dataset\), not both$"),
        (
            {"output": "f.npz", "dataset": DatasetOptions(dtype="float16")},
            r"^the dataset options \(engine, dtype, pca, \.\.\.\) need out_dir=DIR$",
        ),
        ({"output": "f.txt"}, r"^output must end in \.npz or \.safetensors, got .*f\.txt$"),
        ({"output": "0.png/f.npz"}, r"^output folder .*0\.png cannot be made: .*0\.png is not a folder$"),
        (
            {"output": "f.npz", "inputs": ["f.npz"]},
            r"^output .*f\.npz is the input .*f\.npz: refusing to overwrite it$",
        ),
        ({"output": "f.npz", "inputs": ["missing.png"]}, r"^image not found: .*missing\.png$"),
    ],
)
def test_check_refuses_before_any_model_work(tmp_path, image_files, unused_source, kwargs, message):
    kwargs = {"inputs": image_files, **kwargs}  # file names are in tmp_path
    kwargs.update({key: str(tmp_path / kwargs[key]) for key in ("output", "out_dir") if key in kwargs})
    if "inputs" in kwargs and kwargs["inputs"] != image_files:
        kwargs["inputs"] = [str(tmp_path / name) for name in kwargs["inputs"]]
    job = ExtractJob(**kwargs)
    before = _files(tmp_path)
    with pytest.raises(InputError, match=message):
        job.check()
    with pytest.raises(InputError, match=message):
        job.run(unused_source)  # run() checks first when check() was not called
    assert _files(tmp_path) == before


@pytest.mark.parametrize("suffix", FEATURE_SUFFIXES)
def test_run_returns_the_maps_and_writes_them(tmp_path, image_files, tiny_extractor, suffix):
    out = tmp_path / f"feats{suffix}"
    job = ExtractJob(image_files, output=out)
    job.check()
    result = job.run(tiny_extractor)
    assert isinstance(result, ExtractResult) and result.output == out
    assert [m.image_size_wh for m in result.maps] == [(140, 112), (56, 84)]
    stored = _read(out)
    for i, fmap in enumerate(result.maps):
        np.testing.assert_array_equal(stored[f"features_{i}"], fmap.numpy())
        assert tuple(stored[f"image_size_{i}"]) == fmap.image_size_wh
    assert result.summary() == f"2 images, 4x6, 5x4 patches x 384 -> {out}"
    assert _files(tmp_path) == {"0.png", "1.png", out.name}  # no temporary file left


def test_check_reads_the_images_once(tmp_path, image_files, tiny_extractor, monkeypatch):
    import dinofeat.jobs.extract

    reads = []
    load = dinofeat.jobs.extract.load_image
    monkeypatch.setattr(dinofeat.jobs.extract, "load_image", lambda source: reads.append(source) or load(source))
    job = ExtractJob(image_files, output=tmp_path / "f.npz")
    job.check()
    job.run(tiny_extractor)
    assert reads == image_files


def test_a_failed_run_leaves_the_previous_file(tmp_path, image_files):
    class Failing:
        options = stride = batch_size = spec = None

        def extract_arrays(self, images):
            raise InputError("out of memory")

    out = tmp_path / "f.npz"
    out.write_bytes(b"previous")
    with pytest.raises(InputError, match="out of memory"):
        ExtractJob(image_files, output=out).run(Failing())
    assert out.read_bytes() == b"previous" and _files(tmp_path) == {"0.png", "1.png", "f.npz"}


def test_a_dataset_job_runs_with_run_dataset_only(tmp_path, image_files, unused_source):
    job = ExtractJob(image_files, out_dir=tmp_path / "feats")
    job.check()
    assert job.is_dataset
    with pytest.raises(InputError, match=r"^out_dir=.*feats is a dataset: run it with run_dataset\(\)$"):
        job.run(unused_source)
