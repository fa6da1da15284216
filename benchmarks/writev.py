"""writev: an 8-byte header and a body, sent as two buffers, many times.

This is the shape of every framed protocol (a length prefix, then the
payload). The same raw gevent receiver drains the other end into a 256 KiB
buffer for every case and checks the byte count, so the rows differ only in
how the sender gets two buffers onto the socket:

- ``greenflow writev``: ``flow.writev([header, body])``;
- ``gevent join + sendall`` (the baseline): ``sock.sendall(header + body)``
  through ``b"".join``, what most code does;
- ``gevent two sendalls``: ``sock.sendall(header); sock.sendall(body)``;
- ``gevent sendmsg``: ``sock.sendmsg([header, body])``, finishing a short
  send with ``sendall`` (gevent's ``sendmsg`` tries once, waits once and may
  return a short count, so correct code must loop).
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

from ._common import KiB, Measurement, check_count, connected_pair, pattern, run_gevent
from ._harness import Case, Workload

HEADER = 8
_RECEIVE = 256 * KiB


def _drain(sock: Any, expected: int) -> None:
    buffer = bytearray(_RECEIVE)
    recv_into = sock.recv_into
    got = 0
    while count := recv_into(buffer):
        got += count
    check_count(got, expected, "writev")


def _run(
    make_sender: Callable[[socket.socket], tuple[Callable[[bytes, bytes], None], Callable[[], None]]],
    body_size: int,
    count: int,
    timeout: float,
) -> Measurement:
    client, server = connected_pair(socket.AF_INET)
    receiver = gsocket.socket(server.family, server.type, server.proto, fileno=server.detach())
    send, finish = make_sender(client)
    header = pattern(HEADER)
    body = pattern(body_size)

    def go() -> float:
        drain = gevent.spawn(_drain, receiver, count * (HEADER + body_size))
        try:
            started = time.perf_counter()
            for _ in range(count):
                send(header, body)
            finish()
            drain.get()
            return count / (time.perf_counter() - started)
        finally:
            drain.kill()

    try:
        return Measurement(run_gevent(go, timeout))
    finally:
        receiver.close()


def _greenflow(sock: socket.socket) -> tuple[Callable[[bytes, bytes], None], Callable[[], None]]:
    flow = greenflow.from_socket(sock)
    writev = flow.writev

    def send(header: bytes, body: bytes) -> None:
        writev([header, body])

    def finish() -> None:
        flow.close()

    return send, finish


def _gevent(sock: socket.socket, how: str) -> tuple[Callable[[bytes, bytes], None], Callable[[], None]]:
    raw = gsocket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    sendall, sendmsg = raw.sendall, raw.sendmsg
    join = b"".join

    def send_joined(header: bytes, body: bytes) -> None:
        sendall(join([header, body]))

    def send_twice(header: bytes, body: bytes) -> None:
        sendall(header)
        sendall(body)

    def send_gathered(header: bytes, body: bytes) -> None:
        sent = sendmsg([header, body])
        if sent < len(header) + len(body):
            if sent < len(header):
                sendall(header[sent:])
                sendall(body)
            else:
                sendall(memoryview(body)[sent - len(header) :])

    senders = {"join": send_joined, "twice": send_twice, "sendmsg": send_gathered}
    return senders[how], raw.close


def workloads(quick: bool) -> list[Workload]:
    timeout = 20.0 if quick else 120.0
    found = []
    for name, body, full_count in (
        ("writev_256", 256, 200_000),
        ("writev_4k", 4 * KiB, 200_000),
        ("writev_64k", 64 * KiB, 20_000),
    ):
        count = 500 if quick else full_count
        cases = [
            Case("greenflow writev", functools.partial(_run, _greenflow, body, count, timeout)),
            Case(
                "gevent join + sendall",
                functools.partial(_run, functools.partial(_gevent, how="join"), body, count, timeout),
                baseline=True,
            ),
            Case(
                "gevent two sendalls",
                functools.partial(_run, functools.partial(_gevent, how="twice"), body, count, timeout),
            ),
            Case(
                "gevent sendmsg",
                functools.partial(_run, functools.partial(_gevent, how="sendmsg"), body, count, timeout),
            ),
        ]
        size = f"{body} B" if body < KiB else f"{body // KiB} KiB"
        found.append(
            Workload(
                name=name,
                family="writev",
                title=f"writev, 8 B header + {size} body",
                unit="messages/s",
                higher_is_better=True,
                size=f"{count:,} messages of an 8-byte header and a {size} body as two buffers, over TCP",
                cases=cases,
            )
        )
    return found
