"""The accept loop of a server, and its back-off after accept errors.

Each listener has a libev I/O watcher whose callback runs in the hub and
accepts up to :data:`ACCEPT_BATCH` connections per wake-up, so a burst of
clients costs one loop turn and no greenlet switch. For each socket it makes
a :class:`~greenflow.server._connection.Connection` greenlet and begins it
(started at once, or with a first-data timeout once the client has sent
something); everything slow happens there, never on the accept path.

The :class:`Acceptor` accepts only while three things hold: it is open (the
server is serving), the server has fewer connections than its limit, and it
is not backing off after an accept error. When one of them stops holding,
the watchers are stopped; the kernel's backlog then holds the next clients,
which are accepted as soon as the condition clears (the connection that ends
and makes room calls :meth:`Acceptor.update`). Accepting and then dropping
would only turn a wait into an error.

Accept errors
-------------
The errors in :data:`~greenflow.listener.SKIPPED_ACCEPT_ERRORS` concern one
would-be connection only: it is skipped and the loop goes on. Running out of
descriptors or memory (``EMFILE``, ``ENFILE``, ``ENOBUFS``, ``ENOMEM``) is
logged and accepting pauses for a delay that starts at :data:`MIN_BACKOFF`
and doubles up to :data:`MAX_BACKOFF`; a timer resumes accepting by itself,
and the first successful accept resets the delay. While it waits the pending
clients stay in the backlog, and connections that end free the descriptors
the next accept needs. An error that means the listening socket itself is
gone closes that listener.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Sequence
from typing import Any, Final

import gevent

from ..listener import SKIPPED_ACCEPT_ERRORS, Listener
from ._connection import Connection
from ._stop import Connections

__all__ = ["ACCEPT_BATCH", "MAX_BACKOFF", "MIN_BACKOFF", "Acceptor"]

log = logging.getLogger("greenflow.server")

#: Connections accepted per wake-up of a listener, at most: large enough to
#: absorb a burst in one loop turn, small enough that one busy listener does
#: not starve the others and the running handlers.
ACCEPT_BATCH: Final = 64

#: The first and the longest pause after an accept error, in seconds.
MIN_BACKOFF: Final = 0.02
MAX_BACKOFF: Final = 1.0

#: Errors that mean the listening socket itself is gone.
_FATAL_ERRORS: Final = frozenset({errno.EBADF, errno.EINVAL, errno.ENOTSOCK})

_READ: Final = 1  # libev's EV_READ


class Acceptor:
    """Accepts on a server's listeners into its :class:`Connections`, in the hub."""

    __slots__ = ("_backoff", "_connections", "_listeners", "_open", "_timer", "_watchers", "accepting")

    def __init__(self, listeners: Sequence[Listener], connections: Connections) -> None:
        self._listeners = listeners
        self._connections = connections
        loop = gevent.get_hub().loop
        self._watchers = [loop.io(listener.fileno(), _READ) for listener in listeners]
        self._open = True
        self._backoff = MIN_BACKOFF
        self._timer: Any = None
        #: Whether the watchers are running now (not full, not backing off).
        self.accepting = False

    def update(self) -> None:
        """Start or stop the watchers as the three conditions now say."""
        connections = self._connections
        wanted = self._open and self._timer is None and len(connections.live) < connections.limit
        if wanted == self.accepting:
            return
        self.accepting = wanted
        if wanted:
            for watcher, listener in zip(self._watchers, self._listeners, strict=True):
                if not listener.closed:
                    watcher.start(self._on_acceptable, listener)
        else:
            for watcher in self._watchers:
                watcher.stop()

    def close(self) -> None:
        """Stop accepting for good (the listeners are the server's to close)."""
        self._open = False
        self.update()
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        for watcher in self._watchers:
            watcher.close()
        self._watchers = []

    # -- in the hub ------------------------------------------------------------

    def _on_acceptable(self, listener: Listener) -> None:
        try:
            self._accept_batch(listener)
        except Exception:  # pragma: no cover - defensive: the hub must never see it
            log.exception("unexpected error while accepting on %s", listener.url)

    def _accept_batch(self, listener: Listener) -> None:
        # The socket module's accept() wraps the system call in two enum
        # conversions and two timeout look-ups per connection. For the stdlib
        # socket class (which the listen_* functions always give) the loop
        # calls its _accept(), the system call, and makes the new socket with
        # the listener's family, type and protocol, as accept() would.
        listening = listener.socket
        raw = type(listening) is socket.socket
        accept: Any = listening._accept if raw else listening.accept  # type: ignore[attr-defined]
        family, kind, proto = int(listening.family), int(listening.type), listening.proto
        connections = self._connections
        live = connections.live
        limit = connections.limit
        for _ in range(ACCEPT_BATCH):
            if len(live) >= limit:
                self.update()
                return
            try:
                accepted, address = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in SKIPPED_ACCEPT_ERRORS:
                    log.debug("accept on %s: skipped a connection: %s", listener.url, exc)
                    continue
                self._accept_failed(listener, exc)
                return
            self._backoff = MIN_BACKOFF  # the first successful accept resets the delay
            sock = socket.socket(family, kind, proto, accepted) if raw else accepted
            connection = Connection(connections, listener, sock, address)
            live.add(connection)
            connection.begin()

    def _accept_failed(self, listener: Listener, exc: OSError) -> None:
        if exc.errno in _FATAL_ERRORS:
            log.error("accept on %s failed (%s); this listener is closed", listener.url, exc)
            index = self._listeners.index(listener)
            self._watchers[index].stop()
            listener.close()
            return
        delay = self._backoff
        self._backoff = min(MAX_BACKOFF, delay * 2)
        log.error("accept on %s failed (%s); pausing accepting for %.2f s", listener.url, exc, delay)
        timer = gevent.get_hub().loop.timer(delay)
        self._timer = timer
        self.update()
        timer.start(self._resume_after_backoff)

    def _resume_after_backoff(self) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        self.update()
