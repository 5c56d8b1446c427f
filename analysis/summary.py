"""Summary table of an experiment: one row per configuration, statistics over seeds.

    python -m analysis.summary tp_benchmark            # markdown table on stdout
    python -m analysis.summary tp_benchmark --csv out.csv --tracking-uri sqlite:///mlflow.db
    python -m analysis.summary rnn_benchmark --solved-threshold 0.99

**Grouping.** Runs are pooled only when they differ in nothing but the seed. The key of a row is
``method``, ``data`` and every setting (``param.*``) that takes more than one value among the
runs of one method on one dataset (:func:`grouping_keys`), apart from the seed and the
bookkeeping params of :data:`BOOKKEEPING_PARAMS`. Settings that only change together with the
method or the dataset (each method's own options, each dataset's size) split nothing and get no
column. A setting missing from some runs of a method (an option added later, say) counts as a
value of its own.

**Statistics.** Per row, over seeds (the metric's last value of each finished run; runs that
repeat a seed are averaged first): the mean, the sample standard deviation and a 95% Student-t
confidence interval of the mean (:func:`mean_ci`), and the paired difference to backprop
(:func:`paired_difference`): this row minus the backprop row with the same setting, seed by
seed, on the seeds both have, with its paired t interval.

**Counts.** Every run is counted by status (``finished``, ``failed``, ``killed``,
``unfinished``): failed (diverged or crashed) and killed runs never enter the statistics and are
never silently dropped; ``<metric>_nonfinite`` counts finished runs whose value is NaN, Inf or
missing, which the statistics skip.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

from analysis.runs import load_histories, load_runs

DEFAULT_URI = "sqlite:///mlflow.db"
BASELINE = "backprop"
CONFIDENCE = 0.95

# Params that never define a configuration: runs that differ only in these are seeds of one
# setting. Exact names, or prefixes ending in ".". Each entry says why it is bookkeeping.
BOOKKEEPING_PARAMS: dict[str, str] = {
    # the replicate index itself: what the statistics are taken over
    "param.seed": "the seed",
    # where and under which name a run is recorded; nothing about what it computes
    "param.mlflow.": "where the run is logged (run_name, experiment_name, tracking_uri)",
    # Hydra's own node is not logged as params today (tracking.run_config drops it); listed so
    # that job numbers, output folders or sweep settings never split a row if it ever is
    "param.hydra.": "Hydra's job and sweep bookkeeping",
    # provenance of the tuned defaults (study, best_run_id, best_value, trials, ...): the
    # values they set are logged under method.* and split rows there; ``tuned`` is ``None``
    # for runs without tuned defaults
    "param.tuned": "tuned-defaults provenance (the tuned values themselves are method.*)",
    "param.tuned.": "tuned-defaults provenance (the tuned values themselves are method.*)",
    # the value a job returns to a sweeper (Optuna); it does not change training or metrics
    "param.train.objective": "what the job returns to a sweeper",
    # whether a missing data file may be downloaded; the data read are the same files
    "param.data.download": "permission to download, not the data",
}

STATUSES = {
    "finished": ("FINISHED",),
    "failed": ("FAILED",),
    "killed": ("KILLED",),
    # still running, or a job that died without closing its run (SIGKILL, power loss)
    "unfinished": ("RUNNING", "SCHEDULED"),
}


def is_bookkeeping(column: str) -> bool:
    """Whether ``column`` (a :func:`~analysis.runs.load_runs` column) is a bookkeeping param."""
    return any(
        column.startswith(name) if name.endswith(".") else column == name
        for name in BOOKKEEPING_PARAMS
    )


def short_name(column: str) -> str:
    """Readable name of a grouping key: ``param.model.hidden_sizes`` -> ``model.hidden_sizes``."""
    return column.removeprefix("param.")


def grouping_keys(runs: pd.DataFrame, by: Iterable[str] = ()) -> list[str]:
    """The ``param.*`` columns of ``runs`` that split configurations, sorted, then ``by``.

    A param is a key when it takes more than one value (missing counts as a value) among the
    runs of one ``(method, data)`` pair and is not bookkeeping (:data:`BOOKKEEPING_PARAMS`).
    Grouping by ``method``, ``data`` and these keys gives exactly the groups that grouping by
    every non-bookkeeping param would: the params left out are functions of the method and
    dataset.

    Args:
        runs: a :func:`~analysis.runs.load_runs` table (every status).
        by: extra columns to group by whether or not they vary (``param.x`` or ``x``).

    Raises:
        KeyError: if a ``by`` column is neither in ``runs`` nor ``param.<it>`` in ``runs``.
    """
    cells = runs.groupby(["method", "data"], dropna=False)
    keys = []
    for column in sorted(c for c in runs if c.startswith("param.") and not is_bookkeeping(c)):
        if (cells[column].nunique(dropna=False) > 1).any():
            keys.append(column)
    for column in by:
        name = column if column in runs else f"param.{column}"
        if name not in runs:
            raise KeyError(f"no column {column!r} (nor {name!r}) in the runs table")
        if name not in keys:
            keys.append(name)
    return keys


def _numeric(column: pd.Series) -> pd.Series:
    """``column`` as numbers if every present value is one (params are stored as strings)."""
    with contextlib.suppress(ValueError, TypeError):
        return pd.to_numeric(column)
    return column


def _order(value: object) -> tuple:
    """Sort key for a key value: numbers, then lists by length ([16] before [16, 16]), text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (3,)
    if isinstance(value, int | float | np.number):
        return (0, float(value))
    text = str(value)
    if text.startswith("[") and text.endswith("]"):
        return (1, text.count(",") + (text.strip("[] ") != ""), text)
    return (2, text)


