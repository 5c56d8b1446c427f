"""Ctrl-C and SIGTERM that never cut an MLflow write in half, and say which signal it was.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when a signal
arrives. Inside an MLflow write to SQLite that can leave a transaction open on a pooled
connection; the write that closes the run as ``KILLED`` then waits on the lock (20 s), fails,
and the run stays ``RUNNING``. (Seen once in 40 interrupts on a loaded 2-core machine.)

While :func:`deliver_interrupts` is active, SIGINT and SIGTERM (and, in a submitit SLURM job,
its pre-emption signal: :mod:`experiments.preemption`) raise :class:`Interrupted` (a
``KeyboardInterrupt`` that knows its signal) as usual, except inside :func:`held_interrupts`
blocks (every write of :class:`~experiments.tracking.RunTracker`), where they are held until
the block ends. The entry point turns it into exit status ``128 + signal`` (130 for Ctrl-C,
143 for SIGTERM), so that a scheduler can tell a pre-emption from a crash.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state: dict[str, Any] = {"held": 0, "pending": None, "active": 0}


class Interrupted(KeyboardInterrupt):
    """A signal :func:`deliver_interrupts` handles, received while it was active.

    Attributes:
        signum: the signal's number (``signal.SIGINT``, ``signal.SIGTERM``, or an extra signal
            of :func:`deliver_interrupts` such as ``signal.SIGUSR2``).
    """

    def __init__(self, signum: int, note: str = "") -> None:
        super().__init__(f"signal {signum}{note}")
        self.signum = signum


def signal_of(interrupt: KeyboardInterrupt) -> int:
    """The signal behind ``interrupt``: its own for :class:`Interrupted`, else SIGINT."""
    return getattr(interrupt, "signum", signal.SIGINT)


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """The shell's status for a process ended by that signal: 130 (SIGINT), 143 (SIGTERM)."""
    return 128 + int(signal_of(interrupt))


def _handler(signum: int, frame: Any) -> None:
    if _state["held"]:
        _state["pending"] = signum
        return
    raise Interrupted(signum)


@contextmanager
def deliver_interrupts(*extra: int) -> Iterator[None]:
    """SIGINT, SIGTERM (``scancel``) and ``extra`` raise :class:`Interrupted`, held as above.

    Blocks nest (the entry point holds one for the whole process, each training job another);
    only the outermost installs and restores the handlers (the previous ones: Python's, or
    those submitit installed in its jobs). A no-op outside the main thread (e.g. a launcher's
    worker thread), where Python does not allow signal handlers; interrupts there behave as
    Python's default.

    Args:
        extra: more signals to handle the same way (a submitit job's pre-emption signal,
            :mod:`experiments.preemption`).
    """
    if _state["active"]:
        _state["active"] += 1
        try:
            yield
        finally:
            _state["active"] -= 1
        return
    try:
        previous = {signum: signal.signal(signum, _handler) for signum in (*SIGNALS, *extra)}
    except ValueError:  # not the main thread
        yield
        return
    _state.update(held=0, pending=None, active=1)
    try:
        yield
    finally:
        _state.update(held=0, pending=None, active=0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def held_interrupts() -> Iterator[None]:
    """Hold SIGINT / SIGTERM until the block ends, then raise :class:`Interrupted`.

    Blocks nest; the interrupt is raised when the outermost one ends without an exception of
    its own. Without :func:`deliver_interrupts` active, it changes nothing.
    """
    _state["held"] += 1
    try:
        yield
    finally:
        _state["held"] -= 1
    if not _state["held"] and _state["pending"] is not None:
        signum, _state["pending"] = _state["pending"], None
        raise Interrupted(signum, " (held until an MLflow write ended)")
