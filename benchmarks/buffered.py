"""buffered: one long line read with BufferedFlow.readline, delivered in small pieces.

The claim to check is that finding a record is linear in its length however
the bytes are chunked (the record search resumes where the last fruitless
one stopped, and consumed bytes leave a ``bytearray`` from the front). Each
workload delivers the line through a memory pair whose reads are capped
(``incoming.trickle``) at one piece size, and reads it with one
``readline``. The rows are throughput, in MB/s of line:

- ``BufferedFlow, N MiB line``: the full-length line;
- ``BufferedFlow, N/4 MiB line`` (the baseline): a line a quarter as long.

Linear means the same throughput for both, a ratio near 1.0 (quadratic
would give about 0.25). The 1 KiB workload adds ``hand-written bytes +=``:
the loop most code starts with (``while b"\\n" not in data: data +=
flow.read()``), which copies and searches the whole line once per piece.
With 1-byte pieces the line is 1 MiB (10 MiB would be ten million reads:
minutes of per-read overhead, which says nothing about the search).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import gevent

from greenflow import BufferedFlow, Flow
from greenflow.testing import memory_pair

from ._common import KiB, Measurement, MiB, check_count, run_gevent
from ._harness import Case, Workload


def _buffered_readline(flow: Flow, length: int) -> bytes:
    return BufferedFlow(flow, limit=length).readline()


def _hand_written(flow: Flow, length: int) -> bytes:
    data = b""
    while b"\n" not in data:
        data += flow.read()
    return data


def _run(read_line: Callable[[Flow, int], bytes], length: int, piece: int, timeout: float) -> Measurement:
    reader, writer = memory_pair(max(piece, 64 * KiB))
    reader.incoming.trickle = piece
    line = b"x" * (length - 1) + b"\n"

    def go() -> float:
        sending = gevent.spawn(writer.write, line)
        try:
            started = time.perf_counter()
            got = read_line(reader, length)
            elapsed = time.perf_counter() - started
            sending.get()
        finally:
            sending.kill()
        check_count(len(got), length, "readline")
        return length / elapsed / 1e6

    try:
        return Measurement(run_gevent(go, timeout))
    finally:
        reader.close()
        writer.close()


def _size(length: int) -> str:
    return f"{length / MiB:g} MiB" if length >= MiB else f"{length // KiB} KiB"


def workloads(quick: bool) -> list[Workload]:
    timeout = 20.0 if quick else 300.0
    found = []
    for name, piece, full in (
        ("buffered_line_64k", 64 * KiB, 10 * MiB),
        ("buffered_line_1k", KiB, 10 * MiB),
        ("buffered_line_1b", 1, MiB),
    ):
        length = 64 * KiB if quick else full
        quarter = length // 4
        cases = [
            Case(
                f"BufferedFlow, {_size(length)} line",
                functools.partial(_run, _buffered_readline, length, piece, timeout),
            ),
            Case(
                f"BufferedFlow, {_size(quarter)} line",
                functools.partial(_run, _buffered_readline, quarter, piece, timeout),
                baseline=True,
            ),
        ]
        if piece == KiB:
            cases.append(
                Case(
                    f"hand-written bytes +=, {_size(length)} line",
                    functools.partial(_run, _hand_written, length, piece, timeout),
                )
            )
        pieces = f"{piece} B" if piece < KiB else f"{piece // KiB} KiB"
        found.append(
            Workload(
                name=name,
                family="buffered",
                title=f"readline of a long line in {pieces} pieces",
                unit="MB/s",
                higher_is_better=True,
                size=f"one line of {_size(length)} (and of {_size(quarter)}), read {pieces} at a time",
                cases=cases,
            )
        )
    return found
