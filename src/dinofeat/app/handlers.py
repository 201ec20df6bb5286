"""The page's event handlers: plain module-level functions of the session and the inputs.

Each takes the :class:`~dinofeat.app.session.AppSession` first, then the values of the page's
components (and, for a click, the clicked ``index``), and returns the values of its outputs in
the order :mod:`dinofeat.app.page` wires them. They raise Gradio's in-page error for a
:class:`~dinofeat.errors.DinofeatError` (:func:`messages`), so tests call them directly, without a
browser.

Clicks: Gradio reports a click on an image as ``evt.index == [i, j]``, the clicked position
measured from the image's top-left *corner* in the pixels of the image it shows, rounded to an
integer (``Math.round`` in the browser). Gradio shrinks a big image to fit its panel (and accounts
for that) but never enlarges a small one, and CSS cannot enlarge it either without breaking that
arithmetic (it assumes a scale of at most 1). So the click panels (image A, the video frame) show
a small image enlarged ``k`` times by the server (:func:`click_panel`, nearest neighbour, so each
original pixel stays a crisp ``k x k`` block; ``k`` = :func:`panel_scale`, 3 for a 176x144
video), and the click is ``i / k`` original pixels from the corner. dinofeat puts the *centre* of
the top-left pixel at ``(0, 0)``, so the click is at ``(i / k - 0.5, j / k - 0.5)``
(:func:`click_to_pixel`); this is off by at most half a displayed pixel, ``1 / (2k)`` original
pixels, where using ``(i, j)`` as is would be off by up to one pixel and biased.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dinofeat.app.session import MAX_POINTS
from dinofeat.dataset.listing import VIDEO_SUFFIXES
from dinofeat.drawing import draw_points
from dinofeat.errors import DinofeatError, InputError
from dinofeat.optionspec import flag_of
from dinofeat.wording import plural

GRADIO_MISSING = 'the web app needs Gradio, an optional extra: pip install "dinofeat[app]"'


def require_gradio():
    """Import Gradio, or raise :class:`~dinofeat.errors.DinofeatError` saying how to install it."""
    try:
        # lazy: Gradio is an optional extra (dinofeat[app])
        import gradio
    except ImportError:
        raise DinofeatError(GRADIO_MISSING) from None
    return gradio


def messages(fn):
    """Turn :class:`DinofeatError` from a handler into an in-page error message."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        gr = require_gradio()
        try:
            return fn(*args, **kwargs)
        except DinofeatError as err:
            # the page's controls are the command's options: name them by their flags, as the CLI does
            raise gr.Error(" ".join(err.render(flag_of).split()), print_exception=False) from None

    return wrapper


#: Click panels enlarge images whose longer side is below this many pixels (see the module docstring).
CLICK_PANEL_SIDE = 512


def panel_scale(size_wh: tuple[int, int]) -> int:
    """How many times a click panel enlarges an image of ``size_wh``: the least integer that brings
    its longer side to :data:`CLICK_PANEL_SIDE` pixels (1 for images that large already).

    >>> panel_scale((176, 144)), panel_scale((640, 480))
    (3, 1)
    """
    return max(1, math.ceil(CLICK_PANEL_SIDE / max(size_wh)))


def click_panel(image: np.ndarray, points_xy: Sequence[Sequence[float]] = ()) -> np.ndarray:
    """What a click panel shows: ``image`` (``(H, W, 3) uint8``) enlarged :func:`panel_scale` times
    (nearest neighbour) with ``points_xy`` (original pixels) marked as :func:`draw_points` does.

    >>> click_panel(np.zeros((144, 176, 3), np.uint8), [[10.0, 20.0]]).shape
    (432, 528, 3)
    """
    k = panel_scale((image.shape[1], image.shape[0]))
    big = image if k == 1 else np.repeat(np.repeat(image, k, axis=0), k, axis=1)
    shown = (np.asarray(points_xy, dtype=np.float64).reshape(-1, 2) + 0.5) * k - 0.5  # pixel centres, scaled
    return draw_points(big, shown)


