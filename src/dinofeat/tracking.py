"""Point tracking through a video by DINOv2 feature similarity, streaming, with occlusion.

For each query point ``(t, x, y)`` (frame index, original pixels):

1. **Template**: the feature sampled (bilinearly, L2-normalised) at the exact query position in
   frame ``t``. Before frame ``t`` the point is reported not visible, at its query position, with
   score 0 (tracking runs forward only, so the video is decoded once and memory stays constant).
2. **Local search**: the exact cosine of the template with the bilinearly interpolated features at
   every processed pixel (then every 1/4 pixel) of a square window of ``±window`` pixels around the
   point's last visible position (:func:`dinofeat.matching.refine_peaks`; one matrix product per
   point batch, no loop over points). The window keeps the point from jumping to a look-alike
   elsewhere in the frame.
3. **Global fallback**: when the best score in the window is below ``min_score`` (the point moved
   fast, or was hidden and reappears elsewhere), the best position in the whole frame
   (:func:`dinofeat.matching.locate`) is used if it scores higher.
4. **Visibility**: a point is visible when its refined score is at least ``min_score`` *and* the
   match is cycle-consistent: the feature found, matched back against every patch of the query
   frame, matches best within ``cycle_tolerance`` pixels of the query point (at the query point
   itself or a patch that close; one matrix product for all points). A point that is not visible keeps its last
   visible position in the data (the search stays centred there) and is picked up again when it
   reappears.
5. **Template policy**: ``"fixed"`` keeps the query feature (the naive tracker's behaviour);
   ``"anchored"`` (default) follows slow appearance changes: a running template is updated with
   the feature found in every visible frame (rate ``update_rate``) and the template used is
   ``normalise(anchor_weight * query_feature + (1 - anchor_weight) * running)``, so it never drifts
   further than half-way from the query's appearance. The default was chosen by
   ``tests/test_tracking.py::test_anchored_template_follows_appearance_change``: on a video whose
   brightness and contrast change steadily, the fixed template loses the point and the anchored
   one keeps it.

Frames are batched through the model (:meth:`~dinofeat.extractor.Extractor.extract_arrays`);
everything per frame is vectorised over points (no Python loop over points or patches).
:func:`track_frames` is a generator: one batch of frames is held at a time.

Coordinates are float ``(x, y)`` pixels of the original frame (centre of the top-left pixel at
``(0, 0)``), as everywhere in dinofeat.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch
import torch.nn.functional as F

from dinofeat.errors import InputError
from dinofeat.features import FeatureMap
from dinofeat.matching import Refiner, locate, refine_peaks

#: Default search window radius, in patches (converted to original pixels per video).
DEFAULT_WINDOW_PATCHES = 4.0
#: Default cycle-consistency tolerance, in patches (converted to original pixels per video).
DEFAULT_CYCLE_TOLERANCE_PATCHES = 1.5
#: Cosine below which a match is weak: the global search takes over and the point is not visible.
#: Chosen for real DINOv2 features (same point across frames: ~0.7-0.95; unrelated: < 0.4).
DEFAULT_MIN_SCORE = 0.5
#: Anchored template: weight of the running template's update per visible frame.
DEFAULT_UPDATE_RATE = 0.1
#: Anchored template: weight of the query feature in the template used for matching.
DEFAULT_ANCHOR_WEIGHT = 0.5
TEMPLATE_POLICIES = ("anchored", "fixed")


@dataclass
class TrackStep:
    """The tracker's answer for one frame (``N`` query points).

    Attributes:
        frame_index: index of the frame in the video.
        points_xy: ``(N, 2)`` float32 original pixels; the last visible position where not visible.
        scores: ``(N,)`` float32 cosine of the best match (0 before the query frame).
        visible: ``(N,)`` bool.
        image: the ``(H, W, 3) uint8 RGB`` frame, when the step comes from :func:`track_frames`.
    """

    frame_index: int
    points_xy: np.ndarray
    scores: np.ndarray
    visible: np.ndarray
    image: np.ndarray | None = None


@dataclass
class Tracks:
    """Tracks of ``N`` query points over ``T`` processed frames.

    Attributes:
        queries_txy: ``(N, 3)`` float64 query frame index and position ``(t, x, y)``.
        frame_indices: ``(T,)`` int64 video frame index of each processed frame.
        points_xy: ``(T, N, 2)`` float32 positions in original pixels (the last visible position
            where not visible; the query position before the query frame).
        scores: ``(T, N)`` float32 cosine similarity of the match.
        visible: ``(T, N)`` bool.
    """

    queries_txy: np.ndarray
    frame_indices: np.ndarray
    points_xy: np.ndarray
    scores: np.ndarray
    visible: np.ndarray

    @classmethod
    def from_steps(cls, queries_txy, steps: Sequence[TrackStep]) -> Tracks:
        queries = np.asarray(queries_txy, dtype=np.float64).reshape(-1, 3)
        n = len(queries)
        return cls(
            queries_txy=queries,
            frame_indices=np.array([s.frame_index for s in steps], dtype=np.int64),
            points_xy=np.array([s.points_xy for s in steps], dtype=np.float32).reshape(len(steps), n, 2),
            scores=np.array([s.scores for s in steps], dtype=np.float32).reshape(len(steps), n),
            visible=np.array([s.visible for s in steps], dtype=bool).reshape(len(steps), n),
        )

    def __len__(self) -> int:
        return len(self.frame_indices)

    def to_dict(self) -> dict:
        """``{"tracks": [{"query", "points", "scores", "visible"}, ...], "frame_indices": [...]}``
        (coordinates rounded to 1/1000 pixel, scores to 1e-4), ready for ``json.dump``."""
        tracks = []
        for n, (t, x, y) in enumerate(self.queries_txy):
            tracks.append({
                "query": [int(t), float(x), float(y)],
                "points": np.round(self.points_xy[:, n].astype(np.float64), 3).tolist(),
                "scores": np.round(self.scores[:, n].astype(np.float64), 4).tolist(),
                "visible": self.visible[:, n].tolist(),
            })
        return {"tracks": tracks, "frame_indices": self.frame_indices.tolist()}

    def to_json(self, *, model: str, video_path: str | os.PathLike, fps: float, size_wh: tuple[int, int]) -> dict:
        """The ``dinofeat track --json`` document: model, video (path, fps, processed frame count,
        size), then :meth:`to_dict`'s tracks and frame indices."""
        return {
            "model": model,
            "video": {"path": str(video_path), "fps": fps, "frames": len(self), "size": list(size_wh)},
            **self.to_dict(),
        }

    def write_csv(self, path: str | os.PathLike) -> None:
        """One row per point and processed frame: ``track,frame,x,y,score,visible`` (visible 0/1)."""
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["track", "frame", "x", "y", "score", "visible"])
            for n in range(self.queries_txy.shape[0]):
                for k, frame in enumerate(self.frame_indices):
                    x, y = self.points_xy[k, n]
                    writer.writerow([n, int(frame), f"{x:.3f}", f"{y:.3f}", f"{self.scores[k, n]:.4f}",
                                     int(self.visible[k, n])])


