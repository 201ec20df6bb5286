"""The pixel <-> grid geometry against ground truth."""

import numpy as np
import pytest
import torch

from conftest import random_vit
from dinofeat.features.extractor import Extractor
from dinofeat.features.featuremap import FeatureMap
from dinofeat.io.images import processed_size, resize

SIZES = [(42, 28), (451, 300), (300, 451), (640, 480), (100, 1000), (97, 61)]


#: DINOv2's and DINOv3's patch sizes: every geometry test runs for both.
PATCHES = [14, 16]


def _fmap(size_wh, resolution=224, stride=None, channels=2, patch=14):
    stride = stride or patch
    processed = processed_size(size_wh, resolution, patch_size=patch, stride=stride, max_size=None)
    gh, gw = (processed[1] - patch) // stride + 1, (processed[0] - patch) // stride + 1
    v, u = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32), indexing="ij")
    features = torch.stack([u, v] + [u * 0] * (channels - 2), dim=-1)  # feature = its own grid position
    return FeatureMap(features, image_size_wh=size_wh, processed_size_wh=processed, patch_size=patch, stride=stride)


@pytest.mark.parametrize("patch", PATCHES)
@pytest.mark.parametrize("size_wh", SIZES)
@pytest.mark.parametrize("resolution", [112, 224, 448])
@pytest.mark.parametrize("overlap", [1, 2])
def test_patch_centres_round_trip(size_wh, resolution, overlap, patch):
    fmap = _fmap(size_wh, resolution, patch // overlap, patch=patch)
    centres = fmap.patch_centers().double()
    h, w = fmap.grid_hw
    back = fmap.pixel_to_grid(centres)
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    assert torch.allclose(back, torch.stack((u, v), -1), atol=1e-5)  # centres come back as float32
    rng = np.random.default_rng(0)
    points = rng.uniform(-0.5, min(size_wh) - 0.5, (50, 2))
    assert np.allclose(fmap.grid_to_pixel(fmap.pixel_to_grid(points)), points, atol=1e-9)


@pytest.mark.parametrize("patch", PATCHES)
def test_no_resize_patch_centres_are_pixel_centres_of_each_patch(patch):
    fmap = _fmap((3 * patch, 2 * patch), resolution=2 * patch, patch=patch)
    assert fmap.processed_size_wh == (3 * patch, 2 * patch)
    # patch (row 1, column 2) covers columns 2p .. 3p-1 and rows p .. 2p-1: its centre is their middle
    assert fmap.patch_centers()[1, 2].tolist() == [2 * patch + (patch - 1) / 2, patch + (patch - 1) / 2]
    assert fmap.pixel_to_grid(np.array([[-0.5, -0.5]])).tolist() == [[-0.5, -0.5]]  # image corner = patch corner


@pytest.mark.parametrize("patch", PATCHES)
@pytest.mark.parametrize("size_wh", [(451, 300), (300, 451), (97, 61), (1000, 999)])
def test_patch_centres_land_on_the_resized_pixels(size_wh, patch):
    """Ground truth from the actual resizer: a dot at a patch centre's original pixel position ends
    up, after resizing, at that patch's centre in the model's pixels, for three patches from the
    second to the second-last (at the outer patches the resizer's own border handling shifts a
    dot; their centres are checked without resizing in the test above)."""
    fmap = _fmap(size_wh, resolution=224, patch=patch)
    pw, ph = fmap.processed_size_wh
    h, w = fmap.grid_hw
    sigma = max(2.5 / min(fmap.scale_xy), 1.0)  # 2.5 processed pixels, at least one original pixel
    for i, j in [(1, 1), (3, 5), (h - 2, w - 2)]:
        x, y = fmap.patch_centers()[i, j].tolist()
        yy, xx = np.mgrid[0 : size_wh[1], 0 : size_wh[0]]
        blob = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
        image = np.repeat((blob * 255).round().astype(np.uint8)[..., None], 3, axis=2)
        small = resize(image, (pw, ph))[..., 0].astype(np.float64)
        small = np.where(small > 0.3 * small.max(), small, 0)
        sy, sx = np.mgrid[0:ph, 0:pw]
        centroid = np.array([(sx * small).sum(), (sy * small).sum()]) / small.sum()
        expected = np.array([j * patch + (patch - 1) / 2, i * patch + (patch - 1) / 2])
        assert np.abs(centroid - expected).max() < 0.25, (i, j, centroid, expected)


@pytest.mark.parametrize("patch", PATCHES)
def test_bilinear_sampling_is_exact_on_linear_features(patch):
    fmap = _fmap((451, 300), patch=patch)
    rng = np.random.default_rng(1)
    points = rng.uniform(40, 260, (100, 2))
    sampled = fmap.sample(points)
    assert torch.allclose(sampled, fmap.pixel_to_grid(torch.tensor(points)).float(), atol=1e-4)
    assert torch.allclose(fmap.sample(fmap.patch_centers().reshape(-1, 2)), fmap.features.reshape(-1, 2), atol=1e-4)


@pytest.mark.parametrize("patch", PATCHES)
def test_upsample_matches_sample_at_every_pixel(patch):
    fmap = _fmap((97, 61), resolution=56, patch=patch)
    dense = fmap.upsample()
    assert dense.shape == (61, 97, 2)
    yy, xx = np.mgrid[0:61, 0:97]
    points = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float64)
    assert torch.allclose(dense.reshape(-1, 2), fmap.sample(points), atol=1e-5)


