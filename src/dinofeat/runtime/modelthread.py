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
Ctrl-C, and a server that is told to stop calls :func:`stop_passes`, which ends those passes after
their current block. If the program exits while an interrupted pass is still finishing its block, it waits
:data:`EXIT_WAIT_SECONDS` for it and then ends the process at once with status 130 (tearing torch
down under a running operation would abort it with a C++ error instead).

Who receives the signal: the kernel hands a process-directed SIGINT to any thread that does not
block it, and CPython runs the Python handler only in the main thread, when that thread next
checks. So every thread dinofeat starts blocks SIGINT and SIGTERM from its creation
(:func:`start_thread`; :func:`block_interrupts` as a pool's initializer) and the threads *it*
starts (OpenMP's team) inherit the mask: the signal goes to the main thread, whose wait it cuts
short. Threads of other libraries may still take it, so the waiting main thread also runs any
pending handler itself at each :data:`POLL_SECONDS` step (:func:`run_pending_handlers`): the flag
that would make it check can be cleared by another thread in CPython before 3.12.

>>> run_responsively(lambda cancel: 6 * 7)
42
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

T = TypeVar("T")
#: How often the waiting main thread looks up, in seconds (an interrupt is answered within this).
POLL_SECONDS = 0.1
#: At exit, how long to wait for an interrupted pass to stop before ending the process at once.
EXIT_WAIT_SECONDS = 0.2
#: The signals no helper thread takes, so that the main thread does.
INTERRUPT_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})

_jobs: queue.SimpleQueue | None = None
_start_lock = threading.Lock()
_idle = threading.Event()  # set while the helper runs no job
_idle.set()
_stopping = threading.Event()  # set by stop_passes(): passes run inline stop after their block
_inline_lock = threading.Lock()
_inline_passes = 0
_no_inline_pass = threading.Event()  # set while no pass runs inline
_no_inline_pass.set()


def run_responsively(work: Callable[[threading.Event], T]) -> T:
    """``work(cancel)``, in the helper thread when called from the main thread, else inline.

    ``cancel`` is set when the main thread is interrupted; ``work`` should check it between steps
    and stop (raise) when it is set. Exceptions of ``work`` are raised in the caller.
    """
    if threading.current_thread() is not threading.main_thread():
        return _run_inline(work)
    cancel, done = threading.Event(), threading.Event()
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
            run_pending_handlers()
    except BaseException:  # KeyboardInterrupt (or any exception raised in the waiting thread)
        cancel.set()
        raise
    if "error" in box:
        raise box.pop("error")
    return box["value"]


def stop_passes(wait: float = EXIT_WAIT_SECONDS) -> bool:
    """Make every pass running inline (in threads other than the main one) stop after its block.

    For a server that is stopping (the app on Ctrl-C); later passes stop at their first block.
    Returns whether none is still running after ``wait`` seconds.
    """
    _stopping.set()
    return _no_inline_pass.wait(wait)


def _run_inline(work: Callable[[threading.Event], T]) -> T:
    global _inline_passes
    with _inline_lock:
        _inline_passes += 1
        _no_inline_pass.clear()
    try:
        return work(_stopping)
    finally:
        with _inline_lock:
            _inline_passes -= 1
            if not _inline_passes:
                _no_inline_pass.set()


def _helper() -> queue.SimpleQueue:
    global _jobs
    with _start_lock:
        if _jobs is None:
            jobs: queue.SimpleQueue = queue.SimpleQueue()
            start_thread(_serve, jobs, name="dinofeat-model")
            _jobs = jobs
    return _jobs


def block_interrupts() -> None:
    """Block :data:`INTERRUPT_SIGNALS` in the calling thread (a pool's ``initializer``; not in the main thread)."""
    if hasattr(signal, "pthread_sigmask"):  # POSIX; on Windows only the main thread gets Ctrl-C anyway
        signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPT_SIGNALS)


@contextlib.contextmanager
def _interrupts_blocked() -> Iterator[None]:
    """Block :data:`INTERRUPT_SIGNALS` in this thread for the block; a signal meanwhile waits and comes after."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPT_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def start_thread(target: Callable[..., Any], *args: Any, name: str) -> threading.Thread:
    """Start ``target(*args)`` in a daemon thread that never takes SIGINT or SIGTERM.

    The thread is created with the signals blocked (a new thread inherits its creator's mask), so
    there is no moment at which it could take one, and neither can the threads it starts.
    """
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    with _interrupts_blocked():
        thread.start()
    return thread


def run_pending_handlers() -> None:
    """Run the Python handlers of signals received so far (in the main thread; raises what they raise).

    CPython runs them when the main thread's evaluation loop sees a flag, which a signal taken by
    another thread sets but another thread's bookkeeping can clear again (before 3.12); asking
    directly (the C API's ``PyErr_CheckSignals``, not exposed in Python) cannot miss one.
    """
    if threading.current_thread() is threading.main_thread() and _check_signals is not None:
        _check_signals()


def _signal_checker() -> Callable[[], int] | None:
    try:
        return ctypes.pythonapi.PyErr_CheckSignals  # PyDLL: raises the handler's exception
    except (AttributeError, OSError):  # an interpreter without the C API (PyPy): its own loop checks
        return None


_check_signals = _signal_checker()


def _serve(jobs: queue.SimpleQueue) -> None:
    while True:
        jobs.get()()


def _at_exit() -> None:
    """A pass still in its block: give it a moment, then leave without tearing torch down."""
    try:
        if stop_passes() and _idle.wait(EXIT_WAIT_SECONDS):
            return
    except KeyboardInterrupt:  # Ctrl-C again while waiting: leave now
        pass
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(130)


atexit.register(_at_exit)


def _forget_helper() -> None:
    """A forked child has no helper thread: it starts its own when needed."""
    global _jobs
    _jobs = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helper)