class PointTracker:
    """Online tracker: feed it the feature map of each processed frame in order with :meth:`step`.

    Args:
        queries_txy: ``(N, 3)`` query frame index and original-pixel position ``(t, x, y)``.
        window: search radius around the last visible position, in original pixels
            (default: :data:`DEFAULT_WINDOW_PATCHES` patches). Raise it for fast motion or ``every > 1``.
        min_score: cosine below which the local best is weak (global search) and a match not visible.
        cycle_tolerance: how far (original pixels) the match, matched back into the query frame, may
            land from the query point and still count as visible (default:
            :data:`DEFAULT_CYCLE_TOLERANCE_PATCHES` patches); ``math.inf`` turns the check off.
        template: ``"anchored"`` (slow update anchored to the query feature) or ``"fixed"``.
        update_rate: anchored template: running-template update weight per visible frame, in [0, 1].
        anchor_weight: anchored template: weight of the query feature, in [0, 1].

    >>> fmap = FeatureMap(torch.randn(4, 4, 16, generator=torch.Generator().manual_seed(0)), image_size_wh=(56, 56), processed_size_wh=(56, 56))
    >>> tracker = PointTracker([[0, 20.0, 34.0]])
    >>> tracker.step(0, fmap).points_xy.tolist(), tracker.step(1, fmap).points_xy.round().tolist()
    ([[20.0, 34.0]], [[20.0, 34.0]])
    """

    def __init__(
        self,
        queries_txy,
        *,
        window: float | None = None,
        min_score: float = DEFAULT_MIN_SCORE,
        cycle_tolerance: float | None = None,
        template: str = "anchored",
        update_rate: float = DEFAULT_UPDATE_RATE,
        anchor_weight: float = DEFAULT_ANCHOR_WEIGHT,
    ) -> None:
        queries = np.asarray(queries_txy, dtype=np.float64)
        if queries.ndim != 2 or queries.shape[1] != 3 or len(queries) == 0 or not np.isfinite(queries).all():
            raise InputError(f"queries must be a non-empty (N, 3) array of finite (t, x, y), got shape {queries.shape}")
        if (queries[:, 0] < 0).any() or (queries[:, 0] != np.round(queries[:, 0])).any():
            raise InputError("query frame indices must be non-negative integers")
        if template not in TEMPLATE_POLICIES:
            raise InputError(f"unknown template policy {template!r}; choose one of {', '.join(TEMPLATE_POLICIES)}")
        for name, value in (("update_rate", update_rate), ("anchor_weight", anchor_weight)):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {value}")
        for name, value in (("window", window), ("cycle_tolerance", cycle_tolerance)):
            if value is not None and not value > 0:
                raise InputError(f"{name} must be a positive number of pixels, got {value}")
        self.queries_txy = queries
        self.window = window
        self.min_score = float(min_score)
        self.cycle_tolerance = cycle_tolerance
        self.template_policy = template
        self.update_rate = float(update_rate)
        self.anchor_weight = float(anchor_weight)
        n = len(queries)
        self._t = queries[:, 0].astype(np.int64)
        self._started = np.zeros(n, dtype=bool)
        self._last_xy = torch.from_numpy(queries[:, 1:]).float()
        self._anchor: torch.Tensor | None = None  # (N, C) query features
        self._running: torch.Tensor | None = None  # (N, C) running template
        self._anchor_maps: dict[int, FeatureMap] = {}  # query frame -> normalised map (cycle check)
        self._last_frame = -1

    @property
    def templates(self) -> torch.Tensor:
        """``(N, C)`` L2-normalised templates in use (rows of unstarted queries are zero)."""
        if self._anchor is None:
            raise RuntimeError("no query has started yet")
        if self.template_policy == "fixed":
            return self._anchor
        mixed = self.anchor_weight * self._anchor + (1 - self.anchor_weight) * self._running
        return F.normalize(mixed, dim=-1)

    def step(self, frame_index: int, fmap: FeatureMap) -> TrackStep:
        """Track into frame ``frame_index`` (strictly increasing) given its feature map."""
        if frame_index <= self._last_frame:
            raise ValueError(f"frames must come in increasing order ({frame_index} after {self._last_frame})")
        missed = ~self._started & (self._t < frame_index) & (self._t > self._last_frame)
        if missed.any():
            raise InputError(f"query frame {int(self._t[missed][0])} is not one of the processed frames")
        self._last_frame = frame_index
        fmap = fmap.normalized()
        n = len(self.queries_txy)
        points = self._last_xy.clone()
        scores = torch.zeros(n)
        visible = torch.zeros(n, dtype=torch.bool)

        active = torch.from_numpy(self._started.copy())
        new = ~self._started & (self._t == frame_index)
        if new.any():
            self._start(np.flatnonzero(new), frame_index, fmap)
            new_t = torch.from_numpy(new)
            scores[new_t] = 1.0
            visible[new_t] = True
        if active.any():
            idx = torch.nonzero(active).flatten()
            found_xy, found_scores, found_visible, found_feats = self._search(idx, fmap)
            scores[idx] = found_scores
            visible[idx] = found_visible
            points[idx] = torch.where(found_visible[:, None], found_xy, points[idx])
            self._update_templates(idx[found_visible], found_feats[found_visible])
        self._last_xy = points.clone()
        return TrackStep(frame_index, points.numpy(), scores.numpy(), visible.numpy())

    # -- internals ----------------------------------------------------------------------------
    def _patch_pixels(self, fmap: FeatureMap) -> float:
        """Patch size in original pixels (mean of x and y): the unit of the default window and tolerance
        (the patch size, not the stride: a feature sees a whole patch whatever the stride)."""
        sx, sy = fmap.scale_xy
        return fmap.patch_size * 0.5 * (1 / sx + 1 / sy)

    def _start(self, which: np.ndarray, frame_index: int, fmap: FeatureMap) -> None:
        xy = self.queries_txy[which, 1:]
        outside = ~fmap.contains(xy)
        if outside.any():
            x, y = xy[outside][0]
            w, h = fmap.image_size_wh
            raise InputError(f"query point ({x:g}, {y:g}) at frame {frame_index} is outside the {w}x{h} frame")
        feats = fmap.sample(xy, normalize=True).cpu()
        if self._anchor is None:
            self._anchor = torch.zeros(len(self.queries_txy), feats.shape[1])
            self._running = torch.zeros_like(self._anchor)
        rows = torch.from_numpy(which)
        self._anchor[rows] = feats
        self._running[rows] = feats
        self._started[which] = True
        self._anchor_maps[frame_index] = fmap

    def _search(self, idx: torch.Tensor, fmap: FeatureMap):
        """Window-then-global search, sub-patch refinement and visibility for queries ``idx``."""
        device = fmap.features.device
        templates = self.templates[idx].to(device)
        window_px = self.window if self.window is not None else DEFAULT_WINDOW_PATCHES * self._patch_pixels(fmap)
        # exhaustive search of every processed pixel (then 1/4 pixel) in the square window
        centres = fmap.pixel_to_grid(self._last_xy[idx].double()).to(device)
        radius = window_px * 0.5 * sum(fmap.scale_xy) / fmap.stride  # original pixels -> grid cells
        refiner = Refiner(fmap)  # shared by the window and the global search of this frame
        if radius < max(fmap.grid_hw) - 1:
            found_xy, found_scores = refine_peaks(templates, fmap, centres, radius=radius, refiner=refiner)
        else:  # the window holds the whole frame: the global search is the same answer, faster
            found_xy, found_scores, _ = locate(templates, fmap, refiner=refiner)
        found_xy, found_scores = found_xy.to(device).float(), found_scores.to(device)
        weak = found_scores < self.min_score
        if weak.any():  # global fallback, only for the points whose window holds no good match
            global_xy, global_scores, _ = locate(templates[weak], fmap, refiner=refiner)
            better = global_scores > found_scores[weak]
            found_xy[weak] = torch.where(better[:, None], global_xy.float(), found_xy[weak])
            found_scores[weak] = torch.maximum(global_scores, found_scores[weak])
        feats = fmap.sample(found_xy, normalize=True)
        consistent = self._cycle_consistent(idx, feats)
        visible = (found_scores >= self.min_score) & consistent.to(device)
        return found_xy.cpu(), found_scores.float().cpu(), visible.cpu(), feats.cpu()

    def _cycle_consistent(self, idx: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Match ``feats`` back into each query's frame: is the best match within the tolerance of
        the query point? True when the best cosine there (at the query point itself or at a patch
        within the tolerance) is at least the best cosine of every patch farther away."""
        ok = torch.ones(len(idx), dtype=torch.bool)
        if self.cycle_tolerance is not None and math.isinf(self.cycle_tolerance):
            return ok
        t = self._t[idx.numpy()]
        for frame in np.unique(t):  # one matrix product per distinct query frame, not per point
            rows = torch.from_numpy(np.flatnonzero(t == frame))
            anchor_map = self._anchor_maps[int(frame)]
            h, w = anchor_map.grid_hw
            found = feats[rows].to(anchor_map.features.device)
            back = found @ anchor_map.features.reshape(h * w, -1).T
            query_xy = torch.from_numpy(self.queries_txy[idx.numpy()[rows.numpy()], 1:]).float()
            tolerance = self.cycle_tolerance or DEFAULT_CYCLE_TOLERANCE_PATCHES * self._patch_pixels(anchor_map)
            near = (torch.cdist(query_xy, anchor_map.patch_centers().reshape(-1, 2)) <= tolerance).to(back.device)
            at_query = (found * self._anchor[idx[rows]].to(found.device)).sum(-1)
            best_near = torch.maximum(at_query, back.masked_fill(~near, -math.inf).max(dim=1).values)
            best_far = back.masked_fill(near, -math.inf).max(dim=1).values
            ok[rows] = (best_near >= best_far).cpu()
        return ok

    def _update_templates(self, idx: torch.Tensor, feats: torch.Tensor) -> None:
        if self.template_policy == "fixed" or len(idx) == 0:
            return
        mixed = (1 - self.update_rate) * self._running[idx] + self.update_rate * feats.to(self._running.dtype)
        self._running[idx] = F.normalize(mixed, dim=-1)


def processed_frame_indices(total_frames: int, *, start: int = 0, max_frames: int | None = None,
                            every: int = 1) -> range:
    """Indices of the frames :func:`~dinofeat.video.read_frames` yields with these options.

    >>> list(processed_frame_indices(10, start=1, every=4))
    [1, 5, 9]
    """
    indices = range(start, total_frames, every)
    return indices if max_frames is None else indices[:max_frames]


def check_queries(queries_txy, frame_indices: range, size_wh: tuple[int, int]) -> np.ndarray:
    """Validate queries against the processed frames and the frame size; returns ``(N, 3)`` float64.

    Raises :class:`InputError` for a query frame that is not processed or a point outside the frame.
    """
    queries = np.asarray(queries_txy, dtype=np.float64).reshape(-1, 3)
    if len(queries) == 0:
        raise InputError("no points to track")
    if len(frame_indices) == 0:
        raise InputError("no frames to process (check --start / --max-frames against the video length)")
    w, h = size_wh
    for t, x, y in queries:
        if t not in frame_indices:
            first, last = frame_indices[0], frame_indices[-1]
            step = f" every {frame_indices.step}" if frame_indices.step > 1 else ""
            raise InputError(f"query frame {t:g} is not processed (frames {first}..{last}{step})")
        if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
            raise InputError(f"point ({x:g}, {y:g}) is outside the {w}x{h} frame")
    return queries


def track_frames(
    frames: Iterable[tuple[int, np.ndarray]],
    queries_txy,
    extractor,
    **tracker_options,
) -> Iterator[TrackStep]:
    """Track queries through ``(frame index, (H, W, 3) uint8 RGB)`` frames, one step per frame.

    Frames are read ``extractor.batch_size`` at a time and passed through the model as one batch;
    each yielded :class:`TrackStep` carries its frame as ``image`` (for drawing). Memory holds one
    batch of frames and feature maps. ``tracker_options`` go to :class:`PointTracker`.
    """
    tracker = PointTracker(queries_txy, **tracker_options)
    iterator = iter(frames)
    while batch := list(islice(iterator, extractor.batch_size)):
        maps = extractor.extract_arrays([image for _, image in batch])
        for (index, image), fmap in zip(batch, maps):
            result = tracker.step(index, fmap)
            result.image = image
            yield result


def track_video(
    path: str | os.PathLike,
    queries_txy,
    extractor,
    *,
    start: int = 0,
    max_frames: int | None = None,
    every: int = 1,
    progress: bool = False,
    **tracker_options,
) -> Tracks:
    """Track query points ``(t, x, y)`` through a video file; see the module docstring.

    Args:
        path: the video.
        queries_txy: ``(N, 3)`` query frame index (in the video) and original-pixel position.
        extractor: a :class:`~dinofeat.extractor.Extractor` (its ``batch_size`` frames per forward pass).
        start, max_frames, every: which frames to process (as :func:`~dinofeat.video.read_frames`).
        progress: show a progress bar (frames/s, ETA) on a terminal.
        tracker_options: :class:`PointTracker` options (``window``, ``min_score``, ...).
    """
    from tqdm import tqdm

    from dinofeat.video import probe_video, read_frames

    info = probe_video(path)
    indices = processed_frame_indices(info.frames, start=start, max_frames=max_frames, every=every)
    queries = check_queries(queries_txy, indices, info.size_wh)
    frames = read_frames(path, start=start, max_frames=max_frames, every=every)
    steps = []
    with tqdm(total=len(indices), unit="frame", disable=None if progress else True, leave=False) as bar:
        for step in track_frames(frames, queries, extractor, **tracker_options):
            step.image = None
            steps.append(step)
            bar.update()
    return Tracks.from_steps(queries, steps)
