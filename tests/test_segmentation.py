"""Segmentation core: label propagation against a straightforward dense implementation, the exact
mask <-> patch-label geometry, the online segmenter's bounded memory, masks from clicks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinofeat.errors import InputError
from dinofeat.features.featuremap import FeatureMap
from dinofeat.options import SegmentOptions
from dinofeat.segmentation import (
    LABEL_VOID,
    VideoSegmenter,
    mask_from_clicks,
    mask_to_patch_labels,
    otsu_threshold,
    patch_labels_to_mask,
    propagate_labels,
)


def random_map(grid_hw, dim=16, seed=0, *, patch=14, stride=None, image_wh=None) -> FeatureMap:
    h, w = grid_hw
    stride = stride or patch
    processed = ((w - 1) * stride + patch, (h - 1) * stride + patch)
    features = torch.randn(h, w, dim, generator=torch.Generator().manual_seed(seed))
    return FeatureMap(
        features, image_size_wh=image_wh or processed, processed_size_wh=processed, patch_size=patch, stride=stride
    )


def dense_propagation(target, context, labels, top_k, radius, temperature) -> torch.Tensor:
    """The reference's arithmetic written out densely: affinity of every target patch with every
    patch of every context frame, exp(cos / t) times a square neighbourhood mask, the k best over
    all context patches jointly kept, normalised, then labels averaged with those weights."""
    h, w = target.grid_hw
    queries = F.normalize(target.features.reshape(-1, target.dim).double(), dim=-1)  # (P, C)
    keys = torch.cat([F.normalize(c.features.reshape(-1, c.dim).double(), dim=-1) for c in context])  # (nP, C)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    near = ((rows[:, None] - rows[None]).abs() <= radius) & ((cols[:, None] - cols[None]).abs() <= radius)
    near = near.repeat(1, len(context))  # (P, nP)
    affinity = torch.exp(queries @ keys.T / temperature) * near
    kth = affinity.topk(top_k, dim=1).values[:, -1:]
    affinity = torch.where(affinity >= kth, affinity, 0.0)
    affinity = affinity / affinity.sum(dim=1, keepdim=True)
    stacked = torch.cat([lab.reshape(-1, lab.shape[-1]).double() for lab in labels])  # (nP, L)
    return (affinity @ stacked).reshape(h, w, -1).float()


def random_labels(grid_hw, num_labels, seed) -> torch.Tensor:
    """Soft labels of a random mask with void: some rows one-hot, some mixed, some all zero."""
    gen = torch.Generator().manual_seed(seed)
    soft = torch.rand(*grid_hw, num_labels, generator=gen)
    soft = soft / soft.sum(-1, keepdim=True)
    hard = F.one_hot(torch.randint(num_labels, grid_hw, generator=gen), num_labels).float()
    pick = torch.rand(*grid_hw, 1, generator=gen)
    return torch.where(pick < 0.5, hard, torch.where(pick < 0.9, soft, 0.0))  # 10 % void patches


@pytest.mark.parametrize(
    ("grid_hw", "num_labels", "count", "top_k", "radius"),
    [
        ((5, 7), 2, 1, 1, 1),
        ((9, 6), 3, 3, 5, 2),
        ((12, 15), 5, 4, 5, 3),
        ((20, 11), 4, 8, 7, 12),
        ((3, 30), 6, 2, 20, 0),  # radius 0: fewer candidates (2) than k
    ],
)
def test_propagation_matches_the_dense_reference(grid_hw, num_labels, count, top_k, radius):
    target = random_map(grid_hw, seed=100)
    context = [random_map(grid_hw, seed=s) for s in range(count)]
    labels = [random_labels(grid_hw, num_labels, seed=10 + s) for s in range(count)]
    ours = propagate_labels(target, context, labels, top_k=top_k, radius=radius, temperature=0.1)
    reference = dense_propagation(target, context, labels, top_k, radius, 0.1)
    assert ours.shape == (*grid_hw, num_labels)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("tile", [1, 3, 8, 64])
def test_propagation_does_not_depend_on_the_tile(tile):
    target = random_map((10, 13), seed=5)
    context = [random_map((10, 13), seed=s) for s in range(3)]
    labels = [random_labels((10, 13), 3, seed=s) for s in range(3)]
    expected = propagate_labels(target, context, labels, radius=4, tile=10)
    torch.testing.assert_close(propagate_labels(target, context, labels, radius=4, tile=tile), expected)


def test_propagation_without_neighbourhood_takes_every_context_patch():
    target = random_map((7, 9), seed=3)
    context = [random_map((7, 9), seed=s) for s in range(3)]
    labels = [random_labels((7, 9), 4, seed=s) for s in range(3)]
    reference = dense_propagation(target, context, labels, 5, 100, 0.1)
    torch.testing.assert_close(propagate_labels(target, context, labels, radius=None), reference, atol=1e-5, rtol=1e-4)


def test_propagation_without_neighbourhood_accepts_other_grids():
    """Photos of other sizes: the first image's patches are candidates for every patch of another."""
    first = random_map((4, 6), seed=0)
    labels = random_labels((4, 6), 3, seed=1)
    target = FeatureMap(first.features[1:3, 2:5], (42, 28), (42, 28))  # a crop of the first: its own labels
    soft = propagate_labels(target, [first], [labels], radius=None, top_k=1)
    torch.testing.assert_close(soft, labels[1:3, 2:5])


