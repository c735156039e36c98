"""The house: imports point only downward (no cycle, lazy imports included), short functions,
and a new likelihood is one class plus one yaml file, with nothing else edited."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import SMALL, run_process, scalars
from torch.distributions import Distribution

import vaerun
from vaerun.likelihoods import Likelihood, LikelihoodConfig, pixels

PACKAGE = Path(vaerun.__file__).parent  # the installed package: what users get


def modules() -> dict[str, Path]:
    return {("vaerun" if p.stem == "__init__" else f"vaerun.{p.stem}"): p
            for p in PACKAGE.glob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """Every vaerun module that `path` imports, at module level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in known}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) - {name, "vaerun"} for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_among_vaerun_modules():
    graph = import_graph()
    assert len(graph) >= 15 and graph["vaerun.config"] <= {"vaerun.errors"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_function_longer_than_60_lines():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert not long, long


def test_the_training_loop_knows_no_likelihood():
    text = (PACKAGE / "loop.py").read_text()
    for word in ("getattr(cfg.likelihood", "variance", "min_log_sigma", "reduction"):
        assert word not in text, word


class Cauchy(Likelihood):
    """A toy likelihood for this test: p(x|z) = Cauchy(f(z), γ) per pixel."""

    name = "test_cauchy"

    @dataclass
    class Config(LikelihoodConfig):
        name: str = "test_cauchy"
        gamma: float = 0.2

    def forward(self, out: torch.Tensor, x: torch.Tensor) -> Distribution:
        from torch.distributions import Cauchy as CauchyDist

        return pixels(CauchyDist(self.mean(out), self.cfg.gamma, validate_args=False))


def test_a_new_likelihood_is_one_class_and_one_yaml(vaerun, tmp_path):
    conf = tmp_path / "myconf" / "likelihood"
    conf.mkdir(parents=True)
    (conf / "test_cauchy.yaml").write_text("name: test_cauchy\ngamma: 0.3\n")
    run = tmp_path / "run"
    assert vaerun("train", f"hydra.searchpath=[file://{tmp_path / 'myconf'}]",
                  "likelihood=test_cauchy", *SMALL, f"hydra.run.dir={run}") == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "finished" and m["step"] == 16
    assert "train/log_px_z" in scalars(run) and "test/bits_per_dim" not in m
    # its numbers are the Cauchy's: check one against torch.distributions directly
    lik = Cauchy(Cauchy.Config(gamma=0.3), 4)
    out, x = torch.zeros(1, 4), torch.full((1, 4), 0.5)
    from torch.distributions import Cauchy as CauchyDist

    want = CauchyDist(torch.full((4,), 0.5), 0.3).log_prob(x).sum()
    assert lik(out, x).log_prob(x).item() == want.item()


PLUGIN = '''
from dataclasses import dataclass

from torch.distributions import Cauchy

from vaerun.likelihoods import Likelihood, LikelihoodConfig, pixels


class MyCauchy(Likelihood):
    name = "my_cauchy"

    @dataclass
    class Config(LikelihoodConfig):
        name: str = "my_cauchy"
        gamma: float = 0.2

    def forward(self, out, x):
        return pixels(Cauchy(self.mean(out), self.cfg.gamma, validate_args=False))
'''


def installed(tmp_path: Path, module: str, source: str) -> dict:
    """A package as pip installs one, with its `vaerun.parts` entry point: the module and its
    .dist-info on PYTHONPATH (the environment of every process the command starts)."""
    import os

    site = tmp_path / "site"
    (site / f"{module}-0.1.dist-info").mkdir(parents=True)
    (site / f"{module}.py").write_text(source)
    (site / f"{module}-0.1.dist-info" / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (site / f"{module}-0.1.dist-info" / "entry_points.txt").write_text(
        f"[vaerun.parts]\nmine = {module}\n")
    return {**os.environ, "PYTHONPATH": str(site)}


def my_cauchy_sweep(tmp_path: Path, *launcher: str) -> None:
    """A 2-run sweep of the installed package's likelihood, its yaml given with -cd."""
    env = installed(tmp_path, "my_parts", PLUGIN)
    (tmp_path / "conf" / "likelihood").mkdir(parents=True)
    (tmp_path / "conf" / "likelihood" / "my_cauchy.yaml").write_text("name: my_cauchy\ngamma: 0.2\n")
    sweep = tmp_path / "sweep"
    done = run_process(["train", "-m", "-cd", "conf", *launcher, "likelihood=my_cauchy",
                        "likelihood.gamma=0.2,0.3", *SMALL, "trainer.epochs=1", "eval.iwae_k=0",
                        "eval.quality_images=0", f"hydra.sweep.dir={sweep}"],
                       cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for run, gamma in (("0_likelihood.gamma=0.2", 0.2), ("1_likelihood.gamma=0.3", 0.3)):
        m = json.loads((sweep / run / "metrics.json").read_text())
        assert m["status"] == "finished" and m["step"] == 8
        saved = (sweep / run / ".hydra" / "config.yaml").read_text()
        assert "name: my_cauchy" in saved and f"gamma: {gamma}" in saved


@pytest.mark.slow
def test_a_part_of_an_installed_package_runs_in_a_launchers_workers(tmp_path):
    my_cauchy_sweep(tmp_path, "hydra/launcher=joblib")


def test_a_part_of_an_installed_package_runs_from_the_command_line(tmp_path):
    """A class of one's own reached only a notebook (its module imported by hand): from the
    command line `likelihood=my_cauchy` was "choose one of: ...". A package's `vaerun.parts`
    entry point is imported as a command checks its config, in the command's process and (the
    slow test above) in each launcher's worker; its yaml comes with -cd."""
    my_cauchy_sweep(tmp_path)
    broken = installed(tmp_path / "broken", "broken_parts", "raise ImportError('no torch here')")
    done = run_process(["train", *SMALL, "hydra.run.dir=run"], cwd=tmp_path, env=broken)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: the part module broken_parts (entry point mine of the installed package "
        "broken_parts) failed to import: ImportError: no torch here; fix or uninstall that "
        "package"]
    assert not (tmp_path / "run").exists()
    shadow = installed(tmp_path / "shadow", "shadow_parts", PLUGIN.replace('"my_cauchy"',
                                                                         '"gaussian"'))
    done = run_process(["train", *SMALL, "likelihood=gaussian", "hydra.run.dir=run"],
                       cwd=tmp_path, env=shadow)  # it would have replaced vaerun's gaussian
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: the part module shadow_parts (entry point mine of the installed package "
        "shadow_parts) failed to import: TypeError: shadow_parts.MyCauchy is named 'gaussian', "
        "as vaerun.likelihoods.Gaussian is: a likelihood of that name exists; choose another "
        "name; fix or uninstall that package"]
    assert not (tmp_path / "run").exists()


def test_a_mistake_beside_an_option_of_ones_own_names_the_mistake(vaerun, tmp_path, capsys):
    """With -cd, a key misspelt in one's own option (`likelihood.gama`) was "likelihood=
    my_cauchy is not an option; choose one of: (vaerun's)", since the hints listed vaerun's
    options alone: they read the folders of -cd too."""
    (tmp_path / "conf" / "likelihood").mkdir(parents=True)
    (tmp_path / "conf" / "likelihood" / "my_cauchy.yaml").write_text("name: my_cauchy\ngamma: 0.2\n")
    said = {"likelihood=my_cauchy likelihood.gama=0.3": "likelihood.gama is not a key of this "
            "config (did you mean likelihood.gamma?)",
            "likelihood=gaussian likelihood.gamma=0.3": "pick a likelihood option that has it "
            "(my_cauchy), e.g. vaerun train likelihood=my_cauchy likelihood.gamma=...",
            "likelihood=my_cauchyy": "likelihood=my_cauchyy is not an option (did you mean "
            "my_cauchy?); choose one of: bernoulli, "}
    for args, line in said.items():
        assert vaerun("train", "-cd", "conf", *args.split(), "--cfg", "job") == 2
        err = capsys.readouterr().err
        assert line in err and len(err.strip().splitlines()) == 1, err
    assert err.strip().endswith(", logistic, my_cauchy")
