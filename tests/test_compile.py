"""One compiled step (#38): forward, backward, the optimizer's update and the meter's sums
captured as one graph (`torch.compile(fullgraph=True)`: a graph break is an error, and the run
would say it trains eager), for every likelihood, both models and the recipes; one graph for an
epoch whose last batch is short; the same numbers as the eager step; an exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SMALL
from test_gpu_ready import composed

from vaerun import assemble
from vaerun.logs import RunLog
from vaerun.loop import Trainer
from vaerun.signals import StopRequests
from vaerun.step import TrainStep

CONFIGS = [(), ("likelihood=gaussian",), ("likelihood=gaussian_learned", "likelihood.variance=shared"),
           ("likelihood=gaussian_learned", "likelihood.variance=optimal"),
           ("likelihood=gaussian_learned", "likelihood.variance=per_pixel"),
           ("likelihood=gaussian_learned", "likelihood.variance=decoder"),
           ("likelihood=continuous_bernoulli",), ("likelihood=laplace",),
           ("likelihood=discretized_logistic",), ("likelihood=logistic", "dataset.dequantize=true"),
           ("likelihood=discretized_gaussian",), ("dataset=mnist_binary",),
           ("model=conv", "model.channels=4", "model.hidden=16"), ("model=linear", "likelihood=gaussian"),
           ("recipe=antixk",), ("recipe=sigma_vae",)]


def trainer(tmp_path, name: str, *overrides: str) -> Trainer:
    cfg = assemble.checked(composed("dataset.n_train=200", "dataset.n_test=64",
                                    "trainer.batch_size=64", "trainer.log_every=1000", *overrides))
    session = assemble.start(cfg, tmp_path / name)
    session.progress.perm = torch.randperm(200, generator=session.gen)
    return Trainer(session, RunLog(tmp_path / name), StopRequests())


@pytest.mark.parametrize("overrides", CONFIGS, ids=lambda o: ",".join(o) or "default")
def test_the_captured_step_gives_the_eager_steps_parameters(tmp_path, monkeypatch, overrides):
    """20 steps (five epochs of 200 images in batches of 64: every fourth batch is short)."""
    monkeypatch.setattr(TrainStep, "backend", "aot_eager")
    runs = {}
    for c in ("false", "true"):
        runs[c] = t = trainer(tmp_path, c, *overrides, f"trainer.compile={c}")  # seeds torch
        while t.p.step < 20:
            if t.p.batch == t.steps_per_epoch:
                t.p.epoch, t.p.batch, t.order = t.p.epoch + 1, 0, None
                t.p.perm = torch.randperm(200, generator=t.s.gen)
            t.step(t.p.batch)
    assert runs["true"].train_step.compiled is not None  # captured whole: no graph break
    eager, captured = (dict(runs[c].s.vae.named_parameters()) for c in ("false", "true"))
    for k in eager:  # Adam moves a weight whose gradient is float noise by up to lr a step
        diff = (captured[k] - eager[k]).norm() / eager[k].norm()  # (the sums' rounding decides)
        assert diff < 1e-2, (k, diff)
    a, b = (runs[c].s.meter.means() for c in ("false", "true"))
    assert a.keys() == b.keys() and all(b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-3) for k in a)


def test_one_graph_for_an_epoch_whose_last_batch_is_short(tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    monkeypatch.setattr(TrainStep, "backend", "aot_eager")
    t = trainer(tmp_path, "run", "trainer.compile=true")
    assert t.steps_per_epoch == 4 and len(t.s.data.train) % 64 == 8  # 64, 64, 64, 8 images
    before = counters["stats"]["unique_graphs"]
    for b in range(4):
        t.step(b)
    assert t.train_step.compiled is not None
    assert counters["stats"]["unique_graphs"] - before == 1


def test_a_compiled_run_stopped_midway_resumes_to_the_eager_runs_metrics(vaerun, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setattr(TrainStep, "backend", "aot_eager")
    args = [*SMALL, "eval.quality_images=0", "likelihood=gaussian"]
    assert vaerun("train", *args, "trainer.compile=false", f"hydra.run.dir={tmp_path / 'e'}") == 0
    assert vaerun("train", *args, "trainer.epochs=1", "trainer.compile=true",
                  f"hydra.run.dir={tmp_path / 'c'}") == 0
    assert vaerun("train", *args, "trainer.compile=false", "trainer.resume=true",
                  f"hydra.run.dir={tmp_path / 'c'}") == 0
    a, b = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("e", "c"))
    for k in ("test/elbo", "test/kl", "test/nll_iwae"):
        assert b[k] == pytest.approx(a[k], rel=1e-4), k
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "c"), size_guidance={"scalars": 0})
    acc.Reload()
    (captured,) = acc.Scalars("time/compile_seconds")  # once: the compiled epoch, not the eager
    (first, *_) = acc.Scalars("time/epoch_seconds")
    assert captured.step == first.step and 0 < captured.value <= first.value


def test_auto_compiles_on_the_cpu_only_where_it_pays():
    from vaerun.step import CPU_STEPS_TO_PAY, compile_mode

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_mode("auto", cpu, 10 * 469) is None  # the default run: 10 epochs
    assert compile_mode("auto", cpu, 3280 * 2980) == ""  # the IWAE paper's schedule
    assert compile_mode("auto", cuda, 10) == "reduce-overhead"
    assert compile_mode("false", cuda, CPU_STEPS_TO_PAY) is None
    assert compile_mode(True, cpu, 1) == ""


@pytest.mark.slow
def test_a_compiled_cpu_run_says_nothing_on_stderr(tmp_path):
    """Inductor itself (not aot_eager): the run trains compiled, and torch's "No CUDA runtime is
    found" (logged when inductor's C++ build is first imported) does not reach a CPU user."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "vaerun", "train", *SMALL, "eval.iwae_k=0",
                           "eval.quality_images=0", "trainer.compile=true",
                           f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "captured the training step" in done.stdout
    assert done.stderr == ""


