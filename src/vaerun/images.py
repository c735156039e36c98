"""Your own images, CIFAR-10 and CelebA as their users keep them, in colour.

`dataset=images dataset.root=DIR`: every image under DIR of the kinds torchvision's ImageFolder
reads (PNG, JPEG, WebP, BMP, TIFF, PPM, PGM), flat or in folders, of any size and mode (other
files are left out, and the log names some; hidden ones, a Mac's `._x.jpg` or
`.ipynb_checkpoints/`, unsaid), made `channels` (3: RGB, its alpha dropped; 1: grey),
centre-cropped (to `crop`² first if given, else the largest square) and resized to `size`²
(torchvision's functional transforms, antialiased). A `train/` and a `test/` folder are the
split where both exist, else a seeded `test_fraction` of the files. An image that cannot be
decoded stops the run with one line naming it (a broken download is better found than skipped).

Decoding is done once: the uint8 images are cached under the user's cache directory
($XDG_CACHE_HOME/vaerun, else ~/.cache/vaerun), keyed by the files' names, sizes and times and
these keys, never in the user's folder; a changed folder, or a cache file that is not these
images as uint8, is decoded again. The images are held as uint8 on the device and made floats
in [0, 1] a batch at a time (CelebA at 64×64×3: 2 GB, not 8).

`dataset=cifar10` reads torchvision's `cifar-10-batches-py/` under `root`, and `dataset=celeba`
its `celeba/img_align_celeba/` with `list_eval_partition.txt` (0: train, 2: test), each file
checked against its published MD5 first (`verify`); nothing is downloaded unless
`download=true`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaerun.config import require, require_at_least
from vaerun.data import POLL, DataConfig, Dataset
from vaerun.errors import ConfigError, DataError
from vaerun.rundir import write_atomic, write_error

log = logging.getLogger("vaerun")
SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # as
KINDS = "PNG, JPEG, WebP, BMP, TIFF, PPM or PGM"  # torchvision's ImageFolder (IMG_EXTENSIONS)
WIDE = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # Pillow's modes of a 16-bit grey PNG
CACHE_VERSION = 3  # what a cached array is: bump it when decoding changes (2: 16-bit grey,
#                   3: EXIF orientation)


def shown(text: object) -> str:
    """A file's name (or an error naming it) for a log line: bytes of it that are no UTF-8 (an
    old archive's é) as \\xe9, which the log file and the terminal can take."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vaerun" / "images"


