"""The config checks that are not a schema: the device, and a ``tuned=`` choice.

Everything else (keys, types, bounds, choices, the protocol's cross-field rules) is the typed
schema's: :mod:`experiments.schema`. Every error is a :class:`ConfigError` whose message starts
with the offending key; the entry point prints it as one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from experiments.errors import ConfigError

__all__ = ["ConfigError", "DEVICES", "check_tuned_choice", "resolve_device"]

DEVICES = ("auto", "cpu", "cuda")


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
