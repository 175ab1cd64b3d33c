"""Build bits pyproject.toml cannot express; everything else is declared there.

- Packages: every `kvbench*` folder, data-only ones included (namespace packages: the tiny model's weights,
  its patterns, the prose haystack), plus the repository's top-level `tasks/` (lm-eval task YAMLs) installed
  as `kvbench.tasks` (pyproject's packages.find cannot map a folder to another name).
- `build_py` adds to the wheel, beside the `kvbench` package, `kvbench_lmeval_hook.py` (a copy of
  kvbench/lmeval/hook.py) and `kvbench_lmeval_hook.pth`, whose one line imports it at interpreter
  start, so a plain `lm_eval` command sees `--model kvbench` (lm-eval 0.4.13 reads no other
  package's entry points for models). Only a non-editable install runs this; an editable one gets
  no hook (`kvbench eval` works either way).
"""

import shutil
from pathlib import Path

from setuptools import find_namespace_packages, find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
HOOK = "kvbench_lmeval_hook"


class BuildPy(build_py):
    def run(self):
        super().run()
        out = Path(self.build_lib)
        shutil.copyfile(ROOT / "kvbench" / "lmeval" / "hook.py", out / f"{HOOK}.py")
        (out / f"{HOOK}.pth").write_text(f"import {HOOK}\n")


setup(
    packages=find_namespace_packages(include=["kvbench", "kvbench.*"], exclude=["*.__pycache__"])
    + ["kvbench.tasks"]
    + ["kvbench.tasks." + name for name in find_packages("tasks")],
    cmdclass={"build_py": BuildPy},
)
