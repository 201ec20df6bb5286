"""``dinofeat match``: correspondences between two images, drawn and/or written as JSON."""

from __future__ import annotations

import argparse

from dinofeat.cli.common import add_feature_options, add_model_options, point_xy, positive_int, read_points_file

DEFAULT_AUTO = 20  # same as dinofeat.matching.DEFAULT_AUTO (not imported: keeps --help free of torch)


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "match", help="find where points of image A are in image B (sub-patch precision)",
        description="Match points of IMAGE_A into IMAGE_B by DINOv2 feature similarity. Query points "
        "come from --point/--points-file, --grid or --auto (default: --auto 20). Each query feature is "
        "sampled at its exact position and found anywhere in B to sub-pixel precision. Coordinates are "
        "pixels of the original images (x right, y down, centre of the top-left pixel = 0,0). "
        "Without -o or --json the JSON goes to standard output.",
    )
    parser.add_argument("image_a", metavar="IMAGE_A", help="image with the query points")
    parser.add_argument("image_b", metavar="IMAGE_B", help="image searched")
    queries = parser.add_argument_group("query points (one way)")
    queries.add_argument("--point", action="append", metavar="X,Y",  # parsed in run(): one-line errors
                         help="a query point in IMAGE_A pixels; repeat for several")
    queries.add_argument("--points-file", metavar="FILE",
                         help="query points: a JSON list of [x, y] pairs, or CSV lines x,y (header optional)")
    queries.add_argument("--grid", type=positive_int, metavar="N", help="an N x N regular grid of points over IMAGE_A")
    queries.add_argument("--auto", type=positive_int, metavar="K",
                         help=f"K distinctive, well-spread points (mutual nearest patches; default {DEFAULT_AUTO})")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("-o", "--output", metavar="OUT.png",
                         help="picture: A and B side by side, each match a coloured line (.png, .jpg, .webp)")
    outputs.add_argument("--json", metavar="OUT.json", help="matches as JSON, in query order")
    outputs.add_argument("--color-by", choices=("index", "score"), default="index",
                         help="line colours: one per match, or by cosine score (default: %(default)s)")
    outputs.add_argument("--height", type=positive_int, metavar="PX",
                         help="height of the picture (default: the taller image, within 360..1440)")
    outputs.add_argument("--heatmap", action="store_true",
                         help="with a single query point: show its similarity over IMAGE_B in the picture")
    checks = parser.add_argument_group("matching and checks")
    checks.add_argument("--pca-dim", type=positive_int, metavar="K",
                        help="match in the K-dim space of a PCA fitted on both images' features jointly")
    checks.add_argument("--mutual", action="store_true",
                        help="keep only mutual matches (the match found back lands on the query's patch)")
    checks.add_argument("--ratio", type=float, metavar="R",
                        help="keep only matches passing Lowe's ratio test, best/runner-up distance < R (e.g. 0.9)")
    checks.add_argument("--ransac", choices=("homography", "fundamental"),
                        help="verify with a RANSAC model (OpenCV USAC MAGSAC) and keep only its inliers")
    checks.add_argument("--ransac-threshold", type=float, metavar="PX",
                        help="RANSAC inlier threshold in IMAGE_B pixels (default: half a patch)")
    add_feature_options(parser)
    add_model_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    import json
    import logging
    import math
    import sys

    from dinofeat.errors import InputError
    from dinofeat.images import load_image
    from dinofeat.outputs import check_writable, format_json, staged_outputs

    if args.output and not args.output.lower().endswith((".png", ".jpg", ".jpeg", ".webp")):
        raise InputError(f"picture must end in .png, .jpg or .webp, got {args.output}")
    if args.json and args.output and args.json == args.output:
        raise InputError("--json and -o name the same file")
    if args.ratio is not None and not (math.isfinite(args.ratio) and args.ratio > 0):
        raise InputError(f"--ratio must be a positive number, got {args.ratio}")
    if args.ransac_threshold is not None and not (math.isfinite(args.ransac_threshold) and args.ransac_threshold > 0):
        raise InputError(f"--ransac-threshold must be a positive number of pixels, got {args.ransac_threshold}")
    for path in (args.output, args.json):
        if path:
            check_writable(path)
    points = []
    for text in args.point or []:
        try:
            points.append(point_xy(text))
        except argparse.ArgumentTypeError as err:
            raise InputError(f"--point: {err}") from None
    if args.points_file:
        points += read_points_file(args.points_file)
    ways = [name for name, used in (("--point/--points-file", bool(args.point or args.points_file)),
                                    ("--grid", args.grid is not None), ("--auto", args.auto is not None)) if used]
    if len(ways) > 1:
        raise InputError(f"give query points in one way only, got {' and '.join(ways)}")
    if args.heatmap:
        if len(points) != 1:
            raise InputError("--heatmap needs exactly one query point (--point X,Y)")
        if not args.output:
            raise InputError("--heatmap draws into the picture: give -o OUT.png")

    image_a, image_b = load_image(args.image_a), load_image(args.image_b)
    from dinofeat.matching import check_points, match_features, matches_json, similarity_image

    if points:
        check_points(points, (image_a.shape[1], image_a.shape[0]), label=f"image A ({args.image_a})")

    from dinofeat.cli.common import make_extractor

    extractor = make_extractor(args)
    fa, fb = extractor.extract_arrays([image_a, image_b])
    matches = match_features(fa, fb, points or None, grid=args.grid, auto=args.auto, pca_dim=args.pca_dim,
                             require_mutual=args.mutual, max_ratio=args.ratio, ransac=args.ransac,
                             ransac_threshold=args.ransac_threshold)
    kept = int(matches.keep.sum())
    logging.getLogger("dinofeat").info("%d matches, %d kept", len(matches), kept)
    if len(matches) and not kept:
        logging.getLogger("dinofeat").warning("no match passed the checks asked for; the picture shows none")
    document = matches_json(matches, model=extractor.spec.name, path_a=args.image_a, path_b=args.image_b,
                            settings=_settings(args, extractor), verified=args.ransac is not None)
    text = format_json(document)
    picture = None
    if args.output:
        from dinofeat.drawing import draw_heatmap, draw_matches

        shown_b = image_b
        if args.heatmap:
            shown_b = draw_heatmap(image_b, similarity_image(fa, fb, matches.source_xy[:1], args.pca_dim),
                                   point_xy=matches.target_xy[0].tolist())
        picture = draw_matches(image_a, shown_b, matches, color_by=args.color_by, height=args.height,
                               mask=matches.keep.numpy())
    with staged_outputs([args.output, args.json]) as (picture_tmp, json_tmp):
        if picture_tmp is not None:
            from PIL import Image

            Image.fromarray(picture).save(picture_tmp)
        if json_tmp is not None:
            json_tmp.write_text(text)
    if not args.output and not args.json:
        sys.stdout.write(text)
    return 0


def _settings(args: argparse.Namespace, extractor) -> dict:
    if args.point or args.points_file:
        queries = {"queries": "points"}
    elif args.grid:
        queries = {"queries": "grid", "grid": args.grid}
    else:
        queries = {"queries": "auto", "auto": args.auto or DEFAULT_AUTO}
    return {
        **queries, "resolution": args.resolution, "max_size": args.max_size, "stride": extractor.stride,
        "layers": list(extractor.layers), "facet": extractor.facet, "pca_dim": args.pca_dim,
        "mutual": args.mutual, "ratio": args.ratio, "ransac": args.ransac,
        "ransac_threshold": args.ransac_threshold,
    }
