"""Writing output files safely: checked before any work, staged, renamed into place only on success.

* :func:`check_outputs` refuses, before any work, an output that is a folder, lies in a folder that
  cannot be written or made, is one of the inputs, or is named twice;
* :func:`staged_outputs` writes to temporary files beside the targets and renames them into place
  only if every write succeeded, so a failure never leaves a half-written file (or replaces an
  existing one); the files get the mode a plain ``open()`` would give (``0666 & ~umask``);
* :func:`ensure_folder` makes an output folder (parents too);
* a full device while writing (``ENOSPC``, whichever library raised it) becomes one
  :class:`~dinofeat.errors.DiskFullError` naming the output (:func:`~dinofeat.errors.is_disk_full`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, overload

import numpy as np
from PIL import Image

from dinofeat.errors import DiskFullError, InputError, field, is_disk_full


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early (before any model work) if ``path`` cannot be created.

    A folder of the path that does not exist yet is fine (:func:`staged_outputs` makes it, parents
    too, as ``--out-dir`` is made) if the deepest one that exists is a writable folder."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError(f"output path is a folder: {path}")
    existing = _deepest_existing(parent)
    if not existing.is_dir():
        raise InputError(f"output folder {parent} cannot be made: {existing} is not a folder")
    if not os.access(existing, os.W_OK):
        raise InputError(f"output folder is not writable: {existing}")
    return path


def _deepest_existing(folder: Path) -> Path:
    """``folder`` or the deepest of its parents that exists (a file too)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _make_folders(folder: Path) -> list[Path]:
    """Make ``folder`` and its missing parents; returns the folders made, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        made.mkdir(exist_ok=True)
    return missing[::-1]


def check_outputs(outputs: Iterable[str | os.PathLike | None], inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse outputs that would destroy an input or each other, or cannot be written.

    ``None`` entries (outputs not asked for) are skipped. Paths are compared after resolving
    links and ``..``, so ``photo.png`` and ``./x/../photo.png`` are the same file.
    """
    given = [Path(p) for p in outputs if p is not None]
    sources = {_identity(Path(p)): str(p) for p in inputs}
    seen: dict[object, Path] = {}
    for path in given:
        key = _identity(path)
        if key in sources:
            raise InputError(f"output {path} is the input {sources[key]}: refusing to overwrite it")
        if key in seen:
            raise InputError(f"two outputs would go to the same file: {seen[key]} and {path}")
        seen[key] = path
    for path in given:
        check_writable(path)


def _identity(path: Path) -> object:
    """What makes two paths the same file: device and inode if it exists, else the resolved path."""
    try:
        stat = path.stat()
        return (stat.st_dev, stat.st_ino)
    except OSError:
        return str(path.resolve())


def check_suffix(path: str | os.PathLike | None, allowed: Sequence[str], option: str) -> None:
    """Refuse an output whose suffix is not one of ``allowed`` (``json_out=t.csv``), naming the
    option as ``option`` says (words, or a :func:`~dinofeat.errors.field`)."""
    if path is not None and Path(path).suffix.lower() not in allowed:
        choices = ", ".join(allowed[:-1]) + f" or {allowed[-1]}" if len(allowed) > 1 else allowed[0]
        raise InputError(f"{option} must end in {choices}, got {path}")


def ensure_folder(path: str | os.PathLike, option: str = "out_dir") -> Path:
    """Make the output folder ``path`` (and its parents) if needed; refuse an existing non-folder,
    naming the option field ``option`` (see :func:`~dinofeat.errors.field`)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{field(option, path)} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if is_disk_full(err):
            raise DiskFullError(f"no space left on device creating {field(option, path)}") from None
        raise InputError(f"cannot create {field(option, path)}: {err.strerror or err}") from None
    return path


def _plain_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` minus the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@overload
def staged_outputs(paths: Sequence[str | os.PathLike]) -> AbstractContextManager[Sequence[Path]]: ...
@overload
def staged_outputs(paths: Sequence[str | os.PathLike | None]) -> AbstractContextManager[Sequence[Path | None]]: ...


@contextlib.contextmanager  # yields Sequence[Any]: a Path for each path given, None for each None
def staged_outputs(paths: Sequence[str | os.PathLike | None]) -> Iterator[Sequence[Any]]:
    """Give temporary paths to write to; rename them onto ``paths`` only if the block succeeds.

    ``None`` entries stay ``None`` (an output the user did not ask for). Missing output folders are
    made, parents too (and removed again if the write fails). Temporary files live next to
    their targets (same suffix, so writers that look at the extension still work) and are removed
    on failure, so either all outputs appear or none do. Renamed files get the mode a plain
    ``open()`` would give under the current umask (not the temporary file's private 0600).
    """
    temps: list[Path | None] = []
    made: list[Path] = []  # output folders this write made, removed again if it fails
    try:
        for path in paths:
            if path is None:
                temps.append(None)
                continue
            target = check_writable(path)
            made += _make_folders(target.parent if str(target.parent) else Path("."))
            fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=target.parent or ".")
            os.close(fd)
            temps.append(Path(tmp))
        yield temps
        mode = _plain_file_mode()
        for staged, path in zip(temps, paths):
            if staged is not None and path is not None:
                os.chmod(staged, mode)
                os.replace(staged, path)
    except BaseException as err:
        _remove_staged(temps)
        for folder in reversed(made):
            with contextlib.suppress(OSError):  # not empty: something else was written there meanwhile
                folder.rmdir()
        if is_disk_full(err):
            raise DiskFullError(f"no space left on device writing {_full_output(err, paths, temps)}") from None
        raise
    finally:
        _remove_staged(temps)


def _remove_staged(temps: Sequence[Path | None]) -> None:
    for staged in temps:
        if staged is not None and staged.exists():
            staged.unlink()


def _full_output(err: BaseException, paths: Sequence[str | os.PathLike | None], temps: Sequence[Path | None]) -> str:
    """The output a full-disk error was about: the one whose temporary file the error names, else
    every output of the write (``a.mp4, a.json``)."""
    named = getattr(err, "filename", None)
    for staged, path in zip(temps, paths):
        if staged is not None and path is not None and named is not None and os.fspath(named) == str(staged):
            return str(path)
    return ", ".join(str(p) for p in paths if p is not None)


def format_json(document: dict) -> str:
    """Indented JSON with short number lists (points, sizes, matrix rows) kept on one line."""
    text = json.dumps(document, indent=2)
    return (
        re.sub(
            r"\[\s+([-+0-9.eE]+(?:,\s+[-+0-9.eE]+)*)\s+\]",
            lambda m: "[" + ", ".join(m.group(1).split(",\n")).replace(" ", "").replace(",", ", ") + "]",
            text,
        )
        + "\n"
    )


def save_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an ``(H, W, 3|4) uint8`` RGB(A) image; the format follows the suffix (Pillow)."""
    Image.fromarray(np.ascontiguousarray(image)).save(path)
