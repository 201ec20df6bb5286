"""PCA of features: fitting, signs, foreground, colours, joint fits, files, videos (dinofeat.pca)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import random_vit
from dinofeat.colorize import colorize_video, fit_video
from dinofeat.drawing import draw_pca_grid, draw_pca_overlay, draw_pca_side_by_side
from dinofeat.errors import InputError
from dinofeat.features.extractor import Extractor
from dinofeat.pca import (
    MIN_FOREGROUND_PATCHES,
    FeaturePCA,
    PCABasis,
    fit_pca,
    foreground_sign,
    otsu_threshold,
    robust_range,
    to_rgb,
)

H, W = 140, 196  # a 10 x 14 patch grid at resolution 140


def _extractor(layerscale: float = 0.1) -> Extractor:
    # Random weights with small LayerScale: each block adds only a little to the residual stream,
    # so the output tokens stay close to the patch embedding of their own pixels -- content-
    # dominated features, like a trained model's for this purpose (depth 2 keeps it fast).
    return Extractor(
        random_vit("dinov2_vits14", depth=2, seed=0, layerscale=layerscale),
        device="cpu",
        precision="fp32",
        resolution=H,
    )


def _disc_images() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A disc (not patch-aligned) and two images: textured disc on plain grey, and the reverse."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    disc = (xx - 90) ** 2 + (yy - 72) ** 2 < 45**2
    texture = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    textured_object = np.where(disc[..., None], texture, np.uint8(180))
    plain_object = np.where(disc[..., None], np.uint8(180), texture)
    return disc, textured_object, plain_object


def _patch_truth(mask: np.ndarray) -> np.ndarray:
    """Patches more than half covered by ``mask`` (image size = processed size here)."""
    return mask.reshape(H // 14, 14, W // 14, 14).mean(axis=(1, 3)) > 0.5


@pytest.fixture(scope="module")
def scene():
    disc, textured, plain = _disc_images()
    extractor = _extractor()
    return disc, textured, plain, extractor, extractor.extract_arrays([textured, plain])


# -- functional core ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_otsu_matches_scikit_image(seed):
    skimage_filters = pytest.importorskip("skimage.filters")
    rng = np.random.default_rng(seed)
    values = np.r_[rng.normal(0, 1, 200 + 50 * seed), rng.normal(4 + seed, 2, 300)]
    assert otsu_threshold(values) == pytest.approx(skimage_filters.threshold_otsu(values), abs=1e-12)


def test_fit_pca_is_the_svd_with_data_defined_signs():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 12, generator=gen, dtype=torch.float64) * torch.linspace(3, 0.5, 12, dtype=torch.float64)
    x[:20, 0] += 8  # a small distinct cluster: skews the first component
    basis = fit_pca(x, 4)
    _, s, vh = np.linalg.svd((x - x.mean(0)).numpy(), full_matrices=False)
    np.testing.assert_allclose(np.abs(basis.components.numpy()), np.abs(vh[:4]), atol=1e-5)
    np.testing.assert_allclose(basis.explained_variance.numpy(), s[:4] ** 2 / 299, rtol=1e-5)
    skew = (basis.transform(x.float()) ** 3).mean(0)
    assert (skew > 0).all()  # every component points to its long tail
    # the rule depends on the data, not on row order or the SVD's arbitrary signs
    perm = torch.randperm(300, generator=gen)
    assert torch.equal(fit_pca(x[perm], 4).components.sign(), basis.components.sign())
    np.testing.assert_allclose(fit_pca(-x, 4).components.numpy(), -basis.components.numpy(), atol=1e-6)


def test_fit_pca_wide_and_tall_inputs_agree():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 64, generator=gen)
    wide = fit_pca(x, 3)  # 40 < 64: SVD of the transpose
    tall = fit_pca(torch.cat([x, x]), 3)  # same directions from the tall path
    np.testing.assert_allclose(wide.components.numpy(), tall.components.numpy(), atol=1e-5)


def test_fit_pca_rejects_bad_requests():
    with pytest.raises(InputError, match="at least 1"):
        fit_pca(torch.randn(10, 4), 0)
    with pytest.raises(InputError, match="cannot fit 5 components"):
        fit_pca(torch.randn(3, 4), 5)
    with pytest.raises(InputError, match="NaN"):
        fit_pca(torch.full((5, 4), float("nan")), 1)


def test_to_rgb_scales_each_channel_by_its_own_percentiles():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(1000, 3, generator=gen) * torch.tensor([100.0, 1.0, 0.01])
    low, high = robust_range(values, (1, 99))
    rgb = to_rgb(values, low, high)
    # a global min-max would leave the small channels a flat grey; per channel each spans 0..255
    for channel in range(3):
        assert rgb[:, channel].min() == 0 and rgb[:, channel].max() == 255
        assert 100 < np.median(rgb[:, channel]) < 155
    assert (to_rgb(values, low, high, mask=torch.zeros(1000, dtype=torch.bool)) == 0).all()


def test_border_rule():
    border = torch.tensor([True] * 6 + [False] * 4)
    centre_high = torch.tensor([False] * 6 + [True] * 4)
    assert foreground_sign(centre_high, border) == 1.0
    assert foreground_sign(~centre_high, border) == -1.0
    # a big object (the larger side) that also fills the centre is still the foreground
    big = torch.tensor([True, True, True, False, False, False] + [True] * 4)
    assert foreground_sign(big, border) == 1.0
    # no interior information: the smaller side
    assert foreground_sign(torch.tensor([True, False, False]), torch.ones(3, dtype=torch.bool)) == 1.0


# -- foreground ----------------------------------------------------------------------------------
def test_foreground_separates_object_from_plain_background(scene):
    """>= 95 % of patches right, and the border rule makes the disc (not the background) foreground."""
    disc, _, _, _, (textured_map, plain_map) = scene
    truth = _patch_truth(disc)
    for fmap in (textured_map, plain_map):  # textured disc on grey, and grey disc on texture
        pca = FeaturePCA.fit(fmap)
        mask = pca.foreground_mask(fmap.features).numpy()
        assert (mask == truth).mean() >= 0.95
        colors = pca.colorize(fmap)
        assert (colors.mask == disc).mean() >= 0.95  # pixel-level, bilinear score
        assert (colors.rgb[~colors.mask] == 0).all()


def test_foreground_threshold_options(scene):
    _, _, _, _, (fmap, _) = scene
    otsu = FeaturePCA.fit(fmap)
    assert otsu.foreground.method == "otsu" and 0 < otsu.foreground.threshold < 1
    low = FeaturePCA.fit(fmap, foreground=0.0)  # above the low percentile: nearly every patch
    assert low.foreground.method == "user" and low.foreground_mask(fmap.features).float().mean() >= 0.95
    for outside in (-10.0, 1.5):  # the scaled score spans 0..1: other thresholds make no sense
        with pytest.raises(InputError, match="between 0 and 1"):
            FeaturePCA.fit(fmap, foreground=outside)
    none = FeaturePCA.fit(fmap, foreground=None)
    assert none.foreground is None and none.colorize(fmap).mask.all()
    with pytest.raises(InputError, match="threshold"):
        FeaturePCA.fit(fmap, foreground="kmeans")
    with pytest.raises(InputError, match="percentiles"):
        FeaturePCA.fit(fmap, percentiles=(90, 10))


def test_empty_foreground_falls_back_to_all_patches(scene, caplog):
    _, _, _, _, (fmap, _) = scene
    pca = FeaturePCA.fit(fmap, foreground=1.0)  # above the high percentile: a few patches at most
    assert "fitting the colours on all patches" in caplog.text
    assert pca.foreground_mask(fmap.features).sum() < MIN_FOREGROUND_PATCHES


# -- joint fits, determinism, files ----------------------------------------------------------------
def test_joint_pca_same_image_twice_gets_identical_colours(scene):
    _, textured, _plain, extractor, (textured_map, plain_map) = scene
    again = extractor.extract(textured)  # a separate extraction of the same pixels
    pca = FeaturePCA.fit([textured_map, plain_map, again])
    first, second = pca.colorize(textured_map), pca.colorize(again)
    np.testing.assert_array_equal(first.rgb, second.rgb)
    np.testing.assert_array_equal(first.mask, second.mask)
    assert first.rgb.shape == (H, W, 3) and first.mask.any()


def test_same_output_on_every_run(scene):
    _, textured, plain, _, _ = scene
    runs = []
    for _ in range(2):
        extractor = _extractor()  # fresh model and features each time
        maps = extractor.extract_arrays([textured, plain])
        pca = FeaturePCA.fit(maps)
        runs.append([pca.colorize(m).rgb for m in maps] + [pca.basis.components.numpy()])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_save_load_reproduces_colours_exactly(scene, tmp_path):
    _, _, _, _, (textured_map, plain_map) = scene
    for foreground in ("otsu", None):
        pca = FeaturePCA.fit(
            [textured_map], n_components=5, foreground=foreground, metadata={"model": "m", "layers": "-1"}
        )
        path = tmp_path / f"pca_{foreground}.npz"
        pca.save(path)
        loaded = FeaturePCA.load(path)
        assert loaded.n_components == 5 and loaded.metadata == {"model": "m", "layers": "-1"}
        assert (loaded.foreground is None) == (foreground is None)
        for fmap in (textured_map, plain_map):  # also an image it was not fitted on
            for nearest in (False, True):
                a, b = pca.colorize(fmap, nearest=nearest), loaded.colorize(fmap, nearest=nearest)
                np.testing.assert_array_equal(a.rgb, b.rgb)
                np.testing.assert_array_equal(a.mask, b.mask)
        torch.testing.assert_close(
            loaded.transform(textured_map.features), pca.transform(textured_map.features), rtol=0, atol=0
        )


def test_load_rejects_unreadable_files(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(InputError, match="cannot read PCA file"):
        FeaturePCA.load(garbage)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(InputError, match="not a dinofeat PCA file"):
        FeaturePCA.load(other)
    broken = tmp_path / "broken.npz"
    np.savez(broken, format=np.asarray("dinofeat-pca"), version=np.asarray(1), mean=np.zeros(4))
    with pytest.raises(InputError, match="damaged"):
        FeaturePCA.load(broken)
    with pytest.raises(InputError, match="not found"):
        FeaturePCA.load(tmp_path / "missing.npz")


def test_transform_checks_the_feature_size():
    basis = PCABasis(torch.zeros(4), torch.eye(4)[:3], torch.ones(3))
    with pytest.raises(InputError, match="fitted on 4"):
        basis.transform(torch.zeros(2, 5))
    with pytest.raises(InputError, match="different sizes"):
        FeaturePCA.fit([torch.zeros(3, 3, 4), torch.zeros(3, 3, 5)])


def test_reduce_keeps_the_geometry(scene):
    _, _, _, _, (fmap, _) = scene
    pca = FeaturePCA.fit(fmap, n_components=6)
    reduced = pca.reduce(fmap)
    assert reduced.features.shape == (*fmap.grid_hw, 6)
    assert reduced.image_size_wh == fmap.image_size_wh and reduced.upsample().shape == (H, W, 6)


# -- drawing -------------------------------------------------------------------------------------
def test_pca_drawings():
    image = np.full((20, 30, 3), 100, np.uint8)
    colors = np.full((20, 30, 3), 200, np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[:, :10] = True
    side = draw_pca_side_by_side(image, colors)
    assert side.shape == (20, 60, 3) and (side[:, 30:] == 200).all()
    rgba = draw_pca_side_by_side(image, np.dstack([colors, mask * 255]).astype(np.uint8))
    assert rgba.shape == (20, 60, 4) and (rgba[:, :30, 3] == 255).all() and (rgba[:, 40:, 3] == 0).all()
    over = draw_pca_overlay(image, colors, 0.25, mask)
    assert (over[:, :10] == 125).all() and (over[:, 10:] == 100).all()
    grid = draw_pca_grid([side, side[:10, :30]], gap=4)
    assert grid.shape == (10, 30 + 4 + 30, 3)  # the 20-pixel-high panel is halved
    assert image.max() == 100 and colors.min() == 200  # inputs untouched


# -- video ---------------------------------------------------------------------------------------
def test_static_video_gets_identical_colours_in_every_frame(scene, tmp_path):
    from dinofeat.io.video import VideoWriter

    _, textured, _, extractor, _ = scene
    path = tmp_path / "static.mp4"
    with VideoWriter(path, fps=10, size_wh=(W, H)) as sink:
        for _ in range(5):
            sink.write(textured)
    pca = fit_video(extractor, path, sample_frames=2)
    frames = list(colorize_video(extractor, pca, path, batch_frames=2))
    assert [index for index, _, _ in frames] == list(range(5))
    for _, frame, colors in frames[1:]:
        np.testing.assert_array_equal(colors.rgb, frames[0][2].rgb)
        assert frame.shape == (H, W, 3)
    assert frames[0][2].mask.any() and not frames[0][2].mask.all()
