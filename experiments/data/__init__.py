"""Datasets: one loader module each, selected by ``data=<name>`` (``conf/data/<name>.yaml``).

Each config names its loader with ``_target_``; a new dataset plugs in with one module and one
config file. Loaders return a :class:`Dataset` with its fixed train/test split; the loop then
carves the validation split (:func:`carve_validation`) and shuffles with the run's seed.
"""

from experiments.data.base import (
    Dataset,
    DataUnavailableError,
    carve_validation,
    classification_dataset,
    minibatches,
)

__all__ = [
    "DataUnavailableError",
    "Dataset",
    "carve_validation",
    "classification_dataset",
    "minibatches",
]
