"""Sweeps through Hydra's submitit launcher on a real (single-node) SLURM cluster.

Every job tracks to the MLflow server on PostgreSQL; skipped when SLURM or PostgreSQL is absent
(tests/services.py).
"""

import subprocess
import sys
import time

import pytest

from tests.test_cli import subprocess_env
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


def test_a_scancelled_job_ends_killed(tmp_path, server_uri, slurm_env):
    env = {**subprocess_env(server_uri), **slurm_env}
    process = sweep(
        tmp_path,
        server_uri,
        slurm_env,
        "slurm_cancel",
        "train.epochs=1000",
        "seed=0",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_a_logged_epoch(process, server_uri, "slurm_cancel", timeout=300)
        queued = subprocess.run(
            ["squeue", "-h", "-o", "%i|%Z"], env=env, capture_output=True, text=True, check=True
        ).stdout.splitlines()
        [job_id] = [line.split("|")[0] for line in queued if line.endswith(f"|{tmp_path}")]
        subprocess.run(["scancel", job_id], env=env, check=True)
        # submitit learns of the cancellation through sacct, then the sweep stops.
        _, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
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
