"""The README's examples run as written: a newcomer's first copy-paste must work."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
RUNNABLE = [block for block in BLOCKS if "make_my_pair" not in block]


def test_readme_has_examples() -> None:
    assert RUNNABLE, "the README lost its runnable examples"


@pytest.mark.parametrize("index", range(len(RUNNABLE)))
def test_readme_example_runs(index: int) -> None:
    result = subprocess.run(
        [sys.executable, "-c", RUNNABLE[index]], capture_output=True, text=True, timeout=30, cwd=README.parent
    )
    assert result.returncode == 0, result.stderr
