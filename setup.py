"""Build bits pyproject.toml cannot express; everything else is declared there.

`build_py` adds to the wheel, beside the `kvbench` package:
- `kvbench_lmeval_hook.py` (a copy of kvbench/lmeval/hook.py) and `kvbench_lmeval_hook.pth`, whose
  one line imports it at interpreter start, so a plain `lm_eval` command sees `--model kvbench`
  (lm-eval 0.4.13 reads no other package's entry points for models);
- the repository's top-level `tasks/` (lm-eval task YAMLs) as `kvbench/tasks/`, when it exists.
Only a non-editable install (`pip install .`) runs this; an editable one gets no hook.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
HOOK = "kvbench_lmeval_hook"


class BuildPy(build_py):
    def run(self):
        super().run()
        out = Path(self.build_lib)
        shutil.copyfile(ROOT / "kvbench" / "lmeval" / "hook.py", out / f"{HOOK}.py")
        (out / f"{HOOK}.pth").write_text(f"import {HOOK}\n")
        tasks = ROOT / "tasks"
        if tasks.is_dir():
            shutil.copytree(tasks, out / "kvbench" / "tasks", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPy})
