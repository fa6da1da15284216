"""The set-up script the README opens with: ./dev serve, ./dev test, ./dev docs.

Its real work (make .venv, pip install, run) is what .ci/run exercises on a
clean checkout; these tests cover how it refuses, in a copy of the script in
an empty folder, so that nothing is ever installed.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

from runnable import ROOT


def run_dev(folder: pathlib.Path, *args: str, **environment: str) -> subprocess.CompletedProcess[str]:
    script = folder / "dev"
    shutil.copy(ROOT / "dev", script)
    env = {key: value for key, value in os.environ.items() if key not in {"VIRTUAL_ENV", "PYTHON"}}
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, timeout=30, env={**env, **environment}
    )


@pytest.mark.parametrize("args", [(), ("build",), ("docs", "one", "two")])
def test_a_wrong_command_prints_the_usage(tmp_path: pathlib.Path, args: tuple[str, ...]) -> None:
    result = run_dev(tmp_path, *args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: ./dev serve"), result.stderr
    assert not (tmp_path / ".venv").exists()


def test_a_missing_python_is_named(tmp_path: pathlib.Path) -> None:
    result = run_dev(tmp_path, "test", PYTHON="no-such-python3")
    assert result.returncode == 1
    assert "no-such-python3 not found" in result.stderr, result.stderr
    assert not (tmp_path / ".venv").exists()


def test_the_readme_and_ci_use_the_script() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in first_block.splitlines()] == ["./dev serve", "./dev test"]
    assert "\n./dev test 2>&1" in (ROOT / ".ci" / "run").read_text()


def test_an_old_python_is_refused(tmp_path: pathlib.Path) -> None:
    old = tmp_path / "python3.9"
    old.write_text('#!/bin/sh\n[ "$1" = -V ] && echo "Python 3.9.2"\nexit 1\n')
    old.chmod(0o755)
    result = run_dev(tmp_path, "serve", PYTHON=str(old))
    assert result.returncode == 1
    assert "needs Python 3.11 or newer" in result.stderr and "Python 3.9.2" in result.stderr, result.stderr
    assert not (tmp_path / ".venv").exists()
