"""Feature datasets: extract_dataset / ``dinofeat extract --out-dir``, resuming after a kill, the manifest,
bad files, float16 and PCA storage, reading back with open_features, match/pca on a feature folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import make_image_dataset, random_vit
from dinofeat import open_features
from dinofeat.cli import main
from dinofeat.dataset.runs import extract_dataset
from dinofeat.errors import InputError
from dinofeat.features.extractor import Extractor
from dinofeat.io.images import load_image
from dinofeat.options import DatasetOptions, ExtractorOptions

FAST = ExtractorOptions(resolution=28, device="cpu", precision="fp32", batch_size=8)
# the full-depth checkpoint run to its first block only (--layer 0 skips the rest): fast
CLI_MODEL = ["--resolution", "28", "--device", "cpu", "--precision", "fp32", "--batch-size", "8", "--layer", "0"]
# A child process that runs the CLI, its model waiting (to be killed) once 3 shards are in
# sys.argv[1]: a kill mid-run, whatever the machine's speed.
SLOW_CLI = """
import sys, time
from pathlib import Path
import dinofeat.features.extractor as extractor
shards, forward = Path(sys.argv[1]) / "shards", extractor.Extractor.extract_resized
def slow(self, *args, **kwargs):
    while len(list(shards.glob("shard-*.safetensors"))) >= 3:
        time.sleep(1)
    return forward(self, *args, **kwargs)
extractor.Extractor.extract_resized = slow
from dinofeat.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """200 images in four folders plus five bad files (and a readme that is not an input)."""
    root = tmp_path_factory.mktemp("images")
    return root, make_image_dataset(root, 200)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """40 images in four folders plus the five bad files."""
    root = tmp_path_factory.mktemp("small")
    return root, make_image_dataset(root, 40)


@pytest.fixture(scope="module")
def vit():
    return random_vit("dinov2_vits14", depth=1)


def _shards(folder):
    return sorted((folder / "shards").glob("shard-*.safetensors"))


def _errors(folder):
    return [json.loads(line) for line in (folder / "errors.jsonl").read_text().splitlines()]


def test_store_equals_single_file_extraction(tmp_path, dataset, vit):
    root, bad = dataset
    report = extract_dataset([root], tmp_path / "out", FAST, DatasetOptions(shard_size=32), model=vit)
    assert (report.total, report.done, report.done_now, report.failed, report.ok) == (205, 200, 200, 5, False)
    store = open_features(tmp_path / "out")
    assert len(store) == 200 and store.paths()[0] == "class0/0000.png" and store.paths() == sorted(store.paths())
    assert sorted(e["path"] for e in store.errors()) == sorted(bad)
    single = Extractor.from_options(FAST, model=vit)
    for path in store.paths()[::23]:
        stored, alone = store[path], single.extract(root / path)
        assert stored.features.dtype == torch.float32 and stored.grid_hw == alone.grid_hw
        assert stored.image_size_wh == alone.image_size_wh and stored.processed_size_wh == alone.processed_size_wh
        torch.testing.assert_close(stored.features, alone.features, atol=1e-5, rtol=0)
    assert "./class0/0000.png" in store and store.find(root / "class0" / "0000.png") == "class0/0000.png"
    with pytest.raises(KeyError):
        store["class1/corrupt.jpg"]
    with pytest.raises(InputError, match="is not in the feature folder"):
        store.find("nope.png")
    # readable without dinofeat: the Parquet index and plain safetensors shards
    import pyarrow.parquet as pq

    index = pq.read_table(tmp_path / "out" / "index.parquet").to_pylist()
    row = index[5]
    with safe_open(str(tmp_path / "out" / row["shard"]), "np") as shard:
        raw = shard.get_tensor(row["key"])
        assert raw.shape == (row["grid_h"], row["grid_w"], 384)
        size = shard.get_tensor(row["key"].replace("features", "image_size"))
        assert size.tolist() == [row["image_w"], row["image_h"]]
    np.testing.assert_array_equal(raw, store[row["path"]].numpy())
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["model"] == "dinov2_vits14" and len(manifest["weights_sha256"]) == 64
    assert manifest["dinofeat_version"] and manifest["inputs"]["items"] == 205
    # rerunning skips everything; a stale index is not trusted
    before = {p: p.stat().st_mtime_ns for p in _shards(tmp_path / "out")}
    again = extract_dataset([root], tmp_path / "out", FAST, DatasetOptions(shard_size=32), model=vit)
    assert (again.done, again.done_now, again.failed) == (200, 0, 5)
    assert before == {p: p.stat().st_mtime_ns for p in _shards(tmp_path / "out")}
    (tmp_path / "out" / "index.parquet").unlink()
    assert open_features(tmp_path / "out").paths() == store.paths()


