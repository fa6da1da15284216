"""Copy: bytes relayed from one TCP connection to another, as a port forwarder does.

A sender writes ``total`` bytes in 64 KiB writes to connection A and shuts
down writing; the relay moves everything from A to connection B and passes
the EOF on; a raw gevent receiver drains B into a 64 KiB buffer and counts
(the count is checked). Timed from the first write to the receiver's EOF.
The sender and receiver are the same raw gevent code for every case, so
the rows differ only in the relay:

- ``greenflow.copy``: ``greenflow.copy(a, b)`` over two socket flows;
- ``gevent recv_into + sendall`` (the baseline): the raw relay loop,
  ``sock.recv_into`` into one reused buffer and ``sendall`` of a memoryview
  slice, then ``shutdown(SHUT_WR)``.
"""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent import socket as gsocket

import greenflow

from ._common import CHUNK, GiB, Measurement, MiB, check_count, connected_pair, pattern, run_gevent
from ._harness import Case, Workload


def _raw(sock: socket.socket) -> Any:
    return gsocket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())


def _send(sock: Any, total: int) -> None:
    payload = pattern(CHUNK)
    for _ in range(total // CHUNK):
        sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)


def _drain(sock: Any) -> int:
    buffer = bytearray(CHUNK)
    recv_into = sock.recv_into
    got = 0
    while count := recv_into(buffer):
        got += count
    return got


def _run(relay: Callable[[socket.socket, socket.socket], None], total: int, timeout: float) -> Measurement:
    sender_end, relay_in = connected_pair(socket.AF_INET)
    relay_out, receiver_end = connected_pair(socket.AF_INET)
    sender, receiver = _raw(sender_end), _raw(receiver_end)

    def go() -> float:
        started = time.perf_counter()
        sending = gevent.spawn(_send, sender, total)
        receiving = gevent.spawn(_drain, receiver)
        try:
            relay(relay_in, relay_out)
            got = receiving.get()
            elapsed = time.perf_counter() - started
            sending.get()
        finally:
            gevent.killall([sending, receiving])
        check_count(got, total, "copy")
        return total / elapsed

    try:
        return Measurement(run_gevent(go, timeout) / MiB)
    finally:
        sender.close()
        receiver.close()


def _greenflow(source: socket.socket, target: socket.socket) -> None:
    with greenflow.from_socket(source) as a, greenflow.from_socket(target) as b:
        greenflow.copy(a, b)


def _gevent(source: socket.socket, target: socket.socket) -> None:
    a, b = _raw(source), _raw(target)
    try:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        recv_into, sendall = a.recv_into, b.sendall
        while count := recv_into(buffer):
            sendall(view[:count])
        b.shutdown(socket.SHUT_WR)
    finally:
        a.close()
        b.close()


def workloads(quick: bool) -> list[Workload]:
    total = 4 * MiB if quick else GiB
    timeout = 20.0 if quick else 120.0
    size = f"{total // MiB:,} MiB" if total < GiB else f"{total // GiB} GiB"
    return [
        Workload(
            name="copy_bulk",
            family="copy",
            title="Copy, one TCP connection to another",
            unit="MiB/s",
            higher_is_better=True,
            size=f"{size} relayed from one TCP connection to another in 64 KiB chunks",
            cases=[
                Case("greenflow.copy", functools.partial(_run, _greenflow, total, timeout)),
                Case(
                    "gevent recv_into + sendall",
                    functools.partial(_run, _gevent, total, timeout),
                    baseline=True,
                ),
            ],
        )
    ]
