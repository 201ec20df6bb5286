"""Correspondences between two images from dense DINO features, with sub-pixel precision.

* :func:`match_features` - query points of feature map A found in feature map B (the exact
  sub-pixel search of :mod:`dinofeat.search`), with mutual (cycle) check, ratio test and RANSAC
  verification, as :class:`Matches`;
* :func:`verify` - the RANSAC check on its own;
* :func:`match` - the same from two images (paths, PIL images or arrays);
* :func:`similarity_image` - one query's similarity over every pixel of B (the heatmap).

The ``dinofeat match`` job (query points, pictures, the JSON document, files written) is
:class:`~dinofeat.jobs.match.MatchJob`.

Query points are chosen by :mod:`dinofeat.points`; options and their defaults are
:class:`~dinofeat.options.MatchOptions`. Coordinates are pixels of the original images.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from dinofeat.display import data_frame, size_text
from dinofeat.errors import InputError, field
from dinofeat.features.extractor import Extractor
from dinofeat.features.featuremap import FeatureMap
from dinofeat.io.images import ImageLike, load_image
from dinofeat.options import DEFAULT_AUTO, RANSAC_THRESHOLD_PATCHES, MatchOptions
from dinofeat.pca import fit_pca
from dinofeat.points import auto_points, check_points, grid_points
from dinofeat.search import locate, similarity

#: RANSAC confidence and iteration cap (OpenCV USAC_MAGSAC).
RANSAC_CONFIDENCE = 0.999
RANSAC_MAX_ITERS = 10_000
_MIN_POINTS = {"homography": 4, "fundamental": 8}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Geometry:
    """A verified two-view model: ``kind`` is ``homography`` (x_b ~ H x_a) or ``fundamental``
    (x_b^T F x_a = 0), ``matrix`` a ``(3, 3)`` float64 array in original-image pixels."""

    kind: str
    matrix: np.ndarray
    threshold_px: float


@dataclass(frozen=True)
class Matches:
    """Correspondences from image A to image B, one per query point, in query order.

    Attributes:
        source_xy: ``(N, 2)`` float32 query positions, image-A pixels.
        target_xy: ``(N, 2)`` float32 matched positions, image-B pixels (sub-pixel).
        scores: ``(N,)`` float32 cosine similarity at the match, in [-1, 1].
        mutual: ``(N,)`` bool, matching ``target_xy`` back into A lands within
            ``mutual_tolerance`` patches of the source (cycle-consistent).
        ratio: ``(N,)`` float32 Lowe ratio ``d_best / d_runner_up`` of feature distances
            (``d = sqrt(2 - 2 cos)``; lower is more distinctive); NaN where not computed.
        inlier: ``(N,)`` bool, consistent with the verified ``geometry`` (all True without one).
        keep: ``(N,)`` bool, passes every check asked for (mutual, ratio, geometry).
        image_size_a_wh, image_size_b_wh: original image sizes.
        geometry: the model found by RANSAC, or None.

    Result objects of dinofeat hold CPU torch tensors (:class:`~dinofeat.tracks.Tracks` too);
    :meth:`numpy` gives numpy arrays.
    """

    source_xy: torch.Tensor
    target_xy: torch.Tensor
    scores: torch.Tensor
    mutual: torch.Tensor
    ratio: torch.Tensor
    inlier: torch.Tensor
    keep: torch.Tensor
    image_size_a_wh: tuple[int, int]
    image_size_b_wh: tuple[int, int]
    geometry: Geometry | None = None

    _FIELDS = ("source_xy", "target_xy", "scores", "mutual", "ratio", "inlier", "keep")

    def __len__(self) -> int:
        return int(self.source_xy.shape[0])

    def numpy(self) -> dict[str, np.ndarray]:
        """The per-match fields as numpy arrays, keyed by field name."""
        return {name: getattr(self, name).detach().cpu().numpy() for name in self._FIELDS}

    def select(self, mask) -> Matches:
        """The matches where ``mask`` ``(N,)`` bool is True (e.g. ``matches.select(matches.keep)``)."""
        mask = torch.as_tensor(mask, dtype=torch.bool, device=self.source_xy.device)
        return replace(self, **{name: getattr(self, name)[mask] for name in self._FIELDS})

    def __repr__(self) -> str:
        """``Matches(12 matches, 9 kept, A 640x480 -> B 500x400, homography: 7 inliers)``."""
        geometry = "" if self.geometry is None else f", {self.geometry.kind}: {int(self.inlier.sum())} inliers"
        return (
            f"Matches({len(self)} matches, {int(self.keep.sum())} kept, A {size_text(self.image_size_a_wh)} -> "
            f"B {size_text(self.image_size_b_wh)}{geometry})"
        )

    def to_dict(self, verified: bool | None = None) -> dict[str, Any]:
        """The matches as ``dinofeat match --json`` writes them, without what the matches do not
        know (model, file names, settings): ``{"image_a": {"size"}, "image_b": {"size"}, "matches":
        [{"source", "target", "score", "mutual", "ratio", "inlier", "kept"}, ...], "geometry"}``.
        Coordinates are pixels rounded to 0.01, scores and ratios to 1e-4; ``ratio`` is None where
        not computed, ``inlier`` None unless ``verified`` (default: a geometry was found)."""
        verified = self.geometry is not None if verified is None else verified
        data = self.numpy()
        rows = []
        for i in range(len(self)):
            ratio = float(data["ratio"][i])
            rows.append(
                {
                    "source": [round(float(v), 2) for v in data["source_xy"][i]],
                    "target": [round(float(v), 2) for v in data["target_xy"][i]],
                    "score": round(float(data["scores"][i]), 4),
                    "mutual": bool(data["mutual"][i]),
                    "ratio": round(ratio, 4) if math.isfinite(ratio) else None,
                    "inlier": bool(data["inlier"][i]) if verified else None,
                    "kept": bool(data["keep"][i]),
                }
            )
        geometry = None
        if self.geometry is not None:
            geometry = {
                "type": self.geometry.kind,
                "matrix": [[float(v) for v in row] for row in self.geometry.matrix],
                "threshold_px": round(self.geometry.threshold_px, 3),
                "inliers": int(self.inlier.sum()),
            }
        return {
            "image_a": {"size": list(self.image_size_a_wh)},
            "image_b": {"size": list(self.image_size_b_wh)},
            "matches": rows,
            "geometry": geometry,
        }

    def to_pandas(self) -> Any:
        """One row per match, in query order: ``source_x, source_y, target_x, target_y`` (pixels),
        ``score, mutual, ratio, inlier, kept`` (full precision). Needs pandas."""
        data = self.numpy()
        return data_frame(
            {
                "source_x": data["source_xy"][:, 0],
                "source_y": data["source_xy"][:, 1],
                "target_x": data["target_xy"][:, 0],
                "target_y": data["target_xy"][:, 1],
                "score": data["scores"],
                "mutual": data["mutual"],
                "ratio": data["ratio"],
                "inlier": data["inlier"],
                "kept": data["keep"],
            }
        )


def joint_pca(fa: FeatureMap, fb: FeatureMap, dim: int) -> tuple[FeatureMap, FeatureMap]:
    """Both maps projected on the ``dim`` principal components of their features taken together.

    Features are L2-normalised first (cosine geometry), then one PCA (:func:`dinofeat.pca.fit_pca`)
    is fitted on both maps' patches jointly, so the two projections share one basis.
    """
    c = fa.dim
    if not 1 <= dim <= c:
        raise InputError(f"{field('pca_dim')} must be between 1 and the feature size {c}, got {dim}")
    a = F.normalize(fa.features.float(), dim=-1).reshape(-1, c)
    b = F.normalize(fb.features.float(), dim=-1).reshape(-1, c).to(a.device)
    basis = fit_pca(torch.cat((a, b)), dim)
    project = lambda f, m: replace(m, features=basis.transform(f).reshape(*m.grid_hw, dim))
    return project(a, fa), project(b, fb)


def match_features(
    fa: FeatureMap, fb: FeatureMap, points_xy=None, options: MatchOptions | None = None, **overrides
) -> Matches:
    """Match query points of feature map ``fa`` (image A) into ``fb`` (image B).

    Query points are ``points_xy`` ``(N, 2)`` image-A pixels, or ``options.grid`` x ``grid`` regular
    grid points, or ``options.auto`` distinctive well-spread points
    (:func:`~dinofeat.points.auto_points`); with none of them, ``auto=DEFAULT_AUTO``. Each query
    feature is sampled bilinearly at its exact position and found in B by
    :func:`~dinofeat.search.locate` (the best position of B's 1/4-pixel lattice).

    ``options`` (:class:`~dinofeat.options.MatchOptions`) or keyword ``overrides`` of its fields
    (``grid``, ``auto``, ``pca_dim``, ``require_mutual``, ``max_ratio``, ``ransac``,
    ``ransac_threshold``, ``mutual_tolerance``, ``exclusion``) say how.
    """
    options = options or MatchOptions()
    if overrides:
        options = options.replace(**overrides)
    options.check_points_given(points_xy is not None)
    if options.pca_dim is not None:
        fa, fb = joint_pca(fa, fb, options.pca_dim)
    fa, fb = fa.normalized(), fb.to(fa.features.device).normalized()
    if points_xy is not None:
        source = check_points(points_xy, fa.image_size_wh)
    elif options.grid is not None:
        source = grid_points(fa.image_size_wh, options.grid)
    else:
        source = auto_points(fa, fb, DEFAULT_AUTO if options.auto is None else options.auto)

    queries = fa.sample(source, normalize=True)
    with_ratio = options.max_ratio is not None
    found = locate(queries, fb, exclusion=options.exclusion if with_ratio else None)
    back = locate(fb.sample(found.points_xy, normalize=True), fa)  # mutual (cycle) check
    offset = fa.pixel_to_grid(back.points_xy.double()) - fa.pixel_to_grid(source.double().to(back.points_xy.device))
    mutual = offset.abs().amax(dim=1) <= options.mutual_tolerance + 1e-6
    ratio = _feature_distance(found.scores) / _feature_distance(found.runner_up).clamp_min(1e-12)
    keep = torch.ones(len(source), dtype=torch.bool, device=mutual.device)
    if options.require_mutual:
        keep &= mutual
    if options.max_ratio is not None:
        keep &= ratio < options.max_ratio
    matches = Matches(
        source_xy=source.float().cpu(),
        target_xy=found.points_xy.cpu(),
        scores=found.scores.cpu(),
        mutual=mutual.cpu(),
        ratio=ratio.float().cpu(),
        inlier=torch.ones(len(source), dtype=torch.bool),
        keep=keep.cpu(),
        image_size_a_wh=(fa.image_size_wh[0], fa.image_size_wh[1]),  # a tuple, whatever the map holds
        image_size_b_wh=(fb.image_size_wh[0], fb.image_size_wh[1]),
    )
    if options.ransac is not None:
        matches = verify(matches, options.ransac, ransac_threshold_px(fb, options.ransac_threshold))
    return matches


def ransac_threshold_px(fb: FeatureMap, threshold: float | None = None) -> float:
    """The RANSAC inlier threshold in image-B pixels (the unit of the matches and of
    ``--ransac-threshold``): ``threshold`` if given, else :data:`~dinofeat.options.RANSAC_THRESHOLD_PATCHES`
    of B's patch in processed pixels, converted to B's pixels with ``fb``'s scale."""
    if threshold is not None:
        return float(threshold)
    return RANSAC_THRESHOLD_PATCHES * fb.patch_size / fb.scale_xy[0]


def _feature_distance(cosine: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of unit vectors with this cosine: ``sqrt(2 - 2 cos)``."""
    return (2 - 2 * cosine).clamp_min(0).sqrt()


def verify(matches: Matches, kind: str, threshold_px: float) -> Matches:
    """Fit a homography or fundamental matrix to the kept matches (OpenCV USAC MAGSAC); returns
    new matches with ``inlier``, ``keep`` and ``geometry`` set. With too few matches for the
    model, nothing is an inlier and ``geometry`` is None (logged as a warning)."""
    candidates = torch.nonzero(matches.keep)[:, 0]
    inlier = torch.zeros(len(matches), dtype=torch.bool)
    need = _MIN_POINTS[kind]
    if len(candidates) < need:
        log.warning("%s needs at least %d matches, got %d: no geometric verification", kind, need, len(candidates))
        return replace(matches, inlier=inlier, keep=inlier.clone(), geometry=None)
    src = matches.source_xy[candidates].double().numpy()
    dst = matches.target_xy[candidates].double().numpy()
    if kind == "homography":
        matrix, mask = cv2.findHomography(
            src, dst, cv2.USAC_MAGSAC, threshold_px, maxIters=RANSAC_MAX_ITERS, confidence=RANSAC_CONFIDENCE
        )
    else:
        matrix, mask = cv2.findFundamentalMat(
            src, dst, cv2.USAC_MAGSAC, threshold_px, RANSAC_CONFIDENCE, RANSAC_MAX_ITERS
        )
    if matrix is None or mask is None or matrix.shape != (3, 3):
        log.warning("no %s found that fits the matches", kind)
        return replace(matches, inlier=inlier, keep=inlier.clone(), geometry=None)
    inlier[candidates] = torch.from_numpy(mask.reshape(-1).astype(bool))
    return replace(
        matches,
        inlier=inlier,
        keep=matches.keep & inlier,
        geometry=Geometry(kind, np.asarray(matrix, dtype=np.float64), float(threshold_px)),
    )


def match(
    image_a: ImageLike,
    image_b: ImageLike,
    points_xy=None,
    *,
    extractor=None,
    options: MatchOptions | None = None,
    **overrides,
) -> Matches:
    """Match points of ``image_a`` into ``image_b`` (paths, PIL images or ``(H, W, 3) uint8`` arrays).

    ``extractor`` is an :class:`~dinofeat.features.extractor.Extractor` (model, device, resolution, layer,
    facet, stride), or a model name for one with default settings. ``options`` and ``overrides``
    are :func:`match_features`'s. Coordinates are pixels of the original images.

    >>> from dinofeat.features.extractor import Extractor
    >>> from dinofeat.models.dinov2 import DinoVisionTransformer
    >>> from dinofeat.models.registry import get_spec
    >>> vit = DinoVisionTransformer(get_spec("dinov2_vits14"), depth=1).init_random()
    >>> image = np.random.default_rng(0).integers(0, 255, (56, 84, 3), dtype=np.uint8)
    >>> m = match(image, image, [[30.0, 20.0]], extractor=Extractor(vit, resolution=56, device="cpu"))
    >>> m.target_xy.round().tolist(), bool(m.mutual[0])
    ([[30.0, 20.0]], True)
    """
    if extractor is None or isinstance(extractor, str):
        extractor = Extractor(extractor) if extractor else Extractor()
    fa, fb = extractor.extract_arrays([load_image(image_a), load_image(image_b)])
    return match_features(fa, fb, points_xy, options, **overrides)


def similarity_image(fa: FeatureMap, fb: FeatureMap, point_xy, pca_dim: int | None = None) -> np.ndarray:
    """Cosine of the feature at ``point_xy`` in A with B's features interpolated at every pixel
    of B (bilinear between patch centres): ``(H_b, W_b)`` float32 numpy."""
    if pca_dim is not None:
        fa, fb = joint_pca(fa, fb, pca_dim)
    fa, fb = fa.normalized(), fb.normalized()
    sim = similarity(fa.sample(point_xy, normalize=True), fb)[0]
    return replace(fb, features=sim[..., None]).upsample()[..., 0].cpu().numpy()
