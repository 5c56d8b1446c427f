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
    """The table as Markdown, after a line per header field."""
    lines = [f"- {key}: {value}" for key, value in header.items()]
    lines += [
        "",
        "| group | case | job | / reference | median | IQR | rounds | reference s |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        reference = row.reference if row.measure == "time" else f"{row.reference} (FLOP/s)"
        lines.append(
            f"| {row.group} | {row.case} | {row.job} | {reference} | {row.median:.3g} "
            f"| {row.q1:.3g}-{row.q3:.3g} | {row.rounds} | {row.reference_seconds:.3g} |"
        )
    return "\n".join(lines) + "\n"


def write_markdown(rows: Sequence[Row], header: Mapping[str, str], path: Path) -> None:
    """``path`` with :func:`markdown`'s text."""
    path.write_text(markdown(rows, header))
