"""CIFAR-10 (Krizhevsky 2009) from the official "python version" archive.

The archive ``cifar-10-python.tar.gz`` unpacks to ``cifar-10-batches-py/`` holding pickled
batches ``data_batch_1`` .. ``data_batch_5`` (training) and ``test_batch``; each is a dict with
``b"data"``, a ``(10000, 3072)`` uint8 array of channel-major 32x32 RGB images, and
``b"labels"``, a list of class indices.

Batches are unpickled by :class:`BatchUnpickler`, which builds only NumPy arrays, dicts, lists,
bytes and numbers: a file that asks for anything else (e.g. a function call planted in a
pickle) is refused, never run. The archive is checked against its published MD5 when it is
downloaded and before it is unpacked from the download cache.
"""

from __future__ import annotations

import pickle
import tarfile
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from experiments.data.augment import RandomCropFlip
from experiments.data.base import (
    Dataset,
    DataUnavailableError,
    classification_dataset,
    first_examples,
)
from experiments.data.files import (
    check_root,
    default_cache_dir,
    describe_dirs,
    download_file,
    unreadable,
    verify_checksum,
)

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
URL = f"https://www.cs.toronto.edu/~kriz/{ARCHIVE}"
# Published on https://www.cs.toronto.edu/~kriz/cifar.html (and in torchvision's CIFAR10).
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


class BatchUnpickler(pickle.Unpickler):
    """Unpickle a CIFAR-10 batch, refusing every global but NumPy's array builders.

    The official batches (pickled by Python 2, read with ``encoding="bytes"``) and batches
    pickled by current NumPy need only the names in :attr:`ALLOWED`.
    """

    ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        """The allowed global ``module.name``.

        Raises:
            pickle.UnpicklingError: for any other global.
        """
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: a CIFAR-10 batch holds only arrays, lists, "
                "dicts and bytes"
            )
        return super().find_class(module, name)


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled batch: images ``(n, 3, 32, 32)`` uint8 and labels ``(n,)`` int64.

    Raises:
        pickle.UnpicklingError: for a file that is not a plain pickle of arrays (see
            :class:`BatchUnpickler`) or is truncated.
        ValueError: if the file lacks the ``data``/``labels`` entries or has the wrong sizes.
    """
    with open(path, "rb") as stream:
        batch = BatchUnpickler(stream, encoding="bytes").load()
    try:
        data, labels = np.asarray(batch[b"data"], dtype=np.uint8), np.asarray(batch[b"labels"])
    except (KeyError, TypeError):
        raise ValueError(f"{path}: not a CIFAR-10 batch (no data/labels)") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(f"{path}: expected (n, 3072) data and n labels, got {data.shape}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _batches_dir(directory: Path, verify: bool = False) -> Path | None:
    """The extracted batches folder under ``directory`` (extracting the archive if needed).

    With ``verify``, the archive must match :data:`ARCHIVE_MD5` before it is unpacked.
    """
    folder = directory / FOLDER
    if all((folder / name).is_file() for name in (*TRAIN_BATCHES, TEST_BATCH)):
        return folder
    archive = directory / ARCHIVE
    if archive.is_file():
        if verify:
            verify_checksum(archive, ARCHIVE_MD5, URL)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(directory, filter="data")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            raise unreadable("cifar10", archive, error) from None
        return _batches_dir(directory) if folder.is_dir() else None
    return None


def load_cifar10(
    root: str | None = None,
    download: bool = True,
    num_train: int | None = None,
    augment: bool = False,
) -> Dataset:
    """CIFAR-10: 50000 train / 10000 test RGB 32x32 images in 10 classes.

    Images become float32 ``(n, 3, 32, 32)`` in [0, 1], standardised per channel with the
    training set's statistics. Looks for ``cifar-10-batches-py/`` (or the archive) in ``root``
    only when it is set, else in the download cache; downloads the archive there when
    ``download`` (checked against its published MD5 before it is unpacked).

    Args:
        root: ``data.root``, or ``None`` for the download cache.
        download: whether a missing archive may be downloaded.
        num_train: keep the first that many training examples (all when ``None``).
        augment: random crops (padding 4) and horizontal flips of every training batch
            (:class:`~experiments.data.augment.RandomCropFlip`, seeded by the run).

    Raises:
        DataUnavailableError: when ``root`` is not a folder, when no copy is found and none can
            be downloaded, or when a file is corrupt, truncated, fails its checksum or is not a
            plain pickle of arrays.
    """
    root_dir = check_root("cifar10", root)
    directory = root_dir or default_cache_dir() / "cifar10"
    folder = _batches_dir(directory, verify=root_dir is None)
    if folder is None:
        outcome = "downloading is disabled (data.download=false)"
        if download:
            try:
                download_file(URL, directory / ARCHIVE, ARCHIVE_MD5)
                folder = _batches_dir(directory)
            except OSError as error:
                outcome = f"the download from {URL} failed ({error})"
    if folder is None:
        where = f"data.root={root_dir}" if root_dir else describe_dirs([directory])
        raise DataUnavailableError(
            f"cifar10: could not find {FOLDER}/ or {ARCHIVE} in {where}, and "
            f"{outcome}. Fix: run once with network access, "
            f"or put {ARCHIVE} (or its extracted {FOLDER}/) into a directory and pass "
            "data.root=<that directory> (downloads go to $BACKPROP_BENCH_DATA/cifar10, default "
            "~/.cache/backprop-bench/cifar10)."
        )
    batches = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        try:
            batches[name] = read_batch(folder / name)
        except Exception as error:  # whatever the file holds, the message names it
            raise unreadable("cifar10", folder / name, error) from None
    train = [batches[name] for name in TRAIN_BATCHES]
    x_test, y_test = batches[TEST_BATCH]
    x_train, y_train = first_examples(
        "cifar10",
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        num_train,
    )
    x_train = x_train.astype(np.float32) / 255.0
    x_test = x_test.astype(np.float32) / 255.0
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True)
    dataset = classification_dataset(
        "cifar10", (x_train - mean) / std, y_train, (x_test - mean) / std, y_test, num_classes=10
    )
    return replace(dataset, train_transform=RandomCropFlip(padding=4)) if augment else dataset
