"""``dinofeat match``: correspondences between two images, drawn and/or written as JSON."""

from __future__ import annotations

import argparse

from dinofeat.cli.common import add_extractor_options, add_features_option, add_options, open_feature_folder
from dinofeat.options import DEFAULT_AUTO, MatchDrawingOptions, MatchOptions

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


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
    import sys

    from dinofeat.cli.common import extractor_options, make_extractor, options_from, parse_each, point_xy, summary
    from dinofeat.errors import InputError
    from dinofeat.io.images import load_image
    from dinofeat.io.outputs import check_outputs, check_suffix, format_json
    from dinofeat.matching import match_images, write_match_files
    from dinofeat.points import read_points_file

    model = extractor_options(args)
    options = options_from(args, MatchOptions)
    drawing = options_from(args, MatchDrawingOptions)
    check_suffix(args.output, PICTURE_SUFFIXES, "the picture (-o)")
    check_suffix(args.json, (".json",), "--json")
    check_outputs([args.output, args.json], inputs=[args.image_a, args.image_b])
    points = parse_each(args.point, point_xy, "--point")
    if args.points_file:
        points += read_points_file(args.points_file)
    options.check_points_given(bool(points), "--point/--points-file")  # before the model loads
    if drawing.heatmap:
        if len(points) != 1:
            raise InputError("--heatmap needs exactly one query point (--point X,Y)")
        if not args.output:
            raise InputError("--heatmap draws into the picture: give -o OUT.png")

    if args.features:
        _, extractor, (file_a, file_b) = open_feature_folder(args, [args.image_a, args.image_b])
        image_a, image_b = load_image(file_a), load_image(file_b)
    else:
        image_a, image_b = load_image(args.image_a), load_image(args.image_b)
        extractor = make_extractor(model, args)
    result = match_images(
        image_a, image_b, points or None, extractor=extractor, options=options, names=(args.image_a, args.image_b)
    )
    write_match_files(result, picture=args.output, json_path=args.json, drawing=drawing)
    if not args.output and not args.json:
        sys.stdout.write(format_json(result.document))
    from dinofeat.matching import match_summary

    summary(args, match_summary(result, options, [args.output, args.json]))
    return 0
