"""Handlers for the worker process tests: each answers with the pid of the worker serving it."""

from __future__ import annotations

import os
import time

import greenflow


def once(flow: greenflow.Flow) -> None:
    """Read one line, answer ``pid``, and end: a connection per request."""
    reader = greenflow.BufferedFlow(flow)
    if reader.readline():
        reader.write(f"{os.getpid()}\n".encode())


def keepalive(flow: greenflow.Flow) -> None:
    """Answer each line with ``pid``, idle between requests (a stop ends the wait at once)."""
    reader = greenflow.BufferedFlow(flow)
    while True:
        with greenflow.idle():
            line = reader.readline()
        if not line:
            return
        reader.write(f"{os.getpid()}\n".encode())


def spin_on_request(flow: greenflow.Flow) -> None:
    """``spin`` says ``spinning`` and spins the CPU (the hub never runs again); else ``pid``."""
    reader = greenflow.BufferedFlow(flow)
    line = reader.readline()
    if line == b"spin\n":
        reader.write(b"spinning\n")
        spin_forever()
    reader.write(f"{os.getpid()}\n".encode())


def spin_forever() -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pass


def wsgi_app(environ: dict[str, object], start_response: object) -> list[bytes]:
    """A WSGI application answering with the worker's pid (``serve --wsgi --workers``)."""
    body = f"{os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])  # type: ignore[operator]
    return [body]
