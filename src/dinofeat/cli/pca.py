"""``dinofeat pca``: colour images (or a video) by the first principal components of their features."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from dinofeat.cli.common import (
    add_extractor_options,
    add_features_option,
    add_options,
    add_upsample_options,
    extractor_options,
    make_extractor,
    make_upsampler,
    open_feature_folder,
    options_from,
    progress_bar,
    summary,
    upsample_options,
)
from dinofeat.dataset.listing import (
    VIDEO_SUFFIXES,  # inputs with these suffixes are read as videos (the rest as images)
)
from dinofeat.errors import InputError
from dinofeat.options import FrameOptions, PCADrawingOptions, PCAOptions

if TYPE_CHECKING:  # types only
    from dinofeat.colorize import PCAResult
    from dinofeat.jobs.pca import StorePCAResult, VideoPCAResult


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "pca",
        help="colour images or a video by the principal components of their features",
        description="Show what the model sees: the first three principal components of the patch features "
        "as RGB. By default the first component of all patches is thresholded (Otsu) to find the "
        "foreground, a second PCA is fitted on foreground patches, each component is scaled by "
        "percentiles, and the background is black. Several images are fitted jointly, so the same "
        "part gets the same colour in each. A single video input (-o OUT.mp4) is coloured frame by "
        "frame with one PCA fitted on a sample of its frames.",
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help=f"images or folders of images (every image below them), or one video "
        f"({' '.join(VIDEO_SUFFIXES[:5])} ...); with --features, paths of the folder",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="one figure (a grid of labelled panels for several images; .png, .jpg, ...) or, for a "
        "video, an .mp4/.mov/.mkv",
    )
    out.add_argument(
        "--out-dir",
        metavar="DIR",
        help="one file per input: DIR/<name>_pca.png (or .mp4); the folder is created if needed",
    )
    add_options(out, PCADrawingOptions)
    pca = parser.add_argument_group("PCA")
    add_options(pca, PCAOptions)
    pca.add_argument("--save-pca", metavar="FILE.npz", help="save the fitted PCA to colour other inputs alike")
    pca.add_argument(
        "--load-pca",
        metavar="FILE.npz",
        help="colour with a saved PCA instead of fitting one (its "
        "foreground threshold and colour scaling are used; --foreground and --percentiles are ignored)",
    )
    pca.add_argument(
        "--save-features",
        metavar="FILE.npz",
        help="write the first K components per patch: features_{i} (h, w, K) float32, "
        "foreground_{i} (h, w) bool, image_size_{i} (w, h) (images only)",
    )
    frames = parser.add_argument_group("video frames")
    add_options(frames, FrameOptions, every="colour every K-th frame; the video is written at fps / K (default: 1)")
    add_extractor_options(parser)
    add_upsample_options(parser)
    add_features_option(
        parser.add_argument_group("stored features"),
        "read the features from a feature folder (dinofeat extract --out-dir DIR) instead of running the "
        "model: each INPUT is one of its paths (or a file below its dataset folder), read only for drawing; "
        "without INPUT, --save-pca fits one PCA on --fit-images stored images spread over the folder. "
        "The model and feature options are the folder's; images only, not videos",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from dinofeat.jobs.pca import PCAJob  # lazy: --help stays fast (torch)

    model = extractor_options(args)
    upsample = upsample_options(args, model)
    job = PCAJob(
        args.inputs,
        output=args.output,
        out_dir=args.out_dir,
        save_pca=args.save_pca,
        load_pca=args.load_pca,
        save_features=args.save_features,
        features=args.features,
        options=options_from(args, PCAOptions),
        drawing=options_from(args, PCADrawingOptions),
        frames=options_from(args, FrameOptions),
    )
    job.check()
    result: PCAResult | VideoPCAResult | StorePCAResult
    if job.fits_stored_features and upsample.enabled:
        raise InputError("--upsample needs INPUT images to upsample with: a PCA fitted on a folder alone is of patches")
    upsampler = make_upsampler(upsample, model)  # before the model: a missing file is found at once
    if job.fits_stored_features:
        store, _, _ = open_feature_folder(args, [])
        result = job.run_store(store)
    elif args.features:  # stored patch features, upsampled (if asked) with the images
        _, source, files = open_feature_folder(args, args.inputs)
        if upsampler is not None:
            source = upsampler.wrap(source, scale=upsample.upsample_scale)
        result = job.run(source, image_files=files)
    else:
        with progress_bar(args, "colouring", "frame") as bar:
            source = make_extractor(model, args, within=bar)
            if upsampler is not None:
                source = upsampler.wrap(source, scale=upsample.upsample_scale)
            result = job.run(source, bar)
    summary(args, job.summary(result), stream=sys.stdout)  # pca's summary has always gone to standard output
    return 0
