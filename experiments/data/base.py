"""The in-memory dataset container, the validation split and seeded minibatching.

All datasets here fit in memory (the largest, CIFAR-10, is 600 MB as float32), so they are held
as tensors on the training device: minibatching is then an index into a tensor, with no
DataLoader worker overhead, and identical for every method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch


class DataUnavailableError(RuntimeError):
    """A dataset's files are not on this machine and could not be downloaded."""


@dataclass(frozen=True)
class Dataset:
    """Train / validation / test tensors of one task.

    Attributes:
        name: dataset name, as in ``conf/data/<name>.yaml``.
        task: ``"classification"`` (targets ``(n,)`` int64 class indices) or ``"regression"``
            (targets ``(n, outputs)`` float32).
        num_outputs: number of classes or of regression outputs.
        x_train: ``(n_train, *input_shape)`` float32.
        y_train: training targets.
        x_test: ``(n_test, *input_shape)`` float32.
        y_test: test targets.
        x_val: ``(n_val, *input_shape)`` validation inputs carved from the training set, or
            ``None`` when no validation split was requested.
        y_val: validation targets or ``None``.
        tolerance: for regression, the squared error under which an example counts as solved;
            the loss then reports ``accuracy`` = fraction solved (e.g. 0.04 for the adding
            problem). ``None``: no accuracy for regression.
        train_transform: applied by the loop to every training batch, ``transform(x,
            generator) -> x`` with the run's seeded generator (augmentation, e.g.
            :class:`experiments.data.augment.RandomCropFlip`); never to evaluation or the
            diagnostics' probe. ``None``: no augmentation.
    """

    name: str
    task: str
    num_outputs: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    tolerance: float | None = None
    train_transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        for split in ("train", "test", "val"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x is not None and (y is None or len(x) != len(y)):
                raise ValueError(f"{self.name}: x_{split} and y_{split} differ in length")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train and test inputs differ in shape")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(40,)`` for MNIST-1D or ``(3, 32, 32)`` for CIFAR-10."""
        return tuple(self.x_train.shape[1:])

    @property
    def input_size(self) -> int:
        """Number of input features, ``prod(input_shape)``."""
        return int(np.prod(self.input_shape))

    def to(self, device: torch.device | str) -> Dataset:
        """Copy of this dataset with every tensor moved to ``device``."""
        moved = {
            field: getattr(self, field).to(device)
            for field in ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val")
            if getattr(self, field) is not None
        }
        return replace(self, **moved)


def classification_dataset(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
) -> Dataset:
    """Wrap NumPy arrays as a classification :class:`Dataset` (float32 inputs, int64 labels).

    Raises:
        ValueError: if a label lies outside ``[0, num_classes)``.
    """
    for labels in (y_train, y_test):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name}: labels must lie in [0, {num_classes})")
    return Dataset(
        name=name,
        task="classification",
        num_outputs=num_classes,
        x_train=torch.as_tensor(np.ascontiguousarray(x_train), dtype=torch.float32),
        y_train=torch.tensor(y_train, dtype=torch.int64),
        x_test=torch.as_tensor(np.ascontiguousarray(x_test), dtype=torch.float32),
        y_test=torch.tensor(y_test, dtype=torch.int64),
    )


def first_examples(
    name: str, x: np.ndarray, y: np.ndarray, num_train: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``num_train`` training examples (all when ``None``), for short runs.

    Raises:
        ValueError: naming ``data.num_train`` unless it lies in ``[1, len(x)]``.
    """
    if num_train is None:
        return x, y
    is_int = isinstance(num_train, int) and not isinstance(num_train, bool)
    if not is_int or not 1 <= num_train <= len(x):
        raise ValueError(
            f"data.num_train: must be null or an integer in [1, {len(x)}] ({name}'s training "
            f"examples), got {num_train!r}"
        )
    return x[:num_train], y[:num_train]


def standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shift and scale both splits by the training set's scalar mean and std (no test leakage)."""
    mean, std = float(x_train.mean()), float(x_train.std())
    return (x_train - mean) / std, (x_test - mean) / std


def carve_validation(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """Move a random ``fraction`` of the training set into a validation split.

    The split depends only on ``seed`` (``data.split_seed``), never on the run's seed, so every
    method and every seed tunes on the same validation examples; the test set is untouched.

    Args:
        dataset: a dataset without a validation split.
        fraction: in ``[0, 1)``; ``0`` returns ``dataset`` unchanged.
        seed: seed of the split.

    Raises:
        ValueError: if ``fraction`` is outside ``[0, 1)`` or leaves either split empty.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"data.val_fraction: must lie in [0, 1), got {fraction}")
    if fraction == 0.0:
        return dataset
    n = len(dataset.x_train)
    n_val = int(round(fraction * n))
    if n_val < 1 or n_val >= n:
        raise ValueError(f"data.val_fraction: {fraction} of {n} training examples is empty")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = order[:n_val], order[n_val:]
    return replace(
        dataset,
        x_train=dataset.x_train[train],
        y_train=dataset.y_train[train],
        x_val=dataset.x_train[val],
        y_val=dataset.y_train[val],
    )


def minibatches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x_batch, y_batch)`` pairs covering ``x``, shuffled when ``generator`` is given.

    Args:
        x: ``(n, *shape)``.
        y: ``(n, ...)``.
        batch_size: rows per batch (>= 1); the last batch may be smaller unless ``drop_last``.
        generator: a seeded CPU generator for the permutation; ``None`` keeps the order.
        drop_last: drop a final partial batch.
    """
    n = len(x)
    order = torch.randperm(n, generator=generator) if generator is not None else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            index = order[start : start + batch_size].to(x.device)
            yield x[index], y[index]
