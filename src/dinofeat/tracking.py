"""Point tracking through a video by DINO feature similarity, streaming, with occlusion.

For each query point ``(t, x, y)`` (frame index, original pixels):

1. **Template**: the feature sampled (bilinearly, L2-normalised) at the exact query position in
   frame ``t``. By default tracking runs forward only (the video is decoded once and memory stays
   constant), and before frame ``t`` the point is reported not visible, at its query position,
   with score 0; :func:`track_both_ways` (``backward=True``) also follows it back from ``t`` to the
   first frame with a tracker fed the frames in reverse.
2. **Local search**: the best position of the 1/4-processed-pixel lattice inside a square window of
   ``±window`` pixels around the point's last visible position, by the exact cosine of the
   template with the bilinearly interpolated, re-normalised features
   (:func:`dinofeat.search.refine_peaks`: a branch and bound with true bounds, so the maximum of
   the window, not a local one; vectorised over points). The window keeps the point from jumping
   to a look-alike elsewhere in the frame.
3. **Global fallback**: when the best score in the window is below ``min_score`` (the point moved
   fast, or was hidden and reappears elsewhere), the best position of the whole frame's lattice
   (:func:`dinofeat.search.locate`) is used if it scores higher.
4. **Visibility**: a point is visible when its refined score is at least ``min_score`` *and* the
   match is cycle-consistent: the feature found, matched back against every patch of the query
   frame, matches best within ``cycle_tolerance`` pixels of the query point (at the query point
   itself or a patch that close; one matrix product for all points). A point that is not visible
   keeps its last visible position in the data (the search stays centred there) and is picked up
   again when it reappears.
5. **Template policy**: ``"fixed"`` keeps the query feature (the naive tracker's behaviour);
   ``"anchored"`` (default) follows slow appearance changes: a running template is updated with
   the feature found in every visible frame (rate ``update_rate``) and the template used is
   ``normalise(anchor_weight * query_feature + (1 - anchor_weight) * running)``, so it never drifts
   further than half-way from the query's appearance. The default was chosen by
   ``tests/test_tracking.py::test_anchored_template_follows_appearance_change``: on a video whose
   brightness and contrast change steadily, the fixed template loses the point and the anchored
   one keeps it.

Frames are batched through the model (:meth:`~dinofeat.features.extractor.Extractor.extract_arrays`);
everything per frame is vectorised over points (no Python loop over points or patches).
:func:`track_frames` is a generator: one batch of frames is held at a time.

Coordinates are float ``(x, y)`` pixels of the original frame (centre of the top-left pixel at
``(0, 0)``), as everywhere in dinofeat.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import replace
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from dinofeat.errors import InputError, field
from dinofeat.features.featuremap import FeatureMap, check_inside
from dinofeat.io import video as video_io  # called through the module: the tests count probes
from dinofeat.io.frames import frames_to_process
from dinofeat.options import (
    DEFAULT_ANCHOR_WEIGHT,
    DEFAULT_CYCLE_TOLERANCE_PATCHES,
    DEFAULT_MIN_SCORE,
    DEFAULT_UPDATE_RATE,
    DEFAULT_WINDOW_PATCHES,
    FrameOptions,
    TrackerOptions,
)
from dinofeat.runtime.progress import Progress, report
from dinofeat.search import NormTable, locate, refine_peaks
from dinofeat.tracks import Tracks, TrackStep

if TYPE_CHECKING:  # types only
    from dinofeat.features.source import FeatureSource
    from dinofeat.io.video import TimedFrame, VideoInfo

__all__ = [
    "DEFAULT_ANCHOR_WEIGHT",
    "DEFAULT_CYCLE_TOLERANCE_PATCHES",
    "DEFAULT_MIN_SCORE",
    "DEFAULT_UPDATE_RATE",
    "DEFAULT_WINDOW_PATCHES",
    "PointTracker",
    "TrackStep",
    "Tracks",
    "check_queries",
    "track_both_ways",
    "track_frames",
    "track_steps",
    "track_video",
]


class PointTracker:
    """Online tracker: feed it the feature map of each processed frame in order with :meth:`step`.

    Args:
        queries_txy: ``(N, 3)`` query frame index and original-pixel position ``(t, x, y)``.
        options: :class:`~dinofeat.options.TrackerOptions`; or its fields as keywords:
            ``window`` (search radius around the last visible position, original pixels; default
            :data:`DEFAULT_WINDOW_PATCHES` patches; raise it for fast motion or ``every > 1``),
            ``min_score`` (cosine below which the local best is weak, so the whole frame is searched,
            and a match is not visible), ``cycle_tolerance`` (how far, in original pixels, the match
            matched back into the query frame may land from the query point and still count as
            visible; default :data:`DEFAULT_CYCLE_TOLERANCE_PATCHES` patches; ``math.inf`` turns the
            check off), ``template`` (``"anchored"`` or ``"fixed"``), ``update_rate`` and
            ``anchor_weight`` (the anchored template's rates, in [0, 1]).

    >>> fmap = FeatureMap(torch.randn(4, 4, 16, generator=torch.Generator().manual_seed(0)),
    ...                   image_size_wh=(56, 56), processed_size_wh=(56, 56))
    >>> tracker = PointTracker([[0, 20.0, 34.0]])
    >>> tracker.step(0, fmap).points_xy.tolist(), tracker.step(1, fmap).points_xy.round().tolist()
    ([[20.0, 34.0]], [[20.0, 34.0]])
    """

    def __init__(
        self, queries_txy, options: TrackerOptions | None = None, *, reverse: bool = False, **overrides
    ) -> None:
        options = options or TrackerOptions()
        if overrides:
            options = options.replace(**overrides)
        self.reverse = bool(reverse)
        queries = np.asarray(queries_txy, dtype=np.float64)
        if queries.ndim != 2 or queries.shape[1] != 3 or len(queries) == 0 or not np.isfinite(queries).all():
            raise InputError(f"queries must be a non-empty (N, 3) array of finite (t, x, y), got shape {queries.shape}")
        if (queries[:, 0] < 0).any() or (queries[:, 0] != np.round(queries[:, 0])).any():
            raise InputError("query frame indices must be non-negative integers")
        self.queries_txy = queries
        self.options = options
        n = len(queries)
        self._t = queries[:, 0].astype(np.int64)
        self._started = np.zeros(n, dtype=bool)
        self._last_xy = torch.from_numpy(queries[:, 1:]).float()
        self._anchor: torch.Tensor | None = None  # (N, C) query features
        self._running: torch.Tensor | None = None  # (N, C) running template
        self._anchor_maps: dict[int, FeatureMap] = {}  # query frame -> normalised map (cycle check)
        self._last_frame: int | None = None

    @property
    def templates(self) -> torch.Tensor:
        """``(N, C)`` L2-normalised templates in use (rows of unstarted queries are zero)."""
        anchor, running = self._anchor_and_running()
        if self.options.template == "fixed":
            return anchor
        weight = self.options.anchor_weight
        mixed = weight * anchor + (1 - weight) * running
        return F.normalize(mixed, dim=-1)

    def _anchor_and_running(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(N, C)`` query features and running templates (made when the first query starts)."""
        if self._anchor is None or self._running is None:
            raise RuntimeError("no query has started yet")
        return self._anchor, self._running

    def step(self, frame_index: int, fmap: FeatureMap) -> TrackStep:
        """Track into frame ``frame_index`` given its feature map. Frames come in strictly increasing
        order (strictly decreasing for a ``reverse`` tracker, which follows points back in time
        from their query frames)."""
        last = self._last_frame
        forward = -1 if self.reverse else 1
        if last is not None and (frame_index - last) * forward <= 0:
            order = "decreasing" if self.reverse else "increasing"
            raise ValueError(f"frames must come in {order} order ({frame_index} after {last})")
        passed = (self._t - frame_index) * forward < 0  # query frames already behind this one
        if last is not None:
            passed &= (self._t - last) * forward > 0
        missed = ~self._started & passed
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
        return TrackStep(frame_index, points, scores, visible)

    # -- internals ----------------------------------------------------------------------------
    def _patch_pixels(self, fmap: FeatureMap) -> float:
        """Patch size in original pixels (mean of x and y): the unit of the default window and tolerance
        (the patch size, not the stride: a feature sees a whole patch whatever the stride)."""
        sx, sy = fmap.scale_xy
        return fmap.patch_size * 0.5 * (1 / sx + 1 / sy)

    def _start(self, which: np.ndarray, frame_index: int, fmap: FeatureMap) -> None:
        xy = self.queries_txy[which, 1:]
        w, h = fmap.image_size_wh
        fmap.check_inside(xy, label=f"the {w}x{h} frame {frame_index}", what="query point")
        feats = fmap.sample(xy, normalize=True).cpu()
        if self._anchor is None:
            self._anchor = torch.zeros(len(self.queries_txy), feats.shape[1])
            self._running = torch.zeros_like(self._anchor)
        anchor, running = self._anchor_and_running()
        rows = torch.from_numpy(which)
        anchor[rows] = feats
        running[rows] = feats
        self._started[which] = True
        self._anchor_maps[frame_index] = fmap

    def _search(self, idx: torch.Tensor, fmap: FeatureMap):
        """Window-then-global search, sub-patch refinement and visibility for queries ``idx``."""
        device = fmap.features.device
        templates = self.templates[idx].to(device)
        window_px = self.options.window or DEFAULT_WINDOW_PATCHES * self._patch_pixels(fmap)
        # the best point of the 1/4-pixel lattice in the square window (exact: dinofeat.search)
        centres = fmap.pixel_to_grid(self._last_xy[idx].double()).to(device)
        radius = window_px * 0.5 * sum(fmap.scale_xy) / fmap.step  # original pixels -> grid cells
        table = NormTable(fmap)  # shared by the window and the global search of this frame
        whole_frame = radius >= max(fmap.grid_hw) - 1
        if not whole_frame:
            found_xy, found_scores = refine_peaks(templates, fmap, centres, radius=radius, table=table)
        else:  # the window holds the whole frame: the global search is the same answer, faster
            found_xy, found_scores = locate(templates, fmap, table=table)[:2]
        found_xy, found_scores = found_xy.to(device).float(), found_scores.to(device)
        weak = found_scores < self.options.min_score
        if weak.any() and not whole_frame:  # global fallback, for the points whose window holds no good match
            global_xy, global_scores = locate(templates[weak], fmap, table=table)[:2]
            better = global_scores > found_scores[weak]
            found_xy[weak] = torch.where(better[:, None], global_xy.float(), found_xy[weak])
            found_scores[weak] = torch.maximum(global_scores, found_scores[weak])
        feats = fmap.sample(found_xy, normalize=True)
        consistent = self._cycle_consistent(idx, feats)
        visible = (found_scores >= self.options.min_score) & consistent.to(device)
        return found_xy.cpu(), found_scores.float().cpu(), visible.cpu(), feats.cpu()

    def _cycle_consistent(self, idx: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Match ``feats`` back into each query's frame: is the best match within the tolerance of
        the query point? True when the best cosine there (at the query point itself or at a patch
        within the tolerance) is at least the best cosine of every patch farther away."""
        ok = torch.ones(len(idx), dtype=torch.bool)
        given = self.options.cycle_tolerance
        if given is not None and math.isinf(given):
            return ok
        t = self._t[idx.numpy()]
        for frame in np.unique(t):  # one matrix product per distinct query frame, not per point
            rows = torch.from_numpy(np.flatnonzero(t == frame))
            anchor_map = self._anchor_maps[int(frame)]
            h, w = anchor_map.grid_hw
            found = feats[rows].to(anchor_map.features.device)
            back = found @ anchor_map.features.reshape(h * w, -1).T
            query_xy = torch.from_numpy(self.queries_txy[idx.numpy()[rows.numpy()], 1:]).float()
            tolerance = given or DEFAULT_CYCLE_TOLERANCE_PATCHES * self._patch_pixels(anchor_map)
            near = (torch.cdist(query_xy, anchor_map.patch_centers().reshape(-1, 2)) <= tolerance).to(back.device)
            at_query = (found * self._anchor_and_running()[0][idx[rows]].to(found.device)).sum(-1)
            best_near = torch.maximum(at_query, back.masked_fill(~near, -math.inf).max(dim=1).values)
            best_far = back.masked_fill(near, -math.inf).max(dim=1).values
            ok[rows] = (best_near >= best_far).cpu()
        return ok

    def _update_templates(self, idx: torch.Tensor, feats: torch.Tensor) -> None:
        if self.options.template == "fixed" or len(idx) == 0:
            return
        rate = self.options.update_rate
        running = self._anchor_and_running()[1]
        mixed = (1 - rate) * running[idx] + rate * feats.to(running.dtype)
        running[idx] = F.normalize(mixed, dim=-1)


def check_queries(queries_txy, frame_indices: range, size_wh: tuple[int, int]) -> np.ndarray:
    """Validate queries against the processed frames and the frame size; returns ``(N, 3)`` float64.

    Raises :class:`InputError` for a query frame that is not processed or a point outside the frame.
    """
    try:
        queries = np.asarray(queries_txy, dtype=np.float64).reshape(-1, 3)
    except (TypeError, ValueError):
        raise InputError("query points must be (frame, x, y) triples") from None
    if len(queries) == 0:
        raise InputError("no points to track")
    if len(frame_indices) == 0:
        raise InputError(
            f"no frames to process (check {field('start')} / {field('max_frames')} against the video length)"
        )
    for t in queries[:, 0]:
        if t not in frame_indices:
            first, last = frame_indices[0], frame_indices[-1]
            step = f" every {frame_indices.step}" if frame_indices.step > 1 else ""
            raise InputError(f"query frame {t:g} is not processed (frames {first}..{last}{step})")
    w, h = size_wh
    check_inside(queries[:, 1:], size_wh, label=f"the {w}x{h} frame")
    return queries


def track_frames(
    frames: Iterable[tuple[int, np.ndarray]],
    queries_txy,
    extractor,
    options: TrackerOptions | None = None,
    **overrides,
) -> Iterator[TrackStep]:
    """Track queries through ``(frame index, (H, W, 3) uint8 RGB)`` frames, one step per frame.

    Frames are read ``extractor.batch_size`` at a time and passed through the model as one batch;
    each yielded :class:`~dinofeat.tracks.TrackStep` carries its frame as ``image`` (for drawing).
    Memory holds one batch of frames and feature maps. ``options`` / ``overrides`` go to
    :class:`PointTracker`.
    """
    yield from _steps(PointTracker(queries_txy, options, **overrides), frames, extractor)


def track_both_ways(
    frames,
    queries_txy,
    extractor,
    options: TrackerOptions | None = None,
    *,
    progress: Progress | None = None,
    **overrides,
) -> Iterator[TrackStep]:
    """Track queries forward from their query frames and also backward, to the first frame.

    ``frames`` is an iterable of ``(frame index, (H, W, 3) uint8 RGB)`` in increasing order; it is
    held in memory, since the backward pass runs first, over the frames up to the last query frame
    in reverse, and so are those frames' feature maps, which the forward pass then reuses (the
    model runs once per frame). Yields one :class:`~dinofeat.tracks.TrackStep` per frame in
    increasing order (with ``image``): before a query's frame, the point's position and score come
    from the backward pass, from its frame on from the forward pass. ``progress(done, total)``
    counts both passes' frames.
    """
    frames = list(frames)
    queries = np.asarray(queries_txy, dtype=np.float64).reshape(-1, 3)
    if not frames:
        return
    earlier = [item for item in frames if item[0] <= queries[:, 0].max()] if len(queries) else []
    backward = len(earlier) > 1
    total = len(frames) + (len(earlier) if backward else 0)
    done = 0
    before: dict[int, TrackStep] = {}
    maps: dict[int, FeatureMap] = {}  # the backward pass's maps, reused (and dropped) by the forward one
    if backward:
        tracker = PointTracker(queries, options, reverse=True, **overrides)
        for step in _steps(tracker, reversed(earlier), extractor, keep=maps):
            before[step.frame_index] = replace(step, image=None)
            done += 1
            report(progress, done, total)
    t = torch.from_numpy(queries[:, 0])
    for step in _steps(PointTracker(queries, options, **overrides), frames, extractor, known=maps):
        done += 1
        report(progress, done, total)
        back = before.get(step.frame_index)
        if back is not None:  # frames before a query's own come from the backward pass
            earlier_than_query = step.frame_index < t
            step = replace(
                step,
                points_xy=torch.where(earlier_than_query[:, None], back.points_xy, step.points_xy),
                scores=torch.where(earlier_than_query, back.scores, step.scores),
                visible=torch.where(earlier_than_query, back.visible, step.visible),
            )
        yield step


def _steps(
    tracker: PointTracker,
    frames: Iterable[tuple[int, np.ndarray]],
    extractor,
    *,
    keep: dict[int, FeatureMap] | None = None,
    known: dict[int, FeatureMap] | None = None,
) -> Iterator[TrackStep]:
    """The tracker's steps over ``frames``, read ``extractor.batch_size`` at a time, each with its
    image. Maps of frames in ``known`` are taken from it (and removed) instead of computed; every
    map used is put in ``keep``."""
    known = {} if known is None else known
    iterator = iter(frames)
    while batch := list(islice(iterator, extractor.batch_size)):
        computed = iter(extractor.extract_arrays([image for index, image in batch if index not in known]))
        for index, image in batch:
            fmap = known.pop(index) if index in known else next(computed)
            if keep is not None:
                keep[index] = fmap
            yield replace(tracker.step(index, fmap), image=image)


def track_steps(
    path: str | os.PathLike,
    queries_txy: np.ndarray,
    source: FeatureSource,
    options: TrackerOptions | None = None,
    *,
    frames: FrameOptions | None = None,
    frame_count: int,
    progress: Progress | None = None,
) -> Iterator[TrackStep]:
    """The steps of tracking checked queries (:func:`check_queries`) through the processed frames of a
    video file, streamed: one :class:`~dinofeat.tracks.TrackStep` per processed frame, in order, each
    with its frame as ``image`` (``(H, W, 3) uint8`` RGB, for drawing); writes nothing. Decoding and
    the model stream, so memory holds one batch of frames, unless ``options.backward``
    (:func:`track_both_ways`) holds the processed frames. ``progress(done, total)`` counts frames: of
    ``frame_count`` (the number of processed frames) forward only, of both passes' with ``backward``.
    Each step carries its frame's presentation time (``time_s``, seconds from the video's first frame)."""
    frames = frames or FrameOptions()
    options = options or TrackerOptions()
    timed = video_io.read_timed_frames(path, start=frames.start, max_frames=frames.max_frames, every=frames.every)
    times_s: dict[int, float] = {}
    decoded = _remembering_times(timed, times_s)
    if options.backward:
        for step in track_both_ways(decoded, queries_txy, source, options, progress=progress):
            yield replace(step, time_s=times_s[step.frame_index])
        return
    for done, step in enumerate(track_frames(decoded, queries_txy, source, options), start=1):
        report(progress, done, frame_count)
        yield replace(step, time_s=times_s.pop(step.frame_index))


def _remembering_times(timed: Iterable[TimedFrame], times_s: dict[int, float]) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, image)`` of each timed frame, putting its time in ``times_s[index]``."""
    for index, time_s, image in timed:
        times_s[index] = time_s
        yield index, image


