"""Sweeps and the store survive races, interrupts, bad choices, failed studies and reuse.

Every test starts real ``python -m experiments.train`` processes (and real signals where the
fault is about signals), against a temporary store.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from experiments.tracking import make_client
from tests.test_cli import finished_runs, subprocess_env, train

pytestmark = pytest.mark.slow


def by_role(runs):
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    jobs = [r for r in runs if r.data.tags.get("role") == "job"]
    return parents, jobs


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith(("error:", "interrupted"))]


def test_jobs_started_together_on_a_fresh_store_all_record_their_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "experiments.train",
                "data=digits",
                "train.epochs=1",
                f"seed={seed}",
                "mlflow.experiment_name=fresh",
                f"hydra.run.dir={tmp_path}/run{seed}",
            ],
            cwd=tmp_path,
            env=subprocess_env(uri),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    errors = [process.communicate(timeout=600)[1] for process in processes]
    assert [p.returncode for p in processes] == [0] * 4, "\n".join(errors)
    runs = finished_runs(uri, "fresh")
    assert sorted(int(r.data.tags["seed"]) for r in runs) == [0, 1, 2, 3]
    assert {r.info.status for r in runs} == {"FINISHED"}
    # Artifacts live next to the store, not in the working directory.
    assert (tmp_path / "fresh" / "mlruns").is_dir() and not (tmp_path / "mlruns").exists()


def descendants(pid):
    """The pids of every process below ``pid`` (from ``/proc/<pid>/task/*/children``)."""
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids = [int(k) for k in children.read_text().split()]
        except OSError:  # the thread or process ended meanwhile
            continue
        for kid in kids:
            found += [kid, *descendants(kid)]
    return found


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for_a_logged_epoch(process, tracking_uri, experiment, timeout=240):
    """Wait until a job of the sweep logged an epoch; returns ``{run id: epochs logged}``."""
    client = mlflow.MlflowClient(tracking_uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the sweep exited early with status {process.returncode}")
        _, jobs = by_role(finished_runs(tracking_uri, experiment))
        logged = {
            r.info.run_id: len(client.get_metric_history(r.info.run_id, "test_loss")) for r in jobs
        }
        if any(logged.values()):
            return logged
        time.sleep(0.5)
    pytest.fail(f"no job logged an epoch within {timeout} s")


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_sweep_is_killed_with_its_parent_and_exits_128_plus_signal(
    tmp_path, tracking_uri, launcher, signum
):
    experiment = f"interrupted_{launcher}_{signum.name}"
    # The store exists before the test polls it: a test's own search on a fresh store migrates
    # it outside the store lock, racing the launcher that creates the sweep's parent.
    make_client(tracking_uri).search_experiments()
    workers = 2 if launcher == "joblib" else 1
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    process = train(
        tmp_path,
        tracking_uri,
        "-m",
        "seed=0,1,2,3",
        "data=digits",
        "train.epochs=100000",
        f"hydra/launcher={launcher}",
        *extra,
        experiment=experiment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        logged = wait_for_a_logged_epoch(process, tracking_uri, experiment)
        children = descendants(process.pid)
        assert children or launcher == "basic"  # joblib's workers are the launcher's children
        if signum == signal.SIGINT:
            os.killpg(process.pid, signum)  # Ctrl-C reaches the whole foreground group
        else:
            process.send_signal(signum)  # a scheduler (or `kill`) signals the main process
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    # No worker outlives the launcher: none keeps training or starts a queued job.
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if alive(pid)], stderr
    assert process.returncode == 128 + signum, stderr
    assert error_lines(stderr) == [
        f"interrupted by {signum.name}: runs in progress are marked KILLED"
    ]
    assert "Traceback" not in stderr
    parents, jobs = by_role(finished_runs(tracking_uri, experiment))
    [parent] = parents
    assert parent.info.status == "KILLED"
    assert parent.data.tags["failure_reason"] == f"interrupted by {signum.name}"
    # Every job that started is closed as KILLED; the jobs that had not started never exist.
    assert 1 <= len(jobs) <= workers
    assert {r.info.status for r in jobs} == {"KILLED"}
    assert all(signum.name in r.data.tags["failure_reason"] for r in jobs)
    # Its epochs are kept: every epoch logged before the signal is still in the store.
    client = mlflow.MlflowClient(tracking_uri)
    for run_id, epochs in logged.items():
        assert len(client.get_metric_history(run_id, "test_loss")) >= epochs


def test_a_typo_in_a_swept_method_fails_the_parent_with_the_reason(tmp_path, tracking_uri):
    result = train(
        tmp_path,
        tracking_uri,
        "-m",
        "method=backprop,nope",
        "data=digits",
        "train.epochs=1",
        experiment="sweep_typo",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    assert line.startswith("error: Could not find 'method/nope'; method options: altmin, backprop")
    parents, jobs = by_role(finished_runs(tracking_uri, "sweep_typo"))
    [parent] = parents
    assert parent.info.status == "FAILED" and jobs == []  # checked before any job started
    assert parent.data.tags["failure_reason"] == line.removeprefix("error: ")


def test_a_study_whose_every_trial_diverges_ends_in_one_line_and_a_failed_parent(
    tmp_path, tracking_uri
):
    result = train(
        tmp_path,
        tracking_uri,
        "-m",
        "experiment=tune",
        "method=backprop",
        "data=digits",
        "train.epochs=1",
        "hydra.sweeper.n_trials=2",
        "method.optimizer._target_=torch.optim.SGD",
        "method.optimizer.lr=choice(1e12,2e12)",
        experiment="study_diverged",
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    assert line.startswith("error: the study completed no trial: every trial failed")
    parents, jobs = by_role(finished_runs(tracking_uri, "study_diverged"))
    [parent] = parents
    assert parent.info.status == "FAILED"
    assert parent.data.tags["failure_reason"] == line.removeprefix("error: ")
    # One run per trial: each diverged on its first tuning seed, which failed the trial.
    assert len(jobs) == 2 and {r.info.status for r in jobs} == {"FAILED"}
    assert all("diverged_at_step" in r.data.metrics for r in jobs)
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parent.info.run_id}


def test_each_invocation_in_a_reused_sweep_folder_has_its_own_parent(tmp_path, tracking_uri):
    for launcher in ("basic", "joblib"):  # joblib's workers learn the parent from the launcher
        result = train(
            tmp_path,
            tracking_uri,
            "-m",
            f"hydra/launcher={launcher}",
            "seed=0,1",
            "data=digits",
            "train.epochs=1",
            experiment="sweep_reused",
        )
        assert result.returncode == 0, result.stderr
    parents, jobs = by_role(finished_runs(tracking_uri, "sweep_reused"))
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}
    assert len({p.data.tags["sweep_id"] for p in parents}) == 2
    assert len({p.data.tags["sweep_dir"] for p in parents}) == 1  # one folder, two sweeps
    children = {p.info.run_id: [] for p in parents}
    for job in jobs:
        children[job.data.tags["mlflow.parentRunId"]].append(job.data.tags["seed"])
    assert sorted(map(sorted, children.values())) == [["0", "1"], ["0", "1"]]


def test_a_job_does_not_inherit_the_thread_count_of_the_previous_one(tmp_path, tracking_uri):
    fresh = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        check=True,
    )
    result = train(
        tmp_path,
        tracking_uri,
        "-m",
        "cpu_threads=1,null",
        "data=digits",
        "train.epochs=1",
        experiment="sweep_threads",
    )
    assert result.returncode == 0, result.stderr
    _, jobs = by_role(finished_runs(tracking_uri, "sweep_threads"))
    threads = {r.data.params["cpu_threads"]: r.data.tags["torch_threads"] for r in jobs}
    # The null job runs second, in the same process, with torch's default like a fresh process.
    assert threads == {"1": "1", "None": fresh.stdout.strip()}
