"""A server that leaks on purpose, traced by memtrace, for test_memtrace.

Usage: memtrace_leaky.py TARGET [--fork] [--signal] [--interval SECONDS]

Serves a handler that keeps 4 KiB per request forever (the line marked
``# the leak``) on tcp://127.0.0.1:0, and drives it itself with one client
greenlet, one request per millisecond. Traces to TARGET (a memtrace target:
``listen:URL`` or a collector's URL) and prints ``viewers URL`` for each
listener, then ``ready``. SIGTERM stops tracing and the server and exits 0.

``--signal``: do not trace at start; SIGUSR2 toggles tracing
(``memtrace.install``).

``--fork``: once a viewer is connected, fork; the child allocates at the
line marked ``# the child`` for a while, with the hub running, says whether
it is still traced, and exits; the parent then traces a few more intervals,
stops tracing (the viewers get END) and exits.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import gevent
import gevent.event
import gevent.os

import greenflow
from greenflow import memtrace

LEAKS: list[bytearray] = []
CHILD: list[bytearray] = []


def leaky_handler(flow: greenflow.Flow) -> None:
    while data := flow.read():
        LEAKS.append(bytearray(4096))  # the leak
        flow.write(data)


def drive(host: str, port: int) -> None:
    with greenflow.connect_tcp(host, port) as client:
        while True:
            client.write(b"ping")
            client.read()
            gevent.sleep(0.001)


def fork_when_viewed(tracer: memtrace.Tracer, interval: float) -> None:
    assert tracer.output is not None
    while not tracer.output.sinks:
        gevent.sleep(interval / 5)
    gevent.sleep(interval * 3)
    pid = gevent.os.fork()
    if pid == 0:
        for _ in range(40):
            CHILD.append(bytearray(65536))  # the child
            gevent.sleep(interval / 4)
        os.write(1, f"child tracing={memtrace.is_tracing()}\n".encode())
        os._exit(0)
    gevent.os.waitpid(pid, 0)  # gevent reaps the children it forked: wait through it
    print("child done", flush=True)
    gevent.sleep(interval * 5)
    memtrace.stop()
    print("stopped", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("--fork", action="store_true")
    parser.add_argument("--signal", action="store_true")
    parser.add_argument("--interval", type=float, default=0.05)
    args = parser.parse_args()
    done = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, done.set)
    with greenflow.Server(leaky_handler, "tcp://127.0.0.1:0") as server:
        host, port = server.addresses[0][:2]  # type: ignore[index]
        undo = None
        if args.signal:
            undo = memtrace.install(args.target, start_now=False, interval=args.interval)
        else:
            tracer = memtrace.start(args.target, interval=args.interval)
            for url in tracer.urls:
                print("viewers", url, flush=True)
        client = gevent.spawn(drive, host, port)
        print("ready", flush=True)
        if args.fork:
            fork_when_viewed(tracer, args.interval)
        else:
            done.wait()
        client.kill()
        if undo is not None:
            undo()
        memtrace.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
