"""The comparison report of an experiment: figures and a summary table from MLflow.

    python -m analysis.report compare                 # or: experiment=compare
    python -m analysis.report compare --all-sweeps --tracking-uri sqlite:///mlflow.db

Reads the job runs of the experiment's latest sweep that has a finished job run (``--all-sweeps``:
every run; the sweep taken is printed on stderr) and writes to ``reports/<experiment>/``:

* ``summary.md``, ``summary.csv``: one row per configuration (:mod:`analysis.summary`: runs
  are pooled only when they differ in nothing but the seed; every varying setting gets a
  column): final test accuracy, mean and 95% t interval over seeds, the paired
  difference to backprop with the same setting, runs per status, the best epoch (of the
  seed-mean test accuracy) and seconds per epoch;
* ``convergence.png``: test accuracy and train loss against epoch and against wall time, mean
  and 95% confidence band over seeds, one line per configuration;
* ``alignment.png``: angle between each method's update and the backprop gradient per layer
  over training (from ``diagnostics.every_steps``), one line per configuration;
* ``vanishing.png``: backprop gradient norm per layer over training (log scale, one heatmap per
  configuration) and the final norm against depth;
* ``recurrent.png``: ``||dL/dh_t||`` against t at several epochs, one panel per configuration
  (recurrent runs only);
* for runs over several depths (``experiment=vanishing_depth``): ``depth.png`` and
  ``depth_trained.png`` (gradient norm against layer index, a line per depth, a panel per
  activation x method, at the first and the last probe) and ``depth_ratios.md``;
* for the adding problem (``experiment=rnn_horizon``): ``horizon.md``, the longest sequence
  length each method and cell solves (:mod:`analysis.studies`).

With more than 20 configurations the per-configuration figures (convergence, alignment,
vanishing) are left out, and ``summary.md`` says so.

Figures draw finished runs only, like the table's statistics, and say in a note how many runs
were left out and how many NaN/Inf values were not drawn (an undefined angle, for instance, is
NaN: see :mod:`methods.geometry`). Figures whose metrics no run logged are skipped. Every file
is also logged as an artifact of the sweep's parent run (under ``report/``), one click away in
the MLflow UI.
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
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis.runs import load_histories, load_runs, load_time_step_norms  # noqa: E402
from analysis.studies import (  # noqa: E402
    SOLVED,
    depth_figure,
    depth_profile,
    depth_ratios,
    horizon_table,
)
from analysis.summary import (  # noqa: E402
    STATUSES,
    assign_configs,
    format_markdown,
    status_counts,
    summarize,
)
from experiments.tracking import PARENT_TAG, ROLE_TAG, SWEEP_DIR_TAG, make_client  # noqa: E402

# Figures with one line or panel per configuration stay readable up to this many configurations;
# larger studies (vanishing_depth: 108) are shown by their own figures (analysis.studies).
MAX_FIGURE_CONFIGS = 20
LAYER = re.compile(r"^(?P<kind>alignment|grad_norm)/(?P<param>.+)\.weight$")


def latest_sweep(tracking_uri: str, experiment: str) -> tuple[str | None, str | None]:
    """``(parent run id, sweep dir)`` of the newest sweep that has a finished job run.

    A sweep is one invocation: its parent run and the job runs nested under it (two sweeps that
    reused a folder stay apart). Sweeps are taken newest first (by their parent run's start
    time); a newer sweep whose job runs all failed, were killed or never started (a crashed
    sweep) is skipped, so it cannot hide the last complete one. Where no sweep has a finished
    job run, the newest sweep (the caller then reports that nothing finished). Prints the
    sweep taken, and any skipped, on stderr.

    Returns:
        ``(None, None)`` if the experiment or any sweep in it does not exist.
    """
    client = make_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None, None
    sweeps = client.search_runs(
        [found.experiment_id],
        f"tags.{ROLE_TAG} = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1000,
    )
    if not sweeps:
        print(f"report: {experiment!r} has no sweep: using its single job runs", file=sys.stderr)
        return None, None
    for sweep in sweeps:
        sweep_dir = sweep.data.tags.get(SWEEP_DIR_TAG)
        if sweep_dir is None:
            continue
        done = client.search_runs(
            [found.experiment_id],
            f"tags.{ROLE_TAG} = 'job' and tags.`{PARENT_TAG}` = '{sweep.info.run_id}' "
            "and attributes.status = 'FINISHED'",
            max_results=1,
        )
        if done:
            print(f"report: sweep {sweep_dir} (parent run {sweep.info.run_id})", file=sys.stderr)
            return sweep.info.run_id, sweep_dir
        print(f"report: skipping sweep {sweep_dir}: no finished job run", file=sys.stderr)
    newest = sweeps[0]
    return newest.info.run_id, newest.data.tags.get(SWEEP_DIR_TAG)


def summary_table(runs: pd.DataFrame, histories: pd.DataFrame) -> pd.DataFrame:
    """:func:`analysis.summary.summarize` of test accuracy plus ``best_epoch``.

    Args:
        runs: a :func:`analysis.runs.load_runs` table (every status).
        histories: :func:`analysis.runs.load_histories` of ``test_accuracy`` and
            ``epoch_seconds`` with a ``config`` column (as from :func:`label_histories`).

    Returns:
        The summary with ``best_epoch``: the epoch of the highest seed-mean test accuracy of
        each configuration (NaN where no finite value was logged).
    """
    table = summarize(runs, "test_accuracy", histories)
    accuracy = histories[(histories.metric == "test_accuracy") & np.isfinite(histories.value)]
    curve = accuracy.groupby(["config", "epoch"])["value"].mean().reset_index()
    best = curve.loc[curve.groupby("config")["value"].idxmax(), ["config", "epoch"]]
    return table.merge(best.rename(columns={"epoch": "best_epoch"}), on="config", how="left")


def markdown(table: pd.DataFrame) -> str:
    """:func:`summary_table` as readable markdown (:func:`analysis.summary.format_markdown`)."""
    return format_markdown(table, "test_accuracy", {"best_epoch": "best epoch"})


def label_histories(histories: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """``histories`` (long format, with ``run_id``) with the ``config`` of each run.

    Args:
        histories: any long table with a ``run_id`` column.
        runs: :func:`analysis.summary.assign_configs` output covering those runs.
    """
    return histories.assign(config=histories["run_id"].map(runs.set_index("run_id")["config"]))


def _palette(levels: list[str]) -> dict[str, tuple]:
    """One distinguishable colour per configuration (tab10 up to 10, then evenly spaced hues)."""
    colours = sns.color_palette("tab10" if len(levels) <= 10 else "husl", len(levels))
    return dict(zip(levels, colours))


def _finite(rows: pd.DataFrame, column: str = "value") -> tuple[pd.DataFrame, int]:
    """The rows with a finite ``column``, and how many were not."""
    keep = np.isfinite(pd.to_numeric(rows[column], errors="coerce"))
    return rows[keep], int((~keep).sum())


def _note(fig: Figure, nonfinite: int, left_out: int = 0, what: str = "values") -> str | None:
    """Write under the figure how many non-finite values and runs are not drawn."""
    parts = []
    if nonfinite:
        parts.append(f"{nonfinite} NaN/Inf {what} not drawn")
    if left_out:
        parts.append(f"{left_out} run(s) that did not finish not drawn (counted in summary.md)")
    if not parts:
        return None
    text = "; ".join(parts)
    fig.text(0.01, -0.02, text, ha="left", va="top", fontsize=9, color="firebrick")
    return text


def convergence_figure(histories: pd.DataFrame, path: Path, left_out: int = 0) -> Figure:
    """Test accuracy and train loss against epoch and wall time, 95% bands over seeds.

    Args:
        histories: long table (``run_id, seed, metric, epoch, value, config``) of finished runs
            with ``test_accuracy``, ``train_loss`` and ``epoch_seconds``; one line (and band)
            per ``config``, never pooling two.
        path: where to save the PNG.
        left_out: runs not drawn (not finished), for the note under the figure.

    Returns:
        The saved figure (still open; close it with ``plt.close``).
    """
    histories, nonfinite = _finite(histories)
    wide = (
        histories.pivot_table(
            index=["run_id", "config", "seed", "epoch"], columns="metric", values="value"
        )
        .reset_index()
        .sort_values(["run_id", "epoch"])
    )
    wide["seconds"] = wide.groupby("run_id")["epoch_seconds"].cumsum()
    wide["test_accuracy"] = 100 * wide["test_accuracy"]
    # Seeds of one configuration share the x position of their mean time, so bands span seeds.
    wide["wall_time"] = wide.groupby(["config", "epoch"])["seconds"].transform("mean")
    levels = sorted(wide["config"].unique())
    palette = _palette(levels)
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
            data=wide,
            x=x,
            y=y,
            hue="config",
            hue_order=levels,
            palette=palette,
            errorbar=("ci", 95),
            ax=ax,
            legend=ax is axes[0][1],
        )
        ax.set(xlabel=xlabel, ylabel=ylabel)
        if y == "train_loss":
            ax.set_yscale("log")
        if x == "wall_time":  # methods differ in cost by orders of magnitude
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    sns.move_legend(axes[0][1], "upper left", bbox_to_anchor=(1.02, 1.0), title="configuration")
    fig.suptitle("Convergence: mean and 95% confidence band over seeds")
    fig.tight_layout()
    _note(fig, nonfinite, left_out)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def layer_table(histories: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Rows of ``alignment``/``grad_norm`` diagnostics of weight matrices, numbered per run.

    Returns:
        The matching rows of ``histories`` with ``param`` (e.g. ``layers.0``), ``layer`` (1 ..
        that run's depth, in natural order of the names) and ``panel`` (``hidden layer k`` or
        ``output layer``: the last layer of each run, whatever its depth).
    """
    rows = histories[histories.metric.str.match(rf"^{kind}/.+\.weight$")].copy()
    rows["param"] = rows.metric.str.extract(LAYER)["param"]
    names = rows.groupby("run_id")["param"].unique()
    order = {
        run_id: {name: i for i, name in enumerate(sorted(params, key=_natural), 1)}
        for run_id, params in names.items()
    }
    rows["layer"] = [order[r][p] for r, p in zip(rows["run_id"], rows["param"])]
    depth = rows.groupby("run_id")["layer"].transform("max")
    rows["panel"] = np.where(
        rows["layer"] == depth, "output layer", "hidden layer " + rows["layer"].astype(str)
    )
    return rows


