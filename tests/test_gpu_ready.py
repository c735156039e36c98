"""GPU-ready by construction, checked on the CPU: a training step makes no host-device sync.
On a GPU, `.item()`, `bool()` or an `if` on a tensor (all of them `aten._local_scalar_dense`)
waits for the device, and a tensor made from a Python number (`torch.tensor(0.1)`:
`aten.lift_fresh`) is a host-to-device copy. Counted here, op by op, with a TorchDispatchMode."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vaerun import assemble
from vaerun.logs import RunLog
from vaerun.loop import Trainer
from vaerun.signals import StopRequests

# (autograd's own constants, such as torch.where's backward's scalar_tensor(0), are made on the
# gradient's device by a fill kernel: no copy, no sync, and not counted)
SYNCS = ("aten._local_scalar_dense", "aten.lift_fresh", "aten.lift_fresh_copy")


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def test_the_counter_sees_a_sync_and_a_tensor_from_a_number():
    x = torch.ones(3)
    with Count() as c:
        if x.sum() > 0:
            torch.tensor(0.5)
    assert c.ops["aten._local_scalar_dense"] == 1 and c.ops["aten.lift_fresh"] == 1


def composed(*overrides: str):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module("vaerun.conf", version_base="1.3"):
        return compose("train", list(overrides))


def trainer(tmp_path, *overrides: str, device: str = "cpu") -> Trainer:
    cfg = composed("dataset.n_train=1344", "dataset.n_test=64", "trainer.batch_size=64",
                   "trainer.log_every=1000", f"trainer.device={device}", *overrides)
    session = assemble.start(assemble.checked(cfg), tmp_path / "run")
    session.progress.perm = torch.randperm(1344, generator=session.gen).to(session.device)
    runlog = RunLog(tmp_path / "run")
    t = Trainer(session, runlog, StopRequests())
    t.step(0)  # the first step makes the optimizer's state (its step counts among it)
    return t


STEPS = [
    (),
    ("dataset=mnist_binary", "likelihood=bernoulli"),
    ("likelihood=gaussian",),
    ("likelihood=gaussian_learned", "likelihood.variance=optimal"),
    ("likelihood=gaussian_learned", "likelihood.variance=decoder", "dataset.dequantize=true"),
    ("likelihood=laplace",),
    ("likelihood=discretized_logistic",),
    ("likelihood=logistic", "dataset.dequantize=true"),
    ("model=conv", "model.channels=4", "model.hidden=16"),
]


def step_id(overrides: tuple[str, ...]) -> str:
    return ",".join(overrides) or "default"


@pytest.mark.parametrize("overrides", STEPS, ids=step_id)
def test_twenty_training_steps_make_no_host_device_sync(tmp_path, overrides):
    t = trainer(tmp_path, *overrides)
    with Count() as c:
        for b in range(1, 21):
            t.step(b)
    t.runlog.close()
    assert t.p.step == 21
    found = {op: c.ops[op] for op in SYNCS if c.ops[op]}
    assert not found, found
    assert sum(c.ops.values()) > 20 * 10  # the steps ran through the mode
