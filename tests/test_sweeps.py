"""Sweeps: `vaerun report` with exact aggregates, the joblib and submitit launchers (real
processes), and a sweep interrupted mid-way then resumed."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL, Lines, mnist_root, run_process, scalars

TINY = [*SMALL, "trainer.epochs=1", "dataset.n_train=256", "dataset.n_test=128"]


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_report_aggregates_seeds_exactly(vaerun, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    assert vaerun("train", "-m", "likelihood=gaussian", "likelihood.sigma=0.1,1",
                  "trainer.seed=1,2", *TINY, f"hydra.sweep.dir={sweep}") == 0
    assert vaerun("report", f"sweep_dir={sweep}") == 0
    out = capsys.readouterr().out
    for name in ("report.csv", "report.md", "rate_distortion.png", "sweep.png", "curves.png",
                 "samples.png"):
        assert f"wrote {sweep / name}" in out
        assert (sweep / name).stat().st_size > 100
    table = rows(sweep / "report.csv")
    assert [r["likelihood.sigma"] for r in table] == ["0.1", "1"]
    for r in table:
        runs = [p for p in sweep.iterdir() if p.is_dir() and
                f"likelihood.sigma={r['likelihood.sigma']}," in p.name + ","]
        assert len(runs) == 2 and r["n"] == "2"
        for tag in ("test/kl", "test/mse", "test/elbo", "test/nll_iwae"):
            vals = [metrics(p)[tag] for p in runs]
            assert float(r[f"{tag}_mean"]) == pytest.approx(statistics.fmean(vals), rel=1e-12)
            assert float(r[f"{tag}_std"]) == pytest.approx(statistics.stdev(vals), rel=1e-9)
    md = (sweep / "report.md").read_text()
    assert "| likelihood.sigma | n |" in md and "None: every run finished." in md
    # each column says its unit: nats only for what is measured in nats
    assert "| iwae_seconds (s) |" in md and "| kl (nats) |" in md and "| mse (per pixel) |" in md


REPORT_ALONE = """
import sys
for name in ("torch", "vaerun.loop", "vaerun.evaluation", "vaerun.assemble", "vaerun.model",
             "vaerun.elbo", "vaerun.likelihoods", "vaerun.data"):
    sys.modules[name] = None  # importing any of them now fails
