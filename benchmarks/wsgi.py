"""WSGI hello-world with keep-alive: greenflow.wsgi against gevent.pywsgi, gunicorn and waitress.

Each case starts its server in a process of its own and loads it with
``wrk`` (Debian's package; the benchmark installs it with ``apt-get`` when
it is missing and it runs as root, and skips otherwise), a third process:
50 keep-alive connections, one wrk thread, for ``seconds``. The value is
wrk's requests per second, the extra its 99th-percentile latency.

The servers, each with one process and the same application (13 bytes,
with a ``Content-Length``):

- ``greenflow.wsgi``: ``greenflow.Server`` with ``greenflow.wsgi.handler``.
- ``gevent.pywsgi``: ``pywsgi.WSGIServer`` (the baseline; the issue's target
  is at least its rate).
- ``gunicorn gevent``: gunicorn's arbiter with one gevent worker.
- ``waitress``: its default four threads.

Each gets a listening socket bound by this process (``fd://`` for those
that take one, a launcher for waitress), and one request is answered
before wrk starts, so a slow import never counts as a slow server. The
server is killed afterwards, whatever happened.
"""

from __future__ import annotations

import functools
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gevent import socket as gsocket

import greenflow
import greenflow.wsgi

from ._common import Measurement, Skip, need
from ._harness import Case, Workload

_ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 50
BODY = b"Hello, World!"


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """The application every server runs."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]


# -- the server processes ------------------------------------------------------------------


def _serve(kind: str, fd: int) -> None:
    """Run in the server process: serve :func:`app` on the listening socket ``fd``."""
    sock = socket.socket(fileno=fd)
    if kind == "greenflow":
        server = greenflow.Server(greenflow.wsgi.handler(app), greenflow.listen_socket(sock))
        server.serve_forever()
    elif kind == "pywsgi":
        pywsgi = need("gevent.pywsgi")
        pywsgi.WSGIServer(gsocket.socket(fileno=sock.detach()), app, log=None).serve_forever()
    elif kind == "waitress":
        need("waitress").serve(app, sockets=[sock], _quiet=True)
    else:
        raise SystemExit(f"unknown server kind {kind!r}")


def _command(kind: str, fd: int) -> list[str]:
    if kind == "gunicorn":
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "--worker-class",
            "gevent",
            "--workers",
            "1",
            "--bind",
            f"fd://{fd}",
            "--log-level",
            "warning",
            "benchmarks.wsgi:app",
        ]
    return [sys.executable, "-m", "benchmarks.wsgi", kind, str(fd)]


# -- wrk --------------------------------------------------------------------------------------


def _wrk() -> str:
    """The wrk binary; installed with apt-get when missing and root, else a skip."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise Skip("skipped: no wrk binary (apt-get install wrk, as root)")
    install = ["apt-get", "install", "-y", "-qq", "wrk"]
    for command in (install, ["apt-get", "update", "-qq"], install):  # the lists may be stale
        subprocess.run(command, capture_output=True, timeout=300, check=False)
        found = shutil.which("wrk")
        if found:
            return found
    raise Skip("skipped: no wrk binary, and apt-get could not install it")


_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def parse_wrk(output: str) -> Measurement:
    """Requests per second, and the 99th percentile latency in microseconds, from wrk --latency."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", output)
    if rate is None or p99 is None:
        raise RuntimeError(f"cannot read wrk's output: {output[-500:]!r}")
    if errors is not None and errors.group(1):
        raise RuntimeError(f"wrk got error responses: {errors.group(0)}")
    return Measurement(float(rate.group(1)), {"p99": float(p99.group(1)) * _UNITS[p99.group(2)]})


def _answered(port: int, deadline: float) -> None:
    """Wait until the server answers one request (it is listening already: the kernel queues)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=max(1.0, deadline - time.monotonic()))
    try:
        connection.request("GET", "/")
        body = connection.getresponse().read()
    finally:
        connection.close()
    if body != BODY:
        raise RuntimeError(f"the server answered {body!r}")


def run_case(kind: str, seconds: float, timeout: float) -> Measurement:
    if kind in ("gunicorn", "waitress"):
        need(kind)
    wrk = _wrk()
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    server = subprocess.Popen(
        _command(kind, fd),
        pass_fds=(fd,),
        cwd=_ROOT,
        env={**os.environ, "PYTHONPATH": str(_ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    listener.close()
    try:
        _answered(port, time.monotonic() + timeout)
        result = subprocess.run(
            [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency", f"http://127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"wrk failed: {result.stderr[-500:]}")
        return parse_wrk(result.stdout)
    finally:
        server.send_signal(signal.SIGKILL)
        server.communicate(timeout=10)


def workloads(quick: bool) -> list[Workload]:
    seconds = 1.0 if quick else 10.0
    timeout = seconds + 30.0
    case = functools.partial
    return [
        Workload(
            name="wsgi_hello",
            family="wsgi",
            title="WSGI hello-world, keep-alive",
            unit="requests/s",
            higher_is_better=True,
            size=f"wrk, {CONNECTIONS} keep-alive connections, one thread, {seconds:g} s; one server process",
            cases=[
                Case("greenflow.wsgi", case(run_case, "greenflow", seconds, timeout)),
                Case("gevent.pywsgi", case(run_case, "pywsgi", seconds, timeout), baseline=True),
                Case("gunicorn gevent", case(run_case, "gunicorn", seconds, timeout)),
                Case("waitress", case(run_case, "waitress", seconds, timeout)),
            ],
            extras=(("p99", "us"),),
        )
    ]


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]))