def test_rescaled_reading_stretches_each_label_over_the_image():
    """The reference's norm_mask: a label whose values are all small still wins where it peaks."""
    fmap = random_map((1, 3))
    soft = torch.tensor([[[0.9, 0.1], [0.8, 0.3], [0.9, 0.1]]])
    plain, _ = patch_labels_to_mask(soft, fmap)
    stretched, confidence = patch_labels_to_mask(soft, fmap, rescale=True)
    assert (plain == 0).all()
    assert stretched[0, 21] == 1 and stretched[0, 0] == 0 and confidence[0, 21] == pytest.approx(0.3, abs=0.01)


def test_propagation_refuses_context_on_another_grid():
    target = random_map((4, 4))
    with pytest.raises(InputError, match="grid"):
        propagate_labels(target, [random_map((4, 5))], [torch.zeros(4, 5, 2)])
    with pytest.raises(InputError, match="one label map per context frame"):
        propagate_labels(target, [target], [])


# ---------------------------------------------------------------------------------------------
# Mask <-> patch labels


@pytest.mark.parametrize("grid_hw", [(3, 5), (4, 2)])  # non-square images
@pytest.mark.parametrize("axis", [0, 1])
def test_whole_patch_bands_are_one_hot_and_come_back_exactly(grid_hw, axis):
    """Labels in bands of whole patch rows (or columns): one-hot patches, and every pixel back."""
    h, w = grid_hw
    bands = torch.randint(4, (h if axis == 0 else w,), generator=torch.Generator().manual_seed(1))
    patch_labels = bands[:, None].expand(h, w) if axis == 0 else bands[None, :].expand(h, w)
    mask = patch_labels.numpy().repeat(14, axis=0).repeat(14, axis=1).astype(np.uint8)
    fmap = random_map(grid_hw)
    soft = mask_to_patch_labels(mask, fmap, 4)
    assert torch.equal(soft, F.one_hot(patch_labels, 4).float())
    labels, confidence = patch_labels_to_mask(soft, fmap)
    assert np.array_equal(labels, mask)
    assert labels.shape == (14 * h, 14 * w) and confidence.min() > 0.5 and confidence.max() == 1.0


def test_whole_patch_blocks_are_one_hot_and_come_back_but_at_corners():
    """Any labels per whole patch: one-hot patches; read back bilinearly, every pixel whose own
    patch weighs more than 1/2 keeps its label (only pixels near a corner where three other
    labels meet can lose it, as with the reference's bilinear upsampling)."""
    patch_labels = torch.randint(4, (3, 5), generator=torch.Generator().manual_seed(1))
    mask = patch_labels.numpy().repeat(14, axis=0).repeat(14, axis=1).astype(np.uint8)
    fmap = random_map((3, 5))
    soft = mask_to_patch_labels(mask, fmap, 4)
    assert torch.equal(soft, F.one_hot(patch_labels, 4).float())
    labels, _ = patch_labels_to_mask(soft, fmap)
    offset = np.abs(np.arange(14) - 6.5) / 14  # distance to the patch centre, in patches
    own = (1 - offset)[:, None] * (1 - offset)[None, :]  # the own patch's bilinear weight
    sure = np.tile(own > 0.5, (3, 5))
    assert np.array_equal(labels[sure], mask[sure]) and sure.mean() > 0.6


