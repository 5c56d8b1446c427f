"""Close the runs whose process is gone: ``python -m experiments.reap <experiment>``.

A job killed with SIGKILL (``kill -9``, the kernel's out-of-memory killer, a lost node) cannot
close its MLflow run, which stays ``RUNNING`` forever. Every run records the process that owns
it (tags ``host``, ``pid`` and ``pid_start``, the process's start time, so that a reused pid is
not mistaken for it). For each ``RUNNING`` run (jobs and sweep parents) of the experiment whose
host is this machine and whose process is gone (no such pid, a zombie, or a pid now owned by a
process that started at another time), this sets the run ``KILLED`` with the tag
``failure_reason`` = ``process <pid> on <host> is gone (reaped)``. Runs of live processes are
left alone; runs of other hosts are listed and left alone unless ``--all-hosts`` (use it only
when those processes are known to be gone); runs without the tags (older) are listed.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Any

from experiments.tracking import (
    FAILURE_TAG,
    HOST_TAG,
    PID_START_TAG,
    PID_TAG,
    check_store,
    make_client,
    process_start,
)
from experiments.validation import ConfigError


def process_alive(pid: int, start: str | None) -> bool:
    """Whether process ``pid`` runs (not a zombie) and, if ``start`` is known, started then."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    return start in (None, "unknown") or process_start(pid) == start


def reap(client: Any, experiment_id: str, all_hosts: bool = False) -> list[tuple[str, str]]:
    """Close the ``RUNNING`` runs of ``experiment_id`` whose process is gone (see module doc).

    Returns:
        ``(run id, what was done)`` for every ``RUNNING`` run: ``reaped: <reason>``, or why it
        was left alone.
    """
    host = socket.gethostname()
    report = []
    runs = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=50_000)
    for run in runs:
        tags = run.data.tags
        run_host, pid = tags.get(HOST_TAG), tags.get(PID_TAG)
        if run_host is None or pid is None or not pid.isdigit():
            report.append((run.info.run_id, "left alone: no host/pid tags (an older run)"))
            continue
        if run_host != host and not all_hosts:
            report.append((run.info.run_id, f"left alone: runs on {run_host} (--all-hosts)"))
            continue
        if run_host == host and process_alive(int(pid), tags.get(PID_START_TAG)):
            report.append((run.info.run_id, f"left alone: process {pid} is alive"))
            continue
        reason = f"process {pid} on {run_host} is gone (reaped)"
        client.set_tag(run.info.run_id, FAILURE_TAG, reason)
        client.set_terminated(run.info.run_id, "KILLED")
        report.append((run.info.run_id, f"reaped: {reason}"))
    return report


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: one line per ``RUNNING`` run; exit 2 for a bad store or name."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="MLflow experiment name (mlflow.experiment_name)")
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    )
    parser.add_argument(
        "--all-hosts",
        action="store_true",
        help="also close the RUNNING runs of other machines (their processes must be gone)",
    )
    args = parser.parse_args(argv)
    try:
        check_store(args.tracking_uri)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    client = make_client(args.tracking_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        print(f"error: no experiment {args.experiment!r} at {args.tracking_uri}", file=sys.stderr)
        return 2
    report = reap(client, experiment.experiment_id, args.all_hosts)
    for run_id, what in report:
        print(f"{run_id} {what}")
    if not report:
        print("no RUNNING run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
