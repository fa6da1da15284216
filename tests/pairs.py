"""Factories of connected flow pairs, one per kind of flow, for the tests."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable

import gevent
import gevent.socket

import greenflow
from greenflow import Flow, SocketFlow
from greenflow.testing import lockstep_pair, memory_pair

Pair = tuple[Flow, Flow]


def _accepting(family: int, address: object) -> socket.socket:
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(64)
    return listener


def tcp_pair(host: str = "127.0.0.1") -> tuple[SocketFlow, SocketFlow]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with _accepting(family, (host, 0)) as listener:
        client = greenflow.connect_tcp(host, listener.getsockname()[1], timeout=None)
        accepted, _ = listener.accept()
    return client, greenflow.from_socket(accepted)


def tcp6_pair() -> tuple[SocketFlow, SocketFlow]:
    return tcp_pair("::1")


def unix_pair() -> tuple[SocketFlow, SocketFlow]:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "s")
        with _accepting(socket.AF_UNIX, path) as listener:
            client = greenflow.connect_unix(path)
            accepted, _ = listener.accept()
    return client, greenflow.from_socket(accepted)


def fd_pair() -> tuple[SocketFlow, SocketFlow]:
    left, right = socket.socketpair()
    return greenflow.from_fd(left.detach()), greenflow.from_fd(right.detach())


def gevent_socket_pair() -> tuple[SocketFlow, SocketFlow]:
    left, right = gevent.socket.socketpair()
    return greenflow.from_socket(left), greenflow.from_socket(right)


def clogged(make_pair: Callable[[], tuple[SocketFlow, SocketFlow]]) -> Callable[[], Pair]:
    """A factory whose pairs have both send buffers full, so a write blocks."""

    def make() -> Pair:
        a, b = make_pair()
        for flow in (a, b):
            # TCP keeps moving data from the send buffer to the peer's receive
            # buffer after EAGAIN, so fill until a round after a pause adds nothing.
            while _fill(flow.socket):
                gevent.sleep(0.005)
        return a, b

    return make


def _fill(sock: socket.socket) -> int:
    sent = 0
    try:
        while True:
            sent += sock.send(b"\0" * 65536)
    except BlockingIOError:
        return sent


def has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


SOCKET_PAIRS: dict[str, Callable[[], tuple[SocketFlow, SocketFlow]]] = {
    "tcp4": tcp_pair,
    "tcp6": tcp6_pair,
    "unix": unix_pair,
    "socketpair": greenflow.socketpair,
    "from_fd": fd_pair,
    "gevent_socket": gevent_socket_pair,
}

MEMORY_PAIRS: dict[str, Callable[[], Pair]] = {
    "memory": memory_pair,
    "memory_1byte": lambda: memory_pair(1),
    "lockstep": lockstep_pair,
}
