"""``dinofeat segment``: masks from a mask or clicks, carried across images or through a video."""

from __future__ import annotations

import argparse

from dinofeat.cli.common import (
    FRAMES_BATCH_HELP,
    add_extractor_options,
    add_options,
    add_upsample_options,
    extractor_options,
    make_extractor,
    make_upsampler,
    options_from,
    parse_each,
    point_xy,
    progress_bar,
    query_txy,
    summary,
    upsample_options,
)
from dinofeat.dataset.listing import (
    VIDEO_SUFFIXES,  # inputs with these suffixes are read as videos (the rest as images)
)
from dinofeat.errors import InputError
from dinofeat.io.suffixes import VIDEO_OUTPUTS
from dinofeat.options import FrameOptions, SegmentOptions

__all__ = ["add_parser", "parse_click", "run"]

#: The largest object label a click may name (0 is the background, 255 void).
_MAX_CLICK_LABEL = 254


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "segment",
        help="masks from a mask or clicks, across images or through a video (overlay, mask PNGs, JSON)",
        description="Segment objects by DINO feature similarity. The first image (or processed frame) gets "
        "its labels from --mask or from clicks (--point on an object, --negative on the background: each "
        "patch joins the object whose clicked features it resembles). Every other image takes the first "
        "image's labels from its most similar patches; every later frame of a video takes them from the "
        "first frame and the last --context-frames frames, within --radius patches (label propagation, "
        "as DINO's DAVIS evaluation). With --upsample anyup the labels are still carried on the patch grid, "
        "and each image's are then brought to pixel level by AnyUp's attention (each pixel mixes its "
        "neighbouring patches' labels by how its image-guided features match theirs) before the argmax, so "
        "mask edges follow the image instead of the patch grid. "
        "Labels: 0 background, 1-254 objects, 255 void (ignored). "
        "Coordinates are pixels of the original image (x right, y down, centre of the top-left pixel = "
        "0,0); frame indices count from 0 in the video.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help=f"images (the first one is labelled), or one video ({' '.join(VIDEO_SUFFIXES[:5])} ...)",
    )
    first = parser.add_argument_group("first mask (one of)")
    first.add_argument(
        "--mask",
        metavar="MASK.png",
        help="labels of the first image or processed frame: an indexed (palette) or grayscale PNG of its "
        "size, 0 background, 1-254 objects, 255 void",
    )
    first.add_argument(
        "--point",
        action="append",
        metavar="X,Y[:LABEL]",  # parsed in run(): one-line errors
        help="a click on an object (LABEL 1-254, default 1) of the first image; for a video T,X,Y[:LABEL], "
        "every click on one frame T, where segmentation starts; repeatable",
    )
    first.add_argument(
        "--negative",
        action="append",
        metavar="X,Y",
        help="a click on the background, on the image or frame of the --point clicks (a video also takes "
        "T,X,Y); repeatable",
    )
    outputs = parser.add_argument_group("outputs (at least one)")
    outputs.add_argument(
        "-o",
        "--output",
        metavar="OUT.png|OUT.mp4",
        help="overlay: each object's colour blended, its contour and a legend; for images a picture (a "
        "labelled grid for several), for a video an H.264 video of the input's size at fps / --every "
        f"({', '.join(VIDEO_OUTPUTS)})",
    )
    outputs.add_argument(
        "--masks-dir",
        metavar="DIR",
        help="one indexed PNG per image (DIR/<name>.png) or per segmented frame (DIR/00000.png, the frame "
        "index), in the DAVIS palette; the folder is created if needed",
    )
    outputs.add_argument(
        "--json",
        metavar="OUT.json",
        help="per image or frame and object: area_px, bbox_xyxy (inclusive pixels), mean_confidence",
    )
    segmentation = parser.add_argument_group("segmentation")
    add_options(segmentation, SegmentOptions)
    frames = parser.add_argument_group("video frames")
    add_options(frames, FrameOptions)
    add_extractor_options(parser, batch_help=FRAMES_BATCH_HELP)
    add_upsample_options(parser)  # --upsample anyup: masks from pixel-level labels
    return parser


def run(args: argparse.Namespace) -> int:
    from dinofeat.jobs.segment import SegmentJob  # lazy: --help stays fast (torch)

    model = extractor_options(args)
    upsample = upsample_options(args, model)
    options = options_from(args, SegmentOptions)
    frames = options_from(args, FrameOptions)
    is_video = len(args.inputs) == 1 and args.inputs[0].lower().endswith(VIDEO_SUFFIXES)
    clicks = parse_each(args.point, lambda text: parse_click(text, with_frame=is_video), "--point")
    negatives = parse_each(args.negative, lambda text: _parse_negative(text, with_frame=is_video), "--negative")
    point_frame = _clicks_frame(clicks, negatives) if is_video else None
    job = SegmentJob(
        args.inputs,
        mask=args.mask,
        points_xy=[(x, y) for _, x, y, _ in clicks],
        point_labels=[label for *_, label in clicks],
        point_frame=point_frame,
        negatives_xy=[(x, y) for _, x, y in negatives],
        output=args.output,
        masks_dir=args.masks_dir,
        json=args.json,
        options=options,
        frames=frames,
    )
    job.check()
    upsampler = make_upsampler(upsample, model)  # before the model: a missing file is found at once
    extractor = make_extractor(model, args)
    with progress_bar(args, "segmenting", "frame" if is_video else "image") as bar:
        result = job.run(extractor, bar, upsampler=upsampler, upsample_scale=upsample.upsample_scale)
    summary(args, job.summary(result))
    return 0


def parse_click(text: str, *, with_frame: bool) -> tuple[int | None, float, float, int]:
    """``X,Y[:LABEL]`` (or ``T,X,Y[:LABEL]`` ``with_frame``) as ``(t, x, y, label)``; ``t`` None for images.

    >>> parse_click("10,-0.5:2", with_frame=False), parse_click("3,10,20", with_frame=True)
    ((None, 10.0, -0.5, 2), (3, 10.0, 20.0, 1))
    """
    position, _, label_text = text.partition(":")
    label = 1
    if label_text:
        try:
            label = int(label_text)
        except ValueError:
            label = -1
        if not 1 <= label <= _MAX_CLICK_LABEL:
            raise argparse.ArgumentTypeError(
                f"label in {text!r} must be an integer from 1 to {_MAX_CLICK_LABEL} (0 is the background)"
            )
    if with_frame:
        t, x, y = query_txy(position)
        return t, x, y, label
    x, y = point_xy(position)
    return None, x, y, label


def _parse_negative(text: str, *, with_frame: bool) -> tuple[int | None, float, float]:
    """``X,Y`` (a video: or ``T,X,Y``) as ``(t, x, y)``."""
    if with_frame and text.count(",") == 2:
        return query_txy(text)
    x, y = point_xy(text)
    return None, x, y


def _clicks_frame(clicks: list, negatives: list) -> int | None:
    """The one frame a video's clicks are on (None without clicks)."""
    frames = sorted({t for t, *_ in clicks} | {t for t, *_ in negatives if t is not None})
    if len(frames) > 1:
        raise InputError(
            f"--point and --negative clicks must all be on one frame, got frames {frames[0]} and {frames[1]}"
        )
    if not clicks:
        return None
    return frames[0]
