"""The house's floors (DESIGN.md, "The house"): imports point down. A module that reaches up a floor, even
inside a function, is reported with the line that does it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kvbench

PACKAGE = Path(kvbench.__file__).parent

TOP = {"cli", "demo", "sweep", "launch", "scoring", "leaderboard", "views", "lmeval"}
RUNTIME = {"engine", "step", "cache", "attention", "devices"}

# module (or package, ending in "/") -> kvbench modules it must never import
FORBIDDEN = {
    "methods/": TOP | RUNTIME | {"training", "testing"},
    "method": TOP | RUNTIME | {"plugins", "methods", "hooks"},
    "hooks": TOP | RUNTIME | {"plugins", "methods"},
    "data/": TOP | RUNTIME | {"methods", "training", "testing"},
    "tiny/": TOP | {"training", "testing"},
    "engine": TOP | {"training", "testing"},
    "step": TOP | {"engine", "training", "testing"},
    "cache": TOP | {"engine", "step", "training", "testing"},
    "attention": TOP | {"engine", "training", "testing"},
    "ledger": TOP | RUNTIME | {"methods", "plugins"},
    "statistics": TOP | RUNTIME | {"method", "methods", "plugins", "data", "ledger"},
    "settings": TOP | RUNTIME | {"method", "methods", "plugins", "data"},
    "files": TOP | RUNTIME | {"method", "methods", "plugins", "data"},
    "claims": TOP | RUNTIME | {"method", "methods", "plugins", "data"},
}
EXEMPT = {"tiny/demo"}  # the deprecated alias of kvbench/demo.py, kept for one release


def _module_name(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").as_posix().removesuffix("/__init__")


def _kvbench_imports(path: Path):
    """(line, first component under kvbench) for every `import kvbench.x` / `from kvbench.x import` / `from kvbench
    import x` in the file, at any depth."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + (
                [f"kvbench.{alias.name}" for alias in node.names] if node.module == "kvbench" else []
            )
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "kvbench" and len(parts) > 1:
                yield node.lineno, parts[1]


def _rules_for(module: str) -> set[str]:
    forbidden = set()
    for key, names in FORBIDDEN.items():
        if module == key or (key.endswith("/") and module.startswith(key)):
            forbidden |= names
    return forbidden


def test_every_rule_names_a_real_module():
    real = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    for key, names in FORBIDDEN.items():
        assert key.rstrip("/") in real, key
        assert names <= real, names - real


def test_imports_point_down():
    breaches = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        if module in EXEMPT:
            continue
        forbidden = _rules_for(module)
        breaches += [
            f"kvbench/{path.relative_to(PACKAGE)}:{line} imports kvbench.{name}"
            for line, name in _kvbench_imports(path)
            if name in forbidden
        ]
    assert not breaches, "imports that point up a floor:\n" + "\n".join(breaches)


@pytest.mark.parametrize("module", ["methods/streamingllm", "tiny/evaluate", "data/synth", "statistics"])
def test_a_module_under_a_rule_is_found(module):
    # guards the matcher itself: each of these modules falls under at least one rule
    assert _rules_for(module)
