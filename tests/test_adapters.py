"""FlowSocket and FlowIO: stdlib clients, unchanged, over TLS on a Unix socket and memory pairs."""

from __future__ import annotations

import errno
import http.client
import io
import os
import poplib
import socket
import tempfile
from collections.abc import Iterator

import gevent
import pytest

import greenflow
from greenflow import ClosedError, Flow, FlowIO, FlowSocket, tls
from greenflow.adapters import AdapterClosedError
from greenflow.testing import memory_pair

from legacy_servers import MAILBOX, http_echo, pop3
from tls_helpers import contexts, shared_certs


@pytest.fixture
def tls_unix_server() -> Iterator[str]:
    """A greenflow.Server speaking HTTP over TLS on a Unix socket; yields its path."""
    _client_ctx, server_ctx = contexts(shared_certs())
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "http.sock")
        with greenflow.Server(http_echo, f"unix+tls:{path}", tls_context=server_ctx, timeout=10):
            yield path


def tls_unix_flow(path: str) -> Flow:
    client_ctx, _server_ctx = contexts(shared_certs())
    return tls.client(greenflow.connect_unix(path, timeout=10), client_ctx, server_hostname="localhost")


def http_exchanges(conn: http.client.HTTPConnection) -> None:
    conn.request("GET", "/hello")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.read() == b"GET /hello "
    conn.request("POST", "/echo", body=iter([b"chunked ", b"request ", b"body"]))  # chunked by http.client
    response = conn.getresponse()
    assert response.read() == b"POST /echo chunked request body"
    conn.request("PUT", "/sized", body=b"x" * 100_000, headers={"Content-Length": "100000"})
    assert conn.getresponse().read() == b"PUT /sized " + b"x" * 100_000


def test_http_client_over_tls_on_a_unix_socket(tls_unix_server: str) -> None:
    conn = http.client.HTTPConnection("localhost", timeout=10)
    conn.sock = FlowSocket(tls_unix_flow(tls_unix_server))  # type: ignore[assignment]
    http_exchanges(conn)
    conn.close()
    assert conn.sock is None


def test_http_client_over_a_memory_pair() -> None:
    ours, theirs = memory_pair()
    serving = gevent.spawn(http_echo, theirs)
    conn = http.client.HTTPConnection("memory")
    adapter = FlowSocket(ours)
    conn.sock = adapter  # type: ignore[assignment]
    http_exchanges(conn)
    adapter.shutdown(socket.SHUT_WR)  # the server's next request read sees EOF: it returns
    serving.get(timeout=5)
    conn.close()
    assert ours.closed  # the adapter's close, once the response's file was closed too
    theirs.close()


def test_poplib_over_a_memory_pair() -> None:
    ours, theirs = memory_pair()
    serving = gevent.spawn(pop3, theirs)

    class FlowPOP3(poplib.POP3):
        def _create_socket(self, timeout: float) -> FlowSocket:  # type: ignore[override]
            return FlowSocket(ours)

    client = FlowPOP3("memory")
    assert client.getwelcome().startswith(b"+OK greenflow")
    client.user("alice")
    client.pass_("secret")
    assert client.stat() == (2, sum(map(len, MAILBOX)))
    _response, lines, _octets = client.retr(1)
    assert lines == [b"Subject: one", b"", b"first", b".dotted line"]
    client.quit()
    serving.get(timeout=5)
    assert ours.closed
    theirs.close()


def test_text_io_wrapper_decodes_characters_split_across_reads() -> None:
    ours, theirs = memory_pair()
    ours.incoming.trickle = 1  # every read returns one byte: each character arrives in pieces
    text = "grüße, 世界 \U0001f600\nzweite Zeile\n"
    sending = gevent.spawn(lambda: (theirs.write(text.encode("utf-8")), theirs.shutdown("write")))
    with io.TextIOWrapper(io.BufferedReader(FlowIO(ours, "rb")), encoding="utf-8") as reader:
        assert reader.readline() == "grüße, 世界 \U0001f600\n"
        assert list(reader) == ["zweite Zeile\n"]
    assert ours.closed
    sending.get(timeout=5)
    theirs.close()


# -- the socket adapter's own behaviour ---------------------------------------------------


