"""Numbers at the edges, a full disk, a model too big for the machine: each input the attack
campaign typed (issue #37), typed again. Each ends in one `error:` line naming the key and the
fix, exit 2 (a signal: 128 + it), and leaves nothing behind but what a resume needs."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMALL, run_process
from test_nothing_lost import mount_tmpfs


def one_line(proc, says: str = "") -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


def nothing_made(tmp_path: Path) -> None:
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("edges")
    run = where / "run"
    assert run_process(["train", *SMALL, "trainer.epochs=1", "eval.quality_images=0",
                        f"hydra.run.dir={run}"], cwd=where).returncode == 0
    return run


def test_a_model_too_big_for_the_machine_is_refused_before_anything_is_allocated(tmp_path):
    started = time.monotonic()
    proc = run_process(["train", "model.latent_dim=1000000"], cwd=tmp_path)
    assert "model.latent_dim" in one_line(proc, "GB") and time.monotonic() - started < 10
    nothing_made(tmp_path)


@pytest.mark.parametrize("command, key", [(["train", "loss.recon_weight={n}"], "loss.recon_weight"),
                                          (["eval", "run_dir={run}", "eval.iwae_k={n}"],
                                           "eval.iwae_k")])
def test_a_five_thousand_digit_number_is_one_line(finished, tmp_path, command, key):
    n = "1" * 5000
    proc = run_process([a.format(n=n, run=finished) for a in command], cwd=tmp_path)
    assert "30 digits" in one_line(proc, key)


def test_a_record_holding_a_number_too_large_for_a_float_is_reported_as_such(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    m = json.loads((run / "metrics.json").read_text())
    m["test/kl"] = "HUGE"
    (run / "metrics.json").write_text(json.dumps(m).replace('"HUGE"', "1" + "0" * 400))
    proc = run_process(["report", f"sweep_dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "overflow" in (run / "report.md").read_text()


@pytest.mark.parametrize("args", [["likelihood=gaussian", "loss.recon=sse", "beta=0"],
                                  ["recipe=antixk", "beta=0"],
                                  ["likelihood=gaussian", "loss.recon=sse", "beta=1e-45"]])
def test_a_loss_that_implies_sigma_zero_is_refused_up_front(tmp_path, args):
    assert "sigma^2" in one_line(run_process(["train", *SMALL, *args], cwd=tmp_path), "beta")
    nothing_made(tmp_path)


@pytest.mark.parametrize("args, key", [(["beta=1e308"], "beta"),
                                       (["recipe=antixk", "beta=1e308"], "beta"),
                                       (["loss.recon_weight=3e38"], "loss.recon_weight")])
def test_a_weight_that_overflows_the_loss_is_refused_up_front(tmp_path, args, key):
    one_line(run_process(["train", *SMALL, *args], cwd=tmp_path), key)
    nothing_made(tmp_path)


@pytest.mark.parametrize("flags", [["-m", "--cfg", "job"], ["--run", "--multirun"],
                                   ["-cp", "conf", "--cfg", "job", "--resolve"]])
def test_flags_that_do_not_go_together_are_one_line(tmp_path, flags):
    (tmp_path / "conf").mkdir()
    one_line(run_process(["train", *flags], cwd=tmp_path))


def test_a_long_value_makes_a_folder_name_within_the_file_systems_limit(vaerun, tmp_path):
    assert vaerun("train", *SMALL, "trainer.epochs=0", "eval.iwae_k=0",
                  f"loss.written=\"{'σ' * 150}\"") == 0
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    assert len(run.name.encode()) <= 255 and (run / "metrics.json").exists()


def test_an_environment_value_vaerun_reads_is_checked_like_a_key(tmp_path):
    proc = run_process(["train", *SMALL], cwd=tmp_path,
                       env={**os.environ, "SLURM_CPUS_PER_TASK": "-3"})
    one_line(proc, "SLURM_CPUS_PER_TASK")
    nothing_made(tmp_path)


def test_a_newline_in_a_folder_is_refused_in_one_line(tmp_path):
    one_line(run_process(["train", *SMALL, "hydra.run.dir=a\nb"], cwd=tmp_path),
             "control character")
    assert list(tmp_path.iterdir()) == []


class Payload:
    def __reduce__(self):
        return (os.system, ("true",))


def test_a_pickle_payload_checkpoint_is_one_line_and_runs_nothing(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "checkpoints" / "last.pt").write_bytes(pickle.dumps(Payload()))
    one_line(run_process(["eval", f"run_dir={run}"], cwd=tmp_path), "last.pt")


@pytest.fixture
def disk(tmp_path, request):
    where = tmp_path / "disk"
    if not mount_tmpfs(where, request.param):
        pytest.skip("needs root and mount (a tmpfs to fill up)")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.parametrize("disk", ["12m"], indirect=True)
def test_a_full_disk_is_named_a_full_disk_whatever_space_is_left(disk, tmp_path):
    proc = run_process(["train", "dataset.n_train=2048", "dataset.n_test=256", "trainer.epochs=30",
                        "trainer.batch_size=64", "eval.iwae_k=2", f"hydra.run.dir={disk / 'run'}"],
                       cwd=tmp_path)
    line = one_line(proc, "the disk is full")
    assert "trainer.resume=true" in line  # a checkpoint exists: it says so
    record = json.loads((disk / "run" / "metrics.json").read_text())  # and so does its record
    assert (record["status"], record["exit_code"]) == ("failed", 2)
    assert line == f"error: {record['error']}"


@pytest.mark.parametrize("disk", ["1m"], indirect=True)
def test_a_disk_full_before_the_first_checkpoint_says_there_is_none(disk, tmp_path):
    proc = run_process(["train", *SMALL, f"hydra.run.dir={disk / 'run'}"], cwd=tmp_path)
    assert "no checkpoint was written" in one_line(proc, "the disk is full")
    assert not (disk / "run").exists()  # nothing to resume: nothing left


def test_the_readmes_interpolation_example_works(vaerun, tmp_path):
    assert vaerun("train", *SMALL, "trainer.epochs=0", "eval.batch_size=${trainer.batch_size}",
                  f"hydra.run.dir={tmp_path / 'run'}") == 0


def test_a_recipe_with_the_wrong_likelihood_names_the_right_one(tmp_path):
    one_line(run_process(["train", *SMALL, "recipe=sigma_vae", "likelihood=gaussian"],
                         cwd=tmp_path), "likelihood=gaussian_learned")


def test_no_resolver_from_the_eval_command_line(finished, tmp_path):
    one_line(run_process(["eval", f"run_dir={finished}", "eval.seed=${oc.decode:'7'}"],
                         cwd=tmp_path), "resolver oc.decode")


def test_an_eval_stopped_before_it_wrote_a_value_leaves_no_events_file(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = sorted(p.name for p in run.iterdir())
    proc = subprocess.Popen([sys.executable, "-m", "vaerun", "eval", f"run_dir={run}",
                             "eval.iwae_k=20000", "trainer.progress_seconds=0"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:  # stopped once the importance sampling runs, by its own line
        if "chunks of samples" in line:
            proc.send_signal(signal.SIGTERM)
            break
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_corrupt_data_file_leaves_no_folder(tmp_path):
    import gzip
    from importlib import resources

    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        src = Path(str(resources.files("vaerun.bundled") / "mnist" / f"{name}.gz"))
        (raw / name).write_bytes(gzip.decompress(src.read_bytes())[:1000])
    proc = run_process(["train", f"dataset.root={tmp_path / 'data'}", *SMALL,
                        f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    one_line(proc, "data file")
    assert not (tmp_path / "run").exists()


def test_a_record_of_nested_yaml_aliases_is_refused_fast(finished, tmp_path):
    run = tmp_path / "sweep" / "run"
    shutil.copytree(finished, run)
    (run.parent / ".vaerun").write_text('{"vaerun": 1, "kind": "sweep"}')
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefg", "bcdefgh", strict=True)]
    (run / ".hydra" / "overrides.yaml").write_text("\n".join(bomb) + "\n")
    started = time.monotonic()
    proc = run_process(["report", f"sweep_dir={run.parent}"], cwd=tmp_path)
    assert proc.returncode == 0 and time.monotonic() - started < 20
    assert ".hydra/overrides.yaml is unreadable" in (run.parent / "report.md").read_text()


def test_a_bar_in_an_override_keeps_the_report_table_whole(vaerun, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    assert vaerun("train", "-m", *SMALL, "trainer.epochs=1", "eval.quality_images=0",
                  "loss.written='a|b','c'", f"hydra.sweep.dir={sweep}") == 0
    capsys.readouterr()
    assert vaerun("report", f"sweep_dir={sweep}") == 0
    assert capsys.readouterr().err == ""  # no warning either
    table = [ln for ln in (sweep / "report.md").read_text().splitlines() if ln.startswith("|")]
    widths = {len(ln.replace("\\|", "").split("|")) for ln in table}
    assert len(table) == 8 and len(widths) == 2, table  # the headline table, and every metric


def test_the_memory_check_counts_every_image_a_run_holds():
    """CelebA's 162,770 training images (uint8) and 19,962 test images (float32) at 64×64×3,
    not 70,000 and none; a check that the images fail names dataset.n_train."""
    import torch

    import vaerun
    from vaerun import api
    from vaerun.assemble import check_memory

    cfg = api.compose(["dataset=celeba", "dataset.root=.", "trainer.epochs=0"])
    with pytest.raises(vaerun.ConfigError) as e:
        check_memory(cfg, torch.device("cpu"), have=0)
    gb = 64 * 64 * 3 * (162770 + 4 * 19962) / 1e9
    assert e.value.key == "dataset.n_train" and f"{gb:.3g} GB of images" in str(e.value)
    check_memory(cfg, torch.device("cpu"), have=int(gb * 1e9) + 10**9)  # the model fits in 1 GB



def test_the_memory_check_counts_the_runs_float32_in_a_float64_notebook():
    """A run is float32 whatever torch's default dtype (runtime.applied); its memory check
    measured the activations in the caller's float64, twice the bytes."""
    import torch

    import vaerun
    from vaerun.assemble import check_memory

    cfg = vaerun.compose(["model.hidden=[4000]", "trainer.batch_size=2000"])
    said = []
    for dtype in (torch.float32, torch.float64):
        torch.set_default_dtype(dtype)
        try:
            with pytest.raises(vaerun.ConfigError) as e:
                check_memory(cfg, torch.device("cpu"), have=0)
        finally:
            torch.set_default_dtype(torch.float32)
        said.append(str(e.value))
    assert said[0] == said[1], said

