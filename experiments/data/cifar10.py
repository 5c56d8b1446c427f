"""CIFAR-10 (Krizhevsky 2009) from the official "python version" archive.

The archive ``cifar-10-python.tar.gz`` unpacks to ``cifar-10-batches-py/`` holding pickled
batches ``data_batch_1`` .. ``data_batch_5`` (training) and ``test_batch``; each is a dict with
``b"data"``, a ``(10000, 3072)`` uint8 array of channel-major 32x32 RGB images, and
``b"labels"``, a list of class indices.
"""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np

from experiments.data.base import Dataset, DataUnavailableError, classification_dataset
from experiments.data.files import default_cache_dir, describe_dirs, download_file

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
URL = f"https://www.cs.toronto.edu/~kriz/{ARCHIVE}"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled batch: images ``(n, 3, 32, 32)`` uint8 and labels ``(n,)`` int64.

    Raises:
        ValueError: if the file lacks the ``data``/``labels`` entries or has the wrong sizes.
    """
    with open(path, "rb") as stream:
        batch = pickle.load(stream, encoding="bytes")  # noqa: S301 - the official format
    try:
        data, labels = np.asarray(batch[b"data"], dtype=np.uint8), np.asarray(batch[b"labels"])
    except (KeyError, TypeError):
        raise ValueError(f"{path}: not a CIFAR-10 batch (no data/labels)") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(f"{path}: expected (n, 3072) data and n labels, got {data.shape}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _batches_dir(directory: Path) -> Path | None:
    """The extracted batches folder under ``directory`` (extracting the archive if needed)."""
    folder = directory / FOLDER
    if all((folder / name).is_file() for name in (*TRAIN_BATCHES, TEST_BATCH)):
        return folder
    archive = directory / ARCHIVE
    if archive.is_file():
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(directory, filter="data")
        return _batches_dir(directory) if folder.is_dir() else None
    return None


def load_cifar10(root: str | None = None, download: bool = True) -> Dataset:
    """CIFAR-10: 50000 train / 10000 test RGB 32x32 images in 10 classes.

    Images become float32 ``(n, 3, 32, 32)`` in [0, 1], standardised per channel with the
    training set's statistics. Looks for ``cifar-10-batches-py/`` (or the archive) in ``root``,
    then the download cache, and downloads the archive into the cache when ``download``.

    Raises:
        DataUnavailableError: when no copy is found and none can be downloaded.
    """
    cache = default_cache_dir() / "cifar10"
    dirs = [Path(d).expanduser() for d in (root, cache) if d]
    folder = next((f for f in map(_batches_dir, dirs) if f is not None), None)
    if folder is None:
        outcome = "downloading is disabled (data.download=false)"
        if download:
            try:
                download_file(URL, cache / ARCHIVE)
                folder = _batches_dir(cache)
            except OSError as error:
                outcome = f"the download from {URL} failed ({error})"
    if folder is None:
        raise DataUnavailableError(
            f"cifar10: could not find {FOLDER}/ or {ARCHIVE} in {describe_dirs(dirs)}, and "
            f"{outcome}. Fix: run once with network access, "
            f"or put {ARCHIVE} (or its extracted {FOLDER}/) into a directory and pass "
            "data.root=<that directory> (downloads go to $BACKPROP_BENCH_DATA/cifar10, default "
            "~/.cache/backprop-bench/cifar10)."
        )
    train = [read_batch(folder / name) for name in TRAIN_BATCHES]
    x_test, y_test = read_batch(folder / TEST_BATCH)
    x_train = np.concatenate([x for x, _ in train]).astype(np.float32) / 255.0
    y_train = np.concatenate([y for _, y in train])
    x_test = x_test.astype(np.float32) / 255.0
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True)
    return classification_dataset(
        "cifar10", (x_train - mean) / std, y_train, (x_test - mean) / std, y_test, num_classes=10
    )
