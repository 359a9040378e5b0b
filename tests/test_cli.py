"""The console script: --help is instant, every subcommand answers --help, shared flags and plug-ins."""

import os
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


def test_shared_model_flags_default_to_the_environment_then_the_core(monkeypatch):
    import argparse

    from birdsearch.cli_args import add_model_args
    from birdsearch.model import hub

    monkeypatch.setenv("BIRDSEARCH_TEACHER", "toy")
    monkeypatch.delenv("BIRDSEARCH_STUDENT", raising=False)
    monkeypatch.delenv("BIRDSEARCH_DEVICE", raising=False)
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    args = parser.parse_args([])
    assert (args.teacher, args.student, args.device) == ("toy", hub.DEFAULT_STUDENT, "auto")


def test_the_console_script_plugs_the_toy_world_in():
    code = (
        "import contextlib, io\nfrom birdsearch.cli import main\nfrom birdsearch.model import hub\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    main([])\nprint(hub.parse_spec('toy'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "BIRDSEARCH_PLUGINS"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.stdout.strip() == "('toy', '')", result.stderr


def test_torch_threads_follow_the_usable_cores_unless_the_user_chose(monkeypatch):
    import birdsearch.cli as cli

    monkeypatch.setattr(cli, "available_cpus", lambda: 3)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cli.cap_torch_threads()
    assert os.environ["OMP_NUM_THREADS"] == "3"
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    cli.cap_torch_threads()
    assert os.environ["OMP_NUM_THREADS"] == "7"