def test_recv_send_and_the_stdlib_edge_cases() -> None:
    ours, theirs = memory_pair()
    with FlowSocket(ours) as sock:
        assert sock.send(b"hello") == 5
        sock.sendall(memoryview(b" world"))
        assert theirs.read() == b"hello world"
        theirs.write(b"abcdef")
        assert sock.recv(0) == b""
        assert sock.recv(2) == b"ab"
        buffer = bytearray(10)
        assert sock.recv_into(buffer, 3) == 3 and buffer[:3] == b"cde"
        assert sock.recv_into(memoryview(buffer)[:0]) == 0
        assert sock.recv_into(buffer) == 1 and buffer[:1] == b"f"
        with pytest.raises(ValueError, match="negative buffersize"):
            sock.recv(-1)
        with pytest.raises(ValueError, match="too small"):
            sock.recv_into(bytearray(2), 5)
        with pytest.raises(OSError, match="takes no flags"):
            sock.recv(1, socket.MSG_PEEK)
        theirs.shutdown("write")
        assert sock.recv(10) == b""  # EOF, as a socket says it
    assert ours.closed
    theirs.close()


def test_timeouts_raise_timeout_error_and_non_blocking_raises_blocking_io_error() -> None:
    ours, theirs = memory_pair()
    sock = FlowSocket(ours)
    assert sock.gettimeout() is None and sock.getblocking()
    sock.settimeout(0.05)
    assert sock.gettimeout() == 0.05 == sock.timeout
    with pytest.raises(socket.timeout):
        sock.recv(10)
    sock.setblocking(False)
    assert sock.gettimeout() == 0.0 and not sock.getblocking()
    with pytest.raises(BlockingIOError) as info:
        sock.recv(10)
    assert info.value.errno == errno.EAGAIN
    theirs.write(b"ready")
    assert sock.recv(10) == b"ready"  # data already there: no wait, no error
    sock.setblocking(True)
    assert sock.gettimeout() is None
    with pytest.raises(ValueError):
        sock.settimeout(-1)
    sock.close()
    theirs.close()


def test_the_adapter_after_close_raises_an_os_error_with_a_sentence() -> None:
    ours, theirs = memory_pair()
    sock = FlowSocket(ours)
    sock.close()
    sock.close()  # idempotent
    assert sock.fileno() == -1
    for call in (lambda: sock.recv(1), lambda: sock.sendall(b"x"), lambda: sock.shutdown(socket.SHUT_WR)):
        with pytest.raises(OSError) as info:
            call()
        assert isinstance(info.value, AdapterClosedError) and isinstance(info.value, ClosedError)
        assert info.value.errno == errno.EBADF
        assert "the socket adapter is closed" in str(info.value)
    for call in (sock.getpeername, lambda: sock.makefile("rb"), lambda: sock.getsockopt(1, 2)):
        with pytest.raises(AdapterClosedError):
            call()
    theirs.close()


def test_a_send_after_shutdown_is_a_broken_pipe() -> None:
    ours, theirs = memory_pair()
    sock = FlowSocket(ours)
    sock.shutdown(socket.SHUT_WR)
    assert theirs.read() == b""
    with pytest.raises(OSError) as info:
        sock.sendall(b"late")
    assert info.value.errno == errno.EPIPE
    with pytest.raises(OSError) as info:
        sock.shutdown(99)
    assert info.value.errno == errno.EINVAL
    sock.close()
    theirs.close()


def test_addresses_family_and_options_of_a_unix_socket_flow() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "s")
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(path)
            listener.listen()
            client = greenflow.connect_unix(path)
            accepted, _ = listener.accept()
        with FlowSocket(client) as sock:
            assert sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM
            assert sock.getpeername() == path
            assert sock.getsockname() == ""
            assert sock.fileno() == client.socket.fileno()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) > 0
        accepted.close()


def test_tcp_addresses_through_a_tls_layer() -> None:
    client_ctx, server_ctx = contexts(shared_certs())
    with greenflow.Server(http_echo, "tls://127.0.0.1:0", tls_context=server_ctx) as server:
        port = server.addresses[0][1]
        flow = greenflow.connect_tls("localhost", port, client_ctx)
        with FlowSocket(flow) as sock:
            assert sock.family == socket.AF_INET
            assert sock.getpeername() == ("127.0.0.1", port)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # on the real socket below
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert sock.proto == flow.underlying.socket.proto  # type: ignore[union-attr]
            with pytest.raises(io.UnsupportedOperation, match="socket_bridge"):
                sock.fileno()


