"""Runs read back from MLflow equal what the training jobs returned; the summary's statistics."""

import math

import pandas as pd
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
    from analysis.summary import format_markdown, summarize

    for epochs in (1, 3):
        run(make_config("data=digits", f"train.epochs={epochs}", "seed=0"))
    experiment = make_config().mlflow.experiment_name
    runs = load_runs(tracking_uri, experiment)
    histories = load_histories(tracking_uri, runs, ["epoch_seconds", "test_accuracy"])
    curve = histories[(histories.metric == "test_accuracy") & (histories.epoch <= 3)]
    threshold = curve[curve.run_id == runs.loc[runs["param.train.epochs"] == "3", "run_id"].item()]
    target = threshold.value.iloc[-1]  # reached at epoch 3 by the 3-epoch run, at the latest
    table = summarize(runs, histories=histories, solved_threshold=target)
    rows = table.set_index("train.epochs")  # a setting that varies is a key by itself
    first = threshold[threshold.value >= target].epoch.min()
    assert rows.loc[3, "solved"] == 1 and rows.loc[3, "solved_epoch_mean"] == first
    markdown = format_markdown(table)  # the printed table shows them too, not only the CSV
    assert "| solved runs | first solved epoch (mean) |" in markdown
    assert f"| 1 | {first} |" in markdown
    assert list(table["train.epochs"]) == [1, 3] and list(table["runs"]) == [1, 1]  # not pooled
    assert summarize(runs, by=["param.train.epochs"])["train.epochs"].tolist() == [1, 3]
    seconds = histories[
        (histories.metric == "epoch_seconds") & (histories.run_id == threshold.run_id.iloc[0])
    ].value.mean()
    assert rows.loc[3, "epoch_seconds_mean"] == pytest.approx(seconds)


def fake_runs(values, **columns):
    """A load_runs-like table: ``values`` = {(method, data, depth): [value per seed 0..]}."""
    rows = []
    for (method, data, depth), per_seed in values.items():
        for seed, value in enumerate(per_seed):
            rows.append(
                {
                    "run_id": f"{method}-{data}-{depth}-{seed}",
                    "status": "FINISHED",
                    "method": method,
                    "data": data,
                    "model": "mlp",
                    "seed": seed,
                    "param.seed": str(seed),
                    "param.model.hidden_sizes": depth,
                    # bookkeeping that differs from run to run: never a key
                    "param.mlflow.run_name": f"{method}-{seed}",
                    "param.tuned.best_run_id": f"study-of-{method}",
                    # each method's own option: differs between methods only, so no column
                    "param.method.optimizer.lr": {"backprop": "0.009"}.get(method, "0.003"),
                    "test_accuracy": value,
                    "epoch_seconds": 0.5,
                    **columns,
                }
            )
    return pd.DataFrame(rows)


def test_mean_interval_is_students_t_by_hand():
    from analysis.summary import mean_ci

    assert mean_ci([0.7] * 5)[:2] == (0.7, 0.7)  # no spread: nothing to be unsure about
    assert all(math.isnan(bound) for bound in mean_ci([0.7])[:2])  # one seed: no interval
    assert all(math.isnan(bound) for bound in mean_ci([0.7, math.nan])[:2])
    # 5 seeds: mean 0.644, s = sqrt(0.00492 / 4), t(0.975, 4) = 2.776445
    values = [0.61, 0.65, 0.64, 0.70, 0.62]
    low, high, method = mean_ci(values)
    half = 2.7764451 * math.sqrt(0.00492 / 4) / math.sqrt(5)
    assert method == "t"
    assert low == pytest.approx(0.644 - half, abs=1e-7)
    assert high == pytest.approx(0.644 + half, abs=1e-7)
    # 2 seeds: t(0.975, 1) = 12.706, far wider than their range (a bootstrap would give the range)
    low2, high2, _ = mean_ci([0.5, 0.6])
    assert low2 == pytest.approx(0.55 - 12.7062047 * 0.05, abs=1e-6) and high2 > 1.0
    with pytest.raises(ValueError, match="confidence"):
        mean_ci(values, confidence=1.0)


