"""Ctrl-C reaches the main thread whichever thread the kernel hands it to, and every time.

Each case sends SIGINT while a (tiny) forward pass waits in the helper thread, 200 times. A lost
signal would show as a pass that returns instead of ``KeyboardInterrupt``; the block waits for an
event the test sets only afterwards, so "answered" means "answered while the block was running",
with no clock in the assertion.
"""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from dinofeat.runtime import modelthread
from dinofeat.runtime.modelthread import block_interrupts, run_responsively, start_thread

ROUNDS = 200


def _blocked_signals() -> set[signal.Signals]:
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, []))


def _answered(send) -> tuple[int, int]:
    """Run ``send()`` inside a pass, ROUNDS times; (interrupts answered during the block, passes that returned)."""
    answered = returned = 0
    for _ in range(ROUNDS):
        release, in_block = threading.Event(), threading.Event()

        def block(cancel: threading.Event, in_block=in_block, release=release) -> str:
            in_block.set()
            send()
            release.wait(5)  # the slow block: it ends only when the test lets it (or after 5 s)
            return "returned"

        try:
            run_responsively(block)
            returned += 1
        except KeyboardInterrupt:
            answered += in_block.is_set() and not release.is_set()
        finally:
            release.set()
        modelthread._idle.wait(5)  # the helper is free for the next round
    return answered, returned


@pytest.fixture
def quick_polls(monkeypatch):
    """Poll every 5 ms, so that 200 rounds whose signal is answered at a poll stay quick."""
    monkeypatch.setattr(modelthread, "POLL_SECONDS", 0.005)


def test_sigint_sent_from_the_model_thread_is_answered_every_time(quick_polls):
    assert _answered(lambda: os.kill(os.getpid(), signal.SIGINT)) == (ROUNDS, 0)


def test_sigint_sent_from_another_thread_is_answered_every_time(quick_polls):
    def from_another_thread() -> None:
        sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT))
        sender.start()
        sender.join()

    assert _answered(from_another_thread) == (ROUNDS, 0)


def test_sigint_taken_by_a_thread_dinofeat_did_not_start_is_answered_every_time(quick_polls):
    """A library's thread (a web server's, a decoder's) that takes the signal itself: its C handler
    only flags it, and the main thread's wait runs the Python handler at its next poll."""
    stop = threading.Event()
    foreign = threading.Thread(target=stop.wait, name="a library's thread", daemon=True)
    foreign.start()
    try:
        assert _answered(lambda: signal.pthread_kill(foreign.ident, signal.SIGINT)) == (ROUNDS, 0)
    finally:
        stop.set()


def test_the_helper_thread_blocks_interrupts_from_its_start():
    seen = run_responsively(lambda cancel: _blocked_signals())
    assert seen >= modelthread.INTERRUPT_SIGNALS
    assert not modelthread.INTERRUPT_SIGNALS & _blocked_signals()  # the main thread's mask is as it was


def test_threads_dinofeat_starts_block_interrupts_and_so_do_theirs():
    seen: dict[str, set] = {}

    def record(name: str) -> None:
        seen[name] = _blocked_signals()
        child = threading.Thread(target=lambda: seen.setdefault("its own thread", _blocked_signals()))
        child.start()
        child.join()

    start_thread(record, "start_thread", name="test").join()
    with ThreadPoolExecutor(1, initializer=block_interrupts) as pool:
        pool.submit(lambda: seen.setdefault("a pool's thread", _blocked_signals())).result()
    assert {name: mask >= modelthread.INTERRUPT_SIGNALS for name, mask in seen.items()} == {
        "start_thread": True,
        "its own thread": True,
        "a pool's thread": True,
    }
    assert not modelthread.INTERRUPT_SIGNALS & _blocked_signals()


def test_stop_passes_ends_a_pass_in_another_thread_after_its_block(monkeypatch):
    """A web server's worker runs its pass inline; on Ctrl-C the server asks it to stop."""
    monkeypatch.setattr(modelthread, "_stopping", threading.Event())
    in_block, release, outcome = threading.Event(), threading.Event(), []

    def two_blocks(cancel: threading.Event) -> str:
        in_block.set()
        release.wait(5)  # the first block, under way when the server is told to stop
        if cancel.is_set():
            raise KeyboardInterrupt  # what the extractor's block hook does
        return "the second block ran"

    def worker() -> None:
        try:
            outcome.append(run_responsively(two_blocks))
        except KeyboardInterrupt:
            outcome.append("stopped after its block")

    thread = threading.Thread(target=worker)
    thread.start()
    in_block.wait(5)
    assert modelthread.stop_passes(wait=0) is False  # still inside its block
    release.set()
    assert modelthread.stop_passes(wait=5) is True
    thread.join()
    assert outcome == ["stopped after its block"]
