"""What the commands share: argparse options built from :mod:`dinofeat.options`, and the text parsers.

Defaults, choices, help and checks all come from the option dataclasses; argparse only turns text
into numbers (``expected an integer, got 'x'``), and constructing the dataclass checks the value
(``--batch-size must be a positive integer, got -5``), the same check the app and the library use.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dinofeat.errors import InputError
from dinofeat.options import CPU_BATCH_SIZE, GPU_BATCH_SIZE, ExtractorOptions, UpsampleOptions
from dinofeat.optionspec import parse_float, parse_int
from dinofeat.runtime.progress import Progress, TqdmProgress


def add_options(parser, options_class, *names: str, exclude: tuple[str, ...] = (), **help_texts: str) -> None:
    """Add the command-line flags of ``options_class``'s fields (all with a flag, or only ``names``).

    ``help_texts`` replace a field's help where the command says it differently ("frames per
    forward pass" for a video); an empty one keeps the field's own.
    """
    for f in dataclasses.fields(options_class):
        meta = f.metadata
        if not meta.get("flag") or (names and f.name not in names) or f.name in exclude:
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": f.default, "help": help_texts.get(f.name) or meta["help"]}
        if isinstance(f.default, bool):
            kwargs["action"] = "store_true"
        elif meta.get("repeat"):
            kwargs.update(action="append", default=None, type=_argparse_type(meta))
            if meta["metavar"] is not None:
                kwargs["metavar"] = meta["metavar"]
        else:
            kwargs["type"] = _argparse_type(meta)
            for key in ("metavar", "nargs"):
                if meta[key] is not None:
                    kwargs[key] = meta[key]
            if meta["choices"] is not None and meta["range"] is None:
                kwargs["choices"] = meta["choices"]
        parser.add_argument(meta["flag"], **kwargs)


def options_from(args: argparse.Namespace, options_class, **overrides: Any):
    """The ``options_class`` instance of the parsed ``args`` (fields argparse did not fill keep their defaults)."""
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(options_class)
        if hasattr(args, f.name) and not (f.metadata.get("repeat") and getattr(args, f.name) is None)
    }  # a repeatable flag never given keeps the dataclass default
    return options_class(**{**values, **overrides})


def _argparse_type(meta: Mapping[str, Any]) -> Callable[[str], Any]:
    parse = meta["parse"]
    if parse is None:
        allowed = meta["range"]
        parse = str if allowed is None else parse_int if allowed.integer else parse_float

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


#: --batch-size's help where the images are a video's frames.
FRAMES_BATCH_HELP = (
    f"frames per forward pass (default: {GPU_BATCH_SIZE} on a GPU, {CPU_BATCH_SIZE} on CPU, where bigger batches "
    "measured slower)"
)


def add_extractor_options(
    parser: argparse.ArgumentParser, *, batch_help: str | None = None, resolution: int | None = None
) -> None:
    """The model group (--model, --weights, --device, --precision, --resolution, --max-size, --compile), the
    features group (--layer, --facet, --stride, --batch-size) and --debug; ``resolution`` is the
    command's own default resolution where it differs from the library's."""

    features = parser.add_argument_group("features")
    add_options(features, ExtractorOptions, "layers", "facet", "stride", "batch_size", batch_size=batch_help or "")
    model = parser.add_argument_group("model")
    add_options(model, ExtractorOptions, "model", "weights", "device", "precision", "resolution", "max_size", "compile")
    if resolution is not None:
        parser.set_defaults(resolution=resolution)
    add_output_options(parser)


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """--quiet and --debug."""
    parser.add_argument("-q", "--quiet", action="store_true", help="print no summary line and no progress bar")
    add_debug_option(parser)


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logging")


def summary(args: argparse.Namespace, text: str, *, stream=None) -> None:
    """The command's one summary line (``dinofeat match: 20 matches, ...``) on stderr, unless --quiet."""

    if not getattr(args, "quiet", False):
        print(f"dinofeat {args.command}: {text}", file=stream or sys.stderr, flush=True)


def progress_bar(args: argparse.Namespace, desc: str, unit: str):
    """A :class:`~dinofeat.runtime.progress.TqdmProgress` for the command (none with --quiet)."""
    return TqdmProgress(desc, unit, enabled=not getattr(args, "quiet", False))


def extractor_options(args: argparse.Namespace):
    """The parsed model/feature options, checked (call it before any work)."""
    return options_from(args, ExtractorOptions)


