"""The open connections of a server, and how a stop drains them.

:class:`Connections` is the set a server's connections live in while they
run: the accept loop adds to it, each connection takes itself out when it
ends, and the room left in it is what the accept loop's connection limit
reads.

Draining (:meth:`Connections.drain`) is the connection half of a graceful
stop, after the server has stopped accepting and closed its listeners:

1. Every connection that has no request in progress (waiting for its first
   bytes, in its handshake, or idle between requests; see
   :data:`~greenflow.server._connection.ENDED_BY_STOP`) is ended at once.
   From then on no connection starts a handler, and a handler entering
   :func:`~greenflow.idle` reads EOF at once.
2. The others (mid-request) run on, each ending when its handler next waits
   for a request or returns; a connection ended during a stop lingers
   before its close, so that a request crossing the stop on the wire cannot
   reset the last response away.
3. When the grace period ends, what remains is closed (a greenlet blocked
   in its flow gets :class:`~greenflow.ClosedError`) and its greenlets are
   killed; they get :data:`KILL_WAIT` seconds to unwind.

:func:`stopping_on_signals` is how :meth:`~greenflow.Server.serve_forever`
turns SIGTERM and SIGINT into a graceful stop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Final

import gevent
from gevent.event import Event

from ._connection import ENDED_BY_STOP, Connection, Settings

if TYPE_CHECKING:
    from ._accept import Acceptor

__all__ = ["KILL_WAIT", "Connections", "stopping_on_signals"]

log = logging.getLogger("greenflow.server")

#: How long killed connections get to unwind at the end of the grace period.
KILL_WAIT: Final = 1.0


class Connections:
    """The connections of one server that are open now, and their limit."""

    __slots__ = ("_drained", "acceptor", "draining", "limit", "live", "settings")

    def __init__(self, settings: Settings, limit: int) -> None:
        self.settings = settings
        self.limit = limit
        self.live: set[Connection] = set()
        self.draining = False  # set once, when a stop begins
        self.acceptor: Acceptor | None = None  # told when room frees up
        self._drained = Event()

    def ended(self, connection: Connection) -> None:
        """Called by each connection as it ends."""
        live = self.live
        live.discard(connection)
        if self.draining:
            if not live:
                self._drained.set()
            return
        acceptor = self.acceptor
        if acceptor is not None and not acceptor.accepting:
            acceptor.update()  # the room this connection made may resume accepting

    def drain(self, grace: float) -> None:
        """End the idle connections, wait up to ``grace`` for the rest, then end them."""
        self.draining = True
        for connection in list(self.live):
            if connection.phase in ENDED_BY_STOP:
                connection.end_if_idle()
        if not self.live:
            self._drained.set()
        try:
            if not self._drained.wait(None if math.isinf(grace) else max(0.0, grace)):
                self._end_remaining()
        except BaseException:
            # The wait was interrupted (a timeout around stop(), a kill): the
            # server is marked stopped, so nothing may be left running.
            self._end_remaining()
            raise

    def _end_remaining(self) -> None:
        """The grace period is over: close what is left and kill its greenlets."""
        remaining = list(self.live)
        log.warning("grace period over: closing %d connection(s) still open", len(remaining))
        for connection in remaining:
            connection.end_now()
        # killall(block=True, timeout=...) raises Timeout when a handler
        # outlives the wait; the stop must still finish its bookkeeping.
        gevent.killall(remaining, block=False)
        gevent.joinall(remaining, timeout=KILL_WAIT)
        survivors = [connection for connection in remaining if not connection.dead]
        if survivors:
            log.error(
                "%d handler(s) still running %.1f s after they were killed (they catch GreenletExit?); "
                "their connections are closed and no longer counted",
                len(survivors),
                KILL_WAIT,
            )
        for connection in remaining:
            if connection in self.live:
                # Killed before it ever ran (its own cleanup never will), or
                # a handler that will not die: nothing more can be done.
                connection.sock.close()
                self.live.discard(connection)


@contextlib.contextmanager
def stopping_on_signals(signals: Iterable[int], on_signal: Callable[[int], None]) -> Iterator[None]:
    """Call ``on_signal(signum)`` in a new greenlet for each of ``signals``, while inside.

    The signals are watched through gevent (so a handler may block), and the
    handlers they had before are put back on leaving: gevent alone would
    leave the default action behind, and a later Ctrl-C would kill the
    process without a ``KeyboardInterrupt``. Only the main thread can handle
    signals; elsewhere this watches nothing.
    """
    wanted = list(dict.fromkeys(signals))
    if not wanted or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = [(signum, signal.getsignal(signum)) for signum in wanted]
    watchers = []
    try:
        for signum in wanted:
            watchers.append(gevent.signal_handler(signum, on_signal, signum))
        yield
    finally:
        for watcher in watchers:
            watcher.cancel()
        for signum, handler in previous:
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
