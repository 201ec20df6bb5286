"""TAP-Vid's reference protocols and metrics, reproduced in our own code.

From google-deepmind/tapnet's ``tapnet/tapvid/evaluation_datasets.py``: the query samplers
(``sample_queries_first``, ``sample_queries_strided``), which frames are scored, and
``compute_tapvid_metrics``. Each function names the reference function it reproduces. Points are
in the reference raster (see :mod:`dinofeat.eval.tapvid`): queries ``[t, y, x]``, tracks ``[x, y]``.
Metrics are fractions in ``[0, 1]``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dinofeat.errors import InputError

#: Query protocols: "first" (TAP-Vid "query first") and "strided".
PROTOCOLS = ("first", "strided")
#: The strided protocol queries every visible point every this many frames.
QUERY_STRIDE = 5
#: Pixel thresholds of the position metrics (in the evaluation raster).
THRESHOLDS = (1, 2, 4, 8, 16)
#: Metric keys in the order ``compute_tapvid_metrics`` produces them.
METRIC_KEYS = (
    "occlusion_accuracy",
    *itertools.chain.from_iterable((f"pts_within_{d}", f"jaccard_{d}") for d in THRESHOLDS),
    "average_jaccard",
    "average_pts_within_thresh",
)


# -- query protocols ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TapVidQueries:
    """Queries and their ground truth, in whatever units the points were given (usually the raster).

    Attributes:
        query_points: ``(Q, 3)`` float64 ``[t, y, x]`` (frame index, then y, then x).
        target_points: ``(Q, T, 2)`` float64 ``[x, y]``, the query's whole track.
        occluded: ``(Q, T)`` bool.
        track_index: ``(Q,)`` int64, the ground-truth track each query comes from (the reference's
            ``trackgroup``).
    """

    query_points: np.ndarray
    target_points: np.ndarray
    occluded: np.ndarray
    track_index: np.ndarray

    def __len__(self) -> int:
        return int(self.query_points.shape[0])


def sample_queries_first(occluded: np.ndarray, points: np.ndarray) -> TapVidQueries:
    """One query per track at its first visible frame; never-visible tracks are dropped.

    Reproduces the reference's ``sample_queries_first``. ``occluded`` is ``(N, T)`` bool and
    ``points`` ``(N, T, 2)`` x, y in any units (the query position is copied in the same units).

    >>> occ = np.array([[True, False, False], [True, True, True]])
    >>> pts = np.arange(12.0).reshape(2, 3, 2)
    >>> sample_queries_first(occ, pts).query_points   # track 1 is never visible
    array([[1., 3., 2.]])
    """
    occluded, points = _check_tracks(occluded, points)
    valid = np.flatnonzero((~occluded).any(axis=1))
    first = np.argmax(~occluded[valid], axis=1)
    xy = points[valid, first]
    query = np.stack([first.astype(np.float64), xy[:, 1], xy[:, 0]], axis=-1).reshape(-1, 3)
    return TapVidQueries(query, points[valid], occluded[valid], valid.astype(np.int64))


def sample_queries_strided(occluded: np.ndarray, points: np.ndarray, stride: int = QUERY_STRIDE) -> TapVidQueries:
    """A query at frames ``0, stride, 2 * stride, ...`` for every track visible there.

    Reproduces the reference's ``sample_queries_strided``: queries are grouped by query frame, in
    track order within a frame; a track gives one query per visible strided frame.

    >>> occ = np.array([[False] * 6, [True] * 5 + [False]])
    >>> sample_queries_strided(occ, np.zeros((2, 6, 2)), stride=5).query_points[:, 0]
    array([0., 5., 5.])
    """
    occluded, points = _check_tracks(occluded, points)
    if not isinstance(stride, (int, np.integer)) or stride < 1:
        raise InputError(f"query stride must be a positive whole number of frames, got {stride!r}")
    frames = np.arange(0, occluded.shape[1], stride)
    track, frame = np.nonzero(~occluded[:, frames].T)[::-1]  # ordered by frame, then track
    t = frames[frame]
    xy = points[track, t]
    query = np.stack([t.astype(np.float64), xy[:, 1], xy[:, 0]], axis=-1).reshape(-1, 3)
    return TapVidQueries(query, points[track], occluded[track], track.astype(np.int64))


def sample_queries(
    protocol: str, occluded: np.ndarray, points: np.ndarray, *, stride: int = QUERY_STRIDE
) -> TapVidQueries:
    """:func:`sample_queries_first` or :func:`sample_queries_strided` by protocol name."""
    if check_protocol(protocol) == "first":
        return sample_queries_first(occluded, points)
    return sample_queries_strided(occluded, points, stride)


def _check_tracks(occluded, points) -> tuple[np.ndarray, np.ndarray]:
    occluded = np.asarray(occluded)
    points = np.asarray(points, dtype=np.float64)
    if occluded.dtype != np.bool_ or occluded.ndim != 2 or points.shape != occluded.shape + (2,):
        raise InputError(
            f"expected occluded (N, T) bool and points (N, T, 2), got {describe_array(occluded)} and "
            f"{describe_array(points)}"
        )
    return occluded, points


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown TAP-Vid protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    return protocol


# -- metrics ------------------------------------------------------------------------------------
def evaluation_mask(query_frames, num_frames: int, protocol: str) -> np.ndarray:
    """``(Q, T)`` bool: the frames each query is scored on.

    ``"first"``: the frames after the query frame (earlier frames are known to be occluded);
    ``"strided"``: every frame but the query frame. Query frames are rounded to whole frames. This
    is the reference's ``query_frame_to_eval_frames`` in ``compute_tapvid_metrics``.

    >>> evaluation_mask([1], 4, "first").astype(int), evaluation_mask([1], 4, "strided").astype(int)
    (array([[0, 0, 1, 1]]), array([[1, 0, 1, 1]]))
    """
    check_protocol(protocol)
    query = np.round(np.asarray(query_frames, dtype=np.float64)).astype(np.int64).reshape(-1, 1)
    if query.size and (query.min() < 0 or query.max() >= num_frames):
        raise InputError(f"query frames must lie in [0, {num_frames - 1}], got {query.min()}..{query.max()}")
    frames = np.arange(num_frames)[None, :]
    return frames > query if protocol == "first" else frames != query


def compute_tapvid_metrics(
    query_points, gt_occluded, gt_tracks, pred_occluded, pred_tracks, protocol: str
) -> dict[str, float]:
    """TAP-Vid metrics of one video, exactly as the reference's ``compute_tapvid_metrics`` (one video).

    Args:
        query_points: ``(Q, 3)`` ``[t, y, x]`` (only ``t`` is used).
        gt_occluded: ``(Q, T)`` bool ground-truth occlusion.
        gt_tracks: ``(Q, T, 2)`` ground-truth ``[x, y]`` in the evaluation raster.
        pred_occluded: ``(Q, T)`` bool predicted occlusion.
        pred_tracks: ``(Q, T, 2)`` predicted ``[x, y]`` in the same raster.
        protocol: ``"first"`` or ``"strided"`` (which frames count: :func:`evaluation_mask`).

    Returns:
        :data:`METRIC_KEYS` -> fraction in ``[0, 1]``, counted over the evaluation frames:
        ``occlusion_accuracy`` = predicted occlusion equals the truth; for each ``d`` in
        :data:`THRESHOLDS`: ``pts_within_d`` = points with ``|pred - gt|^2 < d^2`` (strict) among
        the visible ground truth (whatever the predicted occlusion), ``jaccard_d`` =
        ``TP / (visible ground truth + FP)`` with TP = within ``d``, visible and predicted visible,
        FP = predicted visible where occluded or not within ``d``; ``average_jaccard`` and
        ``average_pts_within_thresh`` are the means over ``d``. A ratio with nothing to count (no
        evaluation frame, no visible ground truth) is NaN, as in the reference.
    """
    gt_occluded = np.asarray(gt_occluded, dtype=bool)
    pred_occluded = np.asarray(pred_occluded, dtype=bool)
    gt_tracks = np.asarray(gt_tracks, dtype=np.float64)
    pred_tracks = np.asarray(pred_tracks, dtype=np.float64)
    shape = gt_occluded.shape
    if (
        len(shape) != 2
        or pred_occluded.shape != shape
        or gt_tracks.shape != shape + (2,)
        or pred_tracks.shape != shape + (2,)
    ):
        raise InputError(
            f"metric inputs disagree: occluded {shape} / {pred_occluded.shape}, "
            f"tracks {gt_tracks.shape} / {pred_tracks.shape}; expected (Q, T) and (Q, T, 2)"
        )
    query_points = np.asarray(query_points, dtype=np.float64).reshape(-1, 3)
    if len(query_points) != shape[0]:
        raise InputError(f"{len(query_points)} query points for {shape[0]} tracks")
    evaluated = evaluation_mask(query_points[:, 0], shape[1], protocol)
    visible, pred_visible = ~gt_occluded, ~pred_occluded
    squared = np.sum(np.square(pred_tracks - gt_tracks), axis=-1)
    gt_positives = np.count_nonzero(visible & evaluated)

    metrics = {
        "occlusion_accuracy": _ratio(
            np.count_nonzero((pred_occluded == gt_occluded) & evaluated), np.count_nonzero(evaluated)
        )
    }
    within_all, jaccard_all = [], []
    for threshold in THRESHOLDS:
        within = squared < threshold**2  # NaN predictions are never within
        correct = within & visible
        true_positives = np.count_nonzero(correct & pred_visible & evaluated)
        false_positives = np.count_nonzero((~visible | ~within) & pred_visible & evaluated)
        within_all.append(_ratio(np.count_nonzero(correct & evaluated), gt_positives))
        jaccard_all.append(_ratio(true_positives, gt_positives + false_positives))
        metrics[f"pts_within_{threshold}"] = within_all[-1]
        metrics[f"jaccard_{threshold}"] = jaccard_all[-1]
    metrics["average_jaccard"] = float(np.mean(jaccard_all))
    metrics["average_pts_within_thresh"] = float(np.mean(within_all))
    return metrics


def mean_metrics(per_video: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The benchmark score: each metric's mean over videos (the reference's "simple mean").

    A video whose metric is NaN (nothing to count) is left out of that metric's mean; the mean is
    NaN when no video has it.

    >>> mean_metrics([{"average_jaccard": 0.5}, {"average_jaccard": 1.0}, {"average_jaccard": float("nan")}])
    {'average_jaccard': 0.75}
    """
    keys = list(dict.fromkeys(key for metrics in per_video for key in metrics))
    out = {}
    for key in keys:
        values = np.array([metrics.get(key, math.nan) for metrics in per_video], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[key] = float(finite.mean()) if finite.size else math.nan
    return out


def _ratio(numerator: int | np.integer, denominator: int | np.integer) -> float:
    return numerator / denominator if denominator else math.nan


def describe_array(value: object) -> str:
    """``float64 array of shape (3, 4)`` (or the type's name), for error messages."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__
