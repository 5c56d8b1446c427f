"""Figures and tables of the two gradient studies of ``make reproduce``.

* **Vanishing / exploding gradients over depth** (``experiment=vanishing_depth``): the backprop
  gradient norm of each weight matrix, ``||dL/dW_l||_F`` on the probe batch, against the layer
  index ``l``, one line per network depth, one panel per activation x method, log scale. Glorot
  & Bengio (2010, Sec. 4.2) and Hochreiter et al. (2001) describe what it must show: with
  sigmoid units the first layers' gradients are orders of magnitude below the last layer's, with
  ReLU the profile is much flatter.
* **Recurrent horizon** (``experiment=rnn_horizon``): the longest sequence length T at which each
  method and cell solves the adding problem (Pascanu et al. 2013: 99% of test sequences within a
  squared error of 0.04); the ``||dL/dh_t||``-against-t curves are the report's
  ``recurrent.png``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

WEIGHT = re.compile(r"^grad_norm/(?:.*\.)?(?P<index>\d+)\.weight$")
# Pascanu et al. 2013: the adding problem counts as solved when 99% of the test sequences are
# within 0.04 (test_accuracy is that fraction).
SOLVED = 0.99


def depth_profile(histories: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per-layer backprop gradient norms of MLP runs at their first and last probe.

    Args:
        histories: :func:`analysis.runs.load_histories` rows of ``grad_norm/layers.<i>.weight``.
        runs: the :func:`analysis.runs.load_runs` table of the same runs (for depth and
            activation: ``param.model.hidden_sizes``, ``param.model.activation``).

    Returns:
        Columns ``run_id, method, depth`` (hidden layers), ``activation, layer`` (1-based;
        ``depth + 1`` is the output layer), ``probe`` (``first`` or ``last``), ``update`` (the
        update count of that probe) and ``norm``. Non-finite norms are dropped (a diverged
        run's NaN), so count rows if that matters. Empty if no run logged the norms.
    """
    rows = histories[histories.metric.str.match(WEIGHT)].copy()
    columns = ["run_id", "method", "depth", "activation", "layer", "probe", "update", "norm"]
    if rows.empty or "param.model.hidden_sizes" not in runs:
        return pd.DataFrame(columns=columns)
    rows["layer"] = rows.metric.str.extract(WEIGHT)["index"].astype(int) + 1
    info = runs.set_index("run_id")
    depth = info["param.model.hidden_sizes"].map(lambda text: len(ast.literal_eval(text)))
    rows["depth"] = rows.run_id.map(depth)
    rows["activation"] = rows.run_id.map(info.get("param.model.activation"))
    first = rows.groupby("run_id")["epoch"].transform("min")
    last = rows.groupby("run_id")["epoch"].transform("max")
    picked = pd.concat(
        [
            rows[rows.epoch == first].assign(probe="first"),
            rows[rows.epoch == last].assign(probe="last"),
        ]
    )
    picked = picked.rename(columns={"epoch": "update", "value": "norm"})
    picked = picked[np.isfinite(picked["norm"].astype(float))]
    return picked[columns].sort_values(["method", "activation", "depth", "probe", "layer"])


def depth_figure(profile: pd.DataFrame, path: Path, probe: str = "first") -> bool:
    """Gradient norm against layer index, a line per depth, a panel per activation x method.

    No two networks share a line: each line is one run (one method, depth and activation; the
    study has one seed). ``False`` (nothing written) if ``profile`` is empty.
    """
    data = profile[profile.probe == probe]
    if data.empty:
        return False
    grid = sns.relplot(
        data=data,
        x="layer",
        y="norm",
        hue="depth",
        units="run_id",
        estimator=None,
        row="activation",
        col="method",
        kind="line",
        marker="o",
        palette="viridis",
        height=2.4,
        aspect=1.1,
        facet_kws={"sharey": "row", "margin_titles": True},
    )
    grid.set(yscale="log")
    for ax in grid.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    grid.set_axis_labels("layer (last = output)", "||dL/dW_l|| (backprop)")
    grid.set_titles(row_template="{row_name}", col_template="{col_name}")
    when = "at the first probe (near initialisation)" if probe == "first" else "after training"
    grid.figure.suptitle(
        f"Backprop gradient norm per layer {when}, one line per depth (hidden layers)", y=1.02
    )
    grid.savefig(path, dpi=100)
    plt.close(grid.figure)
    return True


def depth_ratios(profile: pd.DataFrame, probe: str = "first") -> pd.DataFrame:
    """``||dL/dW_1|| / ||dL/dW_out||`` per method, activation and depth (one run each).

    A ratio far below 1 is a vanishing gradient, far above 1 an exploding one.

    Returns:
        Columns ``method, activation, depth, first_over_last``.
    """
    data = profile[profile.probe == probe]
    if data.empty:
        return pd.DataFrame(columns=["method", "activation", "depth", "first_over_last"])
    first = data[data.layer == 1].set_index("run_id")["norm"]
    # Only the output layer (depth + 1) is the denominator; a run whose output norm was dropped
    # as non-finite gets NaN, never the ratio to a hidden layer.
    out = data[data.layer == data.depth + 1].set_index("run_id")
    runs = data.drop_duplicates("run_id").set_index("run_id")[["method", "activation", "depth"]]
    table = runs.assign(first_over_last=first.reindex(runs.index) / out["norm"].reindex(runs.index))
    return table.reset_index(drop=True).sort_values(["method", "activation", "depth"])


def horizon_table(runs: pd.DataFrame, histories: pd.DataFrame) -> pd.DataFrame:
    """The longest adding-problem length each method x cell solves.

    Args:
        runs: :func:`analysis.runs.load_runs` rows with ``param.data.length`` and
            ``param.model.cell``.
        histories: ``test_accuracy`` histories of the same runs.

    Returns:
        Columns ``method, cell, lengths`` (every T tried), ``solved`` (the T whose runs all
        reached 99% at some epoch), ``longest_solved`` (their maximum, 0 if none).
    """
    columns = ["method", "cell", "lengths", "solved", "longest_solved"]
    if runs.empty or "param.data.length" not in runs:
        return pd.DataFrame(columns=columns)
    accuracy = histories[histories.metric == "test_accuracy"]
    best = accuracy.groupby("run_id")["value"].max()
    table = runs.assign(
        T=pd.to_numeric(runs["param.data.length"]),
        cell=runs.get("param.model.cell", "-"),
        solved=runs["run_id"].map(best).ge(SOLVED),
    )
    rows = []
    for (method, cell), group in table.groupby(["method", "cell"]):
        by_length = group.groupby("T")["solved"].all()
        solved = sorted(int(t) for t, ok in by_length.items() if ok)
        rows.append(
            {
                "method": method,
                "cell": cell,
                "lengths": sorted(int(t) for t in by_length.index),
                "solved": solved,
                "longest_solved": max(solved, default=0),
            }
        )
    return pd.DataFrame(rows, columns=columns)
