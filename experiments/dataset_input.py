"""The dataset a job trains on, as an MLflow dataset input (the UI's "Datasets" column).

MLflow's own ``from_numpy`` / ``from_pandas`` would profile and hash through a copy of the whole
data; a job needs only its name, where it came from, the split sizes and a digest that changes
exactly when the arrays change. :func:`training_input` builds that as a
:class:`mlflow.data.meta_dataset.MetaDataset` (nothing but metadata is stored).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from experiments.data import Dataset

# The input tag MLflow's UI shows next to a dataset (``mlflow.data.context``).
CONTEXT = "training"
SPLITS = ("train", "val", "test")
DIGEST_LENGTH = 10  # MLflow recommends at most 10 characters


def dataset_digest(dataset: Dataset) -> str:
    """Hash of every array of ``dataset``: the first 10 hex digits of a SHA-256.

    Covers, for each split (train, val, test) that exists, the inputs and targets: their dtype,
    shape and bytes, so a change to one value, to the split or to the shapes changes it; the
    name and task do not enter. Reads the arrays once (about 1 s per GB on one core).

    Args:
        dataset: a dataset on any device (copied to the CPU split by split).
    """
    digest = hashlib.sha256()
    for split in SPLITS:
        for prefix in ("x", "y"):
            tensor = getattr(dataset, f"{prefix}_{split}")
            if tensor is None:
                continue
            array = np.ascontiguousarray(tensor.detach().to("cpu", copy=False).numpy())
            header = f"{prefix}_{split}:{array.dtype.str}:{array.shape};"
            digest.update(header.encode())
            digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:DIGEST_LENGTH]


def split_sizes(dataset: Dataset) -> dict[str, int]:
    """``{"train": n, "val": n, "test": n}`` examples per split (0 for a missing split)."""
    sizes = {}
    for split in SPLITS:
        tensor = getattr(dataset, f"x_{split}")
        sizes[split] = 0 if tensor is None else len(tensor)
    return sizes


def _profile(dataset: Dataset) -> dict[str, Any]:
    return {
        **split_sizes(dataset),
        "input_shape": list(dataset.input_shape),
        "task": dataset.task,
        "outputs": dataset.num_outputs,
    }


def training_input(dataset: Dataset, source: Mapping[str, Any]) -> Any:
    """The MLflow dataset describing ``dataset``, to log with the context :data:`CONTEXT`.

    Args:
        dataset: the data a job trains on, after its validation split was carved.
        source: how it was made, e.g. the resolved ``data`` config (loader ``_target_``,
            generation seed, split seed, ...): stored as the dataset's ``code`` source.

    Returns:
        A :class:`mlflow.data.meta_dataset.MetaDataset` named ``dataset.name`` with the digest
        :func:`dataset_digest` and the profile ``{"train", "val", "test", "input_shape",
        "task", "outputs"}`` (split sizes in examples).
    """
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    class SplitDataset(MetaDataset):
        # MetaDataset has no profile; the split sizes are the profile the UI shows.
        def __init__(self, profile: dict[str, Any], **kwargs: Any) -> None:
            self._profile = profile
            super().__init__(**kwargs)

        @property
        def profile(self) -> dict[str, Any]:
            return self._profile

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(self._profile)}

    # Only metadata is kept: the arrays can be freed (or moved to a GPU) once this is built.
    return SplitDataset(
        _profile(dataset),
        source=CodeDatasetSource(tags=dict(source)),
        name=dataset.name,
        digest=dataset_digest(dataset),
    )


def dataset_input(dataset: Any) -> Any:
    """``dataset`` (from :func:`training_input`) as the ``mlflow.entities.DatasetInput`` to log."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    return DatasetInput(
        dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, CONTEXT)]
    )
