"""``dinofeat extract``: dense features of images to ``.npz`` or ``.safetensors``, or of a dataset to a folder."""

from __future__ import annotations

import argparse

from dinofeat.cli.common import add_extractor_options, add_options
from dinofeat.options import DatasetOptions

#: DatasetOptions fields that are about tracking only.
_TRACK_ONLY = ("outputs",)


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "extract",
        help="write dense DINO features of images (or of a whole dataset) to files",
        description="Extract dense patch features. With -o, for input i the file holds features_{i} (h, w, C) "
        "float32 and image_size_{i} (width, height), plus processed_size_{i}, the model name, resolution, "
        "patch size, stride, layers and facet. With --out-dir, the inputs are a dataset (a folder, searched "
        "recursively; a glob; or a list file: .txt with one path per line, .csv or .parquet with a 'path' "
        "column) and DIR gets safetensors shards of the same arrays, a Parquet index, a manifest and "
        "errors.jsonl; rerunning the same command resumes. Read it back with dinofeat.open_features(DIR).",
    )
    parser.add_argument(
        "images",
        nargs="+",
        metavar="INPUT",
        help="input images; with --out-dir also a folder, a quoted glob ('photos/**/*.jpg') or a list file",
    )
    parser.add_argument("-o", "--output", metavar="OUT", help="output file, .npz or .safetensors (written atomically)")
    parser.add_argument(
        "--out-dir",
        metavar="DIR",
        help="a feature folder for a dataset: shards, index.parquet, manifest.json, errors.jsonl (resumable)",
    )
    dataset = parser.add_argument_group("dataset (with --out-dir)")
    add_options(dataset, DatasetOptions, exclude=_TRACK_ONLY)
    add_extractor_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from dinofeat.cli.common import extractor_options, make_extractor, options_from, summary
    from dinofeat.errors import InputError
    from dinofeat.features.files import FEATURE_SUFFIXES, extract_to_file
    from dinofeat.io.images import load_image
    from dinofeat.io.outputs import check_outputs, check_suffix

    options = extractor_options(args)
    dataset = options_from(args, DatasetOptions)
    if args.out_dir:
        if args.output:
            raise InputError("give -o OUT (one file) or --out-dir DIR (a dataset), not both")
        return _run_dataset(args, options, dataset)
    if not args.output:
        raise InputError("nothing to write: give -o OUT.npz|.safetensors, or --out-dir DIR for a dataset")
    if dataset != DatasetOptions():
        raise InputError("the dataset options (--engine, --dtype, --pca, ...) need --out-dir DIR")
    check_suffix(args.output, FEATURE_SUFFIXES, "output")
    check_outputs([args.output], inputs=args.images)
    images = [load_image(path) for path in args.images]
    extractor = make_extractor(options, args)
    maps = extract_to_file(images, args.output, extractor)
    grids = sorted({f"{m.grid_hw[1]}x{m.grid_hw[0]}" for m in maps})
    summary(args, f"{len(maps)} image(s), {', '.join(grids)} patches x {maps[0].dim} -> {args.output}")
    return 0


def _run_dataset(args: argparse.Namespace, options, dataset: DatasetOptions) -> int:
    from dinofeat.cli.common import progress_bar, summary
    from dinofeat.dataset.runs import extract_dataset

    with progress_bar(args, "extracting", "image") as bar:
        result = extract_dataset(args.images, args.out_dir, options, dataset, progress=bar)
    summary(args, f"{result.summary()} -> {args.out_dir}")
    return 0 if result.ok else 1
