"""Memory per idle connection: the server's RSS growth per connected, idle client.

For each case a fresh server process is started (``python -m
benchmarks.idle_memory KIND COUNT SENT``). It binds a listener, serves with
its library, and reports its resident set size (``VmRSS``). The benchmark
process, as the client, then opens ``count`` connections and on each sends
``SENT`` bytes (0 or 1). When all ``count`` connections are parked the
server collects garbage, reports its RSS again, and the case's value is the
growth divided by ``count``, in bytes per connection. The server is killed
afterwards, whatever happened.

Two workloads, one family:

- ``idle_memory``: the clients send nothing. ``greenflow.Server`` runs with
  a first-data timeout (as ``greenflow serve`` does by default), so a
  connection that has sent nothing waits on the hub with no greenlet; its
  connections are counted through the server (``active_connections``),
  since no handler runs. The others park a handler in a read, as they must.
- ``idle_memory_handler``: the clients send one byte. Every server's
  handler reads it and parks in its next read: greenflow's in
  ``flow.read()``, a connection greenlet parked in a handler.

Kinds: ``greenflow`` (``greenflow.Server``), ``gevent`` (a raw accept loop,
a greenlet per connection parked in ``sock.recv``: the baseline),
``asyncio`` and ``uvloop`` (``start_server``, the handler awaiting
``reader.read``), ``trio`` (``serve_listeners``, the handler awaiting
``receive_some``).
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
from collections.abc import Callable
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


#: The first-data timeout of the greenflow server whose clients send nothing:
#: far longer than a case takes, so that none of them is closed meanwhile.
_FIRST_DATA_TIMEOUT = 600.0


def _serve_greenflow(plain: socket.socket, sent: int) -> Callable[[], int]:
    """greenflow.Server on ``plain``; returns how to count the parked connections."""
    server_class, _ = need_greenflow_server()
    handled = [0]

    def handler(flow: Any) -> None:
        for _ in range(sent):
            flow.read()
        handled[0] += 1
        flow.read()

    listen_socket = importlib.import_module("greenflow.listeners").listen_socket
    if sent:
        server = server_class(handler, listen_socket(plain))
        server.start()
        return lambda: handled[0]
    server = server_class(handler, listen_socket(plain), first_data_timeout=_FIRST_DATA_TIMEOUT)
    server.start()
    return lambda: int(server.active_connections)  # no handler runs for a client that sent nothing


def _serve_gevent(plain: socket.socket, sent: int) -> Callable[[], int]:
    """The raw accept loop on ``plain``, a greenlet per connection; how to count the parked ones."""
    listener = gsocket.socket(plain.family, plain.type, plain.proto, fileno=plain.detach())
    handled = [0]

    def handle(sock: Any) -> None:
        try:
            for _ in range(sent):
                sock.recv(65536)
            handled[0] += 1
            sock.recv(65536)
        finally:
            sock.close()

    def serve() -> None:
        while True:
            sock, _ = listener.accept()
            gevent.spawn(handle, sock)

    gevent.spawn(serve)
    return lambda: handled[0]


def _serve_gevent_family(kind: str, plain: socket.socket, count: int, sent: int) -> None:
    parked = _serve_greenflow(plain, sent) if kind == "greenflow" else _serve_gevent(plain, sent)
    gevent.sleep(0.1)
    gc.collect()
    _report("ready", _rss())
    while parked() < count:
        gevent.sleep(0.01)
    gevent.sleep(0.2)
    gc.collect()
    _report("parked", _rss())
    gevent.sleep(60)


def _serve_asyncio(plain: socket.socket, count: int, sent: int, kind: str) -> None:
    parked = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(sent):
                await reader.read(65536)
            parked[0] += 1
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


def server_main(kind: str, count: int, sent: int) -> None:
    """The server process: serve ``count`` idle connections, each sent ``sent`` bytes, and report RSS."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with listening(buffers=False) as plain:
        _report("port", plain.getsockname()[1])
        if kind in ("greenflow", "gevent"):
            _serve_gevent_family(kind, plain.dup(), count, sent)
        elif kind in ("asyncio", "uvloop"):
            _serve_asyncio(plain.dup(), count, sent, kind)
        elif kind == "trio":
            _serve_trio(plain.dup(), count, sent)
        else:
            raise SystemExit(f"unknown kind {kind!r}")


def _serve_trio(plain: socket.socket, count: int, sent: int) -> None:
    trio = need("trio")
    parked = [0]

    async def handle(stream: Any) -> None:
        async with stream:
            for _ in range(sent):
                await stream.receive_some(65536)
            parked[0] += 1
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


def idle_memory(kind: str, count: int, timeout: float, sent: int = 0) -> Measurement:
    if kind in ("uvloop", "trio"):
        need(kind)
    elif kind == "greenflow":
        need_greenflow_server()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.idle_memory", kind, str(count), str(sent)],
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
            if sent:
                sock.sendall(b"x" * sent)
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


def _cases(count: int, timeout: float, sent: int) -> list[Case]:
    def case(name: str, kind: str, *, baseline: bool = False) -> Case:
        return Case(name, functools.partial(idle_memory, kind, count, timeout, sent), baseline=baseline)

    return [
        case("greenflow.Server", "greenflow"),
        case("gevent greenlet in recv", "gevent", baseline=True),
        case("asyncio", "asyncio"),
        case("uvloop", "uvloop"),
        case("trio", "trio"),
    ]


def workloads(quick: bool) -> list[Workload]:
    count = 100 if quick else 5000
    timeout = 30.0 if quick else 120.0
    size = f"{count:,} idle connections; server RSS growth per connection, client in another process"
    return [
        Workload(
            name="idle_memory",
            family="idle_memory",
            title="Memory per idle connection, nothing sent",
            unit="bytes/connection",
            higher_is_better=False,
            size=size + "; the clients send nothing (greenflow.Server with a first-data timeout:"
            " the connections wait without a greenlet)",
            cases=_cases(count, timeout, 0),
            extras=(("rss_mib", "MiB"),),
        ),
        Workload(
            name="idle_memory_handler",
            family="idle_memory",
            title="Memory per idle connection, parked in a handler",
            unit="bytes/connection",
            higher_is_better=False,
            size=size
            + "; each client sends one byte, which the handler reads before it parks in its next read",
            cases=_cases(count, timeout, 1),
            extras=(("rss_mib", "MiB"),),
        ),
    ]


if __name__ == "__main__":
    server_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
