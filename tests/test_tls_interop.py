"""TLSFlow against peers we did not write: the openssl binary and stdlib ssl.

The ``openssl`` processes run under gevent's subprocess module (cooperative
pipes, no monkey-patching) and are always killed in a ``finally``. The stdlib
``ssl`` peers run in plain threads with blocking sockets; the test joins them
only once its own flow work is done.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import threading
from collections.abc import Callable, Iterator

import gevent
import pytest
from gevent import subprocess

import greenflow
from greenflow import tls
from greenflow.tls import TLSFlow, TLSTruncatedError

from tls_helpers import Certs, contexts, shared_certs

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
needs_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="no openssl command on this machine (apt-get install openssl)"
)
VERSIONS = ["TLSv1.2", "TLSv1.3"]
_FLAG = {"TLSv1.2": "-tls1_2", "TLSv1.3": "-tls1_3"}
_STDLIB_VERSION = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


# -- the openssl binary ---------------------------------------------------------------


class OpenSSLProcess:
    """An ``openssl s_server`` or ``s_client`` with its output collected."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(
            [OPENSSL, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.output = b""

    def wait_for(self, text: bytes, timeout: float = 10) -> bytes:
        """Read the process's output until ``text`` appears; return all of it."""
        assert self.process.stdout is not None
        with gevent.Timeout(timeout, AssertionError(f"openssl never printed {text!r}: {self.output!r}")):
            while text not in self.output:
                chunk = self.process.stdout.read1(65536)
                if not chunk:
                    raise AssertionError(f"openssl exited before printing {text!r}: {self.output!r}")
                self.output += chunk
        return self.output

    def send(self, line: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line)
        self.process.stdin.flush()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@contextlib.contextmanager
def s_server(certs: Certs, version: str, *extra: str) -> Iterator[tuple[OpenSSLProcess, int]]:
    server = OpenSSLProcess(
        [
            "s_server",
            "-accept",
            "127.0.0.1:0",
            "-naccept",
            "1",
            "-cert",
            certs.server,
            "-key",
            certs.server,
            _FLAG[version],
            "-ign_eof",
            *extra,
        ]
    )
    try:
        output = server.wait_for(b"ACCEPT 127.0.0.1:")
        port = int(output.split(b"ACCEPT 127.0.0.1:", 1)[1].split()[0])
        yield server, port
    finally:
        server.kill()


def _read_until(flow: TLSFlow, text: bytes, timeout: float = 10) -> bytes:
    data = b""
    with gevent.Timeout(timeout, AssertionError(f"never read {text!r}, got {data!r}")):
        while text not in data:
            chunk = flow.read()
            assert chunk, f"EOF before {text!r}; got {data!r}"
            data += chunk
    return data


@needs_openssl
@pytest.mark.parametrize("version", VERSIONS)
def test_client_against_openssl_s_server(version: str) -> None:
    certs = shared_certs()
    client_ctx, _ = contexts(certs, version)
    with s_server(certs, version) as (server, port):
        flow = tls.connect_tls("127.0.0.1", port, client_ctx, server_hostname="localhost", timeout=10)
        try:
            assert flow.epoch.version == version
            flow.write(b"hello from greenflow\n")
            server.wait_for(b"hello from greenflow")
            server.send(b"hello from openssl\n")
            assert _read_until(flow, b"hello from openssl\n").endswith(b"hello from openssl\n")
            # s_server ends its side when our close_notify arrives, with a
            # close_notify of its own: a clean EOF for us. (It cannot go on
            # writing after a half-close; the stdlib peer below does.)
            flow.shutdown("write")
            assert flow.read() == b""
            assert flow.read() == b""
        finally:
            flow.close()


@needs_openssl
def test_openssl_server_truncates() -> None:
    certs = shared_certs()
    client_ctx, _ = contexts(certs, "TLSv1.3")
    with s_server(certs, "TLSv1.3") as (server, port):
        flow = tls.connect_tls("127.0.0.1", port, client_ctx, server_hostname="localhost", timeout=10)
        try:
            server.send(b"last words\n")
            _read_until(flow, b"last words\n")
            server.kill()  # no close_notify: the TCP connection just ends
            with pytest.raises(TLSTruncatedError, match="truncated"):
                flow.read()
            with pytest.raises(TLSTruncatedError):
                flow.read()  # sticky
        finally:
            flow.close()


@contextlib.contextmanager
def _listener() -> Iterator[socket.socket]:
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        yield listener
    finally:
        listener.close()


def _accept(listener: socket.socket) -> greenflow.SocketFlow:
    gevent.get_hub().wait(gevent.get_hub().loop.io(listener.fileno(), 1))
    sock, _ = listener.accept()
    return greenflow.from_socket(sock)


@needs_openssl
@pytest.mark.parametrize("version", VERSIONS)
def test_server_against_openssl_s_client(version: str) -> None:
    certs = shared_certs()
    _, server_ctx = contexts(certs, version)
    with _listener() as listener:
        port = listener.getsockname()[1]
        client = OpenSSLProcess(
            [
                "s_client",
                "-connect",
                f"127.0.0.1:{port}",
                "-CAfile",
                certs.ca,
                "-servername",
                "localhost",
                "-verify_return_error",
                "-verify_hostname",
                "localhost",
                _FLAG[version],
                "-brief",
            ]
        )
        try:
            flow = tls.server(_accept(listener), server_ctx, handshake_timeout=10)
            flow.timeout = 10
            assert flow.epoch.server_name == "localhost"
            client.send(b"ping\n")
            assert _read_until(flow, b"ping\n") == b"ping\n"
            flow.write(b"pong\n")
            client.wait_for(b"pong")
            # The end of s_client's input ends its session with close_notify:
            # a clean EOF, not a truncation.
            assert client.process.stdin is not None
            client.process.stdin.close()
            assert flow.read() == b""
            flow.close()
        finally:
            client.kill()


@needs_openssl
def test_server_sees_openssl_s_client_killed() -> None:
    certs = shared_certs()
    _, server_ctx = contexts(certs, "TLSv1.3")
    with _listener() as listener:
        port = listener.getsockname()[1]
        client = OpenSSLProcess(["s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", certs.ca, "-brief"])
        try:
            flow = tls.server(_accept(listener), server_ctx, handshake_timeout=10)
            flow.timeout = 10
            client.send(b"x\n")
            _read_until(flow, b"x\n")
            client.kill()
            # An EOF without close_notify (or a reset, if the kernel had
            # unread bytes when the process died): an error either way.
            with pytest.raises(greenflow.BrokenError):
                flow.read()
            flow.close()
        finally:
            client.kill()


# -- the stdlib ssl module in a thread ------------------------------------------------------


def _stdlib_server_context(certs: Certs, version: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server)
    context.minimum_version = context.maximum_version = _STDLIB_VERSION[version]
    return context


def _stdlib_client_context(certs: Certs, version: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certs.ca)
    context.minimum_version = context.maximum_version = _STDLIB_VERSION[version]
    return context


class Peer(threading.Thread):
    """Runs ``body`` in a thread; ``result()`` returns its value or raises."""

    def __init__(self, body: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self._body = body
        self._value: object = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._value = self._body()
        except BaseException as exc:
            self._error = exc

    def result(self, timeout: float = 10) -> object:
        self.join(timeout)
        assert not self.is_alive(), "the stdlib peer did not finish"
        if self._error is not None:
            raise self._error
        return self._value


def _recv_until_eof(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("version", VERSIONS)
def test_client_against_stdlib_server_half_close(version: str) -> None:
    """We half-close; the stdlib server reads to EOF, then answers, then closes."""
    certs = shared_certs()
    client_ctx, _ = contexts(certs, version)
    payload = bytes(range(256)) * 4096  # 1 MiB
    with _listener() as listener:

        def serve() -> int:
            raw, _ = listener.accept()
            with _stdlib_server_context(certs, version).wrap_socket(raw, server_side=True) as sock:
                sock.settimeout(10)
                received = _recv_until_eof(sock)
                sock.sendall(b"got %d bytes" % len(received))
                sock.unwrap()  # close_notify, then wait for ours
                return len(received)

        peer = Peer(serve)
        flow = tls.connect_tls(
            "127.0.0.1", listener.getsockname()[1], client_ctx, server_hostname="localhost", timeout=10
        )
        try:
            flow.writev([payload[:1000], memoryview(payload)[1000:]])
            flow.shutdown("write")
            assert _read_until(flow, b"bytes") == b"got %d bytes" % len(payload)
            assert flow.read() == b""
            flow.close()
        finally:
            flow.close()
        assert peer.result() == len(payload)


@pytest.mark.parametrize("lax", [False, True])
def test_client_against_stdlib_server_truncation(lax: bool) -> None:
    """The stdlib closes its socket without close_notify: truncation, unless lax."""
    certs = shared_certs()
    client_ctx, _ = contexts(certs, "TLSv1.3")
    with _listener() as listener:

        def serve() -> None:
            raw, _ = listener.accept()
            sock = _stdlib_server_context(certs, "TLSv1.3").wrap_socket(raw, server_side=True)
            sock.sendall(b"partial")
            sock.close()  # SSLSocket.close sends no close_notify

        peer = Peer(serve)
        flow = tls.connect_tls(
            "127.0.0.1", listener.getsockname()[1], client_ctx, timeout=10, allow_truncation=lax
        )
        try:
            assert _read_until(flow, b"partial") == b"partial"
            if lax:
                assert flow.read() == b""
            else:
                with pytest.raises(TLSTruncatedError, match="truncated"):
                    flow.read()
        finally:
            flow.close()
        peer.result()


@pytest.mark.parametrize("version", VERSIONS)
def test_server_against_stdlib_client(version: str) -> None:
    """The stdlib client sends, reads our answer to our close_notify, and unwraps."""
    certs = shared_certs()
    _, server_ctx = contexts(certs, version, alpn_protocols=["h2", "http/1.1"])
    payload = b"q" * 300_000
    with _listener() as listener:
        port = listener.getsockname()[1]

        def talk() -> bytes:
            context = _stdlib_client_context(certs, version)
            context.set_alpn_protocols(["http/1.1"])
            with context.wrap_socket(
                socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost"
            ) as sock:
                assert sock.selected_alpn_protocol() == "http/1.1"
                sock.sendall(payload)
                answer = _recv_until_eof(sock)
                sock.unwrap()
                return answer

        peer = Peer(talk)
        flow = tls.server(_accept(listener), server_ctx, handshake_timeout=10, timeout=10)
        try:
            assert flow.epoch.alpn_protocol == "http/1.1"
            got = b""
            while len(got) < len(payload):
                got += flow.read()
            flow.write(b"thanks")
            assert flow.close_gracefully(10) is True
        finally:
            flow.close()
        assert peer.result() == b"thanks"


def test_stdlib_client_rejects_untrusted_server() -> None:
    """The alert reaches the stdlib client, and our server names it."""
    certs = shared_certs()
    server_ctx = tls.server_context(certs.untrusted)
    with _listener() as listener:
        port = listener.getsockname()[1]

        def talk() -> None:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            with pytest.raises(ssl.SSLCertVerificationError):
                _stdlib_client_context(certs, "TLSv1.3").wrap_socket(raw, server_hostname="localhost")
            raw.close()

        peer = Peer(talk)
        with pytest.raises(tls.TLSError, match="unknown ca"):
            tls.server(_accept(listener), server_ctx, handshake_timeout=10)
        peer.result()
