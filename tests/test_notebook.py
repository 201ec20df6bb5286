"""Results in notebooks: short reprs (never tensors), pictures where a picture says more,
``to_dict()`` (JSON-able, the command line's layout) and ``to_pandas()``; and
``examples/quickstart.ipynb``, executed with random weights."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import random_vit
from dinofeat.colorize import pca_images
from dinofeat.errors import DinofeatError
from dinofeat.features.extractor import Extractor
from dinofeat.io.images import load_image
from dinofeat.jobs.extract import ExtractJob
from dinofeat.jobs.match import MatchJob
from dinofeat.options import MatchOptions
from dinofeat.tracking import track_video
from dinofeat.tracks import Tracks

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def extractor() -> Extractor:
    return Extractor(random_vit("dinov2_vits14", depth=1), resolution=56, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def match_result(extractor):
    a, b = EXAMPLES / "astronaut.jpg", EXAMPLES / "astronaut_warped.jpg"
    return MatchJob(a, b, options=MatchOptions(auto=8, ransac="homography")).run(extractor)


@pytest.fixture(scope="module")
def pca_result(extractor):
    return pca_images([load_image(EXAMPLES / "chelsea.jpg"), load_image(EXAMPLES / "coffee.jpg")], extractor)


@pytest.fixture(scope="module")
def tracks(extractor) -> Tracks:
    return track_video(EXAMPLES / "pan.mp4", [[0, 160.0, 120.0], [2, 80.0, 60.0]], extractor)


def _short(text: str) -> bool:
    return len(text) < 240 and "\n" not in text and "tensor(" not in text and "array(" not in text


def test_reprs_are_one_short_line_with_shapes_counts_and_model(extractor, match_result, pca_result, tracks, tmp_path):
    fmap, n = match_result.features_a, len(match_result.matches)
    extracted = ExtractJob([EXAMPLES / "chelsea.jpg"], output=tmp_path / "f.npz").run(extractor)
    shown = {
        "Extractor": (extractor, ["dinov2_vits14", "cpu", "fp32", "resolution 56"]),
        "FeatureMap": (fmap, [f"{fmap.grid_hw[1]}x{fmap.grid_hw[0]} patches x 384", "image 512x512"]),
        "Matches": (match_result.matches, [f"{n} matches", "kept", "A 512x512 -> B 512x512", "homography"]),
        "MatchResult": (match_result, [f"{n} matches", "astronaut_warped.jpg", "dinov2_vits14"]),
        "FeaturePCA": (pca_result.pca, ["3 components of 384", "model dinov2_vits14"]),
        "PCAResult": (pca_result, ["2 images", "foreground"]),
        "PCAColors": (pca_result.colors[0], ["451x300", "foreground"]),
        "Tracks": (tracks, ["2 points x 36 frames", "visible"]),
        "ExtractResult": (extracted, ["1 image,", "f.npz"]),
    }
    for name, (value, parts) in shown.items():
        text = repr(value)
        assert _short(text) and text.startswith(f"{name}("), text
        assert all(part in text for part in parts), (text, parts)


def test_pictures_for_matches_pca_and_tracks(match_result, pca_result, tracks):
    import io

    from PIL import Image

    for value in (match_result, pca_result, pca_result.colors[0], tracks):
        data = value._repr_png_()
        assert data.startswith(PNG)
        assert min(Image.open(io.BytesIO(data)).size) > 100
    frame = Image.open(io.BytesIO(tracks._repr_png_()))
    assert frame.size == (320, 240)  # the first frame, at the video's size
    assert np.asarray(frame).tobytes() != tracks.first_frame.tobytes()  # with the points drawn
    no_frame = Tracks.from_steps(tracks.queries_txy, [])
    assert no_frame._repr_png_() is None  # nothing to show: the notebook prints the repr


def test_to_dict_is_json_and_the_command_lines_layout(match_result, pca_result, tracks):
    document = match_result.to_dict()
    assert document == match_result.document and json.loads(json.dumps(document)) == document
    assert match_result.matches.to_dict()["matches"] == document["matches"]
    assert match_result.matches.to_dict()["geometry"] == document["geometry"]
    described = pca_result.to_dict()
    assert json.loads(json.dumps(described)) == described
    assert described["components"] == 3 and [i["size"] for i in described["images"]] == [[451, 300], [600, 400]]
    assert json.loads(json.dumps(tracks.to_dict()))["frame_indices"] == list(range(36))


def test_to_pandas_tables_match_the_json_and_csv(match_result, tracks, tmp_path):
    matches = match_result.to_pandas()
    assert list(matches.columns[:4]) == ["source_x", "source_y", "target_x", "target_y"]
    assert len(matches) == len(match_result.matches) and matches["kept"].tolist() == [
        m["kept"] for m in match_result.document["matches"]
    ]
    table = tracks.to_pandas()
    tracks.write_csv(tmp_path / "t.csv")
    with open(tmp_path / "t.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(table.columns) == list(rows[0]) and len(table) == len(rows) == 2 * 36
    for k in (0, 37, 71):
        assert int(table["track"][k]) == int(rows[k]["track"]) and int(table["frame"][k]) == int(rows[k]["frame"])
        assert float(table["x"][k]) == pytest.approx(float(rows[k]["x"]), abs=1e-3)
        assert bool(table["visible"][k]) == bool(int(rows[k]["visible"]))


def test_to_pandas_without_pandas_says_how_to_install_it(match_result, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed
    with pytest.raises(DinofeatError, match="pip install pandas"):
        match_result.to_pandas()


def test_the_quickstart_notebook_runs(vits14_checkpoint, monkeypatch):
    """examples/quickstart.ipynb, executed as Jupyter runs it (a kernel, cell by cell), with
    random weights given the documented way (DINOFEAT_WEIGHTS) at a low resolution."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("DINOFEAT_WEIGHTS", str(vits14_checkpoint))
    monkeypatch.setenv("DINOFEAT_RESOLUTION", "56")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny inputs: one thread is fastest, and shares the cores
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1] / "src"), prepend=":")
    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}
    ).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    shown = [{kind for output in cell.outputs for kind in output.get("data", {})} for cell in code]
    pictures = [cell.source.split("\n")[-1] for cell, kinds in zip(code, shown) if "image/png" in kinds]
    assert pictures == [
        "result  # shown as the picture `dinofeat match -o` writes",
        "pca",
        "tracks  # the first frame with the points",
    ]
    texts = [output["data"]["text/plain"] for cell in code for output in cell.outputs if "data" in output]
    assert texts[0].startswith("Extractor(dinov2_vits14") and all("tensor(" not in text for text in texts)
    assert sum("text/html" in kinds for kinds in shown) >= 2  # the DataFrames
