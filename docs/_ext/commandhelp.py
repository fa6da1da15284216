"""The ``command-help`` directive: the output of a ``greenflow ... --help``, run at build time.

The command line page shows what the installed command really says, so it
cannot drift from the code::

    ```{command-help} serve
    ```

runs ``python -m greenflow serve --help`` with this checkout first on the
path and puts its output in a literal block.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


class CommandHelp(SphinxDirective):
    """Run ``greenflow [ARGS] --help`` and show what it prints."""

    optional_arguments = 10
    has_content = False

    def run(self) -> list[nodes.Node]:
        command = [sys.executable, "-m", "greenflow", *self.arguments, "--help"]
        environment = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "88"}
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=environment)
        if result.returncode != 0:
            shown = " ".join(["greenflow", *self.arguments, "--help"])
            raise self.error(f"{shown} exited with status {result.returncode}: {result.stderr.strip()}")
        block = nodes.literal_block(result.stdout, result.stdout)
        block["language"] = "text"
        return [block]


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("command-help", CommandHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
