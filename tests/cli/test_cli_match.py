"""``dinofeat match`` through ``main(argv)``: JSON contract, picture, query sources, every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import save_png
from dinofeat.cli import main
from dinofeat.drawing import match_canvas_layout

W, H = 140, 112  # --resolution 56 gives a 4 x 5 patch grid (the model sees 70 x 56)


@pytest.fixture
def model_args(vits14_checkpoint) -> list[str]:
    return ["--weights", str(vits14_checkpoint), "--resolution", "56", "--device", "cpu", "--precision", "fp32"]


@pytest.fixture
def images(tmp_path) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 256, (H + 28, W + 28, 3), dtype=np.uint8)
    a = save_png(tmp_path / "a.png", scene[:H, :W])
    b = save_png(tmp_path / "b.png", scene[28:, 28:])  # B = A moved up-left by 28 px
    return str(a), str(b)


def _files(folder) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_json_contract_order_and_picture(tmp_path, images, model_args):
    out, js = tmp_path / "m.png", tmp_path / "m.json"
    points = [(100.0, 80.0), (30.5, 40.25), (70.0, 20.0)]
    argv = ["match", *images, "-o", str(out), "--json", str(js), *model_args]
    for x, y in points:
        argv += ["--point", f"{x},{y}"]
    assert main(argv) == 0
    doc = json.loads(js.read_text())
    assert list(doc)[:4] == ["model", "image_a", "image_b", "matches"]
    assert doc["model"] == "dinov2_vits14"
    assert doc["image_a"] == {"path": images[0], "size": [W, H]}
    assert doc["image_b"] == {"path": images[1], "size": [W, H]}
    assert [m["source"] for m in doc["matches"]] == [list(p) for p in points]  # query order
    for m in doc["matches"]:
        assert list(m)[:4] == ["source", "target", "score", "mutual"]
        assert isinstance(m["mutual"], bool) and -1 <= m["score"] <= 1
        assert len(m["target"]) == 2 and 0 <= m["target"][0] < W and 0 <= m["target"][1] < H
        assert m["inlier"] is None and m["kept"] is True
    assert doc["settings"]["queries"] == "points" and doc["settings"]["resolution"] == 56
    height, _, _, scale_b, offset_b = match_canvas_layout((W, H), (W, H))
    with Image.open(out) as picture:
        assert picture.size == (offset_b + round(W * scale_b), height)


def test_a_point_with_a_leading_minus_is_a_value(tmp_path, images, model_args):
    """``--point -0.5,60`` (the left edge of the first pixel column) is a position, not an option."""
    js = tmp_path / "m.json"
    assert main(["match", *images, "--point", "-0.5,60", "--json", str(js), *model_args]) == 0
    assert [m["source"] for m in json.loads(js.read_text())["matches"]] == [[-0.5, 60.0]]


def test_points_file_json_and_csv_and_stdout(tmp_path, images, model_args, capsys):
    as_json = tmp_path / "p.json"
    as_json.write_text("[[10, 20], [30.5, 40]]")
    as_csv = tmp_path / "p.csv"
    as_csv.write_text("x,y\n10,20\n30.5,40\n")
    results = []
    for path in (as_json, as_csv):
        assert main(["match", *images, "--points-file", str(path), *model_args]) == 0
        results.append(json.loads(capsys.readouterr().out))  # no -o / --json: JSON on stdout
    assert results[0]["matches"] == results[1]["matches"]
    assert [m["source"] for m in results[0]["matches"]] == [[10, 20], [30.5, 40]]


def test_grid_auto_checks_and_heatmap(tmp_path, images, model_args):
    js = tmp_path / "g.json"
    assert (
        main(
            [
                "match",
                *images,
                "--grid",
                "3",
                "--json",
                str(js),
                "--mutual",
                "--ratio",
                "0.95",
                "--ransac",
                "homography",
                "--pca-dim",
                "16",
                "--color-by",
                "score",
                *model_args,
            ]
        )
        == 0
    )
    doc = json.loads(js.read_text())
    assert len(doc["matches"]) == 9 and doc["settings"]["grid"] == 3
    for m in doc["matches"]:
        assert isinstance(m["inlier"], bool) and isinstance(m["ratio"], float)
        assert m["kept"] == (m["mutual"] and m["ratio"] < 0.95 and m["inlier"])
    assert main(["match", *images, "--auto", "5", "--json", str(js), *model_args]) == 0
    assert len(json.loads(js.read_text())["matches"]) <= 5
    heat = tmp_path / "heat.png"
    assert (
        main(["match", *images, "--point", "70,56", "--heatmap", "-o", str(heat), "--height", "200", *model_args]) == 0
    )
    with Image.open(heat) as picture:
        assert picture.size[1] == 200


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--point", "500,10"], "outside image A"),
        (["--point", "-1,60"], "outside image A"),  # a value with a leading minus, not an option
        (["--point", "nan,3"], "not a finite position"),
        (["--point", "1;2"], "X,Y"),
        (["--point", "1,2,3"], "X,Y"),
        (["--points-file", "missing.json"], "not found"),
        (["--points-file", "{bad}"], "not valid JSON"),
        (["--points-file", "{pairs}"], "not a finite x, y pair"),
        (["--points-file", "{csv}"], "not a finite x, y pair"),
        (["--points-file", "{empty}"], "empty"),
        (["--point", "1,2", "--grid", "3"], "one way"),
        (["--heatmap", "--point", "1,2", "--point", "3,4"], "exactly one query point"),
        (["--heatmap", "--point", "1,2", "--no-picture"], "give -o"),
        (["--ratio", "-1"], "--ratio"),
        (["--compile", "yes"], "--compile: invalid choice: 'yes'"),
        (["-o", "{dir}/x.gif"], ".png"),
        (["-o", "/dev/null/x.png"], "is not a folder"),
    ],
)
def test_bad_inputs_one_line_error_no_outputs(tmp_path, images, model_args, capsys, extra, message):
    (tmp_path / "bad.json").write_text("[[1, 2], ")
    (tmp_path / "pairs.json").write_text("[[1, 2], [3]]")
    (tmp_path / "bad.csv").write_text("1,2\n3,abc\n")
    (tmp_path / "empty.json").write_text("  \n")
    names = {"{bad}": "bad.json", "{pairs}": "pairs.json", "{csv}": "bad.csv", "{empty}": "empty.json"}
    extra = [str(tmp_path / names[e]) if e in names else e.replace("{dir}", str(tmp_path)) for e in extra]
    outputs = [] if "--no-picture" in extra else ["-o", str(tmp_path / "out.png")]
    extra = [e for e in extra if e != "--no-picture"]
    if "-o" in extra:
        outputs = []
    before = _files(tmp_path)
    rc = main(["match", *images, *extra, *outputs, "--json", str(tmp_path / "out.json"), *model_args])
    err = capsys.readouterr().err
    assert rc != 0
    assert message in err and len(err.strip().splitlines()) == 1
    assert _files(tmp_path) == before  # nothing written


@pytest.mark.parametrize(
    "extra, ways",
    [
        (["--point", "1,2", "--grid", "3"], "--point/--points-file and --grid"),
        (["--points-file", "{pairs}", "--auto", "5"], "--point/--points-file and --auto"),
        (["--grid", "3", "--auto", "5"], "--grid and --auto"),
    ],
)
def test_query_points_in_one_way_only_before_the_model_loads(tmp_path, images, capsys, monkeypatch, extra, ways):
    import dinofeat.features.extractor

    monkeypatch.setattr(dinofeat.features.extractor, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "pairs.json").write_text("[[1, 2]]")
    extra = [str(tmp_path / "pairs.json") if e == "{pairs}" else e for e in extra]
    assert main(["match", *images, *extra, "--json", str(tmp_path / "o.json"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == f"dinofeat match: error: give query points in one way only, got {ways}\n"


def test_unreadable_image_and_bad_pca_dim(tmp_path, images, model_args, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    before = _files(tmp_path)
    assert main(["match", images[0], str(broken), "--json", str(tmp_path / "o.json"), *model_args]) == 2
    assert main(["match", *images, "--pca-dim", "9999", "--json", str(tmp_path / "o.json"), *model_args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not an image" in err[0] and "pca" in err[1]
    assert _files(tmp_path) == before
