"""IDX files (LeCun's MNIST format) and the MNIST and Fashion-MNIST datasets stored in it.

IDX layout: a 4-byte magic ``0x00 0x00 <type> <ndim>`` (type ``0x08`` = unsigned byte), then
``ndim`` big-endian uint32 dimension sizes, then the row-major data.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from experiments.data.base import (
    Dataset,
    classification_dataset,
    first_examples,
    standardize,
)
from experiments.data.files import default_cache_dir, locate_files, unreadable

UBYTE = 0x08
TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
IDX_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
# The authors' repository (their S3 mirror serves plain http only).
FASHION_MNIST_URL = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
)
# Published MD5 of the .gz files: MNIST as listed by torchvision's MNIST dataset, Fashion-MNIST
# in the README of zalandoresearch/fashion-mnist.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an unsigned-byte IDX file (plain or ``.gz``) into a ``uint8`` array of its shape.

    Raises:
        ValueError: if the magic number, type or length does not match an IDX ubyte file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        raw = stream.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != UBYTE:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} bytes")
    return data.reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a ``uint8`` array as an IDX file (gzip-compressed when ``path`` ends in ``.gz``)."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as stream:
        stream.write(header + array.tobytes())


def load_idx_dataset(name: str, files: dict[str, Path], num_train: int | None = None) -> Dataset:
    """Build a 10-class dataset from the four IDX files.

    Images ``(n, 28, 28)`` become float32 images ``(n, 1, 28, 28)`` (``model=cnn`` reads them
    as such; the MLP flattens them to 784 features), scaled to [0, 1] and standardised with the
    training set's mean and std. With ``num_train``, only the first ``num_train`` training
    examples are kept (before standardising; the test set is whole).

    Raises:
        DataUnavailableError: naming the file and the fix, if one cannot be read (truncated,
            corrupt, not IDX).
        ValueError: if image and label counts disagree.
    """
    arrays = {}
    for key, path in files.items():
        try:
            arrays[key] = read_idx(path)
        except (ValueError, OSError, EOFError, zlib.error) as error:  # gzip errors included
            raise unreadable(name, Path(path), error) from None
    x_train, x_test = (
        arrays[key].astype(np.float32)[:, None] / 255.0 for key in (TRAIN_IMAGES, TEST_IMAGES)
    )
    for images, labels in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        if len(arrays[images]) != len(arrays[labels]):
            raise ValueError(f"{name}: {images} and {labels} hold different numbers of examples")
    x_train, y_train = first_examples(name, x_train, arrays[TRAIN_LABELS], num_train)
    x_train, x_test = standardize(x_train, x_test)
    return classification_dataset(
        name, x_train, y_train, x_test, arrays[TEST_LABELS], num_classes=10
    )


def load_fashion_mnist(
    root: str | None = None, download: bool = True, num_train: int | None = None
) -> Dataset:
    """Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 60000 train / 10000 test, 28x28, 10 classes.

    Reads ``root`` only when it is set (downloading into it when ``download``); otherwise
    Debian's ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``), then
    the download cache (:func:`default_cache_dir`), downloading into the cache when
    ``download`` is true. Downloads are checked against the published MD5 checksums.
    ``num_train``: keep the first that many training examples (all when ``None``).

    Raises:
        DataUnavailableError: when ``root`` is not a folder, when no copy is found and none can
            be downloaded, or when a file is corrupt, truncated or fails its checksum.
    """
    files = locate_files(
        "fashion_mnist",
        IDX_FILES,
        root,
        [DEBIAN_FASHION_MNIST, default_cache_dir() / "fashion_mnist"],
        FASHION_MNIST_URL,
        download,
        fix_hint="`apt-get install dataset-fashion-mnist`, or copy the four IDX files into a "
        "directory and pass data.root=<that directory>.",
        checksums=FASHION_MNIST_MD5,
    )
    return load_idx_dataset("fashion_mnist", files, num_train)


def load_mnist(
    root: str | None = None, download: bool = True, num_train: int | None = None
) -> Dataset:
    """MNIST (LeCun et al. 1998): 60000 train / 10000 test, 28x28, 10 classes.

    Reads ``root`` only when it is set (downloading into it when ``download``); otherwise the
    download cache, downloading into it when ``download``. Downloads are checked against the
    published MD5 checksums. ``num_train``: keep the first that many training examples (all
    when ``None``).

    Raises:
        DataUnavailableError: when ``root`` is not a folder, when no copy is found and none can
            be downloaded, or when a file is corrupt, truncated or fails its checksum.
    """
    files = locate_files(
        "mnist",
        IDX_FILES,
        root,
        [default_cache_dir() / "mnist"],
        MNIST_URL,
        download,
        fix_hint="run once with network access, or copy the four IDX files into a directory "
        "and pass data.root=<that directory> (downloads go to $BACKPROP_BENCH_DATA/mnist, "
        "default ~/.cache/backprop-bench/mnist).",
        checksums=MNIST_MD5,
    )
    return load_idx_dataset("mnist", files, num_train)
