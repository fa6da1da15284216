"""memtrace's overhead: the echo server under load with tracing off, and on.

For each case a fresh server process is started (``python -m
benchmarks.memtrace MODE``): ``greenflow.Server`` running the built-in echo
handler, with memtrace off (the baseline) or tracing every second or every
0.1 s to a viewer. The viewer is a greenlet of the server process that reads
the stream and throws it away, so that the records are really encoded and
written. The benchmark process, as the client, runs 50 raw gevent clients
at once, each sending 64 bytes and reading the echo, over and over, until
``count`` round trips are done in all. The value is round trips per second;
the extras are the server's CPU time per round trip (user + system, from
``getrusage`` in the server, over the loaded part only) and its RSS at the
end, so the three costs of tracing show side by side: throughput, CPU,
memory.
"""

from __future__ import annotations

import functools
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import gevent
from gevent import socket as gsocket

from ._common import Measurement, listening
from ._harness import Case, Workload
from .idle_memory import _rss

CLIENTS = 50
MESSAGE = b"x" * 64

_ROOT = Path(__file__).resolve().parent.parent


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the server process -----------------------------------------------------------------


def server_main(interval: float) -> None:
    """Serve echo on a port it prints; trace every ``interval`` s (0: off); report on stdin's word."""
    import gevent.os  # noqa: PLC0415

    from greenflow import Server, socketpair  # noqa: PLC0415
    from greenflow.handlers import echo  # noqa: PLC0415
    from greenflow.listeners import listen_socket  # noqa: PLC0415

    with listening(buffers=False) as plain:
        server = Server(echo, listen_socket(plain.dup()))
        server.start()
        received = [0]
        if interval:
            from greenflow import memtrace  # noqa: PLC0415

            ours, viewer = socketpair()

            def discard() -> None:
                while data := viewer.read(65536):
                    received[0] += len(data)

            gevent.spawn(discard)
            memtrace.start(ours, interval=interval)
        print("port", plain.getsockname()[1], flush=True)
        os.set_blocking(0, False)  # our own pipe: waiting on it must yield to the hub
        gevent.os.nb_read(0, 100)  # "go"
        cpu = _cpu()
        gevent.os.nb_read(0, 100)  # "measure"
        print("cpu", _cpu() - cpu, "rss", _rss(), "received", received[0], flush=True)
        if interval:
            memtrace.stop()
        server.stop(0)


# -- the client side (the benchmark process) ---------------------------------------------


def _load(port: int, count: int) -> float:
    remaining = [count]

    def client() -> None:
        sock = gsocket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect(("127.0.0.1", port))
            while remaining[0] > 0:
                remaining[0] -= 1
                sock.sendall(MESSAGE)
                got = 0
                while got < len(MESSAGE):
                    data = sock.recv(len(MESSAGE) - got)
                    if not data:
                        raise RuntimeError("memtrace benchmark: the server closed")
                    got += len(data)
        finally:
            sock.close()

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(client) for _ in range(CLIENTS)], raise_error=True)
    return time.perf_counter() - started


def echo_under_load(interval: float, count: int, timeout: float) -> Measurement:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.memtrace", str(interval)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=_ROOT,
        env=env,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        with gevent.Timeout(timeout, RuntimeError(f"memtrace benchmark: no result within {timeout:g} s")):
            words = process.stdout.readline().split()
            if words[:1] != [b"port"]:
                raise RuntimeError(f"memtrace benchmark: the server said {words!r}")
            process.stdin.write(b"go\n")
            process.stdin.flush()
            elapsed = _load(int(words[1]), count)
            process.stdin.write(b"measure\n")
            process.stdin.flush()
            report = process.stdout.readline().split()
        values = dict(zip(report[::2], report[1::2], strict=True))
        if interval and int(values[b"received"]) == 0:
            raise RuntimeError("memtrace benchmark: tracing on, but the viewer got nothing")
        return Measurement(
            count / elapsed,
            {
                "cpu_us": float(values[b"cpu"]) * 1e6 / count,
                "rss_mib": int(values[b"rss"]) / 2**20,
            },
        )
    finally:
        process.kill()
        process.wait()
        process.stdin.close()
        process.stdout.close()


def workloads(quick: bool) -> list[Workload]:
    count = 2_000 if quick else 200_000
    timeout = 30.0 if quick else 300.0
    return [
        Workload(
            name="memtrace",
            family="memtrace",
            title="memtrace overhead: echo server under load, tracing off and on",
            unit="round trips/s",
            higher_is_better=True,
            size=f"{count:,} round trips of 64 B, {CLIENTS} clients at once; server in its own process",
            cases=[
                Case("tracing off", functools.partial(echo_under_load, 0.0, count, timeout), baseline=True),
                Case("tracing every 1 s", functools.partial(echo_under_load, 1.0, count, timeout)),
                Case("tracing every 0.1 s", functools.partial(echo_under_load, 0.1, count, timeout)),
            ],
            extras=(("cpu_us", "server CPU µs/round trip"), ("rss_mib", "server RSS MiB")),
        )
    ]


if __name__ == "__main__":
    server_main(float(sys.argv[1]))
