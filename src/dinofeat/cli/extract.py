"""``dinofeat extract``: dense features of images to ``.npz`` or ``.safetensors``."""

from __future__ import annotations

import argparse

from dinofeat.cli.common import add_feature_options, add_model_options


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "extract", help="write dense DINOv2 features of images to .npz or .safetensors",
        description="Extract dense DINOv2 patch features. For input i the file holds features_{i} "
        "(h, w, C) float32 and image_size_{i} (width, height), plus processed_size_{i}, the model "
        "name, resolution, patch size, stride, layers and facet.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="input images")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="output file, .npz or .safetensors (written atomically)")
    add_feature_options(parser)
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="images per forward pass")
    add_model_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from dinofeat.errors import InputError
    from dinofeat.featurefile import save_features
    from dinofeat.images import load_image
    from dinofeat.outputs import check_writable

    if not args.output.endswith((".npz", ".safetensors")):
        raise InputError(f"output must end in .npz or .safetensors, got {args.output}")
    check_writable(args.output)
    images = [load_image(path) for path in args.images]
    from dinofeat.cli.common import make_extractor

    extractor = make_extractor(args, batch_size=args.batch_size)
    maps = extractor.extract_arrays(images)
    save_features(args.output, maps, model=extractor.spec.name, resolution=args.resolution,
                  layers=extractor.layers, facet=extractor.facet)
    return 0
