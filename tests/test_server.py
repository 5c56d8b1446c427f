"""The same read-back checks as on SQLite, against an MLflow server on PostgreSQL; a load test.

The tests imported below run here a second time with ``tracking_uri`` pointing at the server
(this module overrides the fixture), so summary, report and the export of tuned defaults are
checked on both stores by the same code. Skipped when PostgreSQL is absent (tests/services.py).
"""

import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from tests.test_analysis import (  # noqa: F401 (collected again, on the server)
    test_summary_table_means_over_seeds,
    test_tables_match_the_jobs,
)
from tests.test_cli import (  # noqa: F401
    subprocess_env,
    test_optuna_search_tunes_on_the_validation_split,
)

# The report's sweep selection on hand-made runs (its 8-job figure test is left to SQLite: it
# adds minutes and reads runs the same way as test_tables_match_the_jobs).
from tests.test_report import (  # noqa: F401
    test_latest_sweep_skips_a_newer_sweep_without_finished_runs,
    test_report_of_a_sweep_where_everything_failed_is_one_clear_error,
)
from tests.test_tuned import test_load_runs_reports_the_tuned_defaults_of_each_run  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture
def tracking_uri(server_uri):
    """Every test of this module tracks to the server instead of the session's SQLite file."""
    return server_uri


EPOCHS = 3
PER_EPOCH = ("train_loss", "test_loss", "test_accuracy", "epoch_seconds")


def test_eight_writers_at_once_lose_no_metric(tmp_path, tracking_uri):
    """4 joblib workers of one sweep and 4 independent processes write at the same time."""
    experiment = "load"
    # MLflow's set_experiment races when several processes create a new name at once.
    MlflowClient(tracking_uri).create_experiment(experiment)
    common = ["data=digits", f"train.epochs={EPOCHS}", f"mlflow.experiment_name={experiment}"]
    train = [sys.executable, "-m", "experiments.train"]
    commands = [
        [
            *train,
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=4",
            "seed=0,1,2,3",
            *common,
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        *[
            [*train, f"seed={seed}", *common, f"hydra.run.dir={tmp_path}/run{seed}"]
            for seed in range(4, 8)
        ],
    ]
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            command,
            cwd=tmp_path,
            env=subprocess_env(tracking_uri),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    errors = [process.communicate(timeout=900)[1] for process in processes]
    elapsed = time.monotonic() - started
    assert [p.returncode for p in processes] == [0] * 5, "\n".join(errors)

    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    jobs = [r for r in runs if r.data.tags.get("role") == "job"]
    assert sorted(int(r.data.tags["seed"]) for r in jobs) == list(range(8))
    assert {r.info.status for r in runs} == {"FINISHED"}
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    assert len(parents) == 1
    assert sum(r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id for r in jobs) == 4
    # Every run logged the same keys; each per-epoch metric holds epochs 1..EPOCHS exactly once.
    keys = {frozenset(r.data.metrics) for r in jobs}
    assert len(keys) == 1 and set(PER_EPOCH) <= next(iter(keys))
    points = 0
    for job in jobs:
        for key in job.data.metrics:
            history = client.get_metric_history(job.info.run_id, key)
            points += len(history)
            if key in PER_EPOCH:
                assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), key
    per_run = {len(client.get_metric_history(jobs[0].info.run_id, k)) for k in PER_EPOCH}
    assert per_run == {EPOCHS}
    print(f"load test: 8 writers, {len(jobs)} runs, {points} metric points, {elapsed:.0f} s")