def click_to_pixel(index: Sequence[float], size_wh: tuple[int, int], scale: int = 1) -> tuple[float, float]:
    """A Gradio image click ``evt.index`` -> ``(x, y)`` in dinofeat's pixel convention.

    ``size_wh`` is the original image's size and ``scale`` the panel's enlargement
    (:func:`panel_scale`). See the module docstring: the browser rounds the distance from the
    image corner, so the clicked point is half a pixel up-left of the reported index; it is
    clamped to the image.

    >>> click_to_pixel([10, 0], (64, 48))
    (9.5, -0.5)
    >>> click_to_pixel([31, 60], (176, 144), scale=3)  # on the enlarged panel of a small video
    (9.833333333333334, 19.5)
    """
    if index is None or len(index) != 2 or not all(isinstance(v, (int, float)) for v in index):
        raise InputError("click inside the image to add a point")
    w, h = size_wh
    x = min(max(float(index[0]) / scale - 0.5, -0.5), w - 0.5)
    y = min(max(float(index[1]) / scale - 0.5, -0.5), h - 0.5)
    return x, y


def _click(index, image: np.ndarray) -> tuple[float, float]:
    """A click on the panel of ``image`` (``(H, W, 3)``, original size) in its original pixels."""
    size_wh = (image.shape[1], image.shape[0])
    return click_to_pixel(index, size_wh, panel_scale(size_wh))


# ---------------------------------------------------------------------------------------------
# Match tab. State: image A, image B, their names, the query points. Outputs (``MATCH_OUTPUTS``),
# in order: image A with its points, image B with their matches, points, picture, heatmap, JSON,
# download, status.
#
# An upload only reads its file and sets its own image and name (match_upload_a / _b): two uploads
# in quick succession run with the state as it was when each was triggered, so a handler that also
# wrote the other image's state would undo the other upload. The page then calls match_refresh,
# which draws every panel from the state as it is by then. A bad upload is one message (its
# handler raises before setting anything), and the refresh that follows redraws the panels as
# they were.


def describe_pair(a, b, name_a: str, name_b: str, n_points: int, kept: int | None = None) -> str:
    """The status line: both images' names and sizes, the points and the kept matches."""

    def one(label, name, image):
        return f"{label}: {name} ({image.shape[1]}x{image.shape[0]})" if image is not None else f"no image {label}"

    count = plural(n_points, "point") + (f", {plural(kept, 'match')} kept" if kept is not None else "")
    return " · ".join([one("A", name_a, a), one("B", name_b, b), count])


def match_show(session, a, b, points, name_a, name_b, resolution, mutual, ransac, color_by, auto_count=None) -> tuple:
    """The Match tab's outputs for images ``a``, ``b`` and clicked ``points`` (or ``auto_count`` points)."""
    shown_b = None if b is None else click_panel(b)
    if a is None:
        return None, shown_b, [], None, None, None, None, describe_pair(a, b, name_a, name_b, 0)
    view = session.match(
        a,
        b,
        points,
        auto=auto_count,
        resolution=resolution,
        mutual=bool(mutual),
        ransac=None if ransac in (None, "none") else ransac,
        color_by=color_by,
        name_a=name_a,
        name_b=name_b,
    )
    kept = None if view.data is None else sum(m["kept"] for m in view.data["matches"])
    return (
        click_panel(a, view.points_xy),
        shown_b if view.targets_xy is None else click_panel(b, view.targets_xy),
        view.points_xy,
        view.picture,
        view.heatmap,
        view.data,
        str(view.json_path) if view.json_path else None,
        describe_pair(a, b, name_a, name_b, len(view.points_xy), kept),
    )


@messages
def match_load_pair(session, path_a, path_b) -> tuple:
    """An example pair: both images, their names, and the outputs (no points yet)."""
    a = session.load_image(path_a) if path_a else None
    b = session.load_image(path_b) if path_b else None
    name_a, name_b = Path(path_a).name if path_a else "A", Path(path_b).name if path_b else "B"
    shown_a = None if a is None else click_panel(a)
    shown_b = None if b is None else click_panel(b)
    return (a, b, name_a, name_b, shown_a, shown_b, [], None, None, None, None, describe_pair(a, b, name_a, name_b, 0))


@messages
def match_upload_a(session, path_a) -> tuple:
    """A new image A: the image, its name and no points (its points start again). Reads and
    writes nothing of B's, so an upload of B at the same time keeps its own name."""
    return session.load_image(path_a), Path(path_a).name, []


@messages
def match_upload_b(session, path_b) -> tuple:
    """A new image B: the image and its name (A's points stay, matched again by the refresh)."""
    return session.load_image(path_b), Path(path_b).name


@messages
def match_refresh(session, a, b, points, name_a, name_b, *options) -> tuple:
    """Every panel drawn from the state as it is now (after an upload, good or bad)."""
    return match_show(session, a, b, points, name_a, name_b, *options)


