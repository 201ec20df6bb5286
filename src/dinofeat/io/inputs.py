"""Input files: the one check every image and video path goes through before it is opened."""

from __future__ import annotations

import os
from pathlib import Path

from dinofeat.errors import InputError


def check_input_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` as a :class:`~pathlib.Path` if it is an existing, non-empty file; otherwise
    :class:`~dinofeat.errors.InputError` saying which of those it is not (``what`` names the kind,
    e.g. "image" or "video").

    >>> check_input_file("/nonexistent.png", "image")
    Traceback (most recent call last):
    ...
    dinofeat.errors.InputError: image not found: /nonexistent.png
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if path.is_dir():
        raise InputError(f"expected {_article(what)} {what} file, got a folder: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"{what} file is empty: {path}")
    return path


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
