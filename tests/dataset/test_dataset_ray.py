"""``--engine ray`` on a local Ray (2 CPUs) gives the same files as ``--engine local``: the same bytes
for feature shards (also with --pca, fitted on a worker), the same tracks. Skipped without Ray;
``.ci/run`` installs the ``ray`` extra, so CI runs them."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import fill_disk, make_image_dataset
from dinofeat.cli import main
from dinofeat.io.video import VideoWriter

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*deprecated:DeprecationWarning")]
MODEL = ["--resolution", "28", "--device", "cpu", "--precision", "fp32", "--batch-size", "8", "--layer", "0"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _same_folders(a, b, pattern):
    names = sorted(p.relative_to(a) for p in a.glob(pattern))
    assert names and names == sorted(p.relative_to(b) for p in b.glob(pattern))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_ray_features_are_the_same_bytes_as_local(tmp_path, local_ray, vits14_checkpoint, capsys):
    root = tmp_path / "images"
    make_image_dataset(root, 60)
    (root / "broken.jpg").symlink_to(root / "gone.jpg")  # failed files too, read by neither engine
    os.mkfifo(root / "pipe.jpg")
    model = ["--weights", str(vits14_checkpoint), *MODEL, "--shard-size", "16", "--pca", "24", "--pca-sample", "20"]
    for engine in ("local", "ray"):
        argv = ["extract", str(root), "--out-dir", str(tmp_path / engine), "--engine", engine, *model]
        assert main([*argv, "--dtype", "float16"]) == 1  # the five bad files, the broken link, the FIFO
        assert "60 done (60 now" in capsys.readouterr().err
    _same_folders(tmp_path / "local", tmp_path / "ray", "shards/*.safetensors")
    _same_folders(tmp_path / "local", tmp_path / "ray", "pca.safetensors")
    for name in ("index.parquet", "errors.jsonl"):
        _same_folders(tmp_path / "local", tmp_path / "ray", name)
    failed = [json.loads(line)["path"] for line in (tmp_path / "ray" / "errors.jsonl").read_text().splitlines()]
    assert {"broken.jpg", "pipe.jpg"} <= set(failed) and len(failed) == 7
    # the ray run resumes like the local one
    assert main(["extract", str(root), "--out-dir", str(tmp_path / "ray"), "--engine", "ray", *model, "-q"]) == 2
    assert "settings.dtype" in capsys.readouterr().err
    argv = ["extract", str(root), "--out-dir", str(tmp_path / "ray"), "--engine", "ray", *model, "--dtype", "float16"]
    assert main(argv) == 1
    assert "60 done (0 now)" in capsys.readouterr().err


def test_ray_tracks_equal_local(tmp_path, local_ray, vits14_checkpoint):
    from skimage import data

    photo = data.astronaut()
    videos = tmp_path / "videos"
    videos.mkdir()
    for name, y in (("a.mp4", 60), ("b.mp4", 200)):
        with VideoWriter(videos / name, fps=25, size_wh=(84, 56), crf=4) as sink:
            for k in range(4):
                sink.write(np.ascontiguousarray(photo[y : y + 56, 100 + 7 * k : 184 + 7 * k]))
    (videos / "broken.mp4").write_bytes(b"not a video at all" * 50)
    model = ["--weights", str(vits14_checkpoint), *MODEL[2:], "--resolution", "56"]
    for engine in ("local", "ray"):
        argv = ["track", str(videos), "--out-dir", str(tmp_path / engine), "--engine", engine, "--grid", "2"]
        assert main([*argv, "--outputs", "json", "csv", *model, "-q"]) == 1
    _same_folders(tmp_path / "local", tmp_path / "ray", "tracks/*")
    errors = [json.loads(line) for line in (tmp_path / "ray" / "errors.jsonl").read_text().splitlines()]
    assert [e["path"] for e in errors] == ["broken.mp4"]


def test_ray_on_a_full_disk_is_one_line_and_resumes(tmp_path, local_ray, small_disk, vits14_checkpoint, capsys):
    """A worker's ENOSPC reaches the driver as the one line the local engine prints (no worker
    traceback, no colour codes); the shards written stay and a rerun after freeing space finishes."""
    root = tmp_path / "images"
    make_image_dataset(root, 40, bad=False)
    out = small_disk / "features"
    argv = ["extract", str(root), "--out-dir", str(out), "--engine", "ray", "--shard-size", "4"]
    argv += ["--weights", str(vits14_checkpoint), *MODEL, "-q"]
    filler = fill_disk(small_disk, leave=120 * 1024)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dinofeat extract: error: no space left on device writing {out}/")
    assert "\x1b" not in err[0]
    kept = {p.name: p.read_bytes() for p in (out / "shards").glob("*.safetensors")}
    assert len(kept) < 10
    filler.unlink()
    assert main(argv) == 0
    shards = {p.name: p.read_bytes() for p in (out / "shards").glob("*.safetensors")}
    assert len(shards) == 10 and all(shards[name] == data for name, data in kept.items())


def test_ray_upsampled_features_are_the_same_bytes_as_local(tmp_path, local_ray, vits14_checkpoint, capsys):
    import torch

    from dinofeat.models.anyup import AnyUp

    torch.manual_seed(0)
    torch.save(AnyUp().state_dict(), tmp_path / "anyup.pth")
    root = tmp_path / "images"
    make_image_dataset(root, 8, bad=False)
    model = ["--weights", str(vits14_checkpoint), *MODEL, "--shard-size", "4"]
    upsample = ["--upsample", "anyup", "--upsample-weights", str(tmp_path / "anyup.pth")]
    for engine in ("local", "ray"):
        argv = ["extract", str(root), "--out-dir", str(tmp_path / engine), "--engine", engine, *model, *upsample]
        assert main([*argv, "-q"]) == 0
    _same_folders(tmp_path / "local", tmp_path / "ray", "shards/*.safetensors")
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["geometry"]["cell_size"] == 7.0
