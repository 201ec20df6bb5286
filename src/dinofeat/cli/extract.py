"""``dinofeat extract``: dense features of images to ``.npz`` or ``.safetensors``."""

from __future__ import annotations

import argparse

from dinofeat.cli.common import add_extractor_options


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "extract",
        help="write dense DINO features of images to .npz or .safetensors",
        description="Extract dense patch features. For input i the file holds features_{i} (h, w, C) float32 and "
        "image_size_{i} (width, height), plus processed_size_{i}, the model name, resolution, patch size, "
        "stride, layers and facet.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="input images")
    parser.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="output file, .npz or .safetensors (written atomically)"
    )
    add_extractor_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from dinofeat.cli.common import extractor_options, make_extractor, summary
    from dinofeat.featurefile import FEATURE_SUFFIXES, extract_to_file
    from dinofeat.images import load_image
    from dinofeat.outputs import check_outputs, check_suffix

    options = extractor_options(args)
    check_suffix(args.output, FEATURE_SUFFIXES, "output")
    check_outputs([args.output], inputs=args.images)
    images = [load_image(path) for path in args.images]
    extractor = make_extractor(options, args)
    maps = extract_to_file(images, args.output, extractor)
    grids = sorted({f"{m.grid_hw[1]}x{m.grid_hw[0]}" for m in maps})
    summary(args, f"{len(maps)} image(s), {', '.join(grids)} patches x {maps[0].dim} -> {args.output}")
    return 0