def alignment_figure(histories: pd.DataFrame, path: Path, left_out: int = 0) -> Figure | None:
    """Angle with backprop per layer over training, one line per configuration.

    NaN angles (undefined: a zero or non-finite update or gradient) are not drawn; the figure
    says how many. Returns the saved figure, or ``None`` if no run logged alignment.
    """
    rows = layer_table(histories, "alignment")
    if rows.empty:
        return None
    rows, nonfinite = _finite(rows)
    if rows.empty:
        fig = plt.figure(figsize=(6, 2))
        fig.text(0.5, 0.5, "no finite alignment value", ha="center")
        _note(fig, nonfinite, left_out, "angles")
        fig.savefig(path, dpi=120, bbox_inches="tight")
        return fig
    hidden = sorted({p for p in rows["panel"] if p != "output layer"}, key=_natural)
    panels = hidden + (["output layer"] if (rows["panel"] == "output layer").any() else [])
    levels = sorted(rows["config"].unique())
    grid = sns.relplot(
        data=rows,
        x="epoch",
        y="value",
        hue="config",
        hue_order=levels,
        palette=_palette(levels),
        style="config",
        style_order=levels,
        col="panel",
        col_order=panels,
        kind="line",
        errorbar=("ci", 95),
        height=3.5,
        facet_kws={"sharey": True},
    )
    grid.set_axis_labels("update count", "angle with backprop (degrees)")
    grid.set_titles("weights of the {col_name}")
    grid.figure.suptitle("Alignment of each method's update with the backprop gradient", y=1.03)
    _note(grid.figure, nonfinite, left_out, "angles (undefined)")
    grid.savefig(path, dpi=120, bbox_inches="tight")
    return grid.figure


