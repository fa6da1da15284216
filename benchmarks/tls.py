"""TLS 1.3: bulk, ping-pong and handshakes per second.

Every row uses the same ECDSA P-256 certificate for ``localhost`` (made at
start-up from a throwaway CA, with ``cryptography``), TLS 1.3 only, OpenSSL's
default suite order (AES-256-GCM first), and verifies the server's
certificate and name. The handshakes of the bulk and ping-pong workloads are
done before the clock starts.

Rows:

- ``greenflow.tls``: ``greenflow.tls.client`` / ``server`` over socket
  flows (pyOpenSSL memory BIOs inside);
- ``gevent + stdlib ssl`` (the baseline): ``gevent.ssl.SSLContext.wrap_socket``
  on gevent sockets;
- ``pyOpenSSL memory BIO``: pyOpenSSL driven by hand over gevent sockets, the
  smallest correct pump (encrypt, ``bio_read``, ``sendall``; ``recv``,
  ``bio_write``, decrypt), to show what the TLS engine alone can do;
- ``asyncio`` / ``uvloop`` streams with ``ssl=``, and trio's ``SSLStream``.

Bulk receivers stop after reading exactly the bytes sent (TLS endings differ
too much between the libraries to time them fairly); ping-pong servers echo
exactly ``count`` messages.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
from gevent import socket as gsocket
from gevent import ssl as gssl
from OpenSSL import SSL

import greenflow
from greenflow.selfsigned import certificate_authority

from ._common import (
    CHUNK,
    Measurement,
    MiB,
    check_count,
    connected_pair,
    gevent_pair,
    listening,
    need,
    need_greenflow_tls,
    pattern,
    run_asyncio,
    run_gevent,
    run_trio,
)
from ._harness import Case, Workload
from .streams import MESSAGE, _pingpong_sync, pingpong_asyncio, pingpong_trio

HOSTNAME = "localhost"


# -- certificates and contexts ----------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: str  # PEM of the CA certificate
    server: str  # PEM of the server's chain and key


@functools.cache
def certs() -> Certs:
    """A CA and a ``localhost`` certificate, in a folder removed at exit."""
    folder = tempfile.mkdtemp(prefix="greenflow-bench-tls-")
    atexit.register(shutil.rmtree, folder, True)
    ca = certificate_authority("greenflow benchmark CA", days=1)
    ca_path = ca.write(os.path.join(folder, "ca.pem"), with_key=False)
    server_path = ca.issue([HOSTNAME], days=1).write(os.path.join(folder, "server.pem"))
    return Certs(str(ca_path), str(server_path))


def stdlib_contexts(module: Any = ssl) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(client, server) stdlib contexts, TLS 1.3 only; ``module`` may be ``gevent.ssl``."""
    paths = certs()
    client = module.SSLContext(module.PROTOCOL_TLS_CLIENT)
    client.minimum_version = client.maximum_version = ssl.TLSVersion.TLSv1_3
    client.load_verify_locations(paths.ca)
    server = module.SSLContext(module.PROTOCOL_TLS_SERVER)
    server.minimum_version = server.maximum_version = ssl.TLSVersion.TLSv1_3
    server.load_cert_chain(paths.server)
    return client, server


def greenflow_contexts() -> tuple[SSL.Context, SSL.Context]:
    tls = need_greenflow_tls()
    paths = certs()
    client = tls.client_context(cafile=paths.ca, minimum_version="TLSv1.3", maximum_version="TLSv1.3")
    server = tls.server_context(paths.server, minimum_version="TLSv1.3", maximum_version="TLSv1.3")
    return client, server


def pyopenssl_contexts() -> tuple[SSL.Context, SSL.Context]:
    paths = certs()
    client = SSL.Context(SSL.TLS_METHOD)
    server = SSL.Context(SSL.TLS_METHOD)
    for context in (client, server):
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
        context.set_max_proto_version(SSL.TLS1_3_VERSION)
    client.set_verify(SSL.VERIFY_PEER)
    client.load_verify_locations(paths.ca)
    server.use_certificate_chain_file(paths.server)
    server.use_privatekey_file(paths.server)
    return client, server


