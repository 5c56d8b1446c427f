"""scikit-learn's 8x8 handwritten digits (UCI optical recognition, 1797 images, 10 classes)."""

from __future__ import annotations

from experiments.data.base import Dataset, classification_dataset, standardize


def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """Load the digits: inputs ``(n, 64)`` float32 standardised, labels ``(n,)``.

    The train/test split is stratified and fixed by ``split_seed`` (not the run's seed), so
    every run sees the same test set: 1437 train / 360 test with the defaults.

    Raises:
        ValueError: if ``test_fraction`` is outside (0, 1).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"data.test_fraction: must lie in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    x, y = sklearn_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=split_seed, stratify=y
    )
    x_train, x_test = standardize(x_train, x_test)
    return classification_dataset("digits", x_train, y_train, x_test, y_test, num_classes=10)
