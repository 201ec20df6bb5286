"""Writing output files so that a failure never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from dinofeat.errors import InputError


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early (before any model work) if ``path`` cannot be created."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError(f"output path is a folder: {path}")
    if not parent.is_dir():
        raise InputError(f"output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output folder is not writable: {parent}")
    return path


@contextlib.contextmanager
def staged_outputs(paths: Sequence[str | os.PathLike | None]) -> Iterator[list[Path | None]]:
    """Give temporary paths to write to; rename them onto ``paths`` only if the block succeeds.

    ``None`` entries stay ``None`` (an output the user did not ask for). Temporary files live next to
    their targets (same suffix, so writers that look at the extension still work) and are removed
    on failure, so either all outputs appear or none do.
    """
    temps: list[Path | None] = []
    try:
        for path in paths:
            if path is None:
                temps.append(None)
                continue
            target = check_writable(path)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=target.parent or ".")
            os.close(fd)
            temps.append(Path(tmp))
        yield temps
        for tmp, path in zip(temps, paths):
            if tmp is not None:
                os.replace(tmp, path)
    finally:
        for tmp in temps:
            if tmp is not None and tmp.exists():
                tmp.unlink()


def format_json(document: dict) -> str:
    """Indented JSON with short number lists (points, sizes, matrix rows) kept on one line."""
    import json
    import re

    text = json.dumps(document, indent=2)
    return re.sub(r"\[\s+([-+0-9.eE]+(?:,\s+[-+0-9.eE]+)*)\s+\]",
                  lambda m: "[" + ", ".join(m.group(1).split(",\n")).replace(" ", "").replace(",", ", ") + "]",
                  text) + "\n"
