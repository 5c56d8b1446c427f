"""Interleaved timing: per-round ratios of jobs run alternately, and their median and IQR.

On a shared machine the speed of one core drifts over seconds (other processes, frequency
scaling), so two jobs timed one after the other can differ by more than the effect measured.
Here every job runs once per round, in an order reversed every other round (so that neither
always goes first, after the other has warmed or cooled the caches), and each round gives one
ratio ``time(job) / time(reference)``. The median of those ratios, with its interquartile range,
is the figure reported; it is robust to the rounds a burst of load hit.

The clock is injectable, so the logic is tested with a fake clock of known costs
(``tests/test_bench.py``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from threadpoolctl import threadpool_limits

Clock = Callable[[], float]
Job = Callable[[], object]

CLOCKS: dict[str, Clock] = {"cpu": time.process_time, "wall": time.perf_counter}


def round_orders(names: Sequence[str], rounds: int) -> list[list[str]]:
    """The order of the jobs in each round: as given in even rounds, reversed in odd ones.

    Raises:
        ValueError: for fewer than one round or no job.
    """
    if rounds < 1:
        raise ValueError(f"rounds: must be at least 1, got {rounds}")
    if not names:
        raise ValueError("no job to time")
    return [list(names) if r % 2 == 0 else list(reversed(names)) for r in range(rounds)]


def interleaved_times(
    jobs: Mapping[str, Job],
    rounds: int,
    clock: Clock = time.process_time,
    warmup: int = 1,
) -> dict[str, np.ndarray]:
    """Run every job once per round, interleaved (:func:`round_orders`), timing each call.

    Args:
        jobs: name -> callable doing one unit of work (e.g. one epoch); called without
            arguments, the result ignored.
        rounds: timed rounds (>= 1).
        clock: seconds, read before and after each call (default: this process's CPU time).
        warmup: untimed rounds first (allocator, caches, lazy initialisation).

    Returns:
        name -> ``(rounds,)`` seconds of each call, in round order.

    Raises:
        ValueError: for no job or fewer than one round.
    """
    orders = round_orders(list(jobs), rounds)
    for _ in range(warmup):
        for name in orders[0]:
            jobs[name]()
    times = {name: np.empty(rounds) for name in jobs}
    for r, order in enumerate(orders):
        for name in order:
            start = clock()
            jobs[name]()
            times[name][r] = clock() - start
    return times


def per_round_ratios(times: Mapping[str, np.ndarray], reference: str) -> dict[str, np.ndarray]:
    """``time(job) / time(reference)`` in each round, for every job but the reference.

    Raises:
        ValueError: if ``reference`` is not timed, or one of its times is not positive (a clock
            too coarse for the job).
    """
    if reference not in times:
        raise ValueError(f"reference job {reference!r} was not timed")
    base = np.asarray(times[reference], dtype=float)
    if not np.all(base > 0):
        raise ValueError(f"reference job {reference!r} took no measurable time on this clock")
    return {
        name: np.asarray(t, dtype=float) / base for name, t in times.items() if name != reference
    }


@dataclass(frozen=True)
class Summary:
    """Median and interquartile range of per-round values (ratios, or scaled ratios).

    Attributes:
        median: median over rounds.
        q1: 25th percentile.
        q3: 75th percentile.
        rounds: number of rounds.
    """

    median: float
    q1: float
    q3: float
    rounds: int


def summarize(values: np.ndarray) -> Summary:
    """Median and quartiles (linear interpolation, NumPy's default) of ``values`` ``(rounds,)``.

    Raises:
        ValueError: for no value.
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("no value to summarise")
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return Summary(float(median), float(q1), float(q3), int(values.size))


@contextlib.contextmanager
def limited_threads(threads: int) -> Iterator[None]:
    """Run with ``threads`` torch intra-op threads and as many BLAS/OpenMP threads (NumPy's).

    torch's own setting does not reach NumPy's BLAS, which otherwise uses every core
    (``threadpoolctl`` sets it); both are restored on exit.

    Raises:
        ValueError: for fewer than one thread.
    """
    if threads < 1:
        raise ValueError(f"threads: must be at least 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(previous)
