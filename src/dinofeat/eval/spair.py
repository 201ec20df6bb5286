"""SPair-71k semantic-correspondence evaluation: the official layout, PCK@α and a driver.

Layout (as distributed)::

    SPair-71k/
      JPEGImages/<category>/<imname>.jpg
      PairAnnotation/{trn,val,test}/<pair id>-<src>-<trg>:<category>.json

A pair file holds ``src_imname``, ``trg_imname``, ``category``, ``src_kps`` and ``trg_kps``
(lists of ``[x, y]``, the keypoints visible in both images, in the same order), ``trg_bndbox``
(``[x1, y1, x2, y2]``), and also ``src_bndbox``, ``src_imsize`` / ``trg_imsize`` (``[W, H, 3]``),
``kps_ids``, ``mirror``, ``viewpoint_variation``, ``scale_variation``, ``truncation``,
``occlusion``. :func:`read_spair` keeps the first five as arrays and the rest in
:attr:`SPairPair.attributes`.

Protocol (reproducing DIFT's ``eval_spair.py``, Tsingularity/dift, written independently): each
source keypoint is matched into the target image; a match is correct when its distance to the
target keypoint is at most ``α · max(w, h)`` of the target box (``w = x2 - x1``, ``h = y2 - y1``,
original target pixels). **Per point** PCK pools all keypoints; **per image** PCK is the mean over
pairs of each pair's fraction; both overall and per category. DIFT counts ``distance <= threshold``;
sd-dino's ``pck_spair_pascal.py`` counts ``<``; for real predictions the two differ only on an
exact tie, and this module follows DIFT.

Coordinates: SPair keypoints are whole-pixel positions annotated on the original images, and DIFT
reads a feature map at ``[y, x]`` of a keypoint, i.e. a keypoint names the pixel's centre. That is
dinofeat's convention (the centre of the top-left pixel is (0, 0)), so keypoints are used as they
are, with no half-pixel shift (a shift would cancel in the distance anyway; it only matters for
where ``match_fn`` samples features). Images are read without applying EXIF orientation, as the
annotations were made on the stored pixels.

Wiring a matcher: ``match_fn(image_a, image_b, points_xy) -> target_xy``, images ``(H, W, 3) uint8``
at their original size, ``points_xy`` ``(K, 2)`` float64 source pixels, the answer ``(K, 2)``
target pixels. dinofeat's :mod:`~dinofeat.matching` works in exactly these coordinates.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dinofeat.errors import InputError

log = logging.getLogger(__name__)

SPLITS = ("trn", "val", "test")
DEFAULT_SPLIT = "test"
DEFAULT_ALPHAS = (0.1,)
#: Pair-file fields kept in :attr:`SPairPair.attributes` when present.
ATTRIBUTE_FIELDS = (
    "pair_id",
    "src_imsize",
    "trg_imsize",
    "kps_ids",
    "mirror",
    "viewpoint_variation",
    "scale_variation",
    "truncation",
    "occlusion",
)

MatchFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


# -- reading ------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SPairPair:
    """One annotated image pair.

    Attributes:
        name: the annotation file's stem, e.g. ``"000001-2008_001546-2008_004704:aeroplane"``.
        category: object category (also the image folder).
        split: ``"trn"``, ``"val"`` or ``"test"``.
        source_image: path of the source image; target_image: of the target image.
        source_kps: ``(K, 2)`` float64 ``x, y`` source pixels (pixel centres, dinofeat convention).
        target_kps: ``(K, 2)`` float64, the same keypoints in the target image.
        target_bbox: ``(4,)`` float64 ``x1, y1, x2, y2`` of the target object, target pixels.
        source_bbox: the same for the source object, or None when absent.
        attributes: the other fields of the file among :data:`ATTRIBUTE_FIELDS`.
    """

    name: str
    category: str
    split: str
    source_image: Path
    target_image: Path
    source_kps: np.ndarray
    target_kps: np.ndarray
    target_bbox: np.ndarray
    source_bbox: np.ndarray | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def bbox_size(self) -> float:
        """``max(w, h)`` of the target box in pixels, the unit of the PCK threshold."""
        x1, y1, x2, y2 = self.target_bbox
        return float(max(x2 - x1, y2 - y1))

    def load_images(self) -> tuple[np.ndarray, np.ndarray]:
        """Source and target as ``(H, W, 3) uint8`` RGB at their stored size."""
        return _load_image(self.source_image), _load_image(self.target_image)


def read_spair(
    root: str | os.PathLike,
    *,
    split: str = DEFAULT_SPLIT,
    limit: int | None = None,
    categories: Iterable[str] | None = None,
) -> list[SPairPair]:
    """Read the pair annotations of one split of an SPair-71k folder.

    Pair files are read in file-name order (pair-id order); ``categories`` keeps only those
    categories and ``limit`` stops after that many pairs. Image files are checked to exist.
    Missing folders, no annotations, bad JSON or missing fields raise :class:`InputError` naming
    the file.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"SPair-71k folder not found: {root}")
    if split not in SPLITS:
        raise InputError(f"unknown SPair-71k split {split!r}; use one of {', '.join(SPLITS)}")
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
        raise InputError(f"limit must be a positive whole number of pairs, got {limit!r}")
    folder = root / "PairAnnotation" / split
    if not folder.is_dir():
        raise InputError(f"no SPair-71k annotations: {folder} does not exist (is {root} the SPair-71k folder?)")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise InputError(f"no SPair-71k annotations: no .json files in {folder}")
    wanted = None if categories is None else set(categories)
    pairs = []
    for path in files:
        pair = _read_pair(path, root, split)
        if wanted is not None and pair.category not in wanted:
            continue
        pairs.append(pair)
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise InputError(f"no SPair-71k pairs of categories {', '.join(sorted(wanted or ()))} in {folder}")
    return pairs