def test_paired_difference_to_backprop_by_seed():
    from analysis.summary import summarize

    backprop = [0.60, 0.65, 0.62, 0.70, 0.58]
    runs = fake_runs(
        {
            ("backprop", "digits", "[16]"): backprop,
            ("fa", "digits", "[16]"): [b + 0.02 for b in backprop],  # exactly +2 points
            ("dtp", "digits", "[16]"): [
                b - d for b, d in zip(backprop, [0.01, 0.03, 0.02, 0.015, 0.025])
            ],
            ("dfa", "digits", "[16]"): [
                b + d for b, d in zip(backprop, [0.01, -0.01, 0.02, -0.02, 0.0])
            ],
            ("hsic", "digits", "[16]"): backprop[:3],  # fewer seeds: paired on those only
        }
    )
    table = summarize(runs).set_index("method")
    fa = table.loc["fa"]
    assert fa.diff_vs_backprop_mean == pytest.approx(0.02)
    assert (fa.diff_ci_low, fa.diff_ci_high) == (pytest.approx(0.02), pytest.approx(0.02))
    assert fa.diff_excludes_zero and fa.paired_seeds == 5
    dtp = table.loc["dtp"]  # always worse: the interval lies below 0
    assert dtp.diff_vs_backprop_mean == pytest.approx(-0.02)
    assert dtp.diff_ci_high < 0 and dtp.diff_excludes_zero
    dfa = table.loc["dfa"]  # mixed signs, mean 0: the interval contains 0
    assert dfa.diff_ci_low < 0 < dfa.diff_ci_high and not dfa.diff_excludes_zero
    assert table.loc["hsic", "paired_seeds"] == 3
    assert table.loc["hsic", "diff_vs_backprop_mean"] == pytest.approx(0.0)
    assert math.isnan(table.loc["backprop", "diff_vs_backprop_mean"])  # the baseline itself
    mean = sum(backprop) / 5
    assert table.loc["backprop", "test_accuracy_mean"] == pytest.approx(mean)
    assert (
        table.loc["backprop", "test_accuracy_ci_low"]
        < mean
        < table.loc["backprop", "test_accuracy_ci_high"]
    )
    assert "lr" not in " ".join(table.columns)  # method options that differ by method only


def test_never_pools_settings_and_pairs_within_a_setting():
    from analysis.summary import grouping_keys, summarize

    runs = fake_runs(
        {
            ("backprop", "digits", "[16]"): [0.90, 0.91],
            ("backprop", "digits", "[16, 16]"): [0.80, 0.81],
            ("backprop", "mnist1d", "[16]"): [0.50, 0.51],
            ("fa", "digits", "[16]"): [0.85, 0.86],
            ("fa", "digits", "[16, 16]"): [0.85, 0.86],
        }
    )
    assert grouping_keys(runs) == ["param.model.hidden_sizes"]
    table = summarize(runs)
    assert table[["method", "data", "model.hidden_sizes"]].values.tolist() == [
        ["backprop", "digits", "[16]"],
        ["backprop", "digits", "[16, 16]"],
        ["backprop", "mnist1d", "[16]"],
        ["fa", "digits", "[16]"],
        ["fa", "digits", "[16, 16]"],
    ]
    assert table["runs"].tolist() == [2] * 5
    fa = table[table.method == "fa"].set_index("model.hidden_sizes")
    assert fa.loc["[16]", "diff_vs_backprop_mean"] == pytest.approx(-0.05)  # vs backprop [16]
    assert fa.loc["[16, 16]", "diff_vs_backprop_mean"] == pytest.approx(0.05)  # vs [16, 16]
    assert table.loc[3, "config"] == "fa, digits, model.hidden_sizes=[16]"
    # a repeated seed is one seed (averaged), not two samples
    again = pd.concat([runs, runs.iloc[[0]].assign(run_id="again", test_accuracy=0.92)])
    row = summarize(again).iloc[0]
    assert (row.runs, row.seeds) == (3, 2)
    assert row.test_accuracy_mean == pytest.approx((0.91 + 0.91) / 2)


def test_failed_killed_and_nonfinite_runs_are_counted_not_averaged():
    from analysis.summary import format_markdown, summarize

    runs = fake_runs({("backprop", "digits", "[16]"): [0.9, 0.8, math.nan]})
    extra = runs.iloc[:2].assign(run_id=["f", "k"], status=["FAILED", "KILLED"], test_accuracy=0.1)
    table = summarize(pd.concat([runs, extra]))
    [row] = table.to_dict("records")
    assert (row["runs"], row["finished"], row["failed"], row["killed"]) == (5, 3, 1, 1)
    assert row["seeds"] == 2 and row["test_accuracy_nonfinite"] == 1
    assert row["test_accuracy_mean"] == pytest.approx(0.85)
    text = format_markdown(table)
    assert "| non-finite |" in text and "85.0 [21.5, 100.0]" in text  # t(0.975, 1) = 12.7, clipped


def test_summary_when_every_run_failed(make_config, tracking_uri, capsys):
    from analysis.summary import main, summarize

    for seed in (0, 1):
        run(
            make_config("data=digits", "train.epochs=1", "method.optimizer.lr=1e12", f"seed={seed}")
        )
    experiment = make_config().mlflow.experiment_name
    runs = load_runs(tracking_uri, experiment)
    assert set(runs.status) == {"FAILED"}
    [row] = summarize(runs).to_dict("records")
    assert (row["runs"], row["failed"], row["finished"], row["seeds"]) == (2, 2, 0, 0)
    assert math.isnan(row["test_accuracy_mean"])
    assert main([experiment, "--tracking-uri", tracking_uri]) == 1
    out, err = capsys.readouterr()
    assert "| backprop | digits | 2 | 2 | 0 | 0 | n/a |" in out
    assert "no run of" in err and "2 FAILED" in err and "Traceback" not in err
    assert main([experiment, "--tracking-uri", tracking_uri, "--metric", "no_such_metric"]) == 1
