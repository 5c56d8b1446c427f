"""Runs that read well in the MLflow UI (issue 14).

The experiment's kind, the sweep parent's summary, each job's dataset, run addresses and sweep
progress lines.
"""

import re
from dataclasses import replace

import mlflow
import pandas as pd
import pytest
from omegaconf import OmegaConf

from analysis.sweep_note import metric_key, sweep_note
from experiments.data import carve_validation
from experiments.data.digits import load_digits
from experiments.dataset_input import dataset_digest, split_sizes, training_input
from experiments.sweep_progress import SweepProgress, count_jobs, format_duration
from experiments.tracking import (
    EXPERIMENT_KIND_TAG,
    TRAINING_KIND,
    get_or_create_experiment,
    make_client,
)
from experiments.ui_links import REPO_STORE, run_line, run_url
from tests.test_cli import finished_runs, train

BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
OPTUNA = "hydra_plugins.backprop_bench_sweeper.optuna_sweeper.OptunaSweeper"


def test_experiments_are_typed_as_model_training_unless_typed_otherwise(tracking_uri):
    client = make_client(tracking_uri)
    created = get_or_create_experiment(client, "ui_kind_new")
    assert client.get_experiment(created).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    older = client.create_experiment("ui_kind_older")  # made before the tag existed
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(older).tags
    assert get_or_create_experiment(client, "ui_kind_older") == older
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    genai = client.create_experiment(
        "ui_kind_genai", tags={EXPERIMENT_KIND_TAG: "genai_development"}
    )
    get_or_create_experiment(client, "ui_kind_genai")
    assert client.get_experiment(genai).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_run_addresses_open_the_training_view_of_the_right_ui():
    assert (
        run_url("http://tracking:5000/", "3", "abc")
        == "http://tracking:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    assert run_line("https://t.example", "3", "abc") == (
        "run: https://t.example/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    assert run_line(f"sqlite:///{REPO_STORE}", "1", "r").endswith("(serve it with: make ui)")
    assert run_line("sqlite:////tmp/x y/mlflow.db", "1", "r") == (
        "run: http://127.0.0.1:5000/#/experiments/1/runs/r?workflowType=machine_learning "
        "(serve it with: mlflow ui --backend-store-uri 'sqlite:////tmp/x y/mlflow.db' --workers 1)"
    )


def sweep_config(task, params=None, target=BASIC, launcher=None, **sweeper):
    return OmegaConf.create(
        {
            "hydra": {
                "sweeper": {"_target_": target, "params": params, **sweeper},
                "overrides": {"task": task},
                "launcher": launcher or {},
            }
        }
    )


def test_the_job_count_follows_each_sweeper():
    assert count_jobs(sweep_config(["method=backprop,fa,dfa", "seed=0,1", "data=digits"])) == 6
    # The command line replaces a preset's swept key, as in Hydra's basic sweeper.
    assert count_jobs(sweep_config(["seed=0,1"], {"method": "a,b,c", "seed": "0,1,2,3,4"})) == 6
    assert count_jobs(sweep_config(["seed=range(0,5)"])) == 5
    assert count_jobs(sweep_config([], target=OPTUNA, n_trials=16)) == 16
    assert count_jobs(sweep_config(["method=glob(*)"])) is None  # needs Hydra's config loader
    assert count_jobs(sweep_config(["x=1"], target="my.OwnSweeper")) is None


def test_time_left_is_the_mean_job_time_times_the_jobs_left():
    sequential = SweepProgress(total=12, workers=1, started=1000.0, label="85f0a321")
    assert sequential.line(1, now=1005.0) == (
        "job 1 of 12 (sweep 85f0a321): time left known once a job has ended"
    )
    # 2 jobs took 120 s: 60 s each, 10 jobs left (this one included).
    assert sequential.seconds_left(3, now=1120.0) == pytest.approx(600.0)
    assert sequential.line(3, now=1120.0) == "job 3 of 12 (sweep 85f0a321): ~10 min left"
    assert sequential.line(12, now=1000.0 + 11 * 30) == "job 12 of 12 (sweep 85f0a321): ~30 s left"
    parallel = replace(sequential, workers=2)
    assert parallel.seconds_left(2, now=1001.0) is None  # both start with the sweep
    # Job 5 starts after two waves of 2 jobs, 200 s: 100 s a job, 8 jobs left, 2 at a time.
    assert parallel.line(5, now=1200.0) == (
        "job 5 of 12 (sweep 85f0a321): ~7 min left (approximate, 2 jobs at a time)"
    )
    unknown = replace(sequential, total=None)
    assert unknown.line(4, now=2000.0).startswith("job 4 (sweep 85f0a321): time left known")
    assert [format_duration(s) for s in (40, 89.4, 240, 5399, 9000)] == [
        "40 s",
        "89 s",
        "4 min",
        "90 min",
        "2.5 h",
    ]


def test_the_digest_changes_with_the_arrays_and_only_with_them():
    data = load_digits()
    digest = dataset_digest(data)
    assert len(digest) == 10 and dataset_digest(load_digits()) == digest
    assert dataset_digest(replace(data, name="renamed")) == digest
    changed = data.x_train.clone()
    changed[0, 0] += 1e-3
    assert dataset_digest(replace(data, x_train=changed)) != digest
    labels = data.y_test.clone()
    labels[0] = (labels[0] + 1) % 10
    assert dataset_digest(replace(data, y_test=labels)) != digest
    split = carve_validation(data, 0.1, 0)
    assert dataset_digest(split) != digest  # same examples, another split
    assert split_sizes(split) == {"train": 1293, "val": 144, "test": 360}
    logged = training_input(split, {"_target_": "experiments.data.digits.load_digits"})
    assert (logged.name, logged.digest) == ("digits", dataset_digest(split))
    assert logged.profile == {
        "train": 1293,
        "val": 144,
        "test": 360,
        "input_shape": [64],
        "task": "classification",
        "outputs": 10,
    }


def job_runs(statuses, accuracies):
    return pd.DataFrame(
        {
            "run_id": [f"r{i}" for i in range(len(statuses))],
            "status": statuses,
            "method": ["backprop", "backprop", "fa", "fa"][: len(statuses)],
            "data": "digits",
            "model": "mlp",
            "seed": [0, 1, 0, 1][: len(statuses)],
            "param.train.objective": "None",
            "test_accuracy": accuracies,
        }
    )


def test_the_note_of_a_sweep_whose_every_job_failed_says_so():
    runs = job_runs(["FAILED"] * 4, [float("nan")] * 4)
    note, metrics = sweep_note(runs, "multirun/x")
    assert metrics == {}
    assert note.startswith("**Sweep summary** of `multirun/x`: 4 job runs (4 FAILED)")
    assert "No job run finished: nothing to average" in note
    rows = [line for line in note.splitlines() if line.startswith(("| backprop", "| fa"))]
    assert len(rows) == 2 and all("| 2 | 2 | 0 | 0 | n/a |" in row for row in rows)
    assert sweep_note(runs.iloc[:0], None)[0] == "**Sweep summary**: no job run was created.\n"


def test_a_configuration_becomes_a_valid_metric_name():
    assert metric_key("test_accuracy", "backprop") == "test_accuracy_mean/backprop"
    assert (
        metric_key("val_accuracy", "fa, digits, model.hidden_sizes=[16, 16]")
        == "val_accuracy_mean/fa digits model.hidden_sizes:_16 16_"
    )


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_sweep_reads_well_in_the_ui(tmp_path, tracking_uri, launcher):
    experiment = f"ui_sweep_{launcher}"
    result = train(
        tmp_path,
        tracking_uri,
        "-m",
        f"hydra/launcher={launcher}",
        *(["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []),
        "method=backprop,fa",
        "data=digits",
        "train.epochs=1",
        experiment=experiment,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    runs = finished_runs(tracking_uri, experiment)
    [parent] = [r for r in runs if r.data.tags.get("role") == "sweep"]
    jobs = {r.data.tags["method"]: r for r in runs if r.data.tags.get("role") == "job"}
    assert sorted(jobs) == ["backprop", "fa"]
    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = parent.info.experiment_id
    assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND

    # The parent's description is the summary table; one metric per method.
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith(f"**Sweep summary** of `{tmp_path}/sweep`: 2 job runs (2 FINISHED)")
    for method, job in jobs.items():
        accuracy = job.data.metrics["test_accuracy"]
        assert parent.data.metrics[f"test_accuracy_mean/{method}"] == pytest.approx(accuracy)
        [row] = [line for line in note.splitlines() if line.startswith(f"| {method} | digits |")]
        assert f"| {100 * accuracy:.1f} [n/a] |" in row  # one seed: no interval
    assert set(parent.data.metrics) == {"test_accuracy_mean/backprop", "test_accuracy_mean/fa"}

    # Each job logged its dataset: name, context, split sizes, the digest of its arrays.
    digest = dataset_digest(load_digits())
    for job in jobs.values():
        [logged] = job.inputs.dataset_inputs
        assert (logged.dataset.name, logged.dataset.digest) == ("digits", digest)
        assert {(t.key, t.value) for t in logged.tags} == {("mlflow.data.context", "training")}
        profile = OmegaConf.create(logged.dataset.profile)
        assert (profile.train, profile.val, profile.test) == (1437, 0, 360)

    # Progress lines, then each run's address, then the parent's.
    label = parent.info.run_id[:8]
    starts = re.findall(rf"job (\d) of 2 \(sweep {label}\): (.*)", output)
    assert sorted(k for k, _ in starts) == ["1", "2"]
    if launcher == "basic":
        assert dict(starts)["2"].endswith(" s left") and dict(starts)["2"].startswith("~")
    base = "http://127.0.0.1:5000/#/experiments"
    for run_id in [*(j.info.run_id for j in jobs.values()), parent.info.run_id]:
        assert f"run: {base}/{experiment_id}/runs/{run_id}?workflowType=machine_learning" in output
    assert f"sweep run: {base}/{experiment_id}/runs/{parent.info.run_id}" in output
    assert f"--backend-store-uri {tracking_uri} --workers 1" in output
