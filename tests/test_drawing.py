"""dinofeat.drawing: pure functions (inputs untouched), sizes, colours, trails."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from dinofeat.drawing import (
    TrailAnnotator,
    draw_heatmap,
    draw_matches,
    draw_points,
    draw_tracks,
    match_canvas_layout,
    palette,
    score_colors,
)


def _image(h=60, w=80, value=90):
    return np.full((h, w, 3), value, np.uint8)


def test_palette_is_deterministic_and_distinct():
    colours = palette(12)
    assert colours.shape == (12, 3) and colours.dtype == np.uint8
    np.testing.assert_array_equal(colours, palette(12))
    assert len({tuple(c) for c in colours}) == 12


def test_score_colours_run_from_blue_to_red():
    low, high = score_colors([0.0, 1.0])
    assert low[2] > low[0] and high[0] > high[2]  # TURBO: blue end, red end


def test_draw_points_marks_each_point_in_its_colour_and_keeps_the_input():
    image = _image()
    out = draw_points(image, [[10.0, 10.0], [60.0, 40.0]])
    assert (image == 90).all() and out.shape == image.shape
    for (x, y), colour in zip([(10, 10), (60, 40)], palette(2)):
        assert np.abs(out[y, x].astype(int) - colour).max() <= 8


@pytest.mark.parametrize("layout", ["horizontal", "vertical"])
def test_draw_matches_layouts(layout):
    a, b = _image(60, 80), _image(30, 50, 200)
    m = SimpleNamespace(source_xy=np.array([[10.0, 10.0]]), target_xy=np.array([[20.0, 20.0]]), scores=np.ones(1))
    picture = draw_matches(a, b, m, layout=layout)
    height, gap, scale_a, scale_b, offset_b = match_canvas_layout((80, 60), (50, 30))
    if layout == "horizontal":
        assert picture.shape == (height, offset_b + round(50 * scale_b), 3)
    else:
        assert picture.shape == (2 * height + gap, max(round(80 * scale_a), round(50 * scale_b)), 3)
    assert (a == 90).all() and (b == 200).all()


def test_many_matches_are_drawn_thin_and_semi_transparent():
    from dinofeat.drawing import MANY_MATCHES, MANY_MATCHES_ALPHA

    a, b = _image(400, 160, 0), _image(400, 160, 0)
    n = MANY_MATCHES + 20
    rows = 10.0 + 6 * np.arange(n)  # one horizontal line per match
    source, target = np.stack([np.full(n, 130.0), rows], 1), np.stack([np.full(n, 10.0), rows], 1)
    picture = draw_matches(a, b, SimpleNamespace(source_xy=source, target_xy=target, scores=np.ones(n)))
    lit = picture[:, 144:147].max(axis=(1, 2))  # inside A (black), between the dots and the gap
    assert 0 < lit.max() <= MANY_MATCHES_ALPHA * 255 + 1  # blended over the background, not opaque
    assert (lit > 0).sum() <= 3 * n  # thin: one pixel wide, anti-aliased over at most three rows


def test_draw_heatmap_marks_the_point_and_keeps_the_size():
    image = _image()
    heat = np.linspace(0, 1, 60 * 80).reshape(60, 80)
    out = draw_heatmap(image, heat, point_xy=(40.0, 30.0))
    assert out.shape == image.shape and (image == 90).all()
    assert not np.array_equal(out[30, 5], out[30, 75])  # low and high heat differ
    with pytest.raises(ValueError):
        draw_heatmap(image, heat[:10])


def test_trails_fade_with_age_and_hidden_points_are_not_drawn():
    frame = _image(40, 120, 0)
    trail_xy = np.array([[[10.0, 20.0]], [[50.0, 20.0]], [[90.0, 20.0]]])
    out = draw_tracks(frame, trail_xy, np.ones((3, 1), bool), thickness=2, radius=3)
    old, recent = out[20, 25].astype(int).sum(), out[20, 75].astype(int).sum()
    assert 0 < old < recent  # the older segment is fainter
    hidden = draw_tracks(frame, trail_xy, np.array([[True], [True], [False]]))
    assert not hidden[20, 90].any()  # not drawn where not visible now
    assert (frame == 0).all()


def test_trail_annotator_keeps_the_last_positions_only():
    annotator = TrailAnnotator(1, length=1)
    frame = _image(40, 120, 0)
    for x in (10.0, 50.0, 90.0):
        out = annotator.annotate(frame, [[x, 20.0]], [True])
    assert out[20, 70].any() and not out[20, 30].any()  # the 50 -> 90 segment, not the 10 -> 50 one
    with pytest.raises(ValueError):
        TrailAnnotator(1, length=-1)


def test_segmentation_overlay_blends_outlines_and_labels_each_object():
    from dinofeat.drawing import draw_segmentation
    from dinofeat.io.masks import DAVIS_PALETTE

    image = np.full((120, 160, 3), 200, np.uint8)
    labels = np.zeros((120, 160), np.uint8)
    labels[40:100, 60:120] = 1
    labels[10:30, 130:150] = 2
    labels[100:110, 10:20] = 255  # void: not drawn
    out = draw_segmentation(image, labels)
    inside = out[70, 90].astype(int)
    assert np.abs(inside - (0.5 * 200 + 0.5 * DAVIS_PALETTE[1])).max() <= 1  # blended
    assert not np.array_equal(out[40, 90], out[70, 90])  # the contour differs from the fill
    assert np.array_equal(out[105, 15], image[105, 15]) and np.array_equal(out[60, 30], image[60, 30])
    assert out[:12, :12].mean() < 150  # the legend's dark band, top-left
    assert np.array_equal(image, np.full((120, 160, 3), 200, np.uint8))  # the input is untouched
