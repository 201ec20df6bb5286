"""``dinofeat track``: follow points through a video; write a video with trails, JSON and/or CSV."""

from __future__ import annotations

import argparse

from dinofeat.cli.common import add_feature_options, add_model_options, positive_int

# Same values as dinofeat.tracking's defaults (not imported: keeps --help free of torch).
DEFAULT_MIN_SCORE = 0.5
DEFAULT_TRAIL = 12
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "track", help="follow points through a video (video with trails, JSON, CSV)",
        description="Track points through VIDEO by DINOv2 feature similarity: each point's feature is "
        "sampled at its exact position, searched near its last position (globally when the window holds "
        "no good match), refined to sub-patch precision, and marked not visible when the match is weak "
        "or not cycle-consistent. Coordinates are pixels of the original video (x right, y down, "
        "centre of the top-left pixel = 0,0); frame indices count from 0 in the video.",
    )
    parser.add_argument("video", metavar="VIDEO", help="input video (any container/codec FFmpeg reads)")
    queries = parser.add_argument_group("points (any combination)")
    queries.add_argument("--point", action="append", metavar="X,Y",  # parsed in run(): one-line errors
                         help="a point in the first processed frame (frame 0 unless --start); repeatable")
    queries.add_argument("--query", action="append", metavar="T,X,Y",
                         help="a point in frame T; tracked forward from T (not visible before); repeatable")
    queries.add_argument("--points-file", metavar="FILE",
                         help="points: JSON list of [x, y] or [t, x, y], or CSV lines x,y or t,x,y")
    queries.add_argument("--grid", type=positive_int, metavar="N",
                         help="an N x N grid of points over the first processed frame")
    outputs = parser.add_argument_group("outputs (at least one)")
    outputs.add_argument("-o", "--output", metavar="OUT.mp4",
                         help="video with each point in its own colour and a fading trail; H.264 yuv420p, "
                         f"same size and fps as the input ({', '.join(VIDEO_SUFFIXES)})")
    outputs.add_argument("--json", metavar="OUT.json", help="tracks as JSON: one entry per processed frame")
    outputs.add_argument("--csv", metavar="OUT.csv", help="tracks as CSV rows: track,frame,x,y,score,visible")
    outputs.add_argument("--trail", type=int, default=DEFAULT_TRAIL, metavar="N",
                         help="trail length in processed frames in the output video (0: none; default: %(default)s)")
    frames = parser.add_argument_group("frames")
    frames.add_argument("--start", type=int, default=0, metavar="T", help="first frame to process (default: 0)")
    frames.add_argument("--max-frames", type=positive_int, metavar="N", help="process at most N frames")
    frames.add_argument("--every", type=positive_int, default=1, metavar="K",
                        help="process every K-th frame (default: 1; raise --window with it)")
    tracking = parser.add_argument_group("tracking")
    tracking.add_argument("--window", type=float, metavar="R",
                          help="search radius around the last position, in video pixels (default: 4 patches)")
    tracking.add_argument("--min-score", type=float, default=DEFAULT_MIN_SCORE, metavar="S",
                          help="cosine below which a match is weak: global search, and not visible "
                          "(default: %(default)s)")
    tracking.add_argument("--cycle-tolerance", type=float, metavar="PX",
                          help="a match found back in the query frame must land this close to the query point "
                          "to be visible, in video pixels (default: 1.5 patches; 'inf' turns the check off)")
    tracking.add_argument("--template", choices=("anchored", "fixed"), default="anchored",
                          help="anchored: follow slow appearance changes, anchored to the query feature; "
                          "fixed: the query feature only (default: %(default)s)")
    tracking.add_argument("--batch-size", type=positive_int, default=8, metavar="B",
                          help="frames per forward pass (default: %(default)s)")
    add_feature_options(parser)
    add_model_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    import contextlib
    import json
    import math
    import sys
    from collections import deque
    from pathlib import Path

    import numpy as np
    from tqdm import tqdm

    from dinofeat.errors import InputError
    from dinofeat.outputs import check_writable, staged_outputs

    outputs = [path for path in (args.output, args.json, args.csv) if path]
    if not outputs:
        raise InputError("nothing to write: give -o OUT.mp4, --json OUT.json and/or --csv OUT.csv")
    if len({str(Path(p).resolve()) for p in outputs}) < len(outputs):
        raise InputError("-o, --json and --csv must name different files")
    if args.output and not args.output.lower().endswith(VIDEO_SUFFIXES):
        raise InputError(f"output video must end in {', '.join(VIDEO_SUFFIXES)}, got {args.output}")
    if args.start < 0:
        raise InputError(f"--start must be a non-negative frame index, got {args.start}")
    if args.trail < 0:
        raise InputError(f"--trail must be 0 or more frames, got {args.trail}")
    if args.window is not None and not (math.isfinite(args.window) and args.window > 0):
        raise InputError(f"--window must be a positive number of pixels, got {args.window}")
    if args.cycle_tolerance is not None and not args.cycle_tolerance > 0:
        raise InputError(f"--cycle-tolerance must be a positive number of pixels, got {args.cycle_tolerance}")
    if not math.isfinite(args.min_score):
        raise InputError(f"--min-score must be a number, got {args.min_score}")
    for path in outputs:
        check_writable(path)

    from dinofeat.tracking import check_queries, processed_frame_indices
    from dinofeat.video import probe_video

    info = probe_video(args.video)
    indices = processed_frame_indices(info.frames, start=args.start, max_frames=args.max_frames, every=args.every)
    if len(indices) == 0:
        raise InputError(f"--start {args.start} is past the end of the video ({info.frames} frames)")
    queries = check_queries(_collect_queries(args, indices[0], info.size_wh), indices, info.size_wh)

    from dinofeat.cli.common import make_extractor
    from dinofeat.drawing import draw_tracks, palette
    from dinofeat.tracking import Tracks, track_frames
    from dinofeat.video import VideoWriter, read_frames

    extractor = make_extractor(args, batch_size=args.batch_size)
    colors = palette(len(queries))
    trail = deque(maxlen=max(1, args.trail + 1))  # positions of the last frames, current one included
    steps = []
    frames = read_frames(args.video, start=args.start, max_frames=args.max_frames, every=args.every)
    options = dict(window=args.window, min_score=args.min_score, cycle_tolerance=args.cycle_tolerance,
                   template=args.template)
    with staged_outputs([args.output, args.json, args.csv]) as (video_tmp, json_tmp, csv_tmp):
        writer = VideoWriter(video_tmp, info.fps, info.size_wh) if video_tmp else None
        with (writer or contextlib.nullcontext()), tqdm(total=len(indices), unit="frame", disable=None, file=sys.stderr,
                                          desc="tracking", leave=False) as bar:
            for step in track_frames(frames, queries, extractor, **options):
                if writer is not None:
                    trail.append((step.points_xy, step.visible))
                    trail_xy = np.stack([xy for xy, _ in trail])
                    trail_visible = np.stack([v for _, v in trail])
                    writer.write(draw_tracks(step.image, trail_xy, trail_visible, colors))
                step.image = None
                steps.append(step)
                bar.update()
        tracks = Tracks.from_steps(queries, steps)
        if json_tmp is not None:
            document = tracks.to_json(model=extractor.spec.name, video_path=args.video, fps=info.fps,
                                      size_wh=info.size_wh)
            json_tmp.write_text(json.dumps(document) + "\n")
        if csv_tmp is not None:
            tracks.write_csv(csv_tmp)
    return 0


def _collect_queries(args, first_frame: int, size_wh: tuple[int, int]) -> list[tuple[float, float, float]]:
    """All query points as ``(t, x, y)``: --point and --grid at ``first_frame``, --query, --points-file."""
    from dinofeat.cli.common import point_xy, query_txy, read_points_file
    from dinofeat.errors import InputError

    queries: list[tuple[float, float, float]] = []
    for text in args.point or []:
        try:
            x, y = point_xy(text)
        except argparse.ArgumentTypeError as err:
            raise InputError(f"--point: {err}") from None
        queries.append((first_frame, x, y))
    for text in args.query or []:
        try:
            queries.append(query_txy(text))
        except argparse.ArgumentTypeError as err:
            raise InputError(f"--query: {err}") from None
    if args.points_file:
        queries += [(first_frame, *row) if len(row) == 2 else row for row in read_points_file(args.points_file, with_frames=True)]
    if args.grid is not None:
        from dinofeat.matching import grid_points

        queries += [(first_frame, x, y) for x, y in grid_points(size_wh, args.grid).tolist()]
    if not queries:
        raise InputError("no points to track: give --point X,Y, --query T,X,Y, --points-file FILE or --grid N")
    return queries
