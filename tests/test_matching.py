"""Matching (dinofeat.matching): exact sub-pixel search, identity and whole-patch shifts, real
photo pairs with ground truth against the naive baseline, checks, PCA space, drawing.

About the models: these tests use random weights (no downloads). Identical pixels still give
identical features, so identity and whole-patch shifts are exact tests. Random-weight features
are not semantic, though: they hash local appearance, so they are ambiguous in flat regions
(sky, walls: features differ by ~1e-4 over several pixels) and periodic textures. The exact tests
therefore use a strongly textured photo (scikit-image's "gravel"), and on real photo pairs we
compare our answer with the naive baseline on the same queries instead of asking for accuracy
that only trained weights give.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import random_vit, smooth_vit
from dinofeat.drawing import draw_heatmap, draw_matches, match_canvas_layout
from dinofeat.errors import InputError
from dinofeat.features.extractor import Extractor
from dinofeat.features.featuremap import FeatureMap
from dinofeat.io.images import load_image
from dinofeat.matching import Matches, joint_pca, match, match_features
from dinofeat.points import auto_points, check_points, grid_points, mutual_nearest_patches
from dinofeat.search import SUBDIVISIONS, similarity

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _extractor(resolution: int) -> Extractor:
    # depth 2 keeps it fast; small LayerScale makes features depend mostly on each patch's own
    # pixels (the positional embedding is a small perturbation), as for the whole-patch shifts
    return Extractor(
        random_vit("dinov2_vits14", depth=2, seed=0, layerscale=1e-5),
        device="cpu",
        precision="fp32",
        resolution=resolution,
    )


@pytest.fixture(scope="module")
def gravel() -> np.ndarray:
    """Strongly textured photo, (512, 512, 3) uint8 (scikit-image 'gravel', grey as RGB)."""
    from skimage import data

    return np.repeat(data.gravel()[..., None], 3, axis=2)


def naive_match(fa: FeatureMap, fb: FeatureMap, points_xy: torch.Tensor) -> torch.Tensor:
    """The baseline (seed's script): feature of the containing patch, cosine with every patch of B,
    argmax, centre of that patch (image-B pixels)."""
    grid = fa.pixel_to_grid(torch.as_tensor(points_xy).double()).round().long()
    h, w = fa.grid_hw
    grid[:, 0].clamp_(0, w - 1)
    grid[:, 1].clamp_(0, h - 1)
    best = similarity(fa.features[grid[:, 1], grid[:, 0]], fb).flatten(1).argmax(dim=1)
    wb = fb.grid_hw[1]
    return fb.grid_to_pixel(torch.stack((best % wb, best // wb), dim=-1).double()).float()


def _between_centres(fmap: FeatureMap, points_xy) -> torch.Tensor:
    """Points between the outer patch centres (outside, features are clamped, so any position in
    the border band is as good as another)."""
    g = fmap.pixel_to_grid(torch.as_tensor(points_xy).double())
    h, w = fmap.grid_hw
    return (g[:, 0] >= 0) & (g[:, 0] <= w - 1) & (g[:, 1] >= 0) & (g[:, 1] <= h - 1)


def _brute_force_cosines(fmap: FeatureMap, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine of every query at every processed pixel between the outer patch centres, through
    FeatureMap.sample (the reference): (positions (P, 2) grid units, cos (N, P))."""
    h, w = fmap.grid_hw
    s = fmap.stride
    xs, ys = torch.arange((w - 1) * s + 1), torch.arange((h - 1) * s + 1)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack((xx, yy), dim=-1).reshape(-1, 2).double() / s
    feats = fmap.normalized().sample(fmap.grid_to_pixel(grid), normalize=True)
    return grid, F.normalize(queries, dim=-1) @ feats.T


# -- exact cases on real photos with a smooth model ------------------------------------------------


def _smooth_extractor(resolution: int) -> Extractor:
    return Extractor(smooth_vit(), device="cpu", precision="fp32", resolution=resolution)


def _lattice_points(fmap: FeatureMap, n: int, seed: int, margin: int = 0) -> torch.Tensor:
    """``n`` random points of the search lattice (every 1/4 processed pixel) between the outer patch
    centres (``margin`` patches in), in original pixels: there the truth is a lattice point too."""
    h, w = fmap.grid_hw
    steps = SUBDIVISIONS * fmap.stride
    gen = torch.Generator().manual_seed(seed)
    k = torch.randint(margin * steps, (w - 1 - margin) * steps + 1, (n,), generator=gen)
    r = torch.randint(margin * steps, (h - 1 - margin) * steps + 1, (n,), generator=gen)
    return fmap.grid_to_pixel(torch.stack((k, r), dim=-1).double() / steps).float()


def _score(fmap: FeatureMap, queries: torch.Tensor, points_xy: torch.Tensor) -> torch.Tensor:
    feats = fmap.normalized().sample(points_xy.double(), normalize=True).double()
    return (F.normalize(queries.double(), dim=-1) * feats).sum(-1)


def _photos() -> list[np.ndarray]:
    """Two real photos cropped to whole patches (fed to the model 1:1)."""
    from skimage import data

    return [data.astronaut()[40:292, 100:436], data.chelsea()[20:272, 40:376]]


@pytest.mark.parametrize("index", [0, 1])
def test_identity_on_real_photos_with_a_smooth_model(index):
    """The smooth model makes similarity surfaces nearly flat; matched to itself, every query comes
    back within 1 px for >= 96 % (PCK@1), and no answer scores below the truth's score."""
    image = _photos()[index]
    fmap = _smooth_extractor(image.shape[0]).extract(image)
    assert fmap.processed_size_wh == fmap.image_size_wh  # 1:1, so lattice points are pixel quarters
    points = _lattice_points(fmap, 200, seed=index)
    queries = fmap.normalized().sample(points, normalize=True)
    m = match_features(fmap, fmap, points)
    error = (m.target_xy - points).norm(dim=1)
    assert (error <= 1.0).float().mean() >= 0.96
    assert (_score(fmap, queries, m.target_xy) >= _score(fmap, queries, points) - 1e-6).all()


@pytest.mark.parametrize("index,shift_xy", [(0, (14, -28)), (1, (-28, 14))])
def test_whole_patch_shift_on_real_photos_with_a_smooth_model(index, shift_xy):
    """B is A moved by whole patches: PCK@1 >= 0.96, and no answer scores below the truth's score."""
    dx, dy = shift_xy
    photo = _photos()[index]
    a = photo[28:-28, 28:-28]
    b = photo[28 - dy : photo.shape[0] - 28 - dy, 28 - dx : photo.shape[1] - 28 - dx]
    fa, fb = _smooth_extractor(a.shape[0]).extract_arrays([a, b])
    points = _lattice_points(fa, 200, seed=10 + index, margin=2)  # the truth stays inside B
    truth = points + torch.tensor([float(dx), float(dy)])
    queries = fa.normalized().sample(points, normalize=True)
    m = match_features(fa, fb, points)
    error = (m.target_xy - truth).norm(dim=1)
    assert (error <= 1.0).float().mean() >= 0.96
    assert (_score(fb, queries, m.target_xy) >= _score(fb, queries, truth) - 1e-6).all()


# -- exact cases on a real photo -----------------------------------------------------------------


@pytest.mark.parametrize("resolution", [112, 210, 336])
def test_identity_is_exact_at_several_resolutions(gravel, resolution):
    """Image matched to itself (downscaled, same size, upscaled for the model): every query
    between the outer patch centres comes back within 1 px, mutual, and never worse than naive."""
    image = gravel[:210, :280]
    fmap = _extractor(resolution).extract(image)
    points = torch.rand(150, 2, generator=torch.Generator().manual_seed(resolution)) * torch.tensor([279.0, 209.0])
    m = match_features(fmap, fmap, points)
    inner = _between_centres(fmap, points)
    error = (m.target_xy - points).norm(dim=1)[inner]
    naive = (naive_match(fmap, fmap, points) - points).norm(dim=1)[inner]
    assert inner.sum() > 100
    assert error.max() <= 1.0
    assert (error <= naive + 0.5).all()
    assert m.mutual[inner].all()


@pytest.mark.parametrize(
    "resolution,size_wh,shift_xy",
    [
        (112, (308, 224), (56, -28)),  # model sees half size: 28 px = one patch
        (168, (168, 252), (14, 28)),
        (336, (224, 168), (-7, 14)),  # model sees double size: 7 px = one patch
    ],
)
def test_whole_patch_shifts_are_exact(gravel, resolution, size_wh, shift_xy):
    """B is A moved by whole patches (of the processed image): every grid query whose answer lies
    between B's outer patch centres is found within 1 px, never worse than the naive answer."""
    (w, h), (dx, dy) = size_wh, shift_xy
    x0 = y0 = 100
    a = gravel[y0 : y0 + h, x0 : x0 + w]
    b = gravel[y0 - dy : y0 - dy + h, x0 - dx : x0 - dx + w]
    fa, fb = _extractor(resolution).extract_arrays([a, b])
    m = match_features(fa, fb, grid=12)
    truth = m.source_xy + torch.tensor([float(dx), float(dy)])
    inner = _between_centres(fb, truth) & _between_centres(fa, m.source_xy)
    error = (m.target_xy - truth).norm(dim=1)[inner]
    naive = (naive_match(fa, fb, m.source_xy) - truth).norm(dim=1)[inner]
    assert inner.sum() >= 50
    assert error.max() <= 1.0
    assert (error <= naive + 0.5).all()


def test_ransac_recovers_the_shift_and_marks_inliers(gravel):
    a, b = gravel[100:268, 100:324], gravel[72:240, 86:310]  # B = A moved by (14, 28)
    fa, fb = _extractor(168).extract_arrays([a, b])
    m = match_features(fa, fb, grid=10, ransac="homography")
    assert m.geometry is not None and m.geometry.kind == "homography"
    expected = np.array([[1, 0, 14], [0, 1, 28], [0, 0, 1]], dtype=float)
    np.testing.assert_allclose(m.geometry.matrix / m.geometry.matrix[2, 2], expected, atol=0.05 * 14)
    truth = m.source_xy + torch.tensor([14.0, 28.0])
    good = (m.target_xy - truth).norm(dim=1) < 2
    assert m.inlier[good].float().mean() > 0.9 and (m.keep == m.inlier).all()
    f = match_features(fa, fb, grid=10, ransac="fundamental")
    assert f.geometry is not None and f.geometry.matrix.shape == (3, 3)


@pytest.mark.parametrize(
    "patch, image_wh, processed_wh, processed_px",
    [(16, (448, 352), (224, 176), 8.0), (14, (448, 336), (224, 168), 7.0), (14, (224, 168), (224, 168), 7.0)],
    ids=["dinov3 at half size", "dinov2 at half size", "dinov2 1:1"],
)
def test_the_default_ransac_threshold_is_half_a_patch_of_the_model(
    monkeypatch, patch, image_wh, processed_wh, processed_px
):
    """--ransac-threshold is in image-B pixels; its default is half the model's patch in processed
    pixels (8 for DINOv3's 16-pixel patches, 7 for DINOv2's 14), converted to B's pixels."""
    import dinofeat.matching

    grid_hw = ((processed_wh[1] - patch) // patch + 1, (processed_wh[0] - patch) // patch + 1)
    features = torch.randn(*grid_hw, 8, generator=torch.Generator().manual_seed(0))
    fmap = FeatureMap(features, image_size_wh=image_wh, processed_size_wh=processed_wh, patch_size=patch, stride=patch)
    seen = []
    monkeypatch.setattr(dinofeat.matching, "verify", lambda matches, kind, threshold: seen.append(threshold) or matches)
    match_features(fmap, fmap, grid=3, ransac="homography")
    match_features(fmap, fmap, grid=3, ransac="homography", ransac_threshold=3.5)
    scale = processed_wh[0] / image_wh[0]
    assert seen[0] * scale == pytest.approx(processed_px)  # in processed pixels
    assert seen[0] == pytest.approx(processed_px / scale)  # what RANSAC gets: image-B pixels
    assert seen[1] == 3.5  # given: taken as it is, in image-B pixels


# -- real photo pairs with ground truth ----------------------------------------------------------


def _compare_with_naive(errors: np.ndarray, naive: np.ndarray, patch_px: float) -> None:
    """Aggregate claims that hold with random weights (see the module docstring): at least as many
    answers within one patch and within 3 px, and on the queries where the naive baseline found the
    right patch, a lower median error. (Per point, random features often disagree with the truth
    by a few pixels either way; only trained weights make a per-point claim meaningful.)"""
    assert np.mean(errors < patch_px) >= np.mean(naive < patch_px)
    assert np.mean(errors < 3) >= np.mean(naive < 3)
    both = naive < patch_px
    assert np.median(errors[both]) < np.median(naive[both])


def test_known_homography_on_a_real_photo():
    """examples/astronaut_warped.jpg is examples/astronaut.jpg warped by a known homography."""
    a, b = load_image(EXAMPLES / "astronaut.jpg"), load_image(EXAMPLES / "astronaut_warped.jpg")
    homography = np.array(json.loads((EXAMPLES / "astronaut_warped.json").read_text())["homography_a_to_b"])
    fa, fb = _extractor(336).extract_arrays([a, b])
    m = match_features(fa, fb, grid=20)
    truth = cv2.perspectiveTransform(m.source_xy.double().numpy()[None], homography)[0]
    inside = (truth[:, 0] >= 0) & (truth[:, 0] < b.shape[1]) & (truth[:, 1] >= 0) & (truth[:, 1] < b.shape[0])
    errors = np.linalg.norm(m.target_xy.numpy() - truth, axis=1)[inside]
    naive = np.linalg.norm(naive_match(fa, fb, m.source_xy).numpy() - truth, axis=1)[inside]
    _compare_with_naive(errors, naive, 14 / fa.scale_xy[0])


def test_rectified_stereo_pair_with_ground_truth_disparity():
    """Middlebury 'motorcycle' from scikit-image: left, right, disparity of the left image (inf where
    unknown); the right-image match of left pixel (x, y) is (x - d, y) (checked photometrically)."""
    from skimage import data

    left, right, disparity = data.stereo_motorcycle()
    left, right, disparity = left[::2, ::2], right[::2, ::2], disparity[::2, ::2] / 2
    fa, fb = _extractor(336).extract_arrays([left, right])
    m = match_features(fa, fb, grid=20)
    src = m.source_xy.numpy()
    pixel = np.round(src).astype(int)
    d = disparity[pixel[:, 1], pixel[:, 0]]
    d = np.where(np.isfinite(d), d, np.nan)
    valid = np.isfinite(d) & (src[:, 0] - np.nan_to_num(d) >= 0)
    truth = src.copy()
    truth[:, 0] -= np.nan_to_num(d)
    errors = np.linalg.norm(m.target_xy.numpy() - truth, axis=1)[valid]
    naive = np.linalg.norm(naive_match(fa, fb, m.source_xy).numpy() - truth, axis=1)[valid]
    _compare_with_naive(errors, naive, 14 / fa.scale_xy[0])


# -- query points, checks, PCA -------------------------------------------------------------------


def test_mutual_nearest_patches_matches_brute_force():
    torch.manual_seed(2)
    fa = FeatureMap(torch.randn(4, 5, 8), image_size_wh=(70, 56), processed_size_wh=(70, 56))
    fb = FeatureMap(torch.randn(3, 6, 8), image_size_wh=(84, 42), processed_size_wh=(84, 42))
    sim = similarity(fa.features.reshape(-1, 8), fb).reshape(20, 18)
    expected = [(i, j) for i, j in enumerate(sim.argmax(1).tolist()) if sim[:, j].argmax() == i]
    ia, ib, score = mutual_nearest_patches(fa, fb, chunk_size=3)
    assert list(zip(ia.tolist(), ib.tolist())) == expected
    torch.testing.assert_close(score, sim[ia, ib])


def test_auto_points_are_distinctive_spread_and_ranked(gravel):
    fmap = _extractor(168).extract(gravel[:210, :280])
    points = auto_points(fmap, fmap, 12)
    assert points.shape == (12, 2)
    assert torch.from_numpy(fmap.contains(points)).all()
    gaps = torch.cdist(points, points) + torch.eye(12) * 1e9
    assert gaps.min() > 30  # spread over a 280 x 210 image, not clustered
    m = match_features(fmap, fmap, auto=12)
    centres = fmap.patch_centers().reshape(-1, 2)
    assert len(m) == 12 and torch.cdist(m.source_xy, centres).min(dim=1).values.max() < 1e-3  # patch centres
    assert m.mutual.all() and (m.scores[:-1] >= m.scores[1:] - 1e-4).all()
    assert len(match_features(fmap, fmap)) == 20  # the default


def test_grid_points_and_point_checks():
    pts = grid_points((280, 210), 3)
    assert pts.shape == (9, 2) and pts[0].tolist() == pytest.approx([46.1667, 34.5], abs=1e-3)
    for bad, words in (
        ([[300.0, 10.0]], "outside"),
        ([[float("nan"), 1.0]], "finite"),
        ([[1.0, 2.0, 3.0]], "pairs"),
        ([], "no query"),
        ([["a", "b"]], "number"),
    ):
        with pytest.raises(InputError, match=words):
            check_points(bad, (280, 210))
    fmap = FeatureMap(torch.randn(2, 2, 4), image_size_wh=(28, 28), processed_size_wh=(28, 28))
    with pytest.raises(InputError, match="one way"):
        match_features(fmap, fmap, [[1.0, 1.0]], grid=2)
    with pytest.raises(InputError, match="geometry"):
        match_features(fmap, fmap, grid=2, ransac="affine")


def test_ratio_test_and_mutual_flags(gravel):
    fa = _extractor(168).extract(gravel[:168, :224])
    flat = np.full((168, 224, 3), 128, np.uint8)
    fb = _extractor(168).extract(np.concatenate([gravel[:168, :112], flat[:, :112]], axis=1))
    m = match_features(fa, fb, grid=6, max_ratio=0.8, require_mutual=True)
    assert torch.isfinite(m.ratio).all() and (m.ratio >= 0).all()
    assert (m.keep == (m.mutual & (m.ratio < 0.8))).all()
    same = match_features(fa, fa, grid=6, max_ratio=0.8)
    assert (same.ratio < 0.05).all() and same.keep.all()  # exact matches: distance ~0
    assert torch.isnan(match_features(fa, fa, grid=2).ratio).all()  # not asked: not computed


def test_pca_space_matching(gravel):
    fa, fb = _extractor(168).extract_arrays([gravel[:168, :224], gravel[28:196, 14:238]])
    pa, pb = joint_pca(fa, fb, 8)
    assert pa.features.shape == (*fa.grid_hw, 8) and pb.features.shape == (*fb.grid_hw, 8)
    m = match_features(fa, fa, grid=8, pca_dim=24)
    inner = _between_centres(fa, m.source_xy)
    assert (m.target_xy - m.source_xy)[inner].norm(dim=1).max() <= 1.0
    with pytest.raises(InputError, match="pca"):
        joint_pca(fa, fb, 0)


def test_match_on_images_and_matches_helpers(gravel):
    image = gravel[:112, :140]
    m = match(image, image, [[40.0, 50.0], [100.0, 60.0]], extractor=_extractor(112))
    assert isinstance(m, Matches) and len(m) == 2
    assert m.image_size_a_wh == (140, 112) and m.image_size_b_wh == (140, 112)
    arrays = m.numpy()
    assert set(arrays) == {"source_xy", "target_xy", "scores", "mutual", "ratio", "inlier", "keep"}
    assert arrays["mutual"].dtype == bool and arrays["target_xy"].shape == (2, 2)
    assert len(m.select(torch.tensor([True, False]))) == 1


# -- drawing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size_a,size_b", [((40, 30), (30, 60)), ((3000, 2000), (900, 600)), ((500, 400), (500, 400))])
def test_draw_matches_size_and_purity(size_a, size_b):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (size_a[1], size_a[0], 3), dtype=np.uint8)
    b = rng.integers(0, 255, (size_b[1], size_b[0], 3), dtype=np.uint8)
    before = a.copy(), b.copy()
    src = rng.random((25, 2)) * np.array(size_a)
    dst = rng.random((25, 2)) * np.array(size_b)
    m = SimpleNamespace(source_xy=src, target_xy=dst, scores=rng.random(25))
    height, _gap, _scale_a, scale_b, offset_b = match_canvas_layout(size_a, size_b)
    for color_by in ("index", "score"):
        picture = draw_matches(a, b, m, color_by=color_by)
        assert picture.shape == (height, offset_b + round(size_b[0] * scale_b), 3) and picture.dtype == np.uint8
        assert 360 <= height <= 1440
    np.testing.assert_array_equal(a, before[0])
    np.testing.assert_array_equal(b, before[1])
    only_first = draw_matches(a, b, m, mask=np.arange(25) == 0)
    assert not np.array_equal(only_first, picture)


def test_draw_heatmap_marks_the_point():
    image = np.zeros((50, 80, 3), np.uint8)
    heat = np.linspace(0, 1, 50 * 80).reshape(50, 80)
    out = draw_heatmap(image, heat, point_xy=(40, 25))
    assert out.shape == image.shape and out[25, 40].tolist() == [255, 255, 255]
    with pytest.raises(ValueError):
        draw_heatmap(image, heat[:10])
