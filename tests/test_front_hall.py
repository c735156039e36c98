"""The front hall: only the keys a user may set, whichever way they arrive (the command line, a
yaml of -cd or hydra.searchpath, a run's own records), resolved paths, vaerun's own marker, and
the Python API. Each break the attack campaign found: one `error:` line, exit 2, nothing run,
nothing of the user's changed (a listing of names, sizes and times before and after)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMALL, run_process

import vaerun

SRC = Path(vaerun.__file__).parent


def listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def refused(args: list[str], cwd: Path, says: str, env: dict | None = None) -> str:
    """Run `vaerun ARGS` and check it is refused with one line saying `says`, changing nothing
    under `cwd`."""
    before = listing(cwd)
    proc = run_process(args, cwd=cwd, env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert listing(cwd) == before
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("finished")
    run = where / "run"
    assert run_process(["train", *SMALL, "trainer.epochs=1", f"hydra.run.dir={run}"],
                       cwd=where).returncode == 0
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("line, says", [
    ("+hydra.job.env_set.PATH=/nowhere", "hydra.job.env_set"),
    ("hydra.job_logging.handlers.file.filename={victim}", "hydra.job_logging"),
])
def test_a_tampered_record_cannot_set_hydras_keys_on_a_plain_resume(finished, tmp_path, line,
                                                                    says):
    run, victim = copy_of(finished, tmp_path), tmp_path / "victim.txt"
    victim.write_text("mine")
    record = run / ".hydra" / "overrides.yaml"
    record.write_text(record.read_text() + f"- {line.format(victim=victim)}\n")
    refused(["train", "trainer.resume=true", "trainer.epochs=2", f"hydra.run.dir={run}"],
            tmp_path, says)
    assert victim.read_text() == "mine"


@pytest.mark.parametrize("name, how", [(".hydra/hydra.yaml", "symlink"), ("train.log", "symlink"),
                                       ("train.log", "hard link"), ("images", "symlink")])
@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_tampered_run_writes_through_no_link(finished, tmp_path, name, how, command):
    """Hydra rewrites .hydra/*.yaml and appends to train.log where they are, and a folder
    linked elsewhere takes vaerun's files: a link in a run folder is refused before anything
    is written, on a plain resume and on eval."""
    run, victim = copy_of(finished, tmp_path), tmp_path / "victim"
    if name == "images":
        victim.mkdir()
        (victim / "mine.txt").write_text("mine")
    else:
        victim.write_text("mine")
    target = run / name
    if target.is_dir():
        import shutil

        shutil.rmtree(target)
    else:
        target.unlink()
    target.symlink_to(victim) if how == "symlink" else os.link(victim, target)
    args = ["train", "trainer.resume=true", "trainer.epochs=2", f"hydra.run.dir={run}"] \
        if command == "train" else ["eval", f"run_dir={run}", "eval.iwae_k=5"]
    refused(args, tmp_path, "is a link")
    if name == "images":
        assert [p.name for p in victim.iterdir()] == ["mine.txt"]
    else:
        assert victim.read_text() == "mine"


def test_a_run_folder_is_locked_before_hydra_writes_into_it(tmp_path):
    """Two commands started together on one folder: the second was refused only once the first
    trained, after its Hydra had rewritten the first's .hydra/overrides.yaml. The lock is now
    taken as the command accepts the folder, before Hydra makes `.hydra/`."""
    from vaerun.rundir import RunDir

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "vaerun", "train", *SMALL,
                             f"hydra.run.dir={run}"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        while not (run / ".hydra").exists():  # the event: Hydra's first write
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.001)
        with pytest.raises(vaerun.Refused, match=f"in use by vaerun train \\(pid {proc.pid}\\)"):
            RunDir(run).check_free()
    finally:
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


def test_the_links_submitit_leaves_in_a_sweep_do_not_refuse_its_resume(tmp_path):
    """submitit's SLURM executor keeps each job's submission file as a link in its folder,
    `.submitit/` of the sweep (Hydra's default): a sweep it ran still resumes; `.submitit`
    itself a link is refused."""
    from vaerun.rundir import RunDir

    sweep = RunDir(tmp_path / "sweep")
    sweep.mark("sweep")
    job = sweep.path / ".submitit" / "123"
    job.mkdir(parents=True)
    (job / "123_submission.sh").write_text("#!/bin/bash\n")
    (sweep.path / ".submitit" / ".submission_file_ab12.sh").symlink_to(job / "123_submission.sh")
    sweep.check_place("hydra.sweep.dir", "sweep")
    (sweep.path / ".submitit").rename(tmp_path / "elsewhere")
    (sweep.path / ".submitit").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(vaerun.ConfigError, match="is a link"):
        sweep.check_place("hydra.sweep.dir", "sweep")


def test_job_logging_from_the_command_line_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    refused(["train", *SMALL, f"hydra.job_logging.handlers.file.filename={victim}",
             "+hydra.job_logging.handlers.file.mode=w"], tmp_path, "hydra.job_logging")
    assert victim.read_text() == "mine"


@pytest.mark.parametrize("flag", ["-cd", "searchpath"])
def test_job_logging_from_a_yaml_is_refused(tmp_path, flag):
    victim, conf = tmp_path / "victim.txt", tmp_path / "conf" / "experiment"
    victim.write_text("mine")
    conf.mkdir(parents=True)
    (conf / "evil.yaml").write_text(f"# @package _global_\nhydra:\n  job_logging:\n    handlers:\n"
                                    f"      file:\n        filename: {victim}\n        mode: w\n")
    where = ["-cd", str(tmp_path / "conf")] if flag == "-cd" else [
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]"]
    refused(["train", *SMALL, *where, "experiment=evil"], tmp_path, "hydra.job_logging")
    assert victim.read_text() == "mine"


EVIL = "import pathlib\npathlib.Path(__file__).with_name('imported').write_text('ran')\n"


@pytest.mark.parametrize("where", ["command line", "record", "hydra.yaml", "searchpath[1]"])
def test_a_search_path_imports_no_module(finished, tmp_path, where):
    """pkg:// and structured:// in hydra.searchpath make Hydra import a module (`python -m
    vaerun` has the working directory on sys.path): only file:// folders are taken, from the
    command line or a run's records (a resume takes its search path from Hydra's record)."""
    (tmp_path / "vaerun_evil.py").write_text(EVIL)
    line = "hydra.searchpath=[pkg://vaerun_evil]"
    if where in ("record", "hydra.yaml"):
        run = copy_of(finished, tmp_path)
        if where == "record":
            (run / ".hydra" / "overrides.yaml").write_text(f"- {line}\n")
        else:
            record = run / ".hydra" / "hydra.yaml"
            record.write_text(record.read_text().replace("  searchpath: []", "  searchpath:\n"
                                                         "  - pkg://vaerun_evil"))
            assert "pkg://vaerun_evil" in record.read_text()
        refused(["train", "trainer.resume=true", "trainer.epochs=2", f"hydra.run.dir={run}"],
                tmp_path, "hydra.searchpath")
    else:
        if where != "command line":
            line = f"hydra.searchpath=[file://{tmp_path},structured://vaerun_evil]"
        refused(["train", *SMALL, line], tmp_path, "hydra.searchpath")
    assert not (tmp_path / "imported").exists()


@pytest.mark.parametrize("given", [["-cd", "conf"], pytest.param(
    ["hydra.searchpath=[file://conf]"], marks=pytest.mark.slow)])  # one path: the other, -m slow
def test_a_run_of_ones_own_configs_resumes_with_its_folder_alone(tmp_path, given):
    """A run composed with a folder of one's own configs (-cd DIR, or hydra.searchpath, both
    relative here) resumed with its folder alone, as the interrupted run's last line says,
    failed: 'experiment=mine is not an option' (overrides.yaml holds experiment=mine, not the
    folder). The resume takes the folder from Hydra's record, from any working directory."""
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /likelihood: gaussian\n")
    run, elsewhere = tmp_path / "run", tmp_path / "notebooks"
    elsewhere.mkdir()
    train = run_process(["train", *SMALL, "trainer.epochs=1", *given, "experiment=mine",
                         f"hydra.run.dir={run}"], cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    proc = run_process(["train", "trainer.resume=true", "trainer.epochs=2",
                        f"hydra.run.dir={run}"], cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert m["epoch"] == 2 and "test/sse_term" in m  # still the Gaussian of experiment=mine
    (tmp_path / "conf").rename(tmp_path / "moved")  # was Hydra's UserWarning, then "not an option"
    refused(["train", "trainer.resume=true", "trainer.epochs=3", f"hydra.run.dir={run}"],
            elsewhere, f"was composed with the configs in {tmp_path / 'conf'} (its "
            ".hydra/hydra.yaml says), which is not a folder now: restore it, or give where they "
            "are now with -cd DIR")


@pytest.mark.parametrize("bad", ["  searchpath: 7", "  searchpath:\n  - [file:///x]"])
def test_a_hydra_record_of_other_shapes_is_one_line_on_a_resume(finished, tmp_path, bad):
    run = copy_of(finished, tmp_path)
    record = run / ".hydra" / "hydra.yaml"
    record.write_text(record.read_text().replace("  searchpath: []", bad))
    refused(["train", "trainer.resume=true", "trainer.epochs=2", f"hydra.run.dir={run}"],
            tmp_path, "is not a record of Hydra's (its searchpath or config_sources)")


def test_a_primary_yaml_of_yours_sets_no_search_path(tmp_path):
    """Hydra reads hydra.searchpath from the primary config (-cd DIR -cn NAME) before vaerun
    could check it: vaerun composes only its own primary config, so that one is never read."""
    (tmp_path / "vaerun_evil.py").write_text(EVIL)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "mine.yaml").write_text(
        "defaults:\n  - train\n  - _self_\nhydra:\n  searchpath: [pkg://vaerun_evil]\n")
    refused(["train", *SMALL, "-cd", str(tmp_path / "conf"), "-cn", "mine"], tmp_path, "mine")
    assert not (tmp_path / "imported").exists()


def test_a_symlink_into_a_system_folder_is_refused(tmp_path):
    (tmp_path / "link").symlink_to("/etc")
    refused(["train", *SMALL, f"hydra.run.dir={tmp_path / 'link' / 'vaerun'}"], tmp_path,
            "/etc/vaerun is a system folder")


def test_a_double_slash_path_is_resolved_before_it_is_checked(tmp_path):
    refused(["train", *SMALL, "hydra.run.dir=//var/tmp/vaerun-run"], tmp_path,
            "/var/tmp/vaerun-run is a system folder")
    assert not Path("/var/tmp/vaerun-run").exists()


@pytest.mark.parametrize("subdir", ["/var/tmp/vaerun-x", "."])
def test_the_sweep_subdir_is_vaeruns(tmp_path, subdir):
    refused(["train", "-m", *SMALL, "trainer.seed=1,2", f"hydra.sweep.dir={tmp_path / 's'}",
             f"hydra.sweep.subdir={subdir}"], tmp_path, "hydra.sweep.subdir")


def test_a_sweep_in_a_yaml_is_refused_saying_how_to_give_it(tmp_path):
    """Hydra's hydra.sweeper.params in an experiment yaml is one of Hydra's own keys (refused):
    the line says the command-line sweep that does the same."""
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      likelihood.sigma: 0.1,1\n")
    refused(["train", "-m", *SMALL, "-cd", str(tmp_path / "conf"), "experiment=mine"], tmp_path,
            "a sweep's values go on the command line: vaerun train -m likelihood.sigma=0.1,1")


def test_hydra_mode_is_refused_however_spelled(tmp_path):
    refused(["train", *SMALL, "hydra.mode=RunMode.MULTIRUN", "trainer.seed=1,2"], tmp_path,
            "hydra.mode")


@pytest.mark.parametrize("name", ["train.log", "metrics.json"])
def test_a_folder_with_a_foreign_log_or_record_is_not_taken_for_a_run(tmp_path, name):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / name).write_text('{"status": "finished"}' if name.endswith("json") else "my log")
    line = refused(["train", *SMALL, "trainer.resume=true", f"hydra.run.dir={mine}"], tmp_path,
                   "did not write")
    assert name in line


def test_a_report_never_writes_into_a_folder_it_did_not_make(finished, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    copy_of(finished, mine)
    (mine / "report.md").write_text("my own notes")
    refused(["report", f"sweep_dir={mine}"], tmp_path, "not a folder vaerun made")
    assert (mine / "report.md").read_text() == "my own notes"



def test_runs_of_a_folder_of_ones_own_are_reported_into_a_new_folder(tmp_path, capsys):
    """docs/python.md's way: runs trained with vaerun.train into a folder of the user's, which
    carries no vaerun marker, so their report was refused with no way round it. out= names a
    new folder for it (or one of vaerun's reports), and the user's folder is left as it was."""
    from vaerun.cli import main

    mine = tmp_path / "mine"
    for sigma in ("0.1", "1"):
        vaerun.train(["likelihood=gaussian", f"likelihood.sigma={sigma}", *SMALL,
                      "trainer.epochs=1", "eval.quality_images=0"], run_dir=mine / f"s={sigma}")
    (mine / "notes.txt").write_text("mine")
    before = listing(mine)
    with pytest.raises(vaerun.UserError, match="out=DIR"):
        vaerun.report(mine)
    paths = vaerun.report(mine, out=tmp_path / "report")
    assert {p.name for p in paths} >= {"report.md", "report.csv", "sweep.png"}
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| likelihood.sigma |" in text and "| 0.1 | 1 |" in text and "| 1 | 1 |" in text
    assert main(["report", f"sweep_dir={mine}", f"out={tmp_path / 'report'}"]) == 0  # again
    assert main(["report", f"sweep_dir={mine}", f"out={mine}"]) == 2  # a folder of yours
    assert "out=" in capsys.readouterr().err and listing(mine) == before
    assert main(["report", f"sweep_dir={mine}", f"out={mine / 's=1'}"]) == 2  # a run
    assert "is a vaerun run, not a report" in capsys.readouterr().err and listing(mine) == before


@pytest.mark.parametrize("key", ["hydra.launcher.backend=threading", "hydra.launcher.prefer=threads",
                                 "hydra.launcher.require=sharedmem"])
def test_jobs_as_threads_of_one_process_are_refused(tmp_path, key):
    """joblib's threads run a sweep's jobs in one process, where they share torch's thread
    count, default dtype and random streams: two runs of one seed could differ."""
    refused(["train", "-m", "hydra/launcher=joblib", key, "trainer.seed=1,2", *SMALL], tmp_path,
            key.split("=")[0])

def test_a_resolver_built_from_an_interpolation_is_refused(tmp_path):
    env = {**os.environ, "VAERUN_SECRET": "s3cr3t"}
    refused(["train", *SMALL, "loss.name=env", "loss.written='${oc.${loss.name}:VAERUN_SECRET}'"],
            tmp_path, "resolver", env=env)


def test_no_private_api_of_hydra_or_submitit():
    text = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    assert not re.findall(r"hydra\._internal|_return_value|_EXECUTOR", text)


# -- the Python API -----------------------------------------------------------------------------
def test_two_trainings_in_one_process_return_their_metrics_and_leave_it_as_it_was(tmp_path,
                                                                                  monkeypatch):
    import logging

    import torch
    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.chdir(tmp_path)
    mine = lambda signum, frame: None  # noqa: E731
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
    old = {s: signal.signal(s, mine) for s in sigs}
    root = logging.getLogger()
    handlers, threads = root.handlers[:], torch.get_num_threads()
    try:
        a = vaerun.train([*SMALL, "trainer.epochs=1"], run_dir=tmp_path / "a")
        b = vaerun.train([*SMALL, "trainer.epochs=1", "likelihood=gaussian"], run_dir="b")
        assert a["status"] == b["status"] == "finished"
        assert a["test/elbo"] != b["test/elbo"] and "test/sigma" in b
        assert all(signal.getsignal(s) is mine for s in sigs)
        assert root.handlers == handlers and torch.get_num_threads() == threads
        assert not GlobalHydra.instance().is_initialized()
        again = vaerun.evaluate(tmp_path / "a", ["eval.iwae_k=3"])
        assert again["test/iwae_k"] == 3  # named as train's metrics and metrics.json name it
        recorded = json.loads((tmp_path / "a" / "metrics.json").read_text())
        assert again["test/nll_iwae"] == recorded["test/nll_iwae"] != a["test/nll_iwae"]
    finally:
        for s, h in old.items():
            signal.signal(s, h)



def test_a_call_leaves_the_callers_random_stream_as_it_was(tmp_path):
    """A notebook seeds torch, trains, then draws: the draw must be the one its seed gives (a
    run seeds torch's global generator with trainer.seed, and an evaluation draws from it)."""
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    vaerun.train([*SMALL, "trainer.epochs=1", "trainer.seed=7"], run_dir=tmp_path / "a")
    vaerun.evaluate(tmp_path / "a", ["eval.iwae_k=3"])
    assert torch.equal(torch.rand(3), expected)


def test_a_notebooks_torch_defaults_give_the_same_run_and_are_handed_back(tmp_path):
    """torch.set_default_dtype(torch.float64), common in a scientific notebook, made every run
    fail at its first step (float weights against float images), and Hydra then raised
    SystemExit(1); torch.set_default_device (here "meta", on a GPU machine often "cuda") put
    the model where the data are not; a call within no_grad or inference_mode had no
    gradients to train with, and one within torch.autocast trained in bfloat16 (test/elbo
    -551.5 against -497.9 nats)."""
    import torch

    args = [*SMALL, "trainer.epochs=1", "eval.iwae_k=5"]
    plain = vaerun.train(args, run_dir=tmp_path / "plain")
    torch.set_default_dtype(torch.float64)
    torch.set_default_device("meta")
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            other = vaerun.train(args, run_dir=tmp_path / "other")  # (no_grad alike)
            assert torch.is_autocast_enabled("cpu")
        assert torch.get_default_dtype() == torch.float64
        assert torch.get_default_device() == torch.device("meta")
    finally:
        torch.set_default_dtype(torch.float32)
        torch.set_default_device(None)
    assert other["test/elbo"] == plain["test/elbo"]
    assert other["test/nll_iwae"] == plain["test/nll_iwae"]


def numbers(run: dict) -> dict:
    """A run's metrics but its timings."""
    return {k: v for k, v in run.items() if k.startswith(("test/", "train/"))
            and not k.endswith("seconds")}


def test_a_notebooks_backend_settings_give_the_same_run_and_are_handed_back(tmp_path):
    """torch.set_float32_matmul_precision("medium") (or "high"), which Lightning's warning tells
    every GPU notebook to call, carried into a run: on a CPU with AVX-512 BF16 its matrix
    products ran in bfloat16 (on a GPU in TF32), so the notebook's numbers were not the
    command's (test/kl moved by 1e-7). So did torch.backends.mkldnn.enabled = False (a
    workaround some notebooks carry: the CPU's transposed convolutions took another path, 1e-6
    a layer) and cudnn.benchmark = True (the usual advice for speed: a GPU's convolution
    algorithms chosen by timing them). A run computes as a fresh process does; the notebook's
    settings are handed back, whichever of torch's two ways set the precision."""
    import torch

    args = [*SMALL, "model=conv", "trainer.epochs=1", "eval.iwae_k=5"]
    plain = vaerun.train(args, run_dir=tmp_path / "plain")
    assert torch.get_float32_matmul_precision() == "highest"
    try:
        torch.set_float32_matmul_precision("medium")
        torch.backends.mkldnn.enabled, torch.backends.cudnn.benchmark = False, True
        medium = vaerun.train(args, run_dir=tmp_path / "medium")
        assert torch.get_float32_matmul_precision() == "medium"
        assert (torch.backends.mkldnn.enabled, torch.backends.cudnn.benchmark) == (False, True)
        torch.backends.mkldnn.fp32_precision = "bf16"  # torch's newer way, one per backend
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        backends = torch.backends.mkldnn.matmul, torch.backends.mkldnn, torch.backends.cudnn.conv
        before = [b.fp32_precision for b in backends]
        bf16 = vaerun.train(args, run_dir=tmp_path / "bf16")
        assert [b.fp32_precision for b in backends] == before
    finally:  # a fresh process's
        torch.set_float32_matmul_precision("highest")
        torch.backends.mkldnn.fp32_precision = torch.backends.cudnn.fp32_precision = "none"
        for b in (torch.backends.mkldnn.matmul, torch.backends.cuda.matmul):
            b.fp32_precision = "none"
        torch.backends.cudnn.conv.fp32_precision = torch.backends.cudnn.rnn.fp32_precision = "tf32"
        torch.backends.mkldnn.enabled, torch.backends.cudnn.benchmark = True, False
    assert torch.get_float32_matmul_precision() == "highest"
    assert numbers(medium) == numbers(plain)
    assert numbers(bf16) == numbers(plain)


def test_a_run_is_deterministic_as_its_config_says_not_as_the_notebook_left_torch(tmp_path):
    """torch.use_deterministic_algorithms(True), set by a notebook for its own work, carried
    into a run of trainer.deterministic=false: on a GPU without CUBLAS_WORKSPACE_CONFIG its
    first matrix product raises, so every run failed. A run is deterministic as its config
    says; the notebook's setting is handed back."""
    import torch

    seen = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda *_: seen.append(torch.are_deterministic_algorithms_enabled()))
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        vaerun.train([*SMALL, "trainer.epochs=1", "eval.iwae_k=0", "eval.quality_images=0"],
                     run_dir=tmp_path / "run")
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        hook.remove()
        torch.use_deterministic_algorithms(False)
    assert seen and not any(seen)


def test_a_bug_in_a_run_is_raised_to_python_as_itself_never_system_exit(tmp_path, monkeypatch,
                                                                        capsys):
    """An error no check foresaw (here one put into the loop) reached Hydra, which printed it
    and raised SystemExit(1): from Python, the error itself is raised, with its traceback, and
    the run's log holds it too; the command line says it in one line, exit 1."""
    from vaerun import loop

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(loop, "train", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        vaerun.train([*SMALL, "trainer.epochs=1"], run_dir=tmp_path / "run")
    assert "RuntimeError: a bug" in (tmp_path / "run" / "train.log").read_text()
    from vaerun.cli import main

    assert main(["train", *SMALL, f"hydra.run.dir={tmp_path / 'cli'}"]) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        "error: RuntimeError: a bug, an error vaerun did not foresee")
    monkeypatch.undo()  # a bug once the run has begun: its record says failed, not running
    monkeypatch.setattr(loop, "evaluate_run", broken)
    assert main(["train", *SMALL, "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'late'}"]) == 1
    record = json.loads((tmp_path / "late" / "metrics.json").read_text())
    assert (record["status"], record["exit_code"]) == ("failed", 1)
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {record['error']}"


def test_calls_from_two_threads_run_one_at_a_time(tmp_path):
    """Hydra's state and torch's settings are the process's: the second of two trainings
    started in threads failed with "GlobalHydra is already initialized"."""
    import threading

    got = {}

    def train(name: str, *extra: str) -> None:
        try:
            got[name] = vaerun.train([*SMALL, "trainer.epochs=1", *extra], run_dir=tmp_path / name)
        except Exception as e:  # noqa: BLE001 (the test's: what it raised, compared below)
            got[name] = e

    threads = [threading.Thread(target=train, args=("a",)),
               threading.Thread(target=train, args=("b", "likelihood=gaussian")),
               threading.Thread(target=lambda: got.setdefault("cfg", vaerun.compose(["beta=2"])))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got["a"]["status"] == got["b"]["status"] == "finished", got
    assert "test/sigma" in got["b"] and got["cfg"].beta == 2.0

def test_bad_input_raises_a_user_error_never_system_exit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(vaerun.ConfigError, match="did you mean trainer.epochs"):
        vaerun.train(["trainer.epoch=3"])
    with pytest.raises(vaerun.ConfigError, match="hydra.job.env_set"):
        vaerun.compose(["+hydra.job.env_set.X=1"])
    for call in (lambda: vaerun.train("likelihood=gaussian"),  # a string, not a list of them
                 lambda: vaerun.compose(["-m", "trainer.seed=1,2"])):
        with pytest.raises(vaerun.UserError, match="a list of strings|one run"):
            call()
    assert list(tmp_path.iterdir()) == []



@pytest.mark.parametrize("call", [
    lambda: vaerun.train(["--cfg", "job"]),  # ran nothing, then a ValueError
    lambda: vaerun.train(["--info=defaults"]),
    lambda: vaerun.train(["--help"]),  # Hydra's SystemExit(0)
    lambda: vaerun.train(["--hydra-help"]),
    lambda: vaerun.compose(["-cd"]),  # took compose's own --cfg for the folder (the line
    # then said "missing EQUAL")
    lambda: vaerun.train(None),  # TypeErrors, and "" a folder: the working directory
    lambda: vaerun.train(["trainer.epochs=0"], run_dir=""),
    lambda: vaerun.train(["trainer.epochs=0"], run_dir=123),
    lambda: vaerun.evaluate(None),
    lambda: vaerun.evaluate(""),
    lambda: vaerun.report(""),
    lambda: vaerun.implied_sigma({"trainer": 1})])
def test_odd_arguments_from_python_raise_a_user_error(tmp_path, monkeypatch, call):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".vaerun").write_text('{"vaerun": 1, "kind": "sweep"}')  # even where "" is one
    with pytest.raises(vaerun.UserError, match="give|shows something|-cd takes a value"):
        call()
    assert [p.name for p in tmp_path.iterdir()] == [".vaerun"]

def test_the_loss_pieces_of_a_line_of_ones_own():
    cfg = vaerun.compose(["recipe=antixk"])
    assert vaerun.implied_sigma(cfg) == pytest.approx((0.00025 * 784 / 2) ** 0.5)
    assert vaerun.implied_beta(vaerun.compose(["beta=0.5"])) == 0.5
    a_rec, a_kl = vaerun.objective(cfg).weights(cfg.trainer.batch_size)
    assert a_rec == pytest.approx(1 / (128 * 784)) and a_kl == pytest.approx(0.00025 / 128)


def test_the_readmes_python_example_runs_as_written(tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| likelihood.sigma |" in (tmp_path / "outputs/python-report/report.md").read_text()


def test_a_ctrl_c_in_a_training_raises_interrupted_and_the_run_resumes(tmp_path, caplog):
    """A stop signal during `vaerun.train` raised Hydra's SystemExit(130), which the API
    promises never to do: it raises vaerun.Interrupted once the checkpoint is written, and the
    same call with trainer.resume=true finishes the run."""
    import logging

    class CtrlC(logging.Handler):  # Ctrl-C as the first epoch ends
        def emit(self, record):
            if record.getMessage().startswith("epoch 1/3: the test set's terms"):
                os.kill(os.getpid(), signal.SIGINT)

    args = [*SMALL, "trainer.epochs=3"]
    logging.getLogger("vaerun").addHandler(handler := CtrlC())
    try:
        with pytest.raises(vaerun.Interrupted) as stopped:
            vaerun.train(args, run_dir=tmp_path / "run")
    finally:
        logging.getLogger("vaerun").removeHandler(handler)
    assert stopped.value.exit_code == 130
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "interrupted"
    with caplog.at_level(logging.WARNING, logger="vaerun"):  # used as it stands, and said so
        vaerun.evaluate(tmp_path / "run", ["eval.iwae_k=2", "eval.quality_images=0"])
    assert f"the run in {tmp_path / 'run'} is interrupted after 1 of its 3 epochs (step " in \
        caplog.text
    got = vaerun.train([*args, "trainer.resume=true"], run_dir=tmp_path / "run")
    assert (got["status"], got["epoch"]) == ("finished", 3)


def test_a_stop_while_a_sweep_is_checked_ends_it_before_anything_is_made(tmp_path, caplog):
    """Checking a sweep of many jobs takes seconds (each composed once): a Ctrl-C then was
    only acted on once Hydra had made the sweep's folder and job 0's records, and job 0 said
    'nothing was written' into a folder it had just made. It ends the command there."""
    from vaerun import api
    from vaerun.signals import StopRequests

    sweep = tmp_path / "sweep"
    with StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # its handler runs before the next line
        assert stop.requested
        with pytest.raises(vaerun.Interrupted) as stopped:
            api.run_train(["-m", *SMALL, "trainer.seed=1,2,3", f"hydra.sweep.dir={sweep}"], stop)
    assert stopped.value.exit_code == 130 and not sweep.exists()
    assert "no job began, nothing written" in caplog.text


def test_a_stop_during_a_report_ends_it_with_nothing_written(finished, tmp_path):
    """`vaerun report` of a large sweep draws for seconds (a figure each): a Ctrl-C was only
    acted on once every file was written. It ends the report between figures, before any."""
    from vaerun import api
    from vaerun.signals import StopRequests

    with StopRequests(saves="") as stop:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(vaerun.Interrupted):
            api.report(finished, tmp_path / "report", stop)
    assert not (tmp_path / "report").exists()


def test_a_folder_given_as_run_dir_is_named_run_dir_when_refused(tmp_path):
    """A refused `run_dir=` was named `hydra.run.dir`, a key the Python caller never wrote."""
    (tmp_path / "etc").symlink_to("/etc")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train.log").write_text("my notes")
    for given, why in ((tmp_path / "etc" / "x", "is a system folder"),
                       (tmp_path / "mine", "holds files vaerun did not write")):
        with pytest.raises(vaerun.ConfigError) as e:
            vaerun.train(["trainer.epochs=0"], run_dir=given)
        assert str(e.value).startswith(f"run_dir='{given}' is not allowed: ") and e.value.key == \
            "run_dir" and why in str(e.value) and "hydra" not in str(e.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["etc", "mine", "train.log"]
    run = tmp_path / "run"  # a run's own refusals name it run_dir too
    vaerun.train([*SMALL, "trainer.epochs=1", "eval.iwae_k=0", "eval.quality_images=0"],
                 run_dir=run)
    with pytest.raises(vaerun.Refused) as e:
        vaerun.train([*SMALL, "trainer.epochs=1"], run_dir=run)
    assert str(e.value) == f"{run} already holds a run; add trainer.resume=true to continue " \
        "it, or choose another run_dir"


def test_a_saved_run_loads_as_its_model_data_and_config(tmp_path):
    """A notebook had no way to use a trained model (sample, encode its own images): vaerun.load
    gives the VAE, its data and config. Its q(z|x) on the test images gives the run's own
    test/kl, computed here with torch.distributions; the run's files are left as they were."""
    import torch
    from torch.distributions import kl_divergence

    run = tmp_path / "run"
    m = vaerun.train([*SMALL, "trainer.epochs=1", "eval.iwae_k=0", "eval.quality_images=0",
                      "likelihood=gaussian_learned"], run_dir=run)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # a scientific notebook's
    try:
        got = vaerun.load(run)
    finally:
        torch.set_default_dtype(default)
    assert not got.vae.training and got.cfg.likelihood.name == "gaussian_learned"
    x = got.data.test
    assert x.shape == (256, 784) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    with torch.no_grad():
        q = got.vae.posterior(x)
        kl = kl_divergence(q, got.vae.prior()).mean().item()
        z = got.vae.prior().sample((5,))
        means = got.vae.likelihood.mean(got.vae.decode(z))
    assert kl == pytest.approx(m["test/kl"], rel=1e-5)
    assert means.shape == (5, 784) and means.dtype == torch.float32
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    with pytest.raises(vaerun.UserError, match="run_dir=.* holds no checkpoint"):
        vaerun.load(tmp_path)
    (tmp_path / ".vaerun").write_text('{"vaerun": 1, "kind": "sweep"}')
    with pytest.raises(vaerun.UserError, match=r"is a sweep, whose runs are its folders: give one$"):
        vaerun.load(tmp_path)
