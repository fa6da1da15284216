"""A handler module that fails to import while a file named ``broken`` is in the working folder."""

from __future__ import annotations

import os
from pathlib import Path

import greenflow

if Path("broken").exists():
    raise RuntimeError("switched off: the file 'broken' exists")


def answer(flow: greenflow.Flow) -> None:
    reader = greenflow.BufferedFlow(flow)
    if reader.readline():
        reader.write(f"{os.getpid()}\n".encode())
