"""The bundled real MNIST, its checks, and the binarisation/dequantisation noise."""

from __future__ import annotations

import gzip
import shutil
from importlib import resources
from pathlib import Path

import pytest
import torch

from vaerun.data import MNIST, Dataset, MNISTBinary, read_idx
from vaerun.errors import ConfigError, DataError

BUNDLED = Path(str(resources.files("vaerun.bundled") / "mnist"))


def test_bundled_mnist_is_the_real_one():
    images = read_idx(BUNDLED / "t10k-images-idx3-ubyte.gz",
                      MNIST.sha256["t10k-images-idx3-ubyte"], "fix")
    assert images.shape == (10000, 28, 28) and images.dtype.name == "uint8"
    labels = read_idx(BUNDLED / "t10k-labels-idx1-ubyte.gz", None, "fix")
    assert labels[:8].tolist() == [7, 2, 1, 0, 4, 1, 4, 9]
    assert (BUNDLED / "README.md").exists() and (BUNDLED / "SHA256SUMS").exists()


def test_grey_subset_in_memory():
    data = MNIST(MNIST.Config(n_train=100, n_test=50))
    assert data.train.shape == (100, 784) and data.test.shape == (50, 784)
    assert data.train.dtype == torch.float32 and data.image_shape == (1, 28, 28)
    assert data.train.min() >= 0 and data.train.max() == 1.0
    assert len(data.train.unique()) > 2  # grey values


@pytest.mark.parametrize("mode", ["dynamic", "static", "threshold"])
def test_binarisation_modes(mode):
    data = MNISTBinary(MNISTBinary.Config(n_train=64, n_test=64, binarize=mode))
    gen = data.noise(0)
    b1 = data.batch(torch.arange(64), gen)
    b2 = data.batch(torch.arange(64), gen)
    assert set(b1.unique().tolist()) <= {0.0, 1.0}
    assert set(data.test.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(b1, b2) == (mode != "dynamic")  # dynamic: a fresh sample each time
    again = MNISTBinary(MNISTBinary.Config(n_train=64, n_test=64, binarize=mode))
    assert torch.equal(again.test, data.test)  # the test set is binarised the same in every run


def test_dequantised_values():
    data = MNIST(MNIST.Config(n_train=32, n_test=32, dequantize=True))
    x = data.batch(torch.arange(32), data.noise(0))
    k = torch.floor(x * 256)
    assert torch.equal(k, data.train * 256)  # x = (k + u)/256 with u in [0, 1)
    assert (x > data.train).float().mean() > 0.99


def _torchvision_layout(tmp_path: Path) -> Path:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        with gzip.open(BUNDLED / f"{name}.gz") as src, open(raw / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return raw


def test_root_with_torchvision_layout(tmp_path):
    _torchvision_layout(tmp_path)
    data = MNIST(MNIST.Config(root=str(tmp_path), n_train=10, n_test=10))
    bundled = MNIST(MNIST.Config(n_train=10, n_test=10))
    assert torch.equal(data.train, bundled.train)


def test_corrupt_file_is_named(tmp_path):
    raw = _torchvision_layout(tmp_path)
    path = raw / "t10k-images-idx3-ubyte"
    blob = bytearray(path.read_bytes())
    blob[5000] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte fails its SHA-256"):
        MNIST(MNIST.Config(root=str(tmp_path), n_train=10, n_test=10))


def test_truncated_gzip_is_named(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        blob = (BUNDLED / f"{name}.gz").read_bytes()
        (raw / f"{name}.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        MNIST(MNIST.Config(root=str(tmp_path), download=False))


def test_missing_files_without_download(tmp_path):
    with pytest.raises(DataError, match="is missing; put the original file"):
        MNIST(MNIST.Config(root=str(tmp_path), download=False))


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    # no network here (nor in CI): torchvision's download fails, vaerun says what to do
    monkeypatch.setenv("no_proxy", "")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="could not download"):
        MNIST(MNIST.Config(root=str(tmp_path / "empty")))
    assert list((tmp_path / "empty").iterdir()) == []  # what the download made is gone
    with pytest.raises(DataError, match="is not a directory; create it"):
        MNIST(MNIST.Config(root=str(tmp_path / "nowhere")))
    assert not (tmp_path / "nowhere").exists()


def test_sizes_are_checked():
    with pytest.raises(ConfigError, match="dataset.n_test"):
        MNIST.validate(MNIST.Config(n_test=10001), "dataset")
    assert Dataset.lookup("mnist_binary") is MNISTBinary
