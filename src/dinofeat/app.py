"""The web app behind ``dinofeat app``: click points, see matches, PCA colours and tracks.

Two layers:

* :class:`AppSession` holds the loaded model (it loads once and stays loaded) and has one plain
  method per action of the page (``load_image``, ``match``, ``pca``, ``open_video``, ``track``...).
  They take and return numpy arrays, lists and paths, raise :class:`~dinofeat.errors.InputError`
  with a message a user can act on, and know nothing about Gradio, so tests call them directly.
* :func:`build_app` wires those methods into a Gradio page (tabs Match, PCA, Track) and turns
  errors into in-page messages; :func:`launch` serves it. Gradio is an optional extra
  (``pip install "dinofeat[app]"``) and is imported only inside these two functions, so importing
  this module never needs it.

Clicks: Gradio reports a click on an image as ``evt.index == [i, j]``, the clicked position
measured from the image's top-left *corner* in original-image pixels, rounded to an integer
(``Math.round`` in the browser; the image may be displayed scaled). dinofeat puts the *centre* of
the top-left pixel at ``(0, 0)``, so the click is at ``(i - 0.5, j - 0.5)``
(:func:`click_to_pixel`); this is off by at most half a pixel, where using ``(i, j)`` as is would
be off by up to one pixel and biased.
"""

import atexit
import copy
import functools
import hashlib
import json
import logging
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dinofeat.drawing import draw_points
from dinofeat.errors import DinofeatError, InputError

log = logging.getLogger(__name__)

#: Largest image the app decodes, in megapixels (a 40 MP photo is 120 MB as RGB).
DEFAULT_MAX_IMAGE_MEGAPIXELS = 40.0
#: Frames tracked at most per video; longer videos are cut there, with a warning in the page.
DEFAULT_MAX_VIDEO_FRAMES = 600
#: Largest upload the page accepts, in megabytes (Gradio refuses bigger files in the browser).
DEFAULT_MAX_UPLOAD_MB = 200
#: Query points per image pair or video at most (each point is one line in the pictures).
MAX_POINTS = 200
#: Feature maps kept in memory, so that clicking more points does not run the model again.
FEATURE_CACHE_SIZE = 8
#: Resolutions offered in the page: shorter side fed to the model, in pixels.
RESOLUTION_CHOICES = (224, 336, 448, 518, 672, 896)
#: Where ``dinofeat app`` finds its example files in a source checkout.
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
#: Message for a missing Gradio.
GRADIO_MISSING = 'the web app needs Gradio, an optional extra: pip install "dinofeat[app]"'

ProgressFn = Callable[[int, int], None]


def click_to_pixel(index: Sequence[float], size_wh: tuple[int, int]) -> tuple[float, float]:
    """A Gradio image click ``evt.index`` -> ``(x, y)`` in dinofeat's pixel convention.

    See the module docstring: the browser rounds the distance from the image corner, so the
    clicked point is half a pixel up-left of the reported index; it is clamped to the image.

    >>> click_to_pixel([10, 0], (64, 48))
    (9.5, -0.5)
    """
    if index is None or len(index) != 2 or not all(isinstance(v, (int, float)) for v in index):
        raise InputError("click inside the image to add a point")
    w, h = size_wh
    x = min(max(float(index[0]) - 0.5, -0.5), w - 0.5)
    y = min(max(float(index[1]) - 0.5, -0.5), h - 0.5)
    return x, y


def require_gradio():
    """Import Gradio, or raise :class:`~dinofeat.errors.DinofeatError` saying how to install it."""
    try:
        import gradio
    except ImportError:
        raise DinofeatError(GRADIO_MISSING) from None
    return gradio


# ---------------------------------------------------------------------------------------------
# Results of the handlers


@dataclass
class MatchView:
    """What the Match tab shows.

    Attributes:
        image_a: ``(H, W, 3) uint8`` image A with its query points marked (numbered, coloured).
        picture: A and B side by side with the matches drawn; None while B is missing.
        heatmap: similarity of the last query point over B, as a picture; None without points.
        data: the matches in the JSON schema of ``dinofeat match --json``; None while B is missing.
        json_path: ``data`` written to a file for download.
        points_xy: the query points, ``(N, 2)`` float pixels of A.
    """

    image_a: np.ndarray
    picture: np.ndarray | None = None
    heatmap: np.ndarray | None = None
    data: dict | None = None
    json_path: Path | None = None
    points_xy: list = field(default_factory=list)


@dataclass
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


@dataclass
class VideoView:
    """An opened video: what it holds and the frames the app will process.

    Attributes:
        path: the video file.
        fps, frames, size_wh: from :func:`~dinofeat.video.probe_video`.
        usable_frames: frames the app tracks (``frames`` capped at the session's limit).
        notice: a warning to show (the video is cut), or None.
    """

    path: str
    fps: float
    frames: int
    size_wh: tuple[int, int]
    usable_frames: int
    notice: str | None = None


