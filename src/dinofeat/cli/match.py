"""``dinofeat match``: correspondences between two images, drawn and/or written as JSON."""

from __future__ import annotations

import argparse
import sys

from dinofeat.cli.common import (
    add_extractor_options,
    add_features_option,
    add_options,
    extractor_options,
    make_extractor,
    open_feature_folder,
    options_from,
    parse_each,
    point_xy,
    summary,
)
from dinofeat.options import DEFAULT_AUTO, MatchDrawingOptions, MatchOptions


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "match",
        help="find where points of image A are in image B (sub-pixel precision)",
        description="Match points of IMAGE_A into IMAGE_B by DINO feature similarity. Query points "
        f"come from --point/--points-file, --grid or --auto (default: --auto {DEFAULT_AUTO}). Each query feature "
        "is sampled at its exact position and its best match searched over all of B to 1/4 model pixel. "
        "Coordinates are pixels of the original images (x right, y down, centre of the top-left pixel = 0,0). "
        "Without -o or --json the JSON goes to standard output.",
    )
    parser.add_argument("image_a", metavar="IMAGE_A", help="image with the query points")
    parser.add_argument("image_b", metavar="IMAGE_B", help="image searched")
    queries = parser.add_argument_group("query points (one way)")
    queries.add_argument(
        "--point",
        action="append",
        metavar="X,Y",  # parsed in run(): one-line errors
        help="a query point in IMAGE_A pixels; repeat for several",
    )
    queries.add_argument(
        "--points-file",
        metavar="FILE",
        help="query points: a JSON list of [x, y] pairs, or CSV lines x,y (header optional)",
    )
    add_options(queries, MatchOptions, "grid", "auto")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument(
        "-o",
        "--output",
        metavar="OUT.png",
        help="picture: A and B side by side, each kept match a coloured line (.png, .jpg, .webp)",
    )
    outputs.add_argument("--json", metavar="OUT.json", help="matches as JSON, in query order")
    add_options(outputs, MatchDrawingOptions)
    checks = parser.add_argument_group("matching and checks")
    add_options(checks, MatchOptions, "pca_dim", "require_mutual", "max_ratio", "ransac", "ransac_threshold")
    add_extractor_options(parser)
    add_features_option(
        parser.add_argument_group("stored features"),
        "read A's and B's features from a feature folder (dinofeat extract --out-dir DIR) instead of running "
        "the model: IMAGE_A and IMAGE_B are its paths (as the folder lists them, or files below its dataset "
        "folder) and are read only for drawing; the model and feature options are the folder's",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    # lazy: --help stays fast (torch)
    from dinofeat.jobs.match import MatchJob

    model = extractor_options(args)
    options, drawing = options_from(args, MatchOptions), options_from(args, MatchDrawingOptions)
    points = parse_each(args.point, point_xy, "--point")
    images, source = (args.image_a, args.image_b), None
    if args.features:  # A's and B's maps come from the folder; its image files are read only for drawing
        _, source, images = open_feature_folder(args, [args.image_a, args.image_b])
    job = MatchJob(
        *images,
        points_xy=points or None,
        points_file=args.points_file,
        output=args.output,
        json=args.json,
        options=options,
        drawing=drawing,
        names=(args.image_a, args.image_b),
    )
    job.check()
    if source is None:
        source = make_extractor(model, args)
    result = job.run(source)
    if not result.written:
        sys.stdout.write(result.json_text())
    summary(args, result.summary())
    return 0
