"""Summary table of an experiment: final metrics mean +- std over seeds, per method and dataset.

Seconds per epoch average every epoch of every finished run.

    python -m analysis.summary tp_benchmark            # markdown table on stdout
    python -m analysis.summary tp_benchmark --csv out.csv --tracking-uri sqlite:///mlflow.db

Only finished runs enter the means; failed (diverged) and killed runs are counted in ``failed``.
"""

from __future__ import annotations

import argparse
import os
import sys

import pandas as pd

from analysis.runs import load_histories, load_runs

DEFAULT_URI = "sqlite:///mlflow.db"


def summarize(
    runs: pd.DataFrame, metric: str = "test_accuracy", histories: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Group job runs by ``method`` and ``data``.

    Args:
        runs: a :func:`analysis.runs.load_runs` table.
        metric: the final-value metric to average.
        histories: :func:`analysis.runs.load_histories` of ``epoch_seconds`` for ``runs``; if
            given, ``epoch_seconds_mean`` averages every epoch of every run, otherwise only each
            run's last epoch.

    Returns:
        One row per (method, data) with ``runs``, ``failed``, ``<metric>_mean``,
        ``<metric>_std`` (sample std over seeds, NaN for one run) and ``epoch_seconds_mean``.

    Raises:
        KeyError: if no finished run logged ``metric``.
    """
    if histories is not None and not histories.empty:
        per_run = histories[histories.metric == "epoch_seconds"].groupby("run_id")["value"].mean()
        runs = runs.assign(epoch_seconds=runs["run_id"].map(per_run))
    runs = runs.assign(failed=runs["status"].isin(["FAILED", "KILLED"]))
    finished = runs[runs["status"] == "FINISHED"]
    if metric not in finished:
        raise KeyError(f"no finished run logged {metric!r}")
    grouped = finished.groupby(["method", "data"])
    table = pd.DataFrame(
        {
            f"{metric}_mean": grouped[metric].mean(),
            f"{metric}_std": grouped[metric].std(),
            "epoch_seconds_mean": grouped["epoch_seconds"].mean(),
        }
    )
    counts = runs.groupby(["method", "data"]).agg(runs=("run_id", "size"), failed=("failed", "sum"))
    return counts.join(table).reset_index()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="MLflow experiment name (mlflow.experiment_name)")
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)
    )
    parser.add_argument("--metric", default="test_accuracy")
    parser.add_argument("--csv", help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    runs = load_runs(args.tracking_uri, args.experiment)
    if runs.empty:
        print(
            f"error: no runs in experiment {args.experiment!r} at {args.tracking_uri}",
            file=sys.stderr,
        )
        return 2
    table = summarize(runs, args.metric, load_histories(args.tracking_uri, runs, ["epoch_seconds"]))
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(table.to_markdown(index=False, floatfmt=".4f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
