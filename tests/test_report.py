"""The report: one row and one line per configuration, the right sweep, NaN skipped visibly."""

import math

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from analysis.report import (
    alignment_figure,
    build_report,
    convergence_figure,
    label_histories,
    latest_sweep,
    markdown,
    select_runs,
    summary_table,
)
from analysis.runs import load_histories
from analysis.summary import assign_configs
from experiments.train import run

SETTINGS = {
    ("digits", "[16]"),
    ("digits", "[16, 16]"),
    ("mnist1d", "[16]"),
    ("mnist1d", "[16, 16]"),
}


def drawn_lines(ax):
    """Lines with data (seaborn also adds empty proxy lines for its legend)."""
    return [line for line in ax.lines if len(line.get_xdata())]


def test_two_datasets_and_two_depths_are_four_rows_and_four_lines(make_config, tmp_path):
    for data in ("digits", "mnist1d"):
        for depth in ("[16]", "[16,16]"):
            for seed in (0, 1):
                cfg = make_config(
                    f"data={data}",
                    f"model.hidden_sizes={depth}",
                    "train.epochs=2",
                    f"seed={seed}",
                    "diagnostics.every_steps=10",
                )
                run(cfg)
    uri, experiment = cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name

    runs, _, _ = select_runs(uri, experiment)
    labelled, keys = assign_configs(runs)
    assert keys == ["model.hidden_sizes"] and len(runs) == 8
    metrics = ["test_accuracy", "train_loss", "epoch_seconds"]
    histories = label_histories(load_histories(uri, runs, metrics), labelled)
    table = summary_table(runs, histories)
    assert set(zip(table["data"], table["model.hidden_sizes"])) == SETTINGS
    assert len(table) == 4 and (table["runs"] == 2).all() and (table["seeds"] == 2).all()
    expected = runs.groupby(["data", "param.model.hidden_sizes"])["test_accuracy"].mean()
    for row in table.itertuples():  # each row averages exactly its own two runs
        mean = expected[(row.data, table.at[row.Index, "model.hidden_sizes"])]
        assert row.test_accuracy_mean == pytest.approx(mean)
    assert markdown(table).count("| backprop |") == 4

    figure = convergence_figure(histories, tmp_path / "convergence.png")
    try:
        for ax in figure.axes[:4]:
            assert len(drawn_lines(ax)) == 4  # one line per configuration, never a pooled one
            assert len(ax.collections) == 4  # and one band each (2 seeds)
        legend = [text.get_text() for text in figure.axes[1].get_legend().get_texts()]
        assert sorted(legend) == sorted(table["config"])
        for label in legend:  # e.g. "backprop, digits, model.hidden_sizes=[16, 16]"
            assert "model.hidden_sizes=[16" in label and label.split(", ")[1] in {
                "digits",
                "mnist1d",
            }
    finally:
        plt.close(figure)

    angles = [f"alignment/layers.{i}.weight" for i in range(3)]
    histories = label_histories(load_histories(uri, runs, angles), labelled)
    figure = alignment_figure(histories, tmp_path / "alignment.png")
    try:  # the output layer is one panel whatever the depth: [16] has no hidden layer 2
        panels = {ax.get_title(): len(drawn_lines(ax)) for ax in figure.axes}
        assert panels == {
            "weights of the hidden layer 1": 4,
            "weights of the hidden layer 2": 2,
            "weights of the output layer": 4,
        }
    finally:
        plt.close(figure)

    written = build_report(uri, experiment, tmp_path / "report")
    assert {p.name for p in written} >= {"summary.md", "convergence.png", "alignment.png"}
    rows = (tmp_path / "report" / "summary.md").read_text().splitlines()
    assert sum(line.startswith("| backprop |") for line in rows) == 4
    csv = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert len(csv) == 4 and "test_accuracy_ci_low" in csv and "paired_seeds" in csv