@dataclass
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


# ---------------------------------------------------------------------------------------------
# The session: the model plus one method per action of the page


class AppSession:
    """The loaded model and the app's actions, without any user interface.

    Args:
        extractor: an :class:`~dinofeat.extractor.Extractor` (the model is loaded once, here).
        max_image_megapixels: larger images are refused with a message.
        max_video_frames: videos are tracked over their first this many frames at most.
        workdir: folder for the files offered for download (default: a new temporary folder,
            removed at exit).

    Methods are safe to call from several threads: model calls run one at a time.
    """

    def __init__(self, extractor, *, max_image_megapixels: float = DEFAULT_MAX_IMAGE_MEGAPIXELS,
                 max_video_frames: int = DEFAULT_MAX_VIDEO_FRAMES, workdir: str | Path | None = None) -> None:
        if not max_image_megapixels > 0 or max_video_frames < 1:
            raise InputError("the image and video limits must be positive")
        self.extractor = extractor
        self.max_image_megapixels = float(max_image_megapixels)
        self.max_video_frames = int(max_video_frames)
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="dinofeat-app-")
            atexit.register(shutil.rmtree, workdir, ignore_errors=True)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._model_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._cache: OrderedDict = OrderedDict()

    # -- model --------------------------------------------------------------------------------
    @property
    def description(self) -> str:
        """One line naming the model, device, precision and resolution."""
        ex = self.extractor
        precision = str(ex.dtype).replace("torch.", "")
        return (f"{ex.spec.name} on {ex.device.type} ({precision}), resolution {ex.resolution}, "
                f"stride {ex.stride}")

    def extractor_at(self, resolution: int | None = None):
        """The session's extractor, or a copy at another ``resolution`` sharing the same model."""
        if resolution is None or int(resolution) == self.extractor.resolution:
            return self.extractor
        resolution = int(resolution)
        patch = self.extractor.model.patch_size
        if resolution < patch:
            raise InputError(f"resolution must be at least the patch size ({patch}), got {resolution}")
        other = copy.copy(self.extractor)
        other.resolution = resolution
        return other

    def features(self, images: Sequence[np.ndarray], resolution: int | None = None) -> list:
        """Feature maps of ``(H, W, 3) uint8`` images, from the cache when they were seen before."""
        extractor = self.extractor_at(resolution)
        keys = [(_digest(image), extractor.resolution) for image in images]
        with self._cache_lock:
            found = {k: self._cache[k] for k in keys if k in self._cache}
        todo = [i for i, k in enumerate(keys) if k not in found]
        if todo:
            with self._model_lock:
                maps = extractor.extract_arrays([images[i] for i in todo])
            with self._cache_lock:
                for i, fmap in zip(todo, maps):
                    found[keys[i]] = fmap
                    self._cache[keys[i]] = fmap
                while len(self._cache) > FEATURE_CACHE_SIZE:
                    self._cache.popitem(last=False)
        with self._cache_lock:
            for k in keys:
                if k in self._cache:
                    self._cache.move_to_end(k)
        return [found[k] for k in keys]

    def new_folder(self, prefix: str) -> Path:
        """A fresh folder under ``workdir`` for one result's files."""
        return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=self.workdir))

    # -- images -------------------------------------------------------------------------------
    def load_image(self, path: str | Path | None) -> np.ndarray:
        """Read an uploaded image as ``(H, W, 3) uint8 RGB``, refusing non-images and huge ones."""
        from PIL import Image, UnidentifiedImageError

        from dinofeat.images import load_image

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
            raise InputError(f"{name} is too large: {w}x{h} pixels ({megapixels:.0f} MP); the app accepts "
                             f"images up to {self.max_image_megapixels:g} MP (dinofeat app --max-image-mp)")
        try:
            return load_image(path)
        except InputError as err:
            raise InputError(str(err).replace(str(path), name)) from None

    # -- PCA ----------------------------------------------------------------------------------
    def pca(self, images: Sequence[np.ndarray], *, foreground: str | float | None = "otsu",
            components: int = 3, overlay: float | None = None, nearest: bool = False,
            resolution: int | None = None, names: Sequence[str] | None = None) -> PCAView:
        """Fit one PCA jointly on ``images`` and colour each of them (see :mod:`dinofeat.pca`).

        Args:
            images: ``(H, W, 3) uint8 RGB`` images.
            foreground: ``"otsu"``, a threshold on the scaled first component, or None (no split).
            components: components fitted (at least 3; the colours use the first three).
            overlay: blend the colours over the image with this opacity instead of side by side.
            nearest: crisp patches instead of bilinear upsampling.
            resolution: model resolution for this call (default: the session's).
            names: file names for the summary.
        """
        from dinofeat.drawing import draw_pca_grid, draw_pca_overlay, draw_pca_side_by_side
        from dinofeat.pca import FeaturePCA

        if not images:
            raise InputError("no images: upload one or more, or pick an example")
        if overlay is not None and not 0.0 <= overlay <= 1.0:
            raise InputError(f"overlay opacity must be between 0 and 1, got {overlay}")
        if components < 3:
            raise InputError(f"need at least 3 components for the colours, got {components}")
        maps = self.features(images, resolution)
        extractor = self.extractor_at(resolution)
        meta = {"model": extractor.spec.name, "layers": ",".join(map(str, extractor.layers)),
                "facet": extractor.facet, "stride": extractor.stride, "resolution": extractor.resolution}
        pca = FeaturePCA.fit(maps, n_components=int(components), foreground=foreground, metadata=meta)
        panels, masks = [], []
        for image, fmap in zip(images, maps):
            colors = pca.colorize(fmap, nearest=nearest)
            if overlay is None:
                panels.append(draw_pca_side_by_side(image, colors.rgb))
            else:
                panels.append(draw_pca_overlay(image, colors.rgb, overlay, colors.mask))
            masks.append(colors.mask.astype(np.uint8) * 255)
        folder = self.new_folder("pca")
        figure_path, pca_path = folder / "pca.png", folder / "pca.npz"
        figure = panels[0] if len(panels) == 1 else draw_pca_grid(panels)
        _save_png(figure_path, figure)
        pca.save(pca_path)
        if pca.foreground is None:
            split = "no foreground split"
        else:
            share = sum(int(m.sum()) for m in masks) / 255 / sum(m.size for m in masks)
            split = (f"foreground {share:.0%} of pixels ({pca.foreground.method} threshold "
                     f"{pca.foreground.threshold:.3g})")
        label = ", ".join(names) if names else f"{len(images)} image(s)"
        return PCAView(panels, masks, figure_path, pca_path, f"Joint PCA of {label}: {split}.")

    # -- video --------------------------------------------------------------------------------
    def open_video(self, path: str | Path | None) -> VideoView:
        """Check an uploaded video (decodable, has frames) and say how much of it will be tracked."""
        from dinofeat.video import probe_video

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
            notice = (f"{name} has {info.frames} frames; the app tracks the first {usable} "
                      f"(dinofeat app --max-frames, or the dinofeat track command, for more)")
        return VideoView(str(path), info.fps, info.frames, info.size_wh, usable, notice)

    def video_frame(self, path: str | Path, index: int) -> np.ndarray:
        """Frame ``index`` of a video, ``(H, W, 3) uint8 RGB``."""
        from dinofeat.video import read_frames

        index = int(index)
        if index < 0:
            raise InputError(f"frame index must be non-negative, got {index}")
        for _, frame in read_frames(path, start=index, max_frames=1):
            return frame
        raise InputError(f"{Path(path).name} has no frame {index}")

    def track(self, path: str | Path, queries_txy: Sequence[Sequence[float]], *,
              window: float | None = None, min_score: float | None = None, trail: int | None = None,
              resolution: int | None = None, progress: ProgressFn | None = None) -> TrackView:
        """Track ``(t, x, y)`` query points through a video and write MP4, JSON and CSV.

        The outputs are those of ``dinofeat track -o --json --csv`` (same drawing, same schemas).

        Args:
            path: the video (checked as :meth:`open_video` does; cut at the session's frame limit).
            queries_txy: query frame index and original-pixel position per point.
            window: search radius in pixels (default: the tracker's, a few patches).
            min_score: cosine below which a match is weak (default: the tracker's).
            trail: trail length in frames in the output video (default: the command's).
            resolution: model resolution for this call (default: the session's).
            progress: called as ``progress(frames_done, frames_total)`` after each frame.
        """
        from collections import deque

        from dinofeat.cli.track import DEFAULT_TRAIL
        from dinofeat.drawing import draw_tracks, palette
        from dinofeat.tracking import Tracks, check_queries, processed_frame_indices, track_frames
        from dinofeat.video import VideoWriter, read_frames

        view = self.open_video(path)
        name = Path(path).name
        indices = processed_frame_indices(view.frames, max_frames=view.usable_frames)
        queries = check_queries(_as_queries(queries_txy), indices, view.size_wh)
        trail = DEFAULT_TRAIL if trail is None else int(trail)
        if trail < 0:
            raise InputError(f"trail must be 0 or more frames, got {trail}")
        extractor = self.extractor_at(resolution)
        options = {key: float(value) for key, value in (("window", window), ("min_score", min_score))
                   if value is not None}
        folder = self.new_folder("track")
        stem = Path(name).stem or "video"
        video_path, json_path, csv_path = (folder / f"{stem}_tracks{s}" for s in (".mp4", ".json", ".csv"))
        colors = palette(len(queries))
        recent = deque(maxlen=trail + 1)  # positions of the last frames, the current one included
        steps = []
        with self._model_lock, VideoWriter(video_path, view.fps, view.size_wh) as sink:
            frames = read_frames(path, max_frames=view.usable_frames)
            for step in track_frames(frames, queries, extractor, **options):
                recent.append((step.points_xy, step.visible))
                sink.write(draw_tracks(step.image, np.stack([xy for xy, _ in recent]),
                                       np.stack([v for _, v in recent]), colors))
                step.image = None
                steps.append(step)
                if progress is not None:
                    progress(len(steps), len(indices))
        tracks = Tracks.from_steps(queries, steps)
        data = tracks.to_json(model=extractor.spec.name, video_path=name, fps=view.fps, size_wh=view.size_wh)
        json_path.write_text(json.dumps(data) + "\n")
        tracks.write_csv(csv_path)
        visible = float(tracks.visible.mean()) if tracks.visible.size else 0.0
        summary = (f"Tracked {len(queries)} point(s) through {len(tracks)} frames of {name}; "
                   f"visible {visible:.0%} of the time.")
        return TrackView(video_path, json_path, csv_path, data, summary)

    # -- matching -----------------------------------------------------------------------------
    def match(self, image_a: np.ndarray | None, image_b: np.ndarray | None,
              points_xy: Sequence[Sequence[float]], *, auto: int | None = None,
              resolution: int | None = None, mutual: bool = False, ransac: str | None = None,
              color_by: str = "index", name_a: str = "A", name_b: str = "B") -> MatchView:
        """Match query points of A into B (see :func:`dinofeat.matching.match_features`).

        Args:
            image_a, image_b: ``(H, W, 3) uint8 RGB``; B may be None (then only A is drawn).
            points_xy: ``(N, 2)`` query points in A's pixels (clicked); ignored with ``auto``.
            auto: find this many distinctive, well-spread points of A instead.
            resolution: model resolution for this call (default: the session's).
            mutual: keep (draw) only mutual matches.
            ransac: ``homography`` or ``fundamental``: keep only the inliers of that RANSAC model.
            color_by: line colours, ``index`` or ``score``.
            name_a, name_b: file names for the JSON.

        The heatmap is the last clicked point's similarity (the best point's, for ``auto``).
        Returns the pictures and the JSON; feature maps are cached, so another click on the same
        pair does not run the model again.
        """
        from dinofeat.matching import matches_json, similarity_image
        from dinofeat.outputs import format_json
        from dinofeat.drawing import draw_heatmap, draw_matches
        from dinofeat.matching import match_features

        if image_a is None:
            raise InputError("upload image A first")
        points = [list(map(float, p)) for p in points_xy]
        if image_b is None or (not points and auto is None):
            return MatchView(draw_points(image_a, points), points_xy=points)
        if len(points) > MAX_POINTS or (auto is not None and not 1 <= auto <= MAX_POINTS):
            raise InputError(f"at most {MAX_POINTS} points")
        fa, fb = self.features([image_a, image_b], resolution)
        queries = {"auto": int(auto)} if auto is not None else {"points_xy": points}
        matches = match_features(fa, fb, **queries, require_mutual=mutual, ransac=ransac)
        if len(matches) == 0:
            raise InputError("no distinctive points found: the images share no mutual nearest patches")
        points = matches.source_xy.tolist()
        extractor = self.extractor_at(resolution)
        settings = {"queries": "auto" if auto is not None else "points", **({"auto": int(auto)} if auto else {}),
                    "resolution": extractor.resolution, "max_size": extractor.max_size, "stride": extractor.stride,
                    "layers": list(extractor.layers), "facet": extractor.facet, "mutual": mutual, "ransac": ransac}
        data = matches_json(matches, model=extractor.spec.name, path_a=name_a, path_b=name_b, settings=settings,
                            verified=ransac is not None)
        folder = self.new_folder("match")
        json_path = folder / f"{Path(name_a).stem}_{Path(name_b).stem}_matches.json"
        json_path.write_text(format_json(data))
        picture = draw_matches(image_a, image_b, matches, color_by=color_by, mask=matches.keep.numpy())
        last = 0 if auto is not None else len(points) - 1
        heat = similarity_image(fa, fb, matches.source_xy[last:last + 1])
        heatmap = draw_heatmap(image_b, heat, point_xy=matches.target_xy[last].tolist())
        return MatchView(draw_points(image_a, points), picture, heatmap, data, json_path, points)


