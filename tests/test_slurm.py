"""Sweeps through Hydra's submitit launcher on a real (single-node) SLURM cluster.

Every job tracks to the MLflow server on PostgreSQL; skipped when SLURM or PostgreSQL is absent
(tests/services.py).
"""

import subprocess
import sys
import time

import mlflow
import pytest

from experiments.train import run
from tests.test_cli import subprocess_env
from tests.test_resume import (
    assert_same_state,
    histories,
    load_checkpoint,
    only_run,
    training_state,
)
from tests.test_sweeps import by_role, finished_runs, wait_for_a_logged_epoch

pytestmark = pytest.mark.integration

# One CPU and 1 GB per job: the test cluster is this machine.
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=local",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=20",
]


def sweep(tmp_path, uri, slurm, experiment, *overrides, **popen):
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        "-m",
        *SLURM,
        "data=digits",
        *overrides,
        f"mlflow.experiment_name={experiment}",
        f"hydra.sweep.dir={tmp_path}/sweep",
    ]
    env = {**subprocess_env(uri), **slurm}
    if popen:
        return subprocess.Popen(command, cwd=tmp_path, env=env, **popen)
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )


def test_four_job_sweep_on_slurm_finishes_under_one_parent(tmp_path, server_uri, slurm_env):
    result = sweep(tmp_path, server_uri, slurm_env, "slurm_sweep", "train.epochs=1", "seed=0,1,2,3")
    assert result.returncode == 0, result.stderr[-3000:]
    parents, jobs = by_role(finished_runs(server_uri, "slurm_sweep"))
    assert sorted(int(r.data.tags["seed"]) for r in jobs) == [0, 1, 2, 3]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {r.info.status for r in jobs} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parents[0].info.run_id}
    # Each job ran as its own SLURM job (submitit's folder per array task) and SLURM says so.
    accounted = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobID,State,WorkDir", "-S", "now-1hour"],
        env={**subprocess_env(server_uri), **slurm_env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    ours = [line.split("|") for line in accounted if line.endswith(f"|{tmp_path}")]
    assert len(ours) == 4 and {state for _, state, _ in ours} == {"COMPLETED"}


def slurm_job_id(env, tmp_path):
    """The id of the one queued or running SLURM job whose working directory is ``tmp_path``."""
    queued = subprocess.run(
        ["squeue", "-h", "-o", "%i|%Z"], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    [job_id] = [line.split("|")[0] for line in queued if line.endswith(f"|{tmp_path}")]
    return job_id


def attempts(env, job_id, timeout=60):
    """SLURM's accounting of every attempt of a job (``sacct -D``): their states, in order.

    Waits until the last attempt is over: submitit returns a job's result as soon as its result
    file exists, possibly before slurmdbd has recorded the job's end.
    """
    deadline = time.monotonic() + timeout
    while True:
        states = subprocess.run(
            ["sacct", "-X", "-D", "-n", "-P", "-o", "State", "-j", job_id],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if states and states[-1] not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED"):
            return states
        if time.monotonic() > deadline:
            return states
        time.sleep(1)


def wait_for(condition, process, what, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the sweep exited with status {process.returncode} before {what}")
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"no {what} within {timeout} s")


# Tiny and slow enough per epoch (batch 2: about 2.5 s an epoch here) that the job is still
# training when the test has seen the first checkpoint and signalled it.
PREEMPTED = (
    "seed=0",
    "~tuned",
    "model.hidden_sizes=[16]",
    "train.batch_size=2",
    "train.epochs=3",
    "train.checkpoint_every=1",
)


def test_a_preempted_checkpointed_job_is_requeued_and_resumes_its_run(
    tmp_path, server_uri, slurm_env, make_config, tracking_uri
):
    """USR2 to the job's steps: what SLURM sends before the time limit (submitit submits with
    --signal=USR2@<s>) and at pre-emption (with SchedulerParameters=preempt_send_user_signal)."""
    env = {**subprocess_env(server_uri), **slurm_env}
    process = sweep(
        tmp_path,
        server_uri,
        slurm_env,
        "slurm_preempt",
        *PREEMPTED,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        folder = tmp_path / "sweep" / "0" / "checkpoints"  # the job's Hydra output folder
        wait_for(lambda: list(folder.glob("*/checkpoint.pt")), process, "first checkpoint")
        job_id = slurm_job_id(env, tmp_path)
        subprocess.run(["scancel", "--signal=USR2", job_id], env=env, check=True)
        # The same job trained without interruption, here, while SLURM requeues the other.
        plain_dir = tmp_path / "plain"
        run(make_config("data=digits", *PREEMPTED, f"train.checkpoint_dir={plain_dir}"))
        _, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-3000:]
    assert attempts(env, job_id) == ["REQUEUED", "COMPLETED"]  # requeued once
    parents, [job] = by_role(finished_runs(server_uri, "slurm_preempt"))
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert job.info.status == "FINISHED", job.data.tags
    assert job.data.tags["resumed"] == "1" and "failure_reason" not in job.data.tags
    run_id, path = only_run(folder)
    assert run_id == job.info.run_id  # resumed into the run of the first attempt
    resumed = histories(mlflow.MlflowClient(server_uri), run_id)
    assert [step for step, _ in resumed["test_loss"]] == [1, 2, 3]  # every epoch once
    plain_id, plain_file = only_run(plain_dir)
    assert resumed == histories(mlflow.MlflowClient(tracking_uri), plain_id)
    assert_same_state(
        training_state(load_checkpoint(plain_file)), training_state(load_checkpoint(path))
    )


def scancel_a_training_job(tmp_path, server_uri, slurm_env, experiment, *scancel, timeout):
    """Launch a 1-job sweep that would train for 1000 epochs, ``scancel *scancel <job>`` once
    an epoch is logged, and wait for the sweep to end.

    Returns ``(process, stderr, job_id, env)``: the launching process (ended), its stderr, the
    SLURM job id and the environment that reaches the cluster.
    """
    env = {**subprocess_env(server_uri), **slurm_env}
    process = sweep(
        tmp_path,
        server_uri,
        slurm_env,
        experiment,
        "train.epochs=1000",
        "seed=0",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_a_logged_epoch(process, server_uri, experiment, timeout=300)
        job_id = slurm_job_id(env, tmp_path)
        subprocess.run(["scancel", *scancel, job_id], env=env, check=True)
        _, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    return process, stderr, job_id, env


def test_a_preempted_job_without_checkpoints_ends_killed_not_requeued(
    tmp_path, server_uri, slurm_env
):
    process, stderr, job_id, env = scancel_a_training_job(
        tmp_path, server_uri, slurm_env, "slurm_preempt_bare", "--signal=USR2", timeout=300
    )
    assert process.returncode != 0
    assert "not requeued" in stderr, stderr[-3000:]
    parents, [job] = by_role(finished_runs(server_uri, "slurm_preempt_bare"))
    assert job.info.status == "KILLED"
    assert job.data.tags["failure_reason"].startswith(
        "pre-empted (SIGUSR2 from SLURM: pre-emption or time limit) without checkpoints"
    )
    assert [p.info.status for p in parents] == ["FAILED"]
    # One attempt, never requeued. The job's error goes back to the launching shell inside
    # Hydra's job result, so the job itself ends normally for SLURM.
    assert attempts(env, job_id) == ["COMPLETED"]


def test_a_scancelled_job_ends_killed(tmp_path, server_uri, slurm_env):
    # submitit learns of the cancellation through sacct, then the sweep stops.
    process, stderr, job_id, env = scancel_a_training_job(
        tmp_path, server_uri, slurm_env, "slurm_cancel", timeout=180
    )
    assert process.returncode != 0
    parents, [job] = by_role(finished_runs(server_uri, "slurm_cancel"))
    assert job.info.status == "KILLED", job.data.tags
    assert job.data.tags["failure_reason"] == "interrupted by SIGTERM"
    assert [p.info.status for p in parents] in (["FAILED"], ["KILLED"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if state and state[0] != "RUNNING":
            break
        time.sleep(1)
    assert state[0].startswith("CANCELLED"), state
