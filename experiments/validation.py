"""Early configuration checks: a bad config fails before any data is loaded or run is created.

Every error is a :class:`ConfigError` whose message starts with the offending key, e.g.
``train.batch_size: must be an integer >= 1, got 0``; the entry point prints it as one line.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from experiments.errors import ConfigError
from methods import MethodConfigError, available_methods, check_method_options

DEVICES = ("auto", "cpu", "cuda")
LR_SCHEDULES = ("none", "step", "cosine")
# Seeds from here on are for tuning only; evaluation seeds (a comparison's ``seed=0,1,...``)
# stay below, so a study never selects hyperparameters on the seeds it is judged on.
FIRST_TUNING_SEED = 1000
# Keys the harness itself reads; anything else there is a typo (e.g. +train.epoch=3). Method,
# model and data keys are checked by the method's signature and the builders.
KNOWN_KEYS = {
    "": {
        "seed",
        "device",
        "deterministic",
        "cpu_threads",
        "train",
        "mlflow",
        "method",
        "model",
        "data",
        "diagnostics",
        "tuned",
    },
    "train": {
        "epochs",
        "batch_size",
        "eval_batch_size",
        "lr_schedule",
        "lr_step_epochs",
        "lr_step_factor",
        "objective",
        "objective_seeds",
    },
    "diagnostics": {"every_steps", "probe_size"},
    "mlflow": {"tracking_uri", "experiment_name", "run_name"},
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _walk(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(dotted key, value)`` for every leaf of a nested dict/list container."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{prefix}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{prefix}[{index}]")
    else:
        yield prefix, node


def _check_optimizer_values(method: dict[str, Any]) -> None:
    """Learning rates > 0, weight decay >= 0 and momentum in [0, 1] anywhere under ``method``."""
    for key, value in _walk(method, "method"):
        leaf = key.rsplit(".", 1)[-1]
        if leaf in ("lr", "weight_decay", "momentum") and not (
            _is_number(value) and math.isfinite(value)
        ):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        if leaf == "lr" and value <= 0:
            raise ConfigError(f"{key}: learning rate must be > 0, got {value!r}")
        if leaf == "weight_decay" and value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value!r}")
        if leaf == "momentum" and not 0 <= value <= 1:
            raise ConfigError(f"{key}: must lie in [0, 1], got {value!r}")


def resolve_device(name: str) -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a device.

    Raises:
        ConfigError: for an unknown name, or CUDA requested on a machine without it.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ConfigError(f"device: must be one of {', '.join(DEVICES)} or cuda:N, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available; use device=auto")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"device: {error}") from None


def _get(plain: dict[str, Any], key: str, default: Any = None) -> Any:
    node: Any = plain
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _require_int(plain: dict[str, Any], key: str, minimum: int) -> None:
    value = _get(plain, key)
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"{key}: must be an integer >= {minimum}, got {value!r}")


def check_tuned_choice(choices: Mapping[str, str | None], tuned_dir: Path) -> None:
    """A ``tuned=<name>`` override must name a file in ``tuned_dir`` (``conf/tuned/``).

    The automatic choice, ``<method>_<model>_<data>``, may have no file (the group is optional); any
    other choice was typed on purpose, and a typo must not silently run without tuned values.

    Args:
        choices: Hydra's group choices (``hydra.runtime.choices``).
        tuned_dir: the folder of the tuned-defaults files.

    Raises:
        ConfigError: naming the files that exist.
    """
    choice = choices.get("tuned")
    automatic = f"{choices.get('method')}_{choices.get('model')}_{choices.get('data')}"
    if choice is None or choice == automatic or (tuned_dir / f"{choice}.yaml").is_file():
        return
    available = ", ".join(sorted(p.stem for p in tuned_dir.glob("*.yaml"))) or "none"
    raise ConfigError(
        f"tuned: no tuned defaults named {choice!r} (conf/tuned/ has: {available}); the file "
        f"of the chosen method, model and data ({automatic}) applies by itself, '~tuned' opts out"
    )


def _check_tuned(tuned: Any, method: str, model: Any, data: Any) -> None:
    """Tuned defaults (``conf/tuned/<method>_<model>_<data>.yaml``) fit only their own triple."""
    if tuned is None:
        return
    if not isinstance(tuned, dict) or not {"method", "model", "data"} <= tuned.keys():
        raise ConfigError(
            f"tuned: must be null or a block with method, model and data, got {tuned!r}"
        )
    if (tuned["method"], tuned["model"], tuned["data"]) != (method, model, data):
        raise ConfigError(
            f"tuned: {tuned.get('name')} holds the tuned defaults of method={tuned['method']} "
            f"model={tuned['model']} data={tuned['data']}, not of method={method} model={model} "
            f"data={data}; drop the tuned= override (the matching file is picked automatically) "
            "or opt out with ~tuned"
        )


def _check_train(plain: dict[str, Any]) -> None:
    """The shared schedule and the tuning objective's seeds."""
    schedule = _get(plain, "train.lr_schedule")
    if schedule not in LR_SCHEDULES:
        raise ConfigError(
            f"train.lr_schedule: must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}"
        )
    _require_int(plain, "train.lr_step_epochs", 1)
    factor = _get(plain, "train.lr_step_factor")
    if not (_is_number(factor) and 0 < factor <= 1):
        raise ConfigError(f"train.lr_step_factor: must lie in (0, 1], got {factor!r}")
    seeds = _get(plain, "train.objective_seeds")
    if _get(plain, "train.objective") is None:
        return
    if not (
        isinstance(seeds, list)
        and seeds
        and all(_is_int(s) and s >= FIRST_TUNING_SEED for s in seeds)
    ):
        raise ConfigError(
            f"train.objective_seeds: must be a non-empty list of tuning seeds >= "
            f"{FIRST_TUNING_SEED} (evaluation seeds stay below), got {seeds!r}"
        )
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"train.objective_seeds: seeds must differ, got {seeds!r}")


