"""``dinofeat track``: follow points through a video; write a video with trails, JSON and/or CSV."""

from __future__ import annotations

import argparse

from dinofeat.cli.common import (
    FRAMES_BATCH_HELP,
    add_extractor_options,
    add_options,
    extractor_options,
    make_extractor,
    options_from,
    parse_each,
    point_xy,
    progress_bar,
    query_txy,
    summary,
)
from dinofeat.errors import InputError
from dinofeat.io.suffixes import VIDEO_OUTPUTS
from dinofeat.options import (
    DEFAULT_MIN_SCORE,
    DEFAULT_TRAIL,
    DatasetOptions,
    FrameOptions,
    TrackerOptions,
    TrackGridOptions,
    TrailOptions,
)

VIDEO_SUFFIXES = VIDEO_OUTPUTS  # the videos -o writes
__all__ = ["DEFAULT_MIN_SCORE", "DEFAULT_TRAIL", "VIDEO_SUFFIXES", "add_parser", "run"]
#: DatasetOptions fields that are about feature folders only.
_IMAGES_ONLY = ("dtype", "pca", "pca_sample", "shard_size", "decode_threads")


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "track",
        help="follow points through a video (video with trails, JSON, CSV)",
        description="Track points through VIDEO by DINO feature similarity: each point's feature is "
        "sampled at its exact position, searched near its last position (globally when the window holds "
        "no good match) to 1/4 model pixel, and marked not visible when the match is weak "
        "or not cycle-consistent. Coordinates are pixels of the original video (x right, y down, "
        "centre of the top-left pixel = 0,0); frame indices count from 0 in the video.",
    )
    parser.add_argument(
        "video",
        nargs="+",
        metavar="VIDEO",
        help="input video (any container/codec FFmpeg reads); with --out-dir a dataset: videos, a folder "
        "(searched recursively), a quoted glob or a list file (.txt, or .csv/.parquet with a 'path' column "
        "and an optional 'points' column naming each video's points file)",
    )
    queries = parser.add_argument_group("points (any combination)")
    queries.add_argument(
        "--point",
        action="append",
        metavar="X,Y",  # parsed in run(): one-line errors
        help="a point in the first processed frame (frame 0 unless --start); repeatable",
    )
    queries.add_argument(
        "--query",
        action="append",
        metavar="T,X,Y",
        help="a point in frame T; tracked forward from T (and back to the first frame with --backward; "
        "otherwise not visible before T); repeatable",
    )
    queries.add_argument(
        "--points-file",
        metavar="FILE",
        help="points: JSON list of [x, y] or [t, x, y], or CSV lines x,y or t,x,y; with --out-dir, one file "
        "for every video or a folder of them matched by each video's path (clips/a.mp4 -> FOLDER/clips/a.json "
        "or .csv)",
    )
    add_options(queries, TrackGridOptions)
    outputs = parser.add_argument_group("outputs (at least one)")
    outputs.add_argument(
        "-o",
        "--output",
        metavar="OUT.mp4",
        help="video with each point in its own colour and a fading trail; H.264 yuv420p (4:4:4 for an odd "
        "width or height), "
        f"same size as the input, at fps / --every ({', '.join(VIDEO_SUFFIXES)})",
    )
    outputs.add_argument("--json", metavar="OUT.json", help="tracks as JSON: one entry per processed frame")
    outputs.add_argument("--csv", metavar="OUT.csv", help="tracks as CSV rows: track,frame,x,y,score,visible,time_s")
    outputs.add_argument(
        "--out-dir",
        metavar="DIR",
        help="a dataset's outputs: DIR/tracks/<name>.json (and --outputs csv mp4) per video, named by its path, "
        "plus manifest.json and errors.jsonl; rerunning resumes",
    )
    add_options(outputs, TrailOptions)
    dataset = parser.add_argument_group("dataset (with --out-dir)")
    add_options(dataset, DatasetOptions, exclude=_IMAGES_ONLY)
    frames = parser.add_argument_group("frames")
    add_options(
        frames,
        FrameOptions,
        every="process every K-th frame; raise --window with it; the output video "
        "is written at fps / K so it plays at the input's speed (default: 1)",
    )
    tracking = parser.add_argument_group("tracking")
    add_options(tracking, TrackerOptions)
    add_extractor_options(parser, batch_help=FRAMES_BATCH_HELP)
    return parser


def run(args: argparse.Namespace) -> int:
    from dinofeat.jobs.track import TrackJob  # lazy: --help stays fast (torch)

    model = extractor_options(args)
    tracker = options_from(args, TrackerOptions)
    frames = options_from(args, FrameOptions)
    trail = options_from(args, TrailOptions)
    grid = options_from(args, TrackGridOptions).grid
    dataset = options_from(args, DatasetOptions)
    if args.out_dir:
        return _run_dataset(args, model, tracker, frames, trail, dataset)
    if dataset != DatasetOptions():
        raise InputError("the dataset options (--engine, --outputs, ...) need --out-dir DIR")
    if len(args.video) > 1:
        raise InputError(f"give one VIDEO, or --out-dir DIR to track {len(args.video)} videos as a dataset")
    points, queries = _parse_points(args)
    job = TrackJob(
        args.video[0],
        output=args.output,
        json=args.json,
        csv=args.csv,
        points_xy=points,
        queries_txy=queries,
        points_file=args.points_file,
        grid=grid,
        tracker=tracker,
        frames=frames,
        trail=trail,
    )
    job.check()
    with progress_bar(args, "tracking", "frame") as bar:
        tracks = job.run(make_extractor(model, args, within=bar), bar)
    summary(args, job.summary(tracks))
    return 0


def _run_dataset(args, model, tracker, frames, trail, dataset: DatasetOptions) -> int:
    # lazy: --help stays fast (torch)
    from dinofeat.dataset.runs import QuerySpec, track_dataset

    given = [flag for flag, value in (("-o", args.output), ("--json", args.json), ("--csv", args.csv)) if value]
    if given:
        raise InputError(f"{given[0]} names one file; with --out-dir choose the files with --outputs json csv mp4")
    points, queries = _parse_points(args)
    spec = QuerySpec(tuple(points), tuple(queries), args.points_file, args.grid)
    with progress_bar(args, "tracking", "video") as bar:
        result = track_dataset(
            args.video, args.out_dir, spec, model, dataset, tracker=tracker, frames=frames, trail=trail, progress=bar
        )
    summary(args, f"{result.summary()} -> {args.out_dir}")
    return 0 if result.ok else 1


def _parse_points(args) -> tuple[list[tuple[float, float]], list[tuple[int, float, float]]]:
    """--point X,Y and --query T,X,Y texts as numbers (one-line errors)."""
    return parse_each(args.point, point_xy, "--point"), parse_each(args.query, query_txy, "--query")
