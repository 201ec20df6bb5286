"""Dataset inputs: a folder (recursive), a glob or a list file, streamed as items in a fixed order.

* a **folder**: every file below it whose suffix is an image's (or a video's) suffix, walked
  depth-first with each folder's entries sorted by name; hidden files and folders (``.name``) and
  the dataset's own output folder (by whatever path, links too) are skipped. Item paths are
  relative to the folder, with ``/``. A name with such a suffix that is not a regular file (a
  broken symbolic link, a FIFO) is listed too: reading it fails without opening it, and the run
  records it in ``errors.jsonl`` like any other bad file.
* a **glob** (``"photos/**/*.jpg"``, quoted so the shell leaves it alone): the matching files
  (anything but folders, as in a folder listing),
  sorted, except those in the dataset's output folder; item paths relative to the glob's folder
  (``photos``).
* a **list file**: ``.txt`` / ``.lst`` (one path per line; blank lines and ``#`` comments skipped),
  ``.csv`` or ``.parquet`` with a ``path`` column (and, for tracking, an optional ``points``
  column naming each video's points file). Item paths are as written; relative ones are opened
  relative to the list file's folder. A path listed twice is refused.
* plain files: item paths as given.

Plain files and globs may be mixed; a file named more than once (``0.png ./0.png "*.png"``: the
same normalised absolute path) is listed once, where it first appears.

The order never depends on the file system's listing order, so shard membership (consecutive runs
of items) is the same on every run and in every engine. Listing streams: memory does not grow with
the number of files (a glob's matches and the duplicate checks of list files, plain files and
globs excepted).

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> for name in ("b/2.png", "a.jpg", "b/1.PNG", "notes.txt", ".hidden.png"):
...     (root / name).parent.mkdir(exist_ok=True); _ = (root / name).write_bytes(b"x")
>>> [item.path for item in list_inputs([str(root)])]
['a.jpg', 'b/1.PNG', 'b/2.png']
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dinofeat.errors import InputError

#: Files a folder listing takes as images.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm")
#: Files a folder listing takes as videos.
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
#: List files: paths one per line, or a table with a ``path`` column.
LIST_SUFFIXES = (".txt", ".lst", ".csv", ".parquet")
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Item:
    """One input of a dataset.

    Attributes:
        index: position in the listing, from 0.
        path: the item's name in the dataset: relative to the folder or the glob's folder (``/``
            separated), or as written in the list file or on the command line.
        file: the file to open (absolute).
        points: the ``points`` column of a list file (absolute path), or None.
    """

    index: int
    path: str
    file: str
    points: str | None = None


@dataclass(frozen=True)
class Listing:
    """The inputs of a dataset; iterating streams :class:`Item` objects, the same ones every time.

    Attributes:
        sources: what was given (a folder, a glob, a list file, or files).
        kind: ``"image"`` or ``"video"`` (which suffixes a folder listing takes).
        root: the folder item paths are relative to (the folder, the glob's folder, the list
            file's folder, or the working directory).
        exclude: a folder never listed by a folder walk or a glob (the dataset's output folder;
            compared by device and inode, so any path to it is the same), or None.
    """

    sources: tuple[str, ...]
    kind: str = "image"
    root: str = "."
    exclude: str | None = None

    def __iter__(self) -> Iterator[Item]:
        for index, (path, file, points) in enumerate(self._rows()):
            yield Item(index, path, file, points)

    def fingerprint(self) -> tuple[int, str]:
        """``(number of items, sha256 of their paths)``: what the manifest records to see that a
        rerun lists the same items. List files are checked for repeated paths on the way."""
        digest = hashlib.sha256()
        seen: set[bytes] | None = set() if self._is_list_file else None
        count = 0
        for item in self:
            key = item.path.encode("utf-8", "surrogateescape")
            digest.update(key + b"\n")
            if seen is not None:
                short = hashlib.blake2b(key, digest_size=12).digest()
                if short in seen:
                    raise InputError(f"list file {self.sources[0]}: {item.path!r} is listed twice")
                seen.add(short)
            count += 1
        return count, digest.hexdigest()

    def describe(self) -> dict:
        """The manifest's ``inputs`` entry (sources as given, and the root)."""
        return {"sources": list(self.sources), "root": self.root, "kind": self.kind}

    @property
    def _is_list_file(self) -> bool:
        return len(self.sources) == 1 and _is_list(self.sources[0])

    def _rows(self) -> Iterator[tuple[str, str, str | None]]:
        suffixes = IMAGE_SUFFIXES if self.kind == "image" else VIDEO_SUFFIXES
        exclude = _identity(self.exclude) if self.exclude is not None else None
        if len(self.sources) == 1 and Path(self.sources[0]).is_dir():
            folder = Path(self.sources[0])
            for file in _walk(folder, suffixes, exclude):
                yield Path(os.path.relpath(file, folder)).as_posix(), os.path.abspath(file), None
            return
        if self._is_list_file:
            yield from _list_file_rows(Path(self.sources[0]))
            return
        base = _glob_base(self.sources[0]) if len(self.sources) == 1 else None
        outside = _outside(exclude)
        seen: set[bytes] = set()  # files given twice (``a.png ./a.png *.png``) are listed once, first place
        for path, file in self._given(base, outside):
            key = hashlib.blake2b(file.encode("utf-8", "surrogateescape"), digest_size=12).digest()
            if key not in seen:
                seen.add(key)
                yield normal_path(path), file, None

    def _given(self, base: str | None, outside) -> Iterator[tuple[str, str]]:
        """``(item path, absolute file)`` of plain files and glob matches, in order, repeats included."""
        for source in self.sources:
            if Path(source).is_file():
                yield source, os.path.abspath(source)
            else:  # a glob (checked by list_inputs)
                for match in sorted(glob.glob(source, recursive=True)):
                    if not Path(match).is_dir() and outside(match):
                        yield (os.path.relpath(match, base) if base else match), os.path.abspath(match)


def list_inputs(sources: Sequence[str | os.PathLike], kind: str = "image", *, exclude=None) -> Listing:
    """The :class:`Listing` of ``sources``: one folder, one list file, or files and globs (a file
    that several of them name, by the same normalised path, is listed once, at its first place).

    Raises :class:`InputError` (before anything is read) for a source that does not exist, a glob
    that matches nothing, or a folder or list file given with other sources.
    """
    if kind not in ("image", "video"):
        raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
    given = tuple(str(s) for s in sources)
    if not given:
        raise InputError(f"no input {kind}s given")
    for source in given:
        path = Path(source)
        if path.is_dir() or (path.is_file() and _is_list(source)):
            if len(given) > 1:
                what = "folder" if path.is_dir() else "list file"
                raise InputError(f"a {what} ({source}) must be the only input of a dataset")
            root = source if path.is_dir() else str(path.parent)
            return Listing(given, kind, os.path.abspath(root), _absolute(exclude))
        if path.is_file():
            continue
        if _GLOB_CHARS & set(source):
            if all(Path(m).is_dir() for m in glob.iglob(source, recursive=True)):
                raise InputError(f"no file matches {source!r}")
            continue
        raise InputError(f"input not found: {source}")
    base = _glob_base(given[0]) if len(given) == 1 else None
    return Listing(given, kind, os.path.abspath(base or "."), _absolute(exclude))


def folder_files(folder: str | os.PathLike, kind: str = "image", *, exclude=None) -> list[str]:
    """The files a folder listing takes, as paths below ``folder`` (``folder/b/1.png``): images (or
    videos) walked depth-first, each folder sorted by name, hidden ones skipped, the folder
    ``exclude`` (an output folder inside it) not walked.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("b/2.png", "a.jpg", "notes.txt"):
    ...     (root / name).parent.mkdir(exist_ok=True); _ = (root / name).write_bytes(b"x")
    >>> [pathlib.Path(f).relative_to(root).as_posix() for f in folder_files(root)]
    ['a.jpg', 'b/2.png']
    """
    suffixes = IMAGE_SUFFIXES if kind == "image" else VIDEO_SUFFIXES
    excluded = _identity(exclude) if exclude is not None else None
    return list(_walk(Path(folder), suffixes, excluded))


def spread_indices(total: int, count: int) -> list[int]:
    """``min(count, total)`` positions spread evenly over ``range(total)``: the middle of each of
    that many equal parts (how a sample of a dataset is picked: the storage PCA's, ``pca --features``).

    >>> spread_indices(10, 3), spread_indices(2, 5)
    ([1, 5, 8], [0, 1])
    """
    n = min(count, total)
    return [(2 * i + 1) * total // (2 * n) for i in range(n)]


def _glob_base(source: str) -> str | None:
    """The folder a glob's matches are named relative to: its leading part without wildcards
    (``photos/cats`` for ``photos/cats/**/*.jpg``); None for a plain file."""
    if not _GLOB_CHARS & set(source):
        return None
    parts = Path(source).parts
    fixed = parts[: next(i for i, p in enumerate(parts) if _GLOB_CHARS & set(p))]
    return str(Path(*fixed)) if fixed else "."


def normal_path(path: str | os.PathLike) -> str:
    """An item path's normal form, ``/`` separated, without ``.`` parts or repeated separators
    (``./a//b.jpg`` -> ``a/b.jpg``); the same form is used to look items up.

    >>> normal_path("./cats//001.jpg")
    'cats/001.jpg'
    """
    text = os.fspath(path).replace(os.sep, "/")
    return str(PurePosixPath(text)) if text else text


def _absolute(path) -> str | None:
    return None if path is None else os.path.abspath(path)


def _is_list(source: str) -> bool:
    return Path(source).suffix.lower() in LIST_SUFFIXES


def _identity(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of ``path`` (links followed): the same for every path to one folder
    (through symbolic links, ``..``, bind mounts); None if it does not exist."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _outside(exclude: tuple[int, int] | None):
    """A test ``file -> bool``: is ``file`` outside the folder whose :func:`_identity` is ``exclude``?
    Each folder above the file is looked at once (the answers are kept)."""
    known: dict[str, bool] = {}

    def outside(file: str) -> bool:
        if exclude is None:
            return True
        folder, chain, answer = os.path.dirname(os.path.abspath(file)), [], True
        while True:
            if folder in known:
                answer = known[folder]
                break
            chain.append(folder)
            if _identity(folder) == exclude:
                answer = False
                break
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
        known.update(dict.fromkeys(chain, answer))
        return answer

    return outside


def _walk(folder: Path, suffixes: tuple[str, ...], exclude: tuple[int, int] | None) -> Iterator[str]:
    """Files below ``folder`` with one of ``suffixes``, depth-first, each folder sorted by name;
    symbolic links to folders are followed once (a loop is not walked twice). The folder whose
    :func:`_identity` is ``exclude`` is not walked, by whatever path it is reached."""
    seen: set[tuple[int, int]] = set()
    if exclude is not None and exclude != _identity(folder):
        seen.add(exclude)  # skipped as a folder already walked

    def visit(path: str) -> Iterator[str]:
        stat = os.stat(path)
        if (stat.st_dev, stat.st_ino) in seen:
            return
        seen.add((stat.st_dev, stat.st_ino))
        try:
            with os.scandir(path) as entries:
                ordered = sorted(entries, key=lambda e: e.name)
        except OSError as err:
            raise InputError(f"cannot list folder {path}: {err.strerror or err}") from None
        for entry in ordered:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                yield from visit(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in suffixes:
                yield entry.path  # a broken link or a FIFO too: it fails when read, and is recorded

    yield from visit(str(folder))


def _list_file_rows(path: Path) -> Iterator[tuple[str, str, str | None]]:
    """``(path as written, file to open, points file)`` for each row of a list file."""
    base = path.parent
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        rows = _parquet_rows(path)
    elif suffix == ".csv":
        rows = _csv_rows(path)
    else:
        rows = _text_rows(path)
    for number, listed, points in rows:
        if not listed:
            raise InputError(f"list file {path}: row {number} has an empty path")
        file = os.path.abspath(base / listed)
        yield normal_path(listed), file, (os.path.abspath(base / points) if points else None)


def _text_rows(path: Path) -> Iterator[tuple[int, str, None]]:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                text = line.strip()
                if text and not text.startswith("#"):
                    yield number, text, None
    except UnicodeDecodeError:
        raise InputError(f"list file {path} is not UTF-8 text") from None


def _csv_rows(path: Path) -> Iterator[tuple[int, str, str | None]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            reader.fieldnames = columns
            if "path" not in columns:
                raise InputError(f"list file {path} has no 'path' column (columns: {', '.join(columns) or 'none'})")
            for number, row in enumerate(reader, start=2):
                yield number, (row.get("path") or "").strip(), (row.get("points") or "").strip() or None
    except UnicodeDecodeError:
        raise InputError(f"list file {path} is not UTF-8 text") from None
    except csv.Error as err:
        raise InputError(f"list file {path} is not valid CSV: {err}") from None


def _parquet_rows(path: Path) -> Iterator[tuple[int, str, str | None]]:
    import pyarrow.parquet as pq  # lazy: dinofeat --help imports this module

    try:
        table = pq.ParquetFile(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for files that are not Parquet
        raise InputError(f"list file {path} is not a Parquet file ({type(err).__name__})") from None
    names = table.schema_arrow.names
    if "path" not in names:
        raise InputError(f"list file {path} has no 'path' column (columns: {', '.join(names) or 'none'})")
    columns = ["path", "points"] if "points" in names else ["path"]
    number = 0
    for batch in table.iter_batches(batch_size=4096, columns=columns):
        data = batch.to_pydict()
        points = data.get("points", [None] * batch.num_rows)
        for listed, point in zip(data["path"], points):
            number += 1
            yield number, (listed or "").strip(), (point or "").strip() or None
