"""Every code example of the documentation runs as written, each in its own interpreter.

The docs are Markdown pages in ``docs/``; every ```python block in them is a
whole program (the pages have no fragments), so each must exit 0. The
examples assert what they show: the patch_all round trip, the chat server with
several real clients, the BusyError of a naive broadcast.
"""

from __future__ import annotations

import pytest

from runnable import ROOT, Example, python_blocks, run_example

PAGES = sorted((ROOT / "docs").glob("*.md"))
EXAMPLES = [example for page in PAGES for example in python_blocks(page)]


def test_docs_have_examples() -> None:
    pages = {example.page.stem for example in EXAMPLES}
    assert {"index", "start", "contract", "legacy", "server", "tls"} <= pages, pages


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda example: example.name)
def test_docs_example_runs(example: Example) -> None:
    run_example(example)


def test_examples_are_found_where_they_are() -> None:
    legacy = ROOT / "docs" / "legacy.md"
    lines = legacy.read_text().splitlines()
    for example in python_blocks(legacy):
        assert lines[example.line - 2] == "```python"
        assert lines[example.line - 1] == example.code.splitlines()[0]
