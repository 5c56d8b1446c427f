"""Summary table of an experiment: final metrics mean +- std over seeds, per method and dataset.

Seconds per epoch average every epoch of every finished run.

    python -m analysis.summary tp_benchmark            # markdown table on stdout
    python -m analysis.summary tp_benchmark --csv out.csv --tracking-uri sqlite:///mlflow.db
    python -m analysis.summary rnn_benchmark --by param.data.length param.method.truncation \
        --solved-threshold 0.99

Only finished runs enter the means; failed (diverged) and killed runs are counted in ``failed``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

import pandas as pd

from analysis.runs import load_histories, load_runs

DEFAULT_URI = "sqlite:///mlflow.db"
# Params that may differ between runs pooled in one row.
IGNORED_PARAMS = {
    "param.seed",
    "param.mlflow.run_name",
    "param.mlflow.experiment_name",
    "param.mlflow.tracking_uri",
}


def summarize(
    runs: pd.DataFrame,
    metric: str = "test_accuracy",
    histories: pd.DataFrame | None = None,
    by: Sequence[str] = (),
    solved_threshold: float | None = None,
) -> pd.DataFrame:
    """Group job runs by ``method``, ``data`` and the extra columns ``by``.

    Args:
        runs: a :func:`analysis.runs.load_runs` table.
        metric: the final-value metric to average.
        histories: :func:`analysis.runs.load_histories` of ``epoch_seconds`` (and of ``metric``
            for ``solved_threshold``) for ``runs``; with it, ``epoch_seconds_mean`` averages
            every epoch of every run, without it only each run's last epoch.
        by: extra grouping columns of ``runs``, e.g. ``param.data.length``.
        solved_threshold: if given (needs ``histories``), also report ``solved`` (runs whose
            ``metric`` ever reached it) and ``solved_epoch_mean`` (mean first epoch it did, over
            the runs that did).

    Returns:
        One row per group with ``runs``, ``failed``, ``configs`` (distinct settings apart from
        the seed: more than 1 means different configurations were pooled, so add ``by``
        columns), ``<metric>_mean``, ``<metric>_std`` (sample std over seeds, NaN for one run),
        ``epoch_seconds_mean`` and the solved columns.

    Raises:
        KeyError: if no finished run logged ``metric``.
    """
    keys = ["method", "data", *by]
    for column in by:  # params are stored as strings; sort numbers as numbers
        with contextlib.suppress(ValueError, TypeError):
            runs = runs.assign(**{column: pd.to_numeric(runs[column])})
    if histories is not None and not histories.empty:
        seconds = histories[histories.metric == "epoch_seconds"].groupby("run_id")["value"].mean()
        runs = runs.assign(epoch_seconds=runs["run_id"].map(seconds))
        if solved_threshold is not None:
            reached = histories[
                (histories.metric == metric) & (histories.value >= solved_threshold)
            ]
            first = reached.groupby("run_id")["epoch"].min()
            runs = runs.assign(solved_epoch=runs["run_id"].map(first))
    runs = runs.assign(failed=runs["status"].isin(["FAILED", "KILLED"]))
    finished = runs[runs["status"] == "FINISHED"]
    if metric not in finished:
        raise KeyError(f"no finished run logged {metric!r}")
    grouped = finished.groupby(keys, dropna=False)
    columns = {
        f"{metric}_mean": grouped[metric].mean(),
        f"{metric}_std": grouped[metric].std(),
        "epoch_seconds_mean": grouped["epoch_seconds"].mean(),
    }
    if "solved_epoch" in finished:
        columns["solved"] = grouped["solved_epoch"].count()
        columns["solved_epoch_mean"] = grouped["solved_epoch"].mean()
    counts = runs.groupby(keys, dropna=False).agg(runs=("run_id", "size"), failed=("failed", "sum"))
    # Runs that differ in anything but the seed should not be pooled as "seeds".
    settings = [c for c in runs if c.startswith("param.") and c not in IGNORED_PARAMS]
    signature = (
        pd.util.hash_pandas_object(runs[settings].astype(object).fillna(""), index=False)
        if settings
        else 0
    )
    counts["configs"] = (
        runs.assign(_signature=signature).groupby(keys, dropna=False)["_signature"].nunique()
    )
    return counts.join(pd.DataFrame(columns)).reset_index()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="MLflow experiment name (mlflow.experiment_name)")
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)
    )
    parser.add_argument("--metric", default="test_accuracy")
    parser.add_argument(
        "--by",
        nargs="*",
        default=[],
        help="extra grouping columns, e.g. param.data.length param.method.truncation",
    )
    parser.add_argument(
        "--solved-threshold",
        type=float,
        help="report the first epoch at "
        "which --metric reached this value (e.g. 0.99 for the adding problem)",
    )
    parser.add_argument("--csv", help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    runs = load_runs(args.tracking_uri, args.experiment)
    if runs.empty:
        print(
            f"error: no runs in experiment {args.experiment!r} at {args.tracking_uri}",
            file=sys.stderr,
        )
        return 2
    missing = [column for column in args.by if column not in runs]
    if missing:
        print(
            f"error: --by: no column {missing[0]!r} (columns: {', '.join(runs.columns)})",
            file=sys.stderr,
        )
        return 2
    histories = load_histories(args.tracking_uri, runs, ["epoch_seconds", args.metric])
    table = summarize(runs, args.metric, histories, args.by, args.solved_threshold)
    pooled = table[table["configs"] > 1]
    if not pooled.empty:
        print(
            f"warning: {len(pooled)} row(s) pool runs whose settings differ beyond the seed; "
            "split them with --by param.<key>",
            file=sys.stderr,
        )
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(table.to_markdown(index=False, floatfmt=".4f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
