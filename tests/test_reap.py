"""kill -9 leaves a run RUNNING; ``python -m experiments.reap`` closes it (issue 13)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from analysis import summary
from experiments.tracking import make_client, process_tags
from tests.test_cli import REPO_ROOT, subprocess_env, train

pytestmark = pytest.mark.slow


def wait_for_an_epoch(process, client, experiment, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the training process exited early"
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id]) if found else []
        if runs and client.get_metric_history(runs[0].info.run_id, "test_loss"):
            return runs[0]
        time.sleep(0.5)
    pytest.fail(f"no epoch logged within {timeout} s")


def test_a_run_killed_with_sigkill_is_reaped_and_a_live_one_left_alone(
    tmp_path, tracking_uri, capsys
):
    experiment = "reap"
    client = make_client(tracking_uri)  # the store is created under its lock
    client.search_experiments()
    process = train(
        tmp_path,
        tracking_uri,
        "data=digits",
        "train.epochs=100000",
        experiment=experiment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        killed = wait_for_an_epoch(process, client, experiment)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    assert killed.data.tags["pid"] == str(process.pid)
    assert killed.data.tags["host"] == process_tags()["host"]
    experiment_id = killed.info.experiment_id
    # A run of a live process (this one), one whose pid was reused by another process (this
    # one, started at another time), and one of another machine.
    mine = process_tags()
    live = client.create_run(experiment_id, tags={"role": "job", **mine}).info.run_id
    reused = client.create_run(
        experiment_id, tags={"role": "job", **mine, "pid_start": "1"}
    ).info.run_id
    remote = client.create_run(
        experiment_id, tags={"role": "job", **mine, "host": "elsewhere"}
    ).info.run_id
    # Before reaping, the summary counts the killed run as unfinished, not finished or failed.
    summary.main([experiment, "--tracking-uri", tracking_uri])
    table = capsys.readouterr().out
    assert "unfinished" in table.splitlines()[0]

    result = subprocess.run(
        [sys.executable, "-m", "experiments.reap", experiment],
        cwd=REPO_ROOT,
        env=subprocess_env(tracking_uri),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    host = mine["host"]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    reason = f"process {process.pid} on {host} is gone (reaped)"
    assert lines[killed.info.run_id] == f"reaped: {reason}"
    assert lines[reused] == f"reaped: process {os.getpid()} on {host} is gone (reaped)"
    assert lines[live] == f"left alone: process {os.getpid()} is alive"
    assert lines[remote].startswith("left alone: runs on elsewhere")
    after = client.get_run(killed.info.run_id)
    assert after.info.status == "KILLED" and after.data.tags["failure_reason"] == reason
    assert client.get_metric_history(killed.info.run_id, "test_loss")  # its epochs are kept
    assert client.get_run(live).info.status == "RUNNING"
    assert client.get_run(remote).info.status == "RUNNING"
    assert client.get_run(reused).info.status == "KILLED"