# -- the pairs --------------------------------------------------------------------------


def greenflow_tls_pair() -> tuple[Any, Any]:
    tls = need_greenflow_tls()
    client_context, server_context = greenflow_contexts()
    plain_client, plain_server = (greenflow.from_socket(s) for s in connected_pair())
    server = gevent.spawn(tls.server, plain_server, server_context, handshake_timeout=10)
    try:
        client = tls.client(plain_client, client_context, server_hostname=HOSTNAME, handshake_timeout=10)
    except BaseException:
        server.kill()
        plain_server.close()
        raise
    return client, server.get()


def gevent_ssl_pair() -> tuple[Any, Any]:
    client_context, server_context = stdlib_contexts(gssl)
    plain_client, plain_server = gevent_pair()
    server = server_context.wrap_socket(plain_server, server_side=True, do_handshake_on_connect=False)
    client = client_context.wrap_socket(plain_client, server_hostname=HOSTNAME, do_handshake_on_connect=False)
    handshake = gevent.spawn(server.do_handshake)
    client.do_handshake()
    handshake.get()
    return client, server


class MemoryBIOPump:
    """pyOpenSSL on memory BIOs over a gevent socket, pumped by hand (the reference row)."""

    def __init__(self, sock: Any, context: SSL.Context, *, server_side: bool) -> None:
        self.sock = sock
        self.conn = SSL.Connection(context, None)
        if server_side:
            self.conn.set_accept_state()
        else:
            self.conn.set_tlsext_host_name(HOSTNAME.encode())
            self.conn.set_connect_state()
        self._incoming = bytearray(256 * 1024)

    def _flush(self) -> None:
        bio_read, sendall = self.conn.bio_read, self.sock.sendall
        while True:
            try:
                data = bio_read(262144)
            except SSL.WantReadError:
                return
            sendall(data)

    def _fill(self) -> bool:
        count = self.sock.recv_into(self._incoming)
        if count:
            self.conn.bio_write(memoryview(self._incoming)[:count])
        return bool(count)

    def handshake(self) -> None:
        while True:
            try:
                self.conn.do_handshake()
            except SSL.WantReadError:
                self._flush()
                if not self._fill():
                    raise ConnectionError("EOF in the handshake") from None
                continue
            self._flush()
            return

    def write(self, data: Any) -> None:
        self.conn.sendall(data)
        self._flush()

    def read_into(self, buffer: Any) -> int:
        while True:
            try:
                return int(self.conn.recv_into(buffer))
            except SSL.WantReadError:
                if not self._fill():
                    return 0
            except SSL.ZeroReturnError:
                return 0

    def close(self) -> None:
        self.sock.close()


def pyopenssl_pair() -> tuple[MemoryBIOPump, MemoryBIOPump]:
    client_context, server_context = pyopenssl_contexts()
    plain_client, plain_server = gevent_pair()
    client = MemoryBIOPump(plain_client, client_context, server_side=False)
    server = MemoryBIOPump(plain_server, server_context, server_side=True)
    handshake = gevent.spawn(server.handshake)
    client.handshake()
    handshake.get()
    return client, server


async def asyncio_tls_streams() -> Any:
    """(client reader, client writer, server reader, server writer) over TLS."""
    client_context, server_context = stdlib_contexts()
    client_sock, server_sock = connected_pair()
    loop = asyncio.get_running_loop()
    server_reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(server_reader)
    opened = asyncio.ensure_future(
        loop.connect_accepted_socket(lambda: protocol, server_sock, ssl=server_context)
    )
    client_reader, client_writer = await asyncio.open_connection(
        sock=client_sock, ssl=client_context, server_hostname=HOSTNAME
    )
    transport, _ = await opened
    server_writer = asyncio.StreamWriter(transport, protocol, server_reader, loop)
    return client_reader, client_writer, server_reader, server_writer


