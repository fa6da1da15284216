"""``python -m benchmarks``: see README.md in this folder."""

from __future__ import annotations

import sys

from benchmarks.suite import main

if __name__ == "__main__":
    sys.exit(main())
