"""The copy-memory task (Hochreiter & Schmidhuber 1997; the form of Arjovsky et al. 2016).

Each input has ``2 S + T`` steps, one-hot over ``num_symbols + 2`` tokens (0 blank, 1..A data
symbols, A + 1 the delimiter): ``S`` random data symbols, ``T - 1`` blanks, the delimiter, then
``S`` blanks during which the network must output the ``S`` symbols in order. So the symbols must
be remembered across a delay of ``T`` steps. Targets are ``(n, 2 S + T)`` class indices; only the
last ``S`` steps are scored (the others are ``IGNORE``, skipped by the loss and the accuracy), so
``test_accuracy`` is the fraction of symbols recalled and chance is ``1 / A``.
"""

from __future__ import annotations

import numpy as np
import torch

from experiments.data.base import Dataset
from methods.losses import IGNORE_INDEX


def make_copy_sequences(
    count: int, delay: int, num_symbols: int, sequence_length: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``(count, 2S + T, A + 2)`` float one-hot and targets ``(count, 2S + T)`` int64.

    Raises:
        ValueError: for ``delay < 1``, ``num_symbols < 2`` or ``sequence_length < 1``.
    """
    if delay < 1 or num_symbols < 2 or sequence_length < 1:
        raise ValueError(
            f"copy: need length >= 1, num_symbols >= 2, sequence_length >= 1; got {delay}, "
            f"{num_symbols}, {sequence_length}"
        )
    s, total = sequence_length, 2 * sequence_length + delay
    symbols = rng.integers(1, num_symbols + 1, size=(count, s))
    tokens = np.zeros((count, total), dtype=np.int64)
    tokens[:, :s] = symbols
    tokens[:, s + delay - 1] = num_symbols + 1  # the delimiter: "recall now"
    targets = np.full((count, total), IGNORE_INDEX, dtype=np.int64)
    targets[:, -s:] = symbols
    inputs = np.eye(num_symbols + 2, dtype=np.float32)[tokens]
    return inputs, targets


def load_copy(
    length: int = 20,
    num_symbols: int = 8,
    sequence_length: int = 10,
    num_train: int = 10_000,
    num_test: int = 1_000,
    generation_seed: int = 0,
) -> Dataset:
    """The copy-memory task with delay ``length`` (``data=copy``); targets need per-step outputs.

    Train and test sets come from independent streams of one seed.

    Raises:
        ValueError: for bad sizes.
    """
    if num_train < 1 or num_test < 1:
        raise ValueError("data.num_train and data.num_test must be >= 1")
    train_rng, test_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(generation_seed).spawn(2)
    )
    x_train, y_train = make_copy_sequences(
        num_train, length, num_symbols, sequence_length, train_rng
    )
    x_test, y_test = make_copy_sequences(num_test, length, num_symbols, sequence_length, test_rng)
    return Dataset(
        name="copy",
        task="classification",
        # Outputs cover every token, so blank and delimiter are predictable classes too.
        num_outputs=num_symbols + 2,
        x_train=torch.as_tensor(x_train),
        y_train=torch.as_tensor(y_train),
        x_test=torch.as_tensor(x_test),
        y_test=torch.as_tensor(y_test),
    )
