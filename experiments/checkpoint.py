"""Checkpoints of a training job, for ``resume=`` after a kill or a preemption (docs/resume.md).

A checkpoint is one file, ``<folder>/<MLflow run id>/checkpoint.pt``, written by ``torch.save``
to a temporary name and moved into place with ``os.replace`` (a kill during the write leaves
the previous checkpoint whole). It holds only what ``torch.load(weights_only=True)`` accepts
(tensors, numbers, strings, ``None``, lists, tuples, dicts), so loading one never runs code from
the file:

* ``loop``: the training loop's state at the end of an epoch (:func:`experiments.loop.fit`):
  epoch, update count, that epoch's metrics, the model's and the method's state
  (:meth:`methods.base.Method.state_dict`), the learning-rate schedulers', the batch
  generator's, and Python's, NumPy's and torch's (CPU, and CUDA if any) random states
  (:func:`capture_rng`);
* ``run_id``: the MLflow run the job logs to, which a resumed job reopens;
* ``config``: the run's config, flattened, without the keys :data:`FREE_KEYS` (a resumed job
  must have the same config in every other key, :func:`config_difference`).
"""

from __future__ import annotations

import os
import pickle
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from experiments.errors import ConfigError
from experiments.tracking import flatten_config

CHECKPOINT_FILE = "checkpoint.pt"
# The run's tag naming its checkpoint file, so that ``resume=<run id>`` finds it.
CHECKPOINT_TAG = "checkpoint"
# Keys a resumed job may change: where and how often it checkpoints, what it resumes from, and
# where it logs (a tracking URI may come from the environment); none of them changes training.
FREE_KEYS = ("resume", "train.checkpoint_every", "train.checkpoint_dir", "mlflow.")


