"""``python -m experiments.bench [--quick] [--rounds N] [--only a,b] [--methods m,..] [--out DIR]``.

Runs the cases of :mod:`experiments.bench.cases` (all, or the groups named by ``--only``: letters
``a``-``e`` or names ``harness``, ``methods``, ``flops``, ``official``, ``official-code``;
``--methods`` keeps only the rows of those methods, each still against its case's reference),
prints each row as it is measured (with its FLOP floor, :mod:`experiments.bench.flops`), and writes
``bench.csv``, ``bench.md`` and ``summary.md`` into ``--out``.
Group ``official-code`` runs the official implementations themselves and needs their checkouts
(``--official-root DIR`` or the ``BENCH_OFFICIAL_ROOT`` variable); without them it is skipped
with one line. Exit status 2, with one line, for a bad option.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.bench import cases, official, report, timing

SKIP_OFFICIAL = (
    "official-code: skipped (no official checkouts); fetch them as docs/performance.md "
    "('Against the official code') says, then pass --official-root DIR or set "
    f"{official.ENV_ROOT}=DIR"
)


def parse_groups(text: str | None) -> list[str]:
    """Group names from ``--only`` (``"a,c"`` or ``"harness,flops"``); all when ``None``.

    Raises:
        ValueError: naming the unknown group.
    """
    if text is None:
        return list(cases.GROUPS.values())
    groups = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name = cases.GROUPS.get(item, item)
        if name not in cases.GROUPS.values():
            known = ", ".join(f"{k}={v}" for k, v in cases.GROUPS.items())
            raise ValueError(f"--only: unknown group {item!r}; groups: {known}")
        groups.append(name)
    return groups


def keeps(job: str, methods: Sequence[str] | None) -> bool:
    """Whether ``--methods`` keeps the row of ``job`` (its first word names the method)."""
    return methods is None or job.split(" ")[0] in methods


def run_case(
    case: cases.Case, rounds: int, clock: timing.Clock, methods: Sequence[str] | None = None
) -> list[report.Row]:
    """Time one case's jobs interleaved and summarise each against the reference.

    Each timed method's FLOP floor (:attr:`cases.Comparison.step_flops`) is counted first, once;
    a count of 0 (a step computed outside torch, e.g. NumPy's) gives no floor.

    ``methods``: time only these methods' jobs beside the reference (all when ``None``); a case
    with none of them is skipped (no rows).
    """
    comparison = case.build()
    chosen = {
        job: run
        for job, run in comparison.jobs.items()
        if job == comparison.reference or keeps(job, methods)
    }
    if len(chosen) < 2:
        return []
    comparison.jobs = chosen
    # Counted once, before and outside the timed rounds, on copies of the timed methods.
    counted = {job: count() for job, count in comparison.step_flops.items() if job in chosen}
    times = timing.interleaved_times(comparison.jobs, rounds, clock)
    ratios = timing.per_round_ratios(times, comparison.reference)
    reference_seconds = float(np.median(times[comparison.reference]))
    rows = []
    for job, values in ratios.items():
        measure = "time"
        if job in comparison.flops:
            # FLOP/s ratio: (F_job / t_job) / (F_ref / t_ref) = (F_job / F_ref) / (t_job / t_ref)
            scale = comparison.flops[job] / comparison.flops[comparison.reference]
            values, measure = scale / values, "flops"
        summary = timing.summarize(values)
        floor = None
        if measure == "time" and counted.get(job) and counted.get(comparison.reference):
            floor = counted[job] / counted[comparison.reference]
        rows.append(
            report.Row(
                case.group,
                case.name,
                job,
                comparison.reference,
                measure,
                summary.median,
                summary.q1,
                summary.q3,
                summary.rounds,
                reference_seconds,
                floor,
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> list[report.Row]:
    """Parse the command line, run the selected cases and write the tables; returns the rows."""
    parser = argparse.ArgumentParser(prog="python -m experiments.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 3 rounds (tests, CI)")
    parser.add_argument("--rounds", type=int, help="timed rounds of every case (default: per case)")
    parser.add_argument(
        "--only", help="groups: a=harness, b=methods, c=flops, d=official, e=official-code"
    )
    parser.add_argument("--methods", help="comma-separated methods: only their rows, e.g. dtp,drl")
    parser.add_argument(
        "--out",
        type=Path,
        help="output folder (default reports/bench, or reports/bench-quick with --quick, so a "
        "quick check never overwrites a full run's tables)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--clock", choices=sorted(timing.CLOCKS), default="cpu")
    parser.add_argument(
        "--official-root",
        type=Path,
        default=os.environ.get(official.ENV_ROOT) or None,
        help="folder holding the official checkouts, for group e=official-code "
        f"(default: ${official.ENV_ROOT})",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path("reports/bench-quick" if args.quick else "reports/bench")
    try:
        groups = parse_groups(args.only)
        methods = None
        if args.methods is not None:
            methods = [m.strip() for m in args.methods.split(",") if m.strip()]
            if not methods:
                raise ValueError("--methods: give at least one method, e.g. --methods dtp,drl")
        if args.rounds is not None and args.rounds < 1:
            raise ValueError(f"--rounds: must be at least 1, got {args.rounds}")
        if args.threads < 1:
            raise ValueError(f"--threads: must be at least 1, got {args.threads}")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    clock = timing.CLOCKS[args.clock]
    root = args.official_root
    if "official-code" in groups:
        if root is None:
            print(SKIP_OFFICIAL)
        else:
            for line in official.missing(root):
                print(f"official-code: skipped: {line}")
    rows: list[report.Row] = []
    with timing.limited_threads(args.threads):
        for case in cases.all_cases(args.quick, root if "official-code" in groups else None):
            if case.group not in groups:
                continue
            if methods is not None and not any(keeps(m, methods) for m in case.methods):
                continue
            for row in run_case(case, args.rounds or case.rounds, clock, methods):
                rows.append(row)
                floor = "" if row.flop_ratio is None else f", FLOP floor {row.flop_ratio:.2f}"
                print(
                    f"{row.group:8} {row.case:48} {row.job:24} / {row.reference:16} "
                    f"{row.median:7.3f} (IQR {row.q1:.3f}-{row.q3:.3f}, {row.rounds} rounds"
                    f"{floor})",
                    flush=True,
                )
    args.out.mkdir(parents=True, exist_ok=True)
    header = report.machine(args.threads, args.clock)
    report.write_csv(rows, args.out / "bench.csv")
    report.write_markdown(rows, header, args.out / "bench.md")
    (args.out / "summary.md").write_text(report.summary_markdown(rows, header))
    print(f"wrote {args.out / 'bench.csv'} and {args.out / 'bench.md'}")
    return rows


if __name__ == "__main__":
    main()