def _as_queries(queries_txy) -> np.ndarray:
    """``(N, 3)`` float64 ``(t, x, y)`` from a list of triples; a clear error for anything else."""
    try:
        queries = np.asarray(queries_txy, dtype=np.float64).reshape(-1, 3)
    except (TypeError, ValueError):
        raise InputError("query points must be (frame, x, y) triples") from None
    if not np.isfinite(queries).all():
        raise InputError("query points must be finite numbers")
    if len(queries) > MAX_POINTS:
        raise InputError(f"at most {MAX_POINTS} points, got {len(queries)}")
    return queries


def _digest(image: np.ndarray) -> str:
    """Content hash of an image array (cache key)."""
    h = hashlib.sha1(np.ascontiguousarray(image).tobytes())
    h.update(repr((image.shape, image.dtype.str)).encode())
    return h.hexdigest()


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)


# ---------------------------------------------------------------------------------------------
# The Gradio page


def example_files(examples_dir: str | Path | None = EXAMPLES_DIR) -> dict:
    """The example files found in ``examples_dir``: ``{"pairs": [[a, b], ...], "images": [...], "videos": [...]}``."""
    found = {"pairs": [], "images": [], "videos": []}
    if examples_dir is None or not Path(examples_dir).is_dir():
        return found
    folder = Path(examples_dir)

    def have(*names: str) -> list[str] | None:
        paths = [folder / n for n in names]
        return [str(p) for p in paths] if all(p.is_file() for p in paths) else None

    for pair in (("astronaut.jpg", "astronaut_warped.jpg"), ("chelsea.jpg", "coffee.jpg")):
        if (paths := have(*pair)) is not None:
            found["pairs"].append(paths)
    for group in (("astronaut.jpg", "astronaut_warped.jpg"), ("chelsea.jpg",), ("coffee.jpg",)):
        if (paths := have(*group)) is not None:
            found["images"].append(paths)
    if (paths := have("pan.mp4")) is not None:
        found["videos"].append(paths)
    return found


