"""TAP-Vid point-tracking evaluation: the official pickles, the reference protocols and metrics.

This module reproduces, in its own code, what google-deepmind/tapnet's
``tapnet/tapvid/evaluation_datasets.py`` does: reading the DAVIS / Kinetics / RGB-Stacking pickles
(``create_davis_dataset``, ``create_kinetics_dataset``, ``create_rgb_stacking_dataset``), resizing
the frames (``resize_video``), sampling queries (``sample_queries_first``,
``sample_queries_strided``) and scoring (``compute_tapvid_metrics``). Each function below names the
reference function it reproduces.

Coordinates
-----------
* The pickles hold points normalised to ``[0, 1]``: ``(u, v)``, x to the right, y down.
* The **reference raster** (called *raster* here) is where the reference evaluates: for a frame of
  ``W x H`` pixels a point sits at ``x = u * W``, ``y = v * H``, so the image spans ``[0, W]``.
  Query points are ``[t, y, x]`` and tracks ``[x, y]`` in that raster, as the reference gives them.
* dinofeat pixels put the centre of the top-left pixel at ``(0, 0)`` (the image spans
  ``[-0.5, W - 0.5]``), so ``x_dinofeat = x_raster - 0.5``. :func:`raster_to_pixels` and
  :func:`pixels_to_raster` are the only place that offset is written.
* Going from one raster size to another multiplies by the size ratio (the reference's
  ``transforms.convert_grid_coordinates``); in dinofeat pixels that is exactly dinofeat's
  half-pixel resize rule ``x' = (x + 0.5) * W' / W - 0.5``.

Resolution
----------
By default frames are resized to 256 x 256 with Pillow's Lanczos filter (the reference resizes
with ``mediapy.resize_video``, which is Pillow Lanczos) and metrics are computed in that raster:
the published numbers use it. ``resolution=None`` keeps the original frames; metrics are then in
original pixels unless ``metrics_resolution`` names a raster to rescale predictions to (the TAP-Vid
README asks that full-resolution predictions be scaled to 256 x 256 for metrics; the reference's
training code calls these ``eval_inference_resolution`` and ``eval_metrics_resolution``). Sizes are
``(height, width)``, the reference's order.

Metrics are fractions in ``[0, 1]``, as ``compute_tapvid_metrics`` returns them; papers (and
:meth:`TapVidReport.format_table`) multiply by 100.

Wiring a tracker
----------------
:func:`evaluate_tapvid` takes a ``track_fn(frames, queries_txy) -> (tracks_xy, visible)``: frames
``(T, H, W, 3) uint8``; queries ``(N, 3)`` as ``(frame index, x, y)`` in dinofeat pixels of those
frames; it returns ``(N, T, 2)`` dinofeat pixels and ``(N, T)`` bool. dinofeat's
:class:`~dinofeat.tracking.Tracks` are ``(T, N, ...)``: pass ``tracks.points_xy.transpose(1, 0, 2)``
and ``tracks.visible.T``.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dinofeat.errors import InputError
from dinofeat.eval import sweeps
from dinofeat.eval.sweeps import Sweep, json_metrics, percent
from dinofeat.eval.tapvid_metrics import (
    METRIC_KEYS,
    QUERY_STRIDE,
    check_protocol,
    compute_tapvid_metrics,
    describe_array,
    mean_metrics,
    sample_queries,
)
from dinofeat.io.safepickle import load_array_pickle
from dinofeat.runtime.progress import Progress
from dinofeat.wording import plural

log = logging.getLogger(__name__)

#: The raster the published numbers are computed in, ``(height, width)``.
DEFAULT_RESOLUTION = (256, 256)

#: The table's columns: AJ, δ_avg, OA.
HEADLINE_KEYS = ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")

TrackFn = Callable[[np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray]"]


# -- coordinates --------------------------------------------------------------------------------
def raster_to_pixels(points_xy) -> np.ndarray:
    """Reference raster ``(..., 2)`` x, y (image spans ``[0, W]``) -> dinofeat pixels (``[-0.5, W - 0.5]``).

    >>> raster_to_pixels([[0.0, 0.0], [128.0, 64.0]])
    array([[ -0.5,  -0.5],
           [127.5,  63.5]])
    """
    return np.asarray(points_xy, dtype=np.float64) - 0.5


def pixels_to_raster(points_xy) -> np.ndarray:
    """dinofeat pixels ``(..., 2)`` x, y -> the reference raster; the inverse of :func:`raster_to_pixels`.

    >>> pixels_to_raster([[0.0, 0.0], [255.0, 255.0]])
    array([[  0.5,   0.5],
           [255.5, 255.5]])
    """
    return np.asarray(points_xy, dtype=np.float64) + 0.5


# -- reading the pickles ------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TapVidVideo:
    """One TAP-Vid video as the pickles store it (validated by :meth:`from_record`).

    Attributes:
        name: the DAVIS video name, or the record's index for list pickles (RGB-Stacking, Kinetics).
        video: ``(T, H, W, 3) uint8`` frames, or ``T`` encoded (JPEG) frames as the Kinetics pickles
            hold them; :meth:`frames` gives decoded frames either way.
        points: ``(N, T, 2)`` float64, x, y normalised to ``[0, 1]``.
        occluded: ``(N, T)`` bool, True where the point is occluded (or outside the frame).
    """

    name: str
    video: np.ndarray | Sequence[bytes]
    points: np.ndarray
    occluded: np.ndarray

    @property
    def num_frames(self) -> int:
        return int(self.occluded.shape[1])

    @property
    def num_tracks(self) -> int:
        return int(self.occluded.shape[0])

    def frames(self) -> np.ndarray:
        """``(T, H, W, 3) uint8`` RGB frames at the original size (JPEG frames decoded on each call)."""
        if isinstance(self.video, np.ndarray) and self.video.dtype == np.uint8:
            return self.video
        return _decode_frames(self.video, f"video {self.name!r}")

    @classmethod
    def from_record(cls, name: str, record: Any, where: str = "") -> TapVidVideo:
        """Check a ``{"video", "points", "occluded"}`` record (``where`` prefixes error messages)."""
        label = f"{where}: video {name!r}" if where else f"video {name!r}"
        if not isinstance(record, Mapping):
            raise InputError(f"{label} is {type(record).__name__} data, expected a dict with video, points, occluded")
        missing = [key for key in ("video", "points", "occluded") if key not in record]
        if missing:
            raise InputError(f"{label} has no {', '.join(repr(k) for k in missing)}")
        video, frame_count = _check_video(record["video"], label)
        points, occluded = record["points"], record["occluded"]
        if not isinstance(occluded, np.ndarray) or occluded.dtype != np.bool_ or occluded.ndim != 2:
            raise InputError(f"{label}: 'occluded' must be a bool (N, T) array, got {describe_array(occluded)}")
        tracks = occluded.shape[0]
        if (
            not isinstance(points, np.ndarray)
            or not np.issubdtype(points.dtype, np.floating)
            or points.shape != (tracks, occluded.shape[1], 2)
        ):
            raise InputError(
                f"{label}: 'points' must be a float (N, T, 2) array matching 'occluded' "
                f"{occluded.shape}, got {describe_array(points)}"
            )
        if occluded.shape[1] != frame_count:
            raise InputError(f"{label}: {frame_count} frames but tracks of {occluded.shape[1]} frames")
        if not np.isfinite(points[~occluded]).all():
            raise InputError(f"{label}: 'points' has non-finite coordinates where the point is visible")
        return cls(name=str(name), video=video, points=points.astype(np.float64), occluded=occluded.copy())


def read_tapvid(path: str | os.PathLike) -> list[TapVidVideo]:
    """Read a TAP-Vid pickle, or a folder of them (the Kinetics shards), into validated videos.

    Accepts the formats the reference readers accept: a dict name -> record (DAVIS, RoboTAP), a
    list of records (RGB-Stacking, the Kinetics shards ``NNNN_of_0010.pkl``); frames as uint8
    arrays or encoded JPEG frames (Kinetics). A folder reads every ``*.pkl`` in name order and names
    videos ``"<file stem>/<key or index>"``. Unpickling never runs code (:func:`load_array_pickle`).
    Problems raise :class:`InputError` naming the file.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.pkl"))
        if not files:
            raise InputError(f"no TAP-Vid pickles (*.pkl) in folder {path}")
        return [video for file in files for video in _read_file(file, prefix=f"{file.stem}/")]
    return _read_file(path)