def test_float16_and_pca_storage(tmp_path, small, vit):
    root, _ = small
    full = extract_dataset([root], tmp_path / "f32", FAST, DatasetOptions(shard_size=64), model=vit)
    half = extract_dataset([root], tmp_path / "f16", FAST, DatasetOptions(shard_size=64, dtype="float16"), model=vit)
    pca = extract_dataset([root], tmp_path / "pca", FAST, DatasetOptions(shard_size=64, pca=16), model=vit)
    assert full.done == half.done == pca.done == 40
    size = lambda name: sum(p.stat().st_size for p in _shards(tmp_path / name))
    assert 0.49 < size("f16") / size("f32") < 0.55 and size("pca") / size("f32") < 0.1  # tiny images: headers count
    f32, f16, reduced = (open_features(tmp_path / name) for name in ("f32", "f16", "pca"))
    assert f16.dtype == "float16" and reduced.pca is not None and reduced.dim == 16
    assert (tmp_path / "pca" / "pca.safetensors").is_file()
    for path in f32.paths()[::9]:
        a, b, c = f32[path].features, f16[path].features, reduced[path].features
        assert b.dtype == torch.float32 and c.shape == (*a.shape[:2], 16)
        torch.testing.assert_close(b, a, atol=2e-3 * float(a.abs().max()), rtol=1e-3)
        torch.testing.assert_close(c, reduced.pca.transform(a), atol=1e-4, rtol=1e-4)
    again = extract_dataset([root], tmp_path / "pca", FAST, DatasetOptions(shard_size=64, pca=16), model=vit)
    assert again.done_now == 0
    with pytest.raises(InputError, match="more than the 384 feature channels"):
        extract_dataset([root], tmp_path / "x", FAST, DatasetOptions(pca=385), model=vit)