def vanishing_figure(histories: pd.DataFrame, path: Path, left_out: int = 0) -> Figure | None:
    """Per-layer backprop gradient norms: heatmaps over training and final norm vs depth.

    One heatmap per configuration (log10, one colour scale for all; norms below 1e-12, zero
    included, are drawn at 1e-12); NaN/Inf norms are not drawn (a cell with no finite value
    stays blank) and counted in a note. Returns the saved figure, or ``None`` if no run logged
    gradient norms.
    """
    every = layer_table(histories, "grad_norm")
    if every.empty:
        return None
    rows, nonfinite = _finite(every)
    # the last logged value of each run and layer, dropped (not replaced by an earlier one)
    # when it is not finite
    final, _ = _finite(every.loc[every.groupby(["run_id", "layer"])["epoch"].idxmax()])
    configs = sorted(every.config.unique())
    columns = min(4, len(configs) + 1)
    lines = -(-(len(configs) + 1) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.4 * lines), squeeze=False)
    cells = list(axes.flat)
    logs = np.log10(rows["value"].clip(lower=1e-12))
    limits = {"vmin": logs.min(), "vmax": logs.max()}  # one colour scale for every method
    for ax, config in zip(cells, configs):
        logged = every[every.config == config]
        grid = (  # cells whose every value is NaN/Inf stay blank
            rows[rows.config == config]
            .groupby(["layer", "epoch"])["value"]
            .mean()
            .unstack("epoch")
            .reindex(index=sorted(logged.layer.unique()), columns=sorted(logged.epoch.unique()))
        )
        sns.heatmap(
            np.log10(grid.clip(lower=1e-12)),
            ax=ax,
            cmap="viridis",
            **limits,
            cbar_kws={"label": "log10 ||dL/dW||"},
        )
        ax.set(title=config, xlabel="update count", ylabel="layer")
    for ax in cells[len(configs) + 1 :]:
        ax.axis("off")
    depth_ax = cells[len(configs)]
    if not final.empty:
        sns.lineplot(
            data=final,
            x="layer",
            y="value",
            hue="config",
            hue_order=configs,
            palette=_palette(configs),
            marker="o",
            errorbar=("ci", 95),
            ax=depth_ax,
        )
        sns.move_legend(depth_ax, "upper left", bbox_to_anchor=(1.02, 1.0), title="configuration")
    depth_ax.set(
        yscale="log",
        title="final gradient norm vs depth",
        xlabel="layer (last = output)",
        ylabel="||dL/dW|| (backprop)",
    )
    depth_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("Backprop gradient norm per layer over training (vanishing / exploding)")
    fig.tight_layout()
    _note(fig, nonfinite, left_out, "norms")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def recurrent_figure(norms: pd.DataFrame, path: Path, left_out: int = 0) -> Figure | None:
    """``||dL/dh_t||`` vs t at the first, middle and last probed epochs, one panel per config.

    Args:
        norms: :func:`analysis.runs.load_time_step_norms` of finished runs, with ``config``.
        path: where to save the PNG.
        left_out: runs not drawn (not finished), for the note.

    Returns:
        The saved figure, or ``None`` if there are no norms.
    """
    if norms.empty:
        return None
    norms, nonfinite = _finite(norms, "norm")
    epochs = sorted(norms.epoch.unique())
    keep = sorted({epochs[0], epochs[len(epochs) // 2], epochs[-1]}) if epochs else []
    configs = sorted(norms.config.unique())
    grid = sns.relplot(
        data=norms[norms.epoch.isin(keep)],
        x="t",
        y="norm",
        hue="epoch",
        col="config",
        col_order=configs,
        col_wrap=min(4, max(1, len(configs))),
        kind="line",
        errorbar=("ci", 95),
        height=3,
        palette="viridis",
        facet_kws={"sharex": False},
    )
    grid.set(yscale="log")
    grid.set_axis_labels("time step t", "||dL/dh_t||")
    grid.set_titles("{col_name}")
    grid.figure.suptitle("Gradient norm along the sequence at several epochs", y=1.02)
    _note(grid.figure, nonfinite, left_out, "norms")
    grid.savefig(path, dpi=120, bbox_inches="tight")
    return grid.figure


def depth_study(histories: pd.DataFrame, runs: pd.DataFrame, out: Path) -> list[Path]:
    """The vanishing-gradient study over depth, if the runs span several depths.

    Writes ``depth.png`` (per-layer backprop gradient norm at the first probe, near
    initialisation), ``depth_trained.png`` (at the last probe) and ``depth_ratios.md`` / ``.csv``
    (first-layer over output-layer norm per method, activation and depth); see
    :mod:`analysis.studies`.

    Returns:
        The paths written (none if the runs have one depth or no gradient norms).
    """
    profile = depth_profile(histories, runs)
    if profile.empty or profile["depth"].nunique() < 2:
        return []
    written = []
    for probe, name in (("first", "depth.png"), ("last", "depth_trained.png")):
        if depth_figure(profile, out / name, probe):
            written.append(out / name)
    ratios = depth_ratios(profile, "first")
    ratios.to_csv(out / "depth_ratios.csv", index=False)
    wide = ratios.pivot_table(
        index=["activation", "depth"], columns="method", values="first_over_last"
    )
    (out / "depth_ratios.md").write_text(
        "# First-layer over output-layer backprop gradient norm at the first probe\n\n"
        "||dL/dW_1|| / ||dL/dW_out||: far below 1 is a vanishing gradient.\n\n"
        + wide.reset_index().to_markdown(index=False, floatfmt=".1e")
        + "\n"
    )
    return [*written, out / "depth_ratios.csv", out / "depth_ratios.md"]


def horizon_study(histories: pd.DataFrame, runs: pd.DataFrame, out: Path) -> list[Path]:
    """The longest adding-problem length each recurrent method x cell solves, if any ran.

    Writes ``horizon.md`` / ``horizon.csv`` (:func:`analysis.studies.horizon_table`).

    Returns:
        The paths written (none unless the runs are on ``data=adding``).
    """
    adding = runs[runs["data"] == "adding"]
    table = horizon_table(adding, histories)
    if table.empty:
        return []
    table.to_csv(out / "horizon.csv", index=False)
    lines = [
        "# Longest solved horizon (adding problem)\n",
        f"Solved: every run reached {SOLVED:.0%} of test sequences within 0.04 (Pascanu et al."
        " 2013) at some epoch.\n",
        "| method | cell | lengths tried | solved | longest solved |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in table.itertuples():
        solved = ", ".join(map(str, row.solved)) or "none"
        lengths = ", ".join(map(str, row.lengths))
        lines.append(
            f"| {row.method} | {row.cell} | {lengths} | {solved} | {row.longest_solved or '-'} |"
        )
    (out / "horizon.md").write_text("\n".join(lines) + "\n")
    return [out / "horizon.csv", out / "horizon.md"]


def select_runs(
    tracking_uri: str, experiment: str, all_sweeps: bool = False
) -> tuple[pd.DataFrame, str | None, str | None]:
    """The job runs a report covers: the latest sweep with a finished run, or every run.

    Returns:
        ``(runs, parent run id, sweep dir)``: a :func:`analysis.runs.load_runs` table (every
        status), restricted to that sweep unless ``all_sweeps``; runs from any other sweep
        never enter. Without sweeps, every job run of the experiment.

    Raises:
        ValueError: if the selection has no job run, or no finished one (the message counts
            the runs by status).
    """
    runs = load_runs(tracking_uri, experiment)
    parent, sweep_dir = latest_sweep(tracking_uri, experiment)
    where = f"experiment {experiment!r} at {tracking_uri}"
    if all_sweeps:
        print(f"report: every sweep of {experiment!r} ({len(runs)} job runs)", file=sys.stderr)
    elif parent is not None and "sweep_run" in runs:
        runs = runs[runs["sweep_run"] == parent]
        where = f"sweep {sweep_dir} of {where}"
    if runs.empty:
        raise ValueError(f"no job runs in {where}")
    if not runs["status"].isin(STATUSES["finished"]).any():
        raise ValueError(f"no finished runs in {where} ({status_counts(runs)})")
    return runs, parent, sweep_dir


def build_report(
    tracking_uri: str, experiment: str, out: Path, all_sweeps: bool = False
) -> list[Path]:
    """Write the report files (see the module docstring); returns their paths.

    Raises:
        ValueError: if the selected runs (:func:`select_runs`) include no finished job run.
    """
    runs, parent, sweep_dir = select_runs(tracking_uri, experiment, all_sweeps)
    labelled, _ = assign_configs(runs)
    finished = labelled[labelled["status"].isin(STATUSES["finished"])]
    left_out = len(labelled) - len(finished)
    client = make_client(tracking_uri)
    keys = sorted(
        {
            key
            for run_id in finished.run_id
            for key in client.get_run(run_id).data.metrics
            if key.startswith(("alignment/", "grad_norm/"))
        }
    )
    histories = load_histories(
        tracking_uri, finished, ["test_accuracy", "train_loss", "epoch_seconds", *keys]
    )
    histories = label_histories(histories, labelled)
    out.mkdir(parents=True, exist_ok=True)
    table = summary_table(runs, histories)
    written = [out / "summary.csv", out / "summary.md"]
    table.to_csv(written[0], index=False)
    if all_sweeps:
        source = "every sweep"
    else:
        source = f"sweep `{sweep_dir}`" if sweep_dir else "the experiment (no sweep)"
    written[1].write_text(
        f"# {experiment}\n\n{len(runs)} job runs of {source} ({status_counts(runs)}).\n\n"
        f"{markdown(table)}"
    )
    figures = []
    configs = finished["config"].nunique()
    per_config = configs <= MAX_FIGURE_CONFIGS
    skipped = []
    epochs = histories[~histories.metric.str.contains("/")]
    if per_config:
        figures.append(convergence_figure(epochs, out / "convergence.png", left_out))
        written.append(out / "convergence.png")
        for name, draw in (("alignment", alignment_figure), ("vanishing", vanishing_figure)):
            figure = draw(histories, out / f"{name}.png", left_out)
            if figure is not None:
                figures.append(figure)
                written.append(out / f"{name}.png")
    else:
        skipped.append(
            f"convergence, alignment and vanishing figures: {configs} configurations are more "
            f"than {MAX_FIGURE_CONFIGS} lines a panel can show; see the table and the study "
            "figures"
        )
    written += depth_study(histories, finished, out)
    written += horizon_study(histories, finished, out)
    if skipped:
        with written[1].open("a") as summary:
            summary.write("\n" + "".join(f"Not drawn: {line}.\n" for line in skipped))
    norms = load_time_step_norms(tracking_uri, finished)
    if not norms.empty:
        norms = label_histories(norms, labelled)
    figure = recurrent_figure(norms, out / "recurrent.png", left_out)
    if figure is not None:
        figures.append(figure)
        written.append(out / "recurrent.png")
    for figure in figures:
        plt.close(figure)
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
