"""DAVIS metrics: J and F on masks computed by hand, statistics on known series, empty masks both
ways, and agreement with a pixel-by-pixel implementation written here from the definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dinofeat.eval.davis_metrics import (
    ObjectScore,
    boundary_f_measure,
    boundary_map,
    boundary_tolerance,
    disk,
    mean_scores,
    region_similarity,
    score_sequence,
    statistics,
)


def _top_rows(rows: int, size: int = 10) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[:rows] = True
    return mask


# -- J ------------------------------------------------------------------------------------------
def test_region_similarity_of_overlapping_bands_is_intersection_over_union():
    truth = np.zeros((6, 8), bool)
    truth[0:3] = True  # 24 pixels
    predicted = np.zeros((6, 8), bool)
    predicted[2:5] = True  # 24 pixels, 8 shared
    assert float(region_similarity(truth, predicted)) == pytest.approx(8 / 40)


def test_region_similarity_is_per_frame_over_a_stack():
    truth = np.stack([_top_rows(5), _top_rows(5)])
    predicted = np.stack([_top_rows(5), _top_rows(10)])
    np.testing.assert_allclose(region_similarity(truth, predicted), [1.0, 0.5])


def test_region_similarity_of_two_empty_masks_is_one():
    empty = np.zeros((4, 5), bool)
    assert float(region_similarity(empty, empty)) == 1.0


def test_region_similarity_with_one_empty_mask_is_zero_both_ways():
    empty, full = np.zeros((4, 5), bool), np.ones((4, 5), bool)
    assert float(region_similarity(empty, full)) == 0.0
    assert float(region_similarity(full, empty)) == 0.0


def test_region_similarity_leaves_void_pixels_out_of_both_counts():
    truth, predicted = _top_rows(5), _top_rows(6)  # 50 and 60 pixels
    void = np.zeros((10, 10), bool)
    void[5] = True  # the one row where they differ
    assert float(region_similarity(truth, predicted)) == pytest.approx(50 / 60)
    assert float(region_similarity(truth, predicted, void)) == 1.0


# -- boundaries and F ---------------------------------------------------------------------------
def test_boundary_map_of_a_square_is_a_ring_offset_towards_the_origin():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    edges = boundary_map(mask)
    assert edges.sum() == 40  # perimeter of a 10 x 10 square
    assert edges[4, 4:15].all() and edges[4:15, 4].all()  # outside, above and left
    assert edges[14, 5:15].all() and edges[5:15, 14].all()  # inside, bottom and right
    assert not edges[15].any() and not edges[:, 15].any()


def test_boundary_map_of_a_full_mask_is_empty():
    assert not boundary_map(np.ones((7, 9), bool)).any()


def test_boundary_tolerance_is_a_fraction_of_the_diagonal_rounded_up():
    assert boundary_tolerance((480, 854)) == 8  # 0.008 * 979.6 = 7.8
    assert boundary_tolerance((10, 10)) == 1
    assert boundary_tolerance((10, 10), 3) == 3  # 1 or more: pixels


def test_disk_is_the_set_within_the_radius():
    element = disk(2)
    assert element.shape == (5, 5)
    assert element.sum() == 13  # 1 + 4 + 4 + 4 points with x^2 + y^2 <= 4
    assert element[0, 2] == 1 and element[0, 1] == 0


def test_f_measure_by_hand_a_far_island_costs_precision_only():
    # truth: rows 0-4 of 10 x 10, boundary row 4 (10 pixels); prediction: the same plus a one-pixel
    # island at (8, 2), whose boundary adds 4 pixels 3 rows from the truth's, beyond the 1 px tolerance
    truth = _top_rows(5)
    predicted = truth.copy()
    predicted[8, 2] = True
    assert boundary_map(predicted).sum() == 14
    precision, recall = 10 / 14, 1.0
    expected = 2 * precision * recall / (precision + recall)
    assert expected == pytest.approx(5 / 6)
    assert float(boundary_f_measure(truth, predicted)) == pytest.approx(expected)
    assert float(region_similarity(truth, predicted)) == pytest.approx(50 / 51)


def test_f_measure_by_hand_a_shifted_edge_matches_only_within_the_tolerance():
    truth, predicted = _top_rows(5), _top_rows(7)  # horizontal edges two rows apart
    assert float(boundary_f_measure(truth, predicted)) == 0.0  # tolerance 1 px on a 10 x 10 image
    assert float(boundary_f_measure(truth, predicted, bound_th=2)) == 1.0


def test_f_measure_of_two_empty_masks_is_one():
    empty = np.zeros((12, 12), bool)
    assert float(boundary_f_measure(empty, empty)) == 1.0


def test_f_measure_with_one_empty_mask_is_zero_both_ways():
    empty, square = np.zeros((12, 12), bool), np.zeros((12, 12), bool)
    square[3:8, 3:8] = True
    assert float(boundary_f_measure(empty, square)) == 0.0
    assert float(boundary_f_measure(square, empty)) == 0.0


def test_f_measure_clears_void_pixels_before_taking_boundaries():
    truth = _top_rows(5)
    predicted = truth.copy()
    predicted[8, 2] = True
    void = np.zeros((10, 10), bool)
    void[8, 2] = True
    assert float(boundary_f_measure(truth, predicted, void)) == 1.0


# -- against a pixel-by-pixel implementation ----------------------------------------------------
def _boundary_by_pixel(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                continue
            neighbours = []
            if x + 1 < w:
                neighbours.append(mask[y, x + 1])
            if y + 1 < h:
                neighbours.append(mask[y + 1, x])
            if x + 1 < w and y + 1 < h:
                neighbours.append(mask[y + 1, x + 1])
            out[y, x] = any(n != mask[y, x] for n in neighbours)
    return out


def _f_by_pixel(truth: np.ndarray, predicted: np.ndarray) -> float:
    radius = math.ceil(0.008 * math.hypot(*truth.shape))
    gt, fg = _boundary_by_pixel(truth), _boundary_by_pixel(predicted)
    gt_points, fg_points = np.argwhere(gt), np.argwhere(fg)
    if len(gt_points) == 0 or len(fg_points) == 0:
        return 1.0 if len(gt_points) == len(fg_points) else 0.0

    def matched(points, others):
        return sum(any(((p - q) ** 2).sum() <= radius**2 for q in others) for p in points)

    precision = matched(fg_points, gt_points) / len(fg_points)
    recall = matched(gt_points, fg_points) / len(gt_points)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _random_blob(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = rng.uniform(2, h / 2), rng.uniform(2, w / 2)
    blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return blob ^ (rng.random((h, w)) < 0.03)


@pytest.mark.parametrize("seed", range(4))
def test_boundary_and_f_agree_with_a_pixel_by_pixel_implementation(seed):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(12, 60, 2))  # diagonals up to 85 px: tolerances 1 and 2 px
    truth, predicted = _random_blob(rng, h, w), _random_blob(rng, h, w)
    np.testing.assert_array_equal(boundary_map(truth), _boundary_by_pixel(truth))
    assert float(boundary_f_measure(truth, predicted)) == pytest.approx(_f_by_pixel(truth, predicted))
    union = (truth | predicted).sum()
    assert float(region_similarity(truth, predicted)) == pytest.approx((truth & predicted).sum() / union)


# -- statistics ---------------------------------------------------------------------------------
def test_statistics_of_a_known_series():
    # 8 frames: bins are frames 0-2, 2-4, 4-5, 5-7 (round(linspace(1, 8, 5)) - 1 = 0, 2, 4, 5, 7)
    series = [1.0, 1.0, 1.0, 0.5, 0.5, 0.0, 0.0, 0.3]
    stats = statistics(series)
    assert stats.mean == pytest.approx(4.3 / 8)
    assert stats.recall == pytest.approx(3 / 8)  # 0.5 is not above 0.5
    assert stats.decay == pytest.approx(1.0 - 0.1)


def test_statistics_of_a_constant_series_have_no_decay():
    stats = statistics([0.7] * 13)
    assert (stats.mean, stats.recall, stats.decay) == (pytest.approx(0.7), 1.0, pytest.approx(0.0))


def test_statistics_of_an_improving_series_have_negative_decay():
    assert statistics(np.linspace(0, 1, 20)).decay < 0


def test_statistics_of_no_frames_are_nan_and_json_null():
    stats = statistics([])
    assert math.isnan(stats.mean)
    assert stats.to_json() == {"mean": None, "recall": None, "decay": None}


# -- sequences and means ------------------------------------------------------------------------
def test_score_sequence_scores_objects_of_the_first_frame_on_the_inner_frames():
    truth = np.zeros((4, 10, 10), np.uint8)
    truth[:, :5] = 1
    truth[:, 7:, 7:] = 2
    predicted = truth.copy()
    predicted[0] = 0  # the first frame is not scored
    predicted[3] = 0  # nor the last
    predicted[2, :5] = 0  # object 1 lost on frame 2
    predicted[1, 0, 0] = 3  # a label the annotation lacks is no object
    scores = score_sequence(truth, predicted)
    assert len(scores) == 2
    np.testing.assert_allclose(scores[0].j_frames, [49 / 50, 0.0])
    np.testing.assert_allclose(scores[1].j_frames, [1.0, 1.0])
    np.testing.assert_allclose(scores[1].f_frames, [1.0, 1.0])


def test_score_sequence_reads_void_as_background_unless_asked_to_exclude_it():
    truth = np.zeros((3, 10, 10), np.uint8)
    truth[:, :5] = 1
    truth[:, 5] = 255
    predicted = truth.copy()
    predicted[:, 5] = 1  # the void row predicted as the object
    assert score_sequence(truth, predicted)[0].j_frames[0] == pytest.approx(50 / 60)
    assert score_sequence(truth, predicted, exclude_void=True)[0].j_frames[0] == 1.0


def test_score_sequence_counts_an_object_missing_from_later_frames_as_empty():
    truth = np.zeros((3, 8, 8), np.uint8)
    truth[0, 2:4, 2:4] = 1  # object 1 only in the first frame
    scores = score_sequence(truth, np.zeros_like(truth))
    assert scores[0].j_frames.tolist() == [1.0] and scores[0].f_frames.tolist() == [1.0]


def test_mean_scores_average_objects_and_jf_is_the_mean_of_j_and_f():
    a = ObjectScore(j_frames=np.array([1.0, 1.0]), f_frames=np.array([0.5, 0.5]))
    b = ObjectScore(j_frames=np.array([0.0, 0.0]), f_frames=np.array([0.5, 0.5]))
    mean = mean_scores([a, b])
    assert mean.j.mean == 0.5 and mean.f.mean == 0.5 and mean.jf == 0.5
    assert mean.j.recall == 0.5
    document = mean.to_json()
    assert set(document) == {"J&F", "J", "F"} and set(document["J"]) == {"mean", "recall", "decay"}
