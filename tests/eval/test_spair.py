"""SPair-71k evaluation: the folder layout, PCK@α per point and per image, the driver, bad input.

The end-to-end tests build an SPair-71k-style folder from real photos and known homography warps
(OpenCV ``warpPerspective``), so every target keypoint and box is exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from dinofeat.errors import InputError
from dinofeat.eval.spair import SPairPair, evaluate_spair, pck_correct, read_spair, summarize

# (category, photo, homography, source keypoints, object box in the source)
_TILT = np.array([[0.9, 0.08, 12.0], [-0.05, 0.95, 8.0], [2e-4, -1e-4, 1.0]])
_ZOOM = np.array([[1.15, 0.0, -20.0], [0.0, 1.1, -10.0], [0.0, 0.0, 1.0]])
_ROTATE = np.array([[0.97, -0.17, 30.0], [0.17, 0.97, -5.0], [0.0, 0.0, 1.0]])
PAIRS = [
    ("cat", "chelsea", _TILT, [[60, 80], [250, 90], [300, 200], [350, 150]], (40, 30, 420, 280)),
    (
        "cat",
        "chelsea",
        _ZOOM,
        [[100, 60], [180, 240], [220, 100], [300, 120], [330, 60], [400, 200]],
        (40, 30, 420, 280),
    ),
    ("person", "astronaut", _ROTATE, [[230, 90], [260, 150], [300, 120], [320, 250], [250, 300]], (140, 20, 380, 500)),
]


def warp_points(homography: np.ndarray, points) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 1, 2)
    return cv2.perspectiveTransform(pts, homography).reshape(-1, 2)


def box_of(homography, box) -> list[float]:
    x1, y1, x2, y2 = box
    corners = warp_points(homography, [[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
    return [*corners.min(axis=0).tolist(), *corners.max(axis=0).tolist()]


def make_spair(root: Path, split: str = "test") -> Path:
    """An SPair-71k-style folder: JPEGImages/<category>/*.jpg and PairAnnotation/<split>/*.json."""
    from skimage import data

    for index, (category, photo, homography, kps, box) in enumerate(PAIRS, start=1):
        image = getattr(data, photo)()
        warped = cv2.warpPerspective(image, homography, (image.shape[1], image.shape[0]))
        folder = root / "JPEGImages" / category
        folder.mkdir(parents=True, exist_ok=True)
        src, trg = f"src_{index:02d}", f"trg_{index:02d}"
        Image.fromarray(image).save(folder / f"{src}.jpg", quality=95)
        Image.fromarray(warped).save(folder / f"{trg}.jpg", quality=95)
        annotation = {
            "pair_id": index,
            "filename": f"{index:06d}-{src}-{trg}:{category}.json",
            "src_imname": f"{src}.jpg",
            "trg_imname": f"{trg}.jpg",
            "src_imsize": [image.shape[1], image.shape[0], 3],
            "trg_imsize": [image.shape[1], image.shape[0], 3],
            "src_bndbox": list(box),
            "trg_bndbox": box_of(homography, box),
            "category": category,
            "src_pose": 0,
            "trg_pose": 0,
            "src_kps": kps,
            "trg_kps": warp_points(homography, kps).tolist(),
            "kps_ids": [str(i) for i in range(len(kps))],
            "mirror": 0,
            "viewpoint_variation": 1,
            "scale_variation": 0,
            "truncation": 0,
            "occlusion": 0,
        }
        pairs = root / "PairAnnotation" / split
        pairs.mkdir(parents=True, exist_ok=True)
        (pairs / annotation["filename"]).write_text(json.dumps(annotation))
    return root


@pytest.fixture(scope="module")
def spair_root(tmp_path_factory) -> Path:
    return make_spair(tmp_path_factory.mktemp("SPair-71k"))


def oracle(pairs: list[SPairPair], shift=lambda pair, points: 0.0):
    """A match_fn that knows each pair's homography (found from its source keypoints)."""
    homographies = {pair.source_kps.tobytes(): PAIRS[i][2] for i, pair in enumerate(pairs)}
    by_kps = {pair.source_kps.tobytes(): pair for pair in pairs}

    def match_fn(image_a, image_b, points_xy):
        key = points_xy.tobytes()
        return warp_points(homographies[key], points_xy) + shift(by_kps[key], points_xy)

    return match_fn


def test_reads_the_layout(spair_root):
    pairs = read_spair(spair_root)
    assert [p.name for p in pairs] == [
        "000001-src_01-trg_01:cat",
        "000002-src_02-trg_02:cat",
        "000003-src_03-trg_03:person",
    ]
    first = pairs[0]
    assert first.category == "cat" and first.split == "test"
    assert first.source_image == spair_root / "JPEGImages" / "cat" / "src_01.jpg"
    assert first.source_kps.shape == (4, 2) and first.source_kps.dtype == np.float64
    np.testing.assert_allclose(first.target_kps, warp_points(_TILT, PAIRS[0][3]))
    np.testing.assert_allclose(first.target_bbox, box_of(_TILT, PAIRS[0][4]))
    np.testing.assert_array_equal(first.source_bbox, PAIRS[0][4])
    assert first.attributes["mirror"] == 0 and first.attributes["viewpoint_variation"] == 1
    assert first.attributes["kps_ids"] == ["0", "1", "2", "3"]
    x1, y1, x2, y2 = first.target_bbox
    assert first.bbox_size == max(x2 - x1, y2 - y1)
    image_a, image_b = first.load_images()
    assert image_a.shape == (300, 451, 3) and image_a.dtype == np.uint8 and image_b.shape == image_a.shape
    # the warp puts source content at the target keypoints (pixel centres at whole numbers)
    for (xs, ys), (xt, yt) in zip(first.source_kps.astype(int), np.round(first.target_kps).astype(int)):
        assert np.abs(image_a[ys, xs].astype(int) - image_b[yt, xt]).mean() < 15
    assert [p.name for p in read_spair(spair_root, limit=2)] == [p.name for p in pairs[:2]]
    assert [p.category for p in read_spair(spair_root, categories=["person"])] == ["person"]


def test_oracle_scores_one_and_the_report(spair_root):
    pairs = read_spair(spair_root)
    done = []
    report = evaluate_spair(
        pairs, oracle(pairs), alphas=(0.1, 0.05), model="oracle", progress=lambda d, n: done.append((d, n))
    )
    assert done == [(1, 3), (2, 3), (3, 3)]
    assert report.overall == {
        "pairs": 3,
        "points": 15,
        "per_point": {"PCK@0.1": 1.0, "PCK@0.05": 1.0},
        "per_image": {"PCK@0.1": 1.0, "PCK@0.05": 1.0},
    }
    assert list(report.categories) == ["cat", "person"]
    assert report.categories["cat"]["points"] == 10
    doc = report.to_json()
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc
    assert (doc["benchmark"], doc["split"], doc["model"], doc["alphas"]) == ("spair-71k", "test", "oracle", [0.1, 0.05])
    entry = doc["pairs"][0]
    assert set(entry) == {
        "name",
        "category",
        "src_imname",
        "trg_imname",
        "src_kps",
        "trg_kps",
        "pred_kps",
        "bbox_size",
        "pck",
    }
    np.testing.assert_allclose(entry["pred_kps"], entry["trg_kps"], atol=1e-3)
    assert entry["pck"] == {"PCK@0.1": 1.0, "PCK@0.05": 1.0}


def test_known_misses_give_known_per_point_and_per_image_pck(spair_root):
    pairs = read_spair(spair_root)
    # points in the left half of the source are sent 1000 px away: pair 1 misses 1 of 4, pair 2 misses 3
    # of 6, pair 3 (astronaut, 512 wide) misses 2 of 5

    def left_half(pair, pts):
        half = 451 / 2 if pair.category == "cat" else 512 / 2
        return np.where(pts[:, :1] < half, [1000.0, 0.0], [0.0, 0.0])

    report = evaluate_spair(pairs, oracle(pairs, left_half))
    fractions = [3 / 4, 3 / 6, 3 / 5]
    assert [r.correct.mean() for r in report.pairs] == pytest.approx(fractions)
    assert report.overall["per_point"]["PCK@0.1"] == pytest.approx((3 + 3 + 3) / 15)
    assert report.overall["per_image"]["PCK@0.1"] == pytest.approx(np.mean(fractions))
    assert report.categories["cat"]["per_point"]["PCK@0.1"] == pytest.approx(6 / 10)
    assert report.categories["cat"]["per_image"]["PCK@0.1"] == pytest.approx((3 / 4 + 3 / 6) / 2)
    assert report.categories["person"]["per_point"]["PCK@0.1"] == pytest.approx(3 / 5)
    table = report.format_table().splitlines()
    assert table[0].split() == ["category", "pairs", "points", "PCK@0.1", "pt", "PCK@0.1", "img"]
    assert table[2].split() == ["cat", "2", "10", "60.0", "62.5"]
    assert table[-1].split() == ["all", "3", "15", "60.0", "61.7"]


def test_a_shift_of_seven_percent_of_the_box_passes_0_1_and_fails_0_05(spair_root):
    pairs = read_spair(spair_root)

    def shift(pair, pts):  # 0.07 of the box's longer side, along a diagonal
        return np.array([0.6, 0.8]) * 0.07 * pair.bbox_size

    report = evaluate_spair(pairs, oracle(pairs, shift), alphas=(0.05, 0.1, 0.2))
    assert report.overall["per_point"] == {"PCK@0.05": 0.0, "PCK@0.1": 1.0, "PCK@0.2": 1.0}
    assert report.overall["per_image"] == {"PCK@0.05": 0.0, "PCK@0.1": 1.0, "PCK@0.2": 1.0}


def _one_point_pair(target_bbox) -> SPairPair:
    """A pair record with one keypoint at the origin and the given target box (no files behind it)."""
    return SPairPair(
        name="p",
        category="c",
        split="test",
        source_image=Path("a"),
        target_image=Path("b"),
        source_kps=np.zeros((1, 2)),
        target_kps=np.zeros((1, 2)),
        target_bbox=np.array(target_bbox, dtype=float),
    )


def test_threshold_is_inclusive_like_dift_and_uses_the_longer_box_side():
    box_size = 200.0  # e.g. trg_bndbox [0, 0, 200, 100]: max(w, h) = 200, PCK@0.1 threshold 20 px
    target = np.array([[50.0, 40.0]] * 3)
    pred = target + [[20.0, 0.0], [12.0, 16.0], [20.001, 0.0]]
    assert pck_correct(pred, target, box_size, (0.1,)).tolist() == [[True, True, False]]
    assert pck_correct([[np.nan, 0.0]], [[0.0, 0.0]], box_size).tolist() == [[False]]
    pair = _one_point_pair(target_bbox=[10.0, 20.0, 210.0, 120.0])
    assert pair.bbox_size == 200.0


def test_summary_per_point_pools_and_per_image_averages():
    from dinofeat.eval.spair import SPairPairResult

    pair = _one_point_pair(target_bbox=[0, 0, 1, 1.0])
    results = [
        SPairPairResult(pair, np.zeros((1, 2)), np.array([[True, False]])),
        SPairPairResult(pair, np.zeros((1, 2)), np.array([[True, True, True, True, True, True, True, True]])),
    ]
    summary = summarize(results, (0.1,))
    assert summary["per_point"]["PCK@0.1"] == pytest.approx(9 / 10)
    assert summary["per_image"]["PCK@0.1"] == pytest.approx((0.5 + 1.0) / 2)


def test_missing_folder_or_annotations_are_one_line_errors(tmp_path, spair_root):
    cases = [
        (tmp_path / "nowhere", {}, "SPair-71k folder not found"),
        (tmp_path, {}, "no SPair-71k annotations: .*PairAnnotation/test does not exist"),
        (spair_root, {"split": "val"}, "no SPair-71k annotations: .*PairAnnotation/val does not exist"),
        (spair_root, {"split": "train"}, "unknown SPair-71k split 'train'; use one of trn, val, test"),
        (spair_root, {"limit": 0}, "limit must be a positive whole number"),
        (spair_root, {"categories": ["dog"]}, "no SPair-71k pairs of categories dog"),
    ]
    (tmp_path / "empty" / "PairAnnotation" / "test").mkdir(parents=True)
    cases.append((tmp_path / "empty", {}, "no .json files in"))
    for root, kwargs, message in cases:
        with pytest.raises(InputError, match=message) as info:
            read_spair(root, **kwargs)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda a: "{not json", "cannot read SPair-71k annotation .*bad.json"),
        (lambda a: json.dumps([a]), "expected a JSON object, got list"),
        (lambda a: json.dumps({k: v for k, v in a.items() if k != "trg_bndbox"}), "no trg_bndbox"),
        (lambda a: json.dumps(dict(a, trg_kps=a["trg_kps"][:-1])), "4 src_kps but 3 trg_kps"),
        (lambda a: json.dumps(dict(a, src_kps=[[1, 2, 3]] * 4)), r"src_kps must be a list of \[x, y\] numbers"),
        (lambda a: json.dumps(dict(a, src_kps=[], trg_kps=[])), "no keypoints"),
        (lambda a: json.dumps(dict(a, trg_bndbox=[10, 10, 5, 20])), "trg_bndbox must be"),
        (lambda a: json.dumps(dict(a, trg_imname="gone.jpg")), "SPair-71k image not found: .*gone.jpg"),
        (lambda a: json.dumps(dict(a, src_imname="../../x.jpg")), "src_imname must be a plain file"),
    ],
)
def test_bad_annotations_are_one_line_errors_naming_the_file(tmp_path, spair_root, edit, message):
    root = tmp_path / "SPair"
    (root / "PairAnnotation" / "test").mkdir(parents=True)
    (root / "JPEGImages").symlink_to(spair_root / "JPEGImages")
    source = next((spair_root / "PairAnnotation" / "test").glob("000001-*.json"))
    (root / "PairAnnotation" / "test" / "bad.json").write_text(edit(json.loads(source.read_text())))
    with pytest.raises(InputError, match=message) as info:
        read_spair(root)
    assert "\n" not in str(info.value)


def test_bad_driver_input(spair_root):
    pairs = read_spair(spair_root, limit=1)
    with pytest.raises(InputError, match="no SPair-71k pairs to evaluate"):
        evaluate_spair([], oracle(pairs))
    with pytest.raises(InputError, match=r"alphas must be one or more numbers in \(0, 1\]"):
        evaluate_spair(pairs, oracle(pairs), alphas=(0.1, 0.0))
    with pytest.raises(InputError, match="alphas repeat"):
        evaluate_spair(pairs, oracle(pairs), alphas=(0.1, 0.1))
    with pytest.raises(InputError, match=r"match_fn returned float64 \(2, 4\), expected float \(4, 2\)"):
        evaluate_spair(pairs, lambda a, b, pts: pts.T)
    (spair_root / "broken.jpg").write_bytes(b"not an image")
    from dinofeat.eval.spair import _load_image

    with pytest.raises(InputError, match="cannot read SPair-71k image .*broken.jpg"):
        _load_image(spair_root / "broken.jpg")
