"""``python -m greenflow.memtrace``: the viewer, the same as ``greenflow memtrace``."""

from __future__ import annotations

import sys

from .command import main

if __name__ == "__main__":
    sys.exit(main())