#: Seconds a forward pass runs before its block-by-block progress appears.
BLOCK_BAR_DELAY = 3.0


def make_extractor(options, args: argparse.Namespace | None = None, *, within: TqdmProgress | None = None):
    """The :class:`~dinofeat.features.extractor.Extractor` for checked :func:`extractor_options` (loads the model).

    With the command's ``args``, a forward pass that takes more than :data:`BLOCK_BAR_DELAY`
    seconds shows its blocks (``running the model on 1344x1792``), unless ``--quiet``: after the
    counts of ``within``, the command's bar of frames or images (one bar, nothing flashing under
    it), or as a bar of its own where the command has none."""
    # lazy: --help stays fast (torch)
    from dinofeat.features.extractor import Extractor

    if args is None:
        return Extractor.from_options(options)
    quiet = getattr(args, "quiet", False)

    def block_bar(what: str) -> contextlib.AbstractContextManager[Progress]:
        if within is not None:
            return _BlockNote(within, f"running {what}", BLOCK_BAR_DELAY)
        return TqdmProgress(f"running {what}", "block", enabled=not quiet, delay=BLOCK_BAR_DELAY, leave=False)

    return Extractor.from_options(options, block_progress=block_bar)


class _BlockNote:
    """A forward pass's blocks as a note in the command's bar (``running the model on 546x448:
    block 5/12``), shown once the pass has run ``delay`` seconds and cleared when it ends."""

    def __init__(self, bar: TqdmProgress, what: str, delay: float) -> None:
        self.bar, self.what, self.delay = bar, what, delay
        self.started = time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if self.shown or time.monotonic() - self.started >= self.delay:
            self.bar.note(f"{self.what}: block {done}/{total}")
            self.shown = True

    def __enter__(self) -> _BlockNote:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.shown:
            self.bar.note("")


def add_upsample_options(parser: argparse.ArgumentParser) -> None:
    """The pixel-level features group: --upsample, --upsample-weights, --upsample-scale."""
    add_options(parser.add_argument_group("pixel-level features"), UpsampleOptions)


def upsample_options(args: argparse.Namespace, extractor: ExtractorOptions) -> UpsampleOptions:
    """The parsed upsampling options, checked, also against the feature options (call it before any work)."""
    options = options_from(args, UpsampleOptions)
    options.check_with(extractor)
    return options


def make_upsampler(options: UpsampleOptions, extractor: ExtractorOptions):
    """The :class:`~dinofeat.features.upsample.Upsampler` the options ask for (loads its weights;
    on the extractor's device, in its precision), or None for ``--upsample none``."""
    if not options.enabled:
        return None
    # lazy: --help stays fast (torch)
    from dinofeat.features.upsample import Upsampler

    return Upsampler.from_weights(options.upsample_weights, device=extractor.device, precision=extractor.precision)


def add_features_option(parser, help_text: str) -> None:
    """--features DIR: read features from a feature folder (``dinofeat extract --out-dir``)."""
    parser.add_argument("--features", metavar="DIR", help=help_text)


def open_feature_folder(args: argparse.Namespace, inputs):
    """The :class:`~dinofeat.dataset.store.FeatureStore` of ``--features DIR``, an extractor stand-in
    giving ``inputs``' stored maps, and the image file of each input (for drawing).

    The model and feature options are the folder's: giving one of them is an error.
    """

    # lazy: --help stays fast (torch)
    from dinofeat.dataset.store import open_features

    for f in dataclasses.fields(ExtractorOptions):
        value = getattr(args, f.name, f.default)
        if f.metadata.get("flag") and (tuple(value) if isinstance(value, list) else value) != f.default:
            flag = f.metadata["flag"]
            raise InputError(f"{flag} does not apply with --features: the features come from {args.features}")
    store = open_features(args.features)
    keys = [store.find(path) for path in inputs]
    files = [str(path) if Path(path).is_file() else str(store.image_file(key)) for path, key in zip(inputs, keys)]
    return store, store.extractor_for(keys), files


def parse_each(texts, parse, flag: str) -> list:
    """The texts of a repeatable option (``None``: not given) parsed by ``parse``; a bad one is a
    one-line :class:`~dinofeat.errors.InputError` naming ``flag``."""

    parsed = []
    for text in texts or []:
        try:
            parsed.append(parse(text))
        except argparse.ArgumentTypeError as err:
            raise InputError(f"{flag}: {err}") from None
    return parsed


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