def match_clear_a(b, name_b) -> tuple:
    shown_b = None if b is None else click_panel(b)
    return (None, "A", None, shown_b, [], None, None, None, None, describe_pair(None, b, "A", name_b, 0))


def match_clear_b(a, points, name_a) -> tuple:
    marked = a if a is None else click_panel(a, points)
    return (None, "B", marked, None, points, None, None, None, None, describe_pair(a, None, name_a, "B", len(points)))


@messages
def match_click(session, a, b, points, name_a, name_b, resolution, mutual, ransac, color_by, index) -> tuple:
    """A click on image A at Gradio's ``index``: one more query point."""

    if a is None:
        raise InputError("upload image A first")
    if len(points) >= MAX_POINTS:
        raise InputError(f"at most {MAX_POINTS} points; clear them to start again")
    points = [*points, list(_click(index, a))]
    if b is None:
        require_gradio().Info("point added; upload image B to see its match")
    return match_show(session, a, b, points, name_a, name_b, resolution, mutual, ransac, color_by)


@messages
def match_auto(session, a, b, count, name_a, name_b, *options) -> tuple:
    """*Find automatic points*: ``count`` distinctive, well-spread points of A, matched (no
    heatmap: no point was clicked)."""
    if a is None or b is None:
        raise InputError("upload both images first")
    resolution, mutual, ransac, color_by = options
    return match_show(session, a, b, [], name_a, name_b, resolution, mutual, ransac, color_by, auto_count=int(count))


def match_clear_points(a, b, name_a, name_b) -> tuple:
    shown_a, shown_b = (None if image is None else click_panel(image) for image in (a, b))
    return shown_a, shown_b, [], None, None, None, None, describe_pair(a, b, name_a, name_b, 0)


@messages
def match_rematch(session, a, b, points, name_a, name_b, *options) -> tuple:
    """An option changed: the same points again."""
    return match_show(session, a, b, points, name_a, name_b, *options)


# ---------------------------------------------------------------------------------------------
# PCA tab. Outputs: gallery of panels, gallery of masks, summary, downloads.


@messages
def pca_run(
    session, paths, foreground, threshold, components, layout, opacity, nearest, resolution, upsample=False
) -> tuple:
    """*Run PCA* on the uploaded images."""
    if not paths:
        raise InputError("no images: upload one or more, or pick an example")
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    images = [session.load_image(p) for p in paths]
    names = [Path(p).name for p in paths]
    chosen = {"otsu": "otsu", "none": None}.get(foreground, float(threshold))
    view = session.pca(
        images,
        foreground=chosen,
        components=int(components),
        nearest=bool(nearest),
        overlay=float(opacity) if layout == "overlay" else None,
        resolution=resolution,
        names=names,
        upsample=bool(upsample),
    )
    return (
        list(zip(view.panels, names)),
        list(zip(view.masks, names)),
        view.summary,
        [str(view.figure_path), str(view.pca_path)],
    )


# ---------------------------------------------------------------------------------------------
# Track tab. State: the opened video (VideoView), the clean frame on show, the queries [[t, x, y], ...].


def marked_frame(frame, queries, t):
    """The frame's click panel with the queries placed on frame ``t`` marked."""
    return click_panel(frame, [q[1:] for q in queries if int(q[0]) == int(t)])


@messages
def track_open(session, path) -> tuple:
    """A video uploaded: its first frame to click on, the frame slider, a status line.
    Outputs: video state, clean frame, queries, shown frame, queries JSON, slider update, summary."""
    gr = require_gradio()
    view = session.open_video(path)
    if view.notice:
        gr.Warning(view.notice)
    frame = session.video_frame(view.path, 0)
    w, h = view.size_wh
    text = (
        f"{Path(view.path).name}: {view.frames} frames at {view.fps:g} fps, {w}x{h}. "
        "Click points on the frame, then press Track."
    )
    slider = gr.update(maximum=max(view.usable_frames - 1, 1), value=0, interactive=view.usable_frames > 1)
    return view, frame, [], click_panel(frame), [], slider, text


def track_clear_video() -> tuple:
    return None, None, [], None, [], require_gradio().update(value=0, interactive=False), ""


@messages
def track_show_frame(session, view, t, queries) -> tuple:
    """The slider moved: frame ``t`` (clean, and with its queries marked)."""
    if view is None:
        raise InputError("upload a video first")
    frame = session.video_frame(view.path, int(t))
    return frame, marked_frame(frame, queries, t)


