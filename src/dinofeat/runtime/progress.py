"""Progress reporting: the library calls a plain callback; the CLI shows it with tqdm, the app with Gradio.

A workflow that takes a while accepts ``progress: Progress | None`` and calls
``progress(done, total)`` after each unit of work (a frame, an image), ``done`` counting from 1.
Nothing in the library draws a bar itself.

>>> seen = []
>>> report(lambda done, total: seen.append((done, total)), 1, 3)
>>> seen
[(1, 3)]
"""

from __future__ import annotations

import sys
from typing import Any, Protocol


class Progress(Protocol):
    """``progress(done, total)``: ``done`` units of ``total`` are finished (``total`` may be 0 if unknown)."""

    def __call__(self, done: int, total: int) -> None: ...


def report(progress: Progress | None, done: int, total: int) -> None:
    """Call ``progress`` if there is one."""
    if progress is not None:
        progress(done, total)


class TqdmProgress:
    """A :class:`Progress` drawn as a tqdm bar on stderr (only on a terminal), ending at 100 %.

    Use as a context manager; ``enabled=False`` draws nothing. ``delay`` seconds pass before the
    bar appears (so quick work shows nothing); ``leave=False`` removes the bar when done (a bar
    within another one's step, such as a forward pass's blocks within a video's frames).

    >>> with TqdmProgress("counting", "item", enabled=False) as bar:
    ...     bar(1, 2)
    """

    def __init__(self, desc: str, unit: str, *, enabled: bool = True, delay: float = 0.0, leave: bool = True) -> None:
        self.desc, self.unit, self.enabled = desc, unit, enabled
        self.delay, self.leave = delay, leave
        self._bar: Any = None  # a tqdm bar, made on the first call

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        bar = self._drawn(total)
        if bar.total is None and total:  # made by note() before the total was known
            bar.total = total
        bar.update(done - bar.n)

    def note(self, text: str) -> None:
        """Show ``text`` after the bar's counts (``""`` clears it): what the current unit is doing,
        such as the blocks of a slow forward pass, in the same bar rather than in a second one."""
        if self.enabled and (text or self._bar is not None):
            self._drawn(0).set_postfix_str(text)

    def _drawn(self, total: int) -> Any:
        """The tqdm bar, made on first use."""
        if self._bar is None:
            from tqdm import tqdm  # lazy: tqdm takes ~0.07 s to import, and only a drawn bar needs it

            self._bar = tqdm(
                total=total or None,
                desc=self.desc,
                unit=self.unit,
                file=sys.stderr,
                disable=None,
                leave=self.leave,
                delay=self.delay,
                dynamic_ncols=True,
            )
        return self._bar

    def __enter__(self) -> TqdmProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
