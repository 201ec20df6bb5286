"""The web app's session: the loaded model and one plain method per action of the page.

:class:`AppSession` knows nothing about Gradio: its methods take and return numpy arrays, lists
and paths, raise :class:`~dinofeat.errors.InputError` with a message a user can act on, and call
the same jobs as the command line (:class:`~dinofeat.jobs.match.MatchJob`,
:class:`~dinofeat.jobs.pca.PCAJob`, :class:`~dinofeat.jobs.track.TrackJob`), so the page
shows exactly what the commands write.
"""

from __future__ import annotations

import atexit
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from dinofeat.colorize import pca_panel
from dinofeat.dataset.listing import VIDEO_SUFFIXES
from dinofeat.drawing import draw_points, draw_segmentation
from dinofeat.errors import InputError
from dinofeat.errors import field as field_named
from dinofeat.features.cache import DEFAULT_CACHE_SIZE, FeatureCache
from dinofeat.features.source import expect_images, provenance
from dinofeat.io.images import load_image
from dinofeat.io.video import VideoInfo, probe_video, read_frames
from dinofeat.jobs.match import MatchJob, heatmap_picture, match_picture
from dinofeat.jobs.pca import PCAJob
from dinofeat.jobs.segment import SegmentJob
from dinofeat.jobs.track import TrackJob
from dinofeat.options import (
    COLOR_COMPONENTS,
    DEFAULT_MAX_IMAGE_MEGAPIXELS,
    DEFAULT_MAX_VIDEO_FRAMES,
    AppOptions,
    FrameOptions,
    MatchDrawingOptions,
    MatchOptions,
    PCADrawingOptions,
    PCAOptions,
    SegmentOptions,
    TrackerOptions,
    TrailOptions,
)
from dinofeat.runtime.progress import Progress
from dinofeat.segmentation import mask_from_clicks, patch_labels_to_mask
from dinofeat.wording import plural

if TYPE_CHECKING:  # types only
    from dinofeat.features.source import FeatureSource
    from dinofeat.features.upsample import Upsampler

#: Query points per image pair or video at most (each point is one line in the pictures).
MAX_POINTS = 200
#: Feature maps kept in memory, so that clicking more points does not run the model again.
FEATURE_CACHE_SIZE = DEFAULT_CACHE_SIZE


@dataclass(frozen=True)
class MatchView:
    """What the Match tab shows.

    Attributes:
        image_a: ``(H, W, 3) uint8`` image A with its query points marked (numbered, coloured).
        picture: A and B side by side with the matches drawn; None while B is missing.
        heatmap: similarity of the last query point over B, as a picture; None without points.
        data: the matches in the JSON schema of ``dinofeat match --json``; None while B is missing.
        json_path: ``data`` written to a file for download.
        points_xy: the query points, ``(N, 2)`` float pixels of A.
        targets_xy: where each query landed in B, ``(N, 2)`` float pixels of B, NaN for a match
            the checks did not keep (so a point keeps its number and colour); None while B is missing.
    """

    image_a: np.ndarray
    picture: np.ndarray | None = None
    heatmap: np.ndarray | None = None
    data: dict | None = None
    json_path: Path | None = None
    points_xy: list = field(default_factory=list)
    targets_xy: list | None = None


@dataclass(frozen=True)
class PCAView:
    """What the PCA tab shows.

    Attributes:
        panels: one ``(H, W', 3) uint8`` picture per image (image | colours, or the overlay).
        masks: one ``(H, W) uint8`` foreground mask per image (255 = foreground).
        figure_path: all panels in one PNG figure.
        pca_path: the fitted PCA (``.npz``; ``dinofeat pca --load-pca`` colours other inputs alike).
        summary: one line about the fit.
    """

    panels: list
    masks: list
    figure_path: Path
    pca_path: Path
    summary: str


@dataclass(frozen=True)
class VideoView:
    """An opened video: what it holds and the frames the app will process.

    Attributes:
        path: the video file.
        fps, frames, size_wh: from :func:`~dinofeat.io.video.probe_video`.
        usable_frames: frames the app tracks (``frames`` capped at the session's limit).
        notice: a warning to show (the video is cut), or None.
    """

    path: str
    fps: float
    frames: int
    size_wh: tuple[int, int]
    usable_frames: int
    notice: str | None = None

    @property
    def info(self):
        """The :class:`~dinofeat.io.video.VideoInfo` probed (the workflows take it instead of probing again)."""
        return VideoInfo(fps=self.fps, frames=self.frames, size_wh=self.size_wh)


