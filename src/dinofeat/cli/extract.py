"""``dinofeat extract``: dense features of images to ``.npz`` or ``.safetensors``, or of a dataset to a folder."""

from __future__ import annotations

import argparse

from dinofeat.cli.common import (
    add_extractor_options,
    add_options,
    add_upsample_options,
    extractor_options,
    make_extractor,
    make_upsampler,
    options_from,
    progress_bar,
    summary,
    upsample_options,
)
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
        "errors.jsonl; rerunning the same command resumes. Read it back with dinofeat.open_features(DIR). "
        "With --upsample anyup the features are AnyUp's pixel-level ones (one per model pixel, or "
        "--upsample-scale S per patch side; with --out-dir S defaults to 2) and record their cell_size.",
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
    add_upsample_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    # lazy: --help stays fast (torch)
    from dinofeat.jobs.extract import ExtractJob

    options = extractor_options(args)
    upsample = upsample_options(args, options)
    dataset = options_from(args, DatasetOptions)
    job = ExtractJob(args.images, output=args.output, out_dir=args.out_dir, dataset=dataset)
    job.check()
    if job.is_dataset:
        make_upsampler(upsample, options)  # a missing or wrong weights file is found before the folder is claimed
        with progress_bar(args, "extracting", "image") as bar:
            report = job.run_dataset(options, progress=bar, upsample=upsample)
        summary(args, f"{report.summary()} -> {args.out_dir}")
        return 0 if report.ok else 1
    upsampler = make_upsampler(upsample, options)  # before the model: a missing file is found at once
    source = make_extractor(options, args)
    result = job.run(source if upsampler is None else upsampler.wrap(source, scale=upsample.upsample_scale))
    summary(args, result.summary())
    return 0
