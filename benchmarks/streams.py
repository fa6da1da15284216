"""Plain byte streams: TCP bulk, Unix-socket bulk, and ping-pong.

Bulk: the client writes ``total`` bytes in 64 KiB writes of one reused
payload, then shuts down writing; the server reads to EOF 64 KiB at a time
and counts (the count is checked). Timed from the first write to the EOF.

Ping-pong: on one connection the client sends 64 bytes and waits until the
server has echoed all 64 back, ``count`` times. Each round trip is timed on
the client; a run reports round trips per second and the median and 99th
percentile latency.

The gevent-family cases (greenflow, raw gevent) share one driver each, fed
with the library's own calls (``flow.write`` / ``sock.sendall``,
``flow.read_into`` / ``sock.recv_into``), so the code around the calls is
identical and only the library differs.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import gevent

from ._common import (
    CHUNK,
    SOCKET_BUFFER,
    GiB,
    Measurement,
    MiB,
    Skip,
    check_count,
    connected_pair,
    flow_pair,
    gevent_pair,
    need,
    pattern,
    run_asyncio,
    run_gevent,
    run_trio,
)
from ._harness import Case, Workload

MESSAGE = 64


# -- bulk -------------------------------------------------------------------------------


def _bulk_sync(
    write: Callable[[Any], object],
    end: Callable[[], object],
    read: Callable[[], int],
    total: int,
) -> float:
    """Send ``total`` bytes in a greenlet, read them here; return bytes/s."""
    payload = pattern(CHUNK)

    def send() -> None:
        for _ in range(total // CHUNK):
            write(payload)
        end()

    started = time.perf_counter()
    sender = gevent.spawn(send)
    try:
        got = 0
        while count := read():
            got += count
        elapsed = time.perf_counter() - started
        sender.get()
    finally:
        sender.kill()
    check_count(got, total, "bulk")
    return total / elapsed


def bulk_greenflow(
    family: int, total: int, timeout: float, *, into: bool, layer: Callable[[Any], Any] | None = None
) -> Measurement:
    """greenflow socket flows, or ``layer`` over each of them (the framed benchmark's)."""
    client, server = flow_pair(family)
    if layer is not None:
        client, server = layer(client), layer(server)
    try:
        if into:
            buffer = bytearray(CHUNK)
            read_into = server.read_into

            def read() -> int:
                return int(read_into(buffer))

        else:
            read_chunk = server.read

            def read() -> int:
                return len(read_chunk(CHUNK))

        def go() -> float:
            return _bulk_sync(client.write, lambda: client.shutdown("write"), read, total)

        return Measurement(run_gevent(go, timeout) / MiB)
    finally:
        client.close()
        server.close()


def bulk_gevent(family: int, total: int, timeout: float, *, into: bool) -> Measurement:
    client, server = gevent_pair(family)
    try:
        if into:
            buffer = bytearray(CHUNK)
            recv_into = server.recv_into

            def read() -> int:
                return int(recv_into(buffer))

        else:
            recv = server.recv

            def read() -> int:
                return len(recv(CHUNK))

        def go() -> float:
            return _bulk_sync(client.sendall, lambda: client.shutdown(socket.SHUT_WR), read, total)

        return Measurement(run_gevent(go, timeout) / MiB)
    finally:
        client.close()
        server.close()


async def _asyncio_streams(family: int) -> tuple[Any, Any, Any, Any]:
    client, server = connected_pair(family)
    opener = asyncio.open_unix_connection if family == socket.AF_UNIX else asyncio.open_connection
    client_reader, client_writer = await opener(sock=client)
    server_reader, server_writer = await opener(sock=server)
    return client_reader, client_writer, server_reader, server_writer


async def _close_writers(*writers: Any) -> None:
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


def bulk_asyncio(family: int, total: int, timeout: float, *, loop: str) -> Measurement:
    async def go() -> float:
        _, client_writer, server_reader, server_writer = await _asyncio_streams(family)
        payload = pattern(CHUNK)

        async def send() -> None:
            write, drain = client_writer.write, client_writer.drain
            for _ in range(total // CHUNK):
                write(payload)
                await drain()
            client_writer.write_eof()

        try:
            started = time.perf_counter()
            sender = asyncio.ensure_future(send())
            got = 0
            read = server_reader.read
            while data := await read(CHUNK):
                got += len(data)
            elapsed = time.perf_counter() - started
            await sender
        finally:
            await _close_writers(client_writer, server_writer)
        check_count(got, total, "bulk")
        return total / elapsed

    return Measurement(run_asyncio(go, timeout, loop=loop) / MiB)


def _trio_streams(family: int) -> tuple[Any, Any]:
    trio = need("trio")
    client, server = connected_pair(family)
    return (
        trio.SocketStream(trio.socket.from_stdlib_socket(client)),
        trio.SocketStream(trio.socket.from_stdlib_socket(server)),
    )


def bulk_trio(family: int, total: int, timeout: float) -> Measurement:
    trio = need("trio")

    async def go() -> float:
        client, server = _trio_streams(family)
        payload = pattern(CHUNK)

        async def send() -> None:
            for _ in range(total // CHUNK):
                await client.send_all(payload)
            await client.send_eof()

        try:
            started = time.perf_counter()
            got = 0
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                receive = server.receive_some
                while data := await receive(CHUNK):
                    got += len(data)
                elapsed = time.perf_counter() - started
        finally:
            await client.aclose()
            await server.aclose()
        check_count(got, total, "bulk")
        return total / elapsed

    return Measurement(run_trio(go, timeout) / MiB)


# -- ceilings ---------------------------------------------------------------------------

_CEILING_SOURCE = Path(__file__).with_name("ceiling.c")


@functools.cache
def _ceiling_binary() -> str:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise Skip("skipped: no C compiler (cc) to build the C ceiling")
    folder = tempfile.mkdtemp(prefix="greenflow-bench-ceiling-")
    atexit.register(shutil.rmtree, folder, True)  # the binary is kept for the whole run, then removed
    binary = os.path.join(folder, "ceiling")
    result = subprocess.run(
        [compiler, "-O2", "-o", binary, str(_CEILING_SOURCE)], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise Skip(f"skipped: the C ceiling did not build: {result.stderr.strip()[:200]}")
    return binary


def bulk_c(family: int, total: int, timeout: float) -> Measurement:
    binary = _ceiling_binary()
    with tempfile.TemporaryDirectory(prefix="greenflow-bench-") as folder:
        args = [
            binary,
            "tcp" if family != socket.AF_UNIX else "unix",
            str(total),
            str(CHUNK),
            str(SOCKET_BUFFER),
        ]
        if family == socket.AF_UNIX:
            args.append(os.path.join(folder, "s"))
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"the C ceiling failed: {result.stderr.strip()}")
    received, seconds = result.stdout.split()
    check_count(int(received), total, "bulk (C)")
    return Measurement(total / float(seconds) / MiB)


def bulk_iperf3(total: int, timeout: float) -> Measurement:
    binary = shutil.which("iperf3")
    if binary is None:
        raise Skip("skipped: no iperf3 binary on this machine")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [binary, "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.2)
        result = subprocess.run(
            [
                binary,
                "-c",
                "127.0.0.1",
                "-p",
                str(port),
                "-n",
                str(total),
                "-l",
                str(CHUNK),
                "-w",
                str(SOCKET_BUFFER),
                "-J",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        report = json.loads(result.stdout)
        bits = report["end"]["sum_received"]["bits_per_second"]
        return Measurement(bits / 8 / MiB)
    finally:
        server.kill()
        server.wait()


# -- ping-pong --------------------------------------------------------------------------


def _latency_stats(samples: list[int], elapsed: float) -> Measurement:
    samples.sort()
    median = samples[len(samples) // 2] / 1000
    p99 = samples[min(len(samples) - 1, (len(samples) * 99) // 100)] / 1000
    return Measurement(len(samples) / elapsed, {"p50": median, "p99": p99})


def _pingpong_sync(
    count: int,
    *,
    client_write: Callable[[Any], object],
    client_read_into: Callable[[Any], int],
    server_write: Callable[[Any], object],
    server_read_into: Callable[[Any], int],
) -> Measurement:
    message = pattern(MESSAGE)

    def serve() -> None:
        buffer = bytearray(MESSAGE)
        view = memoryview(buffer)
        for _ in range(count):
            got = server_read_into(view)
            while got < MESSAGE:
                more = server_read_into(view[got:])
                if not more:
                    raise AssertionError("the client ended early")
                got += more
            server_write(buffer)

    server = gevent.spawn(serve)
    try:
        buffer = bytearray(MESSAGE)
        view = memoryview(buffer)
        samples = []
        clock = time.perf_counter_ns
        started = time.perf_counter()
        for _ in range(count):
            sent = clock()
            client_write(message)
            got = client_read_into(view)
            while got < MESSAGE:
                more = client_read_into(view[got:])
                if not more:
                    raise AssertionError("the server ended early")
                got += more
            samples.append(clock() - sent)
        elapsed = time.perf_counter() - started
        server.get()
    finally:
        server.kill()
    if buffer != message:
        raise AssertionError("ping-pong: the echo differs from the message")
    return _latency_stats(samples, elapsed)


def pingpong_greenflow(count: int, timeout: float) -> Measurement:
    client, server = flow_pair(socket.AF_INET)
    try:
        return run_gevent(
            lambda: _pingpong_sync(
                count,
                client_write=client.write,
                client_read_into=client.read_into,
                server_write=server.write,
                server_read_into=server.read_into,
            ),
            timeout,
        )
    finally:
        client.close()
        server.close()


def pingpong_gevent(count: int, timeout: float) -> Measurement:
    client, server = gevent_pair(socket.AF_INET)
    try:
        return run_gevent(
            lambda: _pingpong_sync(
                count,
                client_write=client.sendall,
                client_read_into=client.recv_into,
                server_write=server.sendall,
                server_read_into=server.recv_into,
            ),
            timeout,
        )
    finally:
        client.close()
        server.close()


AsyncioStreams = tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.StreamReader, asyncio.StreamWriter]


def pingpong_asyncio(
    count: int,
    timeout: float,
    *,
    loop: str,
    open_streams: Callable[[], Awaitable[AsyncioStreams]] | None = None,
) -> Measurement:
    """Ping-pong over asyncio streams: plain TCP, or what ``open_streams`` makes."""

    async def go() -> Measurement:
        opened = await (open_streams() if open_streams is not None else _asyncio_streams(socket.AF_INET))
        client_reader, client_writer, server_reader, server_writer = opened
        message = pattern(MESSAGE)

        async def serve() -> None:
            for _ in range(count):
                data = await server_reader.readexactly(MESSAGE)
                server_writer.write(data)
                await server_writer.drain()

        server = asyncio.ensure_future(serve())
        try:
            samples = []
            clock = time.perf_counter_ns
            write, drain, read = client_writer.write, client_writer.drain, client_reader.readexactly
            started = time.perf_counter()
            data = b""
            for _ in range(count):
                sent = clock()
                write(message)
                await drain()
                data = await read(MESSAGE)
                samples.append(clock() - sent)
            elapsed = time.perf_counter() - started
            await server
        finally:
            server.cancel()
            await _close_writers(client_writer, server_writer)
        if data != message:
            raise AssertionError("ping-pong: the echo differs from the message")
        return _latency_stats(samples, elapsed)

    return run_asyncio(go, timeout, loop=loop)


async def _trio_receive_exactly(stream: Any, size: int) -> bytes:
    data = await stream.receive_some(size)
    while len(data) < size:
        more = await stream.receive_some(size - len(data))
        if not more:
            return b""
        data += more
    return bytes(data)


def pingpong_trio(
    count: int, timeout: float, *, open_streams: Callable[[], Awaitable[tuple[Any, Any]]] | None = None
) -> Measurement:
    """Ping-pong over trio streams: plain TCP, or what ``open_streams`` makes."""
    trio = need("trio")

    async def plain() -> tuple[Any, Any]:
        return _trio_streams(socket.AF_INET)

    async def go() -> Measurement:
        client, server = await (open_streams or plain)()
        message = pattern(MESSAGE)

        async def serve() -> None:
            for _ in range(count):
                data = await _trio_receive_exactly(server, MESSAGE)
                await server.send_all(data)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                samples = []
                clock = time.perf_counter_ns
                started = time.perf_counter()
                data = b""
                for _ in range(count):
                    sent = clock()
                    await client.send_all(message)
                    data = await _trio_receive_exactly(client, MESSAGE)
                    samples.append(clock() - sent)
                elapsed = time.perf_counter() - started
        finally:
            await client.aclose()
            await server.aclose()
        if data != message:
            raise AssertionError("ping-pong: the echo differs from the message")
        return _latency_stats(samples, elapsed)

    return run_trio(go, timeout)


# -- the workloads ----------------------------------------------------------------------


def _bulk_workload(name: str, family: int, total: int, timeout: float) -> Workload:
    label = "TCP" if family == socket.AF_INET else "Unix-socket"
    cases = [
        Case("greenflow read_into", functools.partial(bulk_greenflow, family, total, timeout, into=True)),
        Case("greenflow read", functools.partial(bulk_greenflow, family, total, timeout, into=False)),
        Case(
            "gevent recv_into",
            functools.partial(bulk_gevent, family, total, timeout, into=True),
            baseline=True,
        ),
        Case("gevent recv", functools.partial(bulk_gevent, family, total, timeout, into=False)),
        Case("asyncio streams", functools.partial(bulk_asyncio, family, total, timeout, loop="asyncio")),
        Case("uvloop streams", functools.partial(bulk_asyncio, family, total, timeout, loop="uvloop")),
    ]
    if family == socket.AF_INET:
        cases.append(Case("trio streams", functools.partial(bulk_trio, family, total, timeout)))
    cases.append(Case("C poll() loop", functools.partial(bulk_c, family, total, timeout), ceiling=True))
    if family == socket.AF_INET:
        cases.append(Case("iperf3", functools.partial(bulk_iperf3, total, timeout), ceiling=True))
    return Workload(
        name=name,
        family=name,
        title=f"{label} bulk",
        unit="MiB/s",
        higher_is_better=True,
        size=f"{_size(total)} in 64 KiB writes, read to EOF 64 KiB at a time; 256 KiB socket buffers",
        cases=cases,
    )


def _size(total: int) -> str:
    return f"{total // GiB} GiB" if total >= GiB else f"{total // MiB} MiB"


def workloads(quick: bool) -> list[Workload]:
    total = 4 * MiB if quick else GiB
    count = 500 if quick else 100_000
    timeout = 20.0 if quick else 120.0
    pingpong = [
        Case("greenflow", functools.partial(pingpong_greenflow, count, timeout)),
        Case("gevent", functools.partial(pingpong_gevent, count, timeout), baseline=True),
        Case("asyncio streams", functools.partial(pingpong_asyncio, count, timeout, loop="asyncio")),
        Case("uvloop streams", functools.partial(pingpong_asyncio, count, timeout, loop="uvloop")),
        Case("trio streams", functools.partial(pingpong_trio, count, timeout)),
    ]
    return [
        _bulk_workload("tcp_bulk", socket.AF_INET, total, timeout),
        _bulk_workload("unix_bulk", socket.AF_UNIX, total, timeout),
        Workload(
            name="pingpong",
            family="pingpong",
            title="Ping-pong",
            unit="round trips/s",
            higher_is_better=True,
            size=f"{count:,} round trips of 64 bytes on one TCP connection",
            cases=pingpong,
            extras=(("p50", "us"), ("p99", "us")),
        ),
    ]
