"""The command line as a user runs it: errors, sweeps, divergence inside a sweep, Ctrl-C."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

pytestmark = pytest.mark.slow

# The checkout these tests belong to: a subprocess started elsewhere imports its code, not
# whatever copy an editable install points at.
REPO_ROOT = Path(__file__).resolve().parents[1]


def subprocess_env(tracking_uri):
    """The environment of a ``python -m experiments.train`` started by a test."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": path,
    }


def train(tmp_path, tracking_uri, *args, experiment, timeout=300, **popen):
    env = subprocess_env(tracking_uri)
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        *args,
        f"mlflow.experiment_name={experiment}",
        f"hydra.run.dir={tmp_path}/run",
        f"hydra.sweep.dir={tmp_path}/sweep",
    ]
    if popen:
        return subprocess.Popen(command, cwd=tmp_path, env=env, **popen)
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


def finished_runs(tracking_uri, experiment):
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def test_unknown_method_lists_the_options(tmp_path, tracking_uri):
    result = train(tmp_path, tracking_uri, "method=nope", experiment="cli_unknown")
    assert result.returncode != 0
    assert "Could not find 'method/nope'" in result.stderr
    assert "backprop" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("override", "choices"), [("experiment=comparre", "compare"), ("search=dttp", "dtp")]
)
def test_unknown_preset_or_search_space_is_refused_not_skipped(
    tmp_path, tracking_uri, override, choices
):
    # Both groups are empty by default; a misspelt choice must not run the default job.
    result = train(tmp_path, tracking_uri, override, experiment="cli_unknown_preset")
    assert result.returncode == 2
    group, name = override.split("=")
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: Could not find '{group}/{name}'; {group} options: ")
    assert choices in lines[-1] and "Traceback" not in result.stderr
    assert not finished_runs(tracking_uri, "cli_unknown_preset")


def test_typo_in_a_key_is_named_with_the_valid_keys(tmp_path, tracking_uri):
    result = train(tmp_path, tracking_uri, "train.epoch=3", experiment="cli_typo")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    # Not Hydra's "use +train.epoch=3" hint, which only leads to a second error.
    assert result.stderr.strip().splitlines() == [
        "error: train.epoch: unknown key; train has only: batch_size, checkpoint_dir, "
        "checkpoint_every, epochs, eval_batch_size, lr_schedule, lr_step_epochs, lr_step_factor, "
        "objective, objective_seeds"
    ]


def test_bad_value_is_one_line_naming_the_key(tmp_path, tracking_uri):
    result = train(tmp_path, tracking_uri, "train.batch_size=0", experiment="cli_bad")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: train.batch_size: must be an integer >= 1, got 0"]
    assert "Traceback" not in result.stderr


def test_misspelt_tuned_defaults_are_an_error_not_a_silent_untuned_run(tmp_path, tracking_uri):
    result = train(tmp_path, tracking_uri, "method=dtp", "tuned=dtp_mpl", experiment="cli_tuned")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: tuned: no tuned defaults named 'dtp_mpl'")
    assert "(dtp_mlp_mnist1d) applies by itself" in error


def test_tuned_null_points_to_the_opt_out(tmp_path, tracking_uri):
    result = train(tmp_path, tracking_uri, "tuned=null", experiment="cli_tuned_null")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: tuned=null: write '~tuned' to run without tuned defaults"
    ]


def test_sweep_groups_runs_and_survives_a_diverging_job(tmp_path, tracking_uri):
    result = train(
        tmp_path,
        tracking_uri,
        "-m",
        "data=digits",
        "train.epochs=2",
        "seed=0,1",
        "method.optimizer._target_=torch.optim.SGD",
        "method.optimizer.lr=1e12,0.05",
        experiment="cli_sweep",
    )
    assert result.returncode == 0, result.stderr
    runs = finished_runs(tracking_uri, "cli_sweep")
    jobs = [r for r in runs if r.data.tags.get("role") == "job"]
    [parent] = [r for r in runs if r.data.tags.get("role") == "sweep"]
    assert len(jobs) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parent.info.run_id}
    assert parent.info.status == "FINISHED"
    by_lr = {(r.data.params["method.optimizer.lr"], r.data.tags["seed"]): r for r in jobs}
    for seed in "01":
        diverged, healthy = by_lr[("1000000000000.0", seed)], by_lr[("0.05", seed)]
        assert diverged.info.status == "FAILED" and "diverged_at_step" in diverged.data.metrics
        assert healthy.info.status == "FINISHED" and healthy.data.metrics["test_accuracy"] > 0.5


def test_sweep_stopped_by_a_bad_job_closes_its_parent_as_failed(tmp_path, tracking_uri):
    result = train(
        tmp_path,
        tracking_uri,
        "-m",
        "data=digits",
        "train.epochs=1",
        "train.batch_size=0,100",
        experiment="cli_sweep_bad",
    )
    assert result.returncode == 2
    assert "error: train.batch_size: must be an integer >= 1, got 0" in result.stderr
    [parent] = finished_runs(tracking_uri, "cli_sweep_bad")  # no job run was created
    assert parent.data.tags["role"] == "sweep" and parent.info.status == "FAILED"
    assert "train.batch_size" in parent.data.tags["failure_reason"]