def _read_pair(path: Path, root: Path, split: str) -> SPairPair:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read SPair-71k annotation {path}: {_one_line(err)}") from None
    if not isinstance(data, dict):
        raise InputError(f"bad SPair-71k annotation {path}: expected a JSON object, got {type(data).__name__}")
    missing = [
        key for key in ("src_imname", "trg_imname", "category", "src_kps", "trg_kps", "trg_bndbox") if key not in data
    ]
    if missing:
        raise InputError(f"bad SPair-71k annotation {path}: no {', '.join(missing)}")
    names = {key: data[key] for key in ("src_imname", "trg_imname", "category")}
    bad = [
        key
        for key, value in names.items()
        if not isinstance(value, str) or not value or "/" in value or "\\" in value or value in (".", "..")
    ]
    if bad:
        raise InputError(f"bad SPair-71k annotation {path}: {', '.join(bad)} must be a plain file or folder name")
    source_kps = _points(data["src_kps"], "src_kps", path)
    target_kps = _points(data["trg_kps"], "trg_kps", path)
    if len(source_kps) != len(target_kps):
        raise InputError(f"bad SPair-71k annotation {path}: {len(source_kps)} src_kps but {len(target_kps)} trg_kps")
    if len(source_kps) == 0:
        raise InputError(f"bad SPair-71k annotation {path}: no keypoints")
    target_bbox = _bbox(data["trg_bndbox"], "trg_bndbox", path)
    source_bbox = _bbox(data["src_bndbox"], "src_bndbox", path) if "src_bndbox" in data else None
    category = names["category"]
    images = root / "JPEGImages" / category
    source_image, target_image = images / names["src_imname"], images / names["trg_imname"]
    for image in (source_image, target_image):
        if not image.is_file():
            raise InputError(f"SPair-71k image not found: {image} (named in {path.name})")
    return SPairPair(
        name=path.stem,
        category=category,
        split=split,
        source_image=source_image,
        target_image=target_image,
        source_kps=source_kps,
        target_kps=target_kps,
        target_bbox=target_bbox,
        source_bbox=source_bbox,
        attributes={key: data[key] for key in ATTRIBUTE_FIELDS if key in data},
    )


def _points(value: Any, key: str, path: Path) -> np.ndarray:
    try:
        points = np.asarray(value, dtype=np.float64).reshape(-1, 2) if isinstance(value, list) else None
    except (TypeError, ValueError):
        points = None
    if points is None or not all(isinstance(p, list) and len(p) == 2 for p in value) or not np.isfinite(points).all():
        raise InputError(f"bad SPair-71k annotation {path}: {key} must be a list of [x, y] numbers")
    return points


def _bbox(value: Any, key: str, path: Path) -> np.ndarray:
    try:
        box = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        box = None
    if box is None or box.shape != (4,) or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
        raise InputError(f"bad SPair-71k annotation {path}: {key} must be [x1, y1, x2, y2] with x2 > x1, y2 > y1")
    return box


def _load_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad files
        raise InputError(f"cannot read SPair-71k image {path}: {_one_line(err)}") from None


