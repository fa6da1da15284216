"""The framed flow's bulk rate against the plain flow it runs over.

Unix-socket bulk as in ``streams``: the client writes ``total`` bytes in
64 KiB writes of one reused payload, then shuts down writing; the server
reads to EOF 64 KiB at a time and counts. The rows differ only in the layer
(every row is greenflow's, and named so, so that ``benchmarks.compare``,
which keeps the rows whose name starts with ``greenflow``, reports them):

- ``greenflow plain flow`` (the baseline): greenflow socket flows, ``read_into``;
- ``greenflow FramedFlow read_into`` and ``greenflow FramedFlow read``: the
  same flows under :class:`greenflow.FramedFlow`, whose writes go out as
  4 KiB frames (16 headers and bodies joined into one send per 64 KiB);
  ``read_into`` reads 16 frames at a time straight into the buffer (one
  ``readv``: headers aside, bodies in place), ``read`` parses the frames of
  a 65,600-byte block read from the socket.

The framing's cost is the ratio: a header per 4 KiB, a copy on the writing
side (and on the reading side for ``read``), the kernel's work per piece of
a scattered read, and the Python that cuts and checks frames. Measured on
the 2-core machine of December 2026 (per 64 KiB: plain 12.5 us, the framed
writer 4.8 us more, the framed reader 4.8 us more), the ratio is about 0.57;
a C program doing the same system calls with no Python reached 0.67 to 0.76.
"""

from __future__ import annotations

import functools
import importlib
import socket
from typing import Any

from ._common import GiB, Measurement, MiB, Skip
from ._harness import Case, Workload
from .streams import bulk_greenflow


def _framed_flow_class() -> Any:
    """greenflow.FramedFlow, or a skip while the framed layer has not landed."""
    framed = getattr(importlib.import_module("greenflow"), "FramedFlow", None)
    if framed is None:
        raise Skip("skipped: greenflow.FramedFlow not available")
    return framed


def bulk(total: int, timeout: float, *, framing: bool, into: bool) -> Measurement:
    layer = _framed_flow_class() if framing else None
    return bulk_greenflow(socket.AF_UNIX, total, timeout, into=into, layer=layer)


def workloads(quick: bool) -> list[Workload]:
    total = 4 * MiB if quick else GiB
    timeout = 20.0 if quick else 120.0
    cases = [
        Case(
            "greenflow plain flow",
            functools.partial(bulk, total, timeout, framing=False, into=True),
            baseline=True,
        ),
        Case(
            "greenflow FramedFlow read_into", functools.partial(bulk, total, timeout, framing=True, into=True)
        ),
        Case("greenflow FramedFlow read", functools.partial(bulk, total, timeout, framing=True, into=False)),
    ]
    size = f"{total // GiB} GiB" if total >= GiB else f"{total // MiB} MiB"
    return [
        Workload(
            name="framed_bulk",
            family="framed",
            title="Framed bulk (Unix socket)",
            unit="MiB/s",
            higher_is_better=True,
            size=f"{size} in 64 KiB writes (4 KiB frames), read to EOF 64 KiB at a time",
            cases=cases,
        )
    ]
