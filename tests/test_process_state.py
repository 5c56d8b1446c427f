"""Every job of a process starts from the same process-wide settings (experiments/process_state)."""

import os
import random

import numpy as np
import pytest
import torch

from experiments import process_state
from experiments.process_state import capture_baseline, restore_baseline, snapshot
from experiments.train import run
from methods import register_method
from methods.backprop import Backprop


def same(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture
def baseline():
    """A baseline of this test's own; the session's is put back afterwards."""
    saved = dict(process_state._baseline)
    capture_baseline()
    own = snapshot()
    yield own
    process_state.apply(own)
    process_state._baseline.clear()
    process_state._baseline.update(saved)


def test_every_setting_rng_and_variable_is_put_back(baseline):
    torch.set_num_threads(1 if torch.get_num_threads() != 1 else 2)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic = not torch.backends.cudnn.deterministic
    new_precision_api = "fp32_precision" in process_state.SETTINGS  # torch >= 2.9
    if new_precision_api:
        torch.backends.fp32_precision = "tf32"
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
    else:
        torch.set_float32_matmul_precision("medium")
    torch.set_default_dtype(torch.float64)
    torch.autograd.set_detect_anomaly(True, check_nan=False)
    torch.set_grad_enabled(False)
    random.random(), np.random.rand(), torch.rand(1)
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"
    changed = snapshot()
    differ = {k for k in baseline if not same(baseline[k], changed[k])}
    precision = (
        ["fp32_precision", "cuda.matmul.fp32_precision", "cudnn.conv.fp32_precision"]
        if new_precision_api
        else ["float32_matmul_precision"]
    )
    assert differ >= {
        "num_threads",
        "deterministic_algorithms",
        "cudnn.benchmark",
        "cudnn.deterministic",
        *precision,
        "default_dtype",
        "anomaly_detection",
        "grad_enabled",
        "rng.python",
        "rng.numpy",
        "rng.torch",
    }
    assert changed["env.CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    restore_baseline()
    restored = snapshot()
    assert [k for k in baseline if not same(baseline[k], restored[k])] == []


@register_method("test_records_process_state")
class RecordsProcessState(Backprop):
    """Backprop that records the process state it was built in."""

    seen: list = []

    def __init__(self, model, loss, optimizer):
        super().__init__(model, loss, optimizer)
        RecordsProcessState.seen.append(
            (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
        )


def test_a_job_starts_from_the_baseline_not_from_the_previous_job(baseline, make_config):
    run(make_config("data=digits", "train.epochs=1", "cpu_threads=1", "deterministic=true"))
    assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    run(
        make_config(
            "data=digits",
            "train.epochs=1",
            "cpu_threads=null",
            "deterministic=false",
            "method.name=test_records_process_state",
            "~tuned",
        )
    )
    assert RecordsProcessState.seen == [
        (baseline["num_threads"], baseline["deterministic_algorithms"][0])
    ]


def test_cpu_threads_also_limits_numpys_blas(baseline, make_config):
    """torch's thread setting does not reach NumPy's BLAS: the job limits it too, and the next
    job gets the baseline back."""
    if (process_state.blas_threads() or 0) < 2:
        pytest.skip("needs a NumPy BLAS that runs 2 or more threads")
    run(make_config("data=digits", "train.epochs=1", "cpu_threads=1"))
    assert process_state.blas_threads() == 1
    restore_baseline()
    assert process_state.blas_threads() == baseline["blas_threads"] >= 2
