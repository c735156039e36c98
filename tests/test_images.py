"""Your own images (#40): a folder of PNGs, JPEGs, WebPs, TIFFs of any sizes and modes, CIFAR-10 and
CelebA as torchvision keeps them, in colour; on images the tests make (no colour data set is
on this machine). The user's folder is left as it was; decoding is cached outside it."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_process

QUICK = ["trainer.epochs=1", "trainer.batch_size=32", "eval.iwae_k=4", "eval.quality_images=0"]


def make_folder(root: Path, n: int = 300, seed: int = 0) -> Path:
    """`n` PNGs of three sizes and four modes (RGB, RGBA, L, P), some in folders, and a text
    file among them."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = [(40, 30), (64, 64), (33, 50)][i % 3]
        where = root / ["", "a", "a/b"][i % 3]
        where.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        img.convert(["RGB", "RGBA", "L", "P"][i % 4]).save(where / f"img{i}.png")
    (root / "notes.txt").write_text("not an image")
    return root


def make_cifar(root: Path, per_batch: int = 40) -> Path:
    """CIFAR-10's own format: cifar-10-batches-py/data_batch_1..5 and test_batch, pickles of
    {b'data': uint8 [N, 3072], b'labels': [...]}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    return root


def make_celeba(root: Path, n: int = 40) -> Path:
    from PIL import Image

    images = root / "celeba" / "img_align_celeba"
    images.mkdir(parents=True)
    rng = np.random.default_rng(2)
    rows = []
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(images / name)
        rows.append(f"{name} {[0, 0, 1, 2][i % 4]}")
    (root / "celeba" / "list_eval_partition.txt").write_text("\n".join(rows) + "\n")
    return root


def listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def env(tmp_path) -> dict:
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_a_folder_of_mixed_images_trains_in_colour_and_is_left_as_it_was(tmp_path, env):
    photos = make_folder(tmp_path / "photos")
    before = listing(photos)
    proc = run_process(["train", "dataset=images", f"dataset.root={photos}", "dataset.size=32",
                        "dataset.dequantize=true", "recipe=antixk", *QUICK,
                        f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    m = metrics(tmp_path / "run")
    assert m["test/implied_sigma"] == pytest.approx((0.00025 * 3072 / 2) ** 0.5, abs=5e-4)  # 0.620
    assert 0 < m["test/bits_per_dim"] < 16 and m["epoch"] == 1
    from PIL import Image

    samples = np.asarray(Image.open(tmp_path / "run" / "images" / "samples.png").convert("RGB"))
    assert (samples[..., 0] != samples[..., 1]).mean() > 0.1  # colour, not grey
    log = (tmp_path / "run" / "train.log").read_text()
    assert "3x32x32 images (D = 3072 values)" in log
    assert listing(photos) == before  # not a file added, changed or removed
    assert list((tmp_path / "cache" / "vaerun" / "images").glob("*.npy"))


def test_a_second_run_reads_the_cache_and_gets_the_same_images(tmp_path, monkeypatch):
    from vaerun.images import Images

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    photos = make_folder(tmp_path / "photos", n=30)
    cfg = Images.Config(root=str(photos), size=16, channels=3)
    first, again = Images(cfg), Images(cfg)
    assert first.train.dtype == torch.uint8 and first.train.shape == (27, 3 * 16 * 16)
    assert torch.equal(first.train, again.train) and torch.equal(first.test, again.test)
    (photos / "img0.png").touch()  # a changed folder is decoded again
    os.utime(photos / "img0.png", ns=(1, 1))
    assert len(list((tmp_path / "cache" / "vaerun" / "images").glob("*.npy"))) == 2
    Images(cfg)
    assert len(list((tmp_path / "cache" / "vaerun" / "images").glob("*.npy"))) == 3


@pytest.mark.parametrize("damage", ["garbage", "pickle", "float64", "shape"])
def test_a_damaged_cache_is_decoded_again(tmp_path, monkeypatch, damage):
    """A cache file that is not these images as uint8 (damaged on disk, or another array under
    the same name) was a traceback, or a float64 array that failed in the first step: it is
    decoded again, the same images, and written anew."""
    from vaerun.images import Images

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = Images.Config(root=str(make_folder(tmp_path / "photos", n=12)), size=8, channels=3)
    first = Images(cfg).train
    (cached,) = (tmp_path / "cache" / "vaerun" / "images").glob("images-train-*.npy")
    if damage == "garbage":
        cached.write_bytes(b"garbage")
    else:
        good = np.load(cached)
        np.save(cached, {"pickle": np.array([None, 1], dtype=object),
                         "float64": good.astype(np.float64), "shape": good[:-1]}[damage],
                allow_pickle=True)
    assert torch.equal(Images(cfg).train, first)
    assert np.load(cached).dtype == np.uint8 and torch.equal(Images(cfg).train, first)


def test_the_cache_is_said_in_the_log(tmp_path, env):
    photos = make_folder(tmp_path / "photos", n=20)
    args = ["train", "dataset=images", f"dataset.root={photos}", "dataset.size=16", *QUICK]
    for i, says in enumerate(("decoded 18 train images", "18 train images of")):
        proc = run_process([*args, f"hydra.run.dir={tmp_path / str(i)}"], cwd=tmp_path, env=env)
        assert proc.returncode == 0 and says in (tmp_path / str(i) / "train.log").read_text()
    assert "from the cache" in (tmp_path / "1" / "train.log").read_text()


def test_cifar10_in_its_own_format(tmp_path, env):
    data = make_cifar(tmp_path / "data")
    proc = run_process(["train", "dataset=cifar10", f"dataset.root={data}",
                        "dataset.verify=false", "model=conv", *QUICK,
                        f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert metrics(tmp_path / "run")["status"] == "finished"
    checked = run_process(["train", "dataset=cifar10", f"dataset.root={data}", *QUICK],
                          cwd=tmp_path, env=env)  # its published checksums, by default
    lines = checked.stderr.strip().splitlines()
    assert checked.returncode == 2 and len(lines) == 1 and "MD5" in lines[0], checked.stderr


def test_celeba_in_its_own_format(tmp_path, env):
    data = make_celeba(tmp_path / "data")
    proc = run_process(["train", "dataset=celeba", f"dataset.root={data}", "dataset.verify=false",
                        "dataset.size=16", *QUICK, f"hydra.run.dir={tmp_path / 'run'}"],
                       cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "20 train images" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.parametrize("channels", [1, 3])
def test_a_16_bit_grey_png_is_scaled_not_clipped(tmp_path, monkeypatch, channels):
    """Pillow's convert clips a 16-bit grey PNG (mode I;16) to 255: every value above 255 was
    white. It is scaled to 8 bits, v/257 rounded: 65535 -> 255, 30000 -> 117."""
    from PIL import Image

    from vaerun.images import Images

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "scans"
    folder.mkdir()
    values = np.array([0, 256, 30000, 65535], dtype=np.uint16).repeat(4).reshape(4, 4)
    for i in range(3):
        Image.fromarray(values).save(folder / f"{i}.png")
    assert Image.open(folder / "0.png").mode.startswith("I")
    data = Images(Images.Config(root=str(folder), size=4, channels=channels))
    want = torch.tensor([0, 1, 117, 255], dtype=torch.uint8).repeat_interleave(4)
    assert torch.equal(data.train.view(channels, 16)[-1], want)


def test_a_photos_exif_orientation_is_applied(tmp_path, monkeypatch):
    """A phone stores a portrait photo as the sensor read it, with an EXIF Orientation tag
    saying how to turn it (6: a quarter turn clockwise); viewers apply it, Pillow does not. The
    images were decoded on their side. Here the stored left half is white: shown, the top."""
    from PIL import Image

    from vaerun.images import Images

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "photos"
    folder.mkdir()
    stored = np.zeros((16, 16), dtype=np.uint8)
    stored[:, :8] = 255
    for i in range(3):
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90° clockwise to show
        Image.fromarray(stored).save(folder / f"{i}.jpg", quality=100, exif=exif)
    shown = Images(Images.Config(root=str(folder), size=16, channels=1)).train.view(-1, 16, 16)[0].float()
    assert shown[:6].mean() > 250 and shown[-6:].mean() < 5  # white on top, black below
    assert (shown[:, :8].mean() - shown[:, 8:].mean()).abs() < 1  # not left and right


@pytest.mark.parametrize("name, had", [("cifar10", []), ("celeba", []),
                                       ("celeba", ["celeba/list_eval_partition.txt"])])
def test_a_failed_download_is_one_error_and_leaves_the_root_as_it_was(tmp_path, monkeypatch,
                                                                       name, had):
    """CIFAR-10's and CelebA's downloads failing (offline; CelebA's also without gdown) were a
    traceback, or, for CIFAR-10, an OSError the command called a full disk; now a DataError
    (one line), nothing left."""
    from vaerun.errors import DataError
    from vaerun.images import CIFAR10, CelebA

    for k, v in {"no_proxy": "", "https_proxy": "http://127.0.0.1:9",
                 "http_proxy": "http://127.0.0.1:9", "XDG_CACHE_HOME": str(tmp_path / "c")}.items():
        monkeypatch.setenv(k, v)
    root = tmp_path / "root"
    for f in had:
        (root / f).parent.mkdir(parents=True)
        (root / f).write_text("000001.jpg 0\n")
    root.mkdir(exist_ok=True)
    before, cls = listing(root), {"cifar10": CIFAR10, "celeba": CelebA}[name]
    with pytest.raises(DataError, match="could not download"):
        cls(cls.Config(root=str(root), download=True))
    assert listing(root) == before


@pytest.mark.parametrize("line", ["000001.jpg 0 extra", "000001.jpg", "000001.jpg 7",
                                  "000001.jpg 01", "../../../etc/hostname 0"])
def test_a_partition_file_of_other_lines_is_one_error(tmp_path, monkeypatch, line):
    from vaerun.errors import DataError
    from vaerun.images import CelebA

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    data = make_celeba(tmp_path / "data", n=8)
    partition = data / "celeba" / "list_eval_partition.txt"
    partition.write_text(partition.read_text() + line + "\n")
    with pytest.raises(DataError, match="line 9 "):
        CelebA(CelebA.Config(root=str(data), verify=False, size=16))


@pytest.mark.parametrize("case, says", [("2 files", "three at least"),
                                        ("train/ empty", "gives 0 training and 2 test images"),
                                        ("test/ of 1", "gives 2 training and 1 test images")])
def test_a_folder_of_too_few_images_is_one_error(tmp_path, monkeypatch, case, says):
    """Too few images for the run were a traceback (an empty train/) or a test set of 1 (active
    units are a variance over it: 0 of 20). (dataset.n_train and n_test are at most N here: a
    folder with fewer gives what it has.)"""
    import shutil

    from vaerun.errors import DataError
    from vaerun.images import Images

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    photos, made = tmp_path / "photos", make_folder(tmp_path / "made", n=3)
    for p, to in zip(sorted(made.rglob("*.png")), {"2 files": ["", ""],
                     "train/ empty": ["test", "test"], "test/ of 1": ["train", "train", "test"]}[case],
                     strict=False):
        (photos / to).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, photos / to / p.name)
    if case == "train/ empty":
        (photos / "train").mkdir()
    with pytest.raises(DataError, match=says):
        Images(Images.Config(root=str(photos), size=8))


def test_a_run_is_not_resumed_or_evaluated_on_other_images(tmp_path, env, vaerun, capsys,
                                                           monkeypatch):
    """A folder of your own images that changed after training (an image added) was read as it
    is now: an evaluation of other test images (its split reshuffled, so some it trained on), a
    resume on another training set. Both are refused (eval writes nothing; the resume, refused
    as its data are read, only its log and Hydra's records); as it was, both run."""
    monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])  # (in this process: CI time)
    photos, run = make_folder(tmp_path / "photos", n=20), tmp_path / "run"
    args = ["dataset=images", f"dataset.root={photos}", "dataset.size=16", *QUICK]
    assert vaerun("train", *args, f"hydra.run.dir={run}") == 0
    (photos / "img0.png").rename(photos / "kept.bin")
    before = listing(run)
    resume = ["train", *args, "trainer.resume=true", "trainer.epochs=2", f"hydra.run.dir={run}"]
    for command in (["eval", f"run_dir={run}", "eval.iwae_k=2"], resume):
        capsys.readouterr()
        code, err = vaerun(*command), capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert "images under dataset.root" in lines[0] and "not those the run" in lines[0]
        if command[0] == "eval":
            assert listing(run) == before
    after = listing(run)
    assert [after[k] == before[k] for k in ("checkpoints/last.pt", "metrics.json")] == [True] * 2
    (photos / "kept.bin").rename(photos / "img0.png")
    for command in (["eval", f"run_dir={run}", "eval.iwae_k=2"], resume):
        assert vaerun(*command) == 0