# -- metric -------------------------------------------------------------------------------------
def pck_correct(pred_xy, target_xy, bbox_size: float, alphas: Sequence[float] = DEFAULT_ALPHAS) -> np.ndarray:
    """``(A, K)`` bool: keypoint ``k`` is within ``alphas[a] * bbox_size`` pixels (``<=``, as DIFT).

    A non-finite prediction is never correct.

    >>> pck_correct([[10.0, 0.0], [0.0, 25.0]], [[0.0, 0.0], [0.0, 0.0]], 200, (0.05, 0.1)).astype(int)
    array([[1, 0],
           [1, 0]])
    """
    pred = np.asarray(pred_xy, dtype=np.float64).reshape(-1, 2)
    target = np.asarray(target_xy, dtype=np.float64).reshape(-1, 2)
    if pred.shape != target.shape:
        raise InputError(f"{len(pred)} predicted keypoints for {len(target)} target keypoints")
    distance = np.linalg.norm(pred - target, axis=1)
    thresholds = np.asarray(alphas, dtype=np.float64)[:, None] * float(bbox_size)
    return distance[None, :] <= thresholds


def pck_key(alpha: float) -> str:
    """The name of PCK at ``alpha``: ``"PCK@0.1"``."""
    return f"PCK@{alpha:g}"


# -- the driver ---------------------------------------------------------------------------------
@dataclass
class SPairPairResult:
    """One evaluated pair.

    Attributes:
        pair: the annotation.
        pred_kps: ``(K, 2)`` float64 predicted target pixels.
        correct: ``(A, K)`` bool, one row per α.
    """

    pair: SPairPair
    pred_kps: np.ndarray
    correct: np.ndarray

    def to_json(self, alphas: Sequence[float]) -> dict:
        """``{"name", "category", "src_imname", "trg_imname", "src_kps", "trg_kps", "pred_kps",
        "bbox_size", "pck": {"PCK@α": fraction}}`` (coordinates rounded to 1/1000 pixel)."""
        return {
            "name": self.pair.name,
            "category": self.pair.category,
            "src_imname": self.pair.source_image.name,
            "trg_imname": self.pair.target_image.name,
            "src_kps": _json_points(self.pair.source_kps),
            "trg_kps": _json_points(self.pair.target_kps),
            "pred_kps": _json_points(self.pred_kps),
            "bbox_size": self.pair.bbox_size,
            "pck": {pck_key(a): float(row.mean()) for a, row in zip(alphas, self.correct)},
        }


@dataclass
class SPairReport:
    """The result of :func:`evaluate_spair`.

    Attributes:
        alphas: the PCK thresholds, as fractions of the target box's longer side.
        model: free text naming the matcher, or None.
        pairs: one :class:`SPairPairResult` per pair, in input order.
        overall: :func:`summarize` over all pairs.
        categories: category -> :func:`summarize` over its pairs, categories sorted by name.
    """

    alphas: tuple[float, ...]
    model: str | None
    pairs: list[SPairPairResult]
    overall: dict[str, Any]
    categories: dict[str, dict[str, Any]]

    def to_json(self) -> dict:
        """The evaluation document (a contract for the CLI's ``--json``)::

            {"benchmark": "spair-71k", "split": "test" | [...], "model": str | null,
             "alphas": [0.1, ...],
             "threshold": "alpha * max(w, h) of trg_bndbox, target pixels; correct if distance <= threshold",
             "overall": {"pairs": n, "points": n, "per_point": {"PCK@0.1": f}, "per_image": {"PCK@0.1": f}},
             "categories": {category: {same as overall}},
             "pairs": [{"name", "category", "src_imname", "trg_imname", "src_kps", "trg_kps",
                        "pred_kps", "bbox_size", "pck": {"PCK@0.1": f}}, ...]}

        Fractions are in ``[0, 1]``; keypoints in original pixels (pixel centres at whole numbers).
        """
        splits = sorted({result.pair.split for result in self.pairs})
        return {
            "benchmark": "spair-71k",
            "split": splits[0] if len(splits) == 1 else splits,
            "model": self.model,
            "alphas": list(self.alphas),
            "threshold": "alpha * max(w, h) of trg_bndbox, target pixels; correct if distance <= threshold",
            "overall": self.overall,
            "categories": self.categories,
            "pairs": [result.to_json(self.alphas) for result in self.pairs],
        }

    def format_table(self) -> str:
        """Plain-text table: one row per category and ``all``; pairs, points, then per-point and
        per-image PCK (in %) for each α."""
        rows = [*self.categories.items(), ("all", self.overall)]
        width = max(len("category"), *(len(name) for name, _ in rows))
        columns = [(kind, pck_key(a)) for a in self.alphas for kind in ("per_point", "per_image")]
        titles = [f"{key} {'pt' if kind == 'per_point' else 'img'}" for kind, key in columns]
        header = f"{'category':<{width}}  {'pairs':>6}  {'points':>7}  " + "  ".join(f"{t:>12}" for t in titles)
        lines = [header, "-" * len(header)]
        for name, summary in rows:
            if name == "all" and len(rows) > 1:
                lines.append("-" * len(header))
            scores = "  ".join(f"{100 * summary[kind][key]:12.1f}" for kind, key in columns)
            lines.append(f"{name:<{width}}  {summary['pairs']:>6}  {summary['points']:>7}  {scores}")
        return "\n".join(lines)


