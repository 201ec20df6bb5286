"""Every option of every dinofeat job, in one place: its default, its allowed values and its check.

Each job's options are a frozen dataclass (:class:`ExtractorOptions`, :class:`MatchOptions`,
:class:`TrackerOptions`, ...). A field's metadata says its command-line flag, help text and
allowed values; constructing the dataclass checks every field with one function
(:func:`~dinofeat.optionspec.check_field`), so a bad value gets the same one-line
:class:`~dinofeat.errors.InputError` whether it comes from the command line, the web app or Python
(naming the field, ``min_score``; the command line names its flag, ``--min-score``). The CLI builds its argparse options
from these fields (defaults, choices, help), and ``dataclasses.replace`` re-checks.

This module imports neither torch nor numpy, so ``dinofeat --help`` stays instant.

>>> TrackerOptions(min_score=0.7).min_score
0.7
>>> TrackerOptions(min_score=2)
Traceback (most recent call last):
...
dinofeat.errors.InputError: min_score must be a number between -1 and 1, got 2
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dinofeat.errors import InputError, field
from dinofeat.models.registry import DEFAULT_MODEL, canonical_name, get_spec
from dinofeat.optionspec import (
    COSINE,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    PERCENTILE,
    PORT,
    POSITIVE,
    POSITIVE_INT,
    POSITIVE_OR_INF,
    UNIT,
    Options,
    Range,
    option,
    parse_float,
    parse_int,
)

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: ``--compile``: ``auto`` compiles the model where the job's length repays it (see
#: :mod:`dinofeat.runtime.compile`); ``on`` and ``off`` force it.
COMPILE_MODES = ("auto", "on", "off")
FACETS = ("token", "key", "query", "value")
GEOMETRIES = ("homography", "fundamental")
TEMPLATE_POLICIES = ("anchored", "fixed")
COLOR_BY = ("index", "score")
MATCH_LAYOUTS = ("horizontal", "vertical")


# ---------------------------------------------------------------------------------------------
# Allowed values specific to dinofeat's jobs

#: An N x N grid of query points: beyond 1000 x 1000 (a million points) a grid is finer than any
#: feature map and only exhausts memory.
GRID = Range("an integer between 1 and 1000", 1, 1000, integer=True)


def parse_foreground(text: str) -> str | float | None:
    """``otsu`` | ``none`` | a threshold number."""
    lowered = text.strip().lower()
    if lowered == "otsu":
        return "otsu"
    if lowered == "none":
        return None
    try:
        return parse_float(text)
    except ValueError:
        raise ValueError(f"expected otsu, none or a threshold between 0 and 1, got {text!r}") from None


# ---------------------------------------------------------------------------------------------
# Models and features

#: Shorter image side fed to the model, in pixels (rounded to the patch grid).
DEFAULT_RESOLUTION = 448
#: Images per forward pass when ``batch_size`` is None: a GPU gains from batching; on CPU the matrix
#: products already use every core, and a batch of 8 measured 3-8 % slower than 1 (bench_track.py).
GPU_BATCH_SIZE = 8
CPU_BATCH_SIZE = 1
#: Cap on the longer side fed to the model.
DEFAULT_MAX_SIZE = 1792


@dataclass(frozen=True)
class ExtractorOptions(Options):
    """How images become feature maps (see :class:`~dinofeat.features.extractor.Extractor`)."""

    model: str = option(
        DEFAULT_MODEL,
        flag="--model",
        metavar="NAME",
        help="model name, or its Hugging Face repo or timm name (see `dinofeat models`; default: %(default)s)",
    )
    weights: str | None = option(
        None,
        flag="--weights",
        metavar="PATH",
        help="checkpoint: official .pth, .safetensors, or a Hugging Face model folder "
        "(default: torch hub cache, then Hugging Face hub, then the official URL)",
    )
    device: str = option(
        "auto",
        flag="--device",
        metavar="|".join(DEVICES),
        help="where the model runs: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps (default: %(default)s)",
    )
    precision: str = option(
        "auto",
        flag="--precision",
        choices=PRECISIONS,
        help="auto = bf16 on CUDA GPUs with native bf16 (Ampere and later) and on CPUs with native bf16 "
        "(AMX or AVX512-BF16), fp16 on older GPUs and on MPS, else fp32",
    )
    resolution: int = option(
        DEFAULT_RESOLUTION,
        flag="--resolution",
        range=POSITIVE_INT,
        metavar="N",
        help="shorter image side in pixels fed to the model, rounded to the patch grid; "
        "aspect ratio kept, no crop (default: %(default)s)",
    )
    max_size: int | None = option(
        DEFAULT_MAX_SIZE,
        flag="--max-size",
        range=POSITIVE_INT,
        metavar="N",
        optional=True,
        help="cap on the longer side fed to the model (default: %(default)s)",
    )
    stride: int | None = option(
        None,
        flag="--stride",
        range=POSITIVE_INT,
        metavar="S",
        help="patch stride in model pixels; below the patch size gives overlapping patches "
        "and a denser grid (default: the patch size, 14 for DINOv2, 16 for DINOv3)",
    )
    layers: tuple[int, ...] = option(
        (-1,),
        flag="--layer",
        range=Range("an integer", integer=True),
        nargs="+",
        metavar="L",
        parse=parse_int,
        help="block(s) to read, 0-based, negative from the end; several are concatenated (default: -1, the last)",
    )
    facet: str = option(
        "token",
        flag="--facet",
        choices=FACETS,
        help="block output (token, with the final norm) or the attention key/query/value, heads concatenated "
        "(DINOv3: key and query before RoPE, so they describe content alike at every position; "
        "default: %(default)s)",
    )
    batch_size: int | None = option(
        None,
        flag="--batch-size",
        range=POSITIVE_INT,
        metavar="B",
        help=f"images (or video frames) per forward pass (default: {GPU_BATCH_SIZE} on a GPU, {CPU_BATCH_SIZE} on CPU, "
        "where bigger batches measured slower)",
    )

    compile: str = option(
        "auto",
        flag="--compile",
        choices=COMPILE_MODES,
        noun="compile mode",
        help="compile the model (torch.compile): auto = where the job is long enough to repay the compile time "
        "(videos, datasets, eval, the app; on a CUDA GPU or a CPU), on, off; never changes a result beyond "
        "rounding, falls back to eager with one warning (default: %(default)s)",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", canonical_name(self.model))  # an alias becomes our name
        if isinstance(self.layers, int):
            object.__setattr__(self, "layers", (self.layers,))
        elif isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        super().__post_init__()

    def _check_together(self) -> None:
        if not self.layers:
            raise InputError(f"{field('layers')} needs at least one block index")
        spec = get_spec(self.model)  # unknown names: a clear error with suggestions
        kind, _, index = str(self.device).partition(":")
        if kind not in DEVICES or (index and not (kind == "cuda" and index.isdigit())):
            raise InputError(f"{field('device')} must be one of {', '.join(DEVICES)} (or cuda:N), got {self.device!r}")
        # checked against the model's shape before any weights load (or download)
        patch = spec.patch_size
        if not 1 <= (self.stride or patch) <= patch:
            raise InputError(f"{field('stride')} must be between 1 and the patch size {patch}, got {self.stride}")
        for name, value in (("resolution", self.resolution), ("max_size", self.max_size)):
            if value is not None and value < patch:
                raise InputError(f"{field(name)} must be at least the patch size ({patch}), got {value}")
        resolve_layers(self.layers, spec.depth)


def resolve_layers(layers: Sequence[int], depth: int) -> list[int]:
    """Layer indices (negative counts from the end, -1 = last block) of a model of ``depth`` blocks
    as 0-based ones; one that does not exist is an :class:`~dinofeat.errors.InputError` naming ``layers``.

    >>> resolve_layers((0, -1), 12)
    [0, 11]
    """
    resolved = []
    for layer in layers:
        index = layer + depth if layer < 0 else layer
        if not 0 <= index < depth:
            raise InputError(
                f"{field('layers', layer)} does not exist: the model has {depth} blocks "
                f"(0..{depth - 1} or -1..-{depth})"
            )
        resolved.append(index)
    return resolved


#: The :class:`ExtractorOptions` fields that change the features (the device and batch size only
#: round them): what a dataset's manifest records and compares.
FEATURE_SETTINGS = ("resolution", "max_size", "stride", "layers", "facet", "precision")


# ---------------------------------------------------------------------------------------------
# Upsampling (pixel-level features)

#: Ways to bring patch features to pixel level ("none": the patch grid).
UPSAMPLERS = ("none", "anyup")
#: ``--upsample-scale``: features per patch side (beyond the patch size, cells are below a pixel).
UPSAMPLE_SCALE = Range("an integer between 1 and 16", 1, 16, integer=True)
#: ``extract --out-dir --upsample anyup`` without ``--upsample-scale``: 2x the patch grid, 4x the bytes
#: of the patches. One feature per processed pixel (``--upsample-scale`` = the patch size) is ~200x
#: the patches (198 MB per 640x480 image with ViT-S in float16): rarely worth storing for a dataset.
DATASET_UPSAMPLE_SCALE = 2


@dataclass(frozen=True)
class UpsampleOptions(Options):
    """Pixel-level features (see :class:`~dinofeat.features.upsample.Upsampler`)."""

    upsample: str = option(
        "none",
        flag="--upsample",
        choices=UPSAMPLERS,
        noun="upsampler",
        help="bring the patch features to pixel level: anyup (a learned, image-guided upsampler, AnyUp; "
        "one feature per model pixel, or see --upsample-scale) or none (default: %(default)s)",
    )
    upsample_weights: str | None = option(
        None,
        flag="--upsample-weights",
        metavar="FILE",
        help="AnyUp weights: a .pth file, or a released name, anyup_multi_backbone or anyup_paper "
        "(default: anyup_multi_backbone from the torch hub cache, else downloaded)",
    )
    upsample_scale: int | None = option(
        None,
        flag="--upsample-scale",
        range=UPSAMPLE_SCALE,
        metavar="S",
        help="S features per patch side (S x the patch grid) instead of one per model pixel (with --out-dir "
        f"the default is {DATASET_UPSAMPLE_SCALE}: one per model pixel is ~200x the bytes of the patches; "
        "S = the patch size stores one per model pixel)",
    )

    def _check_together(self) -> None:
        if self.upsample == "none":
            for name in ("upsample_weights", "upsample_scale"):
                if getattr(self, name) is not None:
                    raise InputError(f"{field(name)} needs {field('upsample', 'anyup')}")

    @property
    def enabled(self) -> bool:
        return self.upsample != "none"

    @property
    def dataset_scale(self) -> int:
        """The scale a dataset stores (``extract --out-dir``): ``upsample_scale``, or
        :data:`DATASET_UPSAMPLE_SCALE` when not given (never one feature per pixel by default)."""
        return self.upsample_scale or DATASET_UPSAMPLE_SCALE

    def check_with(self, extractor: ExtractorOptions) -> None:
        """Upsampling needs patches that tile the image (no ``stride`` below the patch size)."""
        patch = get_spec(extractor.model).patch_size
        if self.enabled and extractor.stride not in (None, patch):
            raise InputError(
                f"{field('upsample', self.upsample)} needs patches that tile the image: "
                f"{field('stride', extractor.stride)} is below the patch size {patch}"
            )


# ---------------------------------------------------------------------------------------------
# Matching

#: Number of automatic query points when none are given.
DEFAULT_AUTO = 20
#: Mutual check: the back-match must land within this many patches (image A grid, Chebyshev).
MUTUAL_TOLERANCE = 1.0
#: Ratio test: the runner-up is the best position farther than this many patches from the best.
RATIO_EXCLUSION = 1.5
#: RANSAC inlier threshold when ``--ransac-threshold`` is not given, in patches of image B's
#: processed image (half a patch: 7 processed pixels for DINOv2, 8 for DINOv3), converted to B's
#: pixels (:func:`~dinofeat.matching.ransac_threshold_px`).
RANSAC_THRESHOLD_PATCHES = 0.5


@dataclass(frozen=True)
class MatchOptions(Options):
    """How query points of image A are chosen and matched into image B
    (see :func:`~dinofeat.matching.match_features`)."""

    grid: int | None = option(
        None, flag="--grid", range=GRID, metavar="N", help="an N x N regular grid of points over IMAGE_A (N <= 1000)"
    )
    auto: int | None = option(
        None,
        flag="--auto",
        range=POSITIVE_INT,
        metavar="K",
        help=f"K distinctive, well-spread points (mutual nearest patches; default {DEFAULT_AUTO})",
    )
    pca_dim: int | None = option(
        None,
        flag="--pca-dim",
        range=POSITIVE_INT,
        metavar="K",
        help="match in the K-dim space of a PCA fitted on both images' features jointly",
    )
    require_mutual: bool = option(
        False, flag="--mutual", help="keep only mutual matches (the match found back lands on the query's patch)"
    )
    max_ratio: float | None = option(
        None,
        flag="--ratio",
        range=Range("a number in (0, 1]", 0, 1, open_low=True),
        metavar="R",
        help="keep only matches passing Lowe's ratio test, best/runner-up feature distance < R (in (0, 1], e.g. 0.9)",
    )
    ransac: str | None = option(
        None,
        flag="--ransac",
        choices=GEOMETRIES,
        noun="geometry",
        help="verify with a RANSAC model (OpenCV USAC MAGSAC) and keep only its inliers",
    )
    ransac_threshold: float | None = option(
        None,
        flag="--ransac-threshold",
        range=POSITIVE,
        metavar="PX",
        help="RANSAC inlier threshold in IMAGE_B pixels (default: half a patch, 7 model pixels for DINOv2 "
        "and 8 for DINOv3, converted to IMAGE_B pixels)",
    )
    mutual_tolerance: float = option(
        MUTUAL_TOLERANCE, range=NON_NEGATIVE, help="patches (image A grid) within which the back-match must land"
    )
    exclusion: float = option(
        RATIO_EXCLUSION,
        range=NON_NEGATIVE,
        help="the ratio test's runner-up lies farther than this many patches from the best",
    )

    def _check_together(self) -> None:
        if self.grid is not None and self.auto is not None:
            raise InputError(f"give query points in one way only, got {field('grid')} and {field('auto')}")

    def check_points_given(self, given: bool, name: str = "points") -> None:
        """Refuse query points given (``name`` says how, e.g. ``--point/--points-file``) together
        with ``grid`` or ``auto``: checked by the matching workflows before any features are made."""
        if given and (self.grid is not None or self.auto is not None):
            raise InputError(f"give query points in one way only, got {name} and {field(self.query_mode)}")

    @property
    def query_mode(self) -> str:
        """``grid`` or ``auto`` (points given explicitly are the caller's)."""
        return "grid" if self.grid is not None else "auto"


@dataclass(frozen=True)
class MatchDrawingOptions(Options):
    """How matches are drawn (see :func:`~dinofeat.drawing.draw_matches`)."""

    color_by: str = option(
        "index",
        flag="--color-by",
        choices=COLOR_BY,
        help="line colours: one per match, or by cosine score with a colour bar (default: %(default)s)",
    )
    height: int | None = option(
        None,
        flag="--height",
        range=Range("an integer between 16 and 16384", 16, 16384, integer=True),
        metavar="PX",
        help="height of each image in the picture (default: the taller image, within 360..1440)",
    )
    layout: str = option(
        "horizontal",
        flag="--layout",
        choices=MATCH_LAYOUTS,
        help="A beside B (horizontal) or A above B (vertical; clearer for stereo pairs) (default: %(default)s)",
    )
    heatmap: bool = option(
        False, flag="--heatmap", help="with a single query point: show its similarity over IMAGE_B in the picture"
    )


# ---------------------------------------------------------------------------------------------
# PCA

#: Percentiles of the fitting data that map to 0 and 255 (per channel).
DEFAULT_PERCENTILES = (1.0, 99.0)
#: Principal components the colours are made of (red, green, blue): a PCA fits at least this many.
COLOR_COMPONENTS = 3
#: Video PCA: frames sampled evenly over the clip to fit one PCA.
DEFAULT_FIT_FRAMES = 16
#: PCA over a feature folder: stored images sampled evenly to fit one PCA.
DEFAULT_FIT_IMAGES = 32


@dataclass(frozen=True)
class PCAOptions(Options):
    """How a feature PCA is fitted (see :meth:`~dinofeat.pca.FeaturePCA.fit`)."""

    components: int = option(
        COLOR_COMPONENTS,
        flag="--components",
        range=POSITIVE_INT,
        metavar="K",
        help="components kept for --save-features (the colours use the first 3; default: 3)",
    )
    foreground: str | float | None = option(
        "otsu",
        flag="--foreground",
        choices=("otsu",),
        range=UNIT,
        parse=parse_foreground,
        optional=True,
        metavar="otsu|none|T",
        what="otsu, none or a threshold between 0 and 1",
        help="foreground from the first component: otsu (automatic threshold), "
        "none (colour every patch), or a threshold T between 0 and 1 on the "
        "first component scaled by the percentiles (default: otsu)",
    )
    percentiles: tuple[float, float] = option(
        DEFAULT_PERCENTILES,
        flag="--percentiles",
        range=PERCENTILE,
        nargs=2,
        parse=parse_float,
        metavar=("LOW", "HIGH"),
        help="per-channel percentiles mapped to 0 and 255 (default: 1 99)",
    )
    fit_frames: int = option(
        DEFAULT_FIT_FRAMES,
        flag="--fit-frames",
        range=POSITIVE_INT,
        metavar="N",
        help="video: frames sampled evenly to fit the PCA (default: %(default)s)",
    )
    fit_images: int = option(
        DEFAULT_FIT_IMAGES,
        flag="--fit-images",
        range=POSITIVE_INT,
        metavar="N",
        help="--features DIR without INPUT: stored images, spread evenly over the folder, that fit the PCA "
        "(default: %(default)s)",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "percentiles", tuple(self.percentiles))
        super().__post_init__()

    def _check_together(self) -> None:
        if len(self.percentiles) != 2:
            raise InputError(f"{field('percentiles')} needs two numbers LOW HIGH, got {len(self.percentiles)}")
        low, high = self.percentiles
        if low >= high:
            raise InputError(f"{field('percentiles')} LOW HIGH needs LOW < HIGH, got {low:g} {high:g}")


@dataclass(frozen=True)
class PCADrawingOptions(Options):
    """How PCA colours are shown (see :mod:`dinofeat.drawing`)."""

    overlay: float | None = option(
        None,
        flag="--overlay",
        range=UNIT,
        metavar="ALPHA",
        help="blend the colours over the image with this opacity instead of side by side",
    )
    pca_only: bool = option(False, flag="--pca-only", help="only the colours, without the image")
    transparent: bool = option(
        False, flag="--transparent", help="transparent background instead of black (PNG outputs; not with --overlay)"
    )
    nearest: bool = option(
        False, flag="--nearest", help="crisp patches (nearest patch) instead of smooth bilinear upsampling"
    )
    columns: int | None = option(
        None,
        flag="--columns",
        range=POSITIVE_INT,
        metavar="N",
        help="panels per row of the figure of several images (default: up to 4)",
    )

    def _check_together(self) -> None:
        if self.overlay is not None and self.pca_only:
            raise InputError(f"{field('overlay')} and {field('pca_only')} exclude each other")
        if self.transparent and self.overlay is not None:
            raise InputError(
                f"{field('transparent')} does not apply to {field('overlay')} (the image shows through the background)"
            )


# ---------------------------------------------------------------------------------------------
# Video frames and tracking

#: Default search window radius, in patches (converted to original pixels per video).
DEFAULT_WINDOW_PATCHES = 4.0
#: Default cycle-consistency tolerance, in patches (converted to original pixels per video).
DEFAULT_CYCLE_TOLERANCE_PATCHES = 1.5
#: Cosine below which a match is weak: the global search takes over and the point is not visible.
#: Chosen for real DINOv2 features (same point across frames: ~0.7-0.95; unrelated: < 0.4).
DEFAULT_MIN_SCORE = 0.5
#: Anchored template: weight of the running template's update per visible frame.
DEFAULT_UPDATE_RATE = 0.1
#: Anchored template: weight of the query feature in the template used for matching.
DEFAULT_ANCHOR_WEIGHT = 0.5
#: Trail length in processed frames in the output video.
DEFAULT_TRAIL = 12


@dataclass(frozen=True)
class FrameOptions(Options):
    """Which frames of a video are processed (see :func:`~dinofeat.io.video.read_frames`)."""

    start: int = option(
        0, flag="--start", range=NON_NEGATIVE_INT, metavar="T", help="first frame to process (default: 0)"
    )
    max_frames: int | None = option(
        None, flag="--max-frames", range=POSITIVE_INT, metavar="N", help="process at most N frames"
    )
    every: int = option(
        1, flag="--every", range=POSITIVE_INT, metavar="K", help="process every K-th frame (default: 1)"
    )


@dataclass(frozen=True)
class TrackGridOptions(Options):
    """A grid of points to track (``dinofeat track --grid``; the same range as ``match --grid``)."""

    grid: int | None = option(
        None,
        flag="--grid",
        range=GRID,
        metavar="N",
        help="an N x N grid of points over the first processed frame (N <= 1000)",
    )


@dataclass(frozen=True)
class TrackerOptions(Options):
    """How points are followed from frame to frame (see :class:`~dinofeat.tracking.PointTracker`)."""

    window: float | None = option(
        None,
        flag="--window",
        range=POSITIVE,
        metavar="R",
        help=f"search radius around the last position, in video pixels (default: {DEFAULT_WINDOW_PATCHES:g} patches)",
    )
    min_score: float = option(
        DEFAULT_MIN_SCORE,
        flag="--min-score",
        range=COSINE,
        metavar="S",
        help="cosine (-1..1) below which a match is weak: global search, and not visible (default: %(default)s)",
    )
    cycle_tolerance: float | None = option(
        None,
        flag="--cycle-tolerance",
        range=POSITIVE_OR_INF,
        metavar="PX",
        help="a match found back in the query frame must land this close to the "
        "query point to be visible, in video pixels (default: "
        f"{DEFAULT_CYCLE_TOLERANCE_PATCHES:g} patches; 'inf' turns the check off)",
    )
    template: str = option(
        "anchored",
        flag="--template",
        choices=TEMPLATE_POLICIES,
        help="anchored: follow slow appearance changes, anchored to the query feature; "
        "fixed: the query feature only (default: %(default)s)",
    )
    update_rate: float = option(
        DEFAULT_UPDATE_RATE, range=UNIT, help="anchored template: running-template update weight per visible frame"
    )
    anchor_weight: float = option(
        DEFAULT_ANCHOR_WEIGHT, range=UNIT, help="anchored template: weight of the query feature"
    )
    backward: bool = option(
        False,
        flag="--backward",
        help="also track each point backward from its query frame to the first processed frame (the "
        "processed frames are held in memory)",
    )


@dataclass(frozen=True)
class TrailOptions(Options):
    """How tracks are drawn on the output video (see :class:`~dinofeat.drawing.TrailAnnotator`)."""

    trail: int = option(
        DEFAULT_TRAIL,
        flag="--trail",
        range=NON_NEGATIVE_INT,
        metavar="N",
        help="trail length in processed frames in the output video (0: none; default: %(default)s)",
    )


# ---------------------------------------------------------------------------------------------
# Datasets (thousands of files, resumable; see dinofeat.dataset.runs)

ENGINES = ("local", "ray")
ON_ERROR = ("continue", "fail")
STORE_DTYPES = ("float32", "float16")
TRACK_OUTPUTS = ("json", "csv", "mp4")
#: Images per feature shard: the unit of work, of atomic writing and of resuming.
DEFAULT_SHARD_SIZE = 64
#: Images whose features fit the storage PCA of ``--pca K``.
DEFAULT_PCA_SAMPLE = 64
#: Threads decoding images ahead of the model (local engine, and inside each Ray worker).
DEFAULT_DECODE_THREADS = 4


@dataclass(frozen=True)
class DatasetOptions(Options):
    """How a dataset (a folder, glob or list of files) is processed and stored
    (see :func:`~dinofeat.dataset.runs.extract_dataset` and :func:`~dinofeat.dataset.runs.track_dataset`).

    ``dtype``, ``pca``, ``pca_sample`` and ``shard_size`` say how features are stored (they are
    part of the dataset's manifest); ``outputs`` is for tracks; the rest say how the work runs and
    may change between runs into the same folder.
    """

    engine: str = option(
        "local",
        flag="--engine",
        choices=ENGINES,
        help="local: this process, decoding overlapped with the model; ray: Ray Data actors, one model "
        "per worker, on this machine or a cluster (pip install 'dinofeat[ray]') (default: %(default)s)",
    )
    on_error: str = option(
        "continue",
        flag="--on-error",
        choices=ON_ERROR,
        noun="error policy",
        help="a file that cannot be read: record it in DIR/errors.jsonl and go on (continue), "
        "or stop at the first (fail) (default: %(default)s)",
    )
    dtype: str = option(
        "float32",
        flag="--dtype",
        choices=STORE_DTYPES,
        help="stored feature type; float16 halves the files (default: %(default)s)",
    )
    pca: int | None = option(
        None,
        flag="--pca",
        range=POSITIVE_INT,
        metavar="K",
        help="store K principal components per patch instead of C channels (a PCA fitted on "
        "--pca-sample images, saved as DIR/pca.safetensors)",
    )
    pca_sample: int = option(
        DEFAULT_PCA_SAMPLE,
        flag="--pca-sample",
        range=POSITIVE_INT,
        metavar="N",
        help="images, spread evenly over the dataset, that fit the --pca basis (default: %(default)s)",
    )
    shard_size: int = option(
        DEFAULT_SHARD_SIZE,
        flag="--shard-size",
        range=POSITIVE_INT,
        metavar="N",
        help="images per shard file: the unit of work, atomic writing and resuming; memory holds about "
        "two shards (default: %(default)s)",
    )
    outputs: tuple[str, ...] = option(
        ("json",),
        flag="--outputs",
        choices=TRACK_OUTPUTS,
        nargs="+",
        metavar="FORMAT",
        noun="output format",
        help="files per video in DIR/tracks/: json, csv and/or mp4 (default: json)",
    )
    decode_threads: int = option(
        DEFAULT_DECODE_THREADS,
        flag="--decode-threads",
        range=POSITIVE_INT,
        metavar="N",
        help="threads decoding images ahead of the model (default: %(default)s)",
    )
    workers: int | None = option(
        None,
        flag="--workers",
        range=POSITIVE_INT,
        metavar="N",
        help="ray: model workers (actors), each loading the model once "
        "(default: the cluster's GPUs / --gpus-per-worker, or 1 without GPUs)",
    )
    gpus_per_worker: float | None = option(
        None,
        flag="--gpus-per-worker",
        range=NON_NEGATIVE,
        metavar="G",
        help="ray: GPUs per worker (default: 1 if the Ray cluster has GPUs, else 0)",
    )
    cpus_per_worker: float | None = option(
        None,
        flag="--cpus-per-worker",
        range=POSITIVE,
        metavar="C",
        help="ray: CPUs each worker reserves, and its torch threads on a CPU (default: 1 reserved; a CPU "
        "worker then runs the cluster's CPUs / --workers threads)",
    )
    ray_address: str | None = option(
        None,
        flag="--ray-address",
        metavar="ADDR",
        help="ray: the cluster to join (default: $RAY_ADDRESS, else a local Ray started for the run)",
    )

    def __post_init__(self) -> None:
        if isinstance(self.outputs, str):
            object.__setattr__(self, "outputs", (self.outputs,))
        elif isinstance(self.outputs, list):
            object.__setattr__(self, "outputs", tuple(self.outputs))
        super().__post_init__()

    def _check_together(self) -> None:
        if not self.outputs:
            raise InputError(f"{field('outputs')} needs at least one of json, csv, mp4")
        if self.engine != "ray":
            given = [f for f in ("workers", "gpus_per_worker", "cpus_per_worker", "ray_address") if getattr(self, f)]
            if given:
                raise InputError(f"{field(given[0])} is for {field('engine', 'ray')}")


# ---------------------------------------------------------------------------------------------
# The web app

#: Largest image the app decodes, in megapixels (a 40 MP photo is 120 MB as RGB).
DEFAULT_MAX_IMAGE_MEGAPIXELS = 40.0
#: Frames tracked at most per video in the app; longer videos are cut, with a warning.
DEFAULT_MAX_VIDEO_FRAMES = 600
#: Largest upload the page accepts, in megabytes.
DEFAULT_MAX_UPLOAD_MB = 200.0


@dataclass(frozen=True)
class AppOptions(Options):
    """The web app's server and limits (see :func:`~dinofeat.app.launch`)."""

    host: str = option(
        "127.0.0.1",
        flag="--host",
        help="address to listen on; 0.0.0.0 makes the page reachable from other computers (default: %(default)s)",
    )
    port: int | None = option(
        None, flag="--port", range=PORT, metavar="N", help="port (default: the first free one from 7860)"
    )
    max_upload_mb: float = option(
        DEFAULT_MAX_UPLOAD_MB,
        flag="--max-upload-mb",
        range=POSITIVE,
        metavar="MB",
        help="largest file the page accepts (default: %(default)g)",
    )
    max_image_mp: float = option(
        DEFAULT_MAX_IMAGE_MEGAPIXELS,
        flag="--max-image-mp",
        range=POSITIVE,
        metavar="MP",
        help="largest image in megapixels (default: %(default)g)",
    )
    max_frames: int = option(
        DEFAULT_MAX_VIDEO_FRAMES,
        flag="--max-frames",
        range=POSITIVE_INT,
        metavar="N",
        help="frames of a video tracked at most; longer videos are cut (default: %(default)s)",
    )


# ---------------------------------------------------------------------------------------------
# Benchmarks

TAPVID_PROTOCOLS = ("first", "strided")
SPAIR_SPLITS = ("trn", "val", "test")
#: The raster TAP-Vid's published numbers use, and the model resolution ``eval tapvid`` defaults to.
TAPVID_RESOLUTION = 256
#: The model resolution ``eval spair`` defaults to (the DINOv2 paper's keypoint-transfer setting).
SPAIR_RESOLUTION = 840


@dataclass(frozen=True)
class TapVidOptions(Options):
    """How ``dinofeat eval tapvid`` runs the benchmark (see :func:`~dinofeat.eval.evaluation.evaluate_tapvid_file`)."""

    protocol: str = option(
        "first",
        flag="--protocol",
        choices=TAPVID_PROTOCOLS,
        help="first: one query at each track's first visible frame, later frames scored; strided: a query "
        "every 5 frames where visible, every other frame scored (default: %(default)s)",
    )
    full_resolution: bool = option(
        False,
        flag="--full-resolution",
        help="track the original frames and score in original pixels (a separate category) instead of "
        "resizing to 256x256 as the papers do",
    )
    max_videos: int | None = option(
        None, flag="--max-videos", range=POSITIVE_INT, metavar="N", help="evaluate only the first N videos"
    )


@dataclass(frozen=True)
class SPairOptions(Options):
    """How ``dinofeat eval spair`` runs the benchmark (see :func:`~dinofeat.eval.evaluation.evaluate_spair_folder`)."""

    split: str = option("test", flag="--split", choices=SPAIR_SPLITS, help="annotation split (default: %(default)s)")
    limit: int | None = option(
        None, flag="--limit", range=POSITIVE_INT, metavar="N", help="evaluate only the first N pairs"
    )
    alphas: tuple[float, ...] = option(
        (0.1,),
        flag="--alpha",
        range=Range("a number in (0, 1]", 0, 1, open_low=True),
        repeat=True,
        metavar="A",
        help="PCK threshold as a fraction of the target box's larger side; repeat for several (default: 0.1)",
    )

    def __post_init__(self) -> None:
        alphas = (self.alphas,) if isinstance(self.alphas, (int, float)) else tuple(self.alphas)
        object.__setattr__(self, "alphas", alphas)
        super().__post_init__()

    def _check_together(self) -> None:
        if not self.alphas:
            raise InputError(f"{field('alphas')} needs at least one threshold")


# ---------------------------------------------------------------------------------------------
# Segmentation (dinofeat segment; see dinofeat.segmentation)

#: Label propagation defaults: those of the reference (facebookresearch/dino ``eval_video_segmentation.py``).
DEFAULT_CONTEXT_FRAMES = 7
DEFAULT_TOP_K = 5
DEFAULT_RADIUS_PATCHES = 12
DEFAULT_TEMPERATURE = 0.1


@dataclass(frozen=True)
class SegmentOptions(Options):
    """How labels are propagated and clicks become a first mask (see
    :class:`~dinofeat.segmentation.VideoSegmenter` and :func:`~dinofeat.segmentation.mask_from_clicks`)."""

    context_frames: int = option(
        DEFAULT_CONTEXT_FRAMES,
        flag="--context-frames",
        range=NON_NEGATIVE_INT,
        metavar="N",
        help="a frame takes its labels from the first frame and the last N processed frames (default: %(default)s)",
    )
    top_k: int = option(
        DEFAULT_TOP_K,
        flag="--top-k",
        range=POSITIVE_INT,
        metavar="K",
        help="each patch takes the labels of its K most similar context patches (default: %(default)s)",
    )
    radius: int = option(
        DEFAULT_RADIUS_PATCHES,
        flag="--radius",
        range=NON_NEGATIVE_INT,
        metavar="R",
        help="a video: context patches are searched within R patches of the patch, in rows and columns "
        "(default: %(default)s; other images are searched whole: photos are not aligned)",
    )
    temperature: float = option(
        DEFAULT_TEMPERATURE,
        flag="--temperature",
        range=POSITIVE,
        metavar="T",
        help="the K patches weigh exp(cosine / T), normalised (default: %(default)s)",
    )
    click_threshold: float | None = option(
        None,
        flag="--click-threshold",
        range=COSINE,
        metavar="S",
        help="clicks: a patch joins a clicked object when its cosine to the object's clicks is at least S "
        "(default: chosen per image, Otsu's threshold of the cosines)",
    )


# ---------------------------------------------------------------------------------------------
# DAVIS 2017 (``dinofeat eval davis``)

#: The image sets of DAVIS 2017 semi-supervised with annotations for every frame.
DAVIS_SETS = ("val", "train")
#: The model resolution ``eval davis`` defaults to (the 480 px short side of the reference protocol).
DAVIS_RESOLUTION = 480


def parse_names(text: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")`` (spaces around names dropped, empty names refused).

    >>> parse_names("bear, blackswan")
    ('bear', 'blackswan')
    """
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise ValueError(f"expected names separated by commas, got {text!r}")
    return names


@dataclass(frozen=True)
class DavisOptions(Options):
    """How ``dinofeat eval davis`` runs the benchmark (see :func:`~dinofeat.eval.evaluation.evaluate_davis_folder`)."""

    subset: str = option(
        "val", flag="--set", choices=DAVIS_SETS, noun="set", help="image set of ImageSets/2017 (default: %(default)s)"
    )
    sequences: tuple[str, ...] | None = option(
        None,
        flag="--sequences",
        parse=parse_names,
        metavar="A,B",
        help="evaluate only these sequences of the set, names separated by commas (default: all)",
    )

    def __post_init__(self) -> None:
        if isinstance(self.sequences, str):
            object.__setattr__(self, "sequences", parse_names(self.sequences))
        elif self.sequences is not None:
            object.__setattr__(self, "sequences", tuple(self.sequences))
        super().__post_init__()

    def _check_together(self) -> None:
        if self.sequences is not None and not self.sequences:
            raise InputError(f"{field('sequences')} needs at least one name")