def _read_file(path: Path, prefix: str = "") -> list[TapVidVideo]:
    data = load_array_pickle(path, "TAP-Vid pickle")
    if isinstance(data, Mapping):
        items = list(data.items())
    elif isinstance(data, (list, tuple)):
        items = list(enumerate(data))
    else:
        raise InputError(
            f"not a TAP-Vid pickle: {path} holds {type(data).__name__} data, "
            "expected a dict of videos (DAVIS) or a list of videos (RGB-Stacking, Kinetics)"
        )
    if not items:
        raise InputError(f"TAP-Vid pickle holds no videos: {path}")
    return [TapVidVideo.from_record(f"{prefix}{key}", record, str(path)) for key, record in items]


def _check_video(video: Any, label: str) -> tuple[np.ndarray | tuple[bytes, ...], int]:
    """Frames as stored: uint8 ``(T, H, W, 3)``, or a sequence of encoded frames (bytes)."""
    if isinstance(video, np.ndarray) and video.dtype == np.uint8:
        if video.ndim != 4 or video.shape[-1] != 3 or min(video.shape) == 0:
            raise InputError(f"{label}: 'video' must be (T, H, W, 3) uint8 frames, got shape {video.shape}")
        return video, video.shape[0]
    sequence = isinstance(video, (list, tuple)) or (isinstance(video, np.ndarray) and video.ndim == 1)
    if sequence and len(video) > 0 and all(isinstance(frame, (bytes, bytearray)) for frame in video):
        return tuple(bytes(frame) for frame in video), len(video)
    raise InputError(
        f"{label}: 'video' must be (T, H, W, 3) uint8 frames or a list of JPEG-encoded frames, "
        f"got {describe_array(video)}"
    )


