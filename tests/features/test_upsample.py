"""Upsampled feature maps (features/upsample.py): their geometry, and the Upsampler around AnyUp."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import random_vit
from dinofeat.errors import InputError
from dinofeat.features.extractor import Extractor
from dinofeat.features.featuremap import FeatureMap
from dinofeat.features.upsample import Upsampler, upsampled_grid_hw
from dinofeat.models.anyup import AnyUp
from dinofeat.search import locate


def patch_map(seed: int = 0, grid_hw=(3, 4), channels: int = 8, image_wh=(100, 70), patch: int = 14) -> FeatureMap:
    gen = torch.Generator().manual_seed(seed)
    h, w = grid_hw
    return FeatureMap(
        torch.randn(h, w, channels, generator=gen),
        image_size_wh=image_wh,
        processed_size_wh=(w * patch, h * patch),
        patch_size=patch,
        stride=patch,
    )


def constant_per_patch(fmap: FeatureMap, scale: int | None) -> FeatureMap:
    """``fmap`` upsampled by repeating each patch's feature over its cells (what a perfectly sharp
    upsampler gives on a picture made of flat patches)."""
    repeat = fmap.patch_size if scale is None else scale
    features = fmap.features.repeat_interleave(repeat, dim=0).repeat_interleave(repeat, dim=1)
    return FeatureMap(
        features,
        image_size_wh=fmap.image_size_wh,
        processed_size_wh=fmap.processed_size_wh,
        patch_size=fmap.patch_size,
        stride=fmap.stride,
        cell_size=fmap.patch_size / repeat,
    )


@pytest.mark.parametrize("scale", [None, 2, 4, 7])
@pytest.mark.parametrize("patch", [14, 16])
def test_a_map_constant_per_patch_samples_like_the_patch_map_at_patch_centres(scale, patch):
    coarse = patch_map(patch=patch)
    fine = constant_per_patch(coarse, scale)
    centres = coarse.patch_centers().reshape(-1, 2)
    assert torch.allclose(fine.sample(centres), coarse.features.reshape(-1, coarse.dim), atol=1e-6)
    assert torch.allclose(fine.sample(centres), coarse.sample(centres), atol=1e-6)
    # a patch centre sits in the middle of its block of cells
    per_patch = patch if scale is None else scale
    expected = torch.arange(coarse.grid_hw[1]).double() * per_patch + (per_patch - 1) / 2
    assert torch.allclose(fine.pixel_to_grid(coarse.patch_centers().double())[0, :, 0], expected)


@pytest.mark.parametrize("scale", [None, 2, 4])
def test_grid_and_pixels_round_trip_on_an_upsampled_map(scale):
    fine = constant_per_patch(patch_map(), scale)
    points = torch.tensor([[0.0, 0.0], [99.0, 69.0], [37.25, 12.5]], dtype=torch.float64)
    assert torch.allclose(fine.grid_to_pixel(fine.pixel_to_grid(points)), points)
    # cell (0, 0)'s centre is (c - 1) / 2 processed pixels from the top-left corner
    c = fine.cell_size
    expected_x = ((c - 1) / 2 + 0.5) / fine.scale_xy[0] - 0.5
    assert fine.grid_to_pixel(np.zeros((1, 2)))[0, 0] == pytest.approx(expected_x)


def test_the_exact_search_finds_a_feature_of_an_upsampled_map():
    fine = constant_per_patch(patch_map(seed=5, channels=16), 2)  # cells of 7 pixels
    gen = torch.Generator().manual_seed(1)
    fine = FeatureMap(
        fine.features + 0.3 * torch.randn(fine.features.shape, generator=gen),
        image_size_wh=fine.image_size_wh,
        processed_size_wh=fine.processed_size_wh,
        cell_size=fine.cell_size,
    )
    target = fine.grid_to_pixel(torch.tensor([[3.0, 2.0]], dtype=torch.float64)).float()
    query = fine.sample(target, normalize=True)
    found = locate(query, fine)
    assert torch.allclose(found.points_xy, target, atol=1e-3)
    assert float(found.scores[0]) == pytest.approx(1.0, abs=1e-5)


@pytest.fixture(scope="module")
def small_upsampler() -> Upsampler:
    torch.manual_seed(0)
    return Upsampler(AnyUp(dim=16, heads=2), device="cpu", precision="fp32")


@pytest.mark.parametrize(("scale", "grid_hw", "cell"), [(None, (42, 56), 1.0), (2, (6, 8), 7.0), (4, (12, 16), 3.5)])
def test_upsampled_map_sizes_and_cells(small_upsampler, scale, grid_hw, cell):
    coarse = patch_map(grid_hw=(3, 4))
    image = np.random.default_rng(0).integers(0, 255, (70, 100, 3), dtype=np.uint8)
    fine = small_upsampler.upsample(coarse, image, scale=scale)
    assert fine.grid_hw == grid_hw and fine.cell_size == cell and fine.dim == coarse.dim
    assert fine.features.dtype == torch.float32
    assert (fine.image_size_wh, fine.processed_size_wh) == (coarse.image_size_wh, coarse.processed_size_wh)


def test_a_constant_map_stays_constant(small_upsampler):
    coarse = patch_map()
    flat = FeatureMap(
        coarse.features[:1, :1].expand_as(coarse.features).clone(),
        image_size_wh=coarse.image_size_wh,
        processed_size_wh=coarse.processed_size_wh,
    )
    image = np.random.default_rng(1).integers(0, 255, (70, 100, 3), dtype=np.uint8)
    fine = small_upsampler.upsample(flat, image)
    assert torch.allclose(fine.features, flat.features[0, 0].expand_as(fine.features), atol=1e-5)


def test_overlapping_patches_and_a_wrong_image_are_refused(small_upsampler):
    coarse = patch_map()
    overlapping = FeatureMap(
        coarse.features, image_size_wh=(100, 70), processed_size_wh=(56, 42), patch_size=14, stride=7
    )
    with pytest.raises(InputError, match="stride=7"):
        upsampled_grid_hw(overlapping)
    with pytest.raises(InputError, match="the image is 10x10"):
        small_upsampler.upsample(coarse, np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(InputError, match="already upsampled"):
        upsampled_grid_hw(constant_per_patch(coarse, 2))


def test_wrapped_source_upsamples_what_the_extractor_gives(small_upsampler, photo):
    extractor = Extractor(random_vit("dinov2_vits14", depth=1), resolution=56, device="cpu", precision="fp32")
    source = small_upsampler.wrap(extractor, scale=2)
    (fine,) = source.extract_arrays([photo])
    coarse = extractor.extract(photo)
    assert fine.grid_hw == (coarse.grid_hw[0] * 2, coarse.grid_hw[1] * 2)
    assert source.options == extractor.options and source.stride == extractor.stride


@pytest.mark.parametrize("scale", [None, 2])
def test_upsampling_the_features_as_values_reproduces_upsample(small_upsampler, scale):
    coarse = patch_map(seed=3)
    image = np.random.default_rng(2).integers(0, 255, (70, 100, 3), dtype=np.uint8)
    fine = small_upsampler.upsample(coarse, image, scale=scale)
    mixed = small_upsampler.upsample_values(coarse, image, coarse.features.clone(), scale=scale)
    assert mixed.grid_hw == fine.grid_hw and mixed.cell_size == fine.cell_size
    assert torch.equal(mixed.features, fine.features)


def test_values_are_mixed_with_the_features_attention(small_upsampler):
    coarse = patch_map(seed=4)
    image = np.random.default_rng(3).integers(0, 255, (70, 100, 3), dtype=np.uint8)
    fine = small_upsampler.upsample(coarse, image, scale=2)
    # the first two channels as values: the same weights give the same two channels
    mixed = small_upsampler.upsample_values(coarse, image, coarse.features[..., :2].clone(), scale=2)
    assert mixed.dim == 2
    assert torch.allclose(mixed.features, fine.features[..., :2], atol=1e-5)


def test_one_hot_labels_constant_over_the_image_stay_constant_and_sum_to_one(small_upsampler):
    coarse = patch_map(seed=5)
    image = np.random.default_rng(4).integers(0, 255, (70, 100, 3), dtype=np.uint8)
    constant = torch.zeros(3, 4, 3)
    constant[..., 1] = 1.0
    fine = small_upsampler.upsample_values(coarse, image, constant)
    assert fine.grid_hw == (42, 56)
    assert torch.allclose(fine.features, constant[0, 0].expand_as(fine.features), atol=1e-6)
    halves = torch.zeros(3, 4, 2)
    halves[:, :2, 0], halves[:, 2:, 1] = 1.0, 1.0  # left half label 0, right half label 1
    split = small_upsampler.upsample_values(coarse, image, halves).features
    assert torch.allclose(split.sum(-1), torch.ones(42, 56), atol=1e-5)
    assert (split[:, :10, 0] > 0.999).all() and (split[:, -10:, 1] > 0.999).all()  # far from the edge: pure


def test_values_off_the_grid_are_refused(small_upsampler):
    coarse = patch_map()
    with pytest.raises(InputError, match="the grid is 3x4"):
        small_upsampler.upsample_values(coarse, np.zeros((70, 100, 3), np.uint8), torch.zeros(4, 3, 2))