def test_upsample_nearest_picks_the_patch_pixel_to_grid_gives():
    gen = torch.Generator().manual_seed(0)
    fmap = FeatureMap(torch.randn(5, 7, 3, generator=gen), image_size_wh=(151, 103), processed_size_wh=(98, 70))
    nearest = fmap.upsample(nearest=True)
    ys, xs = np.mgrid[0:103:7, 0:151:9]
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    grid = np.clip(np.rint(fmap.pixel_to_grid(pts)), 0, [6, 4]).astype(int)
    assert torch.equal(nearest[ys.ravel(), xs.ravel()], fmap.features[grid[:, 1], grid[:, 0]])
    assert fmap.upsample((40, 20)).shape == (20, 40, 3)


@pytest.mark.parametrize("patch", PATCHES)
def test_contains(patch):
    fmap = _fmap((3 * patch, 2 * patch), resolution=2 * patch, patch=patch)
    w, h = 3 * patch, 2 * patch
    inside = fmap.contains([[-0.5, 0], [w - 0.5, h - 0.5], [w - 0.4, 0], [0, np.nan], [10, -1]])
    assert inside.tolist() == [True, True, False, False, False]


@pytest.mark.parametrize("shift", [(1, 0), (0, 2), (3, 1)])
def test_whole_patch_shift_shifts_features_exactly(shift, photo):
    """With the positional embedding zeroed the ViT is permutation-equivariant over patches, so a
    circular shift of the image by whole patches must permute the features exactly."""
    vit = random_vit("dinov2_vits14", depth=2, seed=3)
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    state["pos_embed"].zero_()
    shiftless = type(vit)(vit.spec, depth=2)
    shiftless.load_state_dict(state)
    image = np.ascontiguousarray(photo[:224, :280])
    extractor = Extractor(shiftless, device="cpu", precision="fp32", resolution=224)
    dx, dy = shift
    rolled = np.roll(image, (dy * 14, dx * 14), axis=(0, 1))
    a, b = extractor.extract_arrays([image, rolled])
    assert a.processed_size_wh == a.image_size_wh == (280, 224)
    expected = torch.roll(a.features, (dy, dx), dims=(0, 1))
    assert torch.allclose(b.features, expected, atol=1e-4)
    # and the geometry agrees: a pixel and its shifted twin sample the same feature
    points = np.array([[30.0, 40.0], [100.5, 77.25], [150.0, 20.0]])
    twins = points + np.array([dx * 14, dy * 14])
    assert torch.allclose(a.sample(points), b.sample(twins), atol=1e-4)
