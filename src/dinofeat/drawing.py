"""Pure drawing functions: images in, new image out (``(H, W, 3) uint8 RGB``; inputs never modified).

Every image argument may be a path, a PIL image or an array (converted at the boundary by
:func:`dinofeat.io.images.load_image`: grayscale, float and RGBA arrays become RGB; a ``uint8``
RGB(A) array is used as it is). OpenCV does the rasterising (anti-aliased lines and circles);
colours here are RGB.
"""

from __future__ import annotations

import colorsys
import math
from collections import deque

import cv2
import numpy as np

from dinofeat.io.images import load_image
from dinofeat.io.masks import DAVIS_PALETTE


def as_image(image) -> np.ndarray:
    """A drawing function's image argument as an ``(H, W, 3|4) uint8`` array: paths, PIL images and
    other arrays through :func:`dinofeat.io.images.load_image` (RGB); ``uint8`` RGB(A) arrays as they are.

    >>> as_image(np.zeros((2, 3), np.float32)).shape
    (2, 3, 3)
    """
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] in (3, 4):
        return image
    return load_image(image)


def palette(n: int) -> np.ndarray:
    """``n`` well-separated saturated colours, ``(n, 3) uint8`` RGB, the same on every call.

    >>> palette(3).shape
    (3, 3)
    """
    golden = 0.618033988749895
    hues = (np.arange(n) * golden) % 1.0
    return np.array(
        [[round(c * 255) for c in colorsys.hsv_to_rgb(h, 0.85, 1.0)] for h in hues], dtype=np.uint8
    ).reshape(n, 3)


# -- PCA figures ---------------------------------------------------------------------------------
# These lay images out without looking at their channels: (H, W, 3) RGB or (H, W, 4) RGBA uint8
# (RGBA keeps a transparent PCA background in PNG files). Mixed inputs come out RGBA.


_SUBPIXEL_BITS = 4  # OpenCV draws at 1/16-pixel precision with shift=4


def _draw_dot(canvas: np.ndarray, centre_fixed, radius: int, color) -> None:
    """In place on a canvas the caller owns: a filled dot with a 1-pixel dark rim at a fixed-point
    centre (pixel coordinates times 16, integer = pixel centre, as dinofeat's convention)."""
    centre = tuple(int(v) for v in centre_fixed)
    cv2.circle(canvas, centre, (radius + 1) << _SUBPIXEL_BITS, (0, 0, 0), -1, cv2.LINE_AA, _SUBPIXEL_BITS)
    cv2.circle(canvas, centre, radius << _SUBPIXEL_BITS, tuple(int(c) for c in color), -1, cv2.LINE_AA, _SUBPIXEL_BITS)


