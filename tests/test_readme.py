"""The README's examples run as written: a newcomer's first copy-paste must work."""

from __future__ import annotations

import pytest

from runnable import ROOT, Example, python_blocks, run_example

RUNNABLE = [example for example in python_blocks(ROOT / "README.md") if "make_my_pair" not in example.code]


def test_readme_has_examples() -> None:
    assert RUNNABLE, "the README lost its runnable examples"


@pytest.mark.parametrize("example", RUNNABLE, ids=lambda example: example.name)
def test_readme_example_runs(example: Example) -> None:
    run_example(example)