def _format_value(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def assign_configs(runs: pd.DataFrame, by: Iterable[str] = ()) -> tuple[pd.DataFrame, list[str]]:
    """Label every run with its configuration, for tables and figures alike.

    Args:
        runs: a :func:`~analysis.runs.load_runs` table.
        by: extra grouping columns (see :func:`grouping_keys`).

    Returns:
        ``(runs, keys)``: ``runs`` with one column per key under its short name (numbers as
        numbers, see :func:`short_name`) and ``config``, a readable label unique to the group:
        the method, then the dataset if several are present, then ``key=value`` for each key
        that has a value in that run and more than one value overall. ``keys`` are the short
        key names, in order.

    Raises:
        KeyError: for an unknown ``by`` column.
    """
    full = grouping_keys(runs, by)
    taken = set(runs.columns)
    names = []
    runs = runs.copy()
    for column in full:
        name = short_name(column)
        if name != column and name in taken:  # a clash with another column: keep param.
            name = column
        runs[name] = _numeric(runs[column])
        names.append(name)
    several_data = runs["data"].nunique(dropna=False) > 1
    shown = [name for name in names if runs[name].nunique(dropna=False) > 1]

    def label(row: pd.Series) -> str:
        parts = [str(row["method"])] + ([str(row["data"])] if several_data else [])
        parts += [f"{k}={_format_value(row[k])}" for k in shown if not pd.isna(row[k])]
        return ", ".join(parts)

    runs["config"] = runs.apply(label, axis=1) if not runs.empty else pd.Series(dtype=str)
    return runs, names


class Interval(NamedTuple):
    """A confidence interval; ``method`` says how it was obtained."""

    low: float
    high: float
    method: str


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> Interval:
    """Student-t confidence interval of the mean of ``values`` (one value per seed).

    ``mean +- t_{(1+confidence)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard
    deviation (Student 1908; e.g. Wasserman, *All of Statistics*, Sec. 6.3). It is exact when
    the per-seed values are normal and, unlike a bootstrap interval, it widens with few seeds as
    it should: from 5 seeds the half-width is 2.78 s / sqrt(5), where a bootstrap (whose
    standard error is the plug-in sqrt(4/5) s / sqrt(5)) gives about 1.75 s / sqrt(5) and
    claims differences the data do not support. Non-finite values are dropped first.

    Args:
        values: the metric of each seed, any order.
        confidence: coverage in (0, 1); 0.95 by default.

    Returns:
        ``Interval(low, high, method)``: ``method="t"``; NaN bounds with fewer than 2 finite
        values (``method="none"``); ``[v, v]`` when every value equals ``v``
        (``method="constant"``).

    Raises:
        ValueError: if ``confidence`` is not in (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    x = np.asarray(list(values), dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return Interval(math.nan, math.nan, "none")
    mean = float(x.mean())
    if np.ptp(x) <= 1e-12 * max(1.0, float(np.abs(x).max())):
        return Interval(mean, mean, "constant")
    half = float(stats.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Interval(mean - half, mean + half, "t")


class PairedDifference(NamedTuple):
    """Mean paired difference, its t interval and the number of pairs."""

    mean: float
    low: float
    high: float
    pairs: int

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely above or below 0 (False if undefined)."""
        return bool(self.low > 0 or self.high < 0)


def paired_difference(
    values: Mapping[int, float] | pd.Series,
    baseline: Mapping[int, float] | pd.Series,
    confidence: float = CONFIDENCE,
) -> PairedDifference:
    """``values - baseline`` seed by seed: mean and :func:`mean_ci` over the pairs.

    The interval is the paired t interval (the interval of a paired t-test): pairing by seed
    removes what a seed does to both (initialisation, batch order), so it is narrower than
    comparing the two means' intervals whenever the seeds' effects are shared.

    Args:
        values: metric per seed (seed -> value), e.g. of a method.
        baseline: metric per seed of the baseline (backprop with the same setting).
        confidence: coverage of the interval.

    Returns:
        ``PairedDifference(mean, low, high, pairs)`` over the seeds where both are finite;
        mean NaN with no pair, bounds NaN with fewer than 2 pairs.
    """
    a = pd.Series(values, dtype=float)
    b = pd.Series(baseline, dtype=float)
    both = a.index.intersection(b.index)
    diff = (a[both] - b[both]).to_numpy()
    diff = diff[np.isfinite(diff)]
    mean = float(diff.mean()) if diff.size else math.nan
    interval = mean_ci(diff, confidence)
    return PairedDifference(mean, interval.low, interval.high, int(diff.size))


def _same(a: object, b: object) -> bool:
    return (pd.isna(a) and pd.isna(b)) if (pd.isna(a) or pd.isna(b)) else a == b


def _find_baseline(row: pd.Series, baselines: pd.DataFrame, keys: Sequence[str]) -> int | None:
    """Index of the backprop row with the same setting as ``row``, or None if not unique.

    The setting is ``data`` and every key that is not an option of the method itself
    (``method.*``): model, data, training budget, diagnostics, device ... Where several
    backprop rows match (backprop swept over one of its own options), the method options
    ``row`` shares with backprop must match as well.
    """
    shared = [k for k in keys if not k.removeprefix("param.").startswith("method.")]
    own = [k for k in keys if k not in shared]
    match = baselines[
        [all(_same(b[k], row[k]) for k in ["data", *shared]) for _, b in baselines.iterrows()]
    ]
    if len(match) > 1:
        match = match[
            [
                all(_same(b[k], row[k]) for k in own if not (pd.isna(b[k]) or pd.isna(row[k])))
                for _, b in match.iterrows()
            ]
        ]
    return match.index[0] if len(match) == 1 else None


def summarize(
    runs: pd.DataFrame,
    metric: str = "test_accuracy",
    histories: pd.DataFrame | None = None,
    by: Sequence[str] = (),
    solved_threshold: float | None = None,
) -> pd.DataFrame:
    """One row per configuration (see the module docstring) with statistics over seeds.

    Args:
        runs: a :func:`analysis.runs.load_runs` table (every status: failed and killed runs are
            counted, never averaged).
        metric: the final-value metric to summarise.
        histories: :func:`analysis.runs.load_histories` of ``epoch_seconds`` (and of ``metric``
            for ``solved_threshold``) for ``runs``; with it, ``epoch_seconds_mean`` averages
            every epoch of every finished run, without it only each run's last epoch.
        by: extra grouping columns, kept even if they do not vary (``param.x`` or ``x``).
        solved_threshold: if given (needs ``histories``), also report ``solved`` (finished
            runs whose ``metric`` ever reached it) and ``solved_epoch_mean`` (mean first epoch
            it did, over the runs that did).

    Returns:
        Sorted by method, data and keys; columns: ``method``, ``data``, one per grouping key
        (short names, e.g. ``model.hidden_sizes``), ``config`` (readable label), ``runs`` and
        the counts ``finished``, ``failed``, ``killed``, ``unfinished``; ``seeds`` (distinct
        seeds with a finite value), ``<metric>_nonfinite`` (finished runs whose value is NaN,
        Inf or missing), ``<metric>_mean``, ``<metric>_std`` (sample std over seeds, NaN for
        one), ``<metric>_ci_low``, ``<metric>_ci_high`` (95% t interval of the mean,
        NaN for one seed); ``diff_vs_backprop_mean``, ``diff_ci_low``, ``diff_ci_high``,
        ``diff_excludes_zero``, ``paired_seeds`` (paired difference to backprop with the same
        setting, in the metric's units; NaN for backprop itself and where no unique backprop
        row matches, ``paired_seeds`` 0 there); ``epoch_seconds_mean``; ``solved`` and
        ``solved_epoch_mean`` with ``solved_threshold``. With no finished run every statistic
        is NaN and the counts say why.

    Raises:
        KeyError: if finished runs exist but none logged ``metric``, or for an unknown ``by``.
    """
    runs, keys = assign_configs(runs, by)
    finished = runs["status"].isin(STATUSES["finished"])
    if finished.any() and metric not in runs:
        raise KeyError(f"no finished run logged {metric!r}")
    value = runs[metric] if metric in runs else pd.Series(math.nan, index=runs.index)
    runs = runs.assign(_value=pd.to_numeric(value, errors="coerce").where(finished))
    runs = runs.assign(_finite=runs["_value"].where(np.isfinite(runs["_value"])))
    seconds = runs.get("epoch_seconds", pd.Series(math.nan, index=runs.index))
    if histories is not None and not histories.empty:
        per_epoch = histories[histories.metric == "epoch_seconds"].groupby("run_id")["value"]
        seconds = runs["run_id"].map(per_epoch.mean())
        if solved_threshold is not None:
            reached = histories[
                (histories.metric == metric) & (histories.value >= solved_threshold)
            ]
            first = reached.groupby("run_id")["epoch"].min()
            runs = runs.assign(_solved_epoch=runs["run_id"].map(first).where(finished))
    runs = runs.assign(_seconds=pd.to_numeric(seconds, errors="coerce").where(finished))

    group_columns = ["method", "data", *keys]
    rows = []
    per_seed = {}
    for _, group in runs.groupby(group_columns, dropna=False, sort=True):
        first = group.iloc[0]
        row = {column: first[column] for column in group_columns}
        row["config"] = first["config"]
        row["runs"] = len(group)
        for name, statuses in STATUSES.items():
            row[name] = int(group["status"].isin(statuses).sum())
        done = group[group["status"].isin(STATUSES["finished"])]
        values = done.dropna(subset="_finite").groupby("seed")["_finite"].mean()
        per_seed[len(rows)] = values
        interval = mean_ci(values)
        row["seeds"] = len(values)
        row[f"{metric}_nonfinite"] = int(done["_finite"].isna().sum())
        row[f"{metric}_mean"] = values.mean() if len(values) else math.nan
        row[f"{metric}_std"] = values.std() if len(values) > 1 else math.nan
        row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = interval.low, interval.high
        row["epoch_seconds_mean"] = done["_seconds"].mean()
        if "_solved_epoch" in runs:
            row["solved"] = int(done["_solved_epoch"].notna().sum())
            row["solved_epoch_mean"] = done["_solved_epoch"].mean()
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    rank = sorted(table.index, key=lambda i: [_order(table.at[i, c]) for c in group_columns])
    table = table.loc[rank]
    per_seed = {position: per_seed[index] for position, index in enumerate(rank)}
    table = table.reset_index(drop=True)

    baselines = table[table["method"] == BASELINE]
    differences = []
    for index, row in table.iterrows():
        target = None if row["method"] == BASELINE else _find_baseline(row, baselines, keys)
        if target is None:
            differences.append(
                (math.nan, math.nan, math.nan, False, 0 if row["method"] != BASELINE else None)
            )
            continue
        diff = paired_difference(per_seed[index], per_seed[target])
        differences.append((diff.mean, diff.low, diff.high, diff.excludes_zero, diff.pairs))
    columns = [
        "diff_vs_backprop_mean",
        "diff_ci_low",
        "diff_ci_high",
        "diff_excludes_zero",
        "paired_seeds",
    ]
    table[columns] = pd.DataFrame(differences, index=table.index, columns=columns)
    table["paired_seeds"] = table["paired_seeds"].astype("Int64")
    order = [
        *group_columns,
        "config",
        "runs",
        *STATUSES,
        "seeds",
        f"{metric}_nonfinite",
        f"{metric}_mean",
        f"{metric}_std",
        f"{metric}_ci_low",
        f"{metric}_ci_high",
        *columns,
        "epoch_seconds_mean",
    ]
    return table[order + [c for c in table if c not in order]]


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|")


def format_markdown(
    table: pd.DataFrame,
    metric: str = "test_accuracy",
    extra: Mapping[str, str] | None = None,
) -> str:
    """A :func:`summarize` table as readable markdown, with a footnote on the statistics.

    Accuracies (a ``metric`` ending in ``accuracy``) are shown in %: ``mean [low, high]``, and
    the difference to backprop in percentage points, ``+x.x [low, high]``, marked ``*`` when
    its interval excludes 0; other metrics with 4 significant digits. ``unfinished`` and
    non-finite counts get a column only when some row has any.

    Args:
        table: from :func:`summarize` (optionally with more columns, see ``extra``).
        metric: the metric ``table`` summarises.
        extra: ``{column: header}`` of further columns to show before ``s/epoch``; the
            ``solved`` columns of a ``solved_threshold`` summary are shown without asking.

    Raises:
        KeyError: if ``table`` lacks a column of :func:`summarize` for ``metric``.
    """
    percent = metric.endswith("accuracy")
    scale, digits = (100.0, 1) if percent else (1.0, 4)
    extra = dict(extra or {})
    if "solved" in table.columns:  # summarize(..., solved_threshold=...) added them
        extra.setdefault("solved", "solved runs")
        extra.setdefault("solved_epoch_mean", "first solved epoch (mean)")
    keys = list(table.columns[2 : table.columns.get_loc("config")])

    def number(value: float, signed: bool = False) -> str:
        if pd.isna(value):
            return "n/a"
        text = f"{scale * value:{'+' if signed else ''}.{digits}f}" if percent else f"{value:.4g}"
        return f"+{text}" if signed and not percent and value >= 0 else text

    def interval(low: float, high: float, signed: bool = False) -> str:
        if pd.isna(low) or pd.isna(high):
            return "[n/a]"
        if percent and not signed:  # a t interval knows no bounds; an accuracy does
            low, high = max(low, 0.0), min(high, 1.0)
        return f"[{number(low, signed)}, {number(high, signed)}]"

    counts = ["failed", "killed"] + (["unfinished"] if table["unfinished"].any() else [])
    nonfinite = f"{metric}_nonfinite"
    show_nonfinite = bool(table[nonfinite].any())
    unit = " (%)" if percent else ""
    header = [
        "method",
        "data",
        *keys,
        "runs",
        *counts,
        "seeds",
        *(["non-finite"] if show_nonfinite else []),
        f"{metric.replace('_', ' ')}{unit}: mean [95% CI]",
        f"vs {BASELINE}{' (points)' if percent else ''}: mean [95% CI]",
        "paired seeds",
        *extra.values(),
        "s/epoch",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in table.to_dict("records"):
        mean = row[f"{metric}_mean"]
        value = (
            "n/a"
            if pd.isna(mean)
            else f"{number(mean)} " + interval(row[f"{metric}_ci_low"], row[f"{metric}_ci_high"])
        )
        if row["method"] == BASELINE:
            diff = "baseline"
        elif pd.isna(row["diff_vs_backprop_mean"]):
            diff = "n/a"
        else:
            diff = f"{number(row['diff_vs_backprop_mean'], True)} " + interval(
                row["diff_ci_low"], row["diff_ci_high"], True
            )
            diff += " *" if row["diff_excludes_zero"] else ""
        paired = "" if pd.isna(row["paired_seeds"]) else str(row["paired_seeds"])
        seconds = row["epoch_seconds_mean"]
        cells = [
            row["method"],
            row["data"],
            *("" if pd.isna(row[k]) else _format_value(row[k]) for k in keys),
            row["runs"],
            *(row[c] for c in counts),
            row["seeds"],
            *([row[nonfinite]] if show_nonfinite else []),
            value,
            diff,
            paired,
            *("" if pd.isna(row[c]) else _format_value(row[c]) for c in extra),
            "n/a" if pd.isna(seconds) else f"{seconds:.3f}",
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    notes = [
        "",
        "Mean over seeds with a 95% Student-t confidence interval of the mean "
        "(mean +- t(0.975, n-1) s/sqrt(n), s the standard deviation over seeds; [n/a] with one "
        "seed; clipped to [0, 100] for an accuracy).",
        f"vs {BASELINE}: mean of the paired difference (this row minus {BASELINE} with the "
        "same setting, seed by seed) with its 95% paired t interval; * marks an interval that "
        "excludes 0; n/a where no single backprop row has the same setting.",
        "Only finished runs enter the statistics; failed (diverged or crashed), killed and "
        "unfinished runs are counted in their columns.",
    ]
    if show_nonfinite:
        notes.append(
            "non-finite: finished runs whose final value is NaN, Inf or missing, skipped in the "
            "statistics."
        )
    return "\n".join(lines + notes) + "\n"


def status_counts(runs: pd.DataFrame) -> str:
    """``"2 FAILED, 1 KILLED"``: the runs of a :func:`~analysis.runs.load_runs` table by status."""
    counts = runs["status"].value_counts()
    return ", ".join(f"{count} {status}" for status, count in counts.items()) or "no runs"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints a markdown table (exit 1 if no run finished)."""
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
        help="extra grouping columns, kept even if constant (every varying setting is "
        "already one), e.g. param.data.length",
    )
    parser.add_argument(
        "--solved-threshold",
        type=float,
        help="report the first epoch at "
        "which --metric reached this value (e.g. 0.99 for the adding problem)",
    )
    parser.add_argument("--csv", help="also write the full table to this CSV file")
    args = parser.parse_args(argv)
    runs = load_runs(args.tracking_uri, args.experiment)
    if runs.empty:
        print(
            f"error: no runs in experiment {args.experiment!r} at {args.tracking_uri}",
            file=sys.stderr,
        )
        return 2
    histories = load_histories(args.tracking_uri, runs, ["epoch_seconds", args.metric])
    try:
        table = summarize(runs, args.metric, histories, args.by, args.solved_threshold)
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(format_markdown(table, args.metric))
    if not table["finished"].any():
        print(
            f"error: no run of {args.experiment!r} finished ({status_counts(runs)}): "
            "nothing to average; the table counts the runs by status",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
