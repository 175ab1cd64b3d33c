import subprocess
import sys

from kvbench import __version__


def kvbench(*args):
    return subprocess.run([sys.executable, "-m", "kvbench", *args], capture_output=True, text=True)


def test_version_and_help():
    assert kvbench("--version").stdout.strip() == f"kvbench {__version__}"
    help_text = kvbench("--help").stdout
    assert "footprint" in help_text


def test_bad_input_is_reported_not_raised():
    result = kvbench("footprint", "--prompt-len", "0")
    assert result.returncode == 2
    assert "kvbench: error: prompt_len and chunk_size must be >= 1" in result.stderr
