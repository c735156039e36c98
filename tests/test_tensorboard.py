"""What users see in TensorBoard, asked as its web page asks: the HParams dashboard's columns,
and runs named by what they change. Twice: through TensorBoard's own web application in-process
(WSGI requests, no socket: CI's sandbox refused loopback connections to a served TensorBoard for
120 s), and, in the slow set, of a running `tensorboard` server over HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import SMALL
from tensorboard import default, program
from werkzeug.test import Client

from vaerun.config import HEADLINE


class _Unserved:
    """TensorBoard's server class, kept from binding a port: it only holds the WSGI app."""

    def __init__(self, app, flags):
        self.app = app


def in_process(logdir: Path, tmp_path: Path, procs: list):
    """`tensorboard --logdir DIR` as TensorBoard builds it (all its default plugins, the event
    files loaded once), asked through its WSGI app."""
    board = program.TensorBoard(plugins=default.get_plugins(), server_class=_Unserved)
    board.configure(argv=["", "--logdir", str(logdir), "--load_fast=false",
                          "--reload_interval", "0", "--reload_task", "blocking"])
    client = Client(board._make_server().app)

    def get(path: str, body: dict | None = None):
        headers = {"X-XSRF-Protected": "1"}
        reply = (client.get(path, headers=headers) if body is None
                 else client.post(path, json=body, headers=headers))
        assert reply.status_code == 200, (path, reply.status_code, reply.get_data()[:500])
        return reply.get_json()

    return get


def served(logdir: Path, tmp_path: Path, procs: list):
    """A running `tensorboard --logdir DIR` server, asked over HTTP on loopback (no proxy)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / f"tensorboard-{port}.log", "w+")  # noqa: SIM115 (kept open)
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port),
         "--host", "127.0.0.1", "--reload_interval", "0", "--load_fast=false"],
        stdout=log, stderr=subprocess.STDOUT))
    base, opener = f"http://127.0.0.1:{port}", urllib.request.build_opener(
        urllib.request.ProxyHandler({}))
    deadline = time.time() + 120
    while True:
        try:
            opener.open(f"{base}/data/runs", timeout=5).read()
            break
        except OSError:
            log.seek(0)
            assert procs[-1].poll() is None, f"tensorboard ended: {log.read()[-2000:]}"
            assert time.time() < deadline, f"tensorboard never served: {log.read()[-2000:]}"
            time.sleep(0.3)

    def get(path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{base}{path}", data=data, headers={
            "Content-Type": "application/json", "X-XSRF-Protected": "1"})
        return json.loads(opener.open(request, timeout=30).read())

    return get


@pytest.fixture(params=[in_process, pytest.param(served, marks=pytest.mark.slow)],
                ids=["app", "server"])
def tensorboard(request, tmp_path):
    """A function that starts TensorBoard on a folder and returns its API: GET, or POST JSON."""
    procs: list = []
    yield lambda logdir: request.param(logdir, tmp_path, procs)
    for p in procs:
        p.terminate()
        p.wait(timeout=30)


def test_hparams_dashboard_lists_headline_metrics_first_and_the_keys_that_differ(
        vaerun, tmp_path, tensorboard):
    sweep = tmp_path / "outputs"
    assert vaerun("train", "-m", "likelihood=gaussian", "likelihood.sigma=0.1,1",
                  *SMALL, "trainer.epochs=1", f"hydra.sweep.dir={sweep / 'gauss'}") == 0
    assert vaerun("train", "-m", "dataset.dequantize=true", "dataset.n_train=256,512",
                  *SMALL[1:], "trainer.epochs=1", f"hydra.sweep.dir={sweep / 'deq'}") == 0
    api = tensorboard(sweep)
    experiment = api("/data/plugin/hparams/experiment", {"experimentName": ""})
    metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
    assert metrics == HEADLINE  # the headline test metrics, in their order, and only those
    names = {h["name"] for h in experiment["hparamInfos"]}
    # the swept key leads (whichever of the two sweeps' experiments TensorBoard shows)
    assert experiment["hparamInfos"][0]["name"] in ("likelihood.sigma", "dataset.n_train")
    assert {"likelihood", "likelihood.sigma", "loss", "loss.recon", "dataset.n_train",
            "dataset.dequantize", "optimizer.lr", "trainer.seed"} <= names
    groups = api("/data/plugin/hparams/session_groups", {
        "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"],
        "colParams": [], "startIndex": 0, "sliceSize": 100})
    values = [g["hparams"] for g in groups["sessionGroups"]]
    assert len(values) == 4
    # trials named by their folders (short, distinct), not by their whole paths
    assert sorted(g["name"] for g in groups["sessionGroups"]) == [
        "0_dataset.n_train=256", "0_likelihood.sigma=0.1", "1_dataset.n_train=512",
        "1_likelihood.sigma=1"]
    # booleans as booleans
    assert {v.get("dataset.dequantize") for v in values} == {True, False}
    assert {v.get("likelihood.sigma") for v in values} == {0.1, 1, None}
    assert {v.get("dataset.n_train") for v in values} >= {256, 512}


def test_single_runs_are_named_by_what_they_change(vaerun, tmp_path, tensorboard):
    assert vaerun("train", *SMALL, "trainer.epochs=1", "likelihood=gaussian",
                  "likelihood.sigma=1") == 0
    assert vaerun("train", *SMALL, "trainer.epochs=1") == 0
    runs = sorted(p.name for p in (tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 2
    # a short time, then the overrides sorted as Hydra names sweep jobs (the last of a key)
    assert runs[0].endswith("_dataset.n_test=256,dataset.n_train=512,eval.batch_size=128,"
                            "eval.iwae_k=4,likelihood.sigma=1,likelihood=gaussian,"
                            "trainer.batch_size=64,trainer.epochs=1,trainer.log_every=2"), runs
    assert len(runs[0].split("_", 1)[0]) == len("1125-031200")
    api = tensorboard(tmp_path / "outputs")
    listed = api("/data/runs")
    assert sorted(r.split("/", 1)[1] for r in listed) == runs
