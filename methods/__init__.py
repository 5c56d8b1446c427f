"""Learning rules, one module each, selected by name through :mod:`methods.base`'s registry.

Importing this package imports every module in it, so a new method registers itself simply by
existing: add ``methods/<name>.py`` with a ``@register_method("<name>")`` class and
``conf/method/<name>.yaml`` with ``name: <name>``; nothing else changes.

Beside the rules it holds what they share: the networks (:mod:`methods.networks`), the task
losses (:mod:`methods.losses`) and the geometry of update directions (:mod:`methods.geometry`).
The package is a torch-only library: it imports nothing from ``experiments`` or ``analysis``,
nor Hydra or MLflow; the harness imports it, never the reverse.
"""

import importlib
import pkgutil

from methods.base import (
    EpochMeans,
    Method,
    MethodConfigError,
    available_methods,
    build_method,
    check_method_options,
    get_method_class,
    make_optimizer,
    register_method,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "EpochMeans",
    "Method",
    "MethodConfigError",
    "available_methods",
    "build_method",
    "check_method_options",
    "get_method_class",
    "make_optimizer",
    "register_method",
]