def test_half_covered_patch_gives_one_half():
    fmap = random_map((2, 3))
    mask = np.zeros((28, 42), dtype=np.uint8)
    mask[:, 14:21] = 1  # the left half of patch column 1
    mask[14:21, 28:42] = 2  # the top half of patch (1, 2)
    soft = mask_to_patch_labels(mask, fmap, 3)
    assert soft[0, 1].tolist() == [0.5, 0.5, 0.0] and soft[1, 1].tolist() == [0.5, 0.5, 0.0]
    assert soft[1, 2].tolist() == [0.5, 0.0, 0.5] and soft[0, 2].tolist() == [1.0, 0.0, 0.0]


def test_void_pixels_are_left_out_and_all_void_patches_are_zero():
    fmap = random_map((2, 2))
    mask = np.zeros((28, 28), dtype=np.uint8)
    mask[:14, :14] = LABEL_VOID  # patch (0, 0) all void
    mask[:14, 14:21] = LABEL_VOID  # half of patch (0, 1) void, the rest label 1
    mask[:14, 21:28] = 1
    soft = mask_to_patch_labels(mask, fmap, 2)
    assert soft[0, 0].tolist() == [0.0, 0.0]
    assert soft[0, 1].tolist() == [0.0, 1.0]
    assert soft[1, 0].tolist() == [1.0, 0.0]


def test_overlapping_patches_stride_7_patch_16_share_their_pixels_exactly():
    """Stride 7, patch 16, an image resized by a non-integer factor: shares against a count of the
    original pixels each patch covers, done pixel by pixel with fractions."""
    fmap = random_map((3, 4), patch=16, stride=7, image_wh=(30, 23))  # processed 37 x 30
    gen = np.random.default_rng(0)
    mask = gen.integers(0, 3, size=(23, 30)).astype(np.uint8)
    soft = mask_to_patch_labels(mask, fmap, 3)
    (pw, ph), (w, h) = fmap.processed_size_wh, fmap.image_size_wh
    for i in range(3):
        for j in range(4):
            # the patch in original pixel edges, and each pixel's overlap with it
            x0, x1 = j * 7 * w / pw, (j * 7 + 16) * w / pw
            y0, y1 = i * 7 * h / ph, (i * 7 + 16) * h / ph
            ox = np.clip(np.minimum(x1, np.arange(w) + 1) - np.maximum(x0, np.arange(w)), 0, None)
            oy = np.clip(np.minimum(y1, np.arange(h) + 1) - np.maximum(y0, np.arange(h)), 0, None)
            area = oy[:, None] * ox[None, :]
            expected = [area[mask == label].sum() / area.sum() for label in range(3)]
            np.testing.assert_allclose(soft[i, j].numpy(), expected, atol=1e-6)


def test_mask_reads_soft_labels_like_featuremap_upsample():
    fmap = random_map((4, 6), patch=16, stride=7, image_wh=(50, 31))
    soft = torch.rand(4, 6, 3, generator=torch.Generator().manual_seed(3))
    labels, confidence = patch_labels_to_mask(soft, fmap)
    dense = FeatureMap(soft, fmap.image_size_wh, fmap.processed_size_wh, 16, 7).upsample()
    assert np.array_equal(labels, dense.argmax(-1).numpy())
    np.testing.assert_allclose(confidence, dense.max(-1).values.numpy(), atol=1e-6)


