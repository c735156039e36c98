"""Nothing lost, nothing mislabelled, nothing run that was not asked for: each hostile case of
issue #14, provoked for real (signals to real processes, a full disk, read-only folders)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SMALL, Lines, run_process

from vaerun.logs import RunLog

# a run whose end-of-run evaluation lasts seconds (k = 2000 on 500 images)
LONG_EVAL = ["dataset.n_train=512", "dataset.n_test=500", "trainer.epochs=1",
             "trainer.batch_size=64", "eval.iwae_k=2000", "trainer.threads=1"]


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def agree(run: Path) -> None:
    """The checkpoint loads, and metrics.json says the same epoch and step."""
    s, m = state(run), metrics(run)
    assert (m["epoch"], m["step"]) == (s["epoch"], s["step"]), (m, s["status"])


def start(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "vaerun", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for(path: Path, text: str, timeout: float = 120) -> None:
    """Poll `path` until it holds `text` (an event in a file); fail saying what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.02)
    raise AssertionError(f"{text!r} never appeared in {path} within {timeout} s")


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# -- 1, 8: signals at the end, twice, and at the start -----------------------------------------
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGTERM, marks=pytest.mark.slow),
                                 signal.SIGINT])  # one handler: SIGTERM's case with -m slow
def test_a_signal_during_the_final_evaluation_keeps_the_training(tmp_path, sig):
    run, full = tmp_path / "run", tmp_path / "full"
    proc = start(["train", *LONG_EVAL, f"hydra.run.dir={run}"], tmp_path)
    wait_for(run / "train.log", "test: IWAE bound")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig and "Traceback" not in err, err
    s = state(run)
    assert s["epoch"] == 1 and s["step"] == 8 and s["status"] == "interrupted"  # trained
    assert metrics(run)["status"] == "interrupted"
    agree(run)
    # the resumed and the uninterrupted run evaluate with fewer samples: the training is compared
    quick = [*LONG_EVAL, "eval.iwae_k=20"]
    resumed = run_process(["train", *quick, f"hydra.run.dir={run}", "trainer.resume=true"],
                          cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert run_process(["train", *quick, f"hydra.run.dir={full}"], cwd=tmp_path).returncode == 0
    a, b = metrics(run), metrics(full)
    for k in ("test/elbo", "test/nll_iwae", "test/kl", "test/active_units"):
        assert a[k] == pytest.approx(b[k], rel=1e-6), k


def test_two_signals_a_few_ms_apart_exit_with_the_first(tmp_path):
    run = tmp_path / "run"
    proc = start(["train", *LONG_EVAL, "trainer.epochs=3", "dataset.n_train=20000",
                  "trainer.progress_seconds=0", f"hydra.run.dir={run}"], tmp_path)
    out = Lines(proc.stdout)
    out.wait(r"epoch 1/3: 20/\d+ steps")  # training, by its own progress line
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.005)  # the gap between the two signals, not a wait for anything
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    out.rest()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    agree(run)
    assert metrics(run)["status"] == "interrupted"


