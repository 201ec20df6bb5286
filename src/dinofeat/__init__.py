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
_LAZY = {
    "MODELS": "models.registry",
    "ModelSpec": "models.registry",
    "get_spec": "models.registry",
    "DinoVisionTransformer": "models.dinov2",
    "DinoV3VisionTransformer": "models.dinov3",
    "build_model": "models.build",
    "load_model": "models.weights",
    "load_image": "io.images",
    "FeatureMap": "features.featuremap",
    "Extractor": "features.extractor",
    "match": "matching",
    "match_features": "matching",
    "Matches": "matching",
    "MatchJob": "jobs.match",
    "ExtractJob": "jobs.extract",
    "similarity": "search",
    "locate": "search",
    "refine_peaks": "search",
    "FeaturePCA": "pca",
    "fit_pca": "pca",
    "pca_images": "colorize",
    "PCAJob": "jobs.pca",
    "PointTracker": "tracking",
    "track_video": "tracking",
    "track_frames": "tracking",
    "TrackJob": "jobs.track",
    "Tracks": "tracks",
    "FeatureCache": "features.cache",
    "open_features": "dataset.store",
    "FeatureStore": "dataset.store",
    "extract_dataset": "dataset.runs",
    "track_dataset": "dataset.runs",
    "ExtractorOptions": "options",
    "MatchOptions": "options",
    "PCAOptions": "options",
    "TrackerOptions": "options",
    "FrameOptions": "options",
    "DatasetOptions": "options",
    "probe_video": "io.video",
    "read_frames": "io.video",
    "VideoWriter": "io.video",
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