def test_ctrl_c_marks_the_run_killed_and_keeps_metrics(tmp_path, tracking_uri):
    process = train(
        tmp_path,
        tracking_uri,
        "data=digits",
        "train.epochs=100000",
        experiment="cli_sigint",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        client = mlflow.MlflowClient(tracking_uri)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the job exited early with status {process.returncode}")
            runs = finished_runs(tracking_uri, "cli_sigint")
            if runs and client.get_metric_history(runs[0].info.run_id, "test_loss"):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the job logged no epoch within 120 s")
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130  # 128 + SIGINT, as a shell reports a process Ctrl-C ended
    [run] = finished_runs(tracking_uri, "cli_sigint")
    assert (
        run.info.status == "KILLED" and run.data.tags["failure_reason"] == "interrupted by SIGINT"
    )
    assert client.get_metric_history(run.info.run_id, "test_loss")


def test_report_builds_from_a_tiny_sweep_and_matches_the_store(tmp_path, tracking_uri):
    from analysis.report import build_report
    from analysis.runs import load_runs

    result = train(
        tmp_path,
        tracking_uri,
        "-m",
        "method=backprop,fa",
        "seed=0,1",
        "data=digits",
        "train.epochs=1",
        "diagnostics.every_steps=5",
        experiment="cli_report",
    )
    assert result.returncode == 0, result.stderr
    written = build_report(tracking_uri, "cli_report", tmp_path / "report")
    assert {p.name for p in written} == {
        "summary.csv",
        "summary.md",
        "convergence.png",
        "alignment.png",
        "vanishing.png",
    }
    import pandas as pd

    table = pd.read_csv(tmp_path / "report" / "summary.csv").set_index("method")
    runs = load_runs(tracking_uri, "cli_report")
    for method, group in runs.groupby("method"):
        assert table.loc[method, "test_accuracy_mean"] == pytest.approx(group.test_accuracy.mean())
        assert table.loc[method, "runs"] == 2
    [parent] = [
        r for r in finished_runs(tracking_uri, "cli_report") if r.data.tags.get("role") == "sweep"
    ]
    client = mlflow.MlflowClient(tracking_uri)
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/convergence.png" in logged and "report/summary.md" in logged


def test_parallel_joblib_sweep_keeps_every_run_and_metric(tmp_path, tracking_uri):
    from analysis.runs import load_histories, load_runs

    result = train(
        tmp_path,
        tracking_uri,
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=4",
        "seed=0,1,2,3,4,5,6,7",
        "data=digits",
        "train.epochs=2",
        experiment="cli_joblib",
    )
    assert result.returncode == 0, result.stderr
    runs = load_runs(tracking_uri, "cli_joblib")
    assert len(runs) == 8 and set(runs.status) == {"FINISHED"} and runs.sweep_dir.nunique() == 1
    histories = load_histories(tracking_uri, runs, ["test_accuracy", "train_loss", "epoch_seconds"])
    assert (histories.groupby("run_id").size() == 3 * 2).all()  # 3 metrics x 2 epochs each
    parents = [
        r for r in finished_runs(tracking_uri, "cli_joblib") if r.data.tags.get("role") == "sweep"
    ]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


def test_optuna_search_tunes_on_the_validation_split(tmp_path, tracking_uri):
    from analysis.runs import load_runs

    result = train(
        tmp_path,
        tracking_uri,
        "-m",
        "experiment=tune",
        "method=backprop",
        "search=backprop",
        "data=digits",
        "train.epochs=1",
        "hydra.sweeper.n_trials=2",
        experiment="cli_tune",
    )
    assert result.returncode == 0, result.stderr
    runs = load_runs(tracking_uri, "cli_tune")
    # 2 trials x the 2 tuning seeds, never an evaluation seed
    assert len(runs) == 4 and runs["param.method.optimizer.lr"].nunique() == 2
    assert sorted(runs["seed"]) == [1000, 1000, 1001, 1001]
    assert runs["val_accuracy"].notna().all() and set(runs["param.data.val_fraction"]) == {"0.1"}
    # The study's best trial (by its mean over seeds) becomes tuned defaults that record how
    # to redo the study.
    from analysis.export_tuned import export

    [path] = export(tracking_uri, "cli_tune", tmp_path / "tuned")
    config = yaml.safe_load(path.read_text())
    means = runs.groupby("param.method.optimizer.lr")["val_accuracy"].mean()
    lr = float(means.idxmax())
    assert path.name == "backprop_mlp_digits.yaml"
    assert config["method"] == {"optimizer": {"lr": pytest.approx(lr, rel=1e-3)}}
    assert config["tuned"]["overrides"] == ["data=digits", "train.epochs=1"]
    assert config["tuned"]["best_value"] == pytest.approx(means.max(), rel=1e-3)
    assert config["tuned"]["seeds"] == [1000, 1001] and config["tuned"]["trials"] == 2
