"""The benchmark's table: one row per compared job, written as CSV and Markdown.

The Markdown file starts with the date, the machine (CPU model, cores), the torch and NumPy
versions, the threads and the clock, since every ratio is only meaningful with them.
"""

from __future__ import annotations

import csv
import datetime
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

COLUMNS = (
    "group",
    "case",
    "job",
    "reference",
    "measure",
    "median",
    "q1",
    "q3",
    "rounds",
    "reference_seconds",
    "flop_ratio",
)


@dataclass(frozen=True)
class Row:
    """One compared job.

    Attributes:
        group: ``harness``, ``methods``, ``flops`` or ``official``.
        case: the shapes measured.
        job: the job's name.
        reference: the job it is divided by.
        measure: ``time`` (the value is ``t_job / t_reference``: above 1 is slower) or
            ``flops`` (``FLOP/s_job / FLOP/s_reference``: above 1 is faster).
        median: median of the per-round values.
        q1: their 25th percentile.
        q3: their 75th percentile.
        rounds: number of rounds.
        reference_seconds: median time of one call of the reference job, seconds of the clock.
        flop_ratio: the floor beside a ``time`` ratio: matrix-product FLOPs of one training
            step of the job's method / the reference's (:mod:`experiments.bench.flops`, counted
            once, not timed); ``None`` (an empty CSV cell) where the jobs are not methods
            (harness, FLOP rate, the official code) or the step is not counted (NumPy).
    """

    group: str
    case: str
    job: str
    reference: str
    measure: str
    median: float
    q1: float
    q3: float
    rounds: int
    reference_seconds: float
    flop_ratio: float | None = None


FLOOR_NOTE = (
    "FLOP floor: matrix-product FLOPs of one training step of the job's method / the "
    "reference's, counted exactly (experiments/bench/flops.py: mm, addmm, bmm, convolutions, "
    "forward and backward; not LAPACK, elementwise work or the optimiser): the time ratio tends "
    "to it where matrix products dominate both steps, but it bounds work, not time."
)


def _cell(row: Row) -> str:
    """A summary cell: the median, and its FLOP floor when there is one (``2.10 (floor 2.17)``)."""
    if row.flop_ratio is None:
        return f"{row.median:.2f}"
    return f"{row.median:.2f} (floor {row.flop_ratio:.2f})"


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else :func:`platform.processor`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads: int, clock: str) -> dict[str, str]:
    """The header fields: date (UTC), CPU, cores, torch, NumPy, Python, threads, clock."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": str(threads),
        "clock": {"cpu": "process CPU time", "wall": "wall time"}.get(clock, clock),
    }


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """``path`` with a header line and one line per row (:data:`COLUMNS`)."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


def markdown(rows: Sequence[Row], header: Mapping[str, str]) -> str:
    """The table as Markdown, after a line per header field, then the FLOP floor's note."""
    lines = [f"- {key}: {value}" for key, value in header.items()]
    lines += [
        "",
        "| group | case | job | / reference | median | FLOP floor | IQR | rounds | reference s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        reference = row.reference if row.measure == "time" else f"{row.reference} (FLOP/s)"
        floor = "" if row.flop_ratio is None else f"{row.flop_ratio:.3g}"
        lines.append(
            f"| {row.group} | {row.case} | {row.job} | {reference} | {row.median:.3g} | {floor} "
            f"| {row.q1:.3g}-{row.q3:.3g} | {row.rounds} | {row.reference_seconds:.3g} |"
        )
    if any(row.flop_ratio is not None for row in rows):
        lines += ["", FLOOR_NOTE]
    return "\n".join(lines) + "\n"


def write_markdown(rows: Sequence[Row], header: Mapping[str, str], path: Path) -> None:
    """``path`` with :func:`markdown`'s text."""
    path.write_text(markdown(rows, header))


def _column(case: str) -> str:
    """A ``methods`` case's short column name: the network and the dataset."""
    data = case.split(" ")[0]
    if " cnn " in case:
        return f"CNN, {data}"
    if " rnn " in case:
        return f"RNN, {data}"
    return f"MLP, {data}"


def summary_markdown(rows: Sequence[Row], header: Mapping[str, str]) -> str:
    """The medians only, compact enough for the README (the full table is :func:`markdown`).

    One line for the harness and the FLOP rate, a method x network table of the ``methods``
    group (epoch time / the case's reference: backprop, or bptt for the RNN), the ``official``
    shapes (ours / our backprop) and the ``official-code`` rows (ours / the official code).
    A ratio with a FLOP floor reads ``2.10 (floor 2.17)``, and a note under the tables says
    what the floor counts. Groups absent from ``rows`` are left out.
    """
    machine_line = ", ".join(f"{key} {value}" for key, value in header.items())
    lines = [
        f"Measured {machine_line}. Medians of per-round ratios; the full table is bench.md "
        "in the same folder.",
        "",
    ]
    harness = [r for r in rows if r.group == "harness"]
    if harness:
        parts = [f"{r.median:.2f} ({r.case.split(' (')[0]})" for r in harness]
        lines.append("- harness / bare torch loop: " + "; ".join(parts))
    for r in (r for r in rows if r.group == "flops"):
        lines.append(f"- wide net's training step: {r.median:.0%} of the measured GEMM FLOP/s")
    methods = [r for r in rows if r.group == "methods"]
    if methods:
        columns = list(dict.fromkeys(_column(r.case) for r in methods))
        cells: dict[str, dict[str, str]] = {}
        for r in methods:
            cells.setdefault(r.job, {})[_column(r.case)] = _cell(r)
        lines += ["", "| epoch time / backprop's | " + " | ".join(columns) + " |"]
        lines.append("|---|" + "---:|" * len(columns))
        for job, row in cells.items():
            lines.append(f"| {job} | " + " | ".join(row.get(c, "") for c in columns) + " |")
    official = [r for r in rows if r.group in ("official", "official-code")]
    if official:
        lines += ["", "| official shapes | ours / our backprop | ours / the official code |"]
        lines.append("|---|---:|---:|")
        ours: dict[str, list[str]] = {}
        for r in official:
            key = f"{r.job.split(' ')[0]}: {r.case.split(':', 1)[1].split(' (')[0].strip()}"
            key = key.replace(", train only", "")
            precision = r.reference.split(" ")[2] if r.reference.count(" ") >= 2 else ""
            if r.group == "official-code" and precision.startswith("float"):
                key += f" (theirs in {precision})"  # DTP's code is timed in both precisions
            slot = 0 if r.group == "official" else 1
            ours.setdefault(key, ["", ""])[slot] = _cell(r)
        for key, (vs_backprop, vs_official) in ours.items():
            lines.append(f"| {key} | {vs_backprop} | {vs_official} |")
    if any(r.flop_ratio is not None for r in rows):
        lines += ["", FLOOR_NOTE]
    return "\n".join(lines) + "\n"