@dataclass(frozen=True)
class TrackView:
    """What the Track tab shows after tracking.

    Attributes:
        video_path: H.264 MP4 with the points and their trails.
        json_path, csv_path: the tracks, as ``dinofeat track --json`` / ``--csv`` write them.
        data: the JSON content.
        summary: one line about the run.
    """

    video_path: Path
    json_path: Path
    csv_path: Path
    data: dict
    summary: str


@dataclass(frozen=True)
class SegmentView:
    """What the Segment tab shows after segmenting.

    Attributes:
        overlay_path: the overlay, ``.png`` for an image, H.264 ``.mp4`` for a video.
        json_path: each object's area, box and confidence, as ``dinofeat segment --json`` writes it.
        mask_paths: the indexed mask PNGs (DAVIS palette), one per image or frame.
        data: the JSON content.
        summary: one line about the run.
        is_video: whether the input was a video.
    """

    overlay_path: Path
    json_path: Path
    mask_paths: list[Path]
    data: dict
    summary: str
    is_video: bool


def split_clicks(clicks_xyl: Sequence[Sequence[float]]) -> tuple[list[tuple[float, float]], list[int], list]:
    """Clicks ``[x, y, label]`` (label 0: background) as the segment job takes them: object points,
    their labels, background points."""
    objects = [(float(x), float(y)) for x, y, label in clicks_xyl if int(label) > 0]
    labels = [int(label) for _, _, label in clicks_xyl if int(label) > 0]
    background = [(float(x), float(y)) for x, y, label in clicks_xyl if int(label) == 0]
    return objects, labels, background