@pytest.mark.parametrize("case", ["empty", "corrupt", "missing"])
def test_a_folder_without_usable_images_is_one_line(tmp_path, env, case):
    photos = tmp_path / "photos"
    if case != "missing":
        make_folder(photos, n=4)
    if case == "empty":
        for p in photos.rglob("*.png"):
            p.unlink()
    if case == "corrupt":
        (photos / "img1.png").write_bytes(b"\x89PNG not really")
    proc = run_process(["train", "dataset=images", f"dataset.root={photos}", *QUICK,
                        f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert {"empty": "no PNG", "corrupt": "img1.png", "missing": "dataset.root"}[case] in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_cache_that_cannot_be_written_costs_time_not_the_run(tmp_path, monkeypatch, caplog):
    """A home that is read-only or full (a container's, a cluster's quota) failed the run as
    its images were decoded: "could not write ~/.cache/vaerun/images". They are used uncached."""
    import logging

    from vaerun.images import Images

    (tmp_path / "a file").write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a file"))
    photos = make_folder(tmp_path / "photos", n=10)
    with caplog.at_level(logging.WARNING, logger="vaerun"):
        data = Images(Images.Config(root=str(photos), size=8, channels=3))
    assert data.train.shape[0] + data.test.shape[0] == 10
    assert caplog.text.count(f"not cached (could not write {tmp_path / 'a file'}") == 2


def test_every_broken_file_is_named_at_once(tmp_path, monkeypatch):
    """Only the first broken file was named, so a folder of seven took seven runs to mend: all
    are named at once, train and test split alike."""
    from vaerun.errors import DataError
    from vaerun.images import Images

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    photos = make_folder(tmp_path / "photos", n=30)
    for i in range(0, 21, 3):
        (photos / f"img{i}.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError) as e:
        Images(Images.Config(root=str(photos), size=8, channels=3))
    assert str(e.value).startswith(f"7 files under {photos} are no readable image: ")
    assert str(e.value).endswith(" and 2 more (the lines above name each); remove or replace them")


def test_a_stop_while_decoding_stops_it_and_caches_nothing(tmp_path, monkeypatch):
    """The first decoding of a large folder takes minutes (CelebA: 200,000 JPEGs), and a stop
    request waited for all of it, then for the cache to be written: decoding polls the stop
    request between images, cancels the rest, and leaves no cache."""
    import logging
    import signal

    import vaerun
    from vaerun.data import polled
    from vaerun.errors import Interrupted
    from vaerun.images import Images

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    photos = make_folder(tmp_path / "photos", n=40)
    polls, listed = [], sorted(photos.rglob("*"))

    def stop_after_three():  # the third image decoded (the listing and its stats poll first)
        polls.append(1)
        if len(polls) == len(listed) + 36 + 3:
            raise Interrupted(signal.SIGINT)

    with pytest.raises(Interrupted), polled(stop_after_three):
        Images(Images.Config(root=str(photos), size=8, channels=3))
    assert len(polls) == len(listed) + 36 + 3 and not (tmp_path / "cache").exists()

    class CtrlC(logging.Handler):  # a Ctrl-C the moment decoding begins, in a whole training
        def emit(self, record):
            if record.getMessage().startswith("dataset: decoding"):
                os.kill(os.getpid(), signal.SIGINT)

    logging.getLogger("vaerun").addHandler(handler := CtrlC())
    try:
        with pytest.raises(vaerun.Interrupted):
            vaerun.train(["dataset=images", f"dataset.root={photos}", "dataset.size=8", *QUICK],
                         run_dir=tmp_path / "run")
    finally:
        logging.getLogger("vaerun").removeHandler(handler)
    assert not (tmp_path / "cache").exists()
    assert "decoded" not in (tmp_path / "run" / "train.log").read_text()


def test_a_stop_while_listing_a_large_folder_stops_it(tmp_path, monkeypatch, caplog):
    """Listing a folder polls the stop request at every entry: a root of ~ by mistake, or a
    tree of millions of files, took minutes to list, and a Ctrl-C waited for all of it."""
    import logging
    import signal

    from vaerun.data import polled
    from vaerun.errors import Interrupted
    from vaerun.images import Images

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    photos = make_folder(tmp_path / "photos", n=3)
    for i in range(500):  # files that are not images, listed all the same
        (photos / f"notes{i}.txt").write_text("x")
    polls = []

    def stop_at_the_tenth():
        polls.append(1)
        if len(polls) == 10:
            raise Interrupted(signal.SIGINT)

    with pytest.raises(Interrupted), polled(stop_at_the_tenth), caplog.at_level(logging.INFO):
        Images(Images.Config(root=str(photos), size=8, channels=3))
    assert len(polls) == 10 and not (tmp_path / "cache").exists()
    assert "decoding" not in caplog.text


def test_a_relative_root_is_recorded_whole_so_the_run_is_used_from_anywhere(tmp_path, vaerun,
                                                                             monkeypatch):
    """`dataset.root=photos` (README's line) was recorded as given, relative: `vaerun eval`, a
    resume or `vaerun.load` from another folder (a notebook's) read `photos` there, and failed
    ("not a directory"). The run's records name the folder it read; a run recorded so by an
    earlier vaerun still resumes from where it was trained. (The commands run in this process.)"""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_folder(tmp_path / "photos", n=20)
    (tmp_path / "notebooks").mkdir()
    args = ["dataset=images", "dataset.root=photos", "dataset.size=16", *QUICK]
    for run in ("a", "old"):
        assert vaerun("train", *args, f"hydra.run.dir={run}") == 0
    a = tmp_path / "a"
    assert f"dataset.root={tmp_path / 'photos'}\n" in (a / ".hydra" / "overrides.yaml").read_text()
    assert torch.load(a / "checkpoints" / "last.pt")["config"]["dataset"]["root"] == str(
        tmp_path / "photos")
    monkeypatch.chdir(tmp_path / "notebooks")
    for command in (["eval", "run_dir=../a", "eval.iwae_k=2"],
                    ["train", "trainer.resume=true", "trainer.epochs=2", "hydra.run.dir=../a"]):
        assert vaerun(*command) == 0
    assert metrics(a)["epoch"] == 2
    monkeypatch.chdir(tmp_path)
    old = tmp_path / "old"  # as an earlier vaerun recorded it
    state = torch.load(old / "checkpoints" / "last.pt")
    state["config"]["dataset"]["root"] = "photos"
    torch.save(state, old / "checkpoints" / "last.pt")
    for name in ("overrides.yaml", "config.yaml"):
        record = old / ".hydra" / name
        record.write_text(record.read_text().replace(str(tmp_path / "photos"), "photos"))
    assert "root: photos" in (old / ".hydra" / "config.yaml").read_text()
    assert vaerun("train", "trainer.resume=true", "trainer.epochs=2", "hydra.run.dir=old") == 0
    assert metrics(old)["epoch"] == 2


def test_a_relative_root_in_a_yaml_of_yours_is_recorded_whole(tmp_path, monkeypatch):
    """The same for `root: photos` in an experiment yaml of yours (-cd DIR): it was recorded as
    written, so the run could not be evaluated from another folder. The records name the folder
    the run read; the run's folder is still named by what the command changed."""
    import vaerun

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_folder(tmp_path / "photos", n=20)
    (tmp_path / "notebooks").mkdir()
    mine = tmp_path / "mine" / "experiment" / "photos.yaml"
    mine.parent.mkdir(parents=True)
    mine.write_text("# @package _global_\ndefaults:\n  - override /dataset: images\n"
                    "dataset:\n  root: photos\n  size: 16\n")
    vaerun.train(["-cd", "mine", "experiment=photos", *QUICK])
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    assert run.name.endswith("_" + ",".join(sorted(["experiment=photos", *QUICK])))
    assert f"dataset.root={tmp_path / 'photos'}\n" in (run / ".hydra" / "overrides.yaml").read_text()
    assert f"root: {tmp_path / 'photos'}\n" in (run / ".hydra" / "config.yaml").read_text()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert vaerun.evaluate(run, ["eval.iwae_k=2"])["test/nll_iwae"] > 0


def test_images_moved_are_named_anew_at_evaluation_load_and_resume(tmp_path, monkeypatch):
    """A run's images moved (or the run is used on another machine): `vaerun eval` said "give
    the folder of your images (dataset.root=DIR)", then refused dataset.root=DIR, "cannot change
    at evaluation". It may be given at evaluation, load and resume; the checkpoint's digest of
    the images refuses other ones, and an older checkpoint, without one, any other folder."""
    import vaerun

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_folder(tmp_path / "photos", n=20)
    run = tmp_path / "run"
    vaerun.train(["dataset=images", "dataset.root=photos", "dataset.size=8", *QUICK], run_dir=run)
    (tmp_path / "photos").rename(tmp_path / "moved")
    with pytest.raises(vaerun.ConfigError, match="not a directory"):
        vaerun.evaluate(run, ["eval.iwae_k=2"])
    assert vaerun.evaluate(run, ["eval.iwae_k=2", "dataset.root=moved"])["test/nll_iwae"] > 0
    assert vaerun.load(run, ["dataset.root=moved"]).data.test.shape[1] == 3 * 8 * 8
    vaerun.train(["trainer.resume=true", "trainer.epochs=2", "dataset.root=moved"], run_dir=run)
    assert metrics(run)["epoch"] == 2
    assert torch.load(run / "checkpoints" / "last.pt")["config"]["dataset"]["root"] == str(
        tmp_path / "moved")
    assert vaerun.evaluate(run, ["eval.iwae_k=2"])["test/nll_iwae"] > 0  # its records agree
    make_folder(tmp_path / "other", n=20, seed=1)
    with pytest.raises(vaerun.Refused, match="are not those the run in"):
        vaerun.evaluate(run, ["eval.iwae_k=2", "dataset.root=other"])
    state = torch.load(run / "checkpoints" / "last.pt")
    del state["data"]  # as an earlier vaerun wrote it
    torch.save(state, run / "checkpoints" / "last.pt")
    with pytest.raises(vaerun.ConfigError, match="records no digest of its images"):
        vaerun.load(run, ["dataset.root=other"])


@pytest.mark.parametrize("root", ["${hydra:runtime.cwd}/photos", "${nope}", "photos"])
def test_a_root_in_a_yaml_of_yours_is_checked_before_it_is_made_absolute(tmp_path, monkeypatch,
                                                                          root):
    """Reading a yaml's root to make it absolute resolved it first: a resolver or a missing
    key was a traceback, not the line that names the key."""
    import vaerun

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine" / "experiment").mkdir(parents=True)
    (tmp_path / "mine" / "experiment" / "p.yaml").write_text(
        f"# @package _global_\ndefaults:\n  - override /dataset: images\ndataset:\n  root: "
        f"{root}\n")
    (tmp_path / "photos").mkdir()
    args = ["-cd", "mine", "experiment=p"]
    if root == "photos":
        assert vaerun.compose(args).dataset.root == str(tmp_path / "photos")
        return
    with pytest.raises(vaerun.ConfigError, match=r"^dataset\.root=.*(resolver hydra:|'nope')"):
        vaerun.compose(args)


def test_every_kind_imagefolder_reads_is_read_and_the_rest_is_said(tmp_path, monkeypatch, caplog):
    """Only PNG, JPEG and WebP were read: a folder of TIFF scans or BMPs was "no image", a GIF
    among PNGs was left out unsaid, a Mac's `._x.png` or a notebook's `.ipynb_checkpoints/` stopped
    the run as a broken image, and a float TIFF in [0, 1] became black. Now ImageFolder's kinds
    are read, what is left out is said, hidden files are skipped, a float TIFF is refused."""
    import logging

    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from vaerun.errors import DataError
    from vaerun.images import SUFFIXES, Images

    assert set(SUFFIXES) == set(IMG_EXTENSIONS)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    scans = tmp_path / "scans"
    (scans / ".ipynb_checkpoints").mkdir(parents=True)
    grey = np.full((6, 6), 200, dtype=np.uint8)
    for name in ["a.bmp", "b.tif", "c.tiff", "d.ppm", "e.pgm", "f.png", "g.gif"]:
        Image.fromarray(grey).save(scans / name)
    Image.fromarray(np.full((6, 6), 51400, dtype=np.uint16)).save(scans / "h.tif")  # 16-bit
    (scans / "._f.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (scans / ".ipynb_checkpoints" / "f-checkpoint.png").write_bytes(b"not an image")
    with caplog.at_level(logging.INFO, logger="vaerun"):
        data = Images(Images.Config(root=str(scans), size=4, channels=1))
    pixels = [x if x.dtype == torch.uint8 else (x * 255).round() for x in (data.train, data.test)]
    assert len(data.train) + len(data.test) == 7
    assert {int(v) for x in pixels for v in x.flatten().tolist()} == {200}  # 51400/257 too
    assert f"left out under {scans}, as no PNG, JPEG, WebP, BMP, TIFF, PPM or PGM image: 1 " \
           "file, g.gif" in caplog.text
    Image.fromarray(np.full((6, 6), 0.8, dtype=np.float32)).save(scans / "i.tif")
    with pytest.raises(DataError, match=r"i\.tif has 32-bit float pixels, whose range vaerun "
                                        "cannot know: save it with 8 or 16 bits"):
        Images(Images.Config(root=str(scans), size=4, channels=1))


def test_a_file_name_of_bytes_that_are_no_utf8_is_read_and_named(tmp_path, monkeypatch, caplog,
                                                                 vaerun, capsys):
    """A name from an old archive (Latin-1 `é`, the byte 0xe9) failed the run after its images
    were listed: "UnicodeEncodeError: surrogates not allowed" as the cache key was made, and a
    log line naming one was a logging error. Such an image is read; such a name is shown \\xe9.
    A folder of such a name, quoted, was a traceback: it is refused in one line."""
    import logging

    from vaerun.errors import DataError
    from vaerun.images import Images

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    photos = make_folder(tmp_path / "photos", n=6)
    os.rename(photos / "img0.png", os.fsencode(photos) + b"/caf\xe9.png")
    (photos / "img3.png").rename(os.fsdecode(os.fsencode(photos) + b"/\xe9t\xe9.gif"))
    with caplog.at_level(logging.INFO, logger="vaerun"):
        data = Images(Images.Config(root=str(photos), size=8, channels=3))
    assert len(data.train) + len(data.test) == 5
    assert "2 files, notes.txt, \\xe9t\\xe9.gif" in caplog.text
    for quoted in ("", '"'):  # the folder itself: the run's yaml records could not hold it
        folder = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9")
        assert vaerun("train", "dataset=images", f"dataset.root={quoted}{folder}{quoted}") == 2
        err = capsys.readouterr().err
        assert err.startswith("error: dataset.root=") and err.count("\n") == 1
        assert "is not allowed: bytes that are no UTF-8" in err
    assert vaerun("train", "-cd", folder) == 2  # trained, then refused on resume: refused first
    assert capsys.readouterr().err.startswith("error: --config-dir='")
    (photos / os.fsdecode(b"caf\xe9.png")).write_bytes(b"broken")
    with pytest.raises(DataError, match=r"caf\\xe9\.png is no readable image"):
        Images(Images.Config(root=str(photos), size=8, channels=3))
