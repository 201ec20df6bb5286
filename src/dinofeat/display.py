"""What results show in a notebook: a picture as PNG bytes (for ``_repr_png_``) and tables as
pandas DataFrames (for ``to_pandas()``), pandas being optional.

Jupyter calls an object's ``_repr_png_`` to show it as a picture and falls back on ``repr``;
dinofeat's results give short reprs (shapes, counts, model: never tensors) and, where a picture
says more (matches, PCA colours, a track's first frame), a PNG.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dinofeat.errors import DinofeatError

#: Said when ``to_pandas()`` is called without pandas installed.
PANDAS_MISSING = "to_pandas() needs pandas, which is not installed: pip install pandas"


def png_bytes(image: np.ndarray) -> bytes:
    """``(H, W, 3|4) uint8`` RGB(A) as PNG file bytes."""
    from PIL import Image  # lazy: only a notebook showing a picture needs it

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="png")
    return buffer.getvalue()


def data_frame(columns: Mapping[str, Sequence[Any] | np.ndarray]) -> Any:
    """A ``pandas.DataFrame`` of ``columns`` (name -> values, all of one length), or
    :class:`~dinofeat.errors.DinofeatError` saying how to install pandas."""
    try:
        import pandas  # lazy: pandas is optional, and slow to import
    except ImportError:
        raise DinofeatError(PANDAS_MISSING) from None
    return pandas.DataFrame({name: np.asarray(values) for name, values in columns.items()})


def size_text(size_wh: Sequence[int]) -> str:
    """``(640, 480)`` -> ``"640x480"``."""
    return "x".join(str(int(v)) for v in size_wh)
