"""Code examples in Markdown, run as programs: the README's and the docs'.

Shared by ``test_readme.py`` and ``test_docs_examples.py``. Every ```python
block is a whole program; it runs in a fresh interpreter with the repository
as its working folder, and a traceback's line numbers are those of the page.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class Example:
    """One ```python block: where it is, and its code."""

    page: pathlib.Path
    line: int  # of the block's first line of code, counted from 1
    code: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def python_blocks(page: pathlib.Path) -> list[Example]:
    """Every ```python block of the Markdown file ``page``, in order."""
    text = page.read_text()
    found = []
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start(1)) + 1
        found.append(Example(page, line, match.group(1)))
    return found


def run_example(example: Example, timeout: float = 30) -> None:
    """Run ``example`` in a new interpreter; fail with its stderr unless it exits 0."""
    padded = "\n" * (example.line - 1) + example.code  # line numbers as on the page
    result = subprocess.run(
        [sys.executable, "-c", padded], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    assert result.returncode == 0, f"the example at {example.name} failed:\n{result.stderr}"
