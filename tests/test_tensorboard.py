"""What users see in TensorBoard, asked of TensorBoard's own web application as its web page
asks (HTTP requests through its WSGI app, no socket: CI's sandbox refused loopback connections):
the HParams dashboard's columns, and runs named by what they change."""

from __future__ import annotations

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


@pytest.fixture
def tensorboard():
    """`tensorboard --logdir DIR` as built by TensorBoard itself (all its default plugins, the
    event files loaded once); yields a function that GETs, or POSTs JSON, to its API."""

    def serve(logdir: Path):
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

    return serve


def test_hparams_dashboard_lists_headline_metrics_first_and_the_keys_that_differ(
        vaerun, tmp_path, tensorboard):
    sweep = tmp_path / "outputs"
    assert vaerun("train", "-m", "likelihood=gaussian", "likelihood.reduction=sum,mean",
                  *SMALL, "trainer.epochs=1", f"hydra.sweep.dir={sweep / 'gauss'}") == 0
    assert vaerun("train", "-m", "dataset.dequantize=true", "dataset.n_train=256,512",
                  *SMALL[1:], "trainer.epochs=1", f"hydra.sweep.dir={sweep / 'deq'}") == 0
    api = tensorboard(sweep)
    experiment = api("/data/plugin/hparams/experiment", {"experimentName": ""})
    metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
    assert metrics == HEADLINE  # the headline test metrics, in their order, and only those
    names = {h["name"] for h in experiment["hparamInfos"]}
    assert {"likelihood", "likelihood.sigma", "likelihood.reduction", "dataset.n_train",
            "dataset.dequantize", "optimizer.lr", "trainer.seed"} <= names
    groups = api("/data/plugin/hparams/session_groups", {
        "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"],
        "colParams": [], "startIndex": 0, "sliceSize": 100})
    values = [g["hparams"] for g in groups["sessionGroups"]]
    assert len(values) == 4
    assert {v.get("likelihood.reduction") for v in values} == {"sum", "mean", None}
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
