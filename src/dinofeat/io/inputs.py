"""Input files: the one check every image and video path goes through before it is opened."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dinofeat.errors import InputError


def check_input_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` as a :class:`~pathlib.Path` if it is an existing, non-empty regular file (or a link
    to one); otherwise :class:`~dinofeat.errors.InputError` saying which of those it is not
    (``what`` names the kind, e.g. "image" or "video"). Nothing is opened: a FIFO is refused without
    waiting for a writer, a link whose target is missing is named as such.

    >>> check_input_file("/nonexistent.png", "image")
    Traceback (most recent call last):
    ...
    dinofeat.errors.InputError: image not found: /nonexistent.png
    """
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise InputError(f"{what} is a broken symbolic link (to {os.readlink(path)}): {path}")
        raise InputError(f"{what} not found: {path}")
    if path.is_dir():
        raise InputError(f"expected {_article(what)} {what} file, got a folder: {path}")
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        raise InputError(f"expected {_article(what)} {what} file, got {_special_kind(mode)}: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"{what} file is empty: {path}")
    return path


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _special_kind(mode: int) -> str:
    """What a file that is neither a regular file nor a folder is, for a message."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"
