"""How a dinofeat option is declared and checked: allowed values (:class:`Range`, choices), the
field factory :func:`option` whose metadata the CLI builds argparse from, :func:`check_field`
(the one check, with its one-line error) and the :class:`Options` base class that runs it on
every field; plus the parsers of command-line text. :mod:`dinofeat.options` declares every job's
options with these. Torch-free, like :mod:`dinofeat.options`.

>>> POSITIVE_INT.contains(3), POSITIVE_INT.contains(0)
(True, False)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from dinofeat.errors import InputError
from dinofeat.errors import field as field_named

# ---------------------------------------------------------------------------------------------
# Allowed values


@dataclass(frozen=True)
class Range:
    """Numbers allowed for an option: ``low <= value <= high`` (``low < value`` with ``open_low``).

    ``what`` is how an error message describes the range ("a positive integer").
    """

    what: str
    low: float = -math.inf
    high: float = math.inf
    integer: bool = False
    open_low: bool = False

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not (isinstance(value, int) or (math.isfinite(value) and value == int(value))):
            return False
        if math.isnan(value) or (math.isinf(value) and value != self.high):
            return False
        above = value > self.low if self.open_low else value >= self.low
        return above and value <= self.high


POSITIVE_INT = Range("a positive integer", 1, math.inf, integer=True)
NON_NEGATIVE_INT = Range("a non-negative integer", 0, math.inf, integer=True)
POSITIVE = Range("a positive number", 0, 1e300, open_low=True)
POSITIVE_OR_INF = Range("a positive number (or inf)", 0, math.inf, open_low=True)
NON_NEGATIVE = Range("a non-negative number", 0, 1e300)
UNIT = Range("a number between 0 and 1", 0, 1)
COSINE = Range("a number between -1 and 1", -1, 1)
PERCENTILE = Range("a percentile between 0 and 100", 0, 100)
PORT = Range("a port number between 1 and 65535", 1, 65535, integer=True)


def option(
    default: Any = None,
    *,
    help: str,
    flag: str | None = None,
    range: Range | None = None,
    choices: Sequence[str] | None = None,
    metavar: str | Sequence[str] | None = None,
    optional: bool = False,
    parse: Callable[[str], Any] | None = None,
    nargs: int | str | None = None,
    what: str | None = None,
    noun: str | None = None,
    repeat: bool = False,
) -> Any:
    """A dataclass field with its command-line description and allowed values.

    Args:
        help: the ``--help`` text (``%(default)s`` is filled in by argparse).
        flag: the command-line flag (``--min-score``); the CLI's errors name the option by it, the
            library's by the field name (see :func:`dinofeat.errors.field`).
        range: allowed numbers (for a tuple field: for each element).
        choices: allowed strings (with ``range`` too: a string choice or a number in range).
        optional: None is allowed too (the option is off, or a default is derived later).
        parse: command-line text -> value (raises ValueError); default: by the default's type.
        nargs: for list-valued options, as argparse's ``nargs``.
        what: how errors describe the allowed values (default: from ``choices`` and ``range``).
        noun: what a choice is called in "unknown <noun> 'x'" errors (default: from the flag).
        repeat: a tuple-valued option given by repeating its flag (``--alpha 0.1 --alpha 0.05``).
    """
    meta = {
        "help": help,
        "flag": flag,
        "range": range,
        "choices": tuple(choices) if choices else None,
        "metavar": metavar,
        "optional": optional or default is None,
        "parse": parse,
        "nargs": nargs,
        "what": what,
        "noun": noun,
        "repeat": repeat,
    }
    return field(default=default, metadata=meta)


def check_field(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    """Raise :class:`InputError` naming the option (:func:`~dinofeat.errors.field`) if ``value`` is
    not allowed for it."""
    if value is None:
        if not meta["optional"]:
            raise InputError(f"{field_named(name)} must be given")
        return
    many = meta["nargs"] is not None or meta.get("repeat")
    values = value if isinstance(value, tuple) and many else (value,)
    for item in values:
        if _allowed(item, meta["choices"], meta["range"]):
            continue
        if meta["range"] is None and meta["what"] is None:  # a pure choice: "unknown facet 'attn' (--facet) ..."
            noun = meta["noun"] or flag_of(name, meta).lstrip("-").replace("-", " ")
            choices = ", ".join(meta["choices"])
            raise InputError(f"unknown {noun} {item!r} ({field_named(name)}); choose one of {choices}")
        raise InputError(f"{field_named(name)} must be {describe_allowed(meta)}, got {_show(item)}")


#: Flags of the command-line arguments that are no :class:`Options` field (or are spelt otherwise),
#: by the name the library gives the value: outputs, the query points of ``match`` and ``track``.
ARGUMENT_FLAGS = {"output": "-o", "points_xy": "--point", "queries_txy": "--query", "negatives_xy": "--negative"}


def flag_of(name: str, meta: Mapping[str, Any] | None = None) -> str:
    """The command-line flag of the option field ``name``: its declared ``flag``, else its
    :data:`ARGUMENT_FLAGS` entry, else ``--name`` with dashes; ``meta`` is the field's metadata,
    else every :class:`Options` class defined so far is searched (:mod:`dinofeat.options` declares them).

    >>> import dinofeat.options
    >>> flag_of("min_score"), flag_of("layers"), flag_of("points_xy"), flag_of("out_dir"), flag_of("output")
    ('--min-score', '--layer', '--point', '--out-dir', '-o')
    """
    if meta is None:
        meta = _declared_flags().get(name, {})
    return meta.get("flag") or ARGUMENT_FLAGS.get(name) or "--" + name.replace("_", "-")


def _declared_flags() -> dict[str, dict[str, Any]]:
    """Field name -> metadata, over every :class:`Options` subclass defined so far."""
    found: dict[str, dict[str, Any]] = {}
    pending = list(Options.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        fields: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ()
        for f in fields:
            if f.metadata.get("flag"):
                found.setdefault(f.name, dict(f.metadata))
    return found


def _allowed(item: Any, choices: tuple[str, ...] | None, allowed: Range | None) -> bool:
    if choices is None and allowed is None:
        return True
    if choices is not None and isinstance(item, str) and item in choices:
        return True
    return allowed is not None and allowed.contains(item)


def describe_allowed(meta: Mapping[str, Any]) -> str:
    """How an option's allowed values are described in errors ("a positive integer")."""
    if meta.get("what"):
        return meta["what"]
    parts = [f"one of {', '.join(meta['choices'])}"] if meta["choices"] else []
    if meta["range"] is not None:
        parts.append(meta["range"].what)
    return " or ".join(parts)


def _show(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    return repr(value) if isinstance(value, str) else str(value)


_O = TypeVar("_O", bound="Options")


class Options:
    """Base of the option dataclasses: every field is checked when the object is made."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]  # every subclass is a dataclass

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if "help" in f.metadata:
                check_field(f.name, getattr(self, f.name), f.metadata)
        self._check_together()

    def _check_together(self) -> None:
        """Checks involving several fields (subclasses override)."""

    def replace(self: _O, **changes: Any) -> _O:
        """A copy with ``changes``, checked again."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# ---------------------------------------------------------------------------------------------
# Parsers for command-line text (ValueError on bad text; ranges are checked by the dataclass)


def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def parse_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if math.isnan(value):
        raise ValueError(f"expected a number, got {text!r}")
    return value
