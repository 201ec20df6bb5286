"""The public API: ``dinofeat``'s top-level names are a fixed list (a change to it is deliberate,
and shows in this file), each resolves, and importing the package stays free of torch."""

from __future__ import annotations

import subprocess
import sys

import dinofeat

PUBLIC = {
    "__version__",
    # models
    "MODELS", "ModelSpec", "get_spec", "load_model",
    # features
    "Extractor", "FeatureMap", "FeatureSource", "FeatureCache", "load_image",
    # jobs
    "ExtractJob", "MatchJob", "PCAJob", "TrackJob", "SegmentJob",
    # matching and search
    "match", "match_features", "Matches", "similarity", "locate", "refine_peaks",
    # PCA
    "FeaturePCA", "fit_pca", "pca_images",
    # tracking
    "PointTracker", "track_video", "track_frames", "Tracks",
    # segmentation
    "VideoSegmenter", "propagate_labels", "mask_from_clicks", "SegmentOptions",
    # drawing
    "draw_points", "draw_matches", "draw_heatmap", "draw_tracks", "TrailAnnotator",
    # video
    "probe_video", "read_frames", "VideoWriter",
    # datasets
    "extract_dataset", "track_dataset", "open_features", "FeatureStore",
    # options
    "ExtractorOptions", "MatchOptions", "MatchDrawingOptions", "PCAOptions", "PCADrawingOptions",
    "TrackerOptions", "FrameOptions", "TrailOptions", "DatasetOptions",
    # errors
    "DinofeatError", "InputError", "UnknownModelError", "WeightsError",
}  # fmt: skip


def test_the_public_names_are_exactly_these():
    assert set(dinofeat.__all__) == PUBLIC
    assert len(dinofeat.__all__) == len(PUBLIC)  # none listed twice
    assert set(dir(dinofeat)) == PUBLIC


def test_every_public_name_resolves_to_a_definition_in_a_submodule():
    for name in sorted(PUBLIC - {"__version__", "MODELS"}):  # MODELS is the registry's table (a dict)
        home = getattr(dinofeat, name).__module__
        assert home.startswith("dinofeat.") and home != "dinofeat", (name, home)
    assert dinofeat.MODELS["dinov2_vits14"].patch_size == 14


def test_internals_stay_one_level_down():
    for internal in ("build_model", "DinoVisionTransformer", "DinoV3VisionTransformer", "NormTable", "AppSession"):
        assert not hasattr(dinofeat, internal), internal


def test_importing_the_package_imports_no_torch():
    code = "import sys, dinofeat; print(sorted(m for m in ('torch', 'numpy', 'PIL', 'cv2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
