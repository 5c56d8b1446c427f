"""SLURM pre-emption of a submitit job, in process: USR2 closes the run ``KILLED`` before
submitit requeues it, the restarted job resumes the same run and ends as if never interrupted;
a job without checkpoints is not requeued. (tests/test_slurm.py does it on a real cluster.)"""

from __future__ import annotations

import os
import signal
import sys

import mlflow
import pytest

from experiments import train
from experiments.preemption import NotRequeued, Preemption, restart_resume
from experiments.train import run
from tests.test_resume import (
    SMALL_MLP,
    assert_same_state,
    histories,
    load_checkpoint,
    only_run,
    training_state,
)

pytest.importorskip("submitit", reason="submitit absent: pip install -e '.[slurm]'")

ARGS = (*SMALL_MLP, "~tuned", "train.epochs=3")


@pytest.fixture
def slurm_job(monkeypatch):
    """This process looks like a submitit SLURM job; USR2 goes to a stand-in for submitit's
    handler, which records the state of the job's runs when it is called, then exits as
    submitit does after ``scontrol requeue``."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    calls = []

    def submitit_handler(signum, frame):
        client = mlflow.MlflowClient()
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        calls.append({r.info.run_id: r.info.status for r in runs})
        sys.exit(-1)

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    yield calls
    signal.signal(signal.SIGUSR2, previous)


def signal_after_checkpoint(monkeypatch, signum, epoch):
    save = train.save_checkpoint

    def save_then_signal(checkpoint, path):
        save(checkpoint, path)
        if checkpoint["loop"]["epoch"] == epoch:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(train, "save_checkpoint", save_then_signal)
    return save


def test_usr2_closes_the_run_then_requeues_and_the_restart_resumes_it(
    slurm_job, make_config, tmp_path, monkeypatch
):
    plain_dir, job_dir = tmp_path / "plain", tmp_path / "job"
    args = (*ARGS, "train.checkpoint_every=1")
    plain = run(make_config(*args, f"train.checkpoint_dir={plain_dir}"))
    save = signal_after_checkpoint(monkeypatch, signal.SIGUSR2, epoch=1)
    with pytest.raises(SystemExit):
        run(make_config(*args, f"train.checkpoint_dir={job_dir}"))
    run_id, path = only_run(job_dir)
    # submitit was handed the signal once, after the run was closed (nothing left RUNNING).
    assert [call[run_id] for call in slurm_job] == ["KILLED"]
    client = mlflow.MlflowClient()
    assert client.get_run(run_id).data.tags["failure_reason"] == (
        "pre-empted (SIGUSR2 from SLURM: pre-emption or time limit) after the checkpoint of "
        "epoch 1: requeued, resumes from it"
    )
    assert [m.step for m in client.get_metric_history(run_id, "test_loss")] == [1]

    # SLURM restarts the job with the same overrides; it finds its checkpoint by itself.
    monkeypatch.setattr(train, "save_checkpoint", save)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    resumed = run(make_config(*args, f"train.checkpoint_dir={job_dir}"))
    assert only_run(job_dir) == (run_id, path)
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED"
    assert finished.data.tags["resumed"] == "1"
    assert "failure_reason" not in finished.data.tags
    plain_id, plain_file = only_run(plain_dir)
    assert histories(client, run_id) == histories(client, plain_id)
    assert [s for s, _ in histories(client, run_id)["test_loss"]] == [1, 2, 3]
    assert_same_state(
        training_state(load_checkpoint(plain_file)), training_state(load_checkpoint(path))
    )
    assert resumed["test_loss"] == plain["test_loss"]


def test_usr2_without_checkpoints_ends_killed_and_is_not_requeued(
    slurm_job, make_config, tmp_path, monkeypatch
):
    # No checkpoint to hook: deliver USR2 from the first epoch's metrics instead.
    log_metrics = train.RunTracker.log_metrics

    def log_then_signal(self, metrics, step):
        log_metrics(self, metrics, step)
        if step == 1 and "test_loss" in metrics:
            os.kill(os.getpid(), signal.SIGUSR2)

    monkeypatch.setattr(train.RunTracker, "log_metrics", log_then_signal)
    with pytest.raises(NotRequeued, match=r"without checkpoints .*: not requeued"):
        run(make_config(*ARGS))
    assert slurm_job == []  # submitit never saw the signal: no requeue
    client = mlflow.MlflowClient()
    [killed] = client.search_runs(
        [client.get_experiment_by_name(make_config().mlflow.experiment_name).experiment_id]
    )
    assert killed.info.status == "KILLED"
    assert killed.data.tags["failure_reason"].startswith(
        "pre-empted (SIGUSR2 from SLURM: pre-emption or time limit) without checkpoints "
        "(train.checkpoint_every=0): not requeued"
    )


def test_sigterm_in_a_checkpointed_slurm_job_still_ends_killed_unrequeued(
    slurm_job, make_config, tmp_path, monkeypatch
):
    signal_after_checkpoint(monkeypatch, signal.SIGTERM, epoch=1)
    with pytest.raises(KeyboardInterrupt):
        run(make_config(*ARGS, "train.checkpoint_every=1", f"train.checkpoint_dir={tmp_path}"))
    run_id, _ = only_run(tmp_path)
    assert slurm_job == []
    run_info = mlflow.MlflowClient().get_run(run_id)
    assert run_info.info.status == "KILLED"
    assert run_info.data.tags["failure_reason"] == "interrupted by SIGTERM"


def test_only_a_restarted_job_with_checkpoints_resumes_by_itself(monkeypatch):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert restart_resume(None, 1) is None  # first attempt: a fresh run
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert restart_resume(None, 1) == "auto"
    assert restart_resume(None, 0) is None  # no checkpoints: nothing to resume
    assert restart_resume("0123abc", 1) == "0123abc"  # an explicit resume= is kept


def test_outside_a_submitit_job_usr2_is_left_alone(monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert Preemption(checkpoint_every=1).signals() == ()
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert Preemption(checkpoint_every=1).signals() == (signal.SIGUSR2,)
