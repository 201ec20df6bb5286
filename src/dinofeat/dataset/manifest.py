"""A dataset folder's bookkeeping: its manifest, its lock, its error log, and what killed runs left.

* ``manifest.json`` records the settings, the model, the weights hash (sha256 of the loaded state
  dict, so the same weights give the same hash whatever file they came from), the precision the
  model ran in (``precision_used``: ``auto`` resolved; recorded, not compared), the dinofeat
  version and the inputs. :func:`claim_folder` writes it into a new folder, or refuses a run whose
  settings differ (one line naming the first difference). The device, engine, batch size and
  worker counts are not compared: they change the floats by rounding only, or nothing.
* ``.lock`` is held for the run (:func:`locked`): a second run into the same folder is refused.
* ``errors.jsonl`` (:class:`ErrorLog`): one ``{"path", "error", "item"}`` object per line for each
  file that failed; a line cut short by a kill is skipped when read, and a path recorded twice
  (by killed runs) is read once (:func:`read_errors`).
* Temporary files of unfinished atomic writes (``.name.*``) are removed by the next run
  (:func:`remove_temporary_files`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from dinofeat import __version__
from dinofeat.dataset.layout import MANIFEST, SHARDS, TRACKS
from dinofeat.errors import DinofeatError, DiskFullError, InputError, field, is_disk_full, render
from dinofeat.errors import one_line as squashed
from dinofeat.io.outputs import format_json, staged_outputs
from dinofeat.options import ExtractorOptions

if sys.platform != "win32":  # Windows has no advisory locks: one run at a time is then the user's care
    import fcntl

MANIFEST_FORMAT = "dinofeat-dataset"
MANIFEST_VERSION = 1
#: Manifest entries that must agree for a rerun into the same folder.
COMPARED = ("kind", "dinofeat_version", "model", "weights_sha256", "settings", "inputs.items", "inputs.sha256")


def make_manifest(
    kind: str, model: ExtractorOptions, weights_sha256: str | None, settings: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """The ``manifest.json`` document of a dataset folder; ``weights_sha256`` is None in the first
    check of a run, before the model is loaded (see :func:`claim_folder`)."""
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "kind": kind,
        "dinofeat_version": __version__,
        "model": model.model,
        "weights": model.weights,
        "weights_sha256": weights_sha256,
        "settings": settings,
        **extra,
    }


def claim_folder(folder: Path, manifest: dict, *, check_only: bool = False) -> None:
    """Write ``manifest`` into an empty ``folder``, or check that the folder's manifest agrees with it.

    Raises :class:`InputError` naming the first setting that differs, or when the folder holds
    files but no manifest (it is not a dataset folder). ``check_only`` checks what ``manifest``
    holds and writes nothing (a first check before the model is loaded for its weights hash).
    """
    path = folder / MANIFEST
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise InputError(f"{path} is damaged (not JSON); use another {field('out_dir')}") from None
        for key in COMPARED:
            if check_only and _lookup(manifest, key) is None:
                continue
            then, now = _lookup(old, key), _lookup(manifest, key)
            if isinstance(then, dict) and isinstance(now, dict):
                names = [name for name in {**then, **now} if then.get(name) != now.get(name)]
                key, then, now = (f"{key}.{names[0]}", then.get(names[0]), now.get(names[0])) if names else (key, 0, 0)
            if then != now:
                raise InputError(
                    f"{folder} was made with other settings ({key}: {_show(then)} there, {_show(now)} now); "
                    f"rerun with the same settings to resume, or use another {field('out_dir')}"
                )
        return
    others = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
    if others:
        raise InputError(f"{folder} is not empty and holds no {MANIFEST}; give a new or empty {field('out_dir')}")
    if not check_only:
        _write_json(path, manifest)


def _lookup(document: dict[str, Any], key: str) -> Any:
    found: Any = document
    for part in key.split("."):
        found = found.get(part) if isinstance(found, dict) else None
    return found


def _show(value: object) -> str:
    if isinstance(value, str) and len(value) == 64:
        return value[:12] + "…"  # a hash
    return json.dumps(value)


def _write_json(path: Path, document: dict[str, Any]) -> None:
    with staged_outputs([path]) as (tmp,):
        tmp.write_text(format_json(document))


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock`` for the run: a second run into the same folder is refused."""
    if sys.platform == "win32":  # no advisory locks; one run at a time is then the user's care
        yield
        return
    with open(folder / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another dinofeat run is writing to {folder}") from None
        yield


def remove_temporary_files(folder: Path) -> None:
    """Remove what killed runs left: the temporary files of unfinished atomic writes (``.name.*``)."""
    for sub in (folder, folder / SHARDS, folder / TRACKS):
        if sub.is_dir():
            for path in sub.iterdir():
                if path.name.startswith(".") and path.name != ".lock" and path.is_file():
                    path.unlink(missing_ok=True)


class ErrorLog:
    """``errors.jsonl``: one ``{"path", "error", "item"}`` line per failed item, appended and flushed
    as failures happen; :meth:`rewrite` replaces it with the final list at the end of a run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[str] | None = None

    def record(self, error: dict[str, Any]) -> None:
        if self._handle is None:
            self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run; close()
        record = {"path": error["path"], "error": render(error["error"]), "item": error["item"]}
        try:
            self._handle.write(json.dumps(record) + "\n")
            self._handle.flush()
        except OSError as err:
            if is_disk_full(err):
                raise DiskFullError(f"no space left on device writing {self.path}") from None
            raise

    def rewrite(self, errors: Iterable[dict]) -> int:
        """Replace the log by ``errors`` (atomically; no file when there are none); returns the
        number of records written (one per item)."""
        self.close()
        rows = sorted({e["item"]: e for e in errors}.values(), key=lambda e: e["item"])
        if not rows:
            self.path.unlink(missing_ok=True)
            return 0
        with staged_outputs([self.path]) as (tmp,):
            records = ({"path": e["path"], "error": render(e["error"]), "item": e["item"]} for e in rows)
            tmp.write_text("".join(json.dumps(record) + "\n" for record in records))
        return len(rows)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_errors(path: str | os.PathLike) -> list[dict]:
    """The records of an ``errors.jsonl``, one per path (a line cut short by a kill is skipped). A
    path recorded again (appended by runs killed before they rewrote the log) keeps its first place
    and its last record."""
    path = Path(path)
    if not path.is_file():
        return []
    records: dict[str, dict] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "path" in record and "error" in record:
            records[record["path"]] = record
    return list(records.values())


def one_line(err: BaseException) -> str:
    """An exception as the one-line reason ``errors.jsonl`` records. A dinofeat error keeps the
    :func:`~dinofeat.errors.field` marks of its template (an ``on_error="fail"`` error quoting it
    names flags on the command line); :class:`ErrorLog` writes them as field names."""
    if isinstance(err, DinofeatError) and err.template.strip(" "):
        return squashed(err.template)
    text = " ".join(str(err).split())
    if isinstance(err, OSError) and text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
