"""Datasets: real offline data, tiny IDX/CIFAR files written here, splits and batching."""

import pickle

import numpy as np
import pytest
import torch

from experiments.data import DataUnavailableError, carve_validation, minibatches
from experiments.data.cifar10 import FOLDER, TEST_BATCH, TRAIN_BATCHES, load_cifar10
from experiments.data.digits import load_digits
from experiments.data.idx import (
    IDX_FILES,
    load_fashion_mnist,
    load_mnist,
    read_idx,
    write_idx,
)
from experiments.data.mnist1d import load_mnist1d


def test_mnist1d_published_defaults():
    data = load_mnist1d()
    assert data.x_train.shape == (4000, 40) and data.x_test.shape == (1000, 40)
    assert data.num_outputs == 10 and data.task == "classification"
    assert set(data.y_train.unique().tolist()) == set(range(10))
    # The generator standardises the whole set: mean 0, std 1 up to the split.
    full = torch.cat([data.x_train, data.x_test])
    assert abs(full.mean().item()) < 1e-4 and abs(full.std().item() - 1) < 1e-3


def test_mnist1d_is_deterministic_and_leaves_numpy_rng_alone():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    a = load_mnist1d(num_samples=200)
    assert np.random.rand() == expected
    b = load_mnist1d(num_samples=200)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)


def test_digits_fixed_split():
    data = load_digits()
    assert data.x_train.shape == (1437, 64) and data.x_test.shape == (360, 64)
    again = load_digits()
    assert torch.equal(data.x_test, again.x_test)
    assert abs(data.x_train.mean().item()) < 1e-5  # standardised on the training split


def test_data_split_seed_reaches_a_loader_that_takes_it(make_config):
    """digits' train/test split follows data.split_seed (the harness key the loader also takes)."""
    from experiments.train import load_data

    zero = load_data(make_config("data=digits"))
    one = load_data(make_config("data=digits", "data.split_seed=1"))
    assert torch.equal(zero.x_test, load_digits(split_seed=0).x_test)
    assert torch.equal(one.x_test, load_digits(split_seed=1).x_test)
    assert not torch.equal(zero.x_test, one.x_test)