def capture_rng() -> dict[str, Any]:
    """Python's, NumPy's and torch's global random states, as plain data.

    NumPy's legacy state ``(name, keys, pos, has_gauss, cached_gaussian)`` keeps its 624
    ``uint32`` keys as an ``int64`` tensor (``weights_only`` refuses NumPy arrays). CUDA states
    are saved only when CUDA is in use.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set the global random states to those :func:`capture_rng` returned."""
    random.setstate(state["python"])
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (numpy["name"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def comparable_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as ``{"a.b": value}`` (resolved, no ``hydra`` node), without :data:`FREE_KEYS`."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    return {
        key: value
        for key, value in flatten_config(plain).items()
        if not any(key == free or key.startswith(free) for free in FREE_KEYS)
    }


def config_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """One line naming the first key whose value differs between two :func:`comparable_config`.

    Returns:
        ``None`` when they are equal.
    """
    unset = "<unset>"
    keys = sorted(
        k for k in set(saved) | set(current) if saved.get(k, unset) != current.get(k, unset)
    )
    if not keys:
        return None
    key = keys[0]
    more = f" (and {len(keys) - 1} more key(s))" if len(keys) > 1 else ""
    return (
        f"resume: {key} differs from the checkpoint's (checkpoint: {saved.get(key, unset)!r}, "
        f"now: {current.get(key, unset)!r}){more}; resume with the original config"
    )


def save_checkpoint(checkpoint: Mapping[str, Any], path: Path) -> None:
    """Write ``checkpoint`` to ``path`` atomically (temporary file, then ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(dict(checkpoint), partial)
    os.replace(partial, path)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``, tensors onto ``device``.

    Raises:
        ConfigError: ``resume: <path>: ...`` if the file cannot be read, is not a checkpoint,
            or holds anything but tensors and plain data (``weights_only`` refuses to build
            arbitrary objects, so a file made to run code is refused, not run).
    """
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[-1][:200]
        raise ConfigError(
            f"resume: {path}: refused, it holds more than tensors and plain data ({first})"
        ) from None
    except (OSError, RuntimeError, EOFError) as error:
        raise ConfigError(f"resume: {path}: cannot read the checkpoint ({error})") from None
    if not isinstance(checkpoint, dict) or not {"loop", "run_id", "config"} <= set(checkpoint):
        raise ConfigError(f"resume: {path}: not a checkpoint of experiments.train")
    return checkpoint


def find_matching(folder: Path, config: Mapping[str, Any]) -> Path | None:
    """The newest ``<folder>/*/checkpoint.pt`` whose config equals ``config`` (``resume=auto``).

    A requeued job has no run id to resume; its config, identical to the first attempt's,
    identifies its checkpoint among those of a sweep sharing the folder.
    """
    candidates = sorted(
        folder.glob(f"*/{CHECKPOINT_FILE}"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for path in candidates:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 (an unreadable file is simply not this job's)
            continue
        if isinstance(saved, dict) and config_difference(saved.get("config", {}), config) is None:
            return path
    return None


def checkpoint_folder(cfg: DictConfig, output_dir: str | None) -> Path:
    """The folder holding one ``<run id>/checkpoint.pt`` per run.

    ``train.checkpoint_dir``, else ``<Hydra output dir>/checkpoints`` (``./checkpoints``
    without Hydra).
    """
    if cfg.train.checkpoint_dir is not None:
        return Path(str(cfg.train.checkpoint_dir)).expanduser().resolve()
    return Path(output_dir or ".").resolve() / "checkpoints"


def check_options(cfg: DictConfig) -> None:
    """The rule the schema cannot state: only ``resume=auto`` (or null) for a tuning job.

    The types and bounds of ``resume``, ``train.checkpoint_every`` and ``train.checkpoint_dir``
    are the schema's (:mod:`experiments.schema`).

    Raises:
        ConfigError: a run id or file as ``resume`` with a tuning objective (a tuning job
            trains one run per seed: only ``auto`` applies).
    """
    if cfg.resume not in (None, "auto") and cfg.train.objective is not None:
        raise ConfigError(
            "resume: a tuning job (train.objective) trains one run per seed; use resume=auto"
        )


def resume_checkpoint(
    cfg: DictConfig, folder: Path, device: torch.device | str
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint ``resume`` names, checked against the current config, and its path.

    ``resume`` is ``null`` (start afresh: ``None``), ``auto`` (:func:`find_matching` in
    ``folder``; ``None`` if there is none), a checkpoint file, or an MLflow run id (the file in
    the run's ``checkpoint`` tag).

    Raises:
        ConfigError: one line starting ``resume:``: no such run or file, a run that never
            wrote a checkpoint, an unreadable or unsafe file (:func:`load_checkpoint`), or a
            config that differs from the checkpoint's (:func:`config_difference`).
    """
    if cfg.resume is None:
        return None
    config = comparable_config(cfg)
    target = str(cfg.resume)
    if target == "auto":
        path = find_matching(folder, config)
        if path is None:
            return None
    elif Path(target).expanduser().is_file():
        path = Path(target).expanduser().resolve()
    else:
        path = _run_checkpoint(cfg, target)
    checkpoint = load_checkpoint(path, device)
    difference = config_difference(checkpoint["config"], config)
    if difference is not None:
        raise ConfigError(difference)
    return path, checkpoint


def _run_checkpoint(cfg: DictConfig, run_id: str) -> Path:
    """The checkpoint file of MLflow run ``run_id`` (its ``checkpoint`` tag)."""
    from mlflow.exceptions import MlflowException

    from experiments.tracking import make_client

    try:
        run = make_client(cfg.mlflow.tracking_uri).get_run(run_id)
    except MlflowException:
        raise ConfigError(
            f"resume: {run_id} is neither a checkpoint file nor a run of the store "
            f"{cfg.mlflow.tracking_uri}"
        ) from None
    tagged = run.data.tags.get(CHECKPOINT_TAG)
    if tagged is None:
        raise ConfigError(
            f"resume: run {run_id} wrote no checkpoint (it ran with train.checkpoint_every=0)"
        )
    if not Path(tagged).is_file():
        raise ConfigError(
            f"resume: run {run_id}'s checkpoint {tagged} does not exist (killed before its "
            "first checkpoint, or moved: pass the file as resume=<path>)"
        )
    return Path(tagged)
