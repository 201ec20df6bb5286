"""Handing freed memory back to the system, so long streams keep a flat resident size.

A video job frees every frame's buffers (decoded frames, resized copies, feature maps, search
tables) before the next frame, but glibc's ``malloc`` keeps most freed blocks for reuse. Blocks of
sizes that keep changing fragment its heaps, and the process's resident memory creeps up with the
video's length even though nothing is leaked: 440 MB after 200 frames, 570 MB after 600 in one
measurement (ViT-S, 224 px, ``track --grid 4``). :func:`release_freed_memory` asks glibc to return
the free pages (``malloc_trim``); :func:`releasing` does so after each item of a stream (each frame
of a video): the peak then stays within 2 % from 200 to 2,000 frames. Elsewhere
(macOS, Windows, musl) both do nothing: those allocators return memory on their own terms.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Generator, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

#: Items of a stream between two releases. Every item: a release with nothing to return takes under
#: a microsecond, and releasing every 8th frame still let the peak grow 9 % over 2,000 frames.
RELEASE_EVERY = 1


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return None


def release_freed_memory() -> bool:
    """Return the C allocator's free pages to the system; True where that was possible (glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def releasing(items: Iterable[T], every: int = RELEASE_EVERY) -> Iterator[T]:
    """``items`` unchanged, releasing freed memory (:func:`release_freed_memory`) after every
    ``every`` of them have been handed on (so the consumer has dropped the earlier ones). Closing
    this iterator closes ``items`` (a generator's files are released at once)."""
    iterator = iter(items)
    try:
        for count, item in enumerate(iterator, start=1):
            yield item
            if count % every == 0:
                release_freed_memory()
    finally:
        if isinstance(iterator, Generator):
            iterator.close()