def write_tiny_idx(directory, n_train=12, n_test=5, compress=False):
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    arrays = {
        IDX_FILES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        IDX_FILES[1]: np.arange(n_train, dtype=np.uint8) % 10,
        IDX_FILES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        IDX_FILES[3]: (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(directory / f"{name}{suffix}", array)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    write_idx(path, array)
    np.testing.assert_array_equal(read_idx(path), array)


def test_idx_rejects_garbage(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="bad magic number"):
        read_idx(path)
    write_idx(path, np.zeros((2, 2), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="header says shape"):
        read_idx(path)


@pytest.mark.parametrize("loader", [load_mnist, load_fashion_mnist])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_datasets_from_configured_directory(tmp_path, loader, compress):
    arrays = write_tiny_idx(tmp_path / "files", compress=compress)
    data = loader(root=str(tmp_path / "files"), download=False)
    assert data.x_train.shape == (12, 1, 28, 28) and data.x_test.shape == (5, 1, 28, 28)
    assert data.y_test.tolist() == arrays[IDX_FILES[3]].tolist()
    assert data.input_size == 784
    # Standardised with the training split's statistics.
    assert abs(data.x_train.mean().item()) < 1e-5
    raw = arrays[IDX_FILES[2]].astype(np.float64) / 255
    train = arrays[IDX_FILES[0]].astype(np.float64) / 255
    expected = (raw - train.mean()) / train.std()
    np.testing.assert_allclose(data.x_test[:, 0].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_mnist_offline_without_files_gives_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataUnavailableError) as info:
        load_mnist(root=str(tmp_path / "empty"), download=False)
    message = str(info.value)
    assert "mnist: could not find train-images-idx3-ubyte" in message
    assert f"data.root={tmp_path / 'empty'}" in message and "Fix:" in message
    assert "\n" not in message


@pytest.mark.parametrize("loader", [load_mnist, load_fashion_mnist, load_cifar10])
def test_a_data_root_that_does_not_exist_is_an_error_naming_it(tmp_path, loader):
    with pytest.raises(DataUnavailableError) as info:
        loader(root=str(tmp_path / "nowhere"), download=True)
    assert str(info.value).startswith(
        f"data.root: {tmp_path / 'nowhere'} is not an existing folder"
    )


def test_a_data_root_never_falls_back_to_another_copy(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("BACKPROP_BENCH_DATA", str(cache))
    write_tiny_idx(cache / "mnist")
    assert len(load_mnist(root=None, download=False).x_train) == 12  # the cache works
    (tmp_path / "root").mkdir()
    with pytest.raises(DataUnavailableError, match=f"in data.root={tmp_path / 'root'}, and"):
        load_mnist(root=str(tmp_path / "root"), download=False)
    write_tiny_cifar(cache / "cifar10")
    assert len(load_cifar10(root=None, download=False).x_train) == 20
    with pytest.raises(DataUnavailableError, match=f"in data.root={tmp_path / 'root'}, and"):
        load_cifar10(root=str(tmp_path / "root"), download=False)


@pytest.mark.parametrize("damage", ["truncated", "not_gzip"])
def test_a_damaged_idx_file_names_the_file_and_the_fix(tmp_path, damage):
    write_tiny_idx(tmp_path, compress=True)
    path = tmp_path / f"{IDX_FILES[0]}.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncated" else b"garbage" * 10)
    with pytest.raises(DataUnavailableError) as info:
        load_mnist(root=str(tmp_path), download=False)
    message = str(info.value)
    assert message.startswith(f"mnist: {path} is corrupt or truncated (")
    assert "Fix: delete it and run again" in message and "\n" not in message


def gzip_bytes(array):
    import gzip
    import io
    import struct

    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as stream:
        stream.write(header + array.astype(np.uint8).tobytes())
    return buffer.getvalue()


def test_downloads_are_checked_against_the_published_md5(tmp_path, monkeypatch):
    import hashlib
    import io

    cache = tmp_path / "cache"
    monkeypatch.setenv("BACKPROP_BENCH_DATA", str(cache))
    rng = np.random.default_rng(0)
    arrays = {
        IDX_FILES[0]: rng.integers(0, 256, (3, 28, 28)),
        IDX_FILES[1]: np.arange(3),
        IDX_FILES[2]: rng.integers(0, 256, (2, 28, 28)),
        IDX_FILES[3]: np.arange(2),
    }
    served = {f"{name}.gz": gzip_bytes(array) for name, array in arrays.items()}
    urls = []

    def serve(url, timeout):
        urls.append(url)
        return io.BytesIO(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr("urllib.request.urlopen", serve)
    # What the server sends is not the published file: refused, nothing kept.
    with pytest.raises(DataUnavailableError, match="MD5 .* is not the published f68b3c2d"):
        load_mnist(root=None, download=True)
    assert not list((cache / "mnist").glob("*"))
    assert urls[0].startswith("https://")
    # With these files' own checksums published, the download is used ...
    published = {name: hashlib.md5(data).hexdigest() for name, data in served.items()}
    monkeypatch.setattr("experiments.data.idx.MNIST_MD5", published)
    assert len(load_mnist(root=None, download=True).x_train) == 3
    # ... and a cached file that changed afterwards is refused with the fix.
    cached = cache / "mnist" / f"{IDX_FILES[2]}.gz"
    cached.write_bytes(cached.read_bytes()[:-5])
    with pytest.raises(DataUnavailableError, match=f"{cached}: MD5 .*Fix: delete it"):
        load_mnist(root=None, download=False)


def test_fashion_mnist_downloads_over_https():
    from experiments.data.cifar10 import URL
    from experiments.data.idx import FASHION_MNIST_URL, MNIST_URL

    assert all(url.startswith("https://") for url in (FASHION_MNIST_URL, MNIST_URL, URL))


def test_plain_http_downloads_are_refused(tmp_path):
    from experiments.data.files import download_file

    with pytest.raises(OSError, match="unencrypted"):
        download_file("http://example.org/a.gz", tmp_path / "a.gz")
    assert not (tmp_path / "a.gz").exists()


def test_fashion_mnist_error_names_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr("experiments.data.idx.DEBIAN_FASHION_MNIST", tmp_path / "debian")
    with pytest.raises(DataUnavailableError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(root=None, download=False)


def test_failed_download_is_reported(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("urllib.request.urlopen", refuse)
    with pytest.raises(DataUnavailableError, match="download from .* failed .*unreachable"):
        load_mnist(root=None, download=True)


def write_tiny_cifar(directory, per_batch=4):
    folder = directory / FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i, name in enumerate((*TRAIN_BATCHES, TEST_BATCH)):
        batch = {
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"labels": [(i + j) % 10 for j in range(per_batch)],
        }
        with open(folder / name, "wb") as stream:
            pickle.dump(batch, stream)
    return folder


def test_cifar10_from_tiny_batches(tmp_path):
    write_tiny_cifar(tmp_path)
    data = load_cifar10(root=str(tmp_path), download=False)
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    assert data.y_test.tolist() == [5, 6, 7, 8]
    per_channel = data.x_train.mean(dim=(0, 2, 3))
    torch.testing.assert_close(per_channel, torch.zeros(3), atol=1e-5, rtol=0)


def test_cifar10_from_archive(tmp_path):
    import tarfile

    folder = write_tiny_cifar(tmp_path / "build")
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname=FOLDER)
    assert len(load_cifar10(root=str(root), download=False).x_train) == 20


class Planted:
    """An object whose unpickling would create a file: what a malicious batch could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_cifar_batch_that_asks_to_run_code_is_refused(tmp_path):
    folder = write_tiny_cifar(tmp_path)
    marker = tmp_path / "pwned"
    with open(folder / TRAIN_BATCHES[2], "wb") as stream:
        pickle.dump({b"data": Planted(marker), b"labels": [0]}, stream)
    with pytest.raises(DataUnavailableError) as info:
        load_cifar10(root=str(tmp_path), download=False)
    assert not marker.exists()
    message = str(info.value)
    assert message.startswith(f"cifar10: {folder / TRAIN_BATCHES[2]} is corrupt or truncated")
    assert "refused to load " in message and ".open: a CIFAR-10 batch holds only arrays" in message


def test_a_cached_cifar_archive_that_is_not_the_official_one_is_refused(tmp_path, monkeypatch):
    import tarfile

    monkeypatch.setenv("BACKPROP_BENCH_DATA", str(tmp_path / "cache"))
    folder = write_tiny_cifar(tmp_path / "build")
    (tmp_path / "cache" / "cifar10").mkdir(parents=True)
    archive = tmp_path / "cache" / "cifar10" / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=FOLDER)
    with pytest.raises(DataUnavailableError, match="is not the published c58f3010"):
        load_cifar10(root=None, download=False)
    assert not (archive.parent / FOLDER).exists()  # never unpacked


def test_a_truncated_cifar_archive_names_the_file_and_the_fix(tmp_path):
    import tarfile

    folder = write_tiny_cifar(tmp_path / "build")
    (tmp_path / "root").mkdir()
    archive = tmp_path / "root" / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=FOLDER)
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DataUnavailableError, match=f"cifar10: {archive} is corrupt .*Fix: delete"):
        load_cifar10(root=str(tmp_path / "root"), download=False)


def test_cifar10_offline_error(tmp_path):
    with pytest.raises(DataUnavailableError, match="cifar10: could not find .*data.root="):
        load_cifar10(root=str(tmp_path), download=False)


def test_validation_split_is_carved_from_train_only():
    data = load_digits()
    split = carve_validation(data, 0.25, seed=0)
    assert len(split.x_val) == round(0.25 * 1437) and len(split.x_train) == 1437 - len(split.x_val)
    assert torch.equal(split.x_test, data.x_test)
    rows = {tuple(r) for r in data.x_train.tolist()}
    assert all(tuple(r) in rows for r in split.x_val.tolist())
    # Same seed, same split; the run's seed plays no part.
    assert torch.equal(carve_validation(data, 0.25, seed=0).x_val, split.x_val)
    assert not torch.equal(carve_validation(data, 0.25, seed=1).x_val, split.x_val)
    with pytest.raises(ValueError, match="data.val_fraction"):
        carve_validation(data, 1.0, seed=0)


def test_minibatches_cover_data_and_shuffle_by_seed():
    x = torch.arange(10).float()[:, None]
    y = torch.arange(10)
    batches = list(minibatches(x, y, 4, torch.Generator().manual_seed(0)))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    order = torch.cat([b[1] for b in batches])
    assert sorted(order.tolist()) == list(range(10)) and order.tolist() != list(range(10))
    again = torch.cat([b[1] for b in minibatches(x, y, 4, torch.Generator().manual_seed(0))])
    other = torch.cat([b[1] for b in minibatches(x, y, 4, torch.Generator().manual_seed(1))])
    assert torch.equal(order, again) and not torch.equal(order, other)
    assert torch.equal(torch.cat([b[0] for b in batches])[:, 0].long(), order)
    assert len(list(minibatches(x, y, 4, drop_last=True))) == 2