@messages
def track_click(view, frame, t, queries, index) -> tuple:
    """A click on frame ``t`` at Gradio's ``index``: one more query ``[t, x, y]``."""

    if view is None or frame is None:
        raise InputError("upload a video first")
    if len(queries) >= MAX_POINTS:
        raise InputError(f"at most {MAX_POINTS} points; clear them to start again")
    x, y = _click(index, frame)
    queries = [*queries, [int(t), round(x, 3), round(y, 3)]]
    return queries, queries, marked_frame(frame, queries, t)


def track_clear_points(frame) -> tuple:
    return [], [], None if frame is None else click_panel(frame)


@messages
def track_run(session, view, queries, radius, min_score, trail, resolution, progress=None) -> tuple:
    """*Track*: outputs the result video, the downloads (MP4, JSON, CSV), the JSON and a summary.
    ``progress`` is called as ``progress(done, total)``."""
    if view is None:
        raise InputError("upload a video first")
    if not queries:
        raise InputError("click at least one point on a frame first")
    out = session.track(
        view.path,
        queries,
        window=float(radius) if radius else None,
        min_score=min_score,
        trail=int(trail),
        resolution=resolution,
        progress=progress,
    )
    return (str(out.video_path), [str(out.video_path), str(out.json_path), str(out.csv_path)], out.data, out.summary)


# ---------------------------------------------------------------------------------------------
# Segment tab. State: the input ({"path", "video": VideoView or None}), the clean frame on show,
# the clicks [[x, y, label], ...] (label 0: background).

#: Object labels the page's chooser offers (the command line takes up to 254).
SEGMENT_LABELS = 9
#: The "a click adds" choices: on an object (the chosen label) or on the background.
SEGMENT_CLICK_KINDS = ("object", "background")


def segment_panel(session, frame, clicks, resolution) -> np.ndarray:
    """The click panel: the frame with the mask of its clicks over it, and the clicks marked."""
    shown = session.segment_preview(frame, clicks, resolution=resolution)
    return click_panel(shown, [c[:2] for c in clicks])


@messages
def segment_open(session, path) -> tuple:
    """An image or a video uploaded: the image (a video's first frame) to click on, a status line.
    Outputs: input state, clean frame, clicks, shown frame, clicks JSON, summary."""
    if path is None or str(path) == "":
        raise InputError("no file: upload an image or a video")
    name = Path(path).name
    if Path(path).suffix.lower() in VIDEO_SUFFIXES:
        view = session.open_video(path)
        if view.notice:
            require_gradio().Warning(view.notice)
        frame = session.video_frame(view.path, 0)
        text = (
            f"{name}: {view.frames} frames, {view.size_wh[0]}x{view.size_wh[1]}. Click the object on the first frame."
        )
    else:
        view = None
        frame = session.load_image(path)
        text = f"{name}: {frame.shape[1]}x{frame.shape[0]}. Click the object."
    return {"path": str(path), "video": view}, frame, [], click_panel(frame), [], text


def segment_clear_input() -> tuple:
    return None, None, [], None, [], ""


@messages
def segment_click(session, source, frame, clicks, label, kind, resolution, index) -> tuple:
    """A click at Gradio's ``index``: one more click ``[x, y, label]`` (label 0 for the background),
    and the mask it gives shown. Outputs: clicks, clicks JSON, shown frame."""
    if source is None or frame is None:
        raise InputError("upload an image or a video first")
    if len(clicks) >= MAX_POINTS:
        raise InputError(f"at most {MAX_POINTS} clicks; clear them to start again")
    x, y = _click(index, frame)
    chosen = 0 if kind == "background" else int(label)
    clicks = [*clicks, [round(x, 3), round(y, 3), chosen]]
    return clicks, clicks, segment_panel(session, frame, clicks, resolution)


def segment_clear_clicks(frame) -> tuple:
    return [], [], None if frame is None else click_panel(frame)


@messages
def segment_run(session, source, clicks, resolution, progress=None, upsample=False) -> tuple:
    """*Segment*: an image's overlay, or a video's; the downloads (overlay, JSON, masks); the JSON;
    a summary. Outputs: result image, result video, downloads, JSON, summary."""
    if source is None:
        raise InputError("upload an image or a video first")
    out = session.segment(source["path"], clicks, resolution=resolution, progress=progress, upsample=bool(upsample))
    downloads = [str(out.overlay_path), str(out.json_path), *(str(p) for p in out.mask_paths[:50])]
    image = None if out.is_video else str(out.overlay_path)
    video = str(out.overlay_path) if out.is_video else None
    return image, video, downloads, out.data, out.summary
