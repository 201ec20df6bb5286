"""``dinofeat eval tapvid|spair|davis``: accuracy on the field's benchmarks, measured as the papers do."""

from __future__ import annotations

import argparse
import sys

from dinofeat.cli.common import (
    FRAMES_BATCH_HELP,
    add_extractor_options,
    add_options,
    extractor_options,
    make_extractor,
    options_from,
    progress_bar,
    summary,
)
from dinofeat.errors import InputError
from dinofeat.eval.sweeps import parse_sweeps
from dinofeat.options import (
    DAVIS_RESOLUTION,
    SPAIR_RESOLUTION,
    TAPVID_RESOLUTION,
    DavisOptions,
    MatchOptions,
    SegmentOptions,
    SPairOptions,
    TapVidOptions,
    TrackerOptions,
)
from dinofeat.wording import plural


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "eval",
        help="measure accuracy on TAP-Vid (tracking), SPair-71k (keypoint transfer) or DAVIS 2017 (segmentation)",
        description="Run dinofeat's tracker on TAP-Vid, its matcher on SPair-71k or its label propagation on "
        "DAVIS 2017 and score the answers with the benchmarks' reference metrics. `dinofeat eval tapvid "
        "--help`, `dinofeat eval spair --help` and `dinofeat eval davis --help` say more.",
    )
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", parser_class=type(parser))
    benchmarks.required = True
    _add_tapvid(benchmarks)
    _add_spair(benchmarks)
    _add_davis(benchmarks)
    return parser


def _add_tapvid(benchmarks) -> None:
    parser = benchmarks.add_parser(
        "tapvid",
        help="point tracking on TAP-Vid (DAVIS, Kinetics, RGB-Stacking pickles)",
        description="Track TAP-Vid's query points with dinofeat's tracker (forward and backward from each "
        "query frame) and score them as google-deepmind/tapnet's reference does: frames resized to 256x256 "
        "and metrics in that raster (or --full-resolution), occlusion accuracy, points within 1/2/4/8/16 px, "
        "Jaccard, and their averages (AJ, delta_avg), per video then averaged. The pickle is read without "
        "running any code it names. A table goes to standard output.",
    )
    parser.add_argument("file", metavar="FILE.pkl", help="an official TAP-Vid pickle, or a folder of them")
    add_options(parser, TapVidOptions)
    parser.add_argument(
        "--json", metavar="OUT.json", help="per-video query points, predictions and metrics, and the mean"
    )
    parser.add_argument(
        "--sweep",
        action="append",
        metavar="NAME=START:STOP:STEP",
        help="re-run the tracker for each value of a tracker option and report AJ per setting, e.g. "
        "min_score=0.3:0.8:0.05 or cycle_tolerance=7:28:7 (repeat to sweep several: every combination)",
    )
    tracking = parser.add_argument_group("tracking")
    add_options(tracking, TrackerOptions, exclude=("backward",))
    add_extractor_options(parser, batch_help=FRAMES_BATCH_HELP, resolution=TAPVID_RESOLUTION)


def _add_spair(benchmarks) -> None:
    parser = benchmarks.add_parser(
        "spair",
        help="semantic keypoint transfer on SPair-71k (PCK@alpha)",
        description="Transfer each source keypoint of SPair-71k's pairs into the target image with "
        "dinofeat's matcher (exact sub-pixel search; options as in `dinofeat match`) and report PCK@alpha "
        "(threshold alpha * max(w, h) of the target box, in original target pixels) per point and per "
        "image, overall and per category, as DIFT and the DINOv2 papers do. Matches failing a check you "
        "ask for (--mutual, --ratio, --ransac) count as misses. A table goes to standard output.",
    )
    parser.add_argument("folder", metavar="DIR", help="the SPair-71k folder (PairAnnotation/, JPEGImages/)")
    add_options(parser, SPairOptions)
    parser.add_argument("--json", metavar="OUT.json", help="per-pair predictions and the PCK tables")
    checks = parser.add_argument_group("matching and checks")
    add_options(checks, MatchOptions, "pca_dim", "require_mutual", "max_ratio", "ransac", "ransac_threshold")
    add_extractor_options(parser, resolution=SPAIR_RESOLUTION)