def test_latest_sweep_skips_a_newer_sweep_without_finished_runs(tracking_uri, capsys):
    from experiments.tracking import (
        PARENT_TAG,
        ROLE_TAG,
        SWEEP_DIR_TAG,
        get_or_create_experiment,
        make_client,
    )

    client = make_client(tracking_uri)
    experiment = get_or_create_experiment(client, "report_sweeps")

    def sweep(name, start, *statuses):
        parent = client.create_run(
            experiment, start_time=start, tags={ROLE_TAG: "sweep", SWEEP_DIR_TAG: name}
        )
        for seed, status in enumerate(statuses):
            job = client.create_run(
                experiment,
                start_time=start + 1 + seed,
                tags={
                    ROLE_TAG: "job",
                    SWEEP_DIR_TAG: name,
                    PARENT_TAG: parent.info.run_id,
                    "method": "backprop",
                    "data": "digits",
                    "seed": str(seed),
                },
            )
            client.log_metric(job.info.run_id, "test_accuracy", 0.9, step=1)
            client.set_terminated(job.info.run_id, status)
        client.set_terminated(parent.info.run_id, "FINISHED")
        return parent.info.run_id

    complete = sweep("multirun/a", 1_000, "FINISHED", "FAILED")
    sweep("multirun/b", 2_000, "FAILED", "KILLED")  # newer, crashed
    capsys.readouterr()
    assert latest_sweep(tracking_uri, "report_sweeps") == (complete, "multirun/a")
    err = capsys.readouterr().err
    assert "skipping sweep multirun/b" in err and "sweep multirun/a" in err
    runs, _, _ = select_runs(tracking_uri, "report_sweeps")
    assert set(runs["sweep_dir"]) == {"multirun/a"} and len(runs) == 2  # b never enters
    all_runs, _, _ = select_runs(tracking_uri, "report_sweeps", all_sweeps=True)
    assert len(all_runs) == 4
    sweep("multirun/c", 3_000, "FAILED")
    assert latest_sweep(tracking_uri, "report_sweeps")[1] == "multirun/a"


def test_report_of_a_sweep_where_everything_failed_is_one_clear_error(tracking_uri):
    from experiments.tracking import ROLE_TAG, get_or_create_experiment, make_client

    client = make_client(tracking_uri)
    experiment = get_or_create_experiment(client, "report_all_failed")
    for status in ("FAILED", "KILLED"):
        job = client.create_run(experiment, tags={ROLE_TAG: "job", "method": "fa", "seed": "0"})
        client.set_terminated(job.info.run_id, status)
    with pytest.raises(
        ValueError, match=r"no finished runs .*1 FAILED, 1 KILLED|1 KILLED, 1 FAILED"
    ):
        select_runs(tracking_uri, "report_all_failed")


def test_alignment_figure_drops_nan_angles_and_says_so(tmp_path):
    rows = []
    for config, values in (("fa", [80.0, math.nan, 70.0]), ("dni", [math.nan, math.nan, 50.0])):
        for seed in (0, 1):
            for epoch, value in enumerate(values, start=1):
                for layer in (0, 1):
                    rows.append(
                        {
                            "run_id": f"{config}{seed}",
                            "seed": seed,
                            "metric": f"alignment/layers.{layer}.weight",
                            "epoch": epoch,
                            "value": value,
                            "config": config,
                        }
                    )
    histories = pd.DataFrame(rows)
    figure = alignment_figure(histories, tmp_path / "alignment.png")
    try:
        notes = [text.get_text() for text in figure.texts]
        assert any("12 NaN/Inf angles (undefined) not drawn" in note for note in notes), notes
        for ax in figure.axes:
            points = sum(len(line.get_xdata()) for line in drawn_lines(ax))
            assert points == 3  # fa: epochs 1 and 3; dni: epoch 3
            for line in drawn_lines(ax):
                assert all(math.isfinite(y) for y in line.get_ydata())
    finally:
        plt.close(figure)
