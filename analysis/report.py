"""The comparison report of an experiment: figures and a summary table from MLflow.

    python -m analysis.report compare                 # or: experiment=compare
    python -m analysis.report compare --all-sweeps --tracking-uri sqlite:///mlflow.db

Reads the job runs of the experiment's latest sweep (``--all-sweeps``: every run) and writes to
``reports/<experiment>/``:

* ``summary.md``, ``summary.csv``: per method (and dataset) the final test accuracy mean +- std
  over seeds, the best epoch (of the seed-mean test accuracy) and seconds per epoch;
* ``convergence.png``: test accuracy and train loss against epoch and against wall time, mean
  and 95% confidence band over seeds, one colour per method;
* ``alignment.png``: angle between each method's update and the backprop gradient per layer
  over training (from ``diagnostics.every_steps``);
* ``vanishing.png``: backprop gradient norm per layer over training (log scale, one heatmap per
  method) and the final norm against depth;
* ``recurrent.png``: ``||dL/dh_t||`` against t at several epochs, per method and sequence length
  (recurrent runs only).

Figures whose metrics no run logged are skipped. Every file is also logged as an artifact of the
sweep's parent run (under ``report/``), one click away in the MLflow UI.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis.runs import load_histories, load_runs, load_time_step_norms  # noqa: E402
from analysis.summary import summarize  # noqa: E402
from experiments.tracking import ROLE_TAG, SWEEP_DIR_TAG, make_client  # noqa: E402

LAYER = re.compile(r"^(?P<kind>alignment|grad_norm)/(?P<param>.+)\.weight$")


def latest_sweep(tracking_uri: str, experiment: str) -> tuple[str | None, str | None]:
    """``(parent run id, sweep dir)`` of the experiment's newest sweep, or ``(None, None)``."""
    client = make_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None, None
    runs = client.search_runs(
        [found.experiment_id],
        f"tags.{ROLE_TAG} = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None, None
    return runs[0].info.run_id, runs[0].data.tags.get(SWEEP_DIR_TAG)


def summary_table(runs: pd.DataFrame, histories: pd.DataFrame) -> pd.DataFrame:
    """:func:`analysis.summary.summarize` plus ``best_epoch`` of the seed-mean test accuracy."""
    table = summarize(runs, "test_accuracy", histories)
    accuracy = histories[histories.metric == "test_accuracy"]
    curve = accuracy.groupby(["method", "data", "epoch"])["value"].mean().reset_index()
    best = curve.loc[curve.groupby(["method", "data"])["value"].idxmax()]
    best = best.rename(columns={"epoch": "best_epoch"})[["method", "data", "best_epoch"]]
    return table.merge(best, on=["method", "data"], how="left")


def markdown(table: pd.DataFrame) -> str:
    """The summary as a readable markdown table (accuracy in %)."""
    lines = [
        "| method | data | runs | failed | test accuracy (%) | best epoch | s/epoch |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in table.itertuples():
        std = 0.0 if pd.isna(row.test_accuracy_std) else row.test_accuracy_std
        lines.append(
            f"| {row.method} | {row.data} | {row.runs} | {row.failed} | "
            f"{100 * row.test_accuracy_mean:.1f} +- {100 * std:.1f} | {row.best_epoch} | "
            f"{row.epoch_seconds_mean:.3f} |"
        )
    return "\n".join(lines) + "\n"


def convergence_figure(histories: pd.DataFrame, path: Path) -> None:
    """Test accuracy and train loss against epoch and wall time, 95% bands over seeds."""
    wide = (
        histories.pivot_table(
            index=["run_id", "method", "seed", "epoch"], columns="metric", values="value"
        )
        .reset_index()
        .sort_values(["run_id", "epoch"])
    )
    wide["seconds"] = wide.groupby("run_id")["epoch_seconds"].cumsum()
    wide["test_accuracy"] = 100 * wide["test_accuracy"]
    # Seeds of one method share the x position of their mean time, so bands span seeds.
    wide["wall_time"] = wide.groupby(["method", "epoch"])["seconds"].transform("mean")
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    panels = [
        ("epoch", "test_accuracy", "epoch", "test accuracy (%)"),
        ("epoch", "train_loss", "epoch", "train loss (nats)"),
        (
            "wall_time",
            "test_accuracy",
            "wall time (s, training only; log scale)",
            "test accuracy (%)",
        ),
        ("wall_time", "train_loss", "wall time (s, training only; log scale)", "train loss (nats)"),
    ]
    for ax, (x, y, xlabel, ylabel) in zip(axes.flat, panels):
        sns.lineplot(
            data=wide, x=x, y=y, hue="method", errorbar=("ci", 95), ax=ax, legend=ax is axes[0][1]
        )
        ax.set(xlabel=xlabel, ylabel=ylabel)
        if y == "train_loss":
            ax.set_yscale("log")
        if x == "wall_time":  # methods differ in cost by orders of magnitude
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    sns.move_legend(axes[0][1], "upper left", bbox_to_anchor=(1.02, 1.0), title="method")
    fig.suptitle("Convergence: mean and 95% confidence band over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def layer_table(histories: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Rows of ``alignment``/``grad_norm`` diagnostics of weight matrices, with ``layer`` 1.."""
    rows = histories[histories.metric.str.match(rf"^{kind}/.+\.weight$")].copy()
    rows["param"] = rows.metric.str.extract(LAYER)["param"]
    order = {name: i for i, name in enumerate(sorted(rows.param.unique(), key=_natural), 1)}
    rows["layer"] = rows.param.map(order)
    return rows


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def alignment_figure(histories: pd.DataFrame, path: Path) -> bool:
    """Angle with backprop per layer over training; ``False`` if no run logged it."""
    rows = layer_table(histories, "alignment")
    if rows.empty:
        return False
    last = rows["layer"].max()
    names = {k: f"hidden layer {k}" for k in range(1, last)} | {last: f"output layer ({last})"}
    rows = rows.assign(panel=rows["layer"].map(names))
    grid = sns.relplot(
        data=rows,
        x="epoch",
        y="value",
        hue="method",
        style="method",
        col="panel",
        col_order=[names[k] for k in sorted(names)],
        kind="line",
        errorbar=("ci", 95),
        height=3.5,
        facet_kws={"sharey": True},
    )
    grid.set_axis_labels("update count", "angle with backprop (degrees)")
    grid.set_titles("weights of the {col_name}")
    grid.figure.suptitle("Alignment of each method's update with the backprop gradient", y=1.03)
    grid.savefig(path, dpi=120)
    plt.close(grid.figure)
    return True


def vanishing_figure(histories: pd.DataFrame, path: Path) -> bool:
    """Per-layer backprop gradient norms: heatmaps over training and final norm vs depth."""
    rows = layer_table(histories, "grad_norm")
    if rows.empty:
        return False
    methods = sorted(rows.method.unique())
    columns = min(4, len(methods) + 1)
    lines = -(-(len(methods) + 1) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.4 * lines), squeeze=False)
    cells = list(axes.flat)
    logs = np.log10(rows["value"].clip(lower=1e-12))
    limits = {"vmin": logs.min(), "vmax": logs.max()}  # one colour scale for every method
    for ax, method in zip(cells, methods):
        grid = (
            rows[rows.method == method].groupby(["layer", "epoch"])["value"].mean().unstack("epoch")
        )
        sns.heatmap(
            np.log10(grid.clip(lower=1e-12)),
            ax=ax,
            cmap="viridis",
            **limits,
            cbar_kws={"label": "log10 ||dL/dW||"},
        )
        ax.set(title=method, xlabel="update count", ylabel="layer")
    for ax in cells[len(methods) + 1 :]:
        ax.axis("off")
    final = rows.loc[rows.groupby(["run_id", "layer"])["epoch"].idxmax()]
    depth_ax = cells[len(methods)]
    sns.lineplot(
        data=final, x="layer", y="value", hue="method", marker="o", errorbar=("ci", 95), ax=depth_ax
    )
    depth_ax.set(
        yscale="log",
        title="final gradient norm vs depth",
        xlabel="layer (last = output)",
        ylabel="||dL/dW|| (backprop)",
    )
    depth_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    sns.move_legend(depth_ax, "upper left", bbox_to_anchor=(1.02, 1.0), title="method")
    fig.suptitle("Backprop gradient norm per layer over training (vanishing / exploding)")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def recurrent_figure(norms: pd.DataFrame, runs: pd.DataFrame, path: Path) -> bool:
    """``||dL/dh_t||`` vs t at the first, middle and last probed epochs, per method and T."""
    if norms.empty:
        return False
    length = runs.set_index("run_id").get("param.data.length")
    norms = norms.assign(T=norms.run_id.map(length) if length is not None else "-")
    epochs = sorted(norms.epoch.unique())
    keep = sorted({epochs[0], epochs[len(epochs) // 2], epochs[-1]})
    grid = sns.relplot(
        data=norms[norms.epoch.isin(keep)],
        x="t",
        y="norm",
        hue="epoch",
        col="method",
        row="T",
        kind="line",
        errorbar=("ci", 95),
        height=3,
        palette="viridis",
        facet_kws={"sharex": False},
    )
    grid.set(yscale="log")
    grid.set_axis_labels("time step t", "||dL/dh_t||")
    grid.figure.suptitle("Gradient norm along the sequence at several epochs", y=1.02)
    grid.savefig(path, dpi=120)
    plt.close(grid.figure)
    return True


def build_report(
    tracking_uri: str, experiment: str, out: Path, all_sweeps: bool = False
) -> list[Path]:
    """Write the report files (see the module docstring); returns their paths.

    Raises:
        ValueError: if the experiment has no finished job run.
    """
    runs = load_runs(tracking_uri, experiment)
    parent, sweep_dir = latest_sweep(tracking_uri, experiment)
    if not all_sweeps and sweep_dir is not None and "sweep_dir" in runs:
        runs = runs[runs["sweep_dir"] == sweep_dir]
    if runs.empty or not (runs["status"] == "FINISHED").any():
        raise ValueError(f"no finished runs in experiment {experiment!r} at {tracking_uri}")
    client = make_client(tracking_uri)
    keys = sorted(
        {
            key
            for run_id in runs.run_id
            for key in client.get_run(run_id).data.metrics
            if key.startswith(("alignment/", "grad_norm/"))
        }
    )
    histories = load_histories(
        tracking_uri, runs, ["test_accuracy", "train_loss", "epoch_seconds", *keys]
    )
    out.mkdir(parents=True, exist_ok=True)
    table = summary_table(runs, histories)
    written = [out / "summary.csv", out / "summary.md"]
    table.to_csv(written[0], index=False)
    written[1].write_text(f"# {experiment}\n\n{markdown(table)}")
    epochs = histories[~histories.metric.str.contains("/")]
    convergence_figure(epochs, out / "convergence.png")
    written.append(out / "convergence.png")
    if alignment_figure(histories, out / "alignment.png"):
        written.append(out / "alignment.png")
    if vanishing_figure(histories, out / "vanishing.png"):
        written.append(out / "vanishing.png")
    if recurrent_figure(load_time_step_norms(tracking_uri, runs), runs, out / "recurrent.png"):
        written.append(out / "recurrent.png")
    if parent is not None:
        for path in written:
            client.log_artifact(parent, str(path), "report")
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="MLflow experiment name, or experiment=<name>")
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    )
    parser.add_argument("--out", help="output folder (default reports/<experiment>)")
    parser.add_argument(
        "--all-sweeps",
        action="store_true",
        help="use every run of the experiment, not only the latest sweep",
    )
    args = parser.parse_args(argv)
    experiment = args.experiment.removeprefix("experiment=")
    out = Path(args.out or Path("reports") / experiment)
    try:
        written = build_report(args.tracking_uri, experiment, out, args.all_sweeps)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
