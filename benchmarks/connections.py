"""Connection rate: accept, a 16-byte request, a 16-byte reply, close; 50 clients at once.

Each of 50 concurrent clients connects, sends 16 bytes, reads the 16-byte
reply and closes, over and over, until ``count`` connections have been
served in all. The three gevent servers (``greenflow.Server``, gevent's
``StreamServer`` and a hand-written accept loop, the baseline) face the same
raw gevent clients, so their ratios compare the servers alone; asyncio,
uvloop and trio run clients of their own kind, since they cannot share the
thread with gevent. Socket buffers stay at the system's defaults.

Each case binds a fresh listener on a new port, so that connections left in
TIME_WAIT by the previous case never collide with the next one's.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent import socket as gsocket
from gevent.server import StreamServer

from ._common import Measurement, listening, need, need_greenflow_server, run_asyncio, run_gevent, run_trio
from ._harness import Case, Workload

CLIENTS = 50
REQUEST = b"0123456789abcdef"
REPLY = b"fedcba9876543210"
SIZE = len(REQUEST)


def _recv_exactly(recv: Callable[[int], bytes], size: int) -> bytes:
    data = recv(size)
    while len(data) < size:
        more = recv(size - len(data))
        if not more:
            break
        data += more
    return data


def _gevent_clients(address: tuple[str, int], count: int) -> float:
    """Run the raw gevent clients against a server at ``address``; return connections/s."""
    remaining = [count]
    done = [0]

    def client() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            sock = gsocket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.connect(address)
                sock.sendall(REQUEST)
                if _recv_exactly(sock.recv, SIZE) != REPLY:
                    raise AssertionError("connections: wrong reply")
            finally:
                sock.close()
            done[0] += 1

    started = time.perf_counter()
    clients = [gevent.spawn(client) for _ in range(CLIENTS)]
    try:
        gevent.joinall(clients, raise_error=True)
    finally:
        gevent.killall(clients)
    elapsed = time.perf_counter() - started
    if done[0] != count:
        raise AssertionError(f"connections: {done[0]} served, expected {count}")
    return count / elapsed


def greenflow_server(count: int, timeout: float) -> Measurement:
    server_class, listen_tcp = need_greenflow_server()

    def handler(flow: Any) -> None:
        buffer = bytearray(SIZE)
        view = memoryview(buffer)
        got = 0
        while got < SIZE:
            more = flow.read_into(view[got:])
            if not more:
                return
            got += more
        flow.write(REPLY)

    listener = listen_tcp("127.0.0.1", 0)
    server = server_class(handler, listener)
    server.start()
    try:
        return Measurement(run_gevent(lambda: _gevent_clients(listener.address[:2], count), timeout))
    finally:
        server.stop(1.0)


def _gevent_handle(sock: Any, _address: object = None) -> None:
    try:
        if _recv_exactly(sock.recv, SIZE) == REQUEST:
            sock.sendall(REPLY)
    finally:
        sock.close()


def stream_server(count: int, timeout: float) -> Measurement:
    with listening(buffers=False) as plain:
        listener = gsocket.socket(plain.family, plain.type, plain.proto, fileno=plain.detach())
        server = StreamServer(listener, _gevent_handle)
        server.start()
        try:
            return Measurement(run_gevent(lambda: _gevent_clients(listener.getsockname(), count), timeout))
        finally:
            server.stop(1.0)


def accept_loop(count: int, timeout: float) -> Measurement:
    with listening(buffers=False) as plain:
        listener = gsocket.socket(plain.family, plain.type, plain.proto, fileno=plain.detach())

        def serve() -> None:
            accept, spawn = listener.accept, gevent.spawn
            while True:
                sock, _ = accept()
                spawn(_gevent_handle, sock)

        loop = gevent.spawn(serve)
        try:
            return Measurement(run_gevent(lambda: _gevent_clients(listener.getsockname(), count), timeout))
        finally:
            loop.kill()
            listener.close()


def asyncio_server(count: int, timeout: float, *, loop: str) -> Measurement:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if await reader.readexactly(SIZE) == REQUEST:
                writer.write(REPLY)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def go() -> float:
        with listening(buffers=False) as plain:
            host, port = plain.getsockname()
            server = await asyncio.start_server(handle, sock=plain.dup(), backlog=4096)
            remaining = [count]

            async def client() -> None:
                while remaining[0] > 0:
                    remaining[0] -= 1
                    reader, writer = await asyncio.open_connection(host, port)
                    try:
                        writer.write(REQUEST)
                        await writer.drain()
                        if await reader.readexactly(SIZE) != REPLY:
                            raise AssertionError("connections: wrong reply")
                    finally:
                        writer.close()
                        await writer.wait_closed()

            try:
                started = time.perf_counter()
                await asyncio.gather(*(client() for _ in range(CLIENTS)))
                return count / (time.perf_counter() - started)
            finally:
                server.close()
                await server.wait_closed()

    return Measurement(run_asyncio(go, timeout, loop=loop))


def trio_server(count: int, timeout: float) -> Measurement:
    trio = need("trio")

    async def handle(stream: Any) -> None:
        try:
            data = b""
            while len(data) < SIZE:
                more = await stream.receive_some(SIZE - len(data))
                if not more:
                    return
                data += more
            await stream.send_all(REPLY)
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()

    async def go() -> float:
        with listening(buffers=False) as plain:
            host, port = plain.getsockname()
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(plain.dup()))
            remaining = [count]

            async def client() -> None:
                while remaining[0] > 0:
                    remaining[0] -= 1
                    stream = await trio.open_tcp_stream(host, port)
                    async with stream:
                        await stream.send_all(REQUEST)
                        data = b""
                        while len(data) < SIZE:
                            more = await stream.receive_some(SIZE - len(data))
                            if not more:
                                break
                            data += more
                        if data != REPLY:
                            raise AssertionError("connections: wrong reply")

            async with trio.open_nursery() as servers:
                servers.start_soon(trio.serve_listeners, handle, [listener])
                started = time.perf_counter()
                async with trio.open_nursery() as clients:
                    for _ in range(CLIENTS):
                        clients.start_soon(client)
                elapsed = time.perf_counter() - started
                servers.cancel_scope.cancel()
            return count / elapsed

    return Measurement(run_trio(go, timeout))


def workloads(quick: bool) -> list[Workload]:
    count = 200 if quick else 10_000
    timeout = 20.0 if quick else 120.0
    return [
        Workload(
            name="connections",
            family="connections",
            title="Connection rate",
            unit="connections/s",
            higher_is_better=True,
            size=f"{count:,} connections (accept, 16 B request, 16 B reply, close)"
            f" from {CLIENTS} concurrent clients",
            cases=[
                Case("greenflow.Server", functools.partial(greenflow_server, count, timeout)),
                Case("gevent StreamServer", functools.partial(stream_server, count, timeout)),
                Case("gevent accept loop", functools.partial(accept_loop, count, timeout), baseline=True),
                Case("asyncio", functools.partial(asyncio_server, count, timeout, loop="asyncio")),
                Case("uvloop", functools.partial(asyncio_server, count, timeout, loop="uvloop")),
                Case("trio", functools.partial(trio_server, count, timeout)),
            ],
        )
    ]
