"""Connections that wait for their first bytes on the hub, with no greenlet running.

With a first-data timeout a connection is accepted into an I/O watcher and a
timer; its greenlet starts when the client sends something (or closes), when
the time runs out, or when a stop begins. These tests look at the server's
connections from inside (``Server._connections``) to see that no greenlet
has run while the client said nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from OpenSSL import SSL

import greenflow
from greenflow import Flow
from greenflow.handlers import echo
from greenflow.listeners import listen_tls
from greenflow.server import Connection, Phase, Server
from greenflow.testing import wait_all_blocked

tls = pytest.importorskip("greenflow.tls", reason="greenflow.tls cannot be imported")


def port_of(server: Server) -> int:
    return int(server.addresses[0][1])  # type: ignore[index]


def waiting(server: Server) -> list[Connection]:
    """The server's connections that wait on the hub: accepted, their greenlet never started."""
    found = []
    for connection in server._connections.live:
        if connection.phase is Phase.AWAITING_DATA and connection.waiter is not None:
            assert not connection, "a connection waiting on the hub has a started greenlet"
            found.append(connection)
    return found


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Recorder:
    """A handler that echoes once and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, flow: Flow) -> None:
        self.calls += 1
        data = flow.read()
        if data:
            flow.write(data)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def server(recorder: Recorder) -> Iterator[Server]:
    server = Server(recorder, "tcp://127.0.0.1:0", first_data_timeout=30, grace=5)
    server.start()
    yield server
    server.stop(grace=0)


def test_the_first_bytes_start_the_handler(server: Server, recorder: Recorder) -> None:
    with greenflow.connect_tcp("127.0.0.1", port_of(server), timeout=10) as client:
        wait_all_blocked()
        assert len(waiting(server)) == 1
        assert server.active_connections == server.opening_connections == 1
        assert recorder.calls == 0
        client.write(b"hello")
        assert client.read() == b"hello"
        assert recorder.calls == 1
        assert waiting(server) == []


def test_a_client_that_closes_without_sending_leaves_nothing_behind(
    server: Server, recorder: Recorder
) -> None:
    before = open_fds()
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port_of(server)), timeout=10):
            pass
    wait_all_blocked()
    assert server.active_connections == 0
    assert recorder.calls == 20  # the handler saw each EOF, as without the wait
    assert open_fds() == before


def test_a_client_that_resets_without_sending_leaves_nothing_behind(server: Server) -> None:
    before = open_fds()
    sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=10)
    wait_all_blocked()
    assert len(waiting(server)) == 1
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # a reset
    wait_all_blocked()
    assert server.active_connections == 0
    assert open_fds() == before


def test_the_first_data_timeout_ends_a_waiting_connection_without_its_handler(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="greenflow.server")
    with Server(recorder, "tcp://127.0.0.1:0", first_data_timeout=0.1) as server:
        with greenflow.connect_tcp("127.0.0.1", port_of(server), timeout=10) as silent:
            assert silent.read() == b""
        wait_all_blocked()
        assert server.active_connections == 0
    assert recorder.calls == 0
    assert "sent nothing in 0.1 s; closed" in caplog.text


def test_a_deadline_shorter_than_the_first_data_timeout_ends_the_wait(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="greenflow.server")
    server = Server(recorder, "tcp://127.0.0.1:0", first_data_timeout=30, connection_deadline=0.1)
    with server, greenflow.connect_tcp("127.0.0.1", port_of(server), timeout=10) as silent:
        assert silent.read() == b""
    assert recorder.calls == 0
    assert "its deadline of 0.1 s passed" in caplog.text


def test_the_deadline_counts_the_wait(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="greenflow.server")
    server = Server(echo, "tcp://127.0.0.1:0", first_data_timeout=5, connection_deadline=3)
    with server, greenflow.connect_tcp("127.0.0.1", port_of(server), timeout=10) as client:
        wait_all_blocked()
        (connection,) = waiting(server)
        assert connection.accepted_at is not None
        connection.accepted_at -= 2.9  # as if it had waited 2.9 s of its 3
        started = time.monotonic()
        client.write(b"x")
        assert client.read() == b"x"
        assert client.read() == b""  # the handler got the 0.1 s left, not another 3 s
        assert time.monotonic() - started < 2
    assert "its deadline of 3 s passed" in caplog.text


def test_a_stop_ends_waiting_connections_at_once(server: Server, recorder: Recorder) -> None:
    clients = [greenflow.connect_tcp("127.0.0.1", port_of(server), timeout=10) for _ in range(5)]
    try:
        wait_all_blocked()
        assert len(waiting(server)) == 5
        server.stop()  # grace 5 s: returns as soon as the waiting connections have ended
        assert server.active_connections == 0
        for client in clients:
            assert client.read() == b""
    finally:
        for client in clients:
            client.close()
    assert recorder.calls == 0


def test_waiting_connections_count_against_the_limit(recorder: Recorder) -> None:
    with Server(recorder, "tcp://127.0.0.1:0", first_data_timeout=30, max_connections=1) as server:
        port = port_of(server)
        with greenflow.connect_tcp("127.0.0.1", port, timeout=10) as silent:
            wait_all_blocked()
            assert len(waiting(server)) == 1
            assert not server.accepting
            with greenflow.connect_tcp("127.0.0.1", port, timeout=10) as second:
                second.write(b"second")  # in the backlog: not accepted while the first waits
                wait_all_blocked()
                assert server.active_connections == 1
                assert recorder.calls == 0
                silent.write(b"first")
                assert silent.read() == b"first"
                assert second.read() == b"second"  # accepted once the first ended
            assert recorder.calls == 2


def test_without_a_first_data_timeout_the_handler_starts_at_once() -> None:
    def greeter(flow: Flow) -> None:
        flow.write(b"220 ready\r\n")  # the server speaks first

    with Server(greeter, "tcp://127.0.0.1:0") as server:
        assert server.first_data_timeout is None
        with greenflow.connect_tcp("127.0.0.1", port_of(server), timeout=10) as client:
            assert client.read() == b"220 ready\r\n"


def test_a_tls_listener_handshakes_after_the_wait(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    server_context: SSL.Context = tls.server_context(tmp_path / "server.pem")
    client_context: SSL.Context = tls.client_context(cafile=tmp_path / "ca.pem")
    listener = listen_tls("127.0.0.1", 0, server_context, handshake_timeout=5)
    with Server(echo, listener, first_data_timeout=30, timeout=10) as server:
        port = port_of(server)
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            wait_all_blocked()
            assert len(waiting(server)) == 1  # a silent client holds no handshake greenlet
            with tls.connect_tls("127.0.0.1", port, client_context, timeout=10) as flow:
                flow.write(b"secret")
                assert flow.read() == b"secret"
            assert len(waiting(server)) == 1


def test_a_stop_without_grace_leaves_no_waiting_connection_behind(recorder: Recorder) -> None:
    before = open_fds()
    server = Server(recorder, "tcp://127.0.0.1:0", first_data_timeout=30)
    server.start()
    clients = [socket.create_connection(("127.0.0.1", port_of(server)), timeout=10) for _ in range(3)]
    try:
        wait_all_blocked()
        assert len(waiting(server)) == 3
        server.stop(grace=0)
        assert server.active_connections == 0
        for client in clients:
            assert client.recv(1) == b""
    finally:
        for client in clients:
            client.close()
    assert recorder.calls == 0
    assert open_fds() == before