def validate_config(cfg: DictConfig) -> None:
    """Check a composed run config before anything is built.

    Raises:
        ConfigError: on a missing mandatory value (``???``), a broken interpolation, a missing
            group, an unknown method or method option, or an out-of-range value; the message
            starts with the key.
    """
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))
    if missing:
        raise ConfigError(f"{missing[0]}: missing mandatory value (set it with {missing[0]}=...)")
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{getattr(error, 'full_key', None) or 'config'}: {error}") from None
    plain.pop("hydra", None)
    for group, known in KNOWN_KEYS.items():
        node = plain if not group else plain.get(group, {})
        for key in node if isinstance(node, dict) else ():
            if key not in known:
                where = f"{group}.{key}" if group else key
                raise ConfigError(
                    f"{where}: unknown key; {group or 'the top level'} has only: "
                    f"{', '.join(sorted(known))}"
                )
    for group in ("method", "model", "data", "train", "mlflow", "diagnostics"):
        if not isinstance(plain.get(group), dict):
            raise ConfigError(f"{group}: missing config group (choose one with {group}=...)")
    _require_int(plain, "seed", 0)
    if plain.get("cpu_threads") is not None:
        _require_int(plain, "cpu_threads", 1)
    resolve_device(str(plain.get("device")))
    for key in (
        "train.epochs",
        "train.batch_size",
        "train.eval_batch_size",
        "diagnostics.probe_size",
    ):
        _require_int(plain, key, 1)
    _require_int(plain, "diagnostics.every_steps", 0)
    hidden = _get(plain, "model.hidden_sizes")
    # A conv net (it has conv blocks, model.channels) may go straight to its output layer.
    conv = "channels" in plain["model"]
    if "hidden_sizes" in plain["model"] and not (
        isinstance(hidden, list) and (hidden or conv) and all(_is_int(h) and h >= 1 for h in hidden)
    ):
        raise ConfigError(
            f"model.hidden_sizes: must be a {'' if conv else 'non-empty '}list of positive "
            f"integers, got {hidden!r}"
        )
    fraction = _get(plain, "data.val_fraction", 0.0)
    if not _is_number(fraction) or not 0.0 <= fraction < 1.0:
        raise ConfigError(f"data.val_fraction: must lie in [0, 1), got {fraction!r}")
    objective = _get(plain, "train.objective")
    if objective is not None:
        if not (isinstance(objective, str) and objective.startswith("val_")):
            raise ConfigError(
                f"train.objective: must be a validation metric (val_...), got {objective!r}: "
                "tuning on the test set would make the comparison worthless"
            )
        if fraction == 0.0:
            raise ConfigError("train.objective: needs a validation split (data.val_fraction > 0)")
    _check_train(plain)
    if not _get(plain, "mlflow.experiment_name"):
        raise ConfigError("mlflow.experiment_name: must be a non-empty string")
    method = dict(plain["method"])
    name = method.pop("name", None)
    if not name:
        raise ConfigError("method.name: missing (every conf/method/*.yaml sets it)")
    if name in available_methods():  # else check_method_options names the unknown method
        _check_tuned(
            plain.get("tuned"), name, plain["model"].get("name"), plain["data"].get("name")
        )
    try:
        check_method_options(name, method)
    except MethodConfigError as error:
        raise ConfigError(str(error)) from None
    _check_optimizer_values(method)
