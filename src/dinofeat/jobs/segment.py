"""The ``dinofeat segment`` job: :class:`SegmentJob` makes a first mask (given, or from clicks) and
carries its labels to other images or through a video (:mod:`dinofeat.segmentation`), then writes an
overlay, one indexed mask PNG per image or frame and a JSON of each object's area, box and
confidence, all atomically.

Two routes, chosen by the inputs:

* images: the first image's mask is ``mask`` or comes from clicks on it; every other image takes the
  first image's labels by propagation with every patch of the first image a candidate (photos of the
  same object are not aligned, so no neighbourhood; any sizes);
* one video, streamed: the first mask is on the first processed frame (``mask``), or on the frame of
  the clicks (``point_frame``; frames before it are skipped); each later processed frame is
  segmented online by a :class:`~dinofeat.segmentation.VideoSegmenter` (the first frame and the
  last ``options.context_frames`` frames, within ``options.radius`` patches).

>>> SegmentJob(["a.png"], mask="m.png").check()
Traceback (most recent call last):
...
dinofeat.errors.InputError: nothing to write: give output=OUT.png|OUT.mp4, masks_dir=DIR and/or json=OUT.json

Coordinates are float ``(x, y)`` pixels of the original image or frame (centre of the top-left
pixel at ``(0, 0)``); frame indices count from 0 in the video.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from dinofeat.dataset.listing import VIDEO_SUFFIXES
from dinofeat.drawing import draw_pca_grid, draw_segmentation
from dinofeat.errors import InputError, field
from dinofeat.features.featuremap import check_inside
from dinofeat.features.source import expect_images
from dinofeat.io import video as video_io  # called through the module: the tests count probes
from dinofeat.io.frames import frames_to_process
from dinofeat.io.images import load_image
from dinofeat.io.masks import read_mask, save_mask
from dinofeat.io.outputs import check_outputs, check_suffix, format_json, save_image, staged_outputs
from dinofeat.io.suffixes import IMAGE_OUTPUTS, VIDEO_OUTPUTS
from dinofeat.jobs.base import PathLike
from dinofeat.options import FrameOptions, SegmentOptions
from dinofeat.runtime.progress import report
from dinofeat.segmentation import (
    LABEL_VOID,
    MAX_LABEL,
    VideoSegmenter,
    check_mask,
    mask_from_clicks,
    mask_to_patch_labels,
    patch_labels_to_mask,
    propagate_labels,
)

if TYPE_CHECKING:  # types only
    from dinofeat.features.featuremap import FeatureMap
    from dinofeat.features.source import FeatureSource
    from dinofeat.features.upsample import Upsampler
    from dinofeat.io.video import VideoInfo
    from dinofeat.runtime.progress import Progress


@dataclass(frozen=True)
class ObjectStats:
    """One label in one image or frame.

    Attributes:
        area_px: its pixels.
        bbox_xyxy: ``(x_min, y_min, x_max, y_max)``, inclusive pixel indices; None when empty.
        mean_confidence: the mean confidence (:func:`~dinofeat.segmentation.patch_labels_to_mask`)
            over its pixels, in [0, 1]; None when empty.
    """

    area_px: int
    bbox_xyxy: tuple[int, int, int, int] | None
    mean_confidence: float | None

    def to_json(self) -> dict:
        return {
            "area_px": self.area_px,
            "bbox_xyxy": None if self.bbox_xyxy is None else list(self.bbox_xyxy),
            "mean_confidence": None if self.mean_confidence is None else round(self.mean_confidence, 4),
        }


def object_stats(labels: np.ndarray, confidence: np.ndarray, objects: Sequence[int]) -> dict[int, ObjectStats]:
    """:class:`ObjectStats` of each label of ``objects`` in ``(H, W)`` ``labels``.

    >>> object_stats(np.array([[0, 1], [1, 1]]), np.full((2, 2), 0.5), [1, 2])[1]
    ObjectStats(area_px=3, bbox_xyxy=(0, 0, 1, 1), mean_confidence=0.5)
    """
    stats = {}
    for label in objects:
        where = labels == label
        area = int(where.sum())
        if area == 0:
            stats[label] = ObjectStats(0, None, None)
            continue
        ys, xs = np.nonzero(where)
        box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        stats[label] = ObjectStats(area, box, float(confidence[where].mean()))
    return stats


@dataclass(frozen=True)
class SegmentedFrame:
    """The labels found in one image (``name`` its path) or video frame (``frame_index``, ``time_s``)."""

    name: str
    objects: dict[int, ObjectStats]
    frame_index: int | None = None
    time_s: float | None = None

    def to_json(self) -> dict:
        where: dict[str, object] = (
            {"image": self.name} if self.frame_index is None else {"frame": self.frame_index, "time_s": self.time_s}
        )
        return {**where, "objects": {str(label): stats.to_json() for label, stats in self.objects.items()}}


@dataclass(frozen=True)
class SegmentResult:
    """What :meth:`SegmentJob.run` found: each image's or frame's objects, the object labels;
    ``upsample``: how the masks were read (``{"upsample": "anyup", "upsample_scale": S or None}``),
    None for the bilinear read of patch labels."""

    frames: list[SegmentedFrame]
    objects: tuple[int, ...]
    video: bool
    upsample: dict[str, object] | None = None

    def summary(self) -> str:
        """``12 frames, 2 objects (mean area 1520, 310 px)``."""
        unit = "frames" if self.video else "image(s)"
        areas = [
            np.mean([frame.objects[label].area_px for frame in self.frames]) if self.frames else 0.0
            for label in self.objects
        ]
        shown = ", ".join(f"{area:.0f}" for area in areas)
        return f"{len(self.frames)} {unit}, {len(self.objects)} object(s) (mean area {shown} px)"


@dataclass(frozen=True)
class MaskReader:
    """Soft patch labels -> a mask at the original pixels: read bilinearly from the patch grid
    (:func:`~dinofeat.segmentation.patch_labels_to_mask`), or, with an ``upsampler``, first brought
    to pixel level by AnyUp's attention (:meth:`~dinofeat.features.upsample.Upsampler.upsample_values`:
    each pixel mixes its window's patch labels with the weights its features get, so edges follow
    the image), at ``scale`` x the patch grid (None: one cell per processed pixel)."""

    upsampler: Upsampler | None = None
    scale: int | None = None

    def __call__(self, soft: torch.Tensor, fmap: FeatureMap, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(h, w, L)`` soft labels on ``fmap``'s grid, the ``(H, W, 3)`` image -> ``(H, W)`` uint8
        labels and float32 confidence."""
        if self.upsampler is None:
            return patch_labels_to_mask(soft, fmap)
        fine = self.upsampler.upsample_values(fmap, image, soft, scale=self.scale)
        return patch_labels_to_mask(fine.features, fine)

    def describe(self) -> dict[str, object] | None:
        """``{"upsample": "anyup", "upsample_scale": S or None}`` with an upsampler, else None."""
        return None if self.upsampler is None else {"upsample": "anyup", "upsample_scale": self.scale}


