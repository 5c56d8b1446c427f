"""Ctrl-C and SIGTERM that never cut an MLflow write in half.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when a signal
arrives. Inside an MLflow write to SQLite that can leave a transaction open on a pooled
connection; the write that closes the run as ``KILLED`` then waits on the lock (20 s), fails,
and the run stays ``RUNNING``. (Seen once in 40 interrupts on a loaded 2-core machine.)

While :func:`deliver_interrupts` is active, SIGINT and SIGTERM raise ``KeyboardInterrupt``
as usual, except inside :func:`held_interrupts` blocks (every write of
:class:`~experiments.tracking.RunTracker`), where they are held until the block ends.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state: dict[str, Any] = {"held": 0, "pending": None}


def _handler(signum: int, frame: Any) -> None:
    if _state["held"]:
        _state["pending"] = signum
        return
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def deliver_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM (e.g. a SLURM pre-emption) raise ``KeyboardInterrupt``, held as above.

    A no-op outside the main thread (e.g. a launcher's worker thread), where Python does not
    allow signal handlers; interrupts there behave as Python's default.
    """
    try:
        previous = {signum: signal.signal(signum, _handler) for signum in SIGNALS}
    except ValueError:  # not the main thread
        yield
        return
    _state.update(held=0, pending=None)
    try:
        yield
    finally:
        _state.update(held=0, pending=None)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def held_interrupts() -> Iterator[None]:
    """Hold SIGINT / SIGTERM until the block ends, then raise ``KeyboardInterrupt``.

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
        raise KeyboardInterrupt(f"signal {signum} (held until an MLflow write ended)")
