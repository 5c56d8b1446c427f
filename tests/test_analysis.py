"""Runs read back from MLflow equal what the training jobs returned."""

import pytest

from analysis.runs import load_histories, load_runs
from experiments.train import run


def test_tables_match_the_jobs(make_config, tracking_uri):
    finals = {
        seed: run(make_config("data=digits", "train.epochs=2", f"seed={seed}")) for seed in (0, 1)
    }
    experiment = make_config().mlflow.experiment_name
    runs = load_runs(tracking_uri, experiment)
    assert sorted(runs["seed"]) == [0, 1] and set(runs["status"]) == {"FINISHED"}
    for row in runs.itertuples():
        assert row.test_accuracy == pytest.approx(finals[row.seed]["test_accuracy"])
    assert set(runs["param.train.epochs"]) == {"2"}
    history = load_histories(tracking_uri, runs, ["test_loss", "train_loss"])
    assert len(history) == 2 * 2 * 2  # runs x metrics x epochs
    last = history[(history.metric == "test_loss") & (history.epoch == 2)]
    for row in last.itertuples():
        assert row.value == pytest.approx(finals[row.seed]["test_loss"])


def test_missing_experiment_gives_an_empty_table(tracking_uri):
    assert load_runs(tracking_uri, "no-such-experiment").empty


def test_summary_table_means_over_seeds(make_config, tracking_uri, capsys):
    from analysis.summary import main, summarize

    finals = [
        run(make_config("data=digits", "train.epochs=1", f"seed={s}"))["test_accuracy"]
        for s in (0, 1)
    ]
    experiment = make_config().mlflow.experiment_name
    table = summarize(load_runs(tracking_uri, experiment))
    [row] = table.itertuples()
    assert (row.method, row.data, row.runs, row.failed) == ("backprop", "digits", 2, 0)
    assert row.test_accuracy_mean == pytest.approx(sum(finals) / 2)
    assert row.test_accuracy_std == pytest.approx(abs(finals[0] - finals[1]) / 2**0.5)
    assert main([experiment, "--tracking-uri", tracking_uri]) == 0
    assert "| backprop" in capsys.readouterr().out
    assert main(["nothing-here", "--tracking-uri", tracking_uri]) == 2


def test_summary_groups_and_first_solved_epoch(make_config, tracking_uri):
    from analysis.summary import summarize

    for epochs in (1, 3):
        run(make_config("data=digits", f"train.epochs={epochs}", "seed=0"))
    experiment = make_config().mlflow.experiment_name
    runs = load_runs(tracking_uri, experiment)
    histories = load_histories(tracking_uri, runs, ["epoch_seconds", "test_accuracy"])
    curve = histories[(histories.metric == "test_accuracy") & (histories.epoch <= 3)]
    threshold = curve[curve.run_id == runs.loc[runs["param.train.epochs"] == "3", "run_id"].item()]
    target = threshold.value.iloc[-1]  # reached at epoch 3 by the 3-epoch run, at the latest
    table = summarize(runs, histories=histories, by=["param.train.epochs"], solved_threshold=target)
    rows = table.set_index("param.train.epochs")
    first = threshold[threshold.value >= target].epoch.min()
    assert rows.loc[3, "solved"] == 1 and rows.loc[3, "solved_epoch_mean"] == first
    assert list(table["configs"]) == [1, 1]
    assert list(summarize(runs, histories=histories)["configs"]) == [2]  # pooled: flagged
    seconds = histories[
        (histories.metric == "epoch_seconds") & (histories.run_id == threshold.run_id.iloc[0])
    ].value.mean()
    assert rows.loc[3, "epoch_seconds_mean"] == pytest.approx(seconds)
