"""MatchJob: check() refuses before any model work (errors name fields), run() returns a MatchResult,
writes the picture and the JSON atomically (all or none), and the CLI's bytes come from it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import save_png
from dinofeat.drawing import draw_matches
from dinofeat.errors import InputError
from dinofeat.jobs.match import MatchJob, MatchResult
from dinofeat.options import MatchDrawingOptions, MatchOptions

W, H = 140, 112


@pytest.fixture
def images(tmp_path) -> tuple[str, str]:
    """A and B as PNG files: B is A moved up-left by 28 pixels."""
    scene = np.random.default_rng(0).integers(0, 256, (H + 28, W + 28, 3), dtype=np.uint8)
    return str(save_png(tmp_path / "a.png", scene[:H, :W])), str(save_png(tmp_path / "b.png", scene[28:, 28:]))


def _files(folder) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"output": "m.gif"}, r"^the picture \(output\) must end in \.png, \.jpg, \.jpeg or \.webp, got .*m\.gif$"),
        ({"json": "m.csv"}, r"^json must end in \.json, got .*m\.csv$"),
        ({"output": "a.png"}, r"^output .*a\.png is the input .*a\.png: refusing to overwrite it$"),
        ({"output": "a.png/m.png"}, r"^output folder .*a\.png cannot be made: .*a\.png is not a folder$"),
        (
            {"points_xy": [[1.0, 2.0]], "options": MatchOptions(grid=3)},
            r"^give query points in one way only, got points_xy/points_file and grid$",
        ),
        ({"points_file": "missing.json"}, r"^points file not found"),
        (
            {"points_xy": [[1, 2], [3, 4]], "drawing": MatchDrawingOptions(heatmap=True), "output": "m.png"},
            r"^heatmap needs exactly one query point \(points_xy=X,Y\)$",
        ),
        (
            {"points_xy": [[1, 2]], "drawing": MatchDrawingOptions(heatmap=True)},
            r"^heatmap draws into the picture: give output=OUT\.png$",
        ),
        ({"points_xy": [[500.0, 10.0]]}, r"outside image A \(.*a\.png\)"),
        ({"points_xy": [["x", 1]]}, r"^query points must be a list of \(x, y\) number pairs$"),
        ({"image_b": "missing.png"}, r"^image not found: .*missing\.png$"),
    ],
)
def test_check_refuses_before_any_model_work(tmp_path, images, unused_source, kwargs, message):
    for key in ("output", "json", "points_file", "image_b"):
        if key in kwargs:
            kwargs[key] = str(tmp_path / kwargs[key])
    job = MatchJob(**{"image_a": images[0], "image_b": images[1], **kwargs})
    before = _files(tmp_path)
    with pytest.raises(InputError, match=message):
        job.check()
    with pytest.raises(InputError, match=message):
        job.run(unused_source)  # run() checks first when check() was not called
    assert _files(tmp_path) == before


def test_run_writes_picture_and_json_and_returns_what_it_wrote(tmp_path, images, tiny_extractor):
    out, js = tmp_path / "m.png", tmp_path / "m.json"
    points = [(100.0, 80.0), (30.5, 40.25)]
    job = MatchJob(*images, points_xy=points, output=out, json=js, options=MatchOptions(require_mutual=True))
    job.check()
    result = job.run(tiny_extractor)
    assert isinstance(result, MatchResult) and result.written == (out, js)
    assert result.matches.source_xy.tolist() == [list(p) for p in points]
    assert json.loads(js.read_text()) == result.document and js.read_text() == result.json_text()
    assert result.document["image_a"] == {"path": images[0], "size": [W, H]}
    assert list(result.document) == ["model", "image_a", "image_b", "matches", "geometry", "settings", "weights"]
    with Image.open(out) as picture:
        assert picture.size[1] == 360  # the common height, within 360..1440
    kept = int(result.matches.keep.sum())
    assert result.summary() == f"2 matches, {kept} kept (mutual) -> {out}, {js}"
    assert _files(tmp_path) == {"a.png", "b.png", "m.png", "m.json"}  # no temporary file left


def test_run_without_outputs_writes_nothing(tmp_path, tiny_extractor):
    image = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    result = MatchJob(image, image, options=MatchOptions(grid=2), names=("left", "right")).run(tiny_extractor)
    assert result.written == () and result.summary().endswith("-> standard output")
    assert result.document["image_b"]["path"] == "right"
    assert result.document["settings"]["queries"] == "grid" and len(result.matches) == 4


def test_the_query_checks_run_once_in_check(tmp_path, images, tiny_extractor, monkeypatch):
    import dinofeat.jobs.match

    reads, loads = [], []
    read_points, load_image = dinofeat.jobs.match.read_points_file, dinofeat.jobs.match.load_image
    monkeypatch.setattr(dinofeat.jobs.match, "read_points_file", lambda p: reads.append(p) or read_points(p))
    monkeypatch.setattr(dinofeat.jobs.match, "load_image", lambda p: loads.append(p) or load_image(p))
    (tmp_path / "pts.csv").write_text("x,y\n10,20\n")
    job = MatchJob(*images, points_file=tmp_path / "pts.csv", json=tmp_path / "m.json")
    job.check()
    result = job.run(tiny_extractor)
    assert len(reads) == 1 and loads == list(images)
    assert result.matches.source_xy.tolist() == [[10.0, 20.0]]


def test_a_failed_write_leaves_no_output(tmp_path, images, tiny_extractor, monkeypatch):
    import dinofeat.jobs.match

    def broken(path, image):
        raise OSError("disk full")

    monkeypatch.setattr(dinofeat.jobs.match, "save_image", broken)
    (tmp_path / "m.json").write_text("previous")
    job = MatchJob(*images, points_xy=[[10, 10]], output=tmp_path / "m.png", json=tmp_path / "m.json")
    with pytest.raises(OSError, match="disk full"):
        job.run(tiny_extractor)
    assert (tmp_path / "m.json").read_text() == "previous"
    assert _files(tmp_path) == {"a.png", "b.png", "m.json"}


def test_the_match_picture_labels_a_and_b_with_their_file_names(tmp_path, images, tiny_extractor):
    out = tmp_path / "m.png"
    result = MatchJob(*images, points_xy=[(100.0, 80.0)], output=out).run(tiny_extractor)
    written = np.asarray(Image.open(out).convert("RGB"))
    plain = draw_matches(result.image_a, result.image_b, result.matches, mask=result.matches.keep.numpy())
    assert written.shape == plain.shape
    assert not np.array_equal(written[2:25, 2:80], plain[2:25, 2:80])  # "A: a.png" in A's corner
    assert np.array_equal(written[-40:, :80], plain[-40:, :80])  # the rest as before