def _checked_image(gr, **kwargs):
    """``gr.Image(**kwargs)`` whose undecodable uploads give a clear in-page message.

    Gradio opens an uploaded image with Pillow before any handler runs and reports a failure as
    its own traceback text; this wraps the instance's ``preprocess`` to say what happened instead.
    (Not a subclass: Gradio writes a ``.pyi`` stub next to the module of every Component subclass.)
    """
    image = gr.Image(**kwargs)
    plain = image.preprocess

    def preprocess(payload):
        try:
            return plain(payload)
        except gr.Error:
            raise
        except Exception:  # noqa: BLE001 - Pillow raises many types for files it cannot read
            name = getattr(payload, "orig_name", None) or "the upload"
            raise gr.Error(f"{name} is not an image, or a damaged one (cannot read it)",
                           print_exception=False) from None

    image.preprocess = preprocess
    return image


def _messages(fn):
    """Turn :class:`DinofeatError` from a handler into an in-page error message."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        gr = require_gradio()
        try:
            return fn(*args, **kwargs)
        except DinofeatError as err:
            raise gr.Error(" ".join(str(err).split()), print_exception=False) from None

    return wrapper


def build_app(session: AppSession | None = None, *, extractor=None,
              examples_dir: str | Path | None = EXAMPLES_DIR, **session_options):
    """The Gradio page (a ``gr.Blocks``) for a session, or for an extractor (a new session).

    ``session_options`` go to :class:`AppSession`. The page is not started: call ``.launch()``
    on the result, or use :func:`launch`. The session is available as ``blocks.dinofeat_session``.
    """
    gr = require_gradio()
    if session is None:
        if extractor is None:
            raise ValueError("build_app needs a session or an extractor")
        session = AppSession(extractor, **session_options)
    examples = example_files(examples_dir)
    Image = functools.partial(_checked_image, gr)
    resolutions = sorted({*RESOLUTION_CHOICES, session.extractor.resolution})

    with gr.Blocks(title="dinofeat", analytics_enabled=False) as demo:
        gr.Markdown(
            "# dinofeat: DINOv2 features in the browser\n"
            f"Model: **{session.description}**. Click on images to add points; coordinates are pixels "
            "of the original image (x right, y down, centre of the top-left pixel = 0, 0)."
        )
        with gr.Accordion("Settings", open=False):
            resolution = gr.Dropdown(resolutions, value=session.extractor.resolution, label="Resolution",
                                     info="shorter image side fed to the model, in pixels (higher: finer "
                                          "features, slower)", elem_id="resolution")
        with gr.Tabs():
            with gr.Tab("Match", id="match"):
                _match_tab(gr, Image, session, resolution, examples["pairs"])
            with gr.Tab("PCA", id="pca"):
                _pca_tab(gr, session, resolution, examples["images"])
            with gr.Tab("Track", id="track"):
                _track_tab(gr, session, resolution, examples["videos"])
    demo.dinofeat_session = session
    return demo


def launch(session_or_extractor, *, host: str = "127.0.0.1", port: int | None = None,
           examples_dir: str | Path | None = EXAMPLES_DIR, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
           block: bool = True, quiet: bool = False, **session_options):
    """Build the page and serve it on ``host:port`` (``port=None``: the first free port from 7860).

    With ``block=False`` the server runs in a background thread and the ``gr.Blocks`` is returned
    (call ``.close()`` to stop it); otherwise this returns when the server stops (Ctrl+C). The
    page's address is ``blocks.local_url``; ``quiet=False`` logs it.
    """
    if isinstance(session_or_extractor, AppSession):
        demo = build_app(session_or_extractor, examples_dir=examples_dir)
    else:
        demo = build_app(extractor=session_or_extractor, examples_dir=examples_dir, **session_options)
    session = demo.dinofeat_session
    allowed = [str(session.workdir)] + ([str(examples_dir)] if examples_dir and Path(examples_dir).is_dir() else [])
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name=host, server_port=port, max_file_size=int(max_upload_mb * 1_000_000),
                allowed_paths=allowed, show_error=True, prevent_thread_lock=True, quiet=True,
                ssr_mode=False, footer_links=["gradio"])
    if not quiet:
        log.warning("serving %s on %s", session.description, demo.local_url)
    if block:
        demo.block_thread()  # until Ctrl+C, which closes the server
    return demo


def _match_tab(gr, Image, session: AppSession, resolution, pairs: list) -> None:
    state_a, state_b, points = gr.State(None), gr.State(None), gr.State([])
    names = gr.State(["A", "B"])
    with gr.Row():
        image_a = Image(label="Image A: click to add points", type="filepath", image_mode=None,
                        sources=["upload", "clipboard"], format="png", elem_id="match_a")
        image_b = Image(label="Image B", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                        format="png", elem_id="match_b")
    picture = gr.Image(label="Matches", interactive=False, format="png", elem_id="match_picture", scale=2,
                       render=False)
    heatmap = gr.Image(label="Similarity of the last point over B", interactive=False, format="png",
                       elem_id="match_heatmap", scale=1, render=False)
    data = gr.JSON(label="Matches (JSON)", elem_id="match_json", open=True, max_height=300, render=False)
    download = gr.File(label="Download JSON", interactive=False, elem_id="match_download", height=80,
                       render=False)
    status = gr.Markdown("Upload two images or pick an example pair, then click points on image A.",
                         elem_id="match_status")
    examples_here = gr.Column()  # the examples go right under the images (created below, once outputs exist)
    with gr.Row():
        auto = gr.Slider(1, MAX_POINTS, value=20, step=1, label="Automatic points", scale=3,
                         info="distinctive, well-spread points of A with confident matches")
        auto_button = gr.Button("Find automatic points", elem_id="match_auto", scale=1)
        clear_button = gr.Button("Clear points", elem_id="match_clear", scale=1)
    with gr.Accordion("Match options", open=False):
        with gr.Row():
            mutual = gr.Checkbox(False, label="Mutual matches only",
                                 info="keep a match only if B's point matches back onto the query's patch")
            ransac = gr.Dropdown(["none", "homography", "fundamental"], value="none", label="RANSAC check",
                                 info="keep only the inliers of a homography (planar scene) or fundamental matrix")
            color_by = gr.Radio(["index", "score"], value="index", label="Line colours",
                                info="one colour per point, or by cosine score (blue low, red high)")
    with gr.Row():
        picture.render()
        heatmap.render()
    with gr.Row():
        data.render()
        download.render()
    outputs = [image_a, points, picture, heatmap, data, download, status]
    options = [resolution, mutual, ransac, color_by]

    def describe(a, b, names_, n_points, kept=None):
        def one(label, name, image):
            return f"{label}: {name} ({image.shape[1]}x{image.shape[0]})" if image is not None else f"no image {label}"

        count = f"{n_points} point(s)" + (f", {kept} match(es) kept" if kept is not None else "")
        return " · ".join([one("A", names_[0], a), one("B", names_[1], b), count])

    def show(a, b, points_, names_, res, mutual_, ransac_, color, auto_count=None):
        if a is None:
            return None, [], None, None, None, None, describe(a, b, names_, 0)
        view = session.match(a, b, points_, auto=auto_count, resolution=res, mutual=bool(mutual_),
                             ransac=None if ransac_ in (None, "none") else ransac_, color_by=color,
                             name_a=names_[0], name_b=names_[1])
        kept = None if view.data is None else sum(m["kept"] for m in view.data["matches"])
        return (view.image_a, view.points_xy, view.picture, view.heatmap, view.data,
                str(view.json_path) if view.json_path else None, describe(a, b, names_, len(view.points_xy), kept))

    @_messages
    def load_pair(path_a, path_b):
        a = session.load_image(path_a) if path_a else None
        b = session.load_image(path_b) if path_b else None
        names_ = [Path(path_a).name if path_a else "A", Path(path_b).name if path_b else "B"]
        return (a, b, names_, a, [], None, None, None, None, describe(a, b, names_, 0))

    @_messages
    def upload_a(path_a, b, names_):  # a new image A: its points start again
        a = session.load_image(path_a)
        names_ = [Path(path_a).name, names_[1]]
        return a, names_, a, [], None, None, None, None, describe(a, b, names_, 0)

    @_messages
    def upload_b(path_b, a, points_, names_, *opts):  # a new image B: the same points, matched again
        b = session.load_image(path_b)
        names_ = [names_[0], Path(path_b).name]
        return (b, names_, *show(a, b, points_, names_, *opts))

    @_messages
    def click_a(a, b, points_, names_, res, mutual_, ransac_, color, evt: gr.SelectData):
        if a is None:
            raise InputError("upload image A first")
        if len(points_) >= MAX_POINTS:
            raise InputError(f"at most {MAX_POINTS} points; clear them to start again")
        points_ = [*points_, list(click_to_pixel(evt.index, (a.shape[1], a.shape[0])))]
        if b is None:
            gr.Info("point added; upload image B to see its match")
        return show(a, b, points_, names_, res, mutual_, ransac_, color)

    @_messages
    def auto_points(a, b, count, names_, *opts):
        if a is None or b is None:
            raise InputError("upload both images first")
        return show(a, b, [], names_, *opts, auto_count=int(count))

    @_messages
    def rematch(a, b, points_, names_, *opts):  # options changed: the same points again
        return show(a, b, points_, names_, *opts)

    image_a.upload(upload_a, [image_a, state_b, names], [state_a, names, *outputs])
    image_b.upload(upload_b, [image_b, state_a, points, names, *options], [state_b, names, *outputs])
    image_a.clear(lambda b, n: (None, None, [], None, None, None, None, describe(None, b, n, 0)),
                  [state_b, names], [state_a, *outputs])
    image_b.clear(lambda a, p, n: (None, a if a is None else draw_points(a, p), p, None, None, None, None,
                                   describe(a, None, n, len(p))), [state_a, points, names], [state_b, *outputs])
    image_a.select(click_a, [state_a, state_b, points, names, *options], outputs)
    auto_button.click(auto_points, [state_a, state_b, auto, names, *options], outputs)
    clear_button.click(lambda a, b, n: (a, [], None, None, None, None, describe(a, b, n, 0)),
                       [state_a, state_b, names], outputs)
    for option in options:
        option.change(rematch, [state_a, state_b, points, names, *options], outputs)
    if pairs:
        with examples_here:
            gr.Examples(pairs, inputs=[image_a, image_b], fn=load_pair, run_on_click=True, cache_examples=False,
                        outputs=[state_a, state_b, names, *outputs], label="Example pairs (click one)",
                        elem_id="match_examples")


def _pca_tab(gr, session: AppSession, resolution, groups: list) -> None:
    files = gr.File(label="Images: one or more (one PCA is fitted on all of them, so the same part gets the "
                          "same colour in each)", file_count="multiple", file_types=["image"], elem_id="pca_files")
    examples_here = gr.Column()
    with gr.Row():
        foreground = gr.Radio(["otsu", "none", "manual"], value="otsu", label="Foreground",
                              info="otsu: automatic threshold on the first component; none: colour every "
                                   "patch; manual: the threshold on the right")
        threshold = gr.Slider(0, 1, value=0.5, step=0.01, label="Manual threshold",
                              info="on the first component, scaled to 0..1 by its percentiles")
        components = gr.Slider(3, 32, value=3, step=1, label="Components",
                               info="kept in the downloadable PCA file; the colours use the first three")
    with gr.Row():
        layout = gr.Radio(["side by side", "overlay"], value="side by side", label="Layout")
        opacity = gr.Slider(0, 1, value=0.6, step=0.05, label="Overlay opacity")
        nearest = gr.Checkbox(False, label="Crisp patches (no interpolation)")
    run = gr.Button("Run PCA", variant="primary", elem_id="pca_run")
    summary = gr.Markdown(elem_id="pca_summary")
    gallery = gr.Gallery(label="PCA colours", columns=2, format="png", elem_id="pca_gallery", interactive=False)
    masks = gr.Gallery(label="Foreground masks (white = foreground)", columns=4, format="png",
                       elem_id="pca_masks", interactive=False)
    downloads = gr.File(label="Downloads: figure (PNG) and fitted PCA (.npz, for dinofeat pca --load-pca)",
                        file_count="multiple", interactive=False, elem_id="pca_downloads")
    inputs = [files, foreground, threshold, components, layout, opacity, nearest, resolution]
    outputs = [gallery, masks, summary, downloads]

    @_messages
    def run_pca(paths, fg, thr, k, layout_, alpha, crisp, res):
        if not paths:
            raise InputError("no images: upload one or more, or pick an example")
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        images = [session.load_image(p) for p in paths]
        names = [Path(p).name for p in paths]
        fg_option = {"otsu": "otsu", "none": None}.get(fg, float(thr))
        view = session.pca(images, foreground=fg_option, components=int(k), nearest=bool(crisp),
                           overlay=float(alpha) if layout_ == "overlay" else None, resolution=res, names=names)
        return (list(zip(view.panels, names)), list(zip(view.masks, names)), view.summary,
                [str(view.figure_path), str(view.pca_path)])

    run.click(run_pca, inputs, outputs)
    if groups:
        with examples_here:
            examples = gr.Examples([[g] for g in groups], inputs=[files], label="Examples (click one to run)",
                                   elem_id="pca_examples")
        examples.load_input_event.then(run_pca, inputs, outputs)


def _track_tab(gr, session: AppSession, resolution, videos: list) -> None:
    from dinofeat.cli.track import DEFAULT_TRAIL
    from dinofeat.tracking import DEFAULT_MIN_SCORE

    video_state = gr.State(None)  # VideoView of the uploaded video
    frame_state = gr.State(None)  # the clean frame on show, (H, W, 3) uint8
    queries = gr.State([])  # [[t, x, y], ...]
    with gr.Row():
        video = gr.Video(label="Video", sources=["upload"], elem_id="track_video", scale=1)
        with gr.Column(scale=1):
            frame_image = gr.Image(label="Click points to track on this frame", interactive=False, format="png",
                                   elem_id="track_frame")
            frame_index = gr.Slider(0, 1, value=0, step=1, interactive=False, label="Frame",
                                    elem_id="track_frame_index", info="points may start on any frame")
    examples_here = gr.Column()
    with gr.Row():
        points_json = gr.JSON(label="Query points [frame, x, y]", elem_id="track_points", open=True,
                              max_height=200, scale=2)
        with gr.Column(scale=1):
            clear_button = gr.Button("Clear points", elem_id="track_clear")
            run = gr.Button("Track", variant="primary", elem_id="track_run")
    with gr.Row():
        window = gr.Number(0, label="Search radius (pixels)", minimum=0,
                           info="around the last position; 0 = automatic (4 patches)")
        min_score = gr.Slider(0, 1, value=DEFAULT_MIN_SCORE, step=0.05, label="Minimum score",
                              info="a weaker match counts as not visible")
        trail = gr.Slider(0, 60, value=DEFAULT_TRAIL, step=1, label="Trail (frames)",
                          info="in the output video")
    summary = gr.Markdown(elem_id="track_summary")
    with gr.Row():
        result = gr.Video(label="Tracks", interactive=False, elem_id="track_result")
        downloads = gr.File(label="Downloads: MP4, JSON, CSV", file_count="multiple", interactive=False,
                            elem_id="track_downloads")
    data = gr.JSON(label="Tracks (JSON)", elem_id="track_json", open=False, max_height=300)

    def marked(frame, queries_, t):
        return draw_points(frame, [q[1:] for q in queries_ if int(q[0]) == int(t)])

    @_messages
    def open_video(path):
        view = session.open_video(path)
        if view.notice:
            gr.Warning(view.notice)
        frame = session.video_frame(view.path, 0)
        w, h = view.size_wh
        text = (f"{Path(view.path).name}: {view.frames} frames at {view.fps:g} fps, {w}x{h}. "
                "Click points on the frame, then press Track.")
        return (view, frame, [], frame, [],
                gr.update(maximum=max(view.usable_frames - 1, 1), value=0, interactive=view.usable_frames > 1), text)

    @_messages
    def show_frame(view, t, queries_):
        if view is None:
            raise InputError("upload a video first")
        frame = session.video_frame(view.path, int(t))
        return frame, marked(frame, queries_, t)

    @_messages
    def click_frame(view, frame, t, queries_, evt: gr.SelectData):
        if view is None or frame is None:
            raise InputError("upload a video first")
        if len(queries_) >= MAX_POINTS:
            raise InputError(f"at most {MAX_POINTS} points; clear them to start again")
        x, y = click_to_pixel(evt.index, view.size_wh)
        queries_ = [*queries_, [int(t), round(x, 2), round(y, 2)]]
        return queries_, queries_, marked(frame, queries_, t)

    @_messages
    def run_track(view, queries_, radius, score, trail_, res, progress=gr.Progress()):
        if view is None:
            raise InputError("upload a video first")
        if not queries_:
            raise InputError("click at least one point on a frame first")

        def report(done, total):
            progress((done, total), desc="Tracking", unit="frames")

        out = session.track(view.path, queries_, window=float(radius) if radius else None, min_score=score,
                            trail=int(trail_), resolution=res, progress=report)
        return (str(out.video_path), [str(out.video_path), str(out.json_path), str(out.csv_path)], out.data,
                out.summary)

    open_outputs = [video_state, frame_state, queries, frame_image, points_json, frame_index, summary]
    video.upload(open_video, [video], open_outputs)
    video.clear(lambda: (None, None, [], None, [], gr.update(value=0, interactive=False), ""), None, open_outputs)
    frame_index.release(show_frame, [video_state, frame_index, queries], [frame_state, frame_image])
    frame_image.select(click_frame, [video_state, frame_state, frame_index, queries],
                       [queries, points_json, frame_image])
    clear_button.click(lambda frame: ([], [], frame), [frame_state], [queries, points_json, frame_image])
    run.click(run_track, [video_state, queries, window, min_score, trail, resolution],
              [result, downloads, data, summary])
    if videos:
        with examples_here:
            gr.Examples(videos, inputs=[video], fn=open_video, outputs=open_outputs, run_on_click=True,
                        cache_examples=False, label="Example video (click to open)", elem_id="track_examples")
