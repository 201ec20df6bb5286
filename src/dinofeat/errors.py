"""Exceptions that carry a message a user can act on.

The CLI prints any :class:`DinofeatError` as one line on stderr and exits non-zero.

A message about an option names it the way its reader passed it: Python callers see the field
(``start=500 is past the end of the video``), the command line its flag (``--start 500 ...``).
The library marks each option in a message with :func:`field`; :meth:`DinofeatError.render`
writes the marks one way or the other.

>>> err = InputError(f"{field('start', 500)} is past the end of the video (500 frames)")
>>> str(err)
'start=500 is past the end of the video (500 frames)'
>>> err.render(lambda name: "--" + name)
'--start 500 is past the end of the video (500 frames)'
>>> err.fields
('start',)

Log lines that name options are :class:`FieldMessage` objects: ``str()`` names the fields, the
CLI's handler renders them with flags.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from typing import Any

_MARK, _VALUE = "\x1f", "\x1e"  # control characters no message text contains
_MARKED = re.compile(f"{_MARK}([^{_MARK}{_VALUE}]+)(?:{_VALUE}([^{_MARK}]*))?{_MARK}")
_NO_VALUE = object()


def field(name: str, value: Any = _NO_VALUE) -> str:
    """The option ``name`` (with ``value``, if given) marked in a message: ``start=500`` to Python
    callers, ``--start 500`` on the command line."""
    if value is _NO_VALUE:
        return f"{_MARK}{name}{_MARK}"
    return f"{_MARK}{name}{_VALUE}{value}{_MARK}"


def render(template: str, flag: Callable[[str], str] | None = None) -> str:
    """``template`` with its :func:`field` marks named by field (default) or by ``flag(field)``.

    >>> render(f"lower {field('max_size')}"), render(f"lower {field('max_size')}", lambda n: "--max-size")
    ('lower max_size', 'lower --max-size')
    """

    def name(match: re.Match) -> str:
        option, value = match.group(1), match.group(2)
        if flag is None:
            return option if value is None else f"{option}={value}"
        return flag(option) if value is None else f"{flag(option)} {value}"

    return _MARKED.sub(name, template)


def one_line(template: str) -> str:
    """``template`` on one line (runs of whitespace made one space), its :func:`field` marks kept
    (``str.split`` would take them for whitespace)."""
    return re.sub(r"[ \t\n\r\f\v]+", " ", template).strip(" ")


class FieldMessage:
    """A log message whose options are marked with :func:`field`: ``str()`` (what ``logging``
    prints) names the fields; a handler that knows the flags (the CLI's) calls :meth:`render`."""

    def __init__(self, template: str) -> None:
        self.template = template

    def render(self, flag: Callable[[str], str] | None = None) -> str:
        return render(self.template, flag)

    def __str__(self) -> str:
        return self.render()


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from) says the device is full: an OSError
    with ``errno.ENOSPC``, or a library's wrapper whose message says so (safetensors' Rust I/O error
    "No space left on device (os error 28)", Arrow's "[errno 28] ...")."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return True
        text = str(current).lower()
        if "no space left on device" in text or "os error 28" in text:
            return True
        current = current.__cause__ or current.__context__
    return False


class DinofeatError(Exception):
    """Base class: a problem with the user's input, files or environment."""

    def __init__(self, message: str = "") -> None:
        self.template = message
        super().__init__(self.render())

    @property
    def fields(self) -> tuple[str, ...]:
        """The option fields the message names, in order."""
        return tuple(match.group(1) for match in _MARKED.finditer(self.template))

    def render(self, flag: Callable[[str], str] | None = None) -> str:
        """The message with its options named by field (default) or by ``flag(field)``."""
        return render(self.template, flag)

    def __reduce__(self):  # pickled (to and from Ray workers) as its message, marks and all
        return type(self), (self.template,)


class InputError(DinofeatError):
    """A bad image, video, point or option value."""


class DiskFullError(DinofeatError):
    """An output could not be written because its device is full (``ENOSPC``); nothing partial was left."""


class UnknownModelError(DinofeatError):
    """A model name that is not in the registry."""


class WeightsError(DinofeatError):
    """Weights that cannot be found, read, or that do not fit the architecture."""