def test_a_command_hands_the_signal_handlers_back_and_the_first_signal_wins():
    """StopRequests for a block: the first signal handled sets the stop, a later one does not
    change it; afterwards the handlers are the caller's again, and a new block starts clean."""
    from vaerun.signals import StopRequests

    mine = lambda signum, frame: None  # noqa: E731
    before = {s: signal.signal(s, mine) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    try:
        with StopRequests() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGTERM
        assert all(signal.getsignal(s) is mine for s in before)
        with StopRequests() as again:
            assert not again.requested
        with StopRequests(then_ignore=True):  # the `vaerun` command's own process
            pass
        assert all(signal.getsignal(s) == signal.SIG_IGN for s in before)
    finally:
        for s, h in before.items():
            signal.signal(s, h)



def test_a_signal_during_start_up_is_a_clean_stop(tmp_path):
    run = tmp_path / "run"
    proc = start(["train", *SMALL, f"hydra.run.dir={run}"], tmp_path)
    deadline = time.monotonic() + 120
    while not run.exists():  # start-up: the config checked, the run directory just taken
        assert time.monotonic() < deadline and proc.poll() is None, "no run directory appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err
    if (run / "checkpoints" / "last.pt").exists():
        agree(run)
    else:  # the log says what really exists (#27 B9)
        assert "nothing was written" in out + err and "checkpoint written" not in out + err


# -- 2: a full disk, a read-only folder -----------------------------------------------------------
def mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    ok = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True).returncode == 0
    return ok


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "64m"):
        pytest.skip("needs root and mount (a tmpfs to fill up)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_is_one_error_line_and_keeps_the_last_checkpoint(small_disk, tmp_path):
    run = small_disk / "run"
    proc = start(["train", "dataset.n_train=30000", "dataset.n_test=256", "trainer.epochs=2",
                  "trainer.batch_size=64", "eval.iwae_k=2", "model.hidden=64",
                  f"hydra.run.dir={run}"], tmp_path)
    wait_for(run / "train.log", "training ")
    with open(small_disk / "filler", "wb") as f:  # fill the disk while epoch 1 trains
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 2, err
    line = one_error_line(err)
    assert "No space left on device" in line and "trainer.resume=true" in line
    agree(run)  # the checkpoint of before loads, and metrics.json says the same
    assert metrics(run)["status"] != "finished"
    assert not list((run / "checkpoints").glob(".*.vaerun-*.tmp"))


@pytest.fixture
def read_only_run(tmp_path):
    """A finished run on a file system then made read-only (root: a remounted tmpfs)."""
    disk = tmp_path / "ro"
    if not mount_tmpfs(disk, "64m"):
        pytest.skip("needs root and mount (a read-only file system)")
    run = disk / "run"
    assert run_process(["train", *SMALL, "trainer.epochs=1", f"hydra.run.dir={run}"],
                       cwd=tmp_path).returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    yield run
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.parametrize("command", [
    ["train", *SMALL, "trainer.epochs=2", "trainer.resume=true", "hydra.run.dir={run}"],
    ["eval", "run_dir={run}", "eval.iwae_k=3"],
    ["report", "sweep_dir={run}"],
], ids=["train", "eval", "report"])
def test_a_read_only_run_directory_is_one_error_line(read_only_run, tmp_path, command):
    proc = run_process([a.format(run=read_only_run) for a in command], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert "Read-only file system" in line or "is not writable" in line


def test_the_checkpoint_is_written_before_the_record_says_finished(vaerun, tmp_path):
    run = tmp_path / "run"
    assert vaerun("train", *SMALL, f"hydra.run.dir={run}") == 0
    ckpt, record = run / "checkpoints" / "last.pt", run / "metrics.json"
    assert ckpt.stat().st_mtime_ns <= record.stat().st_mtime_ns
    assert state(run)["status"] == "finished" == metrics(run)["status"]


# -- 3: a refused command changes nothing ----------------------------------------------------
def test_a_refused_command_leaves_the_run_directory_untouched(vaerun, tmp_path):
    run = tmp_path / "run"
    base = ["likelihood=gaussian", *SMALL, "trainer.epochs=1", f"hydra.run.dir={run}"]
    assert vaerun("train", *base, "likelihood.sigma=0.1") == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert vaerun("train", *base, "likelihood.sigma=5") == 2  # holds a run
    assert vaerun("train", *base, "likelihood.sigma=5", "trainer.resume=true") == 2  # another
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before
    assert "likelihood.sigma=0.1" in (run / ".hydra" / "overrides.yaml").read_text()


# -- 4: one command per run directory; every test metric knows its step -------------------------
def test_an_eval_or_a_resume_during_training_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    # 30 epochs: longer than the two commands take (3 ended first under load), stopped below
    proc = start(["train", "dataset.n_train=20000", "dataset.n_test=256", "trainer.epochs=30",
                  "trainer.batch_size=64", "eval.iwae_k=2", f"hydra.run.dir={run}"], tmp_path)
    try:
        wait_for(run / "train.log", "training ")
        for cmd in (["eval", f"run_dir={run}"],
                    ["train", "dataset.n_train=20000", "dataset.n_test=256", "trainer.epochs=30",
                     "trainer.batch_size=64", "eval.iwae_k=2", f"hydra.run.dir={run}",
                     "trainer.resume=true"]):
            other = run_process(cmd, cwd=tmp_path)
            assert other.returncode == 2
            line = one_error_line(other.stderr)
            assert "is in use by vaerun train" in line and f"pid {proc.pid}" in line
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    agree(run)


def test_a_metric_of_an_older_step_is_dropped(tmp_path):
    log = RunLog(tmp_path)
    log.update_split("test", {"elbo": -100.0, "nll_iwae": 95.0}, step=10)
    log.update_split("test", {"elbo": -99.0}, step=20)
    log.close()
    m = metrics(tmp_path)
    assert m["test/elbo"] == -99.0 and "test/nll_iwae" not in m
    assert m["steps"] == {"test/elbo": 20}


def test_every_test_metric_of_a_run_belongs_to_its_last_step(vaerun, tmp_path):
    run = tmp_path / "run"
    assert vaerun("train", *SMALL, f"hydra.run.dir={run}") == 0
    args = [*SMALL[:2], "trainer.epochs=3", *SMALL[3:], f"hydra.run.dir={run}",
            "trainer.resume=true"]
    assert vaerun("train", *args) == 0
    m = metrics(run)
    tests = [k for k in m if k.startswith("test/")]
    assert set(m["steps"]) == set(tests) and set(m["steps"].values()) == {m["step"]} == {24}


# -- 5, 6, 7: resumes that would lie ---------------------------------------------------------
def forge(run: Path, **changes) -> None:
    s = state(run)
    s.update(changes)
    torch.save(s, run / "checkpoints" / "last.pt")


def test_resuming_past_the_asked_epochs_is_refused(vaerun, tmp_path, capsys):
    run = tmp_path / "run"
    assert vaerun("train", *SMALL, f"hydra.run.dir={run}") == 0
    forge(run, epoch=1, batch=3, step=11, status="interrupted",
          perm=torch.randperm(512))  # mid-epoch 2
    capsys.readouterr()
    assert vaerun("train", *SMALL[:2], "trainer.epochs=1", *SMALL[3:], f"hydra.run.dir={run}",
                  "trainer.resume=true") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "begun epoch 2" in line and "trainer.epochs=2 or more" in line


def test_a_checkpoint_of_another_device_resumes_here(vaerun, tmp_path):
    """Every stream a checkpoint holds is a CPU one: a run checkpointed on CUDA (as a SLURM
    requeue onto another kind of node would find it) continues on the CPU."""
    run = tmp_path / "run"
    assert vaerun("train", *SMALL, "trainer.epochs=1", f"hydra.run.dir={run}") == 0
    forge(run, device="cuda", status="interrupted")
    assert vaerun("train", *SMALL, f"hydra.run.dir={run}", "trainer.resume=true") == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "finished" and m["epoch"] == 2


def test_fixed_test_noise_is_drawn_on_the_cpu_whatever_the_device():
    from vaerun.data import MNIST, MNISTBinary

    grey = MNIST(MNIST.Config(n_train=1, n_test=64))
    binary = MNISTBinary(MNISTBinary.Config(n_train=1, n_test=64))
    deq = MNIST(MNIST.Config(n_train=1, n_test=64, dequantize=True))
    cpu = torch.Generator().manual_seed(0)
    assert torch.equal(binary.test, torch.bernoulli(grey.test, generator=cpu))
    u = torch.rand(grey.test.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(deq.test, (grey.test * 255 + u) / 256)


def test_stale_temporary_files_are_cleaned_on_the_next_start(vaerun, tmp_path):
    run = tmp_path / "run"
    assert vaerun("train", *SMALL, "trainer.epochs=1", f"hydra.run.dir={run}") == 0
    stale = [run / "checkpoints" / ".last.pt.vaerun-k1ll3d.tmp", run / ".metrics.json.vaerun-x.tmp"]
    theirs = [run / ".important.tmp", run / "checkpoints" / ".my.tmp"]  # not vaerun's pattern
    for p in stale + theirs:
        p.write_bytes(b"half a checkpoint")
    assert vaerun("train", *SMALL, f"hydra.run.dir={run}", "trainer.resume=true") == 0
    assert not any(p.exists() for p in stale)
    assert all(p.read_bytes() == b"half a checkpoint" for p in theirs)


# -- 9, 10: nothing run that was not asked for -------------------------------------------------
INJECTIONS = [
    "+optimizer.x._target_=pathlib.Path.write_text +optimizer.x.self={f} +optimizer.x.data=x",
    "+optimizer.x._target_=builtins.open +optimizer.x.file={f} +optimizer.x.mode=w",
    "optimizer._target_=builtins.open +optimizer.file={f} +optimizer.mode=w",
    "+hydra.callbacks.x._target_=pathlib.Path.touch +hydra.callbacks.x.self={f}",
    "+hydra.job_logging.handlers.x.class=pathlib.Path.touch +hydra.job_logging.handlers.x.self={f}",
    "+new.key=1",
    "+typo={f}",
    "eval.iwae_k=${{oc.env:NOPE}}",
    "optimizer.momentum=-1 optimizer=sgd",
]


@pytest.mark.parametrize("args", INJECTIONS)
def test_injections_are_refused_and_write_nothing(tmp_path, args):
    target = tmp_path / "pwned"
    proc = run_process(["train", *SMALL, *args.format(f=target).split()], cwd=tmp_path,
                       env={**os.environ, "FOO": "5"})
    assert proc.returncode == 2, proc.stderr
    one_error_line(proc.stderr)
    assert not target.exists() and not (tmp_path / "outputs").exists()


def test_environment_values_never_reach_the_checkpoint(tmp_path):
    proc = run_process(["train", *SMALL, "eval.iwae_k=${oc.env:FOO}"], cwd=tmp_path,
                       env={**os.environ, "FOO": "5"})
    assert proc.returncode == 2 and "environment variables" in one_error_line(proc.stderr)


# -- 11: one line, never a traceback -------------------------------------------------------------
ONE_LINE = {
    "trainer.seed=99999999999999999999": "trainer.seed",
    "eval.seed=99999999999999999999": "eval.seed",
    "model.hidden=10000000000": "GB",
    "beta=true": "beta",
    "optimizer.lr=true": "optimizer.lr",
    "dataset.n_test=1": "dataset.n_test",
    "dataset.root=/nonexistent/vaerun-data": "dataset.root",
    "-cn train -m likelihood=gaussian likelihood.sigma=0.1,0": "likelihood.sigma",
    "--config-name=train likelihood=gaussian likelihood.sigma=0": "likelihood.sigma",
    "trainer.epoch=3": "did you mean trainer.epochs",
    "likelihood=gausian": "did you mean gaussian",
    "hydra.run.dir=outputs/σ1": "quote",
    "--experimental-rerun pickle.pkl": "--experimental-rerun is not a flag vaerun passes",
    "-sc install=bash": "-sc is not a flag vaerun passes",
    "likelihood=gaussian likelihood.sigma=0.1 -m likelihood.sigma=0.1,0": "likelihood.sigma",
    "-m likelihood=gaussian likelihood.sigma=0.1,1 --help": "--multirun and --help together",
}


@pytest.mark.parametrize("args", list(ONE_LINE))
def test_bad_input_is_one_line_naming_the_fix(tmp_path, args):
    words = args.split()  # flags and overrides in any order (vaerun sorts them for Hydra)
    proc = run_process(["train", *SMALL, *words], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert ONE_LINE[args] in one_error_line(proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "outputs").exists() and not Path("/nonexistent").exists()


@pytest.fixture
def finished(vaerun, tmp_path):
    run = tmp_path / "run"
    assert vaerun("train", *SMALL, "trainer.epochs=1", f"hydra.run.dir={run}") == 0
    return run


@pytest.mark.parametrize("damage", ["missing_keys", "wrong_shapes", "not_a_checkpoint"])
@pytest.mark.parametrize("command", ["eval", "resume"])
def test_a_checkpoint_that_does_not_fit_is_one_line(finished, tmp_path, damage, command):
    s = state(finished)
    if damage == "missing_keys":
        s["model"] = {k: v for k, v in s["model"].items() if "decoder" not in k}
    elif damage == "wrong_shapes":
        s["model"] = {k: v[..., :3] for k, v in s["model"].items()}
    else:
        s = {"weights": torch.zeros(3)}
    torch.save(s, finished / "checkpoints" / "last.pt")
    args = (["eval", f"run_dir={finished}"] if command == "eval" else
            ["train", *SMALL, "trainer.epochs=2", f"hydra.run.dir={finished}",
             "trainer.resume=true"])
    proc = run_process(args, cwd=tmp_path)
    assert proc.returncode == 2 and "last.pt" in one_error_line(proc.stderr)


@pytest.mark.parametrize("content", ["[]", "null", "dir"])
@pytest.mark.parametrize("command", ["eval", "report"])
def test_a_metrics_json_that_is_no_record_is_named(finished, tmp_path, content, command):
    record = finished / "metrics.json"
    record.unlink()
    record.mkdir() if content == "dir" else record.write_text(content)
    proc = run_process([command, f"{'run' if command == 'eval' else 'sweep'}_dir={finished}"],
                       cwd=tmp_path)
    if command == "eval":
        assert proc.returncode == 2 and "metrics.json" in one_error_line(proc.stderr)
    else:  # the report goes on, and says what is wrong with the run
        assert proc.returncode == 0, proc.stderr
        assert "metrics.json" in (finished / "report.md").read_text()


def test_report_names_corrupt_files_and_draws_around_a_corrupt_checkpoint(vaerun, tmp_path):
    sweep = tmp_path / "sweep"
    assert vaerun("train", "-m", "likelihood=gaussian", "likelihood.sigma=0.1,1,3", *SMALL,
                  "trainer.epochs=1", f"hydra.sweep.dir={sweep}") == 0
    (sweep / "0_likelihood.sigma=0.1" / ".hydra" / "overrides.yaml").write_text("[unclosed")
    (sweep / "1_likelihood.sigma=1" / "checkpoints" / "last.pt").write_bytes(b"garbage")
    assert vaerun("report", f"sweep_dir={sweep}") == 0
    md = (sweep / "report.md").read_text()
    assert "`0_likelihood.sigma=0.1` — .hydra/overrides.yaml is unreadable" in md
    assert (sweep / "samples.png").stat().st_size > 1000


def test_a_failed_download_creates_nothing(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    proc = run_process(["train", f"dataset.root={root}", *SMALL], cwd=tmp_path,
                       env={**os.environ, "https_proxy": "http://127.0.0.1:9",
                            "http_proxy": "http://127.0.0.1:9", "no_proxy": ""})
    assert proc.returncode == 2 and "could not download" in one_error_line(proc.stderr)
    assert list(root.iterdir()) == []


# -- 13: files others can read ---------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_honour_the_umask(tmp_path, umask):
    run = tmp_path / "run"
    proc = run_process(["train", *SMALL, "trainer.epochs=1", f"hydra.run.dir={run}"],
                       cwd=tmp_path, preexec_fn=lambda: os.umask(umask))
    assert proc.returncode == 0, proc.stderr
    for p in (run / "checkpoints" / "last.pt", run / "metrics.json",
              run / "images" / "samples.png", run / ".hydra" / "config.yaml"):
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p


# -- the storm: signals at random instants, then resume -------------------------------------
STORM = ["dataset.n_train=3000", "dataset.n_test=300", "trainer.epochs=2",
         "trainer.batch_size=64", "eval.iwae_k=300", "trainer.threads=1", "trainer.log_every=10"]
COMPARED = ("test/loss", "test/elbo", "test/kl", "test/mse", "test/nll_iwae",
            "test/active_units")


@pytest.mark.slow
def test_signal_storm_then_resume_equals_uninterrupted(tmp_path):
    """30 runs, each sent SIGTERM or SIGINT at a random instant: a third anywhere from start-up
    to exit, a third just after the first epoch's end (its test pass, pictures and checkpoint
    write), a third during the final evaluation and the last write. After each: the checkpoint
    loads with weights_only, metrics.json agrees with it, and a resume ends as an uninterrupted
    run."""
    import random

    full = tmp_path / "full"
    t0 = time.perf_counter()
    assert run_process(["train", *STORM, f"hydra.run.dir={full}"], cwd=tmp_path).returncode == 0
    whole = time.perf_counter() - t0
    reference = metrics(full)
    final = reference["test/iwae_seconds"] + 0.5  # the IWAE, then pictures and the last write
    rng = random.Random(14)
    seen: dict[str, int] = {}
    for i in range(30):
        run, sig = tmp_path / f"r{i}", rng.choice([signal.SIGTERM, signal.SIGINT])
        proc = start(["train", *STORM, f"hydra.run.dir={run}"], tmp_path)
        if i % 3 == 0:
            time.sleep(rng.uniform(0, whole * 1.05))
        elif i % 3 == 1:
            wait_for(run / "train.log", "epoch 1/2")
            time.sleep(rng.uniform(0, 0.3))
        else:
            wait_for(run / "train.log", "test: IWAE bound")
            time.sleep(rng.uniform(0, final))
        if proc.poll() is None:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode in (0, 128 + sig), (i, proc.returncode, err)
        assert "Traceback" not in err, (i, err)
        phase = "before the first checkpoint" if not (run / "checkpoints" / "last.pt").exists() \
            else f"{metrics(run)['status']} after epoch {state(run)['epoch']}"
        if phase == "interrupted after epoch 2":
            phase += " (in the final evaluation)"
        if (run / "checkpoints" / "last.pt").exists():
            agree(run)  # loads with weights_only, and the record says the same
        seen[phase] = seen.get(phase, 0) + 1
        resumed = run_process(["train", *STORM, f"hydra.run.dir={run}", "trainer.resume=true"],
                              cwd=tmp_path)
        assert resumed.returncode == 0, (i, resumed.stderr)
        m = metrics(run)
        for k in COMPARED:
            assert m[k] == pytest.approx(reference[k], rel=1e-6), (i, phase, k)
    print(f"\nsignal storm: 30 runs of {whole:.1f} s each, stopped at: "
          + ", ".join(f"{k} ({v})" for k, v in sorted(seen.items())))
