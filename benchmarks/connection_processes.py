"""Connection rate as users run it: the clients in another process, the servers on two cores.

The ``connections`` workload runs its clients in the server's own thread,
which measures the server's code alone. Here the clients are another
process (50 gevent clients, each connecting, sending a minimal HTTP/1.0
request, reading the reply to the server's close, over and over), so the
server has its core to itself, and servers with worker processes
(``greenflow serve --workers 2``, gunicorn's gevent workers, uvicorn
``--workers 2``) can use a second one. The request is HTTP so that the
HTTP servers apply; greenflow's handler answers it the way a small HTTP
handler would, without a library.

Run as a program it is the client process:
``python -m benchmarks.connection_processes HOST PORT COUNT`` prints the
rate in connections per second.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gevent
import gevent.subprocess
from gevent import socket as gsocket

from ._common import Measurement, Skip, need, need_greenflow_server
from ._harness import Case, Workload

CLIENTS = 50
REQUEST = b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n"
REPLY = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
ROOT = Path(__file__).resolve().parent.parent


# -- the client process ------------------------------------------------------------------


def _clients(host: str, port: int, count: int) -> float:
    remaining = [count]

    def client() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            sock = gsocket.create_connection((host, port))
            try:
                sock.sendall(REQUEST)
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
                if not data.startswith(b"HTTP/1.") or not data.endswith(b"ok"):
                    raise AssertionError(f"connection_processes: a wrong reply {data[:60]!r}")
            finally:
                sock.close()

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(client) for _ in range(CLIENTS)], raise_error=True)
    return count / (time.perf_counter() - started)


def _run_clients(port: int, count: int, timeout: float) -> float:
    """The clients in a process of their own; waits cooperatively, so a server here runs meanwhile."""
    command = [sys.executable, "-m", "benchmarks.connection_processes", "127.0.0.1", str(port), str(count)]
    process = gevent.subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    if process.returncode != 0:
        raise AssertionError(f"the client process failed: {err.decode(errors='replace')[-400:]}")
    return float(out)


# -- the servers -------------------------------------------------------------------------


def http_handler(flow: Any) -> None:
    """greenflow's side: read the request's head, answer, close (the server closes after it)."""
    import greenflow  # noqa: PLC0415 - imported by the worker that runs it

    reader = greenflow.BufferedFlow(flow)
    reader.read_until(b"\r\n\r\n", 8192)
    reader.write(REPLY)


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """gunicorn's side."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """uvicorn's side."""
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


def one_process(count: int, timeout: float) -> Measurement:
    server_class, listen_tcp = need_greenflow_server()
    listener = listen_tcp("127.0.0.1", 0)
    server = server_class(http_handler, listener)
    server.start()
    try:
        return Measurement(_run_clients(int(listener.address[1]), count, timeout))
    finally:
        server.stop(1.0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _server_process(command: list[str], ready: re.Pattern[bytes], lines: int) -> Iterator[str]:
    """A server child; yields once ``lines`` stderr lines matched ``ready`` (the first match's group)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    process = gevent.subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    assert process.stderr is not None
    found: list[str] = []
    seen = b""
    try:
        with gevent.Timeout(30, AssertionError(f"{command[0]} did not start: {seen[-400:]!r}")):
            while len(found) < lines:
                line = process.stderr.readline()
                if not line:
                    raise AssertionError(f"{command[0]} exited: {seen[-400:]!r}")
                seen += line
                match = ready.search(line)
                if match:
                    found.append(match.group(1).decode())
        gevent.spawn(_drain, process.stderr)
        yield found[0]
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _drain(stream: Any) -> None:
    while stream.readline():
        pass


def greenflow_workers(count: int, timeout: float) -> Measurement:
    need_greenflow_server()
    port = _free_port()
    command = [
        *(sys.executable, "-m", "greenflow", "serve", "benchmarks.connection_processes:http_handler"),
        *("--bind", f"tcp://127.0.0.1:{port}", "--workers", "2", "--first-data-timeout", "0"),
    ]
    return _measure(command, port, rb"worker (\d+) ready", count, timeout)


def gunicorn_gevent(count: int, timeout: float) -> Measurement:
    need("gunicorn")
    port = _free_port()
    command = [
        *(sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "2", "-b", f"127.0.0.1:{port}"),
        *("--worker-connections", "1000", "benchmarks.connection_processes:wsgi_app"),
    ]
    return _measure(command, port, rb"Booting worker with pid: (\d+)", count, timeout)


def uvicorn_workers(count: int, timeout: float) -> Measurement:
    need("uvicorn")
    port = _free_port()
    command = [
        *(sys.executable, "-m", "uvicorn", "benchmarks.connection_processes:asgi_app"),
        *("--workers", "2", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"),
    ]
    return _measure(command, port, rb"Started server process \[(\d+)\]", count, timeout)


def _measure(command: list[str], port: int, ready: bytes, count: int, timeout: float) -> Measurement:
    """Start the server process, wait for its two workers and a first answer, then run the clients."""
    with _server_process(command, re.compile(ready), 2):
        _wait_accepting(port)
        return Measurement(_run_clients(port, count, timeout))


def _wait_accepting(port: int) -> None:
    """Until a request is answered: the workers of gunicorn and uvicorn say they boot, not that they serve."""
    with gevent.Timeout(30, Skip(f"skipped: nothing answered on port {port}")):
        while True:
            try:
                sock = gsocket.create_connection(("127.0.0.1", port))
            except OSError:
                gevent.sleep(0.05)
                continue
            with sock:
                sock.sendall(REQUEST)
                if sock.recv(4096):
                    return


def workloads(quick: bool) -> list[Workload]:
    count = 200 if quick else 10_000
    timeout = 30.0 if quick else 180.0
    return [
        Workload(
            name="connections_processes",
            family="connections_processes",
            title="Connection rate, clients in another process",
            unit="connections/s",
            higher_is_better=True,
            size=f"{count:,} connections (HTTP/1.0 request, 2-byte reply, close) from {CLIENTS} clients"
            " in a separate process",
            cases=[
                Case("greenflow.Server", functools.partial(one_process, count, timeout), baseline=True),
                Case("greenflow serve --workers 2", functools.partial(greenflow_workers, count, timeout)),
                Case("gunicorn -k gevent -w 2", functools.partial(gunicorn_gevent, count, timeout)),
                Case("uvicorn --workers 2", functools.partial(uvicorn_workers, count, timeout)),
            ],
        )
    ]


if __name__ == "__main__":
    print(_clients(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