def draw_points(image, points_xy) -> np.ndarray:
    """``image`` (a path, PIL image or array) with numbered dots (colours of :func:`palette`) at
    ``points_xy`` ``(N, 2)`` pixels: a new ``(H, W, 3) uint8 RGB`` image; the input is untouched.

    >>> bool(draw_points(np.zeros((20, 30, 3), np.uint8), [[10.0, 10.0]])[10, 10].any())
    True
    """
    out = np.ascontiguousarray(as_image(image)[..., :3]).copy()
    points = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    if len(points) == 0:
        return out
    colors = palette(len(points))
    size = max(out.shape[:2])
    radius = max(3, round(size / 120))
    thickness = max(1, radius // 3)
    font_scale = max(0.4, size / 1400)
    for i, (x, y) in enumerate(points):
        _draw_dot(out, np.round(np.array([x, y]) * (1 << _SUBPIXEL_BITS)), radius, colors[i])
        org = (round(x + radius + 2), round(y - radius - 2))
        color = tuple(int(c) for c in colors[i])
        cv2.putText(out, str(i), org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(out, str(i), org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, color, thickness, cv2.LINE_AA)
    return out


def _same_channels(images) -> list[np.ndarray]:
    channels = max(img.shape[2] for img in images)
    return [
        img if img.shape[2] == channels else np.dstack([img, np.full(img.shape[:2], 255, np.uint8)]) for img in images
    ]


def draw_pca_side_by_side(image, colors, *, gap: int = 0, fill: int = 255) -> np.ndarray:
    """The image and its PCA colours (same height) next to each other: ``(H, 2W + gap, 3|4) uint8``.

    ``image`` and ``colors`` are paths, PIL images or arrays (``(H, W, 3|4) uint8`` RGB(A)).

    >>> draw_pca_side_by_side(np.zeros((4, 5, 3), np.uint8), np.ones((4, 5, 3), np.uint8), gap=2).shape
    (4, 12, 3)
    """
    image, colors = as_image(image), as_image(colors)
    if image.shape[:2] != colors.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and colours {colors.shape[:2]} differ in size")
    image, colors = _same_channels([image, colors])
    spacer = np.full((image.shape[0], gap, image.shape[2]), fill, np.uint8)
    return np.concatenate([image, spacer, colors], axis=1)


def draw_pca_overlay(image, colors, alpha: float = 0.5, mask: np.ndarray | None = None) -> np.ndarray:
    """Blend PCA colours over the image: ``(1 - alpha) * image + alpha * colors`` where ``mask``.

    ``image`` and ``colors`` are ``(H, W, 3) uint8`` RGB (or paths, PIL images, other arrays);
    ``mask`` ``(H, W)`` bool marks the
    foreground (elsewhere the image is left as it is); ``alpha`` in [0, 1].

    >>> draw_pca_overlay(np.zeros((1, 2, 3), np.uint8), np.full((1, 2, 3), 200, np.uint8), 0.5,
    ...                  mask=np.array([[True, False]]))[..., 0]
    array([[100,   0]], dtype=uint8)
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    image, colors = as_image(image)[..., :3], as_image(colors)
    blend = image.astype(np.float32) * (1 - alpha) + colors[..., :3].astype(np.float32) * alpha
    out = np.clip(blend + 0.5, 0, 255).astype(np.uint8)
    if mask is not None:
        out = np.where(mask[..., None], out, image)
    return out


def draw_pca_grid(
    panels, *, columns: int | None = None, height: int | None = None, gap: int = 8, fill: int = 255, labels=None
) -> np.ndarray:
    """Several panels (e.g. one side-by-side per image) in a grid figure, row by row.

    Every panel is resized (area interpolation) to a common ``height`` (default: the smallest
    panel height) keeping its aspect ratio; ``columns`` defaults to ``ceil(sqrt(n))`` (2 for 2-4
    panels, 3 for 5-9, ...), so the figure wraps into rows instead of growing into a strip;
    ``gap`` pixels of ``fill`` separate the panels. ``labels`` (one string per panel, e.g. file
    names) are written in the top-left corner of each panel, on a dark band.

    >>> draw_pca_grid([np.zeros((10, 20, 3), np.uint8)] * 3, columns=2, gap=2).shape
    (22, 42, 3)
    """
    panels = _same_channels(list(panels))
    if not panels:
        raise ValueError("no panels to draw")
    if labels is not None and len(labels) != len(panels):
        raise ValueError(f"got {len(labels)} labels for {len(panels)} panels")
    height = height or min(p.shape[0] for p in panels)
    columns = max(1, columns or math.ceil(math.sqrt(len(panels))))
    resized = []
    for i, panel in enumerate(panels):
        width = max(1, round(panel.shape[1] * height / panel.shape[0]))
        panel = (
            panel
            if panel.shape[:2] == (height, width)
            else cv2.resize(panel, (width, height), interpolation=cv2.INTER_AREA)
        )
        resized.append(panel if labels is None else draw_label(panel, str(labels[i])))
    rows = [resized[i : i + columns] for i in range(0, len(resized), columns)]
    row_widths = [sum(p.shape[1] for p in row) + gap * (len(row) - 1) for row in rows]
    channels = panels[0].shape[2]
    out = np.full((len(rows) * height + gap * (len(rows) - 1), max(row_widths), channels), fill, np.uint8)
    for r, row in enumerate(rows):
        x, y = 0, r * (height + gap)
        for panel in row:
            out[y : y + height, x : x + panel.shape[1]] = panel
            x += panel.shape[1] + gap
    return out


def draw_label(image: np.ndarray, text: str) -> np.ndarray:
    """``image`` (``(H, W, 3|4) uint8``) with ``text`` in white on a dark band in its top-left
    corner (cut to fit the width); a new image, the input is untouched.

    >>> bool(draw_label(np.zeros((40, 120, 3), np.uint8), "cat.jpg")[2:20, 2:60].max() > 0)
    True
    """
    out = image.copy()
    h, w = out.shape[:2]
    scale = max(0.3, min(h, w) / 500)
    thickness = max(1, round(scale * 1.5))
    width_of = lambda t: cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0]
    if width_of(text) > w - 8:  # cut, keeping the start, with ".." to show it was cut
        keep = len(text)
        while keep > 0 and width_of(text[:keep] + "..") > w - 8:
            keep -= 1
        text = text[:keep] + ".." if keep else ""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    band_h = min(h, th + base + 8)
    band = out[:band_h, : min(w, tw + 8)]
    band[..., :3] = (band[..., :3].astype(np.float32) * 0.35).astype(np.uint8)
    if out.shape[2] == 4:
        band[..., 3] = 255
    rgb = np.ascontiguousarray(out[..., :3])
    cv2.putText(rgb, text, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    out[..., :3] = rgb
    return out


# -- Matches -------------------------------------------------------------------------------------

#: Pictures of matches are scaled to a height in this range (small images up, huge ones down).
MATCH_MIN_HEIGHT = 360
MATCH_MAX_HEIGHT = 1440
#: With more matches than this, lines are drawn thin and semi-transparent (a thicket otherwise).
MANY_MATCHES = 40
#: Opacity of the lines when there are many.
MANY_MATCHES_ALPHA = 0.55


def match_canvas_layout(
    size_a_wh: tuple[int, int], size_b_wh: tuple[int, int], height: int | None = None
) -> tuple[int, int, float, float, int]:
    """Layout of :func:`draw_matches`: ``(height, gap, scale_a, scale_b, offset_b)``.

    Both images are scaled to a common ``height`` (default: the taller image's height, clamped to
    ``[MATCH_MIN_HEIGHT, MATCH_MAX_HEIGHT]``) and placed side by side with ``gap`` white pixels;
    image B starts at x = ``offset_b`` (in the vertical layout, at y = ``height + gap``). The
    horizontal picture is ``offset_b + round(w_b * scale_b)`` wide.

    >>> match_canvas_layout((400, 300), (200, 100), height=300)
    (300, 4, 1.0, 3.0, 404)
    """
    (wa, ha), (_wb, hb) = size_a_wh, size_b_wh
    if height is None:
        height = min(max(ha, hb, MATCH_MIN_HEIGHT), MATCH_MAX_HEIGHT)
    gap = max(4, round(height / 100))
    scale_a, scale_b = height / ha, height / hb
    return height, gap, scale_a, scale_b, max(1, round(wa * scale_a)) + gap


def score_colors(scores, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """``(N, 3) uint8`` RGB colours of scores on OpenCV's TURBO map, ``low`` blue to ``high`` red."""
    values = np.clip((np.asarray(scores, dtype=np.float64).reshape(-1) - low) / max(high - low, 1e-12), 0, 1)
    levels = np.round(values * 255).astype(np.uint8).reshape(-1, 1)
    return cv2.applyColorMap(levels, cv2.COLORMAP_TURBO).reshape(-1, 3)[:, ::-1].copy()


def draw_color_bar(height: int, *, low: float = 0.0, high: float = 1.0, label: str = "cosine") -> np.ndarray:
    """A vertical TURBO colour bar with its end values and a label: ``(height, W, 3) uint8`` RGB
    (white background), the legend of :func:`score_colors`.

    >>> draw_color_bar(360).shape[0]
    360
    """
    scale = max(0.35, height / 1000)
    text_w = cv2.getTextSize(f"{max(abs(low), abs(high)):.1f}-", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
    bar_w, margin = max(10, height // 30), max(6, height // 60)
    width = margin + bar_w + margin + text_w + margin
    out = np.full((height, width, 3), 255, np.uint8)
    top, bottom = margin * 3, height - margin * 3
    levels = np.linspace(high, low, max(bottom - top, 1))
    out[top:bottom, margin : margin + bar_w] = score_colors(levels, low, high)[:, None, :]
    thickness = max(1, round(scale * 2))
    for value, y in ((high, top), (low, bottom)):
        cv2.putText(
            out,
            f"{value:.1f}",
            (margin * 2 + bar_w, y + round(4 * scale)),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (0, 0, 0),
            thickness,
            cv2.LINE_AA,
        )
    cv2.putText(out, label, (margin, top - margin), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.8, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def draw_matches(
    image_a,
    image_b,
    matches,
    *,
    color_by: str = "index",
    height: int | None = None,
    mask=None,
    layout: str = "horizontal",
) -> np.ndarray:
    """A and B side by side (or A above B) with each match as a coloured line between two dots.

    Args:
        image_a, image_b: paths, PIL images or ``(H, W, 3) uint8`` RGB arrays.
        matches: anything with ``source_xy`` and ``target_xy`` ``(N, 2)`` (pixels of A and B) and
            ``scores`` ``(N,)`` (e.g. :class:`dinofeat.matching.Matches`).
        color_by: ``index`` (a distinct colour per match) or ``score`` (TURBO map, cosine 0..1,
            with its colour bar in B's top-right corner).
        height: common height of the two images in the picture (see :func:`match_canvas_layout`).
        mask: ``(N,)`` bool, draw only these matches (default: all).
        layout: ``horizontal`` (B right of A) or ``vertical`` (B below A; clearer for stereo pairs,
            whose lines are otherwise near-horizontal).

    Line width and dot size grow with the picture, and dots have a dark outline, so matches stay
    readable on small and large images; with more than :data:`MANY_MATCHES` lines they are thin
    and semi-transparent.

    Returns:
        ``(H, W, 3) uint8`` RGB; horizontally, ``height`` high and wide as in :func:`match_canvas_layout`.

    >>> from types import SimpleNamespace
    >>> m = SimpleNamespace(source_xy=np.array([[1.0, 2.0]]), target_xy=np.array([[3.0, 4.0]]), scores=np.ones(1))
    >>> draw_matches(np.zeros((10, 20, 3), np.uint8), np.zeros((10, 10, 3), np.uint8), m).shape
    (360, 1084, 3)
    """
    if color_by not in ("index", "score"):
        raise ValueError(f"color_by must be 'index' or 'score', got {color_by!r}")
    if layout not in ("horizontal", "vertical"):
        raise ValueError(f"layout must be 'horizontal' or 'vertical', got {layout!r}")
    image_a, image_b = as_image(image_a)[..., :3], as_image(image_b)[..., :3]
    src = np.asarray(matches.source_xy, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(matches.target_xy, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(matches.scores, dtype=np.float64).reshape(-1)
    colors = palette(len(src)) if color_by == "index" else score_colors(scores)
    if mask is not None:
        keep = np.asarray(mask, dtype=bool).reshape(-1)
        src, dst, colors = src[keep], dst[keep], colors[keep]
    h, gap, scale_a, scale_b, offset_b = match_canvas_layout(
        (image_a.shape[1], image_a.shape[0]), (image_b.shape[1], image_b.shape[0]), height
    )
    panel_a = _resize_to(image_a, max(1, round(image_a.shape[1] * scale_a)), h)
    panel_b = _resize_to(image_b, max(1, round(image_b.shape[1] * scale_b)), h)
    b_xy = (offset_b, 0) if layout == "horizontal" else (0, h + gap)
    canvas_hw = (
        (h, offset_b + panel_b.shape[1])
        if layout == "horizontal"
        else (2 * h + gap, max(panel_a.shape[1], panel_b.shape[1]))
    )
    canvas = np.full((*canvas_hw, 3), 255, np.uint8)
    canvas[:h, : panel_a.shape[1]] = panel_a[..., :3]
    canvas[b_xy[1] : b_xy[1] + h, b_xy[0] : b_xy[0] + panel_b.shape[1]] = panel_b[..., :3]
    # pixel centres scale with the half-pixel rule; OpenCV draws with 4 fractional bits
    fixed = lambda xy, scale, offset: np.round(((xy + 0.5) * scale - 0.5 + offset) * (1 << _SUBPIXEL_BITS)).astype(
        np.int64
    )
    pa, pb = fixed(src, scale_a, (0, 0)), fixed(dst, scale_b, b_xy)
    many = len(src) > MANY_MATCHES
    thickness = 1 if many else max(1, round(h / 480))
    radius = max(2, round(h / 240)) if many else max(3, round(h / 150))
    lines = canvas.copy()
    for (xa, ya), (xb, yb), color in zip(pa.tolist(), pb.tolist(), colors.tolist()):
        cv2.line(lines, (xa, ya), (xb, yb), color, thickness, cv2.LINE_AA, _SUBPIXEL_BITS)
    canvas = cv2.addWeighted(lines, MANY_MATCHES_ALPHA, canvas, 1 - MANY_MATCHES_ALPHA, 0) if many else lines
    for (xa, ya), (xb, yb), color in zip(pa.tolist(), pb.tolist(), colors.tolist()):
        for point in ((xa, ya), (xb, yb)):
            _draw_dot(canvas, point, radius, color)
    if color_by == "score":  # the legend, in B's top-right corner (the picture keeps its size)
        bar = draw_color_bar(max(48, h // 3))
        bar_h, bar_w = min(bar.shape[0], h), min(bar.shape[1], panel_b.shape[1])
        right = b_xy[0] + panel_b.shape[1]
        region = canvas[b_xy[1] : b_xy[1] + bar_h, right - bar_w : right]
        region[:] = (0.15 * region + 0.85 * bar[:bar_h, -bar_w:] + 0.5).astype(np.uint8)
    return canvas


def draw_heatmap(image, heat: np.ndarray, *, alpha: float = 0.55, point_xy=None) -> np.ndarray:
    """``heat`` ``(H, W)`` float (any range; min-max scaled, TURBO colours) blended over ``image``
    (``(H, W, 3) uint8`` RGB, a path or a PIL image); ``point_xy`` (x, y) marks a position with a
    white cross.

    >>> draw_heatmap(np.zeros((4, 6, 3), np.uint8), np.arange(24.0).reshape(4, 6)).shape
    (4, 6, 3)
    """
    image, heat = as_image(image), np.asarray(heat)
    if heat.shape[:2] != image.shape[:2]:
        raise ValueError(f"heat map {heat.shape[:2]} and image {image.shape[:2]} differ in size")
    low, high = float(np.nanmin(heat)), float(np.nanmax(heat))
    colors = score_colors(np.nan_to_num(heat, nan=low).reshape(-1), low, high).reshape(*heat.shape[:2], 3)
    out = draw_pca_overlay(image[..., :3], colors, alpha)
    if point_xy is not None:
        size = max(4, round(max(image.shape[:2]) / 60))
        x, y = (round(v) for v in point_xy)
        cv2.drawMarker(out, (x, y), (0, 0, 0), cv2.MARKER_CROSS, size + 2, max(2, size // 3) + 2, cv2.LINE_AA)
        cv2.drawMarker(out, (x, y), (255, 255, 255), cv2.MARKER_CROSS, size, max(2, size // 3), cv2.LINE_AA)
    return out


def _resize_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    shrink = width < image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


# -- tracks ---------------------------------------------------------------------------------------


def draw_tracks(
    image,
    trail_xy: np.ndarray,
    trail_visible: np.ndarray,
    colors: np.ndarray | None = None,
    *,
    radius: int | None = None,
    thickness: int | None = None,
) -> np.ndarray:
    """Tracked points with fading trails on a video frame: a new ``(H, W, 3) uint8 RGB`` image.

    Args:
        image: the frame, ``(H, W, 3) uint8 RGB`` (not modified), or a path or PIL image.
        trail_xy: ``(L, N, 2)`` positions (original pixels) of ``N`` points over the last ``L`` frames,
            oldest first; the last row is the current frame.
        trail_visible: ``(L, N)`` bool; a trail segment is drawn only between two visible positions,
            a point only if visible in the current frame.
        colors: ``(N, 3) uint8`` RGB, one per point (default: :func:`palette`).
        radius, thickness: marker radius and trail width in pixels (default: scaled to the frame).

    Older trail segments are more transparent (linear fade), the current position is an opaque
    dot with a dark rim.

    >>> out = draw_tracks(np.zeros((20, 30, 3), np.uint8), np.array([[[5.0, 5.0]], [[15.0, 10.0]]]),
    ...                   np.array([[True], [True]]))
    >>> out.shape, bool(out[10, 15].any()), bool(out[0, 29].any())
    ((20, 30, 3), True, False)
    """
    image = np.ascontiguousarray(as_image(image)[..., :3])
    trail_xy = np.asarray(trail_xy, dtype=np.float64).reshape(len(trail_visible), -1, 2)
    trail_visible = np.asarray(trail_visible, dtype=bool) & np.isfinite(trail_xy).all(axis=-1)
    length, n = trail_visible.shape
    colors = palette(n) if colors is None else np.asarray(colors, dtype=np.uint8).reshape(n, 3)
    side = min(image.shape[:2])
    radius = radius or max(2, round(side / 120))
    thickness = thickness or max(1, round(side / 240))
    fixed = np.round(trail_xy * (1 << _SUBPIXEL_BITS)).astype(np.int64)
    out = image.copy()
    if length > 1:
        lines = np.zeros_like(image)
        alpha = np.zeros(image.shape[:2], np.uint8)
        for age in range(length - 1):  # oldest first, so newer segments are drawn on top
            strength = round(255 * (age + 1) / (length - 1))
            for i in np.flatnonzero(trail_visible[age] & trail_visible[age + 1]):
                a, b = tuple(fixed[age, i]), tuple(fixed[age + 1, i])
                cv2.line(lines, a, b, tuple(int(c) for c in colors[i]), thickness, cv2.LINE_AA, _SUBPIXEL_BITS)
                cv2.line(alpha, a, b, strength, thickness, cv2.LINE_AA, _SUBPIXEL_BITS)
        drawn = alpha > 0
        if drawn.any():
            weight = alpha[drawn, None].astype(np.float32) / 255
            out[drawn] = np.clip(out[drawn] * (1 - weight) + lines[drawn] * weight + 0.5, 0, 255).astype(np.uint8)
    for i in np.flatnonzero(trail_visible[-1]):
        _draw_dot(out, fixed[-1, i], radius, colors[i])
    return out


class TrailAnnotator:
    """Draws tracked points with fading trails on consecutive video frames; it owns the trail.

    Feed every processed frame in order (as supervision pairs an annotator with a ``VideoSink``):
    ``annotator.annotate(frame, points_xy, visible)`` returns the frame with each point's dot and
    the trail of its last ``length`` positions (:func:`draw_tracks`). One annotator per video.

    Args:
        n_points: number of tracked points (their colours come from :func:`palette`).
        length: trail length in frames (0: dots only).
        colors: ``(N, 3) uint8`` RGB, one per point (default: :func:`palette`).

    >>> annotator = TrailAnnotator(1, length=2)
    >>> frames = [annotator.annotate(np.zeros((20, 30, 3), np.uint8), [[5.0 + 5 * k, 10.0]], [True])
    ...           for k in range(3)]
    >>> bool(frames[2][10, 7].any()), bool(frames[0][10, 15].any())
    (True, False)
    """

    def __init__(self, n_points: int, length: int, colors: np.ndarray | None = None) -> None:
        if length < 0:
            raise ValueError(f"trail length must be 0 or more frames, got {length}")
        self.colors = palette(n_points) if colors is None else np.asarray(colors, dtype=np.uint8).reshape(n_points, 3)
        self._recent: deque = deque(maxlen=length + 1)  # positions of the last frames, the current one included

    def annotate(self, frame, points_xy, visible) -> np.ndarray:
        """The ``(H, W, 3) uint8 RGB`` frame (or a path, PIL image) with the points at ``points_xy``
        ``(N, 2)`` (drawn where ``visible`` ``(N,)``) and their trails; ``frame`` is not modified."""
        self._recent.append((np.asarray(points_xy, dtype=np.float64), np.asarray(visible, dtype=bool)))
        trail_xy = np.stack([xy for xy, _ in self._recent])
        trail_visible = np.stack([v for _, v in self._recent])
        return draw_tracks(frame, trail_xy, trail_visible, self.colors)


# -- Segmentation --------------------------------------------------------------------------------

#: Opacity of each label's colour over the image in :func:`draw_segmentation`.
SEGMENT_ALPHA = 0.5


def draw_segmentation(image, labels: np.ndarray, *, alpha: float = SEGMENT_ALPHA, legend: bool = True) -> np.ndarray:
    """``image`` with each object label's colour blended in, its contour drawn, and a legend.

    Args:
        image: ``(H, W, 3) uint8`` RGB (or anything :func:`as_image` takes).
        labels: ``(H, W)`` uint8 labels (0 background, drawn as it is; 255 void, not drawn).
        alpha: opacity of the label colours (:data:`SEGMENT_ALPHA`).
        legend: a swatch and the number of every label present, top-left.

    Colours are the DAVIS palette's (:data:`~dinofeat.io.masks.DAVIS_PALETTE`), as in the mask PNGs.

    >>> out = draw_segmentation(np.zeros((20, 20, 3), np.uint8), np.pad(np.ones((10, 10), np.uint8), 5), legend=False)
    >>> out[10, 10].tolist(), out[0, 0].tolist()
    ([64, 0, 0], [0, 0, 0])
    """
    rgb = np.ascontiguousarray(as_image(image)[..., :3])
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"labels {labels.shape} do not fit the image {rgb.shape[:2]}")
    present = [int(v) for v in np.unique(labels) if 0 < v < 255]
    out = rgb.astype(np.float32)
    for label in present:
        where = labels == label
        out[where] = (1 - alpha) * out[where] + alpha * DAVIS_PALETTE[label]
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    thickness = max(1, round(min(rgb.shape[:2]) / 300))
    for label in present:
        contours, _ = cv2.findContours((labels == label).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        color = tuple(int(c) for c in _bright(DAVIS_PALETTE[label]))
        cv2.drawContours(out, contours, -1, color, thickness, cv2.LINE_AA)
    return _draw_legend(out, present) if legend and present else out


def _bright(color: np.ndarray) -> np.ndarray:
    """A colour scaled up so its brightest channel is 255 (contours stand out on dark palette colours)."""
    peak = int(color.max())
    return color if peak == 0 else np.minimum(255, color.astype(np.int32) * 255 // peak).astype(np.uint8)


def _draw_legend(image: np.ndarray, labels: list[int]) -> np.ndarray:
    """In place on a canvas the caller owns: one row per label (its colour and number) on a dark
    band in the top-left corner."""
    h, w = image.shape[:2]
    scale = max(0.3, min(h, w) / 600)
    thickness = max(1, round(scale * 1.5))
    (_, text_h), base = cv2.getTextSize("0", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    row = text_h + base + 6
    rows = labels[: max(1, (h - 4) // row)]
    band_w = min(
        w, row + max(cv2.getTextSize(str(v), cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] for v in rows) + 10
    )
    band_h = min(h, row * len(rows) + 4)
    image[:band_h, :band_w] = (image[:band_h, :band_w].astype(np.float32) * 0.35).astype(np.uint8)
    for i, label in enumerate(rows):
        top = 2 + i * row
        swatch = tuple(int(c) for c in _bright(DAVIS_PALETTE[label]))
        cv2.rectangle(image, (3, top + 2), (row - 3, top + row - 4), swatch, -1)
        cv2.putText(
            image,
            str(label),
            (row + 2, top + text_h + 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            thickness,
            cv2.LINE_AA,
        )
    return image
