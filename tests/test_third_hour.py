"""A newcomer's third hour (#41): the resume hint pasted for a run vaerun named and for a sweep
job, HParams that lead with the experiment, no silence in a log, log lines that say what they
are."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from conftest import SMALL, Lines
from test_tensorboard import in_process

QUICK = ["dataset.n_test=256", "eval.iwae_k=2", "eval.quality_images=0", "trainer.batch_size=64"]


def interrupted(args: list[str], cwd: Path, progress: str) -> str:
    """Start `vaerun ARGS`, SIGINT it once it logs `progress`: the resume hint it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "vaerun", *args, "trainer.progress_seconds=0"],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = Lines(proc.stdout)
    out.wait(progress)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130  # (its output is the reader's)
    return next(ln for ln in out.rest().splitlines() if "continue with: " in ln
                ).split("continue with: ", 1)[1]


def pasted(hint: str, cwd: Path) -> None:
    bindir = os.path.dirname(sys.executable)
    done = subprocess.run(["bash", "-c", hint], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"})
    assert done.returncode == 0, (hint, done.stderr[-2000:])


def test_the_hint_of_a_run_vaerun_named_resumes_as_pasted(tmp_path):
    hint = interrupted(["train", *QUICK, "dataset.n_train=8000", "trainer.epochs=2",
                        "likelihood=gaussian"], tmp_path, r"epoch 1/2: 20/\d+ steps")
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    assert "=" in run.name and "," in run.name  # the name that broke the hint before
    pasted(hint, tmp_path)
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "finished" and m["epoch"] == 2


def test_the_hint_of_a_sweep_job_resumes_it_as_pasted(tmp_path):
    sweep = tmp_path / "my sweep"  # a space: the hint must quote it
    hint = interrupted(["train", "-m", *QUICK, "dataset.n_train=4000", "trainer.epochs=2",
                        "likelihood=gaussian", "likelihood.sigma=0.1,0.3",
                        f"hydra.sweep.dir={sweep}"], tmp_path, r"1_likelihood\.sigma=0\.3")
    pasted(hint, tmp_path)
    m = json.loads((sweep / "1_likelihood.sigma=0.3" / "metrics.json").read_text())
    assert m["status"] == "finished" and m["epoch"] == 2 and m["test/sigma"] == pytest.approx(0.3)


def test_hparams_lead_with_the_experiment_whatever_the_runs(vaerun, tmp_path):
    for i, args in enumerate([[], ["likelihood=gaussian", "likelihood.sigma=0.1"],
                              ["recipe=antixk"]]):
        assert vaerun("train", *SMALL, "trainer.epochs=1", *args,
                      f"hydra.run.dir={tmp_path / 'runs' / str(i)}") == 0
    api = in_process(tmp_path / "runs", tmp_path, [])
    experiment = api("/data/plugin/hparams/experiment", {"experimentName": ""})
    first = [h["name"] for h in experiment["hparamInfos"][:5]]
    assert "likelihood" in first and "likelihood.sigma" in first, first
    assert "test/implied_sigma" in [m["name"]["tag"] for m in experiment["metricInfos"][:5]]


STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def test_no_silence_in_a_log_from_start_to_finish(tmp_path):
    log = tmp_path / "out.log"
    with open(log, "w") as f:  # waits for the run to end: no sleep
        done = subprocess.run([sys.executable, "-m", "vaerun", "train", "likelihood=gaussian",
                               "dataset.n_train=4000", "dataset.n_test=500", "trainer.epochs=2",
                               "eval.iwae_k=50", "trainer.progress_seconds=1",
                               f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, stdout=f,
                              stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text[-2000:]
    times = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
             for m in map(STAMP.match, text.splitlines()) if m]
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    assert max(gaps) <= 1.5, max(gaps)
    assert "sample quality" in text and "sigma calibrated" in text and "pictures" in text


def test_log_lines_say_what_they_are(vaerun, tmp_path):
    run = tmp_path / "a run"  # its TensorBoard command is quoted for the shell
    assert vaerun("train", *SMALL, "trainer.epochs=1", "recipe=mse_sum", "beta=0.5",
                  f"hydra.run.dir={run}") == 0
    text = (run / "train.log").read_text()
    assert re.search(r"loss \(mse_sum\): F\.mse_loss.*, run with beta = 0\.5 is the Gaussian VAE "
                     r"with sigma = 0\.5", text), text
    epoch = next(ln for ln in text.splitlines() if "epoch 1/1: test elbo" in ln)
    assert "nats per image" in epoch and "the loss as written" in epoch and "sum over pixels" \
        in epoch
    final = next(ln for ln in text.splitlines() if " - test: test ELBO" in ln)
    assert "metrics.json" in final and f"(tensorboard --logdir '{run}')" in final and \
        "images/" in final
    from vaerun.loop import summary

    assert summary({"test/elbo": -80.0, "test/nll_iwae": 79.0, "test/bits_per_dim": 1.5}, run,
                   20).startswith("test: test ELBO -80 nats, IWAE -log p(x) 79 nats, 1.5 bits/dim;")
    run = tmp_path / "b"
    assert vaerun("train", *SMALL, "trainer.epochs=1", "likelihood=gaussian",
                  f"hydra.run.dir={run}") == 0
    assert "the gaussian (sigma = 0.1) VAE at beta = 1" in (run / "train.log").read_text()


def test_the_report_leads_with_a_short_table(vaerun, tmp_path):
    sweep = tmp_path / "sweep"
    assert vaerun("train", "-m", *SMALL, "trainer.epochs=1", "likelihood=gaussian",
                  "likelihood.sigma=0.1,1", f"hydra.sweep.dir={sweep}") == 0
    assert vaerun("report", f"sweep_dir={sweep}") == 0
    md = (sweep / "report.md").read_text()
    headline = md.split("<details>")[0]
    header = next(ln for ln in headline.splitlines() if ln.startswith("| likelihood.sigma"))
    assert len(header.split("|")) - 2 <= 11 and "iwae_seconds" not in headline
    assert "iwae_seconds" in (sweep / "report.csv").read_text()
