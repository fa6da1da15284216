"""socket_bridge: a real socket for code that needs a descriptor, pumped to and from a flow."""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess

import gevent
import gevent.socket
import pytest

import greenflow
from greenflow import Flow, socket_bridge
from greenflow.testing import memory_pair

from pairs import tcp_pair
from tls_helpers import contexts, shared_certs


def read_to_eof(flow: Flow) -> bytes:
    out = bytearray()
    while data := flow.read():
        out += data
    return bytes(out)


def recv_cooperatively(sock: socket.socket, size: int = 65536) -> bytes:
    """recv on a blocking socket without blocking the hub: wait for it on the hub first."""
    gevent.socket.wait_read(sock.fileno(), timeout=10)
    return sock.recv(size)


def test_cat_as_a_child_process_on_the_bridge_with_half_close() -> None:
    ours, theirs = memory_pair()
    sock = socket_bridge(ours)
    assert isinstance(sock, socket.socket) and sock.type == socket.SOCK_STREAM
    child = subprocess.Popen(["cat"], stdin=sock, stdout=sock)
    sock.close()  # the child has its own copies
    data = b"".join(b"line %d\n" % i for i in range(20_000))

    def send() -> None:
        theirs.write(data)
        theirs.shutdown("write")  # cat sees EOF on stdin, exits, and its stdout's EOF comes back

    sending = gevent.spawn(send)
    assert read_to_eof(theirs) == data
    sending.get(timeout=10)
    assert child.wait(timeout=10) == 0
    theirs.close()


def test_stdlib_ssl_wrap_socket_on_the_bridge_talks_to_a_greenflow_tls_server() -> None:
    certs = shared_certs()
    _client_ctx, server_ctx = contexts(certs)

    def upper(flow: Flow) -> None:
        while data := flow.read():
            flow.write(data.upper())

    with greenflow.Server(upper, "tls://127.0.0.1:0", tls_context=server_ctx) as server:
        port = server.addresses[0][1]
        sock = socket_bridge(greenflow.connect_tcp("127.0.0.1", port, timeout=10))

        def client() -> tuple[str | None, bytes]:
            # A thread of the hub's pool: the blocking stdlib ssl calls leave the hub running.
            context = ssl.create_default_context(cafile=certs.ca)
            with context.wrap_socket(sock, server_hostname="localhost") as tls_sock:
                tls_sock.sendall(b"through the bridge")
                reply = b""
                while len(reply) < 18:
                    reply += tls_sock.recv(100)
                return tls_sock.version(), reply

        version, reply = gevent.get_hub().threadpool.apply(client)
        assert version in ("TLSv1.2", "TLSv1.3")
        assert reply == b"THROUGH THE BRIDGE"


def test_half_close_passes_on_both_ways() -> None:
    ours, theirs = memory_pair()
    sock = socket_bridge(ours)
    sock.sendall(b"request")
    sock.shutdown(socket.SHUT_WR)
    assert read_to_eof(theirs) == b"request"  # the socket's EOF became the flow's
    theirs.write(b"reply")
    theirs.shutdown("write")
    got = b""
    while data := recv_cooperatively(sock):
        got += data
    assert got == b"reply"  # and the flow's EOF became the socket's
    sock.close()
    theirs.close()


def test_a_broken_flow_resets_the_socket() -> None:
    ours, theirs = tcp_pair()
    sock = socket_bridge(ours)
    theirs.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    theirs.close()  # a reset: the bridge's read of the flow fails
    with pytest.raises(ConnectionResetError):
        while recv_cooperatively(sock):
            pass
    sock.close()


def test_closing_the_socket_ends_the_flow() -> None:
    ours, theirs = memory_pair()
    sock = socket_bridge(ours)
    sock.close()
    assert read_to_eof(theirs) == b""  # the socket's close reached the flow as EOF
    theirs.shutdown("write")  # and once the flow's side ends too, the bridge closes the flow
    for _ in range(100):
        if ours.closed:
            break
        gevent.idle()  # let the bridge's greenlets run until they all wait
    assert ours.closed
    theirs.close()


def test_only_flows() -> None:
    with pytest.raises(TypeError, match="needs a Flow"):
        socket_bridge(object())  # type: ignore[arg-type]
