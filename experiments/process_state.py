"""Process-wide settings that one training job must not leak into the next.

A sequential multirun (Hydra's basic launcher, or a joblib worker that runs several jobs) runs
its jobs in one process, and torch keeps some settings per process: a job with
``cpu_threads=1`` would leave the next job (``cpu_threads=null``: torch's default) on one
thread, and ``deterministic=true`` would make every later job deterministic. So every job
starts from the same state: the first call of :func:`restore_baseline` in a process (or
:func:`capture_baseline`, called when a sweep starts) records the state of :data:`SETTINGS`,
the random number generators and the environment variables in :data:`ENVIRONMENT`; every later
call puts them back.

Not covered: ``torch.set_num_interop_threads`` (torch allows it once per process, and the
harness never calls it) and anything a method sets outside these settings.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits


def _set_deterministic(value: tuple[bool, bool]) -> None:
    torch.use_deterministic_algorithms(value[0], warn_only=value[1])


def _set_anomaly(value: tuple[bool, bool]) -> None:
    torch.autograd.set_detect_anomaly(value[0], check_nan=value[1])


def _setting(module: Any, name: str) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    return (lambda: getattr(module, name)), (lambda value: setattr(module, name, value))


def blas_threads() -> int | None:
    """Threads of NumPy's BLAS (the most over its BLAS libraries), ``None`` without one loaded.

    ``torch.set_num_threads`` does not reach it: without a limit of its own, NumPy work
    (``method=numpy_backprop``) uses every core whatever ``cpu_threads`` says.
    """
    counts = [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]
    return max(counts) if counts else None


def set_blas_threads(threads: int | None) -> None:
    """Limit NumPy's BLAS to ``threads`` threads (``threadpoolctl``); ``None`` does nothing."""
    if threads is not None:
        threadpool_limits(limits=threads, user_api="blas")


# name -> (read, write). Reads return plain values that compare with ``==``.
SETTINGS: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {
    "num_threads": (torch.get_num_threads, torch.set_num_threads),
    "blas_threads": (blas_threads, set_blas_threads),
    "deterministic_algorithms": (
        lambda: (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        ),
        _set_deterministic,
    ),
    "cudnn.enabled": _setting(torch.backends.cudnn, "enabled"),
    "cudnn.benchmark": _setting(torch.backends.cudnn, "benchmark"),
    "cudnn.deterministic": _setting(torch.backends.cudnn, "deterministic"),
    "default_dtype": (torch.get_default_dtype, torch.set_default_dtype),
    "default_device": (lambda: str(torch.get_default_device()), torch.set_default_device),
    "anomaly_detection": (
        lambda: (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()),
        _set_anomaly,
    ),
    "grad_enabled": (torch.is_grad_enabled, torch.set_grad_enabled),
}
# TF32 / reduced precision of float32 work. torch >= 2.9 has one attribute per backend and
# refuses to read the legacy settings once both kinds were written, so only the new ones are
# read (and written) where they exist.
if hasattr(torch.backends, "fp32_precision"):
    for _module, _name in [
        (torch.backends, "fp32_precision"),
        (torch.backends.cuda.matmul, "cuda.matmul.fp32_precision"),
        (torch.backends.cudnn, "cudnn.fp32_precision"),
        (torch.backends.cudnn.conv, "cudnn.conv.fp32_precision"),
        (torch.backends.cudnn.rnn, "cudnn.rnn.fp32_precision"),
        (torch.backends.mkldnn, "mkldnn.fp32_precision"),
        (torch.backends.mkldnn.matmul, "mkldnn.matmul.fp32_precision"),
        (torch.backends.mkldnn.conv, "mkldnn.conv.fp32_precision"),
        (torch.backends.mkldnn.rnn, "mkldnn.rnn.fp32_precision"),
    ]:
        SETTINGS[_name] = _setting(_module, "fp32_precision")
else:  # pragma: no cover - torch < 2.9
    SETTINGS["float32_matmul_precision"] = (
        torch.get_float32_matmul_precision,
        torch.set_float32_matmul_precision,
    )
    SETTINGS["cudnn.allow_tf32"] = _setting(torch.backends.cudnn, "allow_tf32")
    SETTINGS["cuda.matmul.allow_tf32"] = _setting(torch.backends.cuda.matmul, "allow_tf32")
# Environment variables the harness sets for a job (``seed_everything`` with deterministic).
ENVIRONMENT = ("CUBLAS_WORKSPACE_CONFIG",)

_baseline: dict[str, Any] = {}


def snapshot() -> dict[str, Any]:
    """The current value of every :data:`SETTINGS` entry, RNG state and :data:`ENVIRONMENT` key.

    Returns:
        ``{name: value}``; RNG states under ``rng.python``, ``rng.numpy``, ``rng.torch`` and
        ``rng.cuda`` (``None`` while CUDA is not initialised), variables under ``env.<name>``
        (``None`` when unset).
    """
    state = {name: read() for name, (read, _) in SETTINGS.items()}
    state["rng.python"] = random.getstate()
    state["rng.numpy"] = np.random.get_state()
    state["rng.torch"] = torch.get_rng_state()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    state["rng.cuda"] = torch.cuda.get_rng_state_all() if cuda else None
    state.update({f"env.{name}": os.environ.get(name) for name in ENVIRONMENT})
    return state


def apply(state: dict[str, Any]) -> None:
    """Put back a :func:`snapshot` (settings that already match are left alone)."""
    for name, (read, write) in SETTINGS.items():
        if read() != state[name]:
            write(state[name])
    random.setstate(state["rng.python"])
    np.random.set_state(state["rng.numpy"])
    torch.set_rng_state(state["rng.torch"])
    if state["rng.cuda"] is not None:
        torch.cuda.set_rng_state_all(state["rng.cuda"])
    for name in ENVIRONMENT:
        value = state[f"env.{name}"]
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def capture_baseline() -> None:
    """Record the current state as the one every later job of this process starts from."""
    _baseline.clear()
    _baseline.update(snapshot())


def restore_baseline() -> None:
    """Start a job from the baseline state: record it on the first call, restore it after."""
    if not _baseline:
        capture_baseline()
    else:
        apply(_baseline)
