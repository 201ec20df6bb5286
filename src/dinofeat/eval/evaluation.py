"""The ``dinofeat eval`` jobs: dinofeat's tracker on TAP-Vid and its matcher on SPair-71k, scored
the way the benchmarks' reference code scores (:mod:`dinofeat.eval.tapvid`, :mod:`dinofeat.eval.spair`).

* :func:`tracker_fn` / :func:`evaluate_tapvid_file` - each query tracked forward *and backward*
  from its frame (:func:`~dinofeat.tracking.track_both_ways`), with the tracker's options; and
  :func:`sweep_tapvid`, which re-runs the tracker for every combination of swept options (features
  are computed once per video), so thresholds can be chosen from the numbers.
* :func:`matcher_fn` / :func:`evaluate_spair_folder` - each source keypoint transferred with the
  exact sub-pixel matcher (:func:`~dinofeat.matching.match_features`, options as in ``match``).
* :func:`segmenter_fn` / :func:`evaluate_davis_folder` - each DAVIS sequence segmented from its
  first annotation by label propagation (:class:`~dinofeat.segmentation.VideoSegmenter`); and
  :func:`sweep_davis`, every combination of swept propagation options on features computed once.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from dinofeat.errors import InputError
from dinofeat.eval.davis import DavisReport, DavisSequence, SegmentFn, evaluate_davis, read_davis, segment_sequence
from dinofeat.eval.davis_metrics import ObjectScore, mean_scores, score_sequence
from dinofeat.eval.spair import MatchFn, SPairReport, evaluate_spair, read_spair
from dinofeat.eval.sweeps import Sweep, SweepRun
from dinofeat.eval.tapvid import (
    DEFAULT_RESOLUTION,
    TABLE_COLUMNS,
    TapVidReport,
    TapVidVideo,
    TrackFn,
    evaluate_tapvid,
    evaluate_video,
    read_tapvid,
)
from dinofeat.eval.tapvid_metrics import mean_metrics
from dinofeat.features.cache import FeatureCache
from dinofeat.features.extractor import Extractor
from dinofeat.features.source import FeatureSource, expect_images
from dinofeat.matching import match_features
from dinofeat.options import DavisOptions, MatchOptions, SegmentOptions, SPairOptions, TapVidOptions, TrackerOptions
from dinofeat.runtime.progress import Progress, report
from dinofeat.segmentation import LABEL_VOID, VideoSegmenter, mask_to_patch_labels, patch_labels_to_mask
from dinofeat.tracking import track_both_ways
from dinofeat.tracks import Tracks


def tracker_fn(extractor: FeatureSource, options: TrackerOptions | None = None) -> TrackFn:
    """A TAP-Vid ``track_fn(frames, queries_txy) -> (tracks_xy, visible)`` running dinofeat's
    tracker both ways from each query's frame: ``frames`` ``(T, H, W, 3) uint8``, queries
    ``(N, 3)`` ``(t, x, y)`` dinofeat pixels; returns ``(N, T, 2)`` pixels and ``(N, T)`` bool.
    Queries are tracked independently (the benchmark's rule)."""
    options = options or TrackerOptions()

    def track(frames: np.ndarray, queries_txy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        steps = track_both_ways(enumerate(frames), queries_txy, extractor, options)
        tracks = Tracks.from_steps(queries_txy, list(steps))
        return tracks.points_xy.permute(1, 0, 2).numpy(), tracks.visible.T.numpy()

    return track


def _protocol(options: TapVidOptions) -> dict:
    """``evaluate_tapvid`` arguments: 256x256 frames and raster, or original ones."""
    resolution = None if options.full_resolution else DEFAULT_RESOLUTION
    return {"protocol": options.protocol, "resolution": resolution}


def evaluate_tapvid_file(
    path: str | os.PathLike,
    extractor: FeatureSource,
    options: TapVidOptions | None = None,
    tracker: TrackerOptions | None = None,
    *,
    progress: Progress | None = None,
) -> TapVidReport:
    """The ``dinofeat eval tapvid`` job: read an official TAP-Vid pickle (or a folder of them),
    track every video's queries with dinofeat's tracker, score with the reference metrics."""
    options = options or TapVidOptions()
    videos = read_tapvid(path)
    expect_images(extractor, sum(video.num_frames for video in videos[: options.max_videos]))
    return evaluate_tapvid(
        videos,
        tracker_fn(extractor, tracker),
        max_videos=options.max_videos,
        model=_model_name(extractor),
        progress=progress,
        **_protocol(options),
    )


def sweep_tapvid(
    videos: Sequence[TapVidVideo],
    extractor: Extractor,
    grid: Mapping[str, Sequence[float]],
    options: TapVidOptions | None = None,
    tracker: TrackerOptions | None = None,
    *,
    metric: str = "average_jaccard",
    progress: Progress | None = None,
) -> Sweep:
    """The mean metrics for every combination of swept tracker options (``grid``: option name ->
    values, e.g. ``{"min_score": [0.3, ..., 0.8]}``, names of :class:`~dinofeat.options.TrackerOptions`).

    Videos are visited one at a time and every setting tracked on each, so a video's features are
    computed once (a :class:`~dinofeat.features.cache.FeatureCache` the size of the longest video).
    """
    options = options or TapVidOptions()
    tracker = tracker or TrackerOptions()
    videos = list(videos)[: options.max_videos]
    if not videos:
        raise InputError("no TAP-Vid videos to evaluate")
    settings = _sweep_settings(grid)
    trackers = [tracker.replace(**setting) for setting in settings]  # every value checked before any work
    cache = FeatureCache(extractor, size=max(video.num_frames for video in videos))
    expect_images(cache, sum(video.num_frames for video in videos))
    per_setting: list[list[dict]] = [[] for _ in settings]
    total, done = len(videos) * len(settings), 0
    for video in videos:
        for results, setting_tracker in zip(per_setting, trackers):
            result = evaluate_video(video, tracker_fn(cache, setting_tracker), **_protocol(options))
            results.append(result.metrics)
            done += 1
            report(progress, done, total)
    runs = [SweepRun(settings=setting, mean=mean_metrics(results)) for setting, results in zip(settings, per_setting)]
    return Sweep(names=list(grid), runs=runs, metric=metric, columns=TABLE_COLUMNS)


def sweep_trackers(grid: Mapping[str, Sequence[float]], tracker: TrackerOptions | None = None) -> list[TrackerOptions]:
    """The tracker options of every combination of swept values, each checked (call it before any
    work: a wrong name or value is a one-line error)."""
    tracker = tracker or TrackerOptions()
    return [tracker.replace(**setting) for setting in _sweep_settings(grid)]


def _sweep_settings(grid: Mapping[str, Sequence[float]]) -> list[dict]:
    """Every combination of the swept values, as ``{name: value}``, after checking the names are
    tracker options."""
    names = list(grid)
    unknown = [name for name in names if name not in TrackerOptions.__dataclass_fields__]
    if unknown or not names:
        raise InputError(
            f"cannot sweep {', '.join(unknown) or 'nothing'}: sweep tracker options such as "
            "min_score=0.3:0.8:0.05 or cycle_tolerance=7:28:7"
        )
    return [dict(zip(names, values)) for values in itertools.product(*(grid[name] for name in names))]


def matcher_fn(extractor: FeatureSource, options: MatchOptions | None = None) -> MatchFn:
    """An SPair ``match_fn(image_a, image_b, points_xy) -> target_xy`` using the exact matcher;
    keypoints are clamped into image A (a few sit on the image's outer edge); matches that fail a
    check asked for (``require_mutual``, ``max_ratio``, ``ransac``) come back NaN, i.e. a miss."""
    options = options or MatchOptions()

    def transfer(image_a: np.ndarray, image_b: np.ndarray, points_xy: np.ndarray) -> np.ndarray:
        fa, fb = extractor.extract_arrays([image_a, image_b])
        w, h = fa.image_size_wh
        points = np.stack([np.clip(points_xy[:, 0], -0.5, w - 0.5), np.clip(points_xy[:, 1], -0.5, h - 0.5)], 1)
        matches = match_features(fa, fb, points, options)
        target = matches.target_xy.double().numpy()
        target[~matches.keep.numpy()] = np.nan
        return target

    return transfer


def evaluate_spair_folder(
    root: str | os.PathLike,
    extractor: FeatureSource,
    options: SPairOptions | None = None,
    matching: MatchOptions | None = None,
    *,
    progress: Progress | None = None,
) -> SPairReport:
    """The ``dinofeat eval spair`` job: read a split of an SPair-71k folder, transfer every source
    keypoint into the target image, score PCK@alpha per point and per image, overall and per category."""
    options = options or SPairOptions()
    pairs = read_spair(root, split=options.split, limit=options.limit)
    expect_images(extractor, 2 * len(pairs))
    return evaluate_spair(
        pairs, matcher_fn(extractor, matching), alphas=options.alphas, model=_model_name(extractor), progress=progress
    )


def _model_name(extractor: FeatureSource) -> str:
    return extractor.options.model


def tapvid_sweep_json(sweep: Sweep, extractor: FeatureSource, options: TapVidOptions | None = None) -> dict:
    """The ``dinofeat eval tapvid --sweep --json`` document: the protocol and the frames' raster
    the sweep ran with (as :meth:`~dinofeat.eval.tapvid.TapVidReport.to_json` writes them: ``[H, W]`` or
    ``"full"``), the model, and :meth:`~dinofeat.eval.sweeps.Sweep.to_json`."""
    protocol = _protocol(options or TapVidOptions())
    resolution = protocol["resolution"]
    return {
        "protocol": protocol["protocol"],
        "resolution": list(resolution) if resolution else "full",
        "model": _model_name(extractor),
        "sweep": sweep.to_json(),
    }


# -- DAVIS --------------------------------------------------------------------------------------
#: The options of :class:`~dinofeat.options.SegmentOptions` that propagation reads (``eval davis``
#: takes these flags and sweeps these names).
PROPAGATION_OPTIONS = ("context_frames", "top_k", "radius", "temperature")
#: ``dinofeat eval davis --sweep``'s table: J&F, J and F means (keys of ``MeanScores.flat``).
DAVIS_COLUMNS = (("J&F", "J&F-Mean"), ("J", "J-Mean"), ("F", "F-Mean"))


def segmenter_fn(extractor: FeatureSource, options: SegmentOptions | None = None) -> SegmentFn:
    """A DAVIS ``segment_fn(frames, first_mask) -> masks`` running dinofeat's label propagation.

    The first frame's mask becomes soft patch labels (:func:`~dinofeat.segmentation.mask_to_patch_labels`,
    labels 0..K, void pixels left out); each later frame's soft labels come from
    :class:`~dinofeat.segmentation.VideoSegmenter` (the first frame and the last
    ``options.context_frames`` frames), and become a mask at the frame's pixels
    (:func:`~dinofeat.segmentation.patch_labels_to_mask`) after each label's soft map is rescaled to
    ``[0, 1]`` over the frame, as the reference protocol does before its argmax (``rescale=True``;
    the segmenter keeps the soft labels as they are). Frames go through the model in batches of
    ``extractor.batch_size``.
    """
    options = options or SegmentOptions()

    def segment(frames: Iterator[np.ndarray], first_mask: np.ndarray) -> Iterator[np.ndarray]:
        num_labels = int(np.where(first_mask == LABEL_VOID, 0, first_mask).max()) + 1
        segmenter: VideoSegmenter | None = None
        for batch in _batches(frames, extractor.batch_size):
            for fmap in extractor.extract_arrays(batch):
                if segmenter is None:
                    segmenter = VideoSegmenter(fmap, mask_to_patch_labels(first_mask, fmap, num_labels), options)
                    continue
                mask, _ = patch_labels_to_mask(segmenter.step(fmap), fmap, rescale=True)
                yield mask

    return segment


def _batches(frames: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def evaluate_davis_folder(
    root: str | os.PathLike,
    extractor: FeatureSource,
    options: DavisOptions | None = None,
    segment: SegmentOptions | None = None,
    *,
    results_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> DavisReport:
    """The ``dinofeat eval davis`` job: read a DAVIS 2017 folder's set, segment every sequence from its
    first annotation by label propagation, score J and F as the official evaluator does; with
    ``results_dir`` the masks are written in the official results layout."""
    options = options or DavisOptions()
    sequences = read_davis(root, subset=options.subset, sequences=options.sequences)
    expect_images(extractor, sum(sequence.num_frames for sequence in sequences))
    return evaluate_davis(sequences, segmenter_fn(extractor, segment), results_dir=results_dir, progress=progress)


def sweep_davis(
    sequences: Sequence[DavisSequence],
    extractor: Extractor,
    grid: Mapping[str, Sequence[float]],
    segment: SegmentOptions | None = None,
    *,
    progress: Progress | None = None,
) -> Sweep:
    """The benchmark's means for every combination of swept propagation options (``grid``: option
    name -> values, names of :data:`PROPAGATION_OPTIONS`, e.g. ``{"top_k": [1, 3, 5, 10]}``).

    Sequences are visited one at a time and every setting run on each, so a sequence's features are
    computed once (a :class:`~dinofeat.features.cache.FeatureCache` the size of the longest one).
    """
    sequences = list(sequences)
    if not sequences:
        raise InputError("no DAVIS sequences to evaluate")
    settings = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    segmenters = sweep_segmenters(grid, segment)  # every value checked before any work
    cache = FeatureCache(extractor, size=max(sequence.num_frames for sequence in sequences))
    expect_images(cache, sum(sequence.num_frames for sequence in sequences))
    per_setting: list[list[ObjectScore]] = [[] for _ in settings]
    total, done = len(sequences) * len(settings), 0
    for sequence in sequences:
        truth = sequence.read_annotations()
        for objects, options in zip(per_setting, segmenters):
            predicted = np.stack(list(segment_sequence(sequence, segmenter_fn(cache, options))))
            objects.extend(score_sequence(truth, predicted))
            done += 1
            report(progress, done, total)
    runs = [
        SweepRun(settings=setting, mean=mean_scores(objects).flat()) for setting, objects in zip(settings, per_setting)
    ]
    return Sweep(names=list(grid), runs=runs, metric="J&F-Mean", columns=DAVIS_COLUMNS)


def sweep_segmenters(
    grid: Mapping[str, Sequence[float]], segment: SegmentOptions | None = None
) -> list[SegmentOptions]:
    """The segmentation options of every combination of swept values, each checked (call it before
    any work: a wrong name or value is a one-line error)."""
    segment = segment or SegmentOptions()
    names = list(grid)
    unknown = [name for name in names if name not in PROPAGATION_OPTIONS]
    if unknown or not names:
        raise InputError(
            f"cannot sweep {', '.join(unknown) or 'nothing'}: sweep propagation options "
            f"({', '.join(PROPAGATION_OPTIONS)}) such as top_k=1:10:1 or temperature=0.05,0.1,0.2"
        )
    return [segment.replace(**dict(zip(names, values))) for values in itertools.product(*grid.values())]


def davis_sweep_json(sweep: Sweep, extractor: FeatureSource, options: DavisOptions | None = None) -> dict:
    """The ``dinofeat eval davis --sweep --json`` document: the set, the model and its resolution,
    and :meth:`~dinofeat.eval.sweeps.Sweep.to_json` (means keyed as the official global table)."""
    options = options or DavisOptions()
    return {
        "set": options.subset,
        "model": _model_name(extractor),
        "resolution": extractor.options.resolution,
        "sweep": sweep.to_json(),
    }
