"""One worker process: what runs in the child after the supervisor forks it.

The child starts from a copy of the supervisor, so it first makes the copy
its own: the supervisor's signal handlers and wake-up descriptor are put
back to the defaults, the descriptors of its other workers closed, and
``gevent.reinit()`` gives the child's hub a fresh start (no monkey-patching
is involved anywhere). ``faulthandler`` is on, so the supervisor's SIGABRT
for a worker whose hub stopped answering prints the Python traceback of
what was running before the process dies; core dumps are off, so that the
traceback is all it leaves.

Then it imports the handler (afresh: the supervisor never imports it, so a
reload's workers load the code as it is now), opens its listeners when it
has its own, starts a :class:`~greenflow.Server` and tells the supervisor
over its pipe, which carries one byte per message:

- ``R``: ready, serving;
- ``.``: a heartbeat, written by a greenlet of the worker's hub each
  interval; a hub that stops running greenlets (a handler spinning the CPU,
  a blocking call) stops them;
- ``M``: the worker reached its ``max_requests`` and stops; replace it now;
- ``F`` followed by a traceback, then the end of the pipe: it failed to start.

SIGTERM stops the worker gracefully (as :meth:`greenflow.Server.stop` does:
idle connections end at once, requests in flight get the grace period).
SIGINT and the supervisor's other signals are ignored: a Ctrl-C reaches the
whole process group, and the supervisor turns it into SIGTERMs.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import resource
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import gevent

from ..flow import Flow
from ..listener import Listener, ListenerLayer
from ..server import Handler, Server

__all__ = ["READY", "RECYCLING", "FAILED", "BEAT", "WorkerSpec", "run_worker"]

BEAT: Final = b"."
READY: Final = b"R"
RECYCLING: Final = b"M"
FAILED: Final = b"F"

#: Seconds a stopping worker waits, at most, for the connections it accepted
#: last to send their first bytes (see ``_stop_gracefully``): a client's
#: request follows its connect within moments; a silent one is not waited for.
SETTLE: Final = 1.0
_SETTLE_STEP: Final = 0.005

#: The exit status of a worker that failed to start.
START_FAILED: Final = 3

#: The signals the supervisor handles; a worker puts them back to the defaults.
SUPERVISOR_SIGNALS: Final = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)

#: What makes a worker's listeners: the shared ones, or a function that opens its own.
ListenerSource = Sequence[Listener] | Callable[[], Sequence[Listener]]


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker of one supervisor is started with."""

    handler: str | Handler
    listeners: ListenerSource
    server_options: Mapping[str, object]
    heartbeat_interval: float
    loader: Callable[[], Handler] | None = None


def run_worker(spec: WorkerSpec, pipe: int, max_requests: int, inherited: Sequence[int]) -> None:
    """The whole life of a worker, in the child just forked; never returns."""
    status = 0
    try:
        _make_the_copy_ours(inherited)
        status = _serve(spec, pipe, max_requests)
    except BaseException:
        os.set_blocking(pipe, True)  # the whole traceback, however long
        _send(pipe, FAILED + traceback.format_exc().encode("utf-8", "replace"))
        status = START_FAILED
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(status)


def _make_the_copy_ours(inherited: Sequence[int]) -> None:
    signal.set_wakeup_fd(-1)
    for signum in SUPERVISOR_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(signum, signal.SIG_IGN)
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    faulthandler.enable(all_threads=True)
    gevent.reinit()


def _load(handler: str | Handler) -> Handler:
    if not isinstance(handler, str):
        return handler
    from ..cli._serve import load_handler  # noqa: PLC0415 - the one loader of MODULE:FUNCTION

    return load_handler(handler)


class _Recycler:
    """Counts the connections a worker has served, and stops it at its limit."""

    __slots__ = ("_begin_stop", "_handler", "_limit", "_pipe", "served")

    def __init__(self, handler: Handler, limit: int, pipe: int, begin_stop: Callable[[], None]) -> None:
        self._handler = handler
        self._limit = limit
        self._pipe = pipe
        self._begin_stop = begin_stop
        self.served = 0

    def __call__(self, flow: Flow) -> object:
        try:
            return self._handler(flow)
        finally:
            self.served += 1
            if self.served == self._limit:
                _send(self._pipe, RECYCLING)
                self._begin_stop()


def _serve(spec: WorkerSpec, pipe: int, max_requests: int) -> int:
    handler = spec.loader() if spec.loader is not None else _load(spec.handler)
    source = spec.listeners
    if callable(source):
        listeners = list(source())
    else:
        listeners = list(source)
        _leave_files_to_the_supervisor(listeners)
    stop_begun = False

    def begin_stop() -> None:
        nonlocal stop_begun
        if not stop_begun:
            stop_begun = True
            gevent.spawn(_stop_gracefully, server)

    if max_requests > 0:
        handler = _Recycler(handler, max_requests, pipe, begin_stop)
    server = Server(handler, *listeners, **spec.server_options)  # type: ignore[arg-type]
    server.start()
    watcher = gevent.signal_handler(signal.SIGTERM, begin_stop)
    beating = gevent.spawn(_heartbeat, pipe, spec.heartbeat_interval, os.getppid(), begin_stop)
    _send(pipe, READY)
    try:
        server.serve_forever(stop_signals=())
    finally:
        watcher.cancel()
        beating.kill()
    return 0


def _leave_files_to_the_supervisor(listeners: Sequence[Listener]) -> None:
    """A worker's copies of shared Unix listeners must not remove the socket file when they close.

    The supervisor's own listener removes it when the supervisor ends; a
    worker that stops during a reload would otherwise take the path away
    from the workers that go on. The inode recorded for the removal check
    is made one no file has, and the path stays for the flows' addresses.
    """
    for listener in listeners:
        base = listener
        while isinstance(base, ListenerLayer):
            base = base.inner
        if base._unlink is not None:
            base._unlink = (base._unlink[0], -1, -1)


def _stop_gracefully(server: Server) -> None:
    """Hand the listening sockets back at once, let the last accepted ones start, then drain.

    A connection accepted just before the stop may not have sent its
    request yet (on loopback the client's write can come a moment after
    its connect): a plain :meth:`~greenflow.Server.stop` would count it as
    idle and close it unserved. So the worker first stops accepting (the
    other workers take the queue), then waits, for :data:`SETTLE` seconds
    at most, until every connection it has accepted has reached its
    handler; only then does it drain.
    """
    server.stop_accepting()
    deadline = time.monotonic() + SETTLE
    while server.opening_connections and time.monotonic() < deadline:
        gevent.sleep(_SETTLE_STEP)
    server.stop()


def _heartbeat(pipe: int, interval: float, supervisor: int, begin_stop: Callable[[], None]) -> None:
    """Beat each interval; a worker whose supervisor is gone (killed) stops by itself."""
    while os.getppid() == supervisor:
        _send(pipe, BEAT)
        gevent.sleep(interval)
    begin_stop()


def _send(pipe: int, message: bytes) -> None:
    """Write to the supervisor; a full pipe (it is busy) or a closed one (it is gone) is no error."""
    with contextlib.suppress(BlockingIOError, BrokenPipeError):
        os.write(pipe, message)
