"""Datasets: real image files read into one in-memory tensor on the training device.

Each dataset is a registered class with a `Config` and one yaml under conf/dataset/. Pixels are
flattened to D values in [0, 1]; an epoch's training images are `dataset.epoch_train(seed,
epoch)`, with the epoch's noise (dynamic binarisation, dequantisation) drawn at once from the
run's seed, and a batch is rows of them: no DataLoader and no per-sample Python.
"""

from __future__ import annotations

import contextlib
import enum
import gzip
import hashlib
import logging
import shutil
import zlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from vaerun.config import Registered, require_at_least
from vaerun.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TEST_NOISE_SEED = 0  # the test set's binarisation/dequantisation noise is fixed across runs
STATIC_TRAIN_SEED = 1  # the one binarisation of `binarize=static`
# a command's stop request, polled by a long load (the first decoding of a folder of images)
# between images: it may raise to stop it. Set around a Dataset's construction (`polled`)
POLL: ContextVar[Callable[[], None]] = ContextVar("vaerun_poll", default=lambda: None)


@contextlib.contextmanager
def polled(poll: Callable[[], None] | None) -> Iterator[None]:
    token = POLL.set(poll or (lambda: None))
    try:
        yield
    finally:
        POLL.reset(token)


def to_float(x: Tensor) -> Tensor:
    """Pixels as floats in [0, 1]: uint8 ones (k/255) converted, float ones as they are."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def _read(path: Path) -> tuple[bytes, str]:
    """A file's bytes (decompressed if .gz) and their SHA-256."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return raw, hashlib.sha256(raw).hexdigest()


def read_idx(path: Path, sha256: str | None, fix: str) -> np.ndarray:
    """Read an IDX file (raw or .gz) into a uint8 array, checking the uncompressed SHA-256."""
    try:
        raw, digest = _read(path)
    except FileNotFoundError:
        raise DataError(f"data file {path} is missing; {fix}") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"data file {path} is truncated or corrupt ({e}); {fix}") from None
    if sha256 is not None and digest != sha256:
        raise DataError(f"data file {path} fails its SHA-256 check (damaged or a different "
                        f"file); {fix}")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"data file {path} is not a uint8 IDX file; {fix}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"data file {path} holds {data.size} bytes, its header says "
                        f"{int(np.prod(dims))}; {fix}")
    return data.reshape(dims)


@dataclass
class DataConfig:
    name: str = "mnist"
    root: str | None = None  # null: the copy bundled in the package
    n_train: int | None = None  # null: all; else the first N training images
    n_test: int | None = None
    download: bool = True  # torchvision's download when files are missing under `root`

    def check(self, key: str) -> None:
        if self.n_train is not None:
            require_at_least(f"{key}.n_train", self.n_train, 1)
        if self.n_test is not None:  # active units are a variance over the test images
            require_at_least(f"{key}.n_test", self.n_test, 2)


