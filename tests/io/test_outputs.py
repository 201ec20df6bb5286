"""dinofeat.io.outputs: outputs checked before any work, written atomically, with a plain file's mode."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from dinofeat.errors import InputError
from dinofeat.io.outputs import (
    check_outputs,
    check_suffix,
    ensure_folder,
    format_json,
    save_image,
    staged_outputs,
)


def test_staged_outputs_appear_only_when_the_block_succeeds(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.png"

    def write_then_fail():
        with staged_outputs([a, None, b]) as (ta, none, tb):
            assert none is None and ta.suffix == ".json" and tb.suffix == ".png" and ta.parent == tmp_path
            ta.write_text("{}")
            raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError):
        write_then_fail()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither target nor temporary file
    with staged_outputs([a, b]) as (ta, tb):
        ta.write_text("{}")
        tb.write_bytes(b"png")
    assert a.read_text() == "{}" and b.read_bytes() == b"png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.png"]


def test_a_failure_keeps_the_previous_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    def write_then_fail():
        with staged_outputs([target]) as (tmp,):
            tmp.write_text("new, half")
            raise ValueError

    with pytest.raises(ValueError):
        write_then_fail()
    assert target.read_text() == "old"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_mode_a_plain_open_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with staged_outputs([tmp_path / "o.txt"]) as (tmp,):
            tmp.write_text("x")
    finally:
        os.umask(previous)
    assert (tmp_path / "o.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_check_outputs_refuses_inputs_duplicates_and_bad_places(tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"pixels")
    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError, match="is the input"):
        check_outputs([tmp_path / "sub" / ".." / "photo.png"], inputs=[photo])
    link = tmp_path / "sub" / "alias.png"
    link.symlink_to(photo)
    with pytest.raises(InputError, match="is the input"):
        check_outputs([link], inputs=[str(photo)])
    with pytest.raises(InputError, match="two outputs"):
        check_outputs([tmp_path / "x.png", tmp_path / "." / "x.png"])
    with pytest.raises(InputError, match="is a folder"):
        check_outputs([tmp_path / "sub"])
    with pytest.raises(InputError, match="photo.png/deeper cannot be made: .*photo.png is not a folder"):
        check_outputs([photo / "deeper" / "x.png"])
    check_outputs([tmp_path / "nowhere" / "x.png"])  # a missing folder is made when written
    check_outputs([None, tmp_path / "fine.png"], inputs=[photo])  # no error
    assert photo.read_bytes() == b"pixels"


def test_missing_output_folders_are_made_and_removed_again_if_the_write_fails(tmp_path):
    target = tmp_path / "new" / "deeper" / "o.txt"

    def write_then_fail():
        with staged_outputs([target]) as (tmp,):
            tmp.write_text("half")
            raise RuntimeError("the writer failed")

    with pytest.raises(RuntimeError):
        write_then_fail()
    assert list(tmp_path.iterdir()) == []  # no half file, no empty folders
    with staged_outputs([target]) as (tmp,):
        tmp.write_text("whole")
    assert target.read_text() == "whole" and [p.name for p in target.parent.iterdir()] == ["o.txt"]


def test_check_suffix_names_the_option():
    check_suffix("a.JSON", (".json",), "--json")
    check_suffix(None, (".json",), "--json")
    with pytest.raises(InputError, match=r"^--json must end in \.json, got t\.csv$"):
        check_suffix("t.csv", (".json",), "--json")
    with pytest.raises(InputError, match=r"\.png, \.jpg or \.webp"):
        check_suffix("x.gif", (".png", ".jpg", ".webp"), "-o")


def test_ensure_folder_creates_parents_and_refuses_files(tmp_path):
    folder = ensure_folder(tmp_path / "a" / "b")
    assert folder.is_dir()
    assert ensure_folder(folder) == folder  # existing folders are fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="exists and is not a folder"):
        ensure_folder(tmp_path / "file")


def test_format_json_keeps_short_number_lists_on_one_line():
    document = {"points": [[1.5, -2.0], [3.0, 4e-05]], "name": "a", "nested": {"size": [640, 480]}}
    text = format_json(document)
    assert json.loads(text) == document
    assert "[1.5, -2.0]" in text and "[640, 480]" in text and text.endswith("\n")


def test_save_image_follows_the_suffix(tmp_path):
    from PIL import Image

    image = np.zeros((4, 6, 3), np.uint8)
    image[1, 2] = (10, 20, 30)
    save_image(tmp_path / "a.png", image)
    with Image.open(tmp_path / "a.png") as img:
        assert img.format == "PNG" and np.asarray(img)[1, 2].tolist() == [10, 20, 30]
