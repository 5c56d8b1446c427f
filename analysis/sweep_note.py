"""The summary a sweep's parent run carries in MLflow, written when the sweep ends.

* its description (the tag ``mlflow.note.content``, shown on the run page): the summary table of
  :mod:`analysis.summary` over the sweep's job runs (runs and statuses per configuration, mean
  final metric over seeds with its 95% t interval, paired difference to backprop);
* one metric per configuration, ``<metric>_mean/<configuration>`` (e.g.
  ``test_accuracy_mean/backprop``; the configuration is the method alone when nothing else
  varies among its runs), so that parents compare side by side in the runs table.

The metric is ``test_accuracy``, or for a tuning study the objective it tuned
(``train.objective``, e.g. ``val_accuracy``), or ``test_loss`` where no run logged an
accuracy.

Wired into the sweep by ``conf/config.yaml`` (the ``summary`` option of the Hydra callback
:class:`experiments.tracking.SweepParentRun`), so that ``experiments/`` never imports
``analysis/``: :func:`write_sweep_note` is called by name when the sweep's parent run closes.
"""

from __future__ import annotations

import re
import time

import pandas as pd

from analysis.runs import load_runs
from analysis.summary import format_markdown, status_counts, summarize
from experiments.tracking import PARENT_TAG, make_client, truncate

NOTE_TAG = "mlflow.note.content"
NOTE_LIMIT = 8000  # MLflow's longest tag value
FALLBACK_METRICS = ("test_accuracy", "test_loss")


def note_metric(runs: pd.DataFrame) -> str:
    """The metric a sweep is summarised by (see the module docstring).

    Args:
        runs: the sweep's job runs, a :func:`analysis.runs.load_runs` table.
    """
    if "param.train.objective" in runs:
        objectives = {o for o in runs["param.train.objective"].dropna() if o != "None"}
        if len(objectives) == 1:
            return objectives.pop()
    present = [m for m in FALLBACK_METRICS if m in runs and runs[m].notna().any()]
    return present[0] if present else FALLBACK_METRICS[0]


def metric_key(metric: str, config: str) -> str:
    """MLflow metric name of a configuration's mean: ``<metric>_mean/<config>``.

    ``config`` is a :func:`analysis.summary.assign_configs` label (``fa, model.depth=4``): ``, ``
    becomes a space, ``=`` a colon, and any other character MLflow refuses in a name
    (anything but letters, digits, ``_ - . : space``) an underscore; the name is cut to 250
    characters.
    """
    name = config.replace(", ", " ").replace("=", ":")
    name = re.sub(r"[^\w.\- :]", "_", name).strip() or "_"
    return f"{metric}_mean/{name}"[:250]


def sweep_note(runs: pd.DataFrame, sweep_dir: str | None) -> tuple[str, dict[str, float]]:
    """The parent run's description and metrics for a sweep's job runs.

    Args:
        runs: the sweep's job runs (every status), a :func:`analysis.runs.load_runs` table.
        sweep_dir: the sweep's Hydra folder, named in the description.

    Returns:
        ``(markdown, metrics)``: the description (at most 8000 characters, MLflow's limit),
        and ``{metric_key: mean}`` for every configuration with a finished run (NaN means are
        left out). With no finished run the description says so and there is no metric.
    """
    where = f" of `{sweep_dir}`" if sweep_dir else ""
    if runs.empty:
        return f"**Sweep summary**{where}: no job run was created.\n", {}
    metric = note_metric(runs)
    table = summarize(runs, metric)
    lines = [
        f"**Sweep summary**{where}: {len(runs)} job runs ({status_counts(runs)}); "
        f"final `{metric}` per configuration.",
        "",
    ]
    if not table["finished"].any():
        lines += ["No job run finished: nothing to average; the table counts the runs.", ""]
    lines.append(format_markdown(table, metric, {"finished": "finished"}))
    metrics = {
        metric_key(metric, row["config"]): float(row[f"{metric}_mean"])
        for row in table.to_dict("records")
        if pd.notna(row[f"{metric}_mean"])
    }
    if metrics:
        lines.append(
            f"Metrics of this run: `{metric}_mean/<configuration>`, the mean over seeds in the "
            "table (accuracies as fractions, not %)."
        )
    return truncate("\n".join(lines), NOTE_LIMIT), metrics


def write_sweep_note(tracking_uri: str, parent_run_id: str) -> dict[str, float]:
    """Write :func:`sweep_note` of the job runs nested under ``parent_run_id`` into that run.

    Sets the parent's ``mlflow.note.content`` and logs its metrics (step 0).

    Returns:
        The metrics logged.

    Raises:
        mlflow.exceptions.MlflowException: if the store cannot be read or written.
    """
    from mlflow.entities import Metric

    client = make_client(tracking_uri)
    parent = client.get_run(parent_run_id)
    experiment = client.get_experiment(parent.info.experiment_id).name
    runs = load_runs(tracking_uri, experiment, f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
    note, metrics = sweep_note(runs, parent.data.tags.get("sweep_dir"))
    client.set_tag(parent_run_id, NOTE_TAG, note)
    if metrics:
        now = int(time.time() * 1000)
        client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    return metrics