def summarize(results: Sequence[SPairPairResult], alphas: Sequence[float]) -> dict[str, Any]:
    """``{"pairs", "points", "per_point": {"PCK@α": f}, "per_image": {"PCK@α": f}}``.

    Per point: correct keypoints / all keypoints, pooled over the pairs. Per image: the mean over
    pairs of each pair's fraction (DIFT's ``total_pck``).
    """
    correct = np.concatenate([result.correct for result in results], axis=1)
    per_pair = np.array([result.correct.mean(axis=1) for result in results])  # (pairs, A)
    return {
        "pairs": len(results),
        "points": int(correct.shape[1]),
        "per_point": {pck_key(a): float(correct[i].mean()) for i, a in enumerate(alphas)},
        "per_image": {pck_key(a): float(per_pair[:, i].mean()) for i, a in enumerate(alphas)},
    }


def evaluate_spair(
    pairs: Iterable[SPairPair],
    match_fn: MatchFn,
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    model: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SPairReport:
    """Match every pair's source keypoints with ``match_fn`` and score PCK@α per point and per image.

    Args:
        pairs: e.g. :func:`read_spair`'s list.
        match_fn: ``match_fn(image_a, image_b, points_xy) -> target_xy``: source and target
            ``(H, W, 3) uint8`` at their original size, ``points_xy`` ``(K, 2)`` float64 source
            pixels (pixel centres at whole numbers); returns ``(K, 2)`` target pixels (NaN counts as
            a miss).
        alphas: PCK thresholds as fractions of ``max(w, h)`` of the target box (0.1 is the usual).
        model: free text recorded in the JSON document.
        progress: called as ``progress(done, total)`` after each pair.
    """
    alphas = _check_alphas(alphas)
    pairs = list(pairs)
    if not pairs:
        raise InputError("no SPair-71k pairs to evaluate")
    results = []
    for done, pair in enumerate(pairs, start=1):
        image_a, image_b = pair.load_images()
        pred = _call_match_fn(match_fn, image_a, image_b, pair)
        results.append(
            SPairPairResult(
                pair=pair, pred_kps=pred, correct=pck_correct(pred, pair.target_kps, pair.bbox_size, alphas)
            )
        )
        if progress is not None:
            progress(done, len(pairs))
    by_category: dict[str, list[SPairPairResult]] = {}
    for result in results:
        by_category.setdefault(result.pair.category, []).append(result)
    report = SPairReport(
        alphas=alphas,
        model=model,
        pairs=results,
        overall=summarize(results, alphas),
        categories={name: summarize(by_category[name], alphas) for name in sorted(by_category)},
    )
    log.info(
        "SPair-71k: %d pairs, %s per point %.1f, per image %.1f",
        len(results),
        pck_key(alphas[0]),
        100 * report.overall["per_point"][pck_key(alphas[0])],
        100 * report.overall["per_image"][pck_key(alphas[0])],
    )
    return report


def _call_match_fn(match_fn: MatchFn, image_a: np.ndarray, image_b: np.ndarray, pair: SPairPair) -> np.ndarray:
    pred = np.asarray(match_fn(image_a, image_b, pair.source_kps.copy()))
    if pred.shape != pair.source_kps.shape or not np.issubdtype(pred.dtype, np.number):
        raise InputError(
            f"pair {pair.name}: match_fn returned {pred.dtype} {pred.shape}, expected float "
            f"{pair.source_kps.shape} (keypoints, x/y)"
        )
    return pred.astype(np.float64)


def _check_alphas(alphas: Sequence[float]) -> tuple[float, ...]:
    try:
        values = tuple(float(a) for a in alphas)
    except (TypeError, ValueError):
        raise InputError(f"alphas must be numbers in (0, 1], got {alphas!r}") from None
    if not values or not all(0 < a <= 1 for a in values):
        raise InputError(f"alphas must be one or more numbers in (0, 1], got {list(values)}")
    if len(set(values)) != len(values):
        raise InputError(f"alphas repeat a value: {list(values)}")
    return values


def _json_points(points: np.ndarray) -> list:
    rounded = np.round(np.asarray(points, dtype=np.float64), 3)
    return [[float(v) if math.isfinite(v) else None for v in row] for row in rounded.tolist()]


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."