def _add_davis(benchmarks) -> None:
    parser = benchmarks.add_parser(
        "davis",
        help="video object segmentation on DAVIS 2017 (J&F)",
        description="Segment every sequence of a DAVIS 2017 semi-supervised set from its first annotation "
        "by label propagation (as facebookresearch/dino's eval_video_segmentation.py: the first frame and "
        "the last N frames as context, top-k most similar patches within a radius, weights exp(cos/T)) "
        "and score the masks as davisvideochallenge/davis2017-evaluation does: J (IoU) and F (boundary "
        "F-measure) per object over every frame but the first and the last, their mean, recall and "
        "decay, and J&F-Mean over all objects. A table goes to standard output.",
    )
    parser.add_argument(
        "root", metavar="ROOT", help="the DAVIS folder (JPEGImages/480p, Annotations/480p, ImageSets/2017)"
    )
    add_options(parser, DavisOptions)
    parser.add_argument(
        "--results-dir",
        metavar="DIR",
        help="write the masks in the official results layout (DIR/<sequence>/<frame>.png, indexed PNGs in "
        "the DAVIS palette) so the official evaluator can score them too",
    )
    parser.add_argument("--json", metavar="OUT.json", help="J and F statistics per object and the means")
    parser.add_argument(
        "--sweep",
        action="append",
        metavar="NAME=START:STOP:STEP",
        help="re-run the propagation for each value of a propagation option and report J&F per setting, "
        "e.g. top_k=1:10:1 or temperature=0.05,0.1,0.2 (repeat to sweep several: every combination)",
    )
    propagation = parser.add_argument_group("propagation")
    add_options(propagation, SegmentOptions, *PROPAGATION_FLAGS)
    add_extractor_options(parser, batch_help=FRAMES_BATCH_HELP, resolution=DAVIS_RESOLUTION)


#: The :class:`SegmentOptions` fields ``eval davis`` takes flags for (those propagation reads).
PROPAGATION_FLAGS = ("context_frames", "top_k", "radius", "temperature")


def run(args: argparse.Namespace) -> int:
    runners = {"tapvid": _run_tapvid, "spair": _run_spair, "davis": _run_davis}
    return runners[args.benchmark](args)


def _run_tapvid(args: argparse.Namespace) -> int:
    # lazy: --help stays fast (torch)
    from dinofeat.eval.evaluation import evaluate_tapvid_file, sweep_tapvid, sweep_trackers, tapvid_sweep_json

    # lazy: --help stays fast (numpy, PIL)
    from dinofeat.eval.tapvid import read_tapvid

    # lazy: --help stays fast (numpy, PIL)
    from dinofeat.io.outputs import check_outputs, check_suffix

    model = extractor_options(args)
    options = options_from(args, TapVidOptions)
    tracker = options_from(args, TrackerOptions)
    grid = parse_sweeps(args.sweep) if args.sweep else None
    if grid is not None:
        sweep_trackers(grid, tracker)  # names and values checked before any work
    check_suffix(args.json, (".json",), "--json")
    check_outputs([args.json], inputs=[args.file])
    if grid is None:
        extractor = make_extractor(model)
        with progress_bar(args, "evaluating", "video") as bar:
            report = evaluate_tapvid_file(args.file, extractor, options, tracker, progress=bar)
        document, table = report.to_json(), report.format_table()
        line = (
            f"{plural(len(report.videos), 'video')}, AJ {100 * report.mean['average_jaccard']:.1f}, "
            f"delta_avg {100 * report.mean['average_pts_within_thresh']:.1f}"
        )
    else:
        videos = read_tapvid(args.file)
        extractor = make_extractor(model)
        with progress_bar(args, "sweeping", "run") as bar:
            sweep = sweep_tapvid(videos, extractor, grid, options, tracker, progress=bar)
        document = tapvid_sweep_json(sweep, extractor, options)
        table = sweep.format_table()
        line = f"{len(sweep.runs)} settings, best {sweep.best().settings}"
    _write(args, document, table)
    summary(args, line + (f" -> {args.json}" if args.json else ""))
    return 0


