"""Every README and CONTRIBUTING code block marked runnable offline runs as written, on the installed package.

A block is marked by the line `<!-- runnable offline: tests/test_docs.py runs this block -->` right before its
fence. Bash blocks run with the environment's `kvbench` and `lm_eval` on PATH, from a fresh folder that sees the
repository's examples/; Python blocks run in a fresh interpreter there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- runnable offline: tests/test_docs.py runs this block -->"
BLOCK = re.compile(re.escape(MARK) + r"\n```(bash|python)\n(.*?)\n```", re.DOTALL)
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
}


def blocks() -> list:
    found = []
    for document in ("README.md", "CONTRIBUTING.md"):
        text = (ROOT / document).read_text()
        for number, match in enumerate(BLOCK.finditer(text), start=1):
            found.append(pytest.param(match[1], match[2], id=f"{document}-{number}-{match[1]}"))
    return found


def test_the_documents_mark_their_runnable_blocks():
    assert len(blocks()) >= 8
    for document in ("README.md", "CONTRIBUTING.md"):  # a marker is always right before a fence it owns
        text = (ROOT / document).read_text()
        assert text.count(MARK) == len(BLOCK.findall(text))


@pytest.mark.slow
@pytest.mark.parametrize("language, code", blocks())
def test_block_runs_as_written(language, code, tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{code}\n--- stdout\n{done.stdout[-2000:]}\n--- stderr\n{done.stderr[-3000:]}"
