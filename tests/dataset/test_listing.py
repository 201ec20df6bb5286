"""Dataset listings: folders (recursive, sorted, hidden and output folders skipped), globs, list files."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dinofeat.dataset.listing import list_inputs, normal_path
from dinofeat.errors import InputError


def _touch(root, *names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_folder_is_walked_in_a_fixed_order(tmp_path):
    _touch(tmp_path, "z.png", "a/b.JPG", "a/a.png", "a/.hidden.png", ".cache/x.png", "notes.txt", "out/skip.png")
    listing = list_inputs([tmp_path], exclude=tmp_path / "out")
    items = list(listing)
    assert [i.path for i in items] == ["a/a.png", "a/b.JPG", "z.png"]
    assert [i.index for i in items] == [0, 1, 2]
    assert items[0].file == os.path.join(tmp_path, "a", "a.png") and listing.root == str(tmp_path)
    assert listing.fingerprint() == list_inputs([tmp_path], exclude=tmp_path / "out").fingerprint()
    videos = list_inputs([tmp_path], "video")
    assert list(videos) == []


def test_list_files_text_csv_parquet(tmp_path):
    _touch(tmp_path, "imgs/1.png", "imgs/2.png", "pts/1.json")
    (tmp_path / "list.txt").write_text("# a comment\nimgs/2.png\n\n./imgs/1.png\n")
    assert [i.path for i in list_inputs([tmp_path / "list.txt"])] == ["imgs/2.png", "imgs/1.png"]
    (tmp_path / "list.csv").write_text("path,points\nimgs/1.png,pts/1.json\nimgs/2.png,\n")
    items = list(list_inputs([tmp_path / "list.csv"], "video"))
    assert items[0].points == os.path.join(tmp_path, "pts", "1.json") and items[1].points is None
    assert items[1].file == os.path.join(tmp_path, "imgs", "2.png")
    pq.write_table(pa.table({"path": ["imgs/2.png", "imgs/1.png"], "label": [1, 2]}), tmp_path / "list.parquet")
    assert [i.path for i in list_inputs([tmp_path / "list.parquet"])] == ["imgs/2.png", "imgs/1.png"]


def test_globs_and_plain_files(tmp_path, monkeypatch):
    _touch(tmp_path, "a/1.png", "a/2.png", "b/3.png")
    monkeypatch.chdir(tmp_path)
    assert [i.path for i in list_inputs(["a/*.png"])] == ["1.png", "2.png"]
    assert list_inputs([str(tmp_path / "a" / "*.png")]).root == str(tmp_path / "a")
    assert [i.path for i in list_inputs(["**/*.png"])] == ["a/1.png", "a/2.png", "b/3.png"]
    assert [i.path for i in list_inputs(["**/3.png", "./a/1.png"])] == ["b/3.png", "a/1.png"]


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("missing", "input not found"),
        ("glob", "no file matches"),
        ("no-column", "has no 'path' column"),
        ("twice", "listed twice"),
        ("folder-and-file", "must be the only input"),
        ("empty-row", "has an empty path"),
    ],
)
def test_bad_listings_are_one_line_errors(tmp_path, problem, expected):
    _touch(tmp_path, "d/1.png")
    lists = {"no-column": "name\n1.png\n", "twice": "path\nd/1.png\nd/./1.png\n", "empty-row": "path\n\n,\n"}
    (tmp_path / "l.csv").write_text(lists.get(problem, "path\n"))
    sources = {
        "missing": [tmp_path / "nope.png"],
        "glob": [str(tmp_path / "*.gif")],
        "folder-and-file": [tmp_path / "d", tmp_path / "d/1.png"],
    }.get(problem, [tmp_path / "l.csv"])
    with pytest.raises(InputError, match=expected):
        list_inputs(sources).fingerprint()


def test_a_broken_link_and_a_fifo_with_an_image_name_are_listed(tmp_path):
    """They fail when read (and are recorded); a folder walk and a glob both list them."""
    _touch(tmp_path, "a.png")
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "gone.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    os.mkfifo(tmp_path / "pipe.txt")  # not an image name: not listed
    expected = ["a.png", "broken.jpg", "pipe.jpg"]
    assert [i.path for i in list_inputs([tmp_path])] == expected
    assert [i.path for i in list_inputs([str(tmp_path / "*.*g")])] == expected
    assert [i.path for i in list_inputs([str(tmp_path / "pipe.*")])] == ["pipe.jpg", "pipe.txt"]


def test_normal_path():
    assert normal_path("./a//b/./c.png") == "a/b/c.png"
    assert normal_path("/abs/x.png") == "/abs/x.png"


def test_the_output_folder_is_skipped_by_any_path_and_in_globs(tmp_path):
    _touch(tmp_path, "clips/a.png", "clips/out/tracks/x.png", "clips/sub/b.png")
    (tmp_path / "link").symlink_to(tmp_path / "clips")
    out = tmp_path / "clips" / "out"
    paths = lambda *args, **kwargs: [i.path for i in list_inputs(*args, **kwargs)]
    expected = ["a.png", "sub/b.png"]
    # the folder through a link, the output folder by its real path (extract_dataset resolves it)
    assert paths([tmp_path / "link"], exclude=out) == expected
    assert paths([tmp_path / "clips"], exclude=tmp_path / "link" / "out") == expected
    # globs: the output folder's files are not matches
    assert paths([str(tmp_path / "clips" / "**" / "*.png")], exclude=out) == expected
    assert paths([str(tmp_path / "link" / "**" / "*.png")], exclude=tmp_path / "link" / "out") == expected
    assert paths([str(tmp_path / "clips" / "**" / "*.png")]) == ["a.png", "out/tracks/x.png", "sub/b.png"]
    # a link inside the folder to the output folder
    (tmp_path / "clips" / "sub" / "o").symlink_to(out)
    assert paths([tmp_path / "clips"], exclude=out) == expected
    assert paths([str(tmp_path / "clips" / "**" / "*.png")], exclude=out) == expected


def test_a_file_given_twice_is_listed_once_at_its_first_place(tmp_path, monkeypatch):
    _touch(tmp_path, "0.png", "1.png", "a/2.png")
    monkeypatch.chdir(tmp_path)
    items = list(list_inputs(["1.png", "./0.png", "0.png", "*.png", str(tmp_path / "1.png"), "a//2.png"]))
    assert [i.path for i in items] == ["1.png", "0.png", "a/2.png"] and [i.index for i in items] == [0, 1, 2]
    assert list_inputs(["0.png", "./0.png", "*.png"]).fingerprint() == list_inputs(["0.png", "1.png"]).fingerprint()
    assert [i.path for i in list_inputs(["**/**/*.png"])] == ["0.png", "1.png", "a/2.png"]  # glob's own repeats