def test_a_step_compiled_wrong_is_caught_at_its_first_step_and_undone(tmp_path, monkeypatch):
    """A compiler's wrong code (torch 2.14.1's AVX2 code gave NaN at step 1 for the IWAE paper's
    model): the first captured step is checked against eager's loss on the same batch, its
    update undone, and the run goes on eager exactly as an eager run does."""
    def wrong(gm, example_inputs):  # a backend whose code updates right and returns NaN sums
        def run(*args):
            return [o * float("nan") if o.is_floating_point() else o for o in gm(*args)]
        return run

    monkeypatch.setattr(TrainStep, "backend", wrong)
    runs = {}
    for c in ("false", "true"):
        runs[c] = t = trainer(tmp_path, c, f"trainer.compile={c}")  # seeds torch
        for b in range(3):
            t.step(b)
    assert runs["true"].train_step.compiled is None
    eager, caught = (dict(runs[c].s.vae.named_parameters()) for c in ("false", "true"))
    assert all(torch.equal(caught[k], eager[k]) for k in eager)
    a, b = (runs[c].s.meter.means() for c in ("false", "true"))
    assert a == b


def test_a_compiled_run_hands_the_compilers_settings_back(tmp_path, monkeypatch):
    """The captured step needs two of torch's compiler settings; a notebook's own
    torch.compile afterwards gets its own back (docs/python.md: the process is left as it was)."""
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    import vaerun

    monkeypatch.setattr(TrainStep, "backend", "aot_eager")
    # a process's own, whatever the tests before this one left (torch's own patch: pytest's
    # monkeypatch, undone, hides a config of torch's, which then "does not exist")
    with dynamo.patch(trace_autograd_ops=False), inductor.patch(fallback_random=False):
        m = vaerun.train([*SMALL, "trainer.epochs=1", "eval.quality_images=0", "eval.iwae_k=0",
                          "trainer.compile=true"], run_dir=tmp_path / "run")
        assert m["status"] == "finished" and "time/compile_seconds" not in m  # (a TB tag)
        assert (dynamo.trace_autograd_ops, inductor.fallback_random) == (False, False)


def test_a_notebooks_anomaly_mode_keeps_no_run_from_being_captured(tmp_path, monkeypatch):
    """torch.autograd.set_detect_anomaly(True), left on in a notebook after debugging its own
    model, made every captured step fail to trace ("could not guard on data-dependent
    expression"): the run trained eager, with eager's numbers, not the command's, slower, and
    printed a traceback of 280 lines. A run has torch's default, anomaly mode off; the
    notebook's is handed back."""
    import torch

    import vaerun

    monkeypatch.setattr(TrainStep, "backend", "aot_eager")
    with torch.autograd.set_detect_anomaly(True):
        vaerun.train([*SMALL, "trainer.epochs=1", "eval.quality_images=0", "eval.iwae_k=0",
                      "trainer.compile=true"], run_dir=tmp_path / "run")
        assert torch.is_anomaly_enabled()
    log = (tmp_path / "run" / "train.log").read_text()
    assert "capturing the training step" in log and "could not be captured" not in log


def test_auto_chooses_by_the_runs_steps_so_a_resumed_run_trains_as_it_began(tmp_path,
                                                                            monkeypatch):
    """`trainer.compile=auto` on the CPU chose by the steps left: a long run resumed near its
    end trained eager where the whole run trained compiled, so its numbers were not the
    uninterrupted run's. It chooses by the run's steps (here the threshold is 12 and a run
    16 steps: 8 left after a Ctrl-C as epoch 1 of 2 ends)."""
    import logging
    import os
    import signal

    import vaerun
    from vaerun import step

    monkeypatch.setattr(TrainStep, "backend", "aot_eager")
    monkeypatch.setattr(step, "CPU_STEPS_TO_PAY", 12)

    class CtrlC(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("epoch 1/2: the test set's terms"):
                os.kill(os.getpid(), signal.SIGINT)

    args = [*SMALL, "eval.quality_images=0", "eval.iwae_k=0", "likelihood=gaussian"]
    whole = vaerun.train(args, run_dir=tmp_path / "whole")
    logging.getLogger("vaerun").addHandler(handler := CtrlC())
    try:
        with pytest.raises(vaerun.Interrupted):
            vaerun.train(args, run_dir=tmp_path / "parts")
    finally:
        logging.getLogger("vaerun").removeHandler(handler)
    parts = vaerun.train([*args, "trainer.resume=true"], run_dir=tmp_path / "parts")
    for k in ("test/elbo", "test/kl", "test/mse"):
        assert parts[k] == whole[k], k
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "parts"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("time/compile_seconds")] == [8, 16]  # each command's
