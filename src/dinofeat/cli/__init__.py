"""The ``dinofeat`` command: a thin layer that parses options and calls the library's workflows.

Only argparse and the torch-free :mod:`dinofeat.options` are imported here, so ``dinofeat --help``
answers instantly; each command imports torch and the library when it runs. Every error (a usage
error, a :class:`~dinofeat.errors.DinofeatError`, an OS error about files) becomes one line on
stderr and exit status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import re
import sys
from collections.abc import Sequence
from typing import Any

from dinofeat import __version__
from dinofeat.errors import DinofeatError, FieldMessage, InputError, is_disk_full
from dinofeat.optionspec import flag_of

# Each command is a module of this package with `add_parser(subparsers)` and `run(args) -> int`.
COMMANDS = ("models", "extract", "match", "pca", "track", "segment", "app", "eval")


#: A value that starts with a minus and a digit (``-1,60``, ``-.5``): a value, not an option.
_NEGATIVE = re.compile(r"^-\.?\d")
_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<word>[^']*)' \(choose from (?P<choices>.*)\)$")


class UsageError(InputError):
    """A command line argparse cannot read; its message is the whole line to print."""


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors are one line (``dinofeat match: error: ... (see --help)``), raised, not exited,
    so that :func:`main` reports them like every other error; --help and --version still exit.

    A value that starts with a minus and a digit (``--point -1,60``, ``--query 3,-0.4,60``: positions
    from -0.5 are in the image) is a value, not an option; argparse alone takes only a lone number
    (``-3``) for a value."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE

    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {_with_suggestion(message)} (see --help)")

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        """As argparse's, but an option the command does not know is reported by the command
        (``dinofeat match: error: unrecognized argument --pint (did you mean --point?)``), not by
        ``dinofeat``, which knows only the command names."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = self._command_parsers().get(getattr(parsed, "command", None) or "", self)
            command.error(_unrecognized(extras, _option_strings(command)))
        return parsed

    def _command_parsers(self) -> dict[str, argparse.ArgumentParser]:
        """The parser of each command (none for a command's own parser)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [flag for action in parser._actions for flag in action.option_strings]


def _closest(word: str, candidates: Sequence[str]) -> str | None:
    """The candidate ``word`` most likely mistypes (``--pint`` -> ``--point``, ``matc`` ->
    ``match``), or None; leading dashes are not compared (every flag shares them)."""
    bare = {candidate.lstrip("-"): candidate for candidate in candidates}
    close = difflib.get_close_matches(word.lstrip("-"), list(bare), n=1, cutoff=0.6)
    return bare[close[0]] if close else None


def _unrecognized(extras: Sequence[str], options: Sequence[str]) -> str:
    """``unrecognized argument --pint (did you mean --point?)``: the first unknown option, with the
    closest known one; extra values (``a b c``) as argparse lists them."""
    unknown = next((word for word in extras if word.startswith("-") and not _NEGATIVE.match(word)), None)
    if unknown is None:
        return f"unrecognized arguments: {' '.join(extras)}"
    flag = unknown.split("=", 1)[0]
    guess = _closest(flag, [o for o in options if o.startswith("--")] if flag.startswith("--") else options)
    return f"unrecognized argument {flag}" + (f" (did you mean {guess}?)" if guess else "")


def _with_suggestion(message: str) -> str:
    """argparse's message, with ``did you mean 'match'?`` added to an invalid choice that is close
    to a valid one (Python 3.14's ``suggest_on_error``, for every Python we support)."""
    found = _INVALID_CHOICE.search(message)
    if not found:
        return message
    choices = re.findall(r"'([^']*)'", found["choices"])
    guess = _closest(found["word"], choices)
    return f"{message}, did you mean '{guess}'?" if guess else message


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="dinofeat",
        description="DINO dense features: extract, match, PCA, tracking and segmentation. "
        "Coordinates are pixels of the original image (x right, y down, centre of the top-left pixel = 0,0).",
    )
    parser.add_argument("--version", action="version", version=f"dinofeat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"dinofeat.cli.{name}")
        module.add_parser(sub).set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        print(str(err), file=sys.stderr)
        return 2
    _configure_logging(args.command, debug=args.debug)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"dinofeat {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(f"dinofeat {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2 if _is_user_error(err) else 1


def _configure_logging(command: str, *, debug: bool) -> None:
    """dinofeat's own messages on stderr (warnings; everything with --debug), others' left alone,
    each line starting ``dinofeat <command>:`` as the command's errors and summary do.

    Warnings are what the user should know (a size capped, a check that could not run); each
    command prints its own summary line unless ``--quiet``."""
    logger = logging.getLogger("dinofeat")
    handler = next((h for h in logger.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        logger.addHandler(handler)
    handler.setFormatter(_FlagFormatter(f"dinofeat {command}: %(message)s"))
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    if debug:
        logging.basicConfig(level=logging.DEBUG)


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a message comes, not as it was when the first
    command ran (so a caller, or a test, that redirects stderr between commands sees every line)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _FlagFormatter(logging.Formatter):
    """Names the options of a :class:`~dinofeat.errors.FieldMessage` by their flags, as the command
    line's errors do (the library's log lines name the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.msg, FieldMessage):
            record = logging.makeLogRecord({**record.__dict__, "msg": record.msg.render(flag_of)})
        return super().format(record)


def _is_user_error(err: BaseException) -> bool:
    return isinstance(err, (DinofeatError, OSError)) or is_disk_full(err)


def _disk_full(err: BaseException) -> str:
    """A full device met outside the staged writes: "no space left on device", with the file if known."""
    named = getattr(err, "filename", None)
    return "no space left on device" + (f" writing {named}" if named else "")


def _one_line(err: BaseException) -> str:
    if not isinstance(err, DinofeatError) and is_disk_full(err):
        return _disk_full(err)
    message = err.render(flag_of) if isinstance(err, DinofeatError) else str(err)
    text = " ".join(message.split()) or type(err).__name__
    if isinstance(err, (DinofeatError, OSError)):
        return text
    return f"{type(err).__name__}: {text} (this is a bug in dinofeat; run with --debug for the traceback)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
