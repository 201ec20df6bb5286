"""A full disk (``ENOSPC``) is one line naming the output and "no space left on device", exit 2,
nothing partial, for every command; a dataset run keeps its finished shards and resumes once space
is freed. The commands run against a real full device, a small tmpfs, where the test can mount one
(root on Linux); the writes below them are checked everywhere with a write that raises ENOSPC."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import fill_disk, make_image_dataset, save_png
from dinofeat.cli import main
from dinofeat.errors import DiskFullError, is_disk_full
from dinofeat.io.outputs import staged_outputs
from dinofeat.io.video import VideoWriter

MODEL = ["--resolution", "28", "--device", "cpu", "--precision", "fp32", "--layer", "0"]


@pytest.fixture
def images(tmp_path, photo, vits14_checkpoint):
    a = save_png(tmp_path / "a.png", photo[:56, :84])
    b = save_png(tmp_path / "b.png", photo[20:76, 10:94])
    return a, b, ["--weights", str(vits14_checkpoint), *MODEL]


def _one_disk_full_line(capsys, command: str, path: Path) -> None:
    err = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]  # not the warnings
    assert err == [f"dinofeat {command}: error: no space left on device writing {path}"]


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "filler")


# -- every command against a full device ----------------------------------------------------------


def test_extract_to_a_file_on_a_full_disk_is_one_line_and_leaves_nothing(small_disk, images, capsys):
    a, b, model = images
    fill_disk(small_disk)
    out = small_disk / "f.safetensors"
    assert main(["extract", str(a), str(b), "-o", str(out), *model]) == 2
    _one_disk_full_line(capsys, "extract", out)
    assert _left(small_disk) == []


@pytest.mark.parametrize("suffix", [".png", ".json"])
def test_match_on_a_full_disk_is_one_line_and_leaves_nothing(small_disk, images, capsys, suffix):
    a, b, model = images
    fill_disk(small_disk)
    out = small_disk / f"m{suffix}"
    flag = "-o" if suffix == ".png" else "--json"
    assert main(["match", str(a), str(b), "--grid", "2", flag, str(out), *model]) == 2
    _one_disk_full_line(capsys, "match", out)
    assert _left(small_disk) == []


def test_pca_on_a_full_disk_is_one_line_and_leaves_nothing(small_disk, images, capsys):
    a, b, model = images
    fill_disk(small_disk)
    out = small_disk / "p.png"
    assert main(["pca", str(a), str(b), "-o", str(out), *model]) == 2
    _one_disk_full_line(capsys, "pca", out)
    assert _left(small_disk) == []


def test_track_on_a_full_disk_is_one_line_and_leaves_nothing(small_disk, tmp_path, photo, images, capsys):
    _, _, model = images
    video = tmp_path / "v.mp4"
    with VideoWriter(video, fps=25, size_wh=(84, 56), crf=4) as sink:
        for k in range(3):
            sink.write(np.ascontiguousarray(photo[60:116, 100 + 7 * k : 184 + 7 * k]))
    fill_disk(small_disk)
    out = small_disk / "t.mp4"
    assert main(["track", str(video), "--point", "40,30", "-o", str(out), *model]) == 2
    _one_disk_full_line(capsys, "track", out)
    assert _left(small_disk) == []


@pytest.mark.slow
def test_dataset_on_a_full_disk_keeps_its_shards_and_resumes(small_disk, tmp_path, vits14_checkpoint, capsys):
    root = tmp_path / "images"
    make_image_dataset(root, 40, bad=False)
    out = small_disk / "features"
    argv = ["extract", str(root), "--out-dir", str(out), "--shard-size", "4", "--weights", str(vits14_checkpoint)]
    argv += [*MODEL, "-q"]
    filler = fill_disk(small_disk, leave=120 * 1024)  # room for a few 4-image shards, not all ten
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dinofeat extract: error: no space left on device writing ")
    assert str(out) in err[0]
    kept = {p.name: p.read_bytes() for p in (out / "shards").glob("*.safetensors")}
    assert 0 < len(kept) < 10
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".")]  # nothing partial
    filler.unlink()  # the user frees space and runs the same command again
    assert main(argv) == 0
    shards = {p.name: p.read_bytes() for p in (out / "shards").glob("*.safetensors")}
    assert len(shards) == 10 and all(shards[name] == data for name, data in kept.items())


# -- the writes below the commands, wherever the test runs ------------------------------------------


class _FullFile:
    """A file object whose writes fail as on a full device."""

    def __init__(self, path: Path) -> None:
        self.name = str(path)

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_staged_write_that_hits_enospc_names_the_output_and_leaves_nothing(tmp_path):
    out = tmp_path / "x.json"
    message = f"^no space left on device writing {re.escape(str(out))}$"
    with pytest.raises(DiskFullError, match=message), staged_outputs([out]) as (tmp,):
        _FullFile(tmp).write(b"{}")
    assert list(tmp_path.iterdir()) == []


def test_the_full_disk_errors_of_safetensors_and_arrow_are_recognised():
    class SafetensorError(Exception):
        pass

    assert is_disk_full(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert is_disk_full(OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"))
    wrapped = RuntimeError("encoder failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_a_full_disk_in_any_command_is_one_line_exit_2(tmp_path, images, monkeypatch, capsys):
    """A write below any command (here the PNG encoder of ``pca``) that raises ENOSPC."""
    import dinofeat.jobs.pca as pca_job

    def full(path, image):
        _FullFile(Path(path)).write(b"")

    monkeypatch.setattr(pca_job, "save_image", full)
    a, b, model = images
    out = tmp_path / "p.png"
    assert main(["pca", str(a), str(b), "-o", str(out), *model]) == 2
    _one_disk_full_line(capsys, "pca", out)
    assert not out.exists() and not list(tmp_path.glob(".p.*"))
