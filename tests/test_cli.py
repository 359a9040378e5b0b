"""The console script: --help is instant, every subcommand answers --help."""

import subprocess
import sys
import time

import pytest

from birdsearch.cli import COMMAND_MODULES, build_parser


def test_help_answers_in_under_a_second():
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "birdsearch.cli", "--help"], capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    assert result.returncode == 0 and "COMMAND" in result.stdout
    assert elapsed < 1.0, f"--help took {elapsed:.2f} s: a heavy import crept into a cli module"


def test_help_does_not_import_torch():
    code = (
        "import sys; from birdsearch.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False"


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.mark.parametrize("command", subcommands())
def test_every_subcommand_has_help(command):
    result = subprocess.run(
        [sys.executable, "-m", "birdsearch.cli", command, "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "usage:" in result.stdout


def test_all_command_modules_are_registered():
    assert len(COMMAND_MODULES) == len(set(COMMAND_MODULES))
    assert "models" in subcommands()