def test_manifest_refuses_other_settings_and_inputs(tmp_path, small, vit, capsys, vits14_checkpoint):
    root, _ = small
    extract_dataset([root], tmp_path / "out", FAST, DatasetOptions(shard_size=64), model=vit)
    for options, extractor, expected in [
        (DatasetOptions(shard_size=64, dtype="float16"), FAST, 'settings.dtype: "float32" there'),
        (DatasetOptions(shard_size=32), FAST, "settings.shard_size: 64 there, 32 now"),
        (DatasetOptions(shard_size=64), FAST.replace(resolution=42), "settings.resolution"),
    ]:
        with pytest.raises(InputError, match="was made with other settings") as err:
            extract_dataset([root], tmp_path / "out", extractor, options, model=vit)
        assert expected in str(err.value) and "\n" not in str(err.value)
    same = DatasetOptions(shard_size=64)
    with pytest.raises(InputError, match="weights_sha256"):
        extract_dataset([root], tmp_path / "out", FAST, same, model=random_vit(depth=1, seed=5))
    with pytest.raises(InputError, match="inputs.items: 45 there, 10 now"):
        extract_dataset([str(root / "class0" / "*.png")], tmp_path / "out", FAST, same, model=vit)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="is not empty and holds no manifest.json"):
        extract_dataset([root], tmp_path / "other", FAST, model=vit)
    # the same through the command line: one line, exit status 2
    capsys.readouterr()
    argv = ["extract", str(root), "--out-dir", str(tmp_path / "out"), "--weights", str(vits14_checkpoint)]
    assert main([*argv, *CLI_MODEL, "--shard-size", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was made with other settings" in err


def test_kill_mid_run_then_resume(tmp_path, dataset, vits14_checkpoint, capsys):
    """SIGKILL a run after a few shards; the rerun finishes with every good image exactly once,
    skips the shards already written, and gives the same bytes as a run never interrupted."""
    root, bad = dataset
    out = tmp_path / "out"
    argv = lambda folder: ["extract", str(root), "--out-dir", str(folder), "--weights", str(vits14_checkpoint)]
    options = [*CLI_MODEL, "--shard-size", "10"]
    child = subprocess.Popen([sys.executable, "-c", SLOW_CLI, out, *argv(out), *options, "-q"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while child.poll() is None and len(_shards(out)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    written = {p.name: p.stat().st_mtime_ns for p in _shards(out)}
    assert child.returncode == -signal.SIGKILL and 3 <= len(written) < 21  # the writer may finish one more
    capsys.readouterr()
    assert main([*argv(out), *options]) == 1  # some files failed: exit status 1, and a summary line
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("dinofeat extract: 205 images: 200 done (") and "5 failed (see " in err
    assert {p.name: p.stat().st_mtime_ns for p in _shards(out) if p.name in written} == written
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".")]
    store = open_features(out)
    assert len(store) == len(set(store.paths())) == 200
    errors = _errors(out)
    assert sorted(e["path"] for e in errors) == sorted(bad) and all(e["error"] for e in errors)
    assert "smaller than one 14-pixel patch" in next(e["error"] for e in errors if e["path"] == "tiny.png")
    fresh = tmp_path / "fresh"
    assert main([*argv(fresh), *options, "-q"]) == 1
    for a, b in zip(_shards(out), _shards(fresh), strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_interrupt_keeps_finished_shards(tmp_path, small, vit, monkeypatch):
    """Ctrl-C in the middle: finished shards stay, nothing half-written remains, the rerun completes."""
    import dinofeat.dataset.localengine as localengine

    root, _ = small
    write, calls = localengine.write_shard_result, []

    def interrupted(job, result):
        calls.append(result.number)
        if len(calls) == 3:
            raise KeyboardInterrupt
        write(job, result)

    monkeypatch.setattr(localengine, "write_shard_result", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract_dataset([root], tmp_path / "out", FAST, DatasetOptions(shard_size=8), model=vit)
    stored = open_features(tmp_path / "out")
    assert len(_shards(tmp_path / "out")) == 2 and len(stored) + len(stored.errors()) == 16
    assert not [p for p in (tmp_path / "out" / "shards").iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(localengine, "write_shard_result", write)
    report = extract_dataset([root], tmp_path / "out", FAST, DatasetOptions(shard_size=8), model=vit)
    assert (report.done, report.failed, report.done + report.failed) == (40, 5, 45)


def test_a_broken_link_and_a_fifo_are_failed_files(tmp_path, vits14_checkpoint, capsys):
    """``dinofeat extract DIR --out-dir``: a broken symbolic link and a FIFO named like images are
    counted as failed and recorded in errors.jsonl; the FIFO is never opened (nothing blocks)."""
    root = tmp_path / "images"
    make_image_dataset(root, 6, bad=False)
    (root / "broken.jpg").symlink_to(root / "gone.jpg")
    os.mkfifo(root / "pipe.jpg")
    argv = ["extract", str(root), "--out-dir", str(tmp_path / "out"), "--weights", str(vits14_checkpoint), *CLI_MODEL]
    assert main(argv) == 1
    assert "6 done (6 now" in capsys.readouterr().err
    errors = {e["path"]: e["error"] for e in _errors(tmp_path / "out")}
    assert list(errors) == ["broken.jpg", "pipe.jpg"]
    assert "broken symbolic link" in errors["broken.jpg"] and "FIFO" in errors["pipe.jpg"]
    assert len(open_features(tmp_path / "out")) == 6


def test_on_error_fail_stops_at_the_first_bad_file(tmp_path, small, vits14_checkpoint, capsys):
    root, _ = small
    argv = ["extract", str(root), "--out-dir", str(tmp_path / "out"), "--weights", str(vits14_checkpoint)]
    assert main([*argv, *CLI_MODEL, "--on-error", "fail", "--shard-size", "10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "class1/corrupt.jpg: " in err and "(--on-error fail)" in err
    assert [e["path"] for e in _errors(tmp_path / "out")] == ["class1/corrupt.jpg"]
    assert len(open_features(tmp_path / "out")) == 20  # the two shards before it were kept


def test_cli_extract_usage_errors(tmp_path, small, capsys):
    root, _ = small
    image = str(root / "class0" / "0000.png")
    for argv, expected in [
        (["extract", image], "give -o OUT.npz|.safetensors, or --out-dir DIR"),
        (["extract", image, "-o", str(tmp_path / "a.npz"), "--out-dir", str(tmp_path)], "not both"),
        (["extract", image, "-o", str(tmp_path / "a.npz"), "--dtype", "float16"], "need --out-dir DIR"),
        (["extract", str(root), "--out-dir", str(tmp_path / "o"), "--workers", "2"], "--workers is for --engine ray"),
        (["extract", str(root), "--out-dir", str(tmp_path / "o"), "--engine", "spark"], "invalid choice"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err


def test_ray_engine_without_ray_is_a_one_line_hint(tmp_path, small, monkeypatch, capsys):
    root, _ = small
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["extract", str(root), "--out-dir", str(tmp_path / "o"), "--engine", "ray", *CLI_MODEL]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "dinofeat[ray]"' in err


def test_match_and_pca_read_a_feature_folder(tmp_path, small, vits14_checkpoint, capsys):
    root, _ = small
    model = ["--weights", str(vits14_checkpoint), "--resolution", "56", "--device", "cpu", "--precision", "fp32"]
    model += ["--layer", "0"]
    out = tmp_path / "feats"
    assert main(["extract", str(root / "class0" / "*.png"), "--out-dir", str(out), *model, "-q"]) == 0
    a, b = str(root / "class0" / "0000.png"), str(root / "class0" / "0004.png")
    stored = open_features(out)
    key_a = stored.find(a)
    # single-file extract of the same image with the same settings
    assert main(["extract", a, "-o", str(tmp_path / "a.safetensors"), *model, "-q"]) == 0
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as single:
        torch.testing.assert_close(stored[key_a].features, single.get_tensor("features_0"), atol=1e-5, rtol=0)
    argv = ["match", a, b, "--grid", "3", "--json"]
    assert main([*argv, str(tmp_path / "model.json"), *model, "-q"]) == 0
    assert main([*argv, str(tmp_path / "store.json"), "--features", str(out), "-q"]) == 0
    run, read = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("model", "store"))
    assert run["settings"] == read["settings"] and len(run["matches"]) == len(read["matches"]) == 9
    for m, n in zip(run["matches"], read["matches"]):
        np.testing.assert_allclose(m["target"], n["target"], atol=0.05)
    assert key_a == "0000.png"  # relative to the glob's folder
    assert main(["match", key_a, "0004.png", "--features", str(out), "-o", str(tmp_path / "m.png"), "-q"]) == 0
    assert main(["match", a, b, "--features", str(out), "--resolution", "42"]) == 2
    assert "--resolution does not apply with --features" in capsys.readouterr().err
    assert main(["pca", "--features", str(out), "--save-pca", str(tmp_path / "p.npz"), "--fit-images", "8"]) == 0
    assert "a PCA of 8 stored images of 10" in capsys.readouterr().out
    argv = ["pca", a, b, "--features", str(out), "--load-pca", str(tmp_path / "p.npz")]
    assert main([*argv, "-o", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").is_file()
    assert main(["pca", "--features", str(out), "-o", str(tmp_path / "g.png")]) == 2
    assert "give --save-pca F.npz only" in capsys.readouterr().err


def test_report_summary():
    from pathlib import Path

    from dinofeat.dataset.runs import DatasetReport

    report = DatasetReport(Path("d"), "features", 10, 8, 4, 2, 2.0)
    assert report.summary() == "10 images: 8 done (4 now, 2/s), 2 failed (see d/errors.jsonl)" and not report.ok
    assert DatasetReport(Path("d"), "tracks", 3, 3, 0, 0, 1.0).summary() == "3 videos: 3 done (0 now)"


def test_temporary_files_of_killed_runs_are_removed(tmp_path, small, vit):
    root, _ = small
    extract_dataset([root], tmp_path / "out", FAST, DatasetOptions(shard_size=100), model=vit)
    leftover = tmp_path / "out" / "shards" / ".shard-000009.abc.safetensors"
    leftover.write_bytes(b"half")
    os.utime(leftover)
    extract_dataset([root], tmp_path / "out", FAST, DatasetOptions(shard_size=100), model=vit)
    assert not leftover.exists()


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, small, vit):
    import fcntl

    root, _ = small
    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a run in another process holds it
        with pytest.raises(InputError, match="another dinofeat run is writing to"):
            extract_dataset([root], tmp_path / "out", FAST, model=vit)


def _tiny_dataset(root, count=3, bad=(1,), seed=0):
    """``count`` 28x42 PNGs ``0.png`` .. (random pixels); the ``bad`` ones are not images."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (28, 42, 3), dtype=np.uint8)).save(root / f"{i}.png")
    for i in bad:
        (root / f"{i}.png").write_bytes(b"not an image")
    return root


def test_a_shard_whose_images_all_failed_still_matches_the_index(tmp_path, vit, caplog):
    root = _tiny_dataset(tmp_path / "imgs")
    report = extract_dataset([root], tmp_path / "out", FAST, DatasetOptions(shard_size=1), model=vit)
    assert (report.done, report.failed, len(_shards(tmp_path / "out"))) == (2, 1, 3)
    with caplog.at_level("WARNING", logger="dinofeat.dataset.store"):
        store = open_features(tmp_path / "out")
    assert store.paths() == ["0.png", "2.png"] and [e["path"] for e in store.errors()] == ["1.png"]
    assert not caplog.records  # the index was used: no warning, no rescan of the shard headers


class _Killed(BaseException):
    """A kill of the run (SIGKILL cannot be sent to the test's own process)."""


def test_an_index_older_than_its_shards_is_not_used(tmp_path, vit, monkeypatch, caplog):
    """The user deletes a shard to retry a failed image; the rerun writes the shard and is killed
    before it rewrites the index: the old index must not be used (its keys are shifted by one)."""
    import dinofeat.dataset.runs as dataset

    root = _tiny_dataset(tmp_path / "imgs", 6, bad=(2,))
    out, options = tmp_path / "out", DatasetOptions(shard_size=10)
    extract_dataset([root], out, FAST, options, model=vit)
    old_index = (out / "index.parquet").read_bytes()
    _tiny_dataset(tmp_path / "imgs", 6, bad=(), seed=1)  # 2.png is fixed (all images are new)
    (out / "shards" / "shard-000000.safetensors").unlink()

    def killed(folder, *args, **kwargs):
        raise _Killed

    monkeypatch.setattr(dataset, "write_index", killed)
    with pytest.raises(_Killed):
        extract_dataset([root], out, FAST, options, model=vit)
    assert not (out / "index.parquet").exists()  # removed before the first shard was written
    (out / "index.parquet").write_bytes(old_index)  # as a kill before that removal would have left it
    with caplog.at_level("WARNING", logger="dinofeat.dataset.store"):
        store = open_features(out)
    assert "does not match the shards" in caplog.text and len(store) == 6
    single = Extractor.from_options(FAST, model=vit)
    for path in ("1.png", "3.png", "5.png"):
        torch.testing.assert_close(store[path].features, single.extract(root / path).features, atol=1e-5, rtol=0)


def test_workers_get_absolute_weights_paths(tmp_path, small, vit, monkeypatch):
    import dinofeat.dataset.runs as dataset
    from dinofeat.dataset.localengine import LocalEngine

    seen = []

    class Recording(LocalEngine):  # what a Ray worker, in another working folder, would receive
        def weights_digest(self, options):
            seen.append(options.weights)
            return super().weights_digest(options)

        def shards(self, shards, job, on_items):
            seen.append(job.extractor.weights)
            return super().shards(shards, job, on_items)

    monkeypatch.setattr(dataset, "make_engine", lambda options, model=None: Recording(model))
    monkeypatch.chdir(tmp_path)
    root, _ = small
    extract_dataset([root / "class0" / "*.png"], "out", FAST.replace(weights="w.pth"), model=vit)
    assert seen == [str(tmp_path / "w.pth")] * 2


def test_errors_recorded_twice_by_killed_runs_are_read_once(tmp_path, vit):
    from dinofeat.dataset.manifest import read_errors

    root = _tiny_dataset(tmp_path / "imgs", 3, bad=(0, 2))
    extract_dataset([root], tmp_path / "out", FAST, DatasetOptions(shard_size=2), model=vit)
    log = tmp_path / "out" / "errors.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], lines[1], lines[0].replace("cannot", "could not"), '{"path": "cut'] + [""]))
    errors = open_features(tmp_path / "out").errors()
    assert [e["path"] for e in errors] == ["0.png", "2.png"] and errors == read_errors(log)
    assert "could not" in errors[0]["error"]  # the last record of a path


def test_one_definition_of_the_feature_settings_shard_metadata_samples_and_video_suffixes(tmp_path, vit):
    import dinofeat.cli.pca as cli_pca
    import dinofeat.dataset.listing as listing
    import dinofeat.dataset.runs as dataset
    import dinofeat.dataset.store as featurestore
    import dinofeat.options as options
    from dinofeat.features.files import extractor_metadata

    assert dataset.FEATURE_SETTINGS is featurestore.FEATURE_SETTINGS is options.FEATURE_SETTINGS
    assert cli_pca.VIDEO_SUFFIXES is listing.VIDEO_SUFFIXES
    # a shard records what a single-file extract -o records; the options are enough to say it
    extractor = Extractor.from_options(FAST, model=vit)
    assert extractor_metadata(FAST) == extractor_metadata(extractor)
    extract_dataset([_tiny_dataset(tmp_path / "imgs", 2, bad=())], tmp_path / "out", FAST, model=vit)
    header = featurestore.read_shard_header(_shards(tmp_path / "out")[0])
    assert {k: header[k] for k in extractor_metadata(FAST)} == extractor_metadata(FAST)
    # one evenly spread sample (the storage PCA's, the store's)
    assert listing.spread_indices(205, 4) == [25, 76, 128, 179] and listing.spread_indices(3, 64) == [0, 1, 2]
    assert open_features(tmp_path / "out").sample(1) == ["1.png"]


def test_the_end_of_a_run_reads_each_shard_header_once(tmp_path, vit, monkeypatch):
    import dinofeat.dataset.runs as dataset
    import dinofeat.dataset.store as featurestore

    root = _tiny_dataset(tmp_path / "imgs", 5, bad=(1, 4))
    reads = []
    read = featurestore._read_shard
    monkeypatch.setattr(featurestore, "_read_shard", lambda path: reads.append(path.name) or read(path))
    monkeypatch.setattr(dataset, "read_errors", None)  # errors.jsonl is written, not read back
    report = extract_dataset([root], tmp_path / "out", FAST, DatasetOptions(shard_size=2), model=vit)
    assert (report.done, report.failed) == (3, 2) and [e["path"] for e in _errors(tmp_path / "out")] == [
        "1.png",
        "4.png",
    ]
    assert sorted(reads) == [p.name for p in _shards(tmp_path / "out")]  # the index and the errors: one pass


def test_the_extractor_a_cache_and_stored_features_are_feature_sources(tmp_path, vit):
    from dinofeat.features.cache import FeatureCache
    from dinofeat.features.source import FeatureSource

    root = _tiny_dataset(tmp_path / "imgs", 2, bad=())
    extract_dataset([root], tmp_path / "out", FAST, model=vit)
    store = open_features(tmp_path / "out")
    extractor = Extractor.from_options(FAST, model=vit)
    sources = [extractor, FeatureCache(extractor), store.extractor_for(store.paths())]
    assert all(isinstance(source, FeatureSource) for source in sources)
    assert [(s.spec.name, s.stride, s.batch_size, s.options.resolution) for s in sources] == [
        ("dinov2_vits14", 14, 8, 28)
    ] * 3
    images = [load_image(root / f"{i}.png") for i in range(2)]
    stored, computed = sources[2].extract_arrays(images), sources[1].extract_arrays(images)
    for a, b in zip(stored, computed):
        torch.testing.assert_close(a.features, b.features, atol=1e-5, rtol=0)
