"""DAVIS video object segmentation metrics: region similarity J, boundary F-measure F, and their
per-object statistics, computed as davisvideochallenge/davis2017-evaluation computes them.

Each function names the reference function whose arithmetic it reproduces (in our own code):

* :func:`region_similarity` - ``db_eval_iou``: J = |A ∩ B| / |A ∪ B| per frame; a frame where both
  masks are empty scores 1.
* :func:`boundary_map` - ``_seg2bmap``: the one-pixel boundary of a mask (a pixel differing from its
  right, lower or lower-right neighbour; the last row compares only to the right, the last column
  only downwards, the bottom-right pixel is never a boundary).
* :func:`boundary_f_measure` - ``db_eval_boundary`` / ``f_measure``: boundaries matched within
  ``ceil(bound_th * image diagonal)`` pixels (a disk dilation, the disk ``x² + y² <= r²``);
  precision and recall of boundary pixels, F = 2PR / (P + R). A prediction with no boundary against
  an annotation with one scores 0, and the other way round 0; both empty scores 1.
* :func:`statistics` - ``db_statistics``: mean, recall (fraction of frames scoring above 0.5) and
  decay (mean of the first quarter of frames minus mean of the last quarter; the quarters overlap
  by one frame as in the reference).
* :func:`score_sequence` - ``DAVISEvaluation._evaluate_semisupervised``: objects ``1..K`` with K the
  largest label of the first annotation, frames scored all but the first and the last.

Void pixels (label 255): the official semi-supervised evaluator reads them as background in the
annotation and passes no void mask to the metrics (``void_pixels=None``); :func:`score_sequence`
does the same by default so numbers compare with published ones. ``exclude_void=True`` removes them
from both masks as the metrics do when given void pixels (J counts neither intersection nor union
there; F takes the boundaries of the masks with void pixels cleared).

Masks are ``(T, H, W)`` (or ``(H, W)``) arrays, nonzero = inside. Scores are fractions in
``[0, 1]`` (decay in ``[-1, 1]``); papers and tables multiply by 100.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

#: Boundary tolerance as a fraction of the image diagonal (the reference's ``bound_th``).
BOUND_TH = 0.008
#: A frame counts towards recall when its score is above this (the reference's 0.5).
RECALL_THRESHOLD = 0.5
#: Decay compares the first and the last of this many (overlapping) bins of frames.
DECAY_BINS = 4
#: The label DAVIS annotations use for void (ignored) pixels.
VOID_LABEL = 255


# -- per frame ----------------------------------------------------------------------------------
def region_similarity(truth: np.ndarray, predicted: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """J, the intersection over union of two masks, per frame (``db_eval_iou``).

    Args:
        truth, predicted: ``(..., H, W)`` masks, nonzero = inside, the same shape.
        void: optional ``(..., H, W)`` mask of pixels left out of both counts.

    Returns:
        ``(...)`` float64; frames whose union is empty score 1.

    >>> a = np.zeros((4, 4), bool); a[:2] = True
    >>> b = np.zeros((4, 4), bool); b[1:3] = True
    >>> float(region_similarity(a, b))
    0.3333333333333333
    >>> float(region_similarity(np.zeros((2, 2)), np.zeros((2, 2))))
    1.0
    """
    truth, predicted = _same_shape(truth, predicted)
    keep = np.ones(truth.shape, bool) if void is None else ~_as_mask(void, truth.shape, "void")
    intersection = np.count_nonzero(truth & predicted & keep, axis=(-2, -1))
    union = np.count_nonzero((truth | predicted) & keep, axis=(-2, -1))
    score = np.where(union == 0, 1.0, intersection / np.maximum(union, 1))
    return np.asarray(score, dtype=np.float64)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """The one-pixel boundary of a mask, per frame (``_seg2bmap`` at the mask's own size).

    A pixel is a boundary pixel when it differs from its right, lower or lower-right neighbour
    (boundaries sit half a pixel towards the origin from the true edge). The last row compares with
    the right neighbour only, the last column with the lower one only, and the bottom-right pixel is
    never a boundary.

    Args:
        mask: ``(..., H, W)``, nonzero = inside.

    Returns:
        ``(..., H, W)`` bool.

    >>> m = np.zeros((4, 4), bool); m[1:3, 1:3] = True
    >>> boundary_map(m).astype(int)
    array([[1, 1, 1, 0],
           [1, 0, 1, 0],
           [1, 1, 1, 0],
           [0, 0, 0, 0]])
    """
    seg = np.asarray(mask).astype(bool)
    right = np.zeros_like(seg)
    down = np.zeros_like(seg)
    diagonal = np.zeros_like(seg)
    right[..., :, :-1] = seg[..., :, 1:]
    down[..., :-1, :] = seg[..., 1:, :]
    diagonal[..., :-1, :-1] = seg[..., 1:, 1:]
    edges = (seg ^ right) | (seg ^ down) | (seg ^ diagonal)
    edges[..., -1, :] = seg[..., -1, :] ^ right[..., -1, :]
    edges[..., :, -1] = seg[..., :, -1] ^ down[..., :, -1]
    edges[..., -1, -1] = False
    return edges


def boundary_tolerance(size_hw: tuple[int, int], bound_th: float = BOUND_TH) -> int:
    """The matching distance in pixels: ``ceil(bound_th * sqrt(H² + W²))``, or ``bound_th`` itself
    when it is 1 or more (then a distance in pixels), as the reference reads it.

    >>> boundary_tolerance((480, 854))
    8
    """
    if bound_th >= 1:
        return int(bound_th)
    height, width = size_hw
    return math.ceil(bound_th * math.hypot(height, width))


def disk(radius: int) -> np.ndarray:
    """The ``(2r + 1, 2r + 1)`` uint8 structuring element ``x² + y² <= r²`` (scikit-image's ``disk``).

    >>> disk(1)
    array([[0, 1, 0],
           [1, 1, 1],
           [0, 1, 0]], dtype=uint8)
    """
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)


def boundary_f_measure(
    truth: np.ndarray,
    predicted: np.ndarray,
    void: np.ndarray | None = None,
    *,
    bound_th: float = BOUND_TH,
) -> np.ndarray:
    """F, the boundary F-measure, per frame (``db_eval_boundary`` / ``f_measure``).

    Boundaries (:func:`boundary_map`) of both masks, with void pixels cleared first when given; a
    predicted boundary pixel is correct when an annotated one lies within the disk of radius
    :func:`boundary_tolerance` around it, and the other way round for recall.

    Args:
        truth, predicted: ``(..., H, W)`` masks, nonzero = inside.
        void: optional ``(..., H, W)`` mask cleared from both masks before taking boundaries.
        bound_th: tolerance as a fraction of the diagonal (below 1) or in pixels (1 or more).

    Returns:
        ``(...)`` float64 in ``[0, 1]``: 1 when neither mask has a boundary, 0 when only one has.

    >>> a = np.zeros((20, 20), bool); a[5:15, 5:15] = True
    >>> float(boundary_f_measure(a, a))
    1.0
    >>> float(boundary_f_measure(a, np.zeros_like(a)))
    0.0
    """
    truth, predicted = _same_shape(truth, predicted)
    if void is not None:
        keep = ~_as_mask(void, truth.shape, "void")
        truth, predicted = truth & keep, predicted & keep
    height, width = truth.shape[-2:]
    element = disk(boundary_tolerance((height, width), bound_th))
    truth_edges = boundary_map(truth).reshape(-1, height, width)
    predicted_edges = boundary_map(predicted).reshape(-1, height, width)
    scores = [
        _f_measure_frame(truth_frame, predicted_frame, element)
        for truth_frame, predicted_frame in zip(truth_edges, predicted_edges)
    ]
    return np.asarray(scores, dtype=np.float64).reshape(truth.shape[:-2])


def _f_measure_frame(truth_edges: np.ndarray, predicted_edges: np.ndarray, element: np.ndarray) -> float:
    """F of one frame's boundary maps ``(H, W)`` bool, matched within ``element``."""
    n_truth, n_predicted = int(truth_edges.sum()), int(predicted_edges.sum())
    if n_truth == 0 or n_predicted == 0:
        # as the reference: no prediction -> precision 1, recall 0; nothing to find -> precision 0,
        # recall 1; F is 0 either way, and 1 when both are empty
        return 1.0 if n_truth == n_predicted else 0.0
    truth_near = cv2.dilate(truth_edges.astype(np.uint8), element).astype(bool)
    predicted_near = cv2.dilate(predicted_edges.astype(np.uint8), element).astype(bool)
    precision = np.count_nonzero(predicted_edges & truth_near) / n_predicted
    recall = np.count_nonzero(truth_edges & predicted_near) / n_truth
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


# -- over frames --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Statistics:
    """One object's per-frame scores summarised (``db_statistics``).

    Attributes:
        mean: the mean over frames.
        recall: the fraction of frames scoring above :data:`RECALL_THRESHOLD`.
        decay: the mean of the first quarter of frames minus that of the last quarter.
    """

    mean: float
    recall: float
    decay: float

    def to_json(self) -> dict[str, float | None]:
        """``{"mean", "recall", "decay"}``; NaN (no frame scored) becomes None."""
        return {key: (value if math.isfinite(value) else None) for key, value in self.__dict__.items()}


def statistics(per_frame: Iterable[float]) -> Statistics:
    """Mean, recall and decay of a per-frame series (``db_statistics``; NaN frames are skipped).

    The decay bins are frames ``ids[i] .. ids[i + 1]`` inclusive with
    ``ids = round(linspace(1, n, 5)) - 1``: consecutive bins share a frame, as in the reference.

    >>> s = statistics([1.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.0, 0.0, 0.0])
    >>> round(s.mean, 4), round(s.recall, 4), round(s.decay, 4)
    (0.4444, 0.4444, 0.9333)
    """
    values = np.asarray(list(per_frame), dtype=np.float64)
    if values.size == 0:
        return Statistics(math.nan, math.nan, math.nan)
    mean = _nanmean(values)
    recall = float(np.mean(values > RECALL_THRESHOLD))  # a NaN frame counts as a miss, as in the reference
    ids = (np.round(np.linspace(1, values.size, DECAY_BINS + 1) + 1e-10) - 1).astype(int)
    bins = [values[ids[i] : ids[i + 1] + 1] for i in range(DECAY_BINS)]
    decay = _nanmean(bins[0]) - _nanmean(bins[-1])
    return Statistics(mean=mean, recall=recall, decay=decay)


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


@dataclass(frozen=True)
class ObjectScore:
    """One object of one sequence: its J and F per scored frame and their :class:`Statistics`.

    Attributes:
        j_frames, f_frames: ``(T - 2,)`` float64, frames 1 .. T - 2 of the sequence.
    """

    j_frames: np.ndarray
    f_frames: np.ndarray

    @property
    def j(self) -> Statistics:
        return statistics(self.j_frames)

    @property
    def f(self) -> Statistics:
        return statistics(self.f_frames)

    def to_json(self) -> dict[str, dict[str, float | None]]:
        """``{"J": {"mean", "recall", "decay"}, "F": {...}}``."""
        return {"J": self.j.to_json(), "F": self.f.to_json()}


def score_sequence(
    truth: np.ndarray,
    predicted: np.ndarray,
    *,
    exclude_void: bool = False,
    bound_th: float = BOUND_TH,
) -> list[ObjectScore]:
    """Score a semi-supervised prediction of one sequence, object by object.

    Args:
        truth: ``(T, H, W)`` integer labels, 0 background, 1..K objects, 255 void.
        predicted: ``(T, H, W)`` integer labels (frame 0 is ignored, as is the last frame); labels
            above K are left out as no object of the annotation.
        exclude_void: False (default) reads void as background in the annotation, as the official
            semi-supervised evaluator does; True leaves void pixels out of both masks.
        bound_th: the F tolerance (:func:`boundary_f_measure`).

    Returns:
        One :class:`ObjectScore` per object 1..K, K = the largest label of the first annotation
        (an object absent from the first frame still counts, as in the reference).
    """
    truth = np.asarray(truth)
    predicted = np.asarray(predicted)
    if truth.ndim != 3 or truth.shape != predicted.shape:
        raise ValueError(f"annotations {truth.shape} and predictions {predicted.shape} must be the same (T, H, W)")
    void = truth == VOID_LABEL
    objects = np.where(void, 0, truth)
    count = int(objects[0].max()) if objects.size else 0
    scored = slice(1, -1)
    frames_truth, frames_predicted = objects[scored], predicted[scored]
    frames_void = void[scored] if exclude_void else None
    scores = []
    for label in range(1, count + 1):
        truth_mask, predicted_mask = frames_truth == label, frames_predicted == label
        scores.append(
            ObjectScore(
                j_frames=region_similarity(truth_mask, predicted_mask, frames_void),
                f_frames=boundary_f_measure(truth_mask, predicted_mask, frames_void, bound_th=bound_th),
            )
        )
    return scores


@dataclass(frozen=True)
class MeanScores:
    """The benchmark's summary over objects: each statistic of J and of F averaged over every object
    of every sequence, and ``jf`` = (J mean + F mean) / 2, the J&F-Mean papers quote."""

    jf: float
    j: Statistics
    f: Statistics

    def to_json(self) -> dict:
        """``{"J&F": x, "J": {"mean", "recall", "decay"}, "F": {...}}`` (NaN becomes None)."""
        jf = self.jf if math.isfinite(self.jf) else None
        return {"J&F": jf, "J": self.j.to_json(), "F": self.f.to_json()}

    def flat(self) -> dict[str, float]:
        """The official global table's columns: ``J&F-Mean``, ``J-Mean``, ``J-Recall``, ``J-Decay``,
        ``F-Mean``, ``F-Recall``, ``F-Decay``."""
        columns = {"J&F-Mean": self.jf}
        for name, stats in (("J", self.j), ("F", self.f)):
            columns |= {f"{name}-Mean": stats.mean, f"{name}-Recall": stats.recall, f"{name}-Decay": stats.decay}
        return columns


def mean_scores(objects: Iterable[ObjectScore]) -> MeanScores:
    """Average objects' statistics as ``evaluation_method.py`` does (every object weighs the same,
    whatever its sequence); NaN when there is no object.

    >>> one = ObjectScore(j_frames=np.array([1.0, 0.5]), f_frames=np.array([1.0, 1.0]))
    >>> mean_scores([one]).jf
    0.875
    """
    objects = list(objects)
    j_mean = _average([score.j for score in objects])
    f_mean = _average([score.f for score in objects])
    return MeanScores(jf=(j_mean.mean + f_mean.mean) / 2, j=j_mean, f=f_mean)


def _average(stats: list[Statistics]) -> Statistics:
    if not stats:
        return Statistics(math.nan, math.nan, math.nan)
    return Statistics(
        mean=float(np.mean([s.mean for s in stats])),
        recall=float(np.mean([s.recall for s in stats])),
        decay=float(np.mean([s.decay for s in stats])),
    )


# -- helpers ------------------------------------------------------------------------------------
def _same_shape(truth: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth).astype(bool)
    predicted = np.asarray(predicted).astype(bool)
    if truth.shape != predicted.shape or truth.ndim < 2:
        raise ValueError(f"masks must be (..., H, W) of one shape: {truth.shape} and {predicted.shape}")
    return truth, predicted


def _as_mask(mask: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    mask = np.asarray(mask).astype(bool)
    if mask.shape != shape:
        raise ValueError(f"{name} {mask.shape} must match the masks {shape}")
    return mask
