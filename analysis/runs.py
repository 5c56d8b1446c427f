"""Read training runs back from MLflow into pandas tables.

Two views of an experiment:

* :func:`load_runs`: one row per job run, with its status, tags, params and final metrics;
* :func:`load_histories`: one row per (run, metric, epoch), the long format seaborn plots from.

Non-finite metric values: MLflow's SQLite store keeps a NaN as NaN, but writes +Inf and -Inf as
the largest finite doubles (+-1.7976931348623157e308). Both readers turn those back into +-Inf
(:func:`from_store`), so an overflowed norm is never read as a huge finite measurement; the
report then skips non-finite values visibly.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import pandas as pd

from experiments.tracking import PARENT_TAG, ROLE_TAG, SWEEP_DIR_TAG, make_client

RUN_COLUMNS = ("run_id", "status", "method", "data", "model", "seed")


def from_store(value: float) -> float:
    """A metric value as logged: ``+-inf`` for the ``+-float max`` the SQLite store keeps for it.

    NaN and every other value pass through unchanged.
    """
    return math.copysign(math.inf, value) if abs(value) == sys.float_info.max else value


def load_runs(tracking_uri: str, experiment_name: str, filter_string: str = "") -> pd.DataFrame:
    """Job runs of one experiment (sweep parent runs excluded), newest first.

    Args:
        tracking_uri: MLflow store, e.g. ``sqlite:///mlflow.db``.
        experiment_name: the ``mlflow.experiment_name`` the runs were logged under.
        filter_string: an extra MLflow search filter, e.g. ``"tags.method = 'backprop'"``.

    Returns:
        Columns ``run_id, status, method, data, model, seed`` (seed as int), ``tuned`` (the
        tuned-defaults file the run used, ``none``, or None for runs that predate the tag),
        ``sweep_dir`` (the Hydra sweep folder the run wrote to, or None), ``sweep_run`` (the
        id of its sweep's parent run: one per sweep invocation, even in a reused folder), then
        ``param.<key>`` for every param (strings, as MLflow stores them) and ``<metric>`` for
        each metric's last value (NaN and +-Inf as logged, see :func:`from_store`).
        Empty (with those first columns) if the experiment does not exist.
    """
    client = make_client(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return pd.DataFrame(columns=list(RUN_COLUMNS))
    role = f"tags.{ROLE_TAG} = 'job'"
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"{role} and {filter_string}" if filter_string else role,
        max_results=50_000,
    )
    rows = []
    for run in runs:
        tags = run.data.tags
        row = {
            "run_id": run.info.run_id,
            "status": run.info.status,
            **{key: tags.get(key) for key in ("method", "data", "model")},
            "seed": int(tags["seed"]) if "seed" in tags else None,
            "tuned": tags.get("tuned"),
            "sweep_dir": tags.get(SWEEP_DIR_TAG),
            "sweep_run": tags.get(PARENT_TAG),
        }
        row.update({f"param.{k}": v for k, v in run.data.params.items()})
        row.update({key: from_store(value) for key, value in run.data.metrics.items()})
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else list(RUN_COLUMNS))


def load_histories(tracking_uri: str, runs: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Per-epoch values of ``metrics`` for every run in ``runs`` (a :func:`load_runs` table).

    Returns:
        Long format: ``run_id, method, data, model, seed, metric, epoch, value``, sorted by run,
        metric and epoch. ``epoch`` is the MLflow step: the epoch for per-epoch metrics, the
        update count for diagnostics (``alignment/...``). Metrics a run never logged are
        absent; NaN and +-Inf values are kept as logged (see :func:`from_store`).
    """
    client = make_client(tracking_uri)
    rows = []
    for run in runs.itertuples(index=False):
        for metric in metrics:
            for point in client.get_metric_history(run.run_id, metric):
                rows.append(
                    {
                        "run_id": run.run_id,
                        "method": run.method,
                        "data": run.data,
                        "model": run.model,
                        "seed": run.seed,
                        "metric": metric,
                        "epoch": point.step,
                        "value": from_store(point.value),
                    }
                )
    columns = ["run_id", "method", "data", "model", "seed", "metric", "epoch", "value"]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["run_id", "metric", "epoch"], ignore_index=True)


def load_time_step_norms(
    tracking_uri: str, runs: pd.DataFrame, prefix: str = "dL_dh/t"
) -> pd.DataFrame:
    """Per-time-step gradient norms of recurrent runs (``dL_dh/t001``, ... metrics).

    Returns:
        Long format: ``run_id, method, data, model, seed, epoch, t, norm`` (t from 1), sorted;
        ready for norm-vs-t curves at several epochs.
    """
    client = make_client(tracking_uri)
    keys = sorted(
        {
            key
            for run in runs.run_id
            for key in client.get_run(run).data.metrics
            if key.startswith(prefix)
        }
    )
    table = load_histories(tracking_uri, runs, keys)
    table["t"] = table["metric"].str.slice(len(prefix)).astype(int)
    table = table.rename(columns={"value": "norm"}).drop(columns="metric")
    columns = ["run_id", "method", "data", "model", "seed", "epoch", "t", "norm"]
    return table[columns].sort_values(["run_id", "epoch", "t"], ignore_index=True)