def test_images_that_do_not_fit_are_one_error_naming_dataset_n_train():
    """More images than the device holds (here 10^13 bytes of them): one ConfigError."""
    import dataclasses

    import numpy as np
    import torch

    import vaerun
    from vaerun import api
    from vaerun.assemble import build
    from vaerun.data import MNIST

    class Vast(MNIST):  # MNIST's config, with 10^13 bytes of images: a view of one image
        name = "test_vast"

        def arrays(self):
            one = np.zeros((1, 28, 28), np.uint8)
            return np.broadcast_to(one, (10**13 // 784, 28, 28)), one.repeat(2, 0)

    cfg = api.compose(["trainer.epochs=0"])
    cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, name="test_vast"))
    with pytest.raises(vaerun.ConfigError, match="do not fit in this cpu's free memory") as e:
        build(cfg, torch.device("cpu"))
    assert e.value.key == "dataset.n_train"


@pytest.mark.parametrize("device", ["cuda:abc", "cuda:-1", "cuda: 1", "cuda:"])
def test_a_device_name_torch_cannot_read_is_one_error(device):
    """torch.device() raises on these: on a GPU machine that was a traceback at the run's start."""
    import vaerun

    with pytest.raises(vaerun.ConfigError, match="choose auto, cpu, cuda, cuda:N or mps"):
        vaerun.compose([f"trainer.device='{device}'"])


@pytest.mark.parametrize("launcher, value", [
    ("joblib", "hydra.launcher.n_jobs=0"), ("submitit_local", "hydra.launcher.timeout_min=-1"),
    ("slurm", "hydra.launcher.cpus_per_task=0"), ("slurm", "hydra.launcher.array_parallelism=0")])
def test_a_launchers_count_out_of_bounds_is_one_line_before_anything_is_made(
        vaerun, tmp_path, capsys, launcher, value):
    """joblib's n_jobs=0 was a traceback from joblib (exit 1) after Hydra had made the sweep's
    folder and written multirun.yaml; submitit's timeout_min=-1 failed every job."""
    assert vaerun("train", "-m", f"hydra/launcher={launcher}", value, "beta=1,2",
                  f"hydra.sweep.dir={tmp_path / 'sweep'}") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {value} is not allowed: ") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "sweep").exists()