def test_options_without_a_real_socket() -> None:
    ours, theirs = memory_pair()
    with FlowSocket(ours) as sock:
        assert sock.family == socket.AF_UNIX and sock.getpeername() == "" and sock.proto == 0
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, b"\1\0\0\0")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 4) == b"\1\0\0\0"
        with pytest.raises(OSError) as info:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        assert info.value.errno == errno.ENOPROTOOPT
        with pytest.raises(OSError, match="needs a real socket"):
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        with pytest.raises(io.UnsupportedOperation, match=r"greenflow\.socket_bridge"):
            sock.fileno()
        assert not hasattr(sock, "_sock")  # gevent.pywsgi probes for it
    theirs.close()


def test_makefile_modes_and_reference_counting() -> None:
    ours, theirs = memory_pair()
    sock = FlowSocket(ours)
    writer = sock.makefile("w", encoding="utf-8", newline="\r\n")
    reader = sock.makefile("rb")
    raw = sock.makefile("rwb", buffering=0)
    both = sock.makefile("rwb")
    assert isinstance(raw, FlowIO) and writer.mode == "w"
    writer.write("line\n")
    writer.flush()
    assert theirs.read() == b"line\r\n"
    theirs.write(b"one\ntwo")
    assert reader.readline() == b"one\n"
    sock.close()
    assert not ours.closed  # files are still open, as with a socket
    for file in (writer, reader, raw):
        file.close()
    assert not ours.closed
    both.close()
    assert ours.closed
    with pytest.raises(ValueError, match="invalid mode"):
        FlowSocket(theirs).makefile("rx")
    with pytest.raises(ValueError, match="must be binary"):
        FlowSocket(theirs).makefile("r", buffering=0)
    with pytest.raises(TypeError, match="needs a Flow"):
        FlowSocket(object())  # type: ignore[arg-type]
    theirs.close()


def test_flow_io_as_a_raw_stream() -> None:
    ours, theirs = memory_pair()
    stream = FlowIO(ours)
    assert stream.readable() and stream.writable() and not stream.seekable()
    assert stream.mode == "rwb" and "FlowIO" in repr(stream) and stream.flow is ours
    assert stream.write(b"data") == 4
    assert theirs.read() == b"data"
    theirs.write(b"back")
    assert stream.read(10) == b"back"
    assert stream.readinto(bytearray(0)) == 0
    ours.timeout = 0
    assert stream.readinto(bytearray(4)) is None  # non-blocking and nothing there
    ours.timeout = None
    with pytest.raises(io.UnsupportedOperation, match="socket_bridge"):
        stream.fileno()
    ours.close()
    with pytest.raises(AdapterClosedError, match="cannot read"):
        stream.read(1)
    stream.close()
    with pytest.raises(ValueError, match="closed FlowIO"):
        stream.read(1)
    reading = FlowIO(theirs, "r")
    with pytest.raises(io.UnsupportedOperation, match="not opened for writing"):
        reading.write(b"x")
    writing = FlowIO(theirs, "wb", close_flow=False)
    with pytest.raises(io.UnsupportedOperation, match="not opened for reading"):
        writing.read(1)
    writing.close()
    assert not theirs.closed
    with pytest.raises(ValueError, match="invalid mode"):
        FlowIO(theirs, "a")
    reading.close()
    assert theirs.closed


def test_errors_from_the_flow_come_out_as_socket_errors() -> None:
    ours, theirs = greenflow.socketpair()
    sock = FlowSocket(ours)
    ours.write(b"unread by the peer, so that its close resets")
    theirs.close()
    with pytest.raises(ConnectionError) as info:  # a BrokenError; the OS error is its cause
        sock.recv_into(bytearray(8))
    assert isinstance(info.value.__cause__, ConnectionResetError)
    with pytest.raises(ValueError, match="negative"):
        sock.recv_into(bytearray(8), -1)
    sock.close()
    with pytest.raises(AdapterClosedError):
        sock.recv_into(bytearray(8))
    left, right = greenflow.socketpair()
    right.close()
    stream = FlowIO(left)
    with pytest.raises(ConnectionError):
        for _ in range(100):
            stream.write(b"x" * 65536)
    stream.close()


def test_shutdown_of_a_flow_closed_underneath() -> None:
    ours, theirs = memory_pair()
    sock = FlowSocket(ours)
    ours.close()
    with pytest.raises(AdapterClosedError, match="cannot shutdown"):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    theirs.close()


def test_family_from_the_shape_of_an_address() -> None:
    from greenflow.adapters.flowsocket import _family_of

    assert _family_of(("::1", 80, 0, 0)) == socket.AF_INET6
    assert _family_of((3, 5000)) == socket.AF_VSOCK
    assert _family_of(("127.0.0.1", 80)) == socket.AF_INET
    assert _family_of("/run/x.sock") == socket.AF_UNIX
