"""Both install modes carry the lm-eval start-up hook: the wheel a plain `pip install .` installs and the editable
wheel `pip install -e .` installs (PEP 660) each hold a `kvbench_lmeval_hook.pth`, and loading only that file makes
lm-eval's registry know `--model kvbench` and its task index kvbench's tasks."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Run with -S (no site processing: the suite's own install, whose hook would answer for it, stays out), the suite's
# packages on the path as plain entries, then only the given folder processed as a site dir.
PROBE = """
import site, sys
sys.path.append({packages!r})
{load}
from lm_eval.api.registry import model_registry
import lm_eval.models
from lm_eval.tasks import TaskManager
print("kvbench" in model_registry, "kvbench_synth_recall" in TaskManager().all_tasks)
"""


def build(kind: str, out: Path) -> Path:
    """The wheel setuptools' PEP 517/660 backend builds, as pip would ask it to."""
    hook = "build_editable" if kind == "editable" else "build_wheel"
    done = subprocess.run(
        [sys.executable, "-c", f"from setuptools import build_meta; print(build_meta.{hook}({str(out)!r}))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


def probe(site_dir: Path | None) -> str:
    load = f"site.addsitedir({str(site_dir)!r})" if site_dir else ""
    code = PROBE.format(packages=sysconfig.get_paths()["purelib"], load=load)
    done = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=ROOT / "tests",
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()[-2:]


@pytest.mark.parametrize("kind", ["plain", "editable"])
def test_each_install_mode_carries_the_hook(kind, tmp_path):
    wheel = build(kind, tmp_path)
    site_dir = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "kvbench_lmeval_hook.pth" in names
        site_dir.mkdir()
        for name in names:  # what pip puts beside the other packages: the top-level .pth and the hook module
            if "/" not in name and name.startswith("kvbench_lmeval_hook"):
                archive.extract(name, site_dir)
    if kind == "editable":  # it loads the checkout's hook itself: an edit needs no reinstall
        assert str(ROOT / "kvbench" / "lmeval" / "hook.py") in (site_dir / "kvbench_lmeval_hook.pth").read_text()
    else:
        assert (site_dir / "kvbench_lmeval_hook.py").read_text() == (ROOT / "kvbench/lmeval/hook.py").read_text()
    assert probe(site_dir) == ["True", "True"]
    assert probe(None) == ["False", "False"]  # the probe does not find the model without the hook