def test_bad_masks_are_refused():
    fmap = random_map((2, 2))
    with pytest.raises(InputError, match="is 27x28 pixels, the image 28x28"):
        mask_to_patch_labels(np.zeros((28, 27), dtype=np.uint8), fmap, 2)
    with pytest.raises(InputError, match="label 300"):
        mask_to_patch_labels(np.full((28, 28), 300, dtype=np.uint16), fmap, 2)
    with pytest.raises(InputError, match="label 3"):
        mask_to_patch_labels(np.full((28, 28), 3, dtype=np.uint8), fmap, 2)
    assert mask_to_patch_labels(np.full((28, 28), LABEL_VOID, dtype=np.uint16), fmap, 2).sum() == 0


# ---------------------------------------------------------------------------------------------
# Online segmenter


def test_video_segmenter_holds_first_and_last_frames_only():
    grid = (6, 7)
    first = random_map(grid, seed=0)
    segmenter = VideoSegmenter(first, random_labels(grid, 3, 0), SegmentOptions(context_frames=3))
    lengths = []
    for t in range(1, 12):
        segmenter.step(random_map(grid, seed=t))
        lengths.append(segmenter.context_length)
    assert lengths == [2, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4]


def test_video_segmenter_step_is_propagation_from_first_and_recent_frames():
    grid = (5, 8)
    maps = [random_map(grid, seed=s) for s in range(5)]
    first_labels = random_labels(grid, 3, 7)
    options = SegmentOptions(context_frames=2, top_k=3, radius=2, temperature=0.2)
    segmenter = VideoSegmenter(maps[0], first_labels, options)
    found = [first_labels] + [segmenter.step(m) for m in maps[1:]]
    expected = propagate_labels(
        maps[4],
        [maps[0], maps[2], maps[3]],
        [first_labels, found[2], found[3]],
        top_k=3,
        radius=2,
        temperature=0.2,
    )
    torch.testing.assert_close(found[4], expected)


def test_video_segmenter_refuses_a_frame_on_another_grid():
    segmenter = VideoSegmenter(random_map((4, 4)), torch.zeros(4, 4, 2))
    with pytest.raises(InputError, match="differs from the first frame"):
        segmenter.step(random_map((4, 5)))


# ---------------------------------------------------------------------------------------------
# Clicks


def two_region_map() -> FeatureMap:
    """Features of a square object (label 1 region: rows 2-4, cols 3-6) on a background, with noise."""
    gen = torch.Generator().manual_seed(0)
    base = torch.zeros(8, 10, 16)
    base[..., 0] = 1.0
    base[2:5, 3:7, 0] = 0.0
    base[2:5, 3:7, 1] = 1.0
    return FeatureMap(base + 0.05 * torch.randn(8, 10, 16, generator=gen), (140, 112), (140, 112))


def test_click_gives_the_clicked_object():
    fmap = two_region_map()
    labels = mask_from_clicks(fmap, {1: [[70.0, 50.0]]}).argmax(-1)
    expected = torch.zeros(8, 10, dtype=torch.long)
    expected[2:5, 3:7] = 1
    assert torch.equal(labels, expected)


def test_every_click_is_inside_its_mask_and_negatives_outside():
    fmap = two_region_map()
    positives = {1: [[70.0, 50.0]], 2: [[5.0, 100.0], [130.0, 3.0]]}
    negatives = [[20.0, 20.0]]
    mask, _ = patch_labels_to_mask(mask_from_clicks(fmap, positives, negatives), fmap)
    for label, points in positives.items():
        for x, y in points:
            assert mask[round(y), round(x)] == label
    assert mask[20, 20] == 0


def test_clicks_outside_the_image_are_refused():
    fmap = two_region_map()
    with pytest.raises(InputError, match="outside the image"):
        mask_from_clicks(fmap, {1: [[140.0, 5.0]]})
    with pytest.raises(InputError, match="negative point 0"):
        mask_from_clicks(fmap, {1: [[10.0, 5.0]]}, [[-3.0, 5.0]])
    with pytest.raises(InputError, match="not an object label"):
        mask_from_clicks(fmap, {255: [[10.0, 5.0]]})


def test_otsu_threshold_splits_two_groups():
    values = torch.tensor([0.1, 0.12, 0.11, 0.13, 0.7, 0.72, 0.71])
    assert 0.13 < otsu_threshold(values) < 0.7
    assert otsu_threshold(torch.tensor([0.4, 0.4])) == pytest.approx(0.4)
