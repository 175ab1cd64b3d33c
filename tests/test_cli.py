import json
import subprocess
import sys

import pytest

from kvbench import __version__
from kvbench.cli import main


def kvbench(*args):
    return subprocess.run([sys.executable, "-m", "kvbench", *args], capture_output=True, text=True)


def test_version_and_help(capsys):
    # In this process; README's first command block runs `kvbench --version` itself (tests/test_docs.py).
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"kvbench {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "footprint" in capsys.readouterr().out


def test_bad_input_is_reported_not_raised(capsys):
    assert main(["footprint", "--prompt-len", "0"]) == 2
    assert "kvbench: error: prompt_len and chunk_size must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_python_dash_m_kvbench_runs_the_command():
    result = kvbench("footprint", "--prompt-len", "0")
    assert result.returncode == 2 and "kvbench: error: prompt_len and chunk_size must be >= 1" in result.stderr


def test_methods_at_80_columns_cut_nothing_and_show_the_defaults_that_apply(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert all(len(line) <= 80 for line in out.splitlines()) and "…" not in out
    lines = out.splitlines()
    start = lines.index("snapkv  [score; from kvbench (built-in)]")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(" "))
    snapkv = " ".join(line.strip() for line in lines[start:end])
    assert "keep=0.5*" in snapkv and "schedule=chunked" in snapkv and "kernel=5" in snapkv  # whole, not cut


def test_methods_lists_every_builtin_with_its_description_category_schedules_and_knob(capsys):
    from kvbench.methods import BUILTIN_METHODS

    assert main(["methods", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    builtin = {name: row for name, row in rows.items() if row["source"] == "kvbench (built-in)"}
    assert len(builtin) == len(BUILTIN_METHODS) == 18  # the paper's eight and kvbench#27's ten
    assert all(row["description"] and row["category"] for row in builtin.values())
    assert builtin["adakv"]["schedules"] == ["postfill", "chunked", "patched"] and builtin["adakv"]["knob"] == "keep"
    assert builtin["simlayerkv"]["schedules"] == ["postfill", "chunked"]
    assert builtin["think"]["knob"] == "channel_keep" and builtin["think"]["schedules"] == []
    assert (
        "scorer_params" not in builtin["chunkkv"]["parameters"]
        and builtin["chunkkv"]["parameters"]["scorer"] == "snapkv"
    )
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert out.count("[") >= len(rows) and "schedules: postfill, chunked, patched" in out
