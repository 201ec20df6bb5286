"""Long forward passes run so that Ctrl-C is answered at once, not when the current block ends.

Python raises ``KeyboardInterrupt`` in the main thread between bytecodes, so a forward pass run in
the main thread is interrupted only when its current torch operation returns; one attention or MLP
product of a big model on a big image can take many seconds on a CPU. :func:`run_responsively`
runs such a pass in a helper thread instead (torch releases the GIL in its operations) while the
main thread waits in short, interruptible steps: on Ctrl-C the main thread raises at once, and the
helper stops at the end of its current block (it polls the ``cancel`` event it is given, e.g. from
``forward_features(on_block=...)``), its result thrown away.

The helper is one daemon thread, started on first use and kept (its OpenMP thread team is reused),
which takes the calling thread's ``torch`` thread count for each job. Called from any other thread
than the main one (a web server's worker), the function runs inline: only the main thread receives
Ctrl-C. If the program exits while an interrupted pass is still finishing its block, it waits
:data:`EXIT_WAIT_SECONDS` for it and then ends the process at once with status 130 (tearing torch
down under a running operation would abort it with a C++ error instead).

>>> run_responsively(lambda cancel: 6 * 7)
42
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")
#: How often the waiting main thread looks up, in seconds (an interrupt is answered within this).
POLL_SECONDS = 0.1
#: At exit, how long to wait for an interrupted pass to stop before ending the process at once.
EXIT_WAIT_SECONDS = 0.5

_jobs: queue.SimpleQueue | None = None
_start_lock = threading.Lock()
_idle = threading.Event()  # set while the helper runs no job
_idle.set()


def run_responsively(work: Callable[[threading.Event], T]) -> T:
    """``work(cancel)``, in the helper thread when called from the main thread, else inline.

    ``cancel`` is set when the main thread is interrupted; ``work`` should check it between steps
    and stop (raise) when it is set. Exceptions of ``work`` are raised in the caller.
    """
    cancel = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        return work(cancel)
    done = threading.Event()
    box: dict = {}
    threads = torch.get_num_threads()

    def job() -> None:
        _idle.clear()
        try:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            box["value"] = work(cancel)
        except BaseException as err:  # noqa: BLE001 - handed to the caller, who raises it
            box["error"] = err
        finally:
            _idle.set()
            done.set()

    _helper().put(job)
    try:
        while not done.wait(POLL_SECONDS):
            pass
    except BaseException:  # KeyboardInterrupt (or any exception raised in the waiting thread)
        cancel.set()
        raise
    if "error" in box:
        raise box.pop("error")
    return box["value"]


def _helper() -> queue.SimpleQueue:
    global _jobs
    with _start_lock:
        if _jobs is None:
            jobs: queue.SimpleQueue = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(jobs,), name="dinofeat-model", daemon=True).start()
            atexit.register(_at_exit)
            _jobs = jobs
    return _jobs


def _serve(jobs: queue.SimpleQueue) -> None:
    while True:
        jobs.get()()


def _at_exit() -> None:
    """An interrupted pass still in its block: give it a moment, then leave without tearing torch down."""
    try:
        if _idle.wait(EXIT_WAIT_SECONDS):
            return
    except KeyboardInterrupt:  # Ctrl-C again while waiting: leave now
        pass
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(130)


def _forget_helper() -> None:
    """A forked child has no helper thread: it starts its own when needed."""
    global _jobs
    _jobs = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helper)