def _run_spair(args: argparse.Namespace) -> int:
    # lazy: --help stays fast (torch)
    from dinofeat.eval.evaluation import evaluate_spair_folder

    # lazy: --help stays fast (numpy, PIL)
    from dinofeat.io.outputs import check_outputs, check_suffix

    model = extractor_options(args)
    options = options_from(args, SPairOptions)
    matching = options_from(args, MatchOptions)
    check_suffix(args.json, (".json",), "--json")
    check_outputs([args.json])
    extractor = make_extractor(model)
    with progress_bar(args, "evaluating", "pair") as bar:
        report = evaluate_spair_folder(args.folder, extractor, options, matching, progress=bar)
    _write(args, report.to_json(), report.format_table())
    key = f"PCK@{options.alphas[0]:g}"
    per_point = report.overall["per_point"].get(key, float("nan"))
    summary(
        args,
        f"{plural(len(report.pairs), 'pair')}, {key} per point {100 * per_point:.1f}"
        + (f" -> {args.json}" if args.json else ""),
    )
    return 0


def _run_davis(args: argparse.Namespace) -> int:
    # lazy: --help stays fast (numpy, PIL)
    from dinofeat.eval.davis import check_results_dir, evaluate_davis, read_davis

    # lazy: --help stays fast (torch)
    from dinofeat.eval.evaluation import davis_sweep_json, segmenter_fn, sweep_davis, sweep_segmenters

    # lazy: --help stays fast (numpy, PIL)
    from dinofeat.io.outputs import check_outputs, check_suffix

    model = extractor_options(args)
    options = options_from(args, DavisOptions)
    segment = options_from(args, SegmentOptions)
    grid = parse_sweeps(args.sweep) if args.sweep else None
    if grid is not None:
        sweep_segmenters(grid, segment)  # names and values checked before any work
        if args.results_dir:
            raise InputError("--results-dir writes one setting's masks: leave it out with --sweep")
    check_suffix(args.json, (".json",), "--json")
    check_outputs([args.json], inputs=[args.root])
    if args.results_dir:
        check_results_dir(args.results_dir, args.root)
    sequences = read_davis(args.root, subset=options.subset, sequences=options.sequences)
    extractor = make_extractor(model, args)
    if grid is None:
        with progress_bar(args, "evaluating", "frame") as bar:
            report = evaluate_davis(
                sequences, segmenter_fn(extractor, segment), results_dir=args.results_dir, progress=bar
            )
        document, table = report.to_json(), report.format_table()
        mean = report.mean
        line = (
            f"{_count(len(report.sequences), 'sequence')}, {_count(len(report.objects), 'object')}, "
            f"J&F {100 * mean.jf:.1f} (J {100 * mean.j.mean:.1f}, F {100 * mean.f.mean:.1f})"
        )
        if args.results_dir:
            line += f", masks in {args.results_dir}"
    else:
        with progress_bar(args, "sweeping", "run") as bar:
            sweep = sweep_davis(sequences, extractor, grid, segment, progress=bar)
        document, table = davis_sweep_json(sweep, extractor, options), sweep.format_table()
        line = f"{len(sweep.runs)} settings, best {sweep.best().settings}"
    _write(args, document, table)
    summary(args, line + (f" -> {args.json}" if args.json else ""))
    return 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _write(args: argparse.Namespace, document: dict, table: str) -> None:
    # lazy: --help stays fast (numpy, PIL)
    from dinofeat.io.outputs import format_json, staged_outputs

    if args.json:
        with staged_outputs([args.json]) as (tmp,):
            tmp.write_text(format_json(document))
    sys.stdout.write(table + "\n")
