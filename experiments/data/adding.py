"""The adding problem (Hochreiter & Schmidhuber 1997), in the form of Pascanu et al. 2013.

Each sequence has ``length`` steps of two channels: a value drawn from U(0, 1) and a marker
that is 1 at exactly two steps, the first in ``[0, length/10)``, the second in
``[length/10, length/2)``. The target is the mean of the two marked values (as in Pascanu,
Mikolov & Bengio's code), so predicting the constant 0.5 gives an MSE of about 1/24 ~ 0.042; a
test sequence counts as solved when its squared error is below 0.04.
"""

from __future__ import annotations

import numpy as np
import torch

from experiments.data.base import Dataset

TOLERANCE = 0.04


def make_adding_sequences(
    count: int, length: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``count`` sequences: inputs ``(count, length, 2)``, targets ``(count, 1)``.

    Raises:
        ValueError: if ``length < 10`` (no room for the two marker ranges).
    """
    if length < 10:
        raise ValueError(f"data.length: the adding problem needs length >= 10, got {length}")
    values = rng.uniform(0.0, 1.0, size=(count, length))
    first = rng.integers(0, length // 10, size=count)
    second = rng.integers(length // 10, length // 2, size=count)
    markers = np.zeros((count, length))
    rows = np.arange(count)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = (values[rows, first] + values[rows, second]) / 2.0
    return np.stack([values, markers], axis=-1), targets[:, None]


def load_adding(
    length: int = 50, num_train: int = 10_000, num_test: int = 1_000, generation_seed: int = 0
) -> Dataset:
    """The adding problem as a regression dataset (``data=adding``).

    Train and test sets come from independent streams of one seed, so they are fixed by
    ``generation_seed`` and share no sequence (values are continuous).

    Raises:
        ValueError: for ``length < 10`` or non-positive set sizes.
    """
    if num_train < 1 or num_test < 1:
        raise ValueError("data.num_train and data.num_test must be >= 1")
    train_rng, test_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(generation_seed).spawn(2)
    )
    x_train, y_train = make_adding_sequences(num_train, length, train_rng)
    x_test, y_test = make_adding_sequences(num_test, length, test_rng)
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return Dataset(
        name="adding",
        task="regression",
        num_outputs=1,
        x_train=as_tensor(x_train),
        y_train=as_tensor(y_train),
        x_test=as_tensor(x_test),
        y_test=as_tensor(y_test),
        tolerance=TOLERANCE,
    )
