"""Memory per idle connection: the server's RSS growth per connected, idle client.

For each case a fresh server process is started (``python -m
benchmarks.idle_memory KIND COUNT``). It binds a listener, serves with its
library, and reports its resident set size (``VmRSS``). The benchmark
process, as the client, then opens ``count`` connections and sends nothing;
every server handler parks in a read. When all ``count`` handlers are
parked the server collects garbage, reports its RSS again, and the case's
value is the growth divided by ``count``, in bytes per connection. The
server is killed afterwards, whatever happened.

Kinds: ``greenflow`` (``greenflow.Server``, the handler parked in
``flow.read()``), ``gevent`` (a raw accept loop, a greenlet per connection
parked in ``sock.recv``: the baseline), ``asyncio`` and ``uvloop``
(``start_server``, the handler awaiting ``reader.read``), ``trio``
(``serve_listeners``, the handler awaiting ``receive_some``).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import importlib
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gevent
from gevent import socket as gsocket

from ._common import Measurement, listening, need, need_greenflow_server
from ._harness import Case, Workload

_ROOT = Path(__file__).resolve().parent.parent


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _report(*words: object) -> None:
    print(*words, flush=True)


# -- the server process -----------------------------------------------------------------


def _serve_gevent_family(kind: str, plain: socket.socket, count: int) -> None:
    parked = [0]
    if kind == "greenflow":
        server_class, _ = need_greenflow_server()

        def handler(flow: Any) -> None:
            parked[0] += 1
            flow.read()

        listen_socket = importlib.import_module("greenflow.listeners").listen_socket
        server = server_class(handler, listen_socket(plain))
        server.start()
    else:
        listener = gsocket.socket(plain.family, plain.type, plain.proto, fileno=plain.detach())

        def handle(sock: Any) -> None:
            parked[0] += 1
            try:
                sock.recv(65536)
            finally:
                sock.close()

        def serve() -> None:
            while True:
                sock, _ = listener.accept()
                gevent.spawn(handle, sock)

        gevent.spawn(serve)
    gevent.sleep(0.1)
    gc.collect()
    _report("ready", _rss())
    while parked[0] < count:
        gevent.sleep(0.01)
    gevent.sleep(0.2)
    gc.collect()
    _report("parked", _rss())
    gevent.sleep(60)


def _serve_asyncio(plain: socket.socket, count: int, kind: str) -> None:
    parked = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parked[0] += 1
        try:
            await reader.read(65536)
        finally:
            writer.close()

    async def main() -> None:
        await asyncio.start_server(handle, sock=plain, backlog=4096)
        await asyncio.sleep(0.1)
        gc.collect()
        _report("ready", _rss())
        while parked[0] < count:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        gc.collect()
        _report("parked", _rss())
        await asyncio.sleep(60)

    factory = need("uvloop").new_event_loop if kind == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


def server_main(kind: str, count: int) -> None:
    """The server process: serve ``count`` idle connections and report RSS."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with listening(buffers=False) as plain:
        _report("port", plain.getsockname()[1])
        if kind in ("greenflow", "gevent"):
            _serve_gevent_family(kind, plain.dup(), count)
        elif kind in ("asyncio", "uvloop"):
            _serve_asyncio(plain.dup(), count, kind)
        elif kind == "trio":
            _serve_trio(plain.dup(), count)
        else:
            raise SystemExit(f"unknown kind {kind!r}")


def _serve_trio(plain: socket.socket, count: int) -> None:
    trio = need("trio")
    parked = [0]

    async def handle(stream: Any) -> None:
        parked[0] += 1
        async with stream:
            await stream.receive_some(65536)

    async def main() -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(plain))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handle, [listener])
            await trio.sleep(0.1)
            gc.collect()
            _report("ready", _rss())
            while parked[0] < count:
                await trio.sleep(0.01)
            await trio.sleep(0.2)
            gc.collect()
            _report("parked", _rss())
            await trio.sleep(60)

    trio.run(main)


# -- the client side (the benchmark process) ---------------------------------------------


class _Lines:
    """Lines from a child's stdout, each awaited with a deadline."""

    def __init__(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        assert process.stdout is not None
        self._fd = process.stdout.fileno()
        self._buffer = b""
        self._deadline = deadline
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._fd, selectors.EVENT_READ)

    def next(self, expected: str) -> int:
        while b"\n" not in self._buffer:
            left = self._deadline - time.monotonic()
            if left <= 0 or not self._selector.select(left):
                raise TimeoutError(
                    f"idle_memory: the server said nothing within the time bound (awaiting {expected})"
                )
            chunk = os.read(self._fd, 4096)
            if not chunk:
                raise RuntimeError(f"idle_memory: the server exited (awaiting {expected})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        word, value = line.decode().split()
        if word != expected:
            raise RuntimeError(f"idle_memory: the server said {line!r}, expected {expected}")
        return int(value)

    def close(self) -> None:
        self._selector.close()


def idle_memory(kind: str, count: int, timeout: float) -> Measurement:
    if kind in ("uvloop", "trio"):
        need(kind)
    elif kind == "greenflow":
        need_greenflow_server()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.idle_memory", kind, str(count)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=_ROOT,
        env=env,
    )
    clients: list[socket.socket] = []
    lines = _Lines(process, time.monotonic() + timeout)
    try:
        port = lines.next("port")
        before = lines.next("ready")
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            clients.append(sock)
            sock.connect(("127.0.0.1", port))
        after = lines.next("parked")
        return Measurement((after - before) / count, {"rss_mib": after / 2**20})
    finally:
        lines.close()
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
        for sock in clients:
            sock.close()


def workloads(quick: bool) -> list[Workload]:
    count = 100 if quick else 5000
    timeout = 30.0 if quick else 120.0
    cases = [
        Case("greenflow.Server", functools.partial(idle_memory, "greenflow", count, timeout)),
        Case(
            "gevent greenlet in recv", functools.partial(idle_memory, "gevent", count, timeout), baseline=True
        ),
        Case("asyncio", functools.partial(idle_memory, "asyncio", count, timeout)),
        Case("uvloop", functools.partial(idle_memory, "uvloop", count, timeout)),
        Case("trio", functools.partial(idle_memory, "trio", count, timeout)),
    ]
    return [
        Workload(
            name="idle_memory",
            family="idle_memory",
            title="Memory per idle connection",
            unit="bytes/connection",
            higher_is_better=False,
            size=f"{count:,} idle connections; server RSS growth per connection, client in another process",
            cases=cases,
            extras=(("rss_mib", "MiB"),),
        )
    ]


if __name__ == "__main__":
    server_main(sys.argv[1], int(sys.argv[2]))
