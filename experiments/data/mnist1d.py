"""MNIST-1D (Greydanus 2020), generated offline by the ``mnist1d`` package.

Defaults are the package's published ones (5000 samples, 80/20 split = 4000 train / 1000
test, sequences of length 40, generation seed 42); its generator already standardises ``x``.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np

from experiments.data.base import Dataset, classification_dataset


def load_mnist1d(
    num_samples: int = 5000,
    train_split: float = 0.8,
    length: int = 40,
    generation_seed: int = 42,
) -> Dataset:
    """Generate MNIST-1D: inputs ``(n, length)`` float32, labels ``(n,)`` in ``[0, 10)``.

    Args:
        num_samples: total examples (train + test), a multiple of 10 for balanced classes.
        train_split: fraction of examples in the training split, in (0, 1).
        length: final sequence length.
        generation_seed: seed of the generator; fixes the data and the train/test split
            whatever the run's seed.

    Raises:
        ValueError: for non-positive sizes or a split outside (0, 1).
    """
    if num_samples < 10 or length < 1 or not 0.0 < train_split < 1.0:
        raise ValueError(
            f"mnist1d: need num_samples >= 10, length >= 1, 0 < train_split < 1; got "
            f"{num_samples}, {length}, {train_split}"
        )
    x, y, x_test, y_test = (
        array.copy() for array in _generate(num_samples, train_split, length, generation_seed)
    )
    return classification_dataset("mnist1d", x, y, x_test, y_test, num_classes=10)


@functools.lru_cache(maxsize=4)
def _generate(
    num_samples: int, train_split: float, length: int, generation_seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The generator's ``(x, y, x_test, y_test)``, cached per process.

    Generation takes seconds, more than training a small MLP for 20 epochs; a sweep or a tuning
    trial that runs several jobs in one process generates the (deterministic) data once.
    Callers get copies, so the cache cannot be altered.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split = num_samples, train_split
    args.final_seq_length, args.seed = length, generation_seed
    # The generator reseeds NumPy's global RNG; keep the caller's stream untouched.
    state = np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(state)
    return data["x"], data["y"], data["x_test"], data["y_test"]


def load_mnist1d_sequences(
    num_samples: int = 5000,
    train_split: float = 0.8,
    length: int = 40,
    generation_seed: int = 42,
) -> Dataset:
    """MNIST-1D read one value per time step: inputs ``(n, length, 1)`` (``data=mnist1d_seq``).

    The same examples and split as :func:`load_mnist1d`; the MNIST-1D paper's GRU reads them so.

    Raises:
        ValueError: as :func:`load_mnist1d`.
    """
    flat = load_mnist1d(num_samples, train_split, length, generation_seed)
    return replace(
        flat, name="mnist1d_seq", x_train=flat.x_train[..., None], x_test=flat.x_test[..., None]
    )
