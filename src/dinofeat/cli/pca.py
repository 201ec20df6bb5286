"""``dinofeat pca``: colour images (or a video) by the first principal components of their features."""

from __future__ import annotations

import argparse
from pathlib import Path

from dinofeat.cli.common import add_extractor_options, add_features_option, add_options, open_feature_folder
from dinofeat.dataset.listing import (
    VIDEO_SUFFIXES,  # inputs with these suffixes are read as videos (the rest as images)
)
from dinofeat.options import FrameOptions, PCADrawingOptions, PCAOptions

#: Video outputs the writer can produce (H.264).
VIDEO_OUTPUTS = (".mp4", ".m4v", ".mov", ".mkv")
IMAGE_OUTPUTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


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
        help=f"images, or one video ({' '.join(VIDEO_SUFFIXES[:5])} ...); with --features, paths of the folder",
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
    add_features_option(
        parser.add_argument_group("stored features"),
        "read the features from a feature folder (dinofeat extract --out-dir DIR) instead of running the "
        "model: each INPUT is one of its paths (or a file below its dataset folder), read only for drawing; "
        "without INPUT, --save-pca fits one PCA on --fit-images stored images spread over the folder. "
        "The model and feature options are the folder's; images only, not videos",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from dinofeat.cli.common import extractor_options, options_from
    from dinofeat.errors import InputError
    from dinofeat.io.outputs import check_suffix

    model = extractor_options(args)
    options = options_from(args, PCAOptions)
    drawing = options_from(args, PCADrawingOptions)
    frames = options_from(args, FrameOptions)
    if not args.inputs and not args.features:
        raise InputError("no input: give images or a video (or --features DIR)")
    is_video = [Path(p).suffix.lower() in VIDEO_SUFFIXES for p in args.inputs]
    if args.features and any(is_video):
        raise InputError("--features holds image features; videos are coloured from the model")
    if any(is_video) and len(args.inputs) > 1:
        raise InputError("give one video, or only images (videos are coloured one at a time)")
    if not (args.output or args.out_dir or args.save_pca or args.save_features):
        raise InputError("nothing to write: give -o OUT, --out-dir DIR, --save-pca or --save-features")
    check_suffix(args.save_pca, (".npz",), "--save-pca")
    check_suffix(args.save_features, (".npz",), "--save-features")
    if not args.inputs:
        return _run_store_fit(args, options)
    if is_video[0]:
        return _run_video(args, model, options, drawing, frames)
    return _run_images(args, model, options, drawing)


def _run_store_fit(args: argparse.Namespace, options: PCAOptions) -> int:
    """--features DIR --save-pca F.npz without INPUT: one PCA over a sample of the folder."""
    from dinofeat.cli.common import summary
    from dinofeat.colorize import fit_store_pca
    from dinofeat.errors import InputError
    from dinofeat.io.outputs import check_outputs, staged_outputs

    if args.output or args.out_dir or args.save_features or not args.save_pca:
        raise InputError("--features DIR without INPUT fits a PCA: give --save-pca F.npz only (name images to draw)")
    check_outputs([args.save_pca])
    store, _, _ = open_feature_folder(args, [])
    pca = fit_store_pca(store, options)
    with staged_outputs([args.save_pca]) as (tmp,):
        pca.save(tmp)
    fitted = min(options.fit_images, len(store))
    summary(args, f"a PCA of {fitted} stored image(s) of {len(store)} -> {args.save_pca}", stream=_stdout())
    return 0


def _run_images(args: argparse.Namespace, model, options: PCAOptions, drawing: PCADrawingOptions) -> int:
    from dinofeat.cli.common import make_extractor, summary
    from dinofeat.colorize import pca_images, write_pca_files
    from dinofeat.errors import InputError
    from dinofeat.io.images import load_image
    from dinofeat.io.outputs import check_outputs, check_suffix

    check_suffix(args.output, IMAGE_OUTPUTS, "-o for images")
    if drawing.transparent and args.output and not args.output.lower().endswith(".png"):
        raise InputError("--transparent needs a .png output")
    targets = _out_dir_targets(args, ".png") if args.out_dir else []
    outputs = [args.output, *targets, args.save_pca, args.save_features]
    check_outputs(outputs, inputs=args.inputs)
    loaded = _load_pca(args)
    if args.features:
        _, extractor, files = open_feature_folder(args, args.inputs)
        images = [load_image(path) for path in files]
    else:
        images = [load_image(path) for path in args.inputs]
        extractor = make_extractor(model, args)
    result = pca_images(images, extractor, options, pca=loaded, nearest=drawing.nearest)
    write_pca_files(
        result,
        figure=args.output,
        panels=targets,
        pca_path=args.save_pca,
        features_path=args.save_features,
        components=options.components,
        drawing=drawing,
        names=[Path(p).name for p in args.inputs],
    )
    written = ", ".join(str(p) for p in outputs if p)
    summary(args, f"{len(images)} image(s), {result.summary()} -> {written}", stream=_stdout())
    return 0


def _run_video(
    args: argparse.Namespace, model, options: PCAOptions, drawing: PCADrawingOptions, frames: FrameOptions
) -> int:
    from dinofeat.cli.common import make_extractor, progress_bar, summary
    from dinofeat.colorize import pca_video_to_file
    from dinofeat.errors import InputError
    from dinofeat.io.outputs import check_outputs, check_suffix

    if args.save_features:
        raise InputError("--save-features is for images; extract frames first to save reduced video features")
    if drawing.transparent:
        raise InputError("--transparent is for PNG images; videos have no alpha channel")
    if args.output and args.out_dir:
        raise InputError("a video gives one output: use -o OUT.mp4 or --out-dir DIR, not both")
    check_suffix(args.output, VIDEO_OUTPUTS, "-o for a video")
    target = args.output or (_out_dir_targets(args, ".mp4")[0] if args.out_dir else None)
    check_outputs([target, args.save_pca], inputs=args.inputs)
    loaded = _load_pca(args)
    extractor = make_extractor(model, args)
    with progress_bar(args, "colouring", "frame") as bar:
        done = pca_video_to_file(
            args.inputs[0],
            target,
            extractor,
            options,
            drawing,
            frames=frames,
            pca=loaded,
            pca_path=args.save_pca,
            progress=bar,
        )
    written = ", ".join(str(p) for p in (target, args.save_pca) if p)
    summary(args, f"{done.frames} frames at {done.fps:g} fps -> {written}", stream=_stdout())
    return 0


def _stdout():
    import sys

    return sys.stdout  # pca's summary has always gone to standard output (it writes no data there)


def _out_dir_targets(args: argparse.Namespace, suffix: str) -> list[str]:
    from dinofeat.io.outputs import ensure_folder

    folder = ensure_folder(args.out_dir)
    stems = [Path(p).stem for p in args.inputs]
    unique = len(set(stems)) == len(stems)
    return [
        str(folder / (f"{stem}_pca{suffix}" if unique else f"{i:03d}_{stem}_pca{suffix}"))
        for i, stem in enumerate(stems)
    ]


def _load_pca(args: argparse.Namespace):
    if not args.load_pca:
        return None
    from dinofeat.pca import FeaturePCA

    return FeaturePCA.load(args.load_pca)
