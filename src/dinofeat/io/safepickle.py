"""Loading pickles of numpy arrays without running the code a pickle can name.

A pickle may call any importable function the file names (``os.system`` included). Datasets such
as TAP-Vid are distributed as pickles of dicts, lists and numpy arrays; :func:`load_array_pickle`
resolves only the few numpy and builtin names those need, so a crafted file fails before anything
it names is called.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from typing import Any

import numpy as np

try:  # numpy >= 2 (numpy 1.26 also has these, for reading numpy 2 pickles)
    from numpy._core import multiarray, numeric
except ImportError:  # pragma: no cover - older numpy
    from numpy.core import multiarray, numeric  # type: ignore[no-redef]  # the same modules, older name

from dinofeat.errors import InputError
from dinofeat.io.inputs import check_input_file


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-0..2 pickles use it to store bytes, restricted to latin-1."""
    if encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _array_globals() -> dict[tuple[str, str], Any]:
    """The only names a numpy-array pickle needs: array/dtype/scalar reconstruction, a few builtins."""
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("collections", "OrderedDict"): OrderedDict,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # type: ignore[attr-defined]  # private
    for module in ("builtins", "__builtin__"):
        for name, value in (("bytearray", bytearray), ("set", set), ("frozenset", frozenset), ("complex", complex)):
            allowed[(module, name)] = value
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles containers, strings, numbers and numpy arrays, and nothing else.

    Loading a pickle may call any importable function the file names (``os.system`` included);
    this unpickler resolves only the few numpy and builtin names that array pickles use, so a
    crafted file fails with ``UnpicklingError`` before anything it names is called.
    """

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if _ArrayUnpickler._allowed is None:
            _ArrayUnpickler._allowed = _array_globals()
        found = _ArrayUnpickler._allowed.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")
        return found


def load_array_pickle(path: str | os.PathLike, what: str = "pickle") -> Any:
    """Load a pickle made of dicts, lists, strings, numbers and numpy arrays, without running code.

    Raises :class:`InputError` for a missing or empty file, a folder, or a file that is not such a
    pickle (``what`` names the kind of file in the message, e.g. "TAP-Vid pickle").
    """
    path = check_input_file(path, what)
    try:
        with path.open("rb") as handle:
            return _ArrayUnpickler(handle, encoding="latin1").load()
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from None
    except Exception as err:  # noqa: BLE001 - any failure of untrusted data is a bad file, never a crash
        text = " ".join(str(err).split()) or type(err).__name__
        raise InputError(f"not a {what}: {path} ({text[:200]})") from None
