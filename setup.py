"""Build bits pyproject.toml cannot express; everything else is declared there.

- Packages: every `kvbench*` folder, data-only ones included (namespace packages: the tiny model's weights,
  its patterns, the prose haystack), plus the repository's top-level `tasks/` (lm-eval task YAMLs) installed
  as `kvbench.tasks` (pyproject's packages.find cannot map a folder to another name).
- The lm-eval start-up hook, in both install modes, so that a plain `lm_eval` command sees `--model kvbench`
  (lm-eval 0.4.13 reads no other package's entry points for models):
  - a wheel (`pip install .`): `build_py` adds, beside the `kvbench` package, `kvbench_lmeval_hook.py` (a copy of
    kvbench/lmeval/hook.py) and `kvbench_lmeval_hook.pth`, whose one line imports it at interpreter start;
  - an editable install (`pip install -e .`): `editable_wheel` adds `kvbench_lmeval_hook.pth` whose one line loads
    the checkout's kvbench/lmeval/hook.py itself as `kvbench_lmeval_hook` (an edit to the hook needs no reinstall).
"""

import shutil
from pathlib import Path

from setuptools import find_namespace_packages, find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

ROOT = Path(__file__).parent
HOOK = "kvbench_lmeval_hook"
HOOK_SOURCE = ROOT / "kvbench" / "lmeval" / "hook.py"


class BuildPy(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install gets its own .pth (EditableWheel)
        out = Path(self.build_lib)
        shutil.copyfile(HOOK_SOURCE, out / f"{HOOK}.py")
        (out / f"{HOOK}.pth").write_text(f"import {HOOK}\n")


def editable_hook_line(source: Path) -> str:
    """One .pth line (site runs lines that begin with `import`) loading `source` as the module HOOK."""
    return (
        f"import importlib.util, sys; spec = importlib.util.spec_from_file_location({HOOK!r}, {str(source)!r}); "
        f"module = importlib.util.module_from_spec(spec); sys.modules[{HOOK!r}] = module; "
        "spec.loader.exec_module(module)\n"
    )


class _WithHook:
    """Wraps setuptools' editable strategy: the wheel it writes also gets the hook's .pth."""

    def __init__(self, strategy):
        self.strategy = strategy

    def __call__(self, wheel, files, mapping):
        self.strategy(wheel, files, mapping)
        wheel.writestr(f"{HOOK}.pth", editable_hook_line(HOOK_SOURCE.resolve()).encode())

    def __enter__(self):
        self.strategy.__enter__()
        return self

    def __exit__(self, *args):
        return self.strategy.__exit__(*args)


class EditableWheel(editable_wheel):
    def _select_strategy(self, *args, **kwargs):
        return _WithHook(super()._select_strategy(*args, **kwargs))


setup(
    packages=find_namespace_packages(include=["kvbench", "kvbench.*"], exclude=["*.__pycache__"])
    + ["kvbench.tasks"]
    + ["kvbench.tasks." + name for name in find_packages("tasks")],
    cmdclass={"build_py": BuildPy, "editable_wheel": EditableWheel},
)