def _decode_frames(encoded: np.ndarray | Sequence[bytes], label: str) -> np.ndarray:
    """Decode JPEG (any Pillow-readable) frames (a sequence or an object array of bytes), as the
    reference's Kinetics reader does."""
    frames = []
    for index, data in enumerate(encoded):
        try:
            with Image.open(io.BytesIO(data)) as image:
                frames.append(np.asarray(image.convert("RGB")))
        except Exception as err:  # noqa: BLE001 - Pillow raises many types for corrupt data
            raise InputError(f"{label}: frame {index} is not a decodable image ({_one_line(err)})") from None
        if frames[-1].shape != frames[0].shape:
            raise InputError(
                f"{label}: frame {index} is {frames[-1].shape[1]}x{frames[-1].shape[0]}, "
                f"frame 0 is {frames[0].shape[1]}x{frames[0].shape[0]}"
            )
    return np.stack(frames)


def resize_frames(frames: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize ``(T, H, W, 3) uint8`` frames to ``size_hw = (height, width)`` with Pillow's Lanczos.

    Reproduces the reference's ``resize_video`` (``mediapy.resize_video``: Pillow, Lanczos); frames
    already of that size are returned as they are.
    """
    height, width = size_hw
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack(
        [np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.LANCZOS)) for frame in frames]
    )


# -- the driver ---------------------------------------------------------------------------------
@dataclass
class TapVidVideoResult:
    """One evaluated video, everything in its evaluation raster (reference convention).

    Attributes:
        name: video name.
        raster_hw: ``(height, width)`` of the evaluation raster.
        query_points: ``(Q, 3)`` ``[t, y, x]``, as the reference samplers give them.
        target_points: ``(Q, T, 2)`` ground-truth ``[x, y]``.
        occluded: ``(Q, T)`` ground-truth occlusion.
        pred_tracks: ``(Q, T, 2)`` predicted ``[x, y]``.
        pred_occluded: ``(Q, T)`` bool, ``not visible``.
        metrics: :data:`METRIC_KEYS` -> fraction (NaN when there is nothing to count).
    """

    name: str
    raster_hw: tuple[int, int]
    query_points: np.ndarray
    target_points: np.ndarray
    occluded: np.ndarray
    pred_tracks: np.ndarray
    pred_occluded: np.ndarray
    metrics: dict[str, float]

    def to_json(self) -> dict:
        """``{"name", "raster_hw", "query_points", "pred_tracks", "pred_occluded", "metrics"}``;
        coordinates rounded to 1/1000 pixel, NaN written as null."""
        return {
            "name": self.name,
            "raster_hw": list(self.raster_hw),
            "query_points": _json_numbers(self.query_points),
            "pred_tracks": _json_numbers(self.pred_tracks),
            "pred_occluded": self.pred_occluded.astype(bool).tolist(),
            "metrics": json_metrics(self.metrics),
        }


@dataclass
class TapVidReport:
    """The result of :func:`evaluate_tapvid`: per-video results and their mean.

    Attributes:
        protocol: ``"first"`` or ``"strided"``.
        resolution: ``(height, width)`` the frames were resized to, or None (original frames).
        metrics_resolution: ``(height, width)`` metrics were rescaled to, or None (the frames' raster).
        model: free text naming the tracker (for the JSON document), or None.
        videos: one :class:`TapVidVideoResult` per video, in input order.
        mean: :func:`mean_metrics` over the videos.
    """

    protocol: str
    resolution: tuple[int, int] | None
    metrics_resolution: tuple[int, int] | None
    model: str | None
    videos: list[TapVidVideoResult]
    mean: dict[str, float]

    def to_json(self) -> dict:
        """The evaluation document (a contract for the CLI's ``--json``)::

            {"protocol": "first" | "strided",
             "resolution": [H, W] | "full",          # the frames given to the tracker
             "metrics_resolution": [H, W] | "full",  # the raster metrics are computed in
             "model": str | null,
             "videos": [{"name", "raster_hw": [H, W],
                         "query_points": [[t, y, x], ...],          # evaluation raster, as the
                         "pred_tracks": [[[x, y] per frame] per query],  # reference samplers give them
                         "pred_occluded": [[bool per frame] per query],
                         "metrics": {METRIC_KEYS: fraction | null}}, ...],
             "mean": {METRIC_KEYS: fraction | null}}

        Coordinates are in the reference raster (image spans ``[0, W]``); metrics are fractions.
        """
        metrics_resolution = self.metrics_resolution or self.resolution
        return {
            "protocol": self.protocol,
            "resolution": list(self.resolution) if self.resolution else "full",
            "metrics_resolution": list(metrics_resolution) if metrics_resolution else "full",
            "model": self.model,
            "videos": [video.to_json() for video in self.videos],
            "mean": json_metrics(self.mean),
        }

    def format_table(self) -> str:
        """Plain-text table, one row per video and the mean: queries, frames, AJ, δ_avg, OA (in %)."""
        mean_label = f"mean ({plural(len(self.videos), 'video')})"
        width = max(len("video"), len(mean_label), *(len(video.name) for video in self.videos))
        header = f"{'video':<{width}}  {'queries':>7}  {'frames':>6}  {'AJ':>6}  {'δ_avg':>6}  {'OA':>6}"
        lines = [header, "-" * len(header)]
        for video in self.videos:
            lines.append(
                f"{video.name:<{width}}  {len(video.query_points):>7}  {video.pred_occluded.shape[1]:>6}  "
                + _headline(video.metrics)
            )
        lines += ["-" * len(header), f"{mean_label:<{width}}  {'':>7}  {'':>6}  " + _headline(self.mean)]
        return "\n".join(lines)


def evaluate_tapvid(
    videos: Iterable[TapVidVideo],
    track_fn: TrackFn,
    *,
    protocol: str = "first",
    resolution: tuple[int, int] | None = DEFAULT_RESOLUTION,
    metrics_resolution: tuple[int, int] | None = None,
    query_stride: int = QUERY_STRIDE,
    max_videos: int | None = None,
    model: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TapVidReport:
    """Track every video's queries with ``track_fn`` and score them as the TAP-Vid reference does.

    For each video: frames resized to ``resolution`` (Lanczos; None keeps the original size);
    ground truth placed on that raster (``x = u * W``); queries sampled by ``protocol``
    (:func:`sample_queries`); ``track_fn`` called with the frames and the queries in dinofeat pixels;
    its answer moved back to the raster (and rescaled to ``metrics_resolution`` if given); then
    :func:`compute_tapvid_metrics`. The report's mean is :func:`mean_metrics` over the videos. A
    video with no query (no visible point) is not tracked; its metrics are NaN and skip the mean.

    Args:
        videos: e.g. :func:`read_tapvid`'s list.
        track_fn: ``track_fn(frames, queries_txy) -> (tracks_xy, visible)``; ``frames`` ``(T, H, W, 3)
            uint8``; ``queries_txy`` ``(N, 3)`` float64 ``(frame index, x, y)`` in dinofeat pixels of
            those frames (centre of the top-left pixel at (0, 0)); returns ``tracks_xy`` ``(N, T, 2)``
            float dinofeat pixels and ``visible`` ``(N, T)`` bool. It must treat queries
            independently (the TAP-Vid rules).
        protocol: ``"first"`` (query at each track's first visible frame, score later frames) or
            ``"strided"`` (a query every ``query_stride`` frames where visible, score all others).
        resolution: ``(height, width)`` of the frames the tracker sees; None for the original frames.
        metrics_resolution: ``(height, width)`` raster to compute metrics in; None for the
            frames' raster. ``resolution=None, metrics_resolution=(256, 256)`` is the README's
            full-resolution category.
        query_stride: frames between strided queries (5 in TAP-Vid).
        max_videos: evaluate only the first this many videos.
        model: free text recorded in the JSON document.
        progress: called as ``progress(done, total)`` after each video.
    """
    protocol = check_protocol(protocol)
    resolution = _check_size(resolution, "resolution")
    metrics_resolution = _check_size(metrics_resolution, "metrics_resolution")
    if max_videos is not None:
        if not isinstance(max_videos, (int, np.integer)) or max_videos < 1:
            raise InputError(f"max_videos must be a positive whole number, got {max_videos!r}")
        videos = itertools.islice(videos, max_videos)
    videos = list(videos)
    if not videos:
        raise InputError("no TAP-Vid videos to evaluate")
    results = []
    for done, video in enumerate(videos, start=1):
        results.append(
            evaluate_video(
                video,
                track_fn,
                protocol=protocol,
                resolution=resolution,
                metrics_resolution=metrics_resolution,
                query_stride=query_stride,
            )
        )
        log.info(
            "%s: AJ %s, δ_avg %s, OA %s (%d queries)",
            video.name,
            *_headline(results[-1].metrics).split(),
            len(results[-1].query_points),
        )
        if progress is not None:
            progress(done, len(videos))
    return TapVidReport(
        protocol=protocol,
        resolution=resolution,
        metrics_resolution=metrics_resolution,
        model=model,
        videos=results,
        mean=mean_metrics([r.metrics for r in results]),
    )


def evaluate_video(
    video: TapVidVideo,
    track_fn: TrackFn,
    *,
    protocol: str = "first",
    resolution: tuple[int, int] | None = DEFAULT_RESOLUTION,
    metrics_resolution: tuple[int, int] | None = None,
    query_stride: int = QUERY_STRIDE,
) -> TapVidVideoResult:
    """One video of :func:`evaluate_tapvid` (same arguments)."""
    protocol = check_protocol(protocol)
    resolution = _check_size(resolution, "resolution")
    metrics_resolution = _check_size(metrics_resolution, "metrics_resolution")
    frames = video.frames()
    if resolution is not None:
        frames = resize_frames(frames, resolution)
    frames = frames.view()
    frames.flags.writeable = False  # the tracker gets the dataset's own array at full resolution
    num_frames, height, width = frames.shape[:3]
    if num_frames != video.num_frames:
        raise InputError(f"video {video.name!r}: {num_frames} frames but tracks of {video.num_frames} frames")
    eval_h, eval_w = metrics_resolution or (height, width)
    # The reference multiplies normalised points by the raster size, then samples queries from them.
    queries = sample_queries(protocol, video.occluded, video.points * [width, height], stride=query_stride)
    scored = (
        queries
        if (eval_h, eval_w) == (height, width)
        else sample_queries(protocol, video.occluded, video.points * [eval_w, eval_h], stride=query_stride)
    )
    if len(queries) == 0:
        log.warning(
            "video %r has no query (no visible point under protocol %r); its metrics are undefined",
            video.name,
            protocol,
        )
        pred_tracks = np.zeros((0, num_frames, 2))
        pred_occluded = np.zeros((0, num_frames), dtype=bool)
    else:
        queries_txy = np.column_stack([queries.query_points[:, 0], raster_to_pixels(queries.query_points[:, [2, 1]])])
        tracks_xy, visible = _call_track_fn(track_fn, frames, queries_txy, video.name)
        pred_tracks = pixels_to_raster(tracks_xy) * [eval_w / width, eval_h / height]
        pred_occluded = ~visible
    metrics = compute_tapvid_metrics(
        scored.query_points, scored.occluded, scored.target_points, pred_occluded, pred_tracks, protocol
    )
    return TapVidVideoResult(
        name=video.name,
        raster_hw=(eval_h, eval_w),
        query_points=scored.query_points,
        target_points=scored.target_points,
        occluded=scored.occluded,
        pred_tracks=pred_tracks,
        pred_occluded=pred_occluded,
        metrics=metrics,
    )


def _call_track_fn(
    track_fn: TrackFn, frames: np.ndarray, queries_txy: np.ndarray, name: str
) -> tuple[np.ndarray, np.ndarray]:
    answer = track_fn(frames, queries_txy.copy())
    if not isinstance(answer, tuple) or len(answer) != 2:
        raise InputError(f"video {name!r}: track_fn must return (tracks_xy, visible), got {type(answer).__name__}")
    tracks_xy, visible = np.asarray(answer[0]), np.asarray(answer[1])
    want = (len(queries_txy), len(frames))
    if tracks_xy.shape != want + (2,) or not np.issubdtype(tracks_xy.dtype, np.number):
        raise InputError(
            f"video {name!r}: track_fn returned tracks {describe_array(tracks_xy)}, expected "
            f"float {want + (2,)} (queries, frames, x/y)"
        )
    if visible.shape != want or visible.dtype != np.bool_:
        raise InputError(f"video {name!r}: track_fn returned visible {describe_array(visible)}, expected bool {want}")
    return tracks_xy.astype(np.float64), visible


def _check_size(size, what: str) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        height, width = (int(side) for side in size)
        ok = (height, width) == tuple(size) and height > 0 and width > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"{what} must be (height, width) in whole pixels or None, got {size!r}")
    return height, width


# -- parameter sweeps ---------------------------------------------------------------------------
#: The table's columns: AJ, δ_avg and OA.
TABLE_COLUMNS = (("AJ", "average_jaccard"), ("δ_avg", "average_pts_within_thresh"), ("OA", "occlusion_accuracy"))


def run_sweep(
    grid: Mapping[str, Sequence[float]],
    evaluate: Callable[[dict[str, float]], TapVidReport],
    *,
    metric: str = "average_jaccard",
    progress: Progress | None = None,
) -> Sweep:
    """Evaluate every combination of the swept values (:func:`dinofeat.eval.sweeps.run_sweep`) with
    ``evaluate(settings) -> TapVidReport`` (e.g. ``lambda s: evaluate_tapvid(videos, make_track_fn(**s))``);
    the table shows AJ, δ_avg and OA, and :meth:`~dinofeat.eval.sweeps.Sweep.best` ranks by ``metric``."""
    if metric not in METRIC_KEYS:
        raise InputError(f"unknown metric {metric!r}; use one of {', '.join(METRIC_KEYS)}")
    return sweeps.run_sweep(
        grid, lambda settings: evaluate(settings).mean, metric=metric, columns=TABLE_COLUMNS, progress=progress
    )


# -- helpers ------------------------------------------------------------------------------------


def _json_numbers(array: np.ndarray, decimals: int = 3) -> list:
    """Nested lists of floats rounded to ``decimals``; NaN and infinities become None."""
    array = np.round(np.asarray(array, dtype=np.float64), decimals)
    listed = array.tolist()
    if np.isfinite(array).all():
        return listed

    def clean(value):
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value if math.isfinite(value) else None

    return clean(listed)


def _headline(metrics: Mapping[str, float]) -> str:
    """AJ, δ_avg and OA in %, each 6 characters wide."""
    return "  ".join(percent(metrics.get(key, math.nan)) for key in HEADLINE_KEYS)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."