def track_video(
    path: str | os.PathLike,
    queries_txy,
    source: FeatureSource,
    options: TrackerOptions | None = None,
    *,
    frames: FrameOptions | None = None,
    progress: Progress | None = None,
    info: VideoInfo | None = None,
    **overrides,
) -> Tracks:
    """Track query points ``(t, x, y)`` through a video file; see the module docstring. Writes nothing
    (:class:`~dinofeat.jobs.track.TrackJob` writes the ``dinofeat track`` files).

    Args:
        path: the video.
        queries_txy: ``(N, 3)`` query frame index (in the video) and original-pixel position.
        source: the :class:`~dinofeat.features.source.FeatureSource` (an
            :class:`~dinofeat.features.extractor.Extractor`: its ``batch_size`` frames per forward pass).
        options: :class:`~dinofeat.options.TrackerOptions` (or its fields as keywords: ``window``,
            ``min_score``, ...).
        frames: which frames to process (:class:`~dinofeat.options.FrameOptions`).
        progress: called as ``progress(frames_done, frames_total)`` after each frame.
        info: the video's :func:`~dinofeat.io.video.probe_video`, where the caller has it (probing may
            decode the whole file when the container lacks a frame count).

    Returns:
        :class:`~dinofeat.tracks.Tracks` over the processed frames.
    """
    options = options or TrackerOptions()
    if overrides:
        options = options.replace(**overrides)
    info = info or video_io.probe_video(path)
    indices = frames_to_process(info, frames)
    queries = check_queries(queries_txy, indices, info.size_wh)
    steps = track_steps(path, queries, source, options, frames=frames, frame_count=len(indices), progress=progress)
    return Tracks.collect(queries, steps)
