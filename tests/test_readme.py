"""The README's own commands, pasted in order into one shell, on small settings: so the README
cannot drift from what vaerun does. Each `vaerun train` gets a small data set and one epoch
appended (the last value of a key wins), each `vaerun eval` fewer IWAE samples; installing
(`python3 -m venv ...`, run by CI itself), the flagship scripts (hours), SLURM
(tests/test_slurm.py) and TensorBoard's server (started and stopped here after a few seconds)
are the exceptions."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SMALL = ("dataset.n_train=512 dataset.n_test=256 trainer.epochs=1 trainer.batch_size=64 "
         "eval.iwae_k=2")
RUN = ("source ", "vaerun ", ".venv/bin/vaerun ", "tensorboard ", ".venv/bin/tensorboard ",
       "python -m vaerun ")
SKIP = ("hydra/launcher=slurm",)


def readme_commands() -> list[str]:
    """The commands of the README's code blocks (4-space indented lines), comments stripped."""
    out = []
    for line in README.read_text().splitlines():
        if not line.startswith("    "):
            continue
        cmd = re.sub(r"\s+#.*$", "", line.strip())
        if cmd.startswith(RUN) and not any(s in cmd for s in SKIP):
            out.append(cmd)
    return out


def as_test(cmd: str, bin_dir: str) -> str:
    cmd = cmd.replace(".venv/bin/", f"{bin_dir}/")
    if cmd.startswith("source "):
        return f'export PATH="{bin_dir}:$PATH"'
    if "tensorboard " in cmd:  # a server: it must start and serve, then it is stopped
        return f"timeout 8 {cmd} --port 0 >/dev/null 2>&1 || test $? -eq 124"
    if re.search(r"\bvaerun train\b", cmd):
        made = " dataset.verify=false" if re.search(r"dataset=(cifar10|celeba)", cmd) else ""
        return f"{cmd} {SMALL}{made}"
    if re.search(r"\bvaerun eval\b", cmd):
        return f"{cmd} eval.iwae_k=20"
    return cmd


def test_the_readme_lists_the_commands_it_documents():
    cmds = readme_commands()
    assert any(c.startswith("source .venv/bin/activate") for c in cmds)
    for needed in ("vaerun train likelihood=gaussian", "vaerun train -m", "vaerun eval",
                   "vaerun report", "tensorboard --logdir"):
        assert any(needed in c for c in cmds), needed


def test_the_readme_commands_work_pasted_in_order(tmp_path):
    from test_images import make_celeba, make_cifar, make_folder

    make_folder(tmp_path / "photos", n=60)  # the README's own images: made, in their formats
    make_celeba(make_cifar(tmp_path / "data"))
    bin_dir = str(Path(sys.executable).parent)
    script = "set -e\n" + "\n".join(f"echo '$ {c}'\n{as_test(c, bin_dir)}"
                                     for c in readme_commands())
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=1800, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "c")})
    tail = (done.stdout + done.stderr)[-3000:]
    assert done.returncode == 0, tail


def test_the_readme_is_short_and_every_relative_link_resolves():
    """README ≤ 250 lines; every relative link of the README and of docs/*.md names a file that
    exists (anchors aside)."""
    assert len(README.read_text().splitlines()) <= 250
    pages = [README, *sorted((README.parent / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://|#|mailto:", target):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                broken.append(f"{page.name}: {target}")
    assert not broken, broken
    assert len(pages) >= 6  # results, evaluation, sweeps, slurm, reliability, performance
