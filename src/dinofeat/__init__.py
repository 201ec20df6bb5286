"""dinofeat: DINO dense patch features for matching, PCA and point tracking.

Importing the package is cheap: torch is imported only when a public name is first used.

Coordinates everywhere are float (x, y) pixels of the original image, x to the right, y down,
with the centre of the top-left pixel at (0, 0).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it; resolved lazily so `dinofeat --help` never imports torch.
# This is the API a user needs (tests/test_api.py fixes it); the rest lives one level down
# (dinofeat.models.dinov2.DinoVisionTransformer, dinofeat.search.NormTable, ...).
_LAZY = {
    # models: the table of backbones and their weights
    "MODELS": "models.registry",
    "ModelSpec": "models.registry",
    "get_spec": "models.registry",
    "load_model": "models.weights",
    # features: images -> feature maps with their geometry
    "Extractor": "features.extractor",
    "FeatureMap": "features.featuremap",
    "FeatureSource": "features.source",
    "FeatureCache": "features.cache",
    "load_image": "io.images",
    # jobs: each command's work, for Python callers as for the CLI and the app
    "ExtractJob": "jobs.extract",
    "MatchJob": "jobs.match",
    "PCAJob": "jobs.pca",
    "TrackJob": "jobs.track",
    "SegmentJob": "jobs.segment",
    # matching and the exact search
    "match": "matching",
    "match_features": "matching",
    "Matches": "matching",
    "similarity": "search",
    "locate": "search",
    "refine_peaks": "search",
    # PCA
    "FeaturePCA": "pca",
    "fit_pca": "pca",
    "pca_images": "colorize",
    # tracking
    "PointTracker": "tracking",
    "track_video": "tracking",
    "track_frames": "tracking",
    "Tracks": "tracks",
    # segmentation: masks from a mask or clicks, by label propagation
    "VideoSegmenter": "segmentation",
    "propagate_labels": "segmentation",
    "mask_from_clicks": "segmentation",
    # drawing (pure functions: images in, image out)
    "draw_points": "drawing",
    "draw_matches": "drawing",
    "draw_heatmap": "drawing",
    "draw_tracks": "drawing",
    "TrailAnnotator": "drawing",
    # video
    "probe_video": "io.video",
    "read_frames": "io.video",
    "VideoWriter": "io.video",
    # datasets
    "extract_dataset": "dataset.runs",
    "track_dataset": "dataset.runs",
    "open_features": "dataset.store",
    "FeatureStore": "dataset.store",
    # options (every default, range and check)
    "ExtractorOptions": "options",
    "MatchOptions": "options",
    "MatchDrawingOptions": "options",
    "PCAOptions": "options",
    "PCADrawingOptions": "options",
    "TrackerOptions": "options",
    "FrameOptions": "options",
    "TrailOptions": "options",
    "DatasetOptions": "options",
    "SegmentOptions": "options",
    # errors
    "DinofeatError": "errors",
    "InputError": "errors",
    "UnknownModelError": "errors",
    "WeightsError": "errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dinofeat' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"dinofeat.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
