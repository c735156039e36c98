"""Nothing run, nothing deleted, nothing written outside the run: each break the attack
campaign found, provoked as it did. Every case: one `error:` line, exit 2, no traceback, the
user's files as they were."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
from conftest import SMALL, mnist_root, run_process


class Marker:
    """A pickle whose loading would create a file (what --experimental-rerun unpickles)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


def test_no_hydra_flag_loads_a_file(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(Marker(str(marker))))
    for command in (["train", "--experimental-rerun", str(evil)],
                    ["train", *SMALL, "--experimental-rerun", str(evil)],
                    ["eval", f"run_dir={tmp_path}", "--experimental-rerun", str(evil)]):
        proc = run_process(command, cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert not marker.exists()


def test_a_folder_of_the_users_files_is_refused_and_left_as_it_was(tmp_path):
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    files = {mine / "notes.txt": b"notes", mine / ".important.tmp": b"keep",
             mine / "checkpoints" / ".my.tmp": b"keep too"}
    for p, data in files.items():
        p.write_bytes(data)
    line = one_line(run_process(["train", *SMALL, f"hydra.run.dir={mine}"], cwd=tmp_path))
    assert "did not write" in line and "notes.txt" in line
    assert all(p.read_bytes() == data for p, data in files.items())
    assert sorted(p.name for p in mine.rglob("*")) == [".important.tmp", ".my.tmp",
                                                       "checkpoints", "notes.txt"]


@pytest.mark.parametrize("override, says", [
    ("hydra.run.dir=/", "system folder"),
    ("hydra.run.dir=/proc", "system folder"),
    ("hydra.run.dir=/etc/vaerun", "system folder"),
    ("hydra.run.dir=${oc.env:HOME}/pw", "resolver oc.env"),
    ("hydra.launcher.n_jobs=${oc.decode:2}", "resolver oc.decode"),
    ("hydra.output_subdir=../../escaped", "hydra.output_subdir"),
    ("trainer.epochs=${now:%s}", "resolver now"),
    ("trainer.epochs=${oc.decode:3}", "resolver oc.decode"),
    ("trainer.epochs=${oc.select:trainer.batch_size}", "resolver oc.select"),
    ("trainer.threads=100000", "trainer.threads"),
    ("trainer.batch_size=99999999999999999999", "trainer.batch_size"),
    ("likelihood.sigma=1e-320", "likelihood.sigma"),
    ("optimizer.lr=1e-39", "optimizer.lr"),
    ("+hydra.job_logging.handlers.h.class=logging.config.fileConfig", "logging"),
    ("hydra.launcher._target_=os.system", "hydra.launcher._target_"),
    ("hydra.run.dir=", "give a folder"),  # realpath(""): the working directory
    ("dataset=null", "dataset=None is not an option"),
    ("hydra/launcher=null", "hydra/launcher=None is not an option"),
])
def test_bad_places_resolvers_and_bounds_are_one_line(tmp_path, override, says):
    args = ["train", *SMALL, "likelihood=gaussian", override]
    if "launcher" in override:
        args.insert(1, "-m")
    line = one_line(run_process(args, cwd=tmp_path))
    assert says in line, line
    assert not any(tmp_path.iterdir()) and not (tmp_path.parent / "escaped").exists()


def test_a_run_directory_that_is_a_file_is_one_line(tmp_path):
    f = tmp_path / "afile"
    f.write_text("mine")
    assert "is a file" in one_line(run_process(["train", *SMALL, f"hydra.run.dir={f}"],
                                              cwd=tmp_path))
    assert f.read_text() == "mine"


def test_a_refused_resume_writes_nothing_to_the_run(tmp_path):
    run = tmp_path / "run"
    assert run_process(["train", *SMALL, "trainer.epochs=1", f"hydra.run.dir={run}"],
                       cwd=tmp_path).returncode == 0
    (run / "metrics.json").write_text("not json")
    log = (run / "train.log").read_text()
    one_line(run_process(["train", *SMALL, "trainer.resume=true", f"hydra.run.dir={run}"],
                         cwd=tmp_path))
    assert (run / "train.log").read_text() == log
    # a finished 2-epoch run asked for 1
    (run / "metrics.json").unlink()
    assert run_process(["train", *SMALL, "trainer.resume=true", f"hydra.run.dir={run}"],
                       cwd=tmp_path).returncode == 0
    line = one_line(run_process(["train", *SMALL, "trainer.epochs=1", "trainer.resume=true",
                                 f"hydra.run.dir={run}"], cwd=tmp_path))
    assert "finished 2 epochs" in line


def test_a_checkpoint_whose_config_is_a_string_is_one_line(tmp_path):
    import torch

    run = tmp_path / "run"
    assert run_process(["train", *SMALL, "trainer.epochs=1", f"hydra.run.dir={run}"],
                       cwd=tmp_path).returncode == 0
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["config"] = "a string"
    torch.save(state, run / "checkpoints" / "last.pt")
    for command in (["train", *SMALL, "trainer.resume=true", f"hydra.run.dir={run}"],
                    ["eval", f"run_dir={run}"]):
        assert "checkpoint" in one_line(run_process(command, cwd=tmp_path))


def test_a_removed_run_directory_is_not_made_again(tmp_path):
    from vaerun.rundir import write_atomic

    gone = tmp_path / "gone"  # a run directory removed while it ran
    with pytest.raises(OSError):
        write_atomic(gone / "images" / "samples.png", b"png")
    assert not gone.exists()
    write_atomic(tmp_path / "images" / "samples.png", b"png")  # a run's folder
    assert (tmp_path / "images" / "samples.png").read_bytes() == b"png"


ARRIVAL = """
import os, signal, threading, time
import torch
from vaerun.signals import StopRequests

a = torch.randn(2000, 2000, dtype=torch.float64)
inside = threading.Event()

def send():  # both arrive while the main thread is inside one long torch call
    inside.wait()
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)  # 10 ms apart: sent back to back, both could be pending at once, and the
    os.kill(os.getpid(), signal.SIGINT)  # kernel delivers the lower number first

with StopRequests(saves="") as stop:
    threading.Thread(target=send).start()
    inside.set()
    for _ in range(20):  # each call about a second; on until both were handled
        torch.linalg.eigh(a @ a.T)
        if stop.requested:
            break
    print("first", stop.signum)
"""


def test_the_first_signal_to_arrive_sets_the_status_even_when_two_arrive_together(tmp_path):
    """SIGTERM then SIGINT while the main thread is in one long torch call: Python runs their
    handlers in the order of their numbers (SIGINT first); the status is the first to arrive."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", ARRIVAL], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "first 15" in proc.stdout, proc.stdout + proc.stderr
    assert "signal 2: already stopping (on signal 15)" in proc.stderr, proc.stderr


MID_WRITE = """
import fcntl, io, logging, os, signal, struct, termios, threading
from vaerun.signals import StopRequests

r, w = os.pipe()
size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
stream = io.TextIOWrapper(io.BufferedWriter(io.FileIO(w, "w")))
log = logging.getLogger("vaerun")
log.addHandler(logging.StreamHandler(stream))
log.setLevel(logging.INFO)
got = []

def drain():
    while struct.unpack("i", fcntl.ioctl(r, termios.FIONREAD, b"\\0" * 4))[0] < size:
        pass  # until the pipe is full: the main thread is blocked inside its write
    os.kill(os.getpid(), signal.SIGINT)
    while chunk := os.read(r, 1 << 20):
        got.append(chunk)

reader = threading.Thread(target=drain)
reader.start()
with StopRequests(saves="") as stop:
    log.info("x" * (4 * size))
stream.close()
reader.join()
print("stopped", stop.signum, b"signal 2: stopping at the next safe point" in b"".join(got))
"""


def test_a_signal_inside_a_log_write_is_logged_after_it_never_into_it(tmp_path):
    """A signal that lands while the main thread is inside a log file's write (a long line,
    a slow disk) ran the handler within that write, and the handler's own log line wrote into
    the same file: "--- Logging error --- RuntimeError: reentrant call" on stderr, the line
    lost (seen in CI, a SIGINT during the final evaluation). The handler queues its line; a
    thread logs it once the write is done."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", MID_WRITE], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "stopped 2 True", proc.stdout + proc.stderr
    assert "Logging error" not in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished small run, trained once for the tests that copy it."""
    where = tmp_path_factory.mktemp("trained")
    assert run_process(["train", *SMALL, "trainer.epochs=1", f"hydra.run.dir={where / 'run'}"],
                       cwd=where).returncode == 0
    return where / "run"


@pytest.mark.parametrize("name, text", [("overrides.yaml", "[unclosed"),
                                        ("overrides.yaml", "{not: a list}"),
                                        ("config.yaml", "likelihood: {name: laplace}\n")])
def test_eval_refuses_a_corrupt_record_with_one_line(tmp_path, trained, name, text):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = (run / "metrics.json").read_text()
    (run / ".hydra" / name).write_text(text)
    line = one_line(run_process(["eval", f"run_dir={run}", "eval.iwae_k=2"], cwd=tmp_path))
    assert f".hydra/{name}" in line and "restore it" in line
    assert (run / "metrics.json").read_text() == before
    (run / ".hydra" / name).unlink()  # the checkpoint holds the config: eval goes on
    assert run_process(["eval", f"run_dir={run}", "eval.iwae_k=2"], cwd=tmp_path).returncode == 0


def test_overrides_on_both_sides_of_dash_m_make_one_sweep(tmp_path):
    """B8: `vaerun train a=1 -m b=2,3` once printed the usage twice; it is one sweep."""
    sweep = tmp_path / "s"
    proc = run_process(["train", *SMALL, "trainer.epochs=0", "-m", "trainer.seed=1,2",
                        f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "usage" not in proc.stderr.lower() and "Traceback" not in proc.stderr
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0_trainer.seed=1",
                                                                     "1_trainer.seed=2"]


@pytest.mark.parametrize("steps", [[1, 2], 5, {"test/elbo": "a"}])
@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_record_with_odd_steps_is_one_line_before_anything_is_written(tmp_path, trained, steps,
                                                                        command):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    record = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**record, "steps": steps}))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    args = ["eval", f"run_dir={run}", "eval.iwae_k=2"] if command == "eval" else [
        "train", "trainer.resume=true", "trainer.epochs=2", f"hydra.run.dir={run}"]
    assert "steps are not a table" in one_line(run_process(args, cwd=tmp_path))
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("key, value", [("epoch", "x"), ("step", None), ("seed", 2**70),
                                        ("wall_seconds", "x"), ("perm", "zeros")])
@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_checkpoint_with_odd_progress_is_one_line(tmp_path, trained, key, value, command):
    """Each field of a checkpoint is user input too: a wrong type, a negative or huge count, a
    data order that is no order of the training images is one line (each was a traceback)."""
    import torch

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    path = run / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    state["perm"] = torch.randperm(512)  # as written in the middle of an epoch
    state[key] = torch.zeros(512, dtype=torch.long) if value == "zeros" else value
    torch.save(state, path)
    args = ["eval", f"run_dir={run}", "eval.iwae_k=2"] if command == "eval" else [
        "train", "trainer.resume=true", "trainer.epochs=2", f"hydra.run.dir={run}"]
    proc = run_process(args, cwd=tmp_path)
    if command == "eval" and key == "perm":  # evaluation reads no data order
        assert proc.returncode == 0, proc.stderr
    else:
        assert key in one_line(proc) or "data order" in one_line(proc)



@pytest.mark.parametrize("name", [[1], {"a": 1}, 7])
def test_a_checkpoint_naming_its_model_by_no_string_is_one_line(tmp_path, trained, name):
    """A resume compares the checkpoint's config with the command's, a missing key read as its
    schema default (the option's, by its name): a name that is a list or a dict was a
    TypeError there (unhashable), a traceback. It is one line, as any other difference is."""
    import torch

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    path = run / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    state["config"]["model"]["name"] = name
    torch.save(state, path)
    proc = run_process(["train", *SMALL, "trainer.resume=true", f"hydra.run.dir={run}"],
                       cwd=tmp_path)
    assert "model.name" in one_line(proc)

@pytest.mark.parametrize("command", ["train", "eval", "train, no checkpoint"])
def test_a_tampered_record_starts_no_download(tmp_path, trained, command):
    """A run's checkpoint and overrides are user input: set to `dataset.root=DIR`, a resume
    (with a checkpoint or without one) or an evaluation downloaded MNIST into DIR (download's
    default is true). Only a new run downloads; these end in one line, DIR untouched."""
    import torch

    run, root = tmp_path / "run", tmp_path / "elsewhere"
    shutil.copytree(trained, run)
    root.mkdir()
    path = run / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    state["config"]["dataset"].update(root=str(root), download=True)
    torch.save(state, path)
    (run / ".hydra" / "config.yaml").unlink()  # the checkpoint holds the config
    overrides = run / ".hydra" / "overrides.yaml"
    overrides.write_text(overrides.read_text() + f"- dataset.root={root}\n")
    if command == "train, no checkpoint":
        shutil.rmtree(run / "checkpoints")
    args = ["eval", f"run_dir={run}", "eval.iwae_k=2"] if command == "eval" else [
        "train", "trainer.resume=true", "trainer.epochs=2", f"hydra.run.dir={run}"]
    proc = run_process(args, cwd=tmp_path, env={**os.environ, "no_proxy": "",
                                                "https_proxy": "http://127.0.0.1:9",
                                                "http_proxy": "http://127.0.0.1:9"})
    assert "downloads nothing" in one_line(proc) and "downloading" not in proc.stdout + proc.stderr
    assert list(root.iterdir()) == []


def test_a_resume_refused_as_it_began_leaves_the_run_evaluable(tmp_path):
    """A resume that asks for more epochs and fails as it begins (here its data are gone) left
    Hydra's .hydra/config.yaml saying trainer.epochs=2 beside a checkpoint of 1: every later
    `vaerun eval` refused the run ("is not the checkpoint's config"). What a resume may change
    may differ between them; the rest must not."""
    root = mnist_root(tmp_path / "data")
    run = tmp_path / "run"
    args = [*SMALL, f"dataset.root={root}", f"hydra.run.dir={run}"]
    assert run_process(["train", *args, "trainer.epochs=1"], cwd=tmp_path).returncode == 0
    root.rename(tmp_path / "away")
    root.mkdir()
    assert "is missing" in one_line(run_process(["train", *args, "trainer.epochs=2",
                                                 "trainer.resume=true"], cwd=tmp_path))
    root.rmdir()
    (tmp_path / "away").rename(root)
    proc = run_process(["eval", f"run_dir={run}", "eval.iwae_k=2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_a_fifo_in_a_run_folder_blocks_no_command(tmp_path, trained):
    """A FIFO left in a run's folder (a tampered or copied run) hung the command that opened it,
    and Ctrl-C and SIGTERM could not end it (the handlers only ask to stop): metrics.json or an
    events file hung `vaerun report`, the checkpoint `vaerun eval`, a record or train.log a
    resume. vaerun makes none: each is one line naming it; records are read as regular files."""
    for name, fifo, command in (
            ("a", "metrics.json", ["report", "sweep_dir={runs}", "out={report}"]),
            ("b", "events", ["report", "sweep_dir={runs}", "out={report}"]),
            ("c", "checkpoints/last.pt", ["eval", "run_dir={run}"]),
            ("d", ".hydra/overrides.yaml", ["train", "trainer.resume=true", "hydra.run.dir={run}"]),
            ("e", "train.log", ["train", *SMALL, "trainer.epochs=1", "trainer.resume=true",
                                "hydra.run.dir={run}"])):
        runs, report = tmp_path / name, tmp_path / f"report_{name}"
        shutil.copytree(trained, runs / "run")
        path = next((runs / "run").glob("*tfevents*")) if fifo == "events" else runs / "run" / fifo
        path.unlink()
        os.mkfifo(path)
        args = [a.format(runs=runs, report=report, run=runs / "run") for a in command]
        line = one_line(run_process(args, cwd=tmp_path, timeout=120))
        assert str(path) in line and "is not a file (a FIFO, a socket or a device)" in line
        assert not report.exists()
