"""Options shared by several commands, and their validation."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def number_in(low: float, high: float, what: str, *, integer: bool = False, open_low: bool = False):
    """An argparse type accepting a finite number in [low, high] (``(low, high]`` with ``open_low``),
    rejecting anything else with ``expected {what}, got '...'``."""

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            value = math.nan
        inside = (value > low if open_low else value >= low) and value <= high and math.isfinite(value)
        if not inside:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def point_xy(text: str) -> tuple[float, float]:
    """Parse ``X,Y`` (pixels) into a finite float pair."""
    return tuple(_floats(text, 2, "X,Y"))  # type: ignore[return-value]


def query_txy(text: str) -> tuple[int, float, float]:
    """Parse ``T,X,Y`` (frame index, pixels)."""
    t, x, y = _floats(text, 3, "T,X,Y")
    if t != int(t) or t < 0:
        raise argparse.ArgumentTypeError(f"frame index in {text!r} must be a non-negative integer")
    return int(t), x, y


def _floats(text: str, count: int, form: str) -> list[float]:
    parts = text.replace(" ", "").split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"expected {form} numbers, got {text!r}")
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite position")
    return values


def add_model_options(parser: argparse.ArgumentParser, *, resolution: int = 448) -> None:
    """--model, --weights, --device, --precision, --resolution, --max-size, --debug."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="dinov2_vits14",
                       help="model name (see `dinofeat models`; default: %(default)s)")
    group.add_argument("--weights", metavar="PATH",
                       help="checkpoint: official .pth, .safetensors, or a Hugging Face model folder "
                       "(default: torch hub cache, then Hugging Face hub, then the official URL)")
    group.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                       help="where the model runs (default: %(default)s = cuda, mps or cpu)")
    group.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                       help="auto = bf16 on CUDA and on CPUs with bf16 matrix units, else fp32")
    group.add_argument("--resolution", type=positive_int, default=resolution, metavar="N",
                       help="shorter image side in pixels fed to the model, rounded to the patch grid; "
                       "aspect ratio kept, no crop (default: %(default)s)")
    group.add_argument("--max-size", type=positive_int, default=1792, metavar="N",
                       help="cap on the longer side fed to the model (default: %(default)s)")
    add_debug_option(parser)


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logging")


def add_feature_options(parser: argparse.ArgumentParser) -> None:
    """--layer, --facet, --stride."""
    group = parser.add_argument_group("features")
    group.add_argument("--layer", type=int, nargs="+", default=[-1], metavar="L",
                       help="block(s) to read, 0-based, negative from the end; several are concatenated "
                       "(default: -1, the last)")
    group.add_argument("--facet", default="token", choices=("token", "key", "query", "value"),
                       help="block output (token, with the final norm) or the attention key/query/value "
                       "(default: %(default)s)")
    group.add_argument("--stride", type=int, default=None, metavar="S",
                       help="patch stride in model pixels; below the patch size gives overlapping patches and "
                       "a denser grid (default: the patch size, 14 for DINOv2, 16 for DINOv3)")


def make_extractor(args: argparse.Namespace, **overrides):
    """Build an :class:`~dinofeat.extractor.Extractor` from parsed model/feature options."""
    from dinofeat.extractor import Extractor

    options = dict(
        weights=args.weights, device=args.device, precision=args.precision, resolution=args.resolution,
        max_size=args.max_size, stride=getattr(args, "stride", None), layers=getattr(args, "layer", [-1]),
        facet=getattr(args, "facet", "token"),
    )
    options.update(overrides)
    return Extractor(args.model, **options)


def read_points_file(path: str, *, with_frames: bool = False) -> list[tuple[float, ...]]:
    """Points from a JSON list of ``[x, y]`` pairs or CSV lines ``x,y`` (an optional header line is
    skipped); with ``with_frames``, ``[t, x, y]`` / ``t,x,y`` rows (frame index first) too.

    Raises :class:`~dinofeat.errors.InputError` naming the file and the first bad row.
    """
    import csv
    import io
    import json
    from pathlib import Path

    from dinofeat.errors import InputError

    try:
        text = Path(path).read_text(encoding="utf-8-sig").strip()
    except FileNotFoundError:
        raise InputError(f"points file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"points file is a folder: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read points file {path}: {err}") from None
    if not text:
        raise InputError(f"points file is empty: {path}")
    form = "x, y pair or t,x,y triple" if with_frames else "x, y pair"
    if text[0] in "[{":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"points file {path} is not valid JSON: {err}") from None
        if not isinstance(rows, list):
            raise InputError(f"points file {path} must hold a JSON list of [x, y]{' or [t, x, y]' * with_frames}")
        where = "item"
    else:
        rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
        if rows and _numbers(rows[0], strings=True) is None:
            rows = rows[1:]  # header
        where = "line"
    sizes = (2, 3) if with_frames else (2,)
    points = []
    for index, row in enumerate(rows):
        values = _numbers(row, strings=where == "line")
        if values is None or len(values) not in sizes or not all(math.isfinite(v) for v in values):
            raise InputError(f"points file {path}: {where} {index + 1} is not a finite {form}: {row!r}")
        if len(values) == 3 and (values[0] < 0 or values[0] != int(values[0])):
            raise InputError(f"points file {path}: {where} {index + 1}: frame index must be a "
                             f"non-negative integer, got {values[0]:g}")
        points.append(tuple(values))
    if not points:
        raise InputError(f"points file {path} holds no points")
    return points


def _numbers(row, *, strings: bool) -> list[float] | None:
    """The row as floats: CSV cells (strings) or JSON numbers (not booleans, not strings); else None."""
    allowed = (str,) if strings else (int, float)
    if not isinstance(row, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, allowed) for v in row):
        return None
    try:
        return [float(v) for v in row]
    except ValueError:
        return None