from vaerun.cli import main
sys.exit(main(["report", "sweep_dir=" + sys.argv[1]]))
"""


def test_the_report_reads_files_and_builds_no_model(vaerun, tmp_path):
    """`vaerun report` with torch and every training and evaluation module unimportable: it
    draws every figure from the runs' own files (kl_per_dim.json, images/, events)."""
    sweep = tmp_path / "sweep"
    assert vaerun("train", "-m", "likelihood=gaussian", "likelihood.sigma=0.1,1", *TINY,
                  f"hydra.sweep.dir={sweep}") == 0
    done = subprocess.run([sys.executable, "-c", REPORT_ALONE, str(sweep)], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("report.md", "samples.png", "kl_per_dim.png", "sweep.png", "curves.png"):
        assert (sweep / name).stat().st_size > 1000, name
    kl = json.loads(next(sweep.glob("*/kl_per_dim.json")).read_text())
    assert len(kl["measured"]) == 20 and len(kl["ppca"]) == 20
    # from a notebook, whose matplotlib backend (inline, here svg) must stay its own: the
    # report switched it to Agg for the rest of the session, and nothing showed any more
    done = subprocess.run([sys.executable, "-c", REPORT_IN_A_NOTEBOOK, str(sweep)], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split() == ["svg", "False", "7"], done.stderr


REPORT_IN_A_NOTEBOOK = """
import sys
import matplotlib
matplotlib.use("svg")
import vaerun
paths = vaerun.report(sys.argv[1])
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules, len(paths))
"""


def test_odd_records_are_drawn_as_text_or_left_out(vaerun, tmp_path):
    """A run's recorded value is a label in the figures: two `$` in it are text, not TeX that
    matplotlib fails to parse; a metric recorded as a list or a table, and a kl_per_dim.json of
    no numbers, are left out. Each had stopped the whole report with a traceback."""
    sweep = tmp_path / "sweep"
    assert vaerun("train", "-m", "likelihood=gaussian", "likelihood.sigma=0.1,1", *TINY,
                  "eval.iwae_k=0", f"hydra.sweep.dir={sweep}") == 0
    record = next(sweep.glob("1_*")) / ".hydra" / "overrides.yaml"
    record.write_text(record.read_text().replace("sigma=1", "sigma=$\\foo$_^"))
    first = next(sweep.glob("0_*"))
    m = metrics(first)
    (first / "metrics.json").write_text(json.dumps({**m, "test/kl": [1, 2], "test/mse": {"a": 1}}))
    (record.parent.parent / "kl_per_dim.json").write_text('{"measured": [null, 1e999]}')
    assert vaerun("report", f"sweep_dir={sweep}") == 0
    assert (sweep / "rate_distortion.png").stat().st_size > 1000
    assert "$\\foo$_^" in (sweep / "report.md").read_text()
    table = {r["likelihood.sigma"]: r for r in rows(sweep / "report.csv")}
    assert table["0.1"]["test/kl_mean"] in ("", "nan") and float(table["0.1"]["test/elbo_mean"]) \
        == pytest.approx(m["test/elbo"], rel=1e-12)


def test_report_bad_input(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, key in ((["sweep_dir=" + str(empty)], "holds no runs"),
                      (["sweep_dir=" + str(tmp_path / "nope")], "is not a directory"),
                      ([], "sweep_dir is required")):
        proc = run_process(["report", *args], cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1
        assert proc.stderr.startswith("error: ") and key in proc.stderr


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_launchers_run_real_processes(vaerun, tmp_path, launcher):
    sweep = tmp_path / "sweep"
    assert vaerun("train", "-m", f"hydra/launcher={launcher}", "likelihood=gaussian",
                  "likelihood.sigma=0.1,1", *TINY, f"hydra.sweep.dir={sweep}") == 0
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert runs == ["0_likelihood.sigma=0.1", "1_likelihood.sigma=1"]
    assert all(metrics(sweep / r)["status"] == "finished" for r in runs)
    assert vaerun("report", f"sweep_dir={sweep}") == 0
    assert len(rows(sweep / "report.csv")) == 2


def test_sweep_interrupted_then_resumed_finishes_every_run_once(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "likelihood=gaussian", "likelihood.sigma=0.1,0.3,1",
            "dataset.n_train=6400", "dataset.n_test=256", "trainer.batch_size=64",
            "trainer.epochs=2", "eval.iwae_k=2", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen([sys.executable, "-m", "vaerun", *args, "trainer.progress_seconds=0"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    first, second = sweep / "0_likelihood.sigma=0.1", sweep / "1_likelihood.sigma=0.3"
    out = Lines(proc.stdout)
    out.wait(r"training .*1_likelihood\.sigma=0\.3")
    out.wait(r"epoch 1/2: 10/\d+ steps")  # into the second job's first epoch
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    out.rest()
    assert proc.returncode == 128 + signal.SIGTERM
    assert "error:" not in err  # a stop, not a failure; the job not begun is not one either
    assert metrics(first)["status"] == "finished"
    assert metrics(second)["status"] == "interrupted"
    assert not (sweep / "2_likelihood.sigma=1").exists()
    finished_before = (first / "metrics.json").read_text()
    events_before = sorted(p.name for p in first.glob("events.out.tfevents.*"))

    assert run_process(["report", f"sweep_dir={sweep}"], cwd=tmp_path).returncode == 0
    md = (sweep / "report.md").read_text()
    assert re.search(r"`1_likelihood\.sigma=0\.3` — interrupted after 0 whole epochs, step "
                     r"\d+; continue it with trainer\.resume=true\n", md), md

    resumed = run_process([*args, "trainer.resume=true"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert len(runs) == 3 and all(metrics(r)["status"] == "finished" for r in runs)
    assert all(metrics(r)["epoch"] == 2 for r in runs)
    # the finished run was not trained again
    assert (first / "metrics.json").read_text() == finished_before
    assert sorted(p.name for p in first.glob("events.out.tfevents.*")) == events_before
    assert "is already finished" in (first / "train.log").read_text()


@pytest.mark.slow  # (CI time: 32 s of three processes and joblib's workers)
def test_a_job_refused_in_a_worker_fails_the_command(tmp_path):
    """A joblib worker's job refused as it began (a resume of finished runs whose data are
    gone) recorded its error beside the status the runs had, `finished`, and the command read
    that status: exit 0, no line. Each refused job is now a line and the status 2; when the
    data are back, the same command resumes them and clears what the refusal recorded."""
    root = mnist_root(tmp_path / "data")
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "hydra/launcher=joblib", "likelihood=gaussian",
            "likelihood.sigma=0.1,1", *TINY, f"dataset.root={root}", f"hydra.sweep.dir={sweep}"]
    basic = [a for a in args if a != "hydra/launcher=joblib"]  # the same runs, without workers
    assert run_process([*basic, "trainer.epochs=1"], cwd=tmp_path).returncode == 0
    root.rename(tmp_path / "away")
    root.mkdir()
    proc = run_process([*args, "trainer.epochs=1", "trainer.resume=true"], cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 2, proc.stderr
    assert all(ln.startswith("error: job ") and "is missing" in ln for ln in lines)
    root.rmdir()
    (tmp_path / "away").rename(root)
    proc = run_process([*args, "trainer.epochs=1", "trainer.resume=true"], cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    runs = [p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()]
    assert all("exit_code" not in metrics(r) and metrics(r)["status"] == "finished" for r in runs)


def as_a_worker(run: Path, overrides: list[str]) -> int:
    """Hydra's task called on `run` as a launcher's worker calls it (no plan of its own)."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from vaerun import api, gate

    with api.kept(), gate.composer():
        cfg = compose("train", overrides, return_hydra_config=True)
        with open_dict(cfg):  # what Hydra sets for a job it runs
            cfg.hydra.runtime.output_dir, cfg.hydra.job.num = str(run), 0
        HydraConfig.instance().set_config(cfg)
        return api.TrainTask(None, None)(cfg)


def test_a_worker_refused_by_the_lock_of_another_command_leaves_its_record(tmp_path):
    """A launcher's worker whose job another command holds (it took the folder after the
    gate's check) is refused, and must not write its failure into the record that command
    owns: it writes only under the folder's lock."""
    from vaerun import api

    run = tmp_path / "run"
    api.train([*TINY, "trainer.epochs=1", "eval.iwae_k=0"], run_dir=run)
    before = (run / "metrics.json").read_bytes()
    holder = subprocess.Popen(  # another command: it holds the folder's lock
        [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()", run],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert as_a_worker(run, [*TINY, "trainer.epochs=1", "eval.iwae_k=0",
                                 "trainer.resume=true"]) == 2
    finally:
        holder.stdin.close()
        holder.wait()
    assert (run / "metrics.json").read_bytes() == before


def test_a_bug_in_a_workers_job_is_recorded_with_its_type_and_where_its_traceback_is(
        tmp_path, monkeypatch):
    """The parent prints what the worker recorded: for a bug, its type as well as its
    message, as the line of a job run in the command's own process says it."""
    from vaerun import loop

    def broken(*args, **kwargs):
        raise KeyError("x")

    monkeypatch.setattr(loop, "train", broken)
    run = tmp_path / "run"
    assert as_a_worker(run, [*TINY]) == 1
    assert metrics(run)["exit_code"] == 1 and metrics(run)["error"] == (
        f"KeyError: 'x', an error vaerun did not foresee (its traceback is in {run}/train.log)")


def test_log_axes_read_in_powers_of_ten_and_recorded_values_as_plain_text(tmp_path, monkeypatch):
    """The report drew every label as plain text so that a recorded value with two `$` was not
    read as TeX; that made every log axis's ticks read `$\\mathdefault{10^{2}}$`, in the
    sigma sweep's figure above all. Now only the recorded values are plain text."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from vaerun import plots, reporting
    from vaerun.sweeps import Group, Run

    drawn = []
    monkeypatch.setattr(plots, "png", lambda fig: drawn.append(fig) or b"")
    groups = [Group((("likelihood.sigma", str(s)), ("tag", tag)), [Run(
        tmp_path, {}, {"status": "finished", "test/elbo": -1000 * s, "test/kl": 10 / s,
                       "test/mse": s / 10})]) for s in (0.01, 0.1, 1) for tag in ("$a$_^", "b")]
    reporting.figures(groups, ["likelihood.sigma", "tag"])
    sweep = drawn[1]
    FigureCanvasAgg(sweep).draw()
    ticks = [t for ax in sweep.axes for t in ax.get_xticklabels() + ax.get_yticklabels()]
    assert any("10^{" in t.get_text() for t in ticks)
    assert all(t.get_parse_math() for t in ticks if "$" in t.get_text())  # 10², not its TeX
    legend = [t.get_text() for t in sweep.legends[0].get_texts()]
    assert "measured (tag=\\$a\\$_^)" in legend  # drawn as the value, `$` and all


def test_a_metric_the_same_in_every_run_is_said_once_and_never_lost(tmp_path):
    """Metrics with one value in every run leave the tables for a line of their own; only the
    headline ones were written there, so a constant test/iwae_k (k of the bound) vanished from
    report.md, and where no headline metric was constant the line read "The same in every
    run: ." A `-` in a table (a key one run's command did not set) is said once."""
    from vaerun import reporting
    from vaerun.sweeps import Group, Run

    def group(sigma: float, kl: float) -> Group:
        return Group((("likelihood.sigma", str(sigma)),), [Run(tmp_path, {}, {
            "status": "finished", "test/elbo": -100 * sigma, "test/kl": kl, "test/iwae_k": 3})])

    metrics = ["test/elbo", "test/kl", "test/iwae_k"]
    text = reporting.markdown_text(tmp_path, [group(0.1, 1), group(1, 2)],
                                   ["likelihood.sigma"], metrics, [])
    assert "run: ." not in text
    assert "iwae_k (samples) = 3" in text
    both = reporting.markdown_text(tmp_path, [group(0.1, 1), group(1, 1)],
                                   ["likelihood.sigma"], metrics, [])
    assert "The same in every run: kl (nats) = 1" in both and "iwae_k (samples) = 3" in both
    assert "A `-`" not in both
    unset = Group((("likelihood.sigma", "-"),), group(1, 3).runs)  # a run that did not set it
    assert "A `-`: the key was not on that run's command line" in reporting.markdown_text(
        tmp_path, [group(0.1, 1), unset], ["likelihood.sigma"], metrics, [])


def test_a_report_of_many_groups_keeps_its_points_in_view_and_apart(tmp_path, monkeypatch):
    """With dozens of groups (a folder of runs of many commands) the legend was drawn inside
    the axes, over every point of the rate-distortion figure, and the 11th group had the 1st's
    look. A long legend stands beside the axes; no two groups share colour and marker."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from vaerun import plots, reporting
    from vaerun.sweeps import Group, Run

    drawn = []
    monkeypatch.setattr(plots, "png", lambda fig: drawn.append(fig) or b"")
    groups = [Group((("likelihood.sigma", str(s)),), [Run(tmp_path, {}, {
        "status": "finished", "test/elbo": -100 * s, "test/kl": 1 + s, "test/mse": s / 10})])
        for s in range(1, 31)]
    reporting.figures(groups, ["likelihood.sigma"])
    fig = drawn[0]  # rate against distortion
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    box, frame = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert box.x0 >= frame.x1  # beside the axes, not over them
    looks = {(tuple(c.get_facecolor()[0]), c.get_paths()[0].vertices.tobytes())
             for c in ax.collections}
    assert len(looks) == len(groups) == 30


def test_a_run_killed_without_warning_is_reported_as_such_and_resumes(tmp_path):
    """SIGKILL (the OOM killer, a lost node) gives a run no chance to record anything: its
    record still says running. The report says when it was written and how to continue, and
    the resume goes on from the last checkpoint to the end."""
    args = ["train", *SMALL, "trainer.epochs=3", f"hydra.run.dir={tmp_path / 'runs' / 'a'}"]
    proc = subprocess.Popen([sys.executable, "-m", "vaerun", *args, "trainer.progress_seconds=0"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = Lines(proc.stdout)
    out.wait(r"epoch 2/3: the test set's terms")  # epoch 1's checkpoint is written before this
    proc.kill()
    proc.wait(timeout=60)
    out.rest()
    assert metrics(tmp_path / "runs" / "a")["status"] == "running"
    assert run_process(["report", f"sweep_dir={tmp_path / 'runs'}", f"out={tmp_path / 'rep'}"],
                       cwd=tmp_path).returncode == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert re.search(r"`a` — running after [12] whole epochs, step \d+ \(recorded \d{4}-\d\d-\d\d "
                     r"\d\d:\d\d\): still running, or killed without warning; continue it with "
                     r"trainer\.resume=true\n", md), md
    resumed = run_process([*args, "trainer.resume=true"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    record = metrics(tmp_path / "runs" / "a")
    assert (record["status"], record["epoch"]) == ("finished", 3)
    # TensorBoard drops the points the killed run wrote past its checkpoint (purge_step): the
    # report says nothing of it (TensorBoard's "out of order event.step ... TensorFlow restart")
    again = run_process(["report", f"sweep_dir={tmp_path / 'runs'}", f"out={tmp_path / 'rep2'}"],
                        cwd=tmp_path)
    assert again.returncode == 0 and again.stderr == "", again.stderr
    steps = [s for s, _ in scalars(tmp_path / "runs" / "a")["train/elbo"]]
    assert steps == sorted(set(steps)), steps  # as read back: each step once, in order


def test_a_ctrl_c_in_a_joblib_sweep_is_a_stop_not_an_error(tmp_path):
    """A terminal's Ctrl-C reaches the whole process group, joblib's workers too: each job
    wrote its checkpoint, yet the command said `error: job 0 (...) failed: interrupted by signal
    2` for each. It says each was stopped and how to continue, and exits 130."""
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaerun", "train", "-m", "hydra/launcher=joblib",
         "likelihood=gaussian", "likelihood.sigma=0.1,1", "dataset.n_train=6400",
         "dataset.n_test=256", "trainer.batch_size=64", "trainer.epochs=2", "eval.iwae_k=2",
         "trainer.progress_seconds=0", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = Lines(proc.stdout)
    for _ in range(2):  # both jobs are training
        out.wait(r"epoch 1/2: 10/\d+ steps")
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    out.rest()
    assert proc.returncode == 128 + signal.SIGINT, err
    jobs = sorted(p for p in sweep.iterdir() if p.name[0].isdigit())
    assert [metrics(j)["status"] for j in jobs] == ["interrupted"] * 2
    assert err.splitlines() == [
        f"job {i} ({j}) was stopped (interrupted by signal 2); the same command with "
        "trainer.resume=true continues it" for i, j in enumerate(jobs)], err


def test_a_sweep_extended_out_of_order_or_with_a_value_twice_is_refused(vaerun, tmp_path, capsys):
    """Job folders are numbered: σ = 0.1,1 then resumed as 0.1,0.3,1 made 1_…sigma=0.3 and a
    second σ = 1 run, 2_…sigma=1, trained again beside 1_…sigma=1, and the report counted
    that one seed twice (n = 2). Values given twice were two runs too. Both are refused before
    anything is written; values added at the end run alone. (A sweep's job refused for its
    folder's run named hydra.run.dir, not the sweep's folder.)"""
    sweep, args = tmp_path / "sweep", ["-m", "likelihood=gaussian", *TINY]
    assert vaerun("train", *args, "likelihood.sigma=0.1,1", f"hydra.sweep.dir={sweep}") == 0
    listing = {p: p.stat().st_mtime_ns for p in sweep.rglob("*") if p.is_file()}
    capsys.readouterr()
    again = f"{sweep}/0_likelihood.sigma=0.1 already holds a run; add trainer.resume=true to " \
        "continue it, or choose another hydra.sweep.dir"
    other = "is from another config (model.hidden: 400 in it, 32 now); resume with the values " \
        "it was trained with"
    for values, said, resume in (
            ("0.1,0.3,1", "job 2 (likelihood.sigma=1) of this sweep is job 1 of the sweep in", 1),
            ("0.1,1,1.0", "jobs 1 and 2 of the sweep are the same run (likelihood.sigma=1 and "
                          "likelihood.sigma=1.0)", 1), ("0.1,1", again, 0),
            ("0.1,1 model.hidden=32", other, 1)):
        assert vaerun("train", *args, *f"likelihood.sigma={values}".split(),
                      f"hydra.sweep.dir={sweep}", *["trainer.resume=true"] * resume) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and said in err and len(err.splitlines()) == 1, err
        assert {p: p.stat().st_mtime_ns for p in sweep.rglob("*") if p.is_file()} == listing
    assert vaerun("train", *args, "likelihood.sigma=0.1,1,0.3", f"hydra.sweep.dir={sweep}",
                  "trainer.resume=true") == 0
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [
        "0_likelihood.sigma=0.1", "1_likelihood.sigma=1", "2_likelihood.sigma=0.3"]
    new = "holds no checkpoint, so this is a new run"  # said where nothing was resumed
    assert [new in (sweep / run / "train.log").read_text() for run in sorted(
        p.name for p in sweep.iterdir() if p.is_dir())] == [False, False, True]
    for run in ("0_likelihood.sigma=0.1", "1_likelihood.sigma=1"):
        ckpt = sweep / run / "checkpoints" / "last.pt"
        assert ckpt.stat().st_mtime_ns == listing[ckpt]


def test_a_report_says_when_runs_of_one_seed_are_counted_as_seeds(vaerun, tmp_path):
    """Two runs of one config and one seed (a notebook's cell run twice into two folders, a run
    copied) were counted n = 2, as if two seeds: the report says which groups repeat a seed."""
    import shutil

    mine = tmp_path / "mine"
    assert vaerun("train", *TINY, "eval.iwae_k=0", "eval.quality_images=0",
                  f"hydra.run.dir={mine / 'a'}") == 0
    shutil.copytree(mine / "a", mine / "b")
    assert vaerun("report", f"sweep_dir={mine}", f"out={tmp_path / 'report'}") == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| all runs |" not in text and "| 2 |" in text
    assert "Runs of the same seed are repeats of one run, not seeds: n counts each, and the ± " \
        "is not a spread over seeds, in all runs (seed 0 2 times)." in text


def test_a_report_into_the_folder_of_an_earlier_one_leaves_none_of_its_figures(vaerun, tmp_path):
    """A report of Bernoulli runs into the `out` of an earlier report of Gaussian runs left its
    kl_per_dim.png (pPCA's) beside report.md, as if it were of these runs."""
    out, each = tmp_path / "report", [*TINY, "eval.iwae_k=0", "eval.quality_images=0"]
    for name, likelihood in (("g", "gaussian"), ("b", "bernoulli")):
        assert vaerun("train", *each, f"likelihood={likelihood}",
                      f"hydra.run.dir={tmp_path / name / 'run'}") == 0
    assert vaerun("report", f"sweep_dir={tmp_path / 'g'}", f"out={out}") == 0
    assert (out / "kl_per_dim.png").exists()
    assert vaerun("report", f"sweep_dir={tmp_path / 'b'}", f"out={out}") == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["curves.png", "rate_distortion.png",
                                                         "samples.png", "sweep.png"]
    import inspect

    from vaerun import reporting  # every figure it draws is one it knows to clear
    assert set(re.findall(r'"(\w+\.png)"', inspect.getsource(reporting.figures))) == set(
        reporting.FIGURES)


def test_a_report_says_when_runs_measured_a_metric_with_other_settings(vaerun, tmp_path):
    """`vaerun eval eval.iwae_k=...` on one run of a sweep made the report average its tighter
    bound with the others' (388.9 ± 11 for k = 5 and 200) without a word; likewise the FIDs
    of other numbers of images, which were not recorded. Both are named under the table."""
    sweep = tmp_path / "sweep"
    assert vaerun("train", "-m", *TINY, "eval.quality_images=50", "trainer.seed=1,2",
                  f"hydra.sweep.dir={sweep}") == 0
    text = lambda: (sweep / "report.md").read_text()  # noqa: E731
    assert vaerun("report", f"sweep_dir={sweep}") == 0
    assert "were measured with different numbers" not in text()
    assert metrics(sweep / "0_trainer.seed=1")["test/quality_images"] == 50
    assert vaerun("eval", f"run_dir={sweep / '0_trainer.seed=1'}", "eval.iwae_k=8",
                  "eval.quality_images=60") == 0
    assert vaerun("report", f"sweep_dir={sweep}") == 0
    assert "The IWAE bounds (nll_iwae and the bits/dim from it) were measured with different " \
        "numbers of importance samples, eval.iwae_k = 4 in 1 run, 8 in 1 run: a bound tightens " \
        "as k grows, so compare runs of one value; the means of all runs mix them" in text()
    assert "eval.quality_images = 50 in 1 run, 60 in 1 run" in text()


def test_eval_of_a_sweep_names_the_loop_that_evaluates_each_run(vaerun, tmp_path, capsys):
    """`vaerun eval run_dir=SWEEP` said "holds no checkpoint": it says the folder is a sweep
    and gives the shell loop, which, pasted, evaluates every run."""
    sweep = tmp_path / "sweep"
    assert vaerun("train", "-m", *TINY, "eval.quality_images=0", "eval.iwae_k=0",
                  "trainer.seed=1", f"hydra.sweep.dir={sweep}") == 0
    capsys.readouterr()
    assert vaerun("eval", f"run_dir={sweep}", "eval.iwae_k=8") == 2
    line = capsys.readouterr().err.strip()
    loop = f'for r in {sweep}/*/; do vaerun eval "run_dir=$r" eval.iwae_k=8; done'
    assert line == f"error: run_dir={sweep} is a sweep, whose runs are its folders: give one, " \
        f"or each in turn: {loop}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", loop], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [metrics(r)["test/iwae_k"] for r in sorted(sweep.glob("*_*"))] == [8]