@dataclass(frozen=True)
class _Checked:
    """What :meth:`SegmentJob.check` found."""

    route: str  # "images" or "video"
    size_wh: tuple[int, int]  # of the first image, or the video's frames
    first_mask: np.ndarray | None  # the given mask, checked, uint8
    objects: tuple[int, ...]  # object labels (1..254) of the first mask or the clicks
    mask_files: list[str]  # one per image, or per written frame
    info: VideoInfo | None = None
    key_frame: int = 0  # video: the frame of the first mask
    written_frames: range = range(0)  # video: the frames segmented and written


@dataclass
class SegmentJob:
    """Segment objects across images or through one video and write the results.

    Attributes:
        inputs: image files, or one video file (:data:`~dinofeat.dataset.listing.VIDEO_SUFFIXES`).
        mask: the first image's (or processed frame's) labels: an indexed or grayscale PNG
            (:func:`~dinofeat.io.masks.read_mask`), 0 background, 1 to 254 objects, 255 void.
        points_xy: clicks ``(x, y)`` on objects of the first image (a video: of frame ``point_frame``).
        point_labels: each click's object label (1 to 254; default 1 for every click).
        point_frame: a video: the frame the clicks are on (a processed frame; default the first).
        negatives_xy: clicks ``(x, y)`` on the background, on the same image or frame.
        output: an overlay (each object's colour, contour and a legend): an image for images (a
            labelled grid for several, :data:`~dinofeat.io.suffixes.IMAGE_OUTPUTS`) or an H.264
            video of the input's size at ``fps / every`` (:data:`~dinofeat.io.suffixes.VIDEO_OUTPUTS`).
        masks_dir: one indexed PNG per image (``<stem>.png``; ``000_<stem>.png``... when stems
            repeat) or per written frame (``00000.png``: the frame index in the video), in the
            DAVIS palette; the folder is made when they are written.
        json: per image or frame and object: area in pixels, box, mean confidence.
        options: how labels are propagated and clicks become a mask (:class:`~dinofeat.options.SegmentOptions`).
        frames: which video frames are processed.
    """

    inputs: Sequence[PathLike]
    mask: PathLike | None = None
    points_xy: Sequence[Sequence[float]] = ()
    point_labels: Sequence[int] = ()
    point_frame: int | None = None
    negatives_xy: Sequence[Sequence[float]] = ()
    output: PathLike | None = None
    masks_dir: PathLike | None = None
    json: PathLike | None = None
    options: SegmentOptions = dataclasses.field(default_factory=SegmentOptions)
    frames: FrameOptions = dataclasses.field(default_factory=FrameOptions)
    _checked: _Checked | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @property
    def is_video(self) -> bool:
        return len(self.inputs) == 1 and Path(self.inputs[0]).suffix.lower() in VIDEO_SUFFIXES

    def check(self) -> None:
        """Every check that needs no model, once: the inputs, the outputs (given, suffixes, writable,
        not an input; the masks folder is made only when the masks are written), the video (probed
        once) and its frames, the first mask (its size and labels) or the clicks (inside the image,
        labels)."""
        self._checked = self._check()

    def _check(self) -> _Checked:
        if not self.inputs:
            raise InputError("no input: give images or one video")
        if any(Path(p).suffix.lower() in VIDEO_SUFFIXES for p in self.inputs) and not self.is_video:
            raise InputError("give one video, or only images")
        if not (self.output or self.masks_dir or self.json):
            raise InputError(
                f"nothing to write: give {field('output', 'OUT.png|OUT.mp4')}, {field('masks_dir', 'DIR')} "
                f"and/or {field('json', 'OUT.json')}"
            )
        self._check_first_mask_given()
        check_suffix(self.json, (".json",), field("json"))
        if self.is_video:
            check_suffix(self.output, VIDEO_OUTPUTS, f"{field('output')} for a video")
            return self._check_video()
        check_suffix(self.output, IMAGE_OUTPUTS, f"{field('output')} for images")
        return self._check_images()

    def _check_first_mask_given(self) -> None:
        if self.mask is not None and len(self.points_xy):
            raise InputError(f"give {field('mask')} or {field('points_xy')}, not both")
        if self.mask is None and not len(self.points_xy):
            raise InputError(
                f"no first mask: give {field('mask', 'MASK.png')} or clicks on the object ({field('points_xy')})"
            )
        if self.mask is None and self.point_labels and len(self.point_labels) != len(self.points_xy):
            raise InputError(f"got {len(self.point_labels)} labels for {len(self.points_xy)} points")
        if self.mask is not None and len(self.negatives_xy):
            raise InputError(f"{field('negatives_xy')} goes with clicks ({field('points_xy')}), not {field('mask')}")
        if self.point_frame is not None and not self.is_video:
            raise InputError("a click's frame (T,X,Y) is for a video; on images give X,Y")
        for label in self._click_labels():
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 1 <= label <= MAX_LABEL:
                raise InputError(f"{field('points_xy')} label {label} is not an object label (1 to {MAX_LABEL})")

    def _click_labels(self) -> list[int]:
        return list(self.point_labels) if self.point_labels else [1] * len(self.points_xy)

    def _check_images(self) -> _Checked:
        first = load_image(self.inputs[0])
        size_wh = (first.shape[1], first.shape[0])
        checked = self._checked_first(size_wh, "the first image", _Checked("images", size_wh, None, (), []))
        mask_files = self._checked_outputs(lambda folder: _image_mask_names(folder, self.inputs))
        return dataclasses.replace(checked, mask_files=mask_files)

    def _check_video(self) -> _Checked:
        video = self.inputs[0]
        info = video_io.probe_video(video)
        indices = frames_to_process(info, self.frames, video=video)
        key = indices[0] if self.point_frame is None else self.point_frame
        if key not in indices:
            raise InputError(
                f"the clicks' frame {key} is not a processed frame ({field('start', self.frames.start)}, "
                f"{field('every', self.frames.every)}, {len(indices)} frames)"
            )
        written = indices[indices.index(key) :]
        checked = _Checked("video", info.size_wh, None, (), [], info, key, written)
        checked = self._checked_first(info.size_wh, f"frame {key}", checked)
        mask_files = self._checked_outputs(lambda folder: [str(folder / f"{index:05d}.png") for index in written])
        return dataclasses.replace(checked, mask_files=mask_files)

    def _checked_outputs(self, mask_names: Callable[[Path], list[str]]) -> list[str]:
        """The outputs checked (writable, not an input, distinct) and the mask files, named by
        ``mask_names(folder)``. The masks folder is made when the masks are written (and removed
        again if the run fails), so a run that fails leaves no empty folder."""
        inputs = [*self.inputs, *([self.mask] if self.mask is not None else [])]
        check_outputs([self.output, self.json], inputs=inputs)
        if not self.masks_dir:
            return []
        folder = Path(self.masks_dir)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{field('masks_dir', folder)} exists and is not a folder")
        mask_files = mask_names(folder)
        check_outputs([self.output, self.json, *mask_files], inputs=inputs)
        return mask_files

    def _checked_first(self, size_wh: tuple[int, int], where: str, checked: _Checked) -> _Checked:
        """``checked`` with the first mask (read and checked against ``size_wh``) or the clicks checked."""
        if self.mask is not None:
            first = check_mask(read_mask(self.mask), size_wh, name="mask")
            objects = tuple(int(v) for v in np.unique(first) if 0 < v <= MAX_LABEL)
            if not objects:
                raise InputError(f"{field('mask')} has no object: its labels are all 0 (background) or 255 (void)")
            return dataclasses.replace(checked, first_mask=first, objects=objects)
        check_inside(np.asarray(self.points_xy, dtype=np.float64), size_wh, label=where, what="point")
        if len(self.negatives_xy):
            check_inside(np.asarray(self.negatives_xy, dtype=np.float64), size_wh, label=where, what="negative point")
        return dataclasses.replace(checked, objects=tuple(sorted(set(self._click_labels()))))

    def _checked_now(self) -> _Checked:
        if self._checked is None:
            self._checked = self._check()
        return self._checked

    # -- running ------------------------------------------------------------------------------
    def run(
        self,
        source: FeatureSource,
        progress: Progress | None = None,
        *,
        upsampler: Upsampler | None = None,
        upsample_scale: int | None = None,
    ) -> SegmentResult:
        """Segment with ``source`` and write the files (all of them, or none on failure).

        Labels are propagated (and clicks read) on the patch grid; with an ``upsampler`` each
        image's soft labels are then brought to pixel level by AnyUp's attention before the argmax
        (:class:`MaskReader`; ``upsample_scale`` S: at S x the patch grid, None: one cell per
        processed pixel), so masks follow the image's edges. ``progress(done, total)`` counts
        images or frames. A video streams: decoding, the model and
        encoding hold one batch of frames, and the segmenter a fixed number of frames' labels. Runs
        :meth:`check` first if it has not run.
        """
        checked = self._checked_now()
        read = MaskReader(upsampler, upsample_scale)
        if checked.route == "video":
            return self._run_video(source, checked, progress, read)
        return self._run_images(source, checked, progress, read)

    def _first_labels(self, fmap: FeatureMap, checked: _Checked) -> torch.Tensor:
        """Soft labels ``(h, w, L)`` of the first image or frame: its mask's, or from the clicks."""
        count = max(checked.objects) + 1
        if checked.first_mask is not None:
            return mask_to_patch_labels(checked.first_mask, fmap, count)
        positives: dict[int, list[Sequence[float]]] = {}
        for point, label in zip(self.points_xy, self._click_labels(), strict=True):
            positives.setdefault(int(label), []).append(point)
        negatives = self.negatives_xy if len(self.negatives_xy) else None
        return mask_from_clicks(fmap, positives, negatives, threshold=self.options.click_threshold, num_labels=count)

    def _first_mask(
        self, soft: torch.Tensor, fmap: FeatureMap, image: np.ndarray, checked: _Checked, read: MaskReader
    ) -> tuple[np.ndarray, np.ndarray]:
        """The first image's or frame's labels and confidence: the given mask itself, or read from ``soft``."""
        if checked.first_mask is not None:
            return checked.first_mask, (checked.first_mask != LABEL_VOID).astype(np.float32)
        return read(soft, fmap, image)

    def _run_images(
        self, source: FeatureSource, checked: _Checked, progress: Progress | None, read: MaskReader
    ) -> SegmentResult:
        images = [load_image(path) for path in self.inputs]
        maps = source.extract_arrays(images)
        first = self._first_labels(maps[0], checked)
        options = self.options
        frames, overlays, masks = [], [], []
        for index, (path, image, fmap) in enumerate(zip(self.inputs, images, maps, strict=True)):
            if index == 0:
                labels, confidence = self._first_mask(first, fmap, image, checked, read)
            else:
                soft = propagate_labels(
                    fmap, [maps[0]], [first], top_k=options.top_k, radius=None, temperature=options.temperature
                )
                labels, confidence = read(soft, fmap, image)
            frames.append(SegmentedFrame(str(path), object_stats(labels, confidence, checked.objects)))
            masks.append(labels)
            if self.output:
                overlays.append(draw_segmentation(image, labels))
            report(progress, index + 1, len(images))
        with staged_outputs([self.output, self.json, *checked.mask_files]) as temps:
            overlay_tmp, json_tmp = temps[0], temps[1]
            mask_tmps = [tmp for tmp in temps[2:] if tmp is not None]  # all: the mask files are paths
            if overlay_tmp is not None:
                names = [Path(p).name for p in self.inputs]
                figure = overlays[0] if len(overlays) == 1 else draw_pca_grid(overlays, labels=names)
                save_image(overlay_tmp, figure)
            for tmp, labels in zip(mask_tmps, masks, strict=True):
                save_mask(tmp, labels)
            result = SegmentResult(frames, checked.objects, video=False, upsample=read.describe())
            if json_tmp is not None:
                json_tmp.write_text(format_json(self.document(result, source.options.model)))
        return result

    def _run_video(
        self, source: FeatureSource, checked: _Checked, progress: Progress | None, read: MaskReader
    ) -> SegmentResult:
        info = checked.info or video_io.probe_video(self.inputs[0])
        total = len(checked.written_frames)
        expect_images(source, total)
        frames: list[SegmentedFrame] = []
        segmenter: VideoSegmenter | None = None
        with staged_outputs([self.output, self.json, *checked.mask_files]) as temps:
            video_tmp, json_tmp = temps[0], temps[1]
            mask_tmps = [tmp for tmp in temps[2:] if tmp is not None]  # all: the mask files are paths
            writer = video_io.VideoWriter(video_tmp, info.fps / self.frames.every, info.size_wh) if video_tmp else None
            with writer or contextlib.nullcontext():
                for done, (index, time_s, image, fmap) in enumerate(self._video_maps(source, checked), start=1):
                    if segmenter is None:
                        first = self._first_labels(fmap, checked)
                        segmenter = VideoSegmenter(fmap, first, self.options)
                        labels, confidence = self._first_mask(first, fmap, image, checked, read)
                    else:
                        labels, confidence = read(segmenter.step(fmap), fmap, image)
                    if mask_tmps:
                        save_mask(mask_tmps[done - 1], labels)
                    if writer is not None:
                        writer.write(draw_segmentation(image, labels), time_s)
                    stats = object_stats(labels, confidence, checked.objects)
                    frames.append(SegmentedFrame(f"{index:05d}", stats, index, round(time_s, 6)))
                    report(progress, done, total)
            result = SegmentResult(frames, checked.objects, video=True, upsample=read.describe())
            if len(frames) < total:  # the video ended before its frame count said: nothing is written
                raise InputError(
                    f"{self.inputs[0]} has {len(frames)} frames from {checked.key_frame}, fewer than it said"
                )
            if json_tmp is not None:
                json_tmp.write_text(format_json(self.document(result, source.options.model)))
        return result

    def _video_maps(
        self, source: FeatureSource, checked: _Checked
    ) -> Iterator[tuple[int, float, np.ndarray, FeatureMap]]:
        """``(frame index, time, image, feature map)`` of every frame to write, the model run on
        ``source.batch_size`` frames at a time."""
        frames = self.frames
        timed = video_io.read_timed_frames(
            self.inputs[0], start=frames.start, max_frames=frames.max_frames, every=frames.every
        )
        wanted = (frame for frame in timed if frame.frame_index >= checked.key_frame)
        while batch := list(islice(wanted, source.batch_size)):
            maps = source.extract_arrays([frame.image for frame in batch])
            for frame, fmap in zip(batch, maps, strict=True):
                yield frame.frame_index, frame.time_s, frame.image, fmap

    def document(self, result: SegmentResult, model: str) -> dict:
        """The ``--json`` document: the model, the inputs, the options and, per image or frame, each
        object's ``area_px``, ``bbox_xyxy`` and ``mean_confidence``; with masks read at pixel level
        (an upsampler), ``upsample``: ``{"upsample": "anyup", "upsample_scale": S or None}``."""
        checked = self._checked_now()
        document: dict[str, object] = {"model": model, "objects": list(result.objects)}
        if result.video:
            info = checked.info
            document["video"] = str(self.inputs[0])
            document["size_wh"] = list(checked.size_wh)
            document["fps"] = info.fps if info is not None else None
            document["frames"] = [frame.to_json() for frame in result.frames]
        else:
            document["images"] = [frame.to_json() for frame in result.frames]
        document["options"] = self.options.as_dict()
        if result.upsample is not None:  # only then: the document of a bilinear read is as it was
            document["upsample"] = result.upsample
        return document

    def summary(self, result: SegmentResult) -> str:
        """``12 frames, 2 object(s) (mean area 1520, 310 px) -> out.mp4, masks``: the command's summary line."""
        written = [str(p) for p in (self.output, self.json, self.masks_dir) if p]
        return f"{result.summary()} -> {', '.join(written)}"


def _image_mask_names(folder: Path, inputs: Sequence[PathLike]) -> list[str]:
    """``folder/<stem>.png`` per input, numbered ``000_<stem>.png`` when two inputs share a stem.

    >>> _image_mask_names(Path("m"), ["a/x.jpg", "b/y.jpg"]), _image_mask_names(Path("m"), ["a/x.jpg", "b/x.png"])
    (['m/x.png', 'm/y.png'], ['m/000_x.png', 'm/001_x.png'])
    """
    stems = [Path(p).stem for p in inputs]
    unique = len(set(stems)) == len(stems)
    return [str(folder / (f"{stem}.png" if unique else f"{i:03d}_{stem}.png")) for i, stem in enumerate(stems)]
