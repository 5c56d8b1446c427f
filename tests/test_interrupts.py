"""Ctrl-C and SIGTERM wait for MLflow writes to end (experiments/interrupts.py)."""

import os
import signal
import time

import mlflow
import pytest

from experiments.interrupts import deliver_interrupts, held_interrupts
from experiments.tracking import RunTracker


def send(signum):
    os.kill(os.getpid(), signum)
    time.sleep(0.05)  # the handler runs in this thread at the next bytecode boundary


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_outside_a_write_raises_at_once(signum):
    with deliver_interrupts(), pytest.raises(KeyboardInterrupt, match=f"signal {signum}$"):
        send(signum)
        pytest.fail("not interrupted")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_during_a_write_waits_for_its_end(signum):
    done = []
    with deliver_interrupts(), pytest.raises(KeyboardInterrupt, match="held"):
        with held_interrupts():
            with held_interrupts():
                send(signum)
                done.append("inner")
            done.append("outer")  # nested: held until the outermost block ends
        pytest.fail("not interrupted after the write")
    assert done == ["inner", "outer"]


def test_handlers_are_restored_and_nothing_is_held_without_delivery():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with deliver_interrupts():
        pass
    assert {s: signal.getsignal(s) for s in before} == before
    # Python's own handler, set here: a shell that starts pytest in the background has SIGINT
    # ignored, and Python then keeps it ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with held_interrupts(), pytest.raises(KeyboardInterrupt):
            send(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_inside_a_metric_write_keeps_the_metric_and_kills_the_run(make_config):
    cfg = make_config()
    with (
        deliver_interrupts(),
        pytest.raises(KeyboardInterrupt),
        RunTracker(cfg, {"method": "backprop"}, {}) as tracker,
    ):
        write = tracker.client.log_batch

        def interrupted_write(*args, **kwargs):
            send(signal.SIGINT)  # arrives mid-write
            return write(*args, **kwargs)

        tracker.client.log_batch = interrupted_write
        tracker.log_metrics({"test_loss": 1.5}, step=1)
        pytest.fail("not interrupted after the write")
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "KILLED"
    assert [m.value for m in client.get_metric_history(tracker.run_id, "test_loss")] == [1.5]
