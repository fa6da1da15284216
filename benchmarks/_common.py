"""What every workload shares: sizes, connected socket pairs, skips, time bounds.

Fairness rules, written once here so that every competitor gets the same
treatment:

- Connections are set up outside the timed part, with plain blocking stdlib
  sockets (a loopback ``connect`` completes in the kernel's backlog, before
  anyone accepts), and then handed to each library in the way its users
  would adopt a socket: ``greenflow.from_socket``, a ``gevent.socket``
  around the descriptor, ``asyncio.open_connection(sock=...)``,
  ``trio.SocketStream``. Only the data transfer is timed.
- ``SO_SNDBUF`` and ``SO_RCVBUF`` are 256 KiB on both ends (the listener's
  are set before ``listen()`` so the window scale agrees), because bulk
  loopback is bimodal on the shared VMs otherwise (performance notes, point
  6). ``TCP_NODELAY`` is on for every TCP connection.
- Third-party competitors (uvloop, trio) are imported only when their case
  runs, so the suite runs with nothing but the library's own requirements;
  a missing package turns the row into a skip with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import socket
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

import gevent
from gevent import socket as gsocket

import greenflow

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: Both socket buffers of every bulk-ish connection, on both ends.
SOCKET_BUFFER = 256 * KiB

#: The size of one write and of one read in the bulk workloads.
CHUNK = 64 * KiB

_T = TypeVar("_T")


class Skip(Exception):
    """A case that cannot run here (a package or binary is missing); the reason says which."""


class CaseTimeout(Exception):
    """A case ran past its time bound."""


@dataclass
class Measurement:
    """One run of one case: the headline value, and extra numbers (latencies)."""

    value: float
    extra: dict[str, float] = field(default_factory=dict)


# -- optional competitors ------------------------------------------------------------

_INSTALL_HINT = "pip install 'greenflow-io[bench]'"


def need(module: str) -> ModuleType:
    """Import a competitor's package, or skip the case that needs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Skip(f"skipped: {module} is not installed ({_INSTALL_HINT})") from exc


def need_greenflow_tls() -> ModuleType:
    """greenflow.tls, or a skip while the TLS layer has not landed."""
    try:
        return importlib.import_module("greenflow.tls")
    except ImportError as exc:
        raise Skip(f"skipped: greenflow.tls not available ({exc})") from exc


def need_greenflow_server() -> tuple[Any, Any]:
    """(Server, listen_tcp) from greenflow, or a skip while the server has not landed."""
    try:
        server = importlib.import_module("greenflow.server")
        listeners = importlib.import_module("greenflow.listeners")
    except ImportError as exc:
        raise Skip(f"skipped: greenflow.Server not available ({exc})") from exc
    return server.Server, listeners.listen_tcp


# -- sockets ----------------------------------------------------------------------------


def tune(sock: socket.socket, *, buffers: bool = True) -> None:
    """Apply the suite's socket options (see the module docstring)."""
    if buffers:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _proto(family: int) -> int:
    # IPPROTO_TCP, not 0, so that accepted sockets say so too: asyncio sets
    # TCP_NODELAY on its transports only for sockets whose proto is TCP.
    return socket.IPPROTO_TCP if family in (socket.AF_INET, socket.AF_INET6) else 0


@contextlib.contextmanager
def listening(
    family: int = socket.AF_INET, *, buffers: bool = True, backlog: int = 4096
) -> Iterator[socket.socket]:
    """A blocking stdlib listener on loopback (a temporary path for AF_UNIX), closed afterwards."""
    folder = tempfile.mkdtemp(prefix="greenflow-bench-") if family == socket.AF_UNIX else None
    sock = socket.socket(family, socket.SOCK_STREAM, _proto(family))
    try:
        if folder is not None:
            sock.bind(os.path.join(folder, "s"))
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        if buffers:
            tune(sock, buffers=True)
        sock.listen(backlog)
        yield sock
    finally:
        sock.close()
        if folder is not None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, "s"))
            os.rmdir(folder)


def connected_pair(
    family: int = socket.AF_INET, *, buffers: bool = True
) -> tuple[socket.socket, socket.socket]:
    """Two connected blocking stdlib sockets (client, server), tuned alike."""
    with listening(family, buffers=buffers, backlog=1) as listener:
        client = socket.socket(family, socket.SOCK_STREAM, _proto(family))
        try:
            tune(client, buffers=buffers)
            client.connect(listener.getsockname())
            server, _ = listener.accept()
        except BaseException:
            client.close()
            raise
    tune(server, buffers=buffers)
    return client, server


def gevent_pair(family: int = socket.AF_INET, *, buffers: bool = True) -> tuple[Any, Any]:
    """A connected pair of ``gevent.socket.socket`` objects (no monkey-patching)."""
    return tuple(  # type: ignore[return-value]
        gsocket.socket(s.family, s.type, s.proto, fileno=s.detach())
        for s in connected_pair(family, buffers=buffers)
    )


def flow_pair(family: int = socket.AF_INET, *, buffers: bool = True) -> tuple[Any, Any]:
    """A connected pair of greenflow socket flows."""
    client, server = connected_pair(family, buffers=buffers)
    return greenflow.from_socket(client), greenflow.from_socket(server)


# -- running a case under each library, bounded in time --------------------------------


def run_gevent(func: Callable[[], _T], timeout: float) -> _T:
    """Run ``func`` in the current greenlet, killed by a timeout after ``timeout`` seconds."""
    with gevent.Timeout(timeout, CaseTimeout(f"did not finish within {timeout:g} s")):
        return func()


def run_asyncio(make: Callable[[], Awaitable[_T]], timeout: float, *, loop: str = "asyncio") -> _T:
    """Run a coroutine on a fresh asyncio (or uvloop) event loop, bounded in time."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        factory = need("uvloop").new_event_loop

    async def bounded() -> _T:
        try:
            return await asyncio.wait_for(make(), timeout)
        except TimeoutError:
            raise CaseTimeout(f"did not finish within {timeout:g} s") from None

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(bounded())


def run_trio(make: Callable[[], Awaitable[_T]], timeout: float) -> _T:
    """Run an async function under trio, bounded in time."""
    trio = need("trio")

    async def bounded() -> _T:
        with trio.move_on_after(timeout) as scope:
            return await make()
        assert scope.cancelled_caught
        raise CaseTimeout(f"did not finish within {timeout:g} s")

    result: _T = trio.run(bounded)
    return result


def check_count(got: int, expected: int, what: str) -> None:
    """Every competitor must move exactly the same bytes."""
    if got != expected:
        raise AssertionError(f"{what}: moved {got} bytes, expected {expected}")


def pattern(size: int) -> bytes:
    """A payload of ``size`` non-zero bytes (not a page of zeros the kernel might share)."""
    block = bytes(range(1, 256))
    return (block * (size // len(block) + 1))[:size]