class Images(Dataset):
    """Every image under `root` (see the module docstring)."""

    name = "images"
    missing_hint = "give the folder of your images (dataset.root=DIR)"
    root_is = "the folder of your images"  # what dataset.root names, for a root not given
    train_bytes = 1  # training images stay uint8 (`fixed`), made floats a batch at a time

    @dataclass
    class Config(DataConfig):
        name: str = "images"
        download: bool = False
        size: int = 64  # the side of the square each image is resized to
        crop: int | None = None  # a centre crop of this side first (CelebA: 148), else the largest
        channels: int = 3  # 3: RGB, 1: grey
        test_fraction: float = 0.1  # where the folder has no train/ and test/
        dequantize: bool = False  # x = (k + u)/256, as dataset=mnist's

        def check(self, key: str) -> None:
            super().check(key)
            require_at_least(f"{key}.size", self.size, 4)
            require(self.channels in (1, 3), f"{key}.channels", self.channels, "choose 1 or 3")
            if self.crop is not None:
                require_at_least(f"{key}.crop", self.crop, 1)
            require(isinstance(self.test_fraction, float) and 0 < self.test_fraction < 1,
                    f"{key}.test_fraction", self.test_fraction, "must be a fraction in (0, 1)")

    @classmethod
    def shape_of(cls, cfg: Config) -> tuple[int, ...]:
        return (cfg.channels, cfg.size, cfg.size)

    @classmethod
    def validate(cls, cfg: Config, key: str) -> None:
        if cfg.root is None:
            raise ConfigError(f"{key}.root", None, f"give {cls.root_is}: {key}={cls.name} "
                              f"{key}.root=DIR")
        super().validate(cfg, key)

    @property
    def values(self) -> str:
        return "continuous" if self.cfg.dequantize else "8bit"

    def fixed(self, pixels: torch.Tensor, split: str) -> torch.Tensor:
        """Training images stay uint8 (floats a batch at a time); the test set is floats,
        dequantised once (seed 0) where asked."""
        if split == "train":
            return pixels
        x = pixels.float()
        if self.cfg.dequantize:
            return x.add_(torch.rand(x.shape, generator=self.cpu_generator(0))).div_(256.0)
        return x.div_(255.0)

    def fresh(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.cfg.dequantize:
            return x
        u = torch.rand(x.shape, generator=generator, device=x.device)
        return u.add_(x).div_(256.0)

    def split(self) -> tuple[list[Path], list[Path]]:
        """The training and test files: train/ and test/ where both exist, else a seeded
        `test_fraction` of every image under root."""
        root, poll = Path(self.cfg.root).expanduser(), POLL.get()

        def images(folder: Path) -> list[Path]:  # a stop request is polled at every entry: a
            found, other = [], []  # large tree (a root of ~ by mistake) takes minutes to list
            for p in folder.rglob("*"):
                poll()
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(
                        folder).parts):  # hidden: a Mac's ._x.jpg, .ipynb_checkpoints/
                    (found if p.suffix.lower() in SUFFIXES else other).append(p)
            if other:  # a folder of GIFs, say, is not left out unsaid
                names = ", ".join(shown(p.relative_to(root)) for p in sorted(other)[:3])
                log.info("dataset: left out under %s, as no %s image: %d file%s, %s%s", folder,
                         KINDS, len(other), "s" * (len(other) > 1), names,
                         ", ..." if len(other) > 3 else "")
            return sorted(found)

        if (root / "train").is_dir() and (root / "test").is_dir():
            return images(root / "train"), images(root / "test")
        files = images(root)
        if len(files) < 3:
            raise DataError(f"dataset.root={self.cfg.root} holds {len(files) or 'no'} {KINDS} "
                            "image(s); it needs three at least (a training image and two "
                            "test images)")
        random.Random(0).shuffle(files)
        n_test = min(max(2, round(len(files) * self.cfg.test_fraction)), len(files) - 1)
        return files[n_test:], files[:n_test]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        train, test = self.split()
        if not train or len(test) < 2:  # active units are a variance over the test images
            raise DataError(f"dataset.root={self.cfg.root} gives {len(train)} training and "
                            f"{len(test)} test images; it needs 1 and 2 at least: add images")
        train, test = train[: self.cfg.n_train], test[: self.cfg.n_test]
        out = [self.decoded(files, split) for files, split in ((train, "train"), (test, "test"))]
        if len(bad := [pe for o in out if isinstance(o, list) for pe in o]) == 1:
            raise bad[0][1]
        if bad:
            for _, e in bad:
                log.error("dataset: %s", e)
            names = [shown(p) for p, _ in bad]
            raise DataError(f"{len(bad)} files under {self.cfg.root} are no readable image: "
                            f"{', '.join(names[:5])}" + (f" and {len(bad) - 5} more (the lines "
                                                        "above name each)" if len(bad) > 5 else "")
                            + "; remove or replace them")
        return out[0], out[1]

    def decoded(self, files: list[Path], split: str) -> np.ndarray | list[tuple[Path, DataError]]:
        """[N, C, size, size] uint8 images of `files`, from the cache where it has them; or
        each file that is no readable image, with its error."""
        c, poll = self.cfg, POLL.get()
        h = hashlib.sha256(repr((CACHE_VERSION, c.size, c.crop, c.channels)).encode())
        for p in files:
            poll()
            st = p.stat()
            h.update(os.fsencode(p) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())  # (a name
            #                                          of bytes that are no UTF-8: as it is)
        path = cache_dir() / f"{self.name}-{split}-{h.hexdigest()[:24]}.npy"
        if path.exists():
            try:
                cached = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                cached = e
            if isinstance(cached, np.ndarray) and cached.dtype == np.uint8 and \
                    cached.shape == (len(files), c.channels, c.size, c.size):
                log.info("dataset: %d %s images of %s from the cache (%s)", len(files), split,
                         c.root, path)
                return cached
            log.warning("dataset: the cache %s is damaged or not these images; decoding again",
                        path)
        started, done = time.perf_counter(), [0]
        log.info("dataset: decoding %d %s images of %s, once (they are cached)", len(files), split,
                 c.root)

        def one(p: Path) -> np.ndarray | DataError:
            try:
                out = self.decode(p)
            except DataError as e:  # each broken file is named, not only the first
                out = e
            done[0] += 1
            if done[0] % 2000 == 0:
                log.info("dataset: decoding %s: %d of %d images (%.0f s)", c.root, done[0],
                         len(files), time.perf_counter() - started)
            return out

        pool, got = ThreadPoolExecutor(max_workers=os.cpu_count() or 1), []
        try:  # a stop request is polled between images: decoding writes nothing until the end
            for image in pool.map(one, files):
                poll()
                got.append(image)
        finally:
            pool.shutdown(cancel_futures=True)
        if bad := [(p, e) for p, e in zip(files, got, strict=True) if isinstance(e, DataError)]:
            return bad  # (the other split's, too, are named before the run stops)
        images = np.stack(got)
        said = f"dataset: decoded {len(files)} {split} images of {c.root} in " \
               f"{time.perf_counter() - started:.1f} s"
        try:  # a cache that cannot be written (a read-only or full home) costs time, not the run
            cache_dir().mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.save(buf, images, allow_pickle=False)
            write_atomic(path, buf.getvalue())
            log.info("%s, cached in %s", said, path)
        except OSError as e:
            log.warning("%s, not cached (%s: they are decoded again next time; XDG_CACHE_HOME=DIR "
                        "names a writable cache)", said, write_error(e, "").rstrip("; "))
        return images

    def decode(self, path: Path) -> np.ndarray:
        """One image file as a [C, size, size] uint8 array."""
        from PIL import Image, ImageOps
        from torchvision.transforms import functional as F

        c = self.cfg
        try:
            with Image.open(path) as img:
                img = ImageOps.exif_transpose(img)  # a photo as viewers show it (EXIF Orientation)
                if img.mode == "F":  # a float TIFF: 0 to 1, or 0 to 4095, ...?
                    raise DataError(f"{shown(path)} has 32-bit float pixels, whose range vaerun cannot "
                                    "know: save it with 8 or 16 bits")
                if img.mode in WIDE:  # 16-bit grey: scaled to 8 bits (Pillow's convert clips)
                    img = Image.fromarray(np.rint(np.asarray(img, dtype=np.float64).clip(
                        0, 65535) / 257).astype(np.uint8))
                img = img.convert("RGB" if c.channels == 3 else "L")
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 (PIL's errors for a broken or foreign file)
            raise DataError(f"{shown(path)} is no readable image ({type(e).__name__}: "
                            f"{shown(e)}); remove or replace it") from None
        img = F.center_crop(img, [c.crop or min(img.size)] * 2)
        img = F.resize(img, [c.size, c.size], antialias=True)
        return np.asarray(F.pil_to_tensor(img), dtype=np.uint8)


class SafeUnpickler(pickle.Unpickler):
    """CIFAR-10's batches are pickles: only numpy's arrays are rebuilt from them, never code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):  # noqa: ANN201 (pickle's)
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR-10 batch")
        return super().find_class(module, name)


class CIFAR10(Images):
    """CIFAR-10 (Krizhevsky 2009): 50,000 + 10,000 32×32 RGB images, from torchvision's
    `cifar-10-batches-py/` under `root`, each batch checked against its published MD5."""

    name = "cifar10"
    sizes = (50000, 10000)
    missing_hint = ("put torchvision's cifar-10-batches-py/ there, or add dataset.download=true "
                    "to fetch it with torchvision")
    root_is = ("the folder that holds torchvision's cifar-10-batches-py/ (or is to, with "
               "dataset.download=true)")

    @dataclass
    class Config(DataConfig):
        name: str = "cifar10"
        download: bool = False
        verify: bool = True  # each file's published MD5
        dequantize: bool = False
        size: int = 32
        channels: int = 3

        def check(self, key: str) -> None:
            super().check(key)
            require(self.size == 32 and self.channels == 3, f"{key}.size", self.size,
                    "CIFAR-10's images are 32x32 RGB")

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        import torchvision
        from torchvision.datasets.utils import check_integrity, download_and_extract_archive

        tv, root = torchvision.datasets.CIFAR10, Path(self.cfg.root).expanduser()
        folder = root / tv.base_folder
        if self.cfg.download and not folder.is_dir():
            self.download([folder, root / tv.filename], lambda: download_and_extract_archive(
                tv.url, str(root), filename=tv.filename, md5=tv.tgz_md5))
        out = []
        for files, n in ((tv.train_list, self.cfg.n_train), (tv.test_list, self.cfg.n_test)):
            parts = []
            for name, md5 in files:
                path = folder / name
                if not path.is_file():
                    raise DataError(f"{path} is missing; {self.missing_hint}")
                if self.cfg.verify and not check_integrity(str(path), md5):
                    raise DataError(f"{path} fails its published MD5 check (damaged, or another "
                                    "file); fetch it again, or dataset.verify=false for a copy "
                                    "you made yourself")
                try:
                    with open(path, "rb") as f:
                        batch = SafeUnpickler(f, encoding="bytes").load()
                    parts.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                except (pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError) as e:
                    raise DataError(f"{path} is no CIFAR-10 batch ({e}); fetch it again") from None
            out.append(np.concatenate(parts)[:n])
        return out[0], out[1]


class CelebA(Images):
    """CelebA (Liu et al. 2015), aligned and cropped: 202,599 178×218 face photographs under
    `root`/celeba/img_align_celeba/, split by list_eval_partition.txt (train 0, test 2), centre
    -cropped to 148 and resized to 64 as usual; decoded once and cached like dataset=images."""

    name = "celeba"
    sizes = (162770, 19962)  # partitions 0 and 2 of list_eval_partition.txt
    missing_hint = ("put torchvision's celeba/ there (img_align_celeba/ and "
                    "list_eval_partition.txt), or add dataset.download=true")
    root_is = "the folder that holds torchvision's celeba/ (or is to, with dataset.download=true)"
    PARTITION_MD5 = "d32c9cbf5e040fd4025c592c306e6668"  # torchvision's CelebA.file_list

    @dataclass
    class Config(Images.Config):
        name: str = "celeba"
        crop: int | None = 148
        verify: bool = True

    def split(self) -> tuple[list[Path], list[Path]]:
        from torchvision.datasets.utils import check_integrity

        base = Path(self.cfg.root).expanduser() / "celeba"
        if self.cfg.download and not (base / "img_align_celeba").is_dir():
            import torchvision

            self.download([base], lambda: torchvision.datasets.CelebA(str(base.parent),
                                                                       split="all", download=True))
        partition = base / "list_eval_partition.txt"
        if not partition.is_file() or not (base / "img_align_celeba").is_dir():
            raise DataError(f"{base} lacks img_align_celeba/ or list_eval_partition.txt; "
                            f"{self.missing_hint}")
        if self.cfg.verify and not check_integrity(str(partition), self.PARTITION_MD5):
            raise DataError(f"{partition} fails its published MD5 check; fetch it again, or "
                            "dataset.verify=false for a copy you made yourself")
        rows = []
        for i, line in enumerate(partition.read_text(errors="replace").splitlines()):
            row = line.split()
            if row and (len(row) != 2 or row[1] not in ("0", "1", "2") or
                        Path(row[0]).name != row[0]):
                raise DataError(f"{partition}: line {i + 1} ({line[:80]!r}) is not a file name "
                                "and its partition (0, 1 or 2); fetch it again")
            rows += [row] if row else []
        files = {s: [base / "img_align_celeba" / n for n, p in rows if p == s] for s in "02"}
        return files["0"], files["2"]