async def trio_tls_streams() -> tuple[Any, Any]:
    trio = need("trio")
    client_context, server_context = stdlib_contexts()
    client_sock, server_sock = connected_pair()
    client = trio.SSLStream(
        trio.SocketStream(trio.socket.from_stdlib_socket(client_sock)),
        client_context,
        server_hostname=HOSTNAME,
    )
    server = trio.SSLStream(
        trio.SocketStream(trio.socket.from_stdlib_socket(server_sock)), server_context, server_side=True
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        await client.do_handshake()
    return client, server


# -- bulk -------------------------------------------------------------------------------


def _bulk_sync_counted(write: Callable[[Any], object], read_into: Callable[[Any], int], total: int) -> float:
    payload = pattern(CHUNK)

    def send() -> None:
        for _ in range(total // CHUNK):
            write(payload)

    started = time.perf_counter()
    sender = gevent.spawn(send)
    try:
        buffer = bytearray(CHUNK)
        got = 0
        while got < total:
            count = read_into(buffer)
            if not count:
                break
            got += count
        elapsed = time.perf_counter() - started
        sender.get()
    finally:
        sender.kill()
    check_count(got, total, "TLS bulk")
    return total / elapsed


def bulk_sync(make_pair: Callable[[], tuple[Any, Any]], kind: str, total: int, timeout: float) -> Measurement:
    def go() -> float:
        client, server = make_pair()
        try:
            if kind == "gevent":
                return _bulk_sync_counted(client.sendall, server.recv_into, total)
            return _bulk_sync_counted(client.write, server.read_into, total)
        finally:
            client.close()
            server.close()

    return Measurement(run_gevent(go, timeout) / MiB)


def bulk_asyncio(total: int, timeout: float, *, loop: str) -> Measurement:
    async def go() -> float:
        _, client_writer, server_reader, server_writer = await asyncio_tls_streams()
        payload = pattern(CHUNK)

        async def send() -> None:
            write, drain = client_writer.write, client_writer.drain
            for _ in range(total // CHUNK):
                write(payload)
                await drain()

        try:
            started = time.perf_counter()
            sender = asyncio.ensure_future(send())
            got = 0
            read = server_reader.read
            while got < total:
                data = await read(CHUNK)
                if not data:
                    break
                got += len(data)
            elapsed = time.perf_counter() - started
            await sender
        finally:
            for writer in (client_writer, server_writer):
                writer.transport.abort()
        check_count(got, total, "TLS bulk")
        return total / elapsed

    return Measurement(run_asyncio(go, timeout, loop=loop) / MiB)


def bulk_trio(total: int, timeout: float) -> Measurement:
    trio = need("trio")

    async def go() -> float:
        client, server = await trio_tls_streams()
        payload = pattern(CHUNK)

        async def send() -> None:
            for _ in range(total // CHUNK):
                await client.send_all(payload)

        try:
            started = time.perf_counter()
            got = 0
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                while got < total:
                    data = await server.receive_some(CHUNK)
                    if not data:
                        break
                    got += len(data)
                elapsed = time.perf_counter() - started
        finally:
            await trio.aclose_forcefully(client)
            await trio.aclose_forcefully(server)
        check_count(got, total, "TLS bulk")
        return total / elapsed

    return Measurement(run_trio(go, timeout) / MiB)


# -- ping-pong --------------------------------------------------------------------------


def pingpong_sync(
    make_pair: Callable[[], tuple[Any, Any]], kind: str, count: int, timeout: float
) -> Measurement:
    def go() -> Measurement:
        client, server = make_pair()
        try:
            if kind == "gevent":
                return _pingpong_sync(
                    count,
                    client_write=client.sendall,
                    client_read_into=client.recv_into,
                    server_write=server.sendall,
                    server_read_into=server.recv_into,
                )
            return _pingpong_sync(
                count,
                client_write=client.write,
                client_read_into=client.read_into,
                server_write=server.write,
                server_read_into=server.read_into,
            )
        finally:
            client.close()
            server.close()

    return run_gevent(go, timeout)


# -- handshakes -------------------------------------------------------------------------


def _handshakes_gevent_family(
    serve_one: Callable[[Any], None], connect_one: Callable[[tuple[str, int]], bytes], count: int
) -> float:
    with listening(buffers=False) as plain:
        listener = gsocket.socket(plain.family, plain.type, plain.proto, fileno=plain.detach())
        address = listener.getsockname()

        def serve() -> None:
            while True:
                sock, _ = listener.accept()
                gevent.spawn(serve_one, sock)

        server = gevent.spawn(serve)
        try:
            started = time.perf_counter()
            for _ in range(count):
                if connect_one(address) != b"x":
                    raise AssertionError("TLS handshakes: wrong reply")
            return count / (time.perf_counter() - started)
        finally:
            server.kill()
            listener.close()


def handshakes_greenflow(count: int, timeout: float) -> Measurement:
    tls = need_greenflow_tls()
    client_context, server_context = greenflow_contexts()

    def serve_one(sock: Any) -> None:
        try:
            flow = tls.server(greenflow.from_socket(sock), server_context, handshake_timeout=10)
        except greenflow.FlowError:
            return
        with flow:
            flow.write(b"x")

    def connect_one(address: tuple[str, int]) -> bytes:
        plain = greenflow.connect_tcp(address[0], address[1])
        with tls.client(plain, client_context, server_hostname=HOSTNAME, handshake_timeout=10) as flow:
            return bytes(flow.read(1))

    return Measurement(run_gevent(lambda: _handshakes_gevent_family(serve_one, connect_one, count), timeout))


def handshakes_gevent(count: int, timeout: float) -> Measurement:
    client_context, server_context = stdlib_contexts(gssl)

    def serve_one(sock: Any) -> None:
        try:
            with server_context.wrap_socket(sock, server_side=True) as tls:
                tls.sendall(b"x")
        except (OSError, ssl.SSLError):
            return

    def connect_one(address: tuple[str, int]) -> bytes:
        sock = gsocket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect(address)
        with client_context.wrap_socket(sock, server_hostname=HOSTNAME) as tls:
            return bytes(tls.recv(1))

    return Measurement(run_gevent(lambda: _handshakes_gevent_family(serve_one, connect_one, count), timeout))


def handshakes_asyncio(count: int, timeout: float, *, loop: str) -> Measurement:
    client_context, server_context = stdlib_contexts()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"x")
            await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def go() -> float:
        with listening(buffers=False) as plain:
            host, port = plain.getsockname()
            server = await asyncio.start_server(handle, sock=plain.dup(), ssl=server_context, backlog=4096)
            try:
                started = time.perf_counter()
                for _ in range(count):
                    reader, writer = await asyncio.open_connection(
                        host, port, ssl=client_context, server_hostname=HOSTNAME
                    )
                    try:
                        if await reader.readexactly(1) != b"x":
                            raise AssertionError("TLS handshakes: wrong reply")
                    finally:
                        writer.close()
                        with contextlib.suppress(ConnectionError, ssl.SSLError):
                            await writer.wait_closed()
                return count / (time.perf_counter() - started)
            finally:
                server.close()
                await server.wait_closed()

    return Measurement(run_asyncio(go, timeout, loop=loop))


def handshakes_trio(count: int, timeout: float) -> Measurement:
    trio = need("trio")
    client_context, server_context = stdlib_contexts()

    async def handle(stream: Any) -> None:
        try:
            await stream.send_all(b"x")
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def go() -> float:
        with listening(buffers=False) as plain:
            host, port = plain.getsockname()
            listener = trio.SSLListener(
                trio.SocketListener(trio.socket.from_stdlib_socket(plain.dup())), server_context
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, handle, [listener])
                started = time.perf_counter()
                for _ in range(count):
                    tcp = await trio.open_tcp_stream(host, port)
                    stream = trio.SSLStream(tcp, client_context, server_hostname=HOSTNAME)
                    try:
                        if await stream.receive_some(1) != b"x":
                            raise AssertionError("TLS handshakes: wrong reply")
                    finally:
                        await trio.aclose_forcefully(stream)
                elapsed = time.perf_counter() - started
                nursery.cancel_scope.cancel()
            return count / elapsed

    return Measurement(run_trio(go, timeout))


# -- the workloads ----------------------------------------------------------------------


def workloads(quick: bool) -> list[Workload]:
    total = 2 * MiB if quick else 256 * MiB
    count = 200 if quick else 20_000
    handshakes = 5 if quick else 500
    timeout = 20.0 if quick else 120.0
    bulk = [
        Case("greenflow.tls", functools.partial(bulk_sync, greenflow_tls_pair, "flow", total, timeout)),
        Case(
            "gevent + stdlib ssl",
            functools.partial(bulk_sync, gevent_ssl_pair, "gevent", total, timeout),
            baseline=True,
        ),
        Case("pyOpenSSL memory BIO", functools.partial(bulk_sync, pyopenssl_pair, "flow", total, timeout)),
        Case("asyncio ssl", functools.partial(bulk_asyncio, total, timeout, loop="asyncio")),
        Case("uvloop ssl", functools.partial(bulk_asyncio, total, timeout, loop="uvloop")),
        Case("trio SSLStream", functools.partial(bulk_trio, total, timeout)),
    ]
    pingpong = [
        Case("greenflow.tls", functools.partial(pingpong_sync, greenflow_tls_pair, "flow", count, timeout)),
        Case(
            "gevent + stdlib ssl",
            functools.partial(pingpong_sync, gevent_ssl_pair, "gevent", count, timeout),
            baseline=True,
        ),
        Case(
            "pyOpenSSL memory BIO", functools.partial(pingpong_sync, pyopenssl_pair, "flow", count, timeout)
        ),
        Case(
            "asyncio ssl",
            functools.partial(
                pingpong_asyncio, count, timeout, loop="asyncio", open_streams=asyncio_tls_streams
            ),
        ),
        Case(
            "uvloop ssl",
            functools.partial(
                pingpong_asyncio, count, timeout, loop="uvloop", open_streams=asyncio_tls_streams
            ),
        ),
        Case(
            "trio SSLStream", functools.partial(pingpong_trio, count, timeout, open_streams=trio_tls_streams)
        ),
    ]
    handshake_cases = [
        Case("greenflow.tls", functools.partial(handshakes_greenflow, handshakes, timeout)),
        Case("gevent + stdlib ssl", functools.partial(handshakes_gevent, handshakes, timeout), baseline=True),
        Case("asyncio ssl", functools.partial(handshakes_asyncio, handshakes, timeout, loop="asyncio")),
        Case("trio SSLStream", functools.partial(handshakes_trio, handshakes, timeout)),
    ]
    return [
        Workload(
            name="tls_bulk",
            family="tls",
            title="TLS 1.3 bulk",
            unit="MiB/s",
            higher_is_better=True,
            size=f"{total // MiB} MiB in 64 KiB writes over TLS 1.3 (AES-256-GCM) on TCP;"
            " 256 KiB socket buffers",
            cases=bulk,
        ),
        Workload(
            name="tls_pingpong",
            family="tls",
            title="TLS 1.3 ping-pong",
            unit="round trips/s",
            higher_is_better=True,
            size=f"{count:,} round trips of {MESSAGE} bytes over TLS 1.3 on one TCP connection",
            cases=pingpong,
            extras=(("p50", "us"), ("p99", "us")),
        ),
        Workload(
            name="tls_handshakes",
            family="tls",
            title="TLS 1.3 handshakes",
            unit="handshakes/s",
            higher_is_better=True,
            size=f"{handshakes:,} connections one at a time: TCP connect, TLS 1.3 handshake (ECDSA P-256),"
            " a 1-byte reply, close",
            cases=handshake_cases,
        ),
    ]