class AppSession:
    """The loaded model and the app's actions, without any user interface.

    Args:
        extractor: an :class:`~dinofeat.features.extractor.Extractor` (the model is loaded once, here).
        max_image_megapixels: larger images are refused with a message.
        max_video_frames: videos are tracked over their first this many frames at most.
        workdir: folder for the files offered for download (default: a new temporary folder,
            removed at exit).
        upsampler: a :class:`~dinofeat.features.upsample.Upsampler` for pixel-level PCA (``pca(upsample=True)``),
            at ``upsample_scale`` (None: one feature per model pixel).

    Feature maps are cached (:class:`~dinofeat.features.cache.FeatureCache`); methods are safe to call from
    several threads (model calls run one at a time).
    """

    def __init__(
        self,
        extractor,
        *,
        max_image_megapixels: float = DEFAULT_MAX_IMAGE_MEGAPIXELS,
        max_video_frames: int = DEFAULT_MAX_VIDEO_FRAMES,
        workdir: str | Path | None = None,
        upsampler: Upsampler | None = None,
        upsample_scale: int | None = None,
    ) -> None:
        self.limits = AppOptions(max_image_mp=max_image_megapixels, max_frames=max_video_frames)
        self.extractor = extractor
        self.upsampler = upsampler  # an Upsampler for the PCA tab's pixel-level toggle (None: no toggle)
        self.upsample_scale = upsample_scale
        self.cache = FeatureCache(extractor, FEATURE_CACHE_SIZE)
        expect_images(extractor, math.inf)  # a session: --compile auto compiles once the passes are timed
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="dinofeat-app-")
            atexit.register(shutil.rmtree, workdir, ignore_errors=True)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def max_image_megapixels(self) -> float:
        return self.limits.max_image_mp

    @property
    def max_video_frames(self) -> int:
        return self.limits.max_frames

    @property
    def description(self) -> str:
        """One line naming the model, device, precision and resolution."""
        ex = self.extractor
        precision = str(ex.dtype).replace("torch.", "")
        return f"{ex.spec.name} on {ex.device.type} ({precision}), resolution {ex.resolution}, stride {ex.stride}"

    def extractor_at(self, resolution: int | None = None):
        """The session's extractor, or a re-checked copy at another ``resolution`` sharing the model."""
        if resolution is None or int(resolution) == self.extractor.resolution:
            return self.extractor
        return self.extractor.with_options(resolution=int(resolution))

    def features_at(self, resolution: int | None = None) -> FeatureCache:
        """The feature cache, seen through the extractor at ``resolution`` (default: the session's)."""
        return self.cache if resolution is None else self.cache.with_options(resolution=int(resolution))

    def features(self, images: Sequence[np.ndarray], resolution: int | None = None) -> list:
        """Feature maps of ``(H, W, 3) uint8`` images, from the cache when they were seen before."""
        return self.features_at(resolution).extract_arrays(list(images))

    def new_folder(self, prefix: str) -> Path:
        """A fresh folder under ``workdir`` for one result's files."""
        return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=self.workdir))

    # -- images -------------------------------------------------------------------------------
    def load_image(self, path: str | Path | None) -> np.ndarray:
        """Read an uploaded image as ``(H, W, 3) uint8 RGB``, refusing non-images and huge ones."""

        if path is None or str(path) == "":
            raise InputError("no image: upload one or pick an example")
        name = Path(path).name
        try:
            with Image.open(path) as img:
                w, h = img.size
        except Image.DecompressionBombError:
            raise InputError(f"{name} is too large to decode safely") from None
        except FileNotFoundError:
            raise InputError(f"image not found: {name}") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            raise InputError(f"{name} is not an image, or a damaged one (cannot read it)") from None
        megapixels = w * h / 1e6
        if megapixels > self.max_image_megapixels:
            raise InputError(
                f"{name} is too large: {w}x{h} pixels ({megapixels:.0f} MP); the app accepts "
                f"images up to {self.max_image_megapixels:g} MP (dinofeat app --max-image-mp)"
            )
        try:
            return load_image(path)
        except InputError as err:
            raise InputError(str(err).replace(str(path), name)) from None

    # -- matching -----------------------------------------------------------------------------
    def match(
        self,
        image_a: np.ndarray | None,
        image_b: np.ndarray | None,
        points_xy: Sequence[Sequence[float]],
        *,
        auto: int | None = None,
        resolution: int | None = None,
        mutual: bool = False,
        ransac: str | None = None,
        color_by: str = "index",
        name_a: str = "A",
        name_b: str = "B",
    ) -> MatchView:
        """Match query points of A into B with the job ``dinofeat match`` runs (:class:`~dinofeat.jobs.match.MatchJob`).

        Args:
            image_a, image_b: ``(H, W, 3) uint8 RGB``; B may be None (then only A is drawn).
            points_xy: ``(N, 2)`` query points in A's pixels (clicked); ignored with ``auto``.
            auto: find this many distinctive, well-spread points of A instead.
            resolution: model resolution for this call (default: the session's).
            mutual: keep (draw) only mutual matches.
            ransac: ``homography`` or ``fundamental``: keep only the inliers of that RANSAC model.
            color_by: line colours, ``index`` or ``score``.
            name_a, name_b: file names for the JSON.

        The heatmap is the last clicked point's similarity; with ``auto`` there is none (no point
        was clicked: a heatmap of one of them would look like the last click's).
        """
        if image_a is None:
            raise InputError("upload image A first")
        points = [list(map(float, p)) for p in points_xy]
        if image_b is None or (not points and auto is None):
            return MatchView(draw_points(image_a, points), points_xy=points)
        if len(points) > MAX_POINTS or (auto is not None and not 1 <= auto <= MAX_POINTS):
            raise InputError(f"at most {MAX_POINTS} points")
        options = MatchOptions(auto=None if auto is None else int(auto), require_mutual=mutual, ransac=ransac)
        drawing = MatchDrawingOptions(color_by=color_by)
        json_path = self.new_folder("match") / f"{Path(name_a).stem}_{Path(name_b).stem}_matches.json"
        job = MatchJob(
            image_a,
            image_b,
            points_xy=None if auto is not None else points,
            json=json_path,
            options=options,
            drawing=drawing,
            names=(name_a, name_b),
        )
        result = job.run(self.features_at(resolution))
        if len(result.matches) == 0:
            raise InputError("no distinctive points found: the images share no mutual nearest patches")
        chosen = result.matches.source_xy.tolist()
        targets = result.matches.target_xy.numpy().astype(np.float64)
        targets[~result.matches.keep.numpy()] = np.nan
        return MatchView(
            draw_points(image_a, chosen),
            match_picture(result, drawing),
            None if auto is not None else heatmap_picture(result, len(points) - 1),
            result.document,
            json_path,
            chosen,
            targets.tolist(),
        )

    # -- PCA ----------------------------------------------------------------------------------
    def pca(
        self,
        images: Sequence[np.ndarray],
        *,
        foreground: str | float | None = "otsu",
        components: int = COLOR_COMPONENTS,
        overlay: float | None = None,
        nearest: bool = False,
        resolution: int | None = None,
        names: Sequence[str] | None = None,
        upsample: bool = False,
    ) -> PCAView:
        """Fit one PCA jointly on ``images`` and colour each, as ``dinofeat pca`` does
        (:class:`~dinofeat.jobs.pca.PCAJob`).

        Args:
            images: ``(H, W, 3) uint8 RGB`` images.
            foreground: ``"otsu"``, a threshold in [0, 1] on the scaled first component, or None.
            components: components fitted (at least :data:`~dinofeat.options.COLOR_COMPONENTS`, 3, as
                the page's slider; the colours use the first three).
            overlay: blend the colours over the image with this opacity instead of side by side.
            nearest: crisp patches instead of bilinear upsampling.
            resolution: model resolution for this call (default: the session's).
            names: file names for the summary and the figure's labels.
            upsample: colour pixel-level features (the session's ``upsampler``) instead of patches.
        """
        if upsample and self.upsampler is None:
            raise InputError(f"pixel-level PCA needs AnyUp: start the app with {field_named('upsample', 'anyup')}")
        if not images:
            raise InputError("no images: upload one or more, or pick an example")
        if components < COLOR_COMPONENTS:  # the slider's minimum (the library would fit 3 and keep fewer)
            raise InputError(f"need at least {COLOR_COMPONENTS} components for the colours, got {components}")
        options = PCAOptions(components=int(components), foreground=foreground)
        drawing = PCADrawingOptions(overlay=overlay, nearest=nearest)
        folder = self.new_folder("pca")
        figure_path, pca_path = folder / "pca.png", folder / "pca.npz"
        job = PCAJob(
            images=images, output=figure_path, save_pca=pca_path, options=options, drawing=drawing, names=names
        )
        job.check()
        source: FeatureSource = self.features_at(resolution)
        if upsample and self.upsampler is not None:
            source = self.upsampler.wrap(source, scale=self.upsample_scale)
        result = job.run_images(source)
        panels = [pca_panel(image, colors, drawing) for image, colors in zip(result.images, result.colors)]
        masks = [colors.mask.astype(np.uint8) * 255 for colors in result.colors]
        label = ", ".join(names) if names else plural(len(images), "image")
        return PCAView(panels, masks, figure_path, pca_path, f"Joint PCA of {label}: {result.summary()}.")

    # -- video --------------------------------------------------------------------------------
    def open_video(self, path: str | Path | None) -> VideoView:
        """Check an uploaded video (decodable, has frames) and say how much of it will be tracked."""

        if path is None or str(path) == "":
            raise InputError("no video: upload one or pick the example")
        name = Path(path).name
        try:
            info = probe_video(path)
        except InputError as err:
            raise InputError(str(err).replace(str(path), name)) from None
        usable = min(info.frames, self.max_video_frames)
        notice = None
        if usable < info.frames:
            notice = (
                f"{name} has {info.frames} frames; the app tracks the first {usable} "
                f"(dinofeat app --max-frames, or the dinofeat track command, for more)"
            )
        return VideoView(str(path), info.fps, info.frames, info.size_wh, usable, notice)

    def video_frame(self, path: str | Path, index: int) -> np.ndarray:
        """Frame ``index`` of a video, ``(H, W, 3) uint8 RGB``."""

        index = int(index)
        if index < 0:
            raise InputError(f"frame index must be non-negative, got {index}")
        for _, frame in read_frames(path, start=index, max_frames=1):
            return frame
        raise InputError(f"{Path(path).name} has no frame {index}")

    def track(
        self,
        path: str | Path,
        queries_txy: Sequence[Sequence[float]],
        *,
        window: float | None = None,
        min_score: float | None = None,
        trail: int | None = None,
        resolution: int | None = None,
        progress: Progress | None = None,
    ) -> TrackView:
        """Track ``(t, x, y)`` query points through a video and write MP4, JSON and CSV, as
        ``dinofeat track -o --json --csv`` does (:class:`~dinofeat.jobs.track.TrackJob`).

        Args:
            path: the video (checked as :meth:`open_video` does; cut at the session's frame limit).
            queries_txy: query frame index and original-pixel position per point.
            window: search radius in pixels (default: the tracker's, a few patches).
            min_score: cosine below which a match is weak (default: the tracker's).
            trail: trail length in frames in the output video (default: the command's).
            resolution: model resolution for this call (default: the session's).
            progress: called as ``progress(frames_done, frames_total)`` after each frame.
        """
        if len(queries_txy) > MAX_POINTS:
            raise InputError(f"at most {MAX_POINTS} points, got {len(queries_txy)}")
        view = self.open_video(path)
        name = Path(path).name
        tracker = TrackerOptions().replace(
            **{key: float(value) for key, value in (("window", window), ("min_score", min_score)) if value is not None}
        )
        trail_options = TrailOptions() if trail is None else TrailOptions(trail=int(trail))
        stem = Path(name).stem or "video"
        folder = self.new_folder("track")
        video_path, json_path, csv_path = (folder / f"{stem}_tracks{s}" for s in (".mp4", ".json", ".csv"))
        job = TrackJob(
            path,
            output=video_path,
            json=json_path,
            csv=csv_path,
            queries_txy=queries_txy,
            tracker=tracker,
            frames=FrameOptions(max_frames=view.usable_frames),
            trail=trail_options,
            video_name=name,
            info=view.info,
        )
        job.check()
        extractor = self.extractor_at(resolution)
        with self.cache.model_lock:
            tracks = job.run(extractor, progress)
        data = job.document(tracks, extractor.options.model, weights=provenance(extractor)["weights"])
        visible = float(tracks.visible.float().mean()) if tracks.visible.numel() else 0.0
        summary = (
            f"Tracked {plural(len(tracks.queries_txy), 'point')} through {plural(len(tracks), 'frame')} of {name}; "
            f"visible {visible:.0%} of the time."
        )
        return TrackView(video_path, json_path, csv_path, data, summary)

    # -- segmentation -------------------------------------------------------------------------
    def segment_preview(
        self, image: np.ndarray, clicks_xyl: Sequence[Sequence[float]], *, resolution: int | None = None
    ) -> np.ndarray:
        """``image`` (``(H, W, 3) uint8``) with the mask its clicks give drawn over it (each object's
        colour, contour, legend): :func:`~dinofeat.segmentation.mask_from_clicks` on its features,
        read back at every pixel. ``clicks_xyl``: ``[x, y, label]``, label 0 on the background.
        No click on an object: the image as it is."""
        objects, labels, background = split_clicks(clicks_xyl)
        if not objects:
            return image
        fmap = self.features([image], resolution)[0]
        positives: dict[int, list[tuple[float, float]]] = {}
        for point, label in zip(objects, labels, strict=True):
            positives.setdefault(label, []).append(point)
        soft = mask_from_clicks(fmap, positives, background or None)
        mask, _ = patch_labels_to_mask(soft, fmap)
        return draw_segmentation(image, mask)

    def segment(
        self,
        path: str | Path,
        clicks_xyl: Sequence[Sequence[float]],
        *,
        frame: int = 0,
        resolution: int | None = None,
        progress: Progress | None = None,
        upsample: bool = False,
    ) -> SegmentView:
        """Segment an image or a video from clicks on it and write the overlay, the mask PNGs and
        the JSON, as ``dinofeat segment`` does (:class:`~dinofeat.jobs.segment.SegmentJob`).

        Args:
            path: an image, or a video (checked as :meth:`open_video` does; cut at the frame limit).
            clicks_xyl: ``[x, y, label]`` on the image or on video frame ``frame``; label 0 is the
                background, 1 to 254 an object.
            frame: a video's frame the clicks are on; segmentation runs from it.
            resolution: model resolution for this call (default: the session's).
            progress: called as ``progress(frames_done, frames_total)`` after each frame.
            upsample: masks from pixel-level labels (the session's ``upsampler``: labels read through
                AnyUp's attention, as ``dinofeat segment --upsample anyup``) instead of patch labels.
        """
        if upsample and self.upsampler is None:
            raise InputError(f"pixel-level masks need AnyUp: start the app with {field_named('upsample', 'anyup')}")
        if len(clicks_xyl) > MAX_POINTS:
            raise InputError(f"at most {MAX_POINTS} clicks, got {len(clicks_xyl)}")
        objects, labels, background = split_clicks(clicks_xyl)
        if not objects:
            raise InputError("click at least one point on an object first")
        name = Path(path).name
        is_video = Path(path).suffix.lower() in VIDEO_SUFFIXES
        folder = self.new_folder("segment")
        stem = Path(name).stem or "input"
        overlay = folder / f"{stem}_segments{'.mp4' if is_video else '.png'}"
        json_path, masks = folder / f"{stem}_segments.json", folder / "masks"
        frames = FrameOptions()
        if is_video:
            view = self.open_video(path)
            frames = FrameOptions(max_frames=view.usable_frames)
        else:
            self.load_image(path)  # the app's checks: an image, not too large
        job = SegmentJob(
            [path],
            points_xy=objects,
            point_labels=labels,
            point_frame=int(frame) if is_video else None,
            negatives_xy=background,
            output=overlay,
            masks_dir=masks,
            json=json_path,
            options=SegmentOptions(),
            frames=frames,
        )
        job.check()
        extractor = self.extractor_at(resolution)
        with self.cache.model_lock:
            upsampler = self.upsampler if upsample else None
            result = job.run(extractor, progress, upsampler=upsampler, upsample_scale=self.upsample_scale)
        data = job.document(result, extractor.options.model)
        summary = f"Segmented {name}: {result.summary()}."
        return SegmentView(overlay, json_path, sorted(masks.iterdir()), data, summary, is_video)