class Dataset(Registered):
    """D pixel values per image in [0, 1], train and test, as float32 tensors on `device`."""

    registry: ClassVar[dict[str, type]] = {}
    group = "dataset"
    Config = DataConfig
    folder: ClassVar[str]  # torchvision's folder name under `root`
    bundled: ClassVar[str | None] = None  # folder inside vaerun/bundled holding a copy
    train_file: ClassVar[str]
    test_file: ClassVar[str]
    sha256: ClassVar[dict[str, str]]  # uncompressed SHA-256 of each file

    sizes: ClassVar[tuple[int, int] | None] = None  # (train, test) images, when always the same
    shape: ClassVar[tuple[int, ...] | None] = None  # (C, H, W) of an image, when known up front
    train_bytes: ClassVar[int] = 4  # bytes a training value takes in memory (float32)
    missing_hint: ClassVar[str] = "set dataset.root=null to use the bundled copy"
    digest: str | None = None  # sha256 of the uint8 images (a subclass that builds its own: none)

    @property
    def values(self) -> str:
        """What the pixel values are: "8bit" (the grey levels k/255), "binary" ({0, 1}) or
        "continuous" (dequantised, (k + u)/256); likelihoods judge their bits/dim by it."""
        return "8bit"

    @classmethod
    def shape_of(cls, cfg: DataConfig) -> tuple[int, ...]:
        """(C, H, W) of an image of these data, before any is read."""
        return cls.shape

    @staticmethod
    def hparams(cfg: DataConfig) -> dict:
        return {k: v for k, v in Registered.hparams(cfg).items() if k != "download"}

    @classmethod
    def validate(cls, cfg: DataConfig, key: str) -> None:
        if cfg.root is not None and not Path(cfg.root).expanduser().is_dir():
            raise ConfigError(f"{key}.root", cfg.root, f"not a directory; create it (for "
                              f"torchvision's download), or {cls.missing_hint}")
        for k, total in zip(("n_train", "n_test"), cls.sizes or (), strict=False):
            n = getattr(cfg, k)
            if n is not None and n > total:
                raise ConfigError(f"{key}.{k}", n, f"must be between 1 and {total} "
                                  f"(the {k[2:]} images of {cls.name})")

    def __init__(self, cfg: DataConfig, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        train, test = self.arrays()
        digest = hashlib.sha256(repr((train.shape, test.shape)).encode())
        for a in (train, test):
            digest.update(np.ascontiguousarray(a))
        self.digest = digest.hexdigest()  # of the uint8 images: a checkpoint records it
        self.image_shape = tuple(train.shape[1:]) if train.ndim == 4 else (1, *train.shape[1:])
        self.dim = int(np.prod(train.shape[1:]))
        # fixed noise is drawn on the CPU, then moved: the same test set on every device
        as_tensor = lambda a: torch.from_numpy(a.reshape(len(a), -1).copy())  # noqa: E731
        self.train = self.fixed(as_tensor(train), "train").to(self.device)
        self.test = self.fixed(as_tensor(test), "test").to(self.device)

    # -- what subclasses change ------------------------------------------------------------
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The uint8 train and test images, [N, H, W] (one channel) or [N, C, H, W]."""
        return (self._load(self.train_file, self.cfg.n_train, "n_train"),
                self._load(self.test_file, self.cfg.n_test, "n_test"))

    def fixed(self, pixels: torch.Tensor, split: str) -> torch.Tensor:
        """uint8 pixels (on the CPU) -> the float tensor kept in memory, with any noise that
        never changes (drawn with `cpu_generator`)."""
        return pixels.float().div_(255.0)

    def fresh(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Noise drawn anew for every training batch (identity unless overridden)."""
        return x

    # -- shared ------------------------------------------------------------------------------
    def batch(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.fresh(self.train[index], generator)

    def epoch_train(self, seed: int, epoch: int) -> torch.Tensor:
        """The training images of one epoch with their noise (dynamic binarisation,
        dequantisation) drawn anew, all at once, on the data's device, from the run's seed and
        the epoch alone: a training step then only gathers rows (nothing a captured graph
        cannot hold), and a resume draws the same again. Without noise, the images themselves."""
        return self.fresh(self.train, self.noise((seed * 1_000_003 + epoch + 1) % (1 << 63)))

    def noise(self, seed: int) -> torch.Generator:
        """A stream for `batch`'s noise, on the data's device."""
        return torch.Generator(device=self.device).manual_seed(seed)

    @staticmethod
    def cpu_generator(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    @classmethod
    def _paths(cls, cfg: DataConfig, base: str) -> tuple[list[Path], str]:
        if cfg.root is None:
            if cls.bundled is None:
                raise ConfigError(f"{cls.group}.root", None,
                                  f"{cls.name} is not bundled: give the folder that holds it")
            folder = resources.files("vaerun.bundled") / cls.bundled
            fix = "the copy inside the package is damaged: reinstall vaerun"
            return [Path(str(folder / f"{base}.gz"))], fix
        root = Path(cfg.root).expanduser()
        raw = root / cls.folder / "raw"
        fix = (f"put the original file at {raw / base} (torchvision's layout) "
               f"or {cls.missing_hint}")
        return [raw / base, raw / f"{base}.gz", root / base, root / f"{base}.gz"], fix

    def download(self, made: list[Path], fetch: Callable[[], object]) -> None:
        """`fetch()`, torchvision's download into the existing `dataset.root`, undone where it
        fails: what it created at the paths `made` is removed again, so a failed command
        leaves nothing behind; the failure is one DataError."""
        root = Path(self.cfg.root).expanduser()
        if not root.is_dir():
            raise DataError(f"dataset.root={self.cfg.root} is not a directory; create it for "
                            f"torchvision's download, or {self.missing_hint}")
        before = {p: set(p.rglob("*")) if p.is_dir() else p.exists() for p in made}
        log.info("downloading %s into %s with torchvision", self.name, self.cfg.root)
        try:
            fetch()
        except Exception as e:  # network or disk errors, a missing gdown: reported as one line
            for p, had in before.items():
                if had is False and p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                elif had is False:
                    p.unlink(missing_ok=True)
                elif isinstance(had, set):
                    for q in sorted(set(p.rglob("*")) - had, reverse=True):  # deepest first
                        q.rmdir() if q.is_dir() else q.unlink(missing_ok=True)
            hint = "" if "dataset.download=true" in self.missing_hint else f", or {self.missing_hint}"
            raise DataError(f"{self.name} is not under {self.cfg.root} and torchvision could not "
                            f"download it ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                            f"; put its files there yourself (torchvision's layout){hint}") from None

    def _load(self, base: str, n: int | None, key: str) -> np.ndarray:
        candidates, fix = self._paths(self.cfg, base)
        found = [p for p in candidates if p.exists()]
        if not found and self.cfg.root is not None and self.cfg.download:
            import torchvision

            tv, root = getattr(torchvision.datasets, self.folder), Path(self.cfg.root).expanduser()
            self.download([root / self.folder], lambda: [tv(str(root), train=t, download=True)
                                                         for t in (True, False)])
            found = [p for p in candidates if p.exists()]
        path = found[0] if found else candidates[0]
        images = read_idx(path, self.sha256.get(base), fix)
        if n is not None and n > len(images):
            raise ConfigError(f"{self.group}.{key}", n,
                              f"must be between 1 and {len(images)} (the images in {base})")
        return images[:n] if n is not None else images


class MNIST(Dataset):
    """MNIST grey values x = k/255 in [0, 1] (or dequantised, x = (k + u)/256, u ~ U(0, 1))."""

    name = "mnist"
    folder = "MNIST"
    sizes = (60000, 10000)
    shape = (1, 28, 28)
    bundled = "mnist"
    train_file = "train-images-idx3-ubyte"
    test_file = "t10k-images-idx3-ubyte"
    sha256 = {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    }

    @dataclass
    class Config(DataConfig):
        name: str = "mnist"
        # x = (k + u)/256 with fresh u ~ U(0,1) each batch (test: one fixed draw), so a density
        # on [0, 1]^D gives a likelihood of the 8-bit data comparable with the literature.
        dequantize: bool = False

    @property
    def values(self) -> str:
        return "continuous" if self.cfg.dequantize else "8bit"

    def fixed(self, pixels: torch.Tensor, split: str) -> torch.Tensor:
        if not self.cfg.dequantize:
            return super().fixed(pixels, split)
        x = pixels.float()
        if split == "test":
            x += torch.rand(x.shape, generator=self.cpu_generator(TEST_NOISE_SEED))
        return x.div_(256.0)

    def fresh(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.cfg.dequantize:
            return x
        return x + torch.rand(x.shape, generator=generator, device=x.device).div_(256.0)


class Binarize(str, enum.Enum):
    dynamic = "dynamic"  # a fresh Bernoulli(x) sample every time an image is used
    static = "static"  # one seeded Bernoulli(x) sample, fixed for the whole run
    threshold = "threshold"  # x > 0.5


class MNISTBinary(MNIST):
    """MNIST binarised to {0, 1}: the data a Bernoulli decoder is a proper likelihood for.
    The test set is binarised once with a fixed seed (or thresholded) so runs compare."""

    name = "mnist_binary"

    @dataclass
    class Config(DataConfig):
        name: str = "mnist_binary"
        binarize: Binarize = Binarize.dynamic

    @property
    def values(self) -> str:
        return "binary"

    def fixed(self, pixels: torch.Tensor, split: str) -> torch.Tensor:
        grey = pixels.float().div_(255.0)
        if self.cfg.binarize == Binarize.threshold:
            return (grey > 0.5).float()
        if split == "train" and self.cfg.binarize == Binarize.dynamic:
            return grey
        seed = STATIC_TRAIN_SEED if split == "train" else TEST_NOISE_SEED
        return torch.bernoulli(grey, generator=self.cpu_generator(seed))

    def fresh(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.cfg.binarize == Binarize.dynamic:
            return torch.bernoulli(x, generator=generator)
        return x


class FashionMNIST(MNIST):
    """Fashion-MNIST (Xiao et al. 2017): 28×28 grey clothing images, MNIST's format and sizes.
    Offline from Debian's `dataset-fashion-mnist`, else torchvision's download under `root`."""

    name = "fashion_mnist"
    folder = "FashionMNIST"
    bundled = None
    missing_hint = ("install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
                    "or set dataset.root to a writable folder for torchvision's download")
    sha256 = {  # uncompressed; the same bytes as the upstream release
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    }

    @dataclass
    class Config(MNIST.Config):
        name: str = "fashion_mnist"
        root: str | None = "/usr/share/datasets/fashion-mnist"
