"""The server loop: accept connections and run a handler on each, in its own greenlet.

Theory of operation
===================

Accepting
---------
Each listener has a libev I/O watcher whose callback runs in the hub and
accepts up to :data:`ACCEPT_BATCH` connections per wake-up, so a burst of
clients costs one loop turn and no greenlet switch. For each socket it makes
a :class:`_Connection` greenlet and starts it; everything slow happens there,
never on the accept path: ``TCP_NODELAY``, making the flow, the TLS
handshake (bounded by the listener's ``handshake_timeout``), the handler.

The server accepts only while three things hold: it is serving (not
stopping), it has fewer than ``max_connections`` connections, and it is not
backing off after an accept error. When one of them stops holding, the
watchers are stopped; the kernel's backlog then holds the next clients,
which are accepted as soon as the condition clears (the connection that ends
and makes room restarts the watchers). Accepting and then dropping would
only turn a wait into an error.

Accept errors
-------------
``ECONNABORTED`` and the network errors Linux reports through ``accept()``
concern one would-be connection only: it is skipped and the loop goes on.
Running out of descriptors or memory (``EMFILE``, ``ENFILE``, ``ENOBUFS``,
``ENOMEM``) is logged and accepting pauses for a delay that starts at
:data:`MIN_BACKOFF` and doubles up to :data:`MAX_BACKOFF`; a timer resumes
accepting by itself, and the first successful accept resets the delay. While
it waits the pending clients stay in the backlog, and connections that end
free the descriptors the next accept needs.

Per connection
--------------
The flow is closed when the handler returns or raises. An exception from a
handler is logged with its traceback on the ``greenflow.server`` logger and
never reaches the server: at ``ERROR`` for a bug (any exception that is not a
:class:`~greenflow.FlowError`), at ``DEBUG`` for a :class:`FlowError` (a
client that reset, a flow ``timeout`` that expired: the everyday life of a
server, and a log line per slowloris client would be a denial of service of
its own). A TLS handshake that fails is logged at ``INFO`` and closed.

Graceful stop
=============
:meth:`Server.stop` (grace seconds):

1. Stops accepting at once and closes the listeners, so new connections are
   refused (a Unix socket's file is removed).
2. Ends *idle* connections at once: their handler's pending read returns
   ``b""``, exactly as if the client had closed, so a plain request loop
   returns by its usual path. After the handler returns, the server shuts
   down writing (the client sees EOF after the last response) and reads
   and discards for a moment before closing (a "lingering close"), so that
   a request that crossed the stop on the wire does not make the kernel
   answer with a reset that could destroy the last response in flight.
3. Lets handlers that are *mid-request* run: they finish their request,
   write the response, and when they next wait for a request their read
   returns ``b""`` at once.
4. When the grace period ends, closes every flow that remains (a greenlet
   blocked in it gets :class:`~greenflow.ClosedError`) and kills the
   handlers still running.

``stop`` returns when every connection has ended, which is within the grace
period plus the short moment killed greenlets get to unwind.

How the server tells idle from mid-request: the handler says so. Only the
protocol knows where one request ends, so the handler wraps the read that
waits for the *next* request in :func:`idle`::

    def handler(flow):
        while True:
            with greenflow.idle():   # the server may end the connection here
                request = flow.read()
            if not request:
                return               # the client closed, or the server is stopping
            flow.write(answer(request))

Guessing from the traffic ("blocked in a read, and no byte read since the
last write completed") is wrong for every protocol that reads after writing
inside one request (an SMTP ``354`` before the message body, HTTP's
``100 Continue``, a multi-step authentication): stopping would cut those
requests off. Guessing would also need a wrapper around every flow call;
the marker costs two attribute writes per request and nothing per call, and
the handler gets the real flow. A handler that never uses :func:`idle` is
treated as always mid-request: it keeps its connection until it returns or
the grace period ends, which is safe, only slower. Handlers that would
rather watch for the stop themselves can wait on :attr:`Server.stopping`,
an event set when the stop begins.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import logging
import math
import socket
import struct
import sys
import termios
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import gevent
from gevent import Greenlet, getcurrent
from gevent.event import Event

from .errors import FlowError
from .flow import Flow
from .kit import DirectionState, check_timeout
from .listeners import DEFAULT_HANDSHAKE_TIMEOUT, Listener, listen_url
from .sockets import SocketFlow

if TYPE_CHECKING:
    from OpenSSL import SSL

__all__ = [
    "ACCEPT_BATCH",
    "DEFAULT_GRACE",
    "MAX_BACKOFF",
    "MIN_BACKOFF",
    "Handler",
    "Server",
    "idle",
]

log = logging.getLogger("greenflow.server")

#: What a server runs for each connection: ``handler(flow)``.
Handler = Callable[[Flow], object]

#: Connections accepted per wake-up of a listener, at most: large enough to
#: absorb a burst in one loop turn, small enough that one busy listener does
#: not starve the others and the running handlers.
ACCEPT_BATCH: Final = 64

#: The default grace period of :meth:`Server.stop`, in seconds.
DEFAULT_GRACE: Final = 10.0

#: The first and the longest pause after an accept error, in seconds.
MIN_BACKOFF: Final = 0.02
MAX_BACKOFF: Final = 1.0

#: How long an idle connection ended by a stop may linger, reading and
#: discarding, while the client takes in our FIN.
_LINGER: Final = 1.0

#: How long killed handlers get to unwind at the end of the grace period.
_KILL_WAIT: Final = 1.0

_LINGER_READ: Final = 65536

#: How often a lingering close looks at the send queue, in seconds.
_LINGER_POLL: Final = 0.01

#: Errors about one would-be connection: skip it, accept the next.
_SKIPPED_ERRORS: Final = frozenset(
    {
        errno.ECONNABORTED,
        errno.ECONNRESET,
        errno.EPROTO,
        errno.EPERM,
        errno.EINTR,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.ENOPROTOOPT,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENONET,
        errno.EOPNOTSUPP,
        errno.ETIMEDOUT,
    }
)

#: Errors that mean the listening socket itself is gone.
_FATAL_ERRORS: Final = frozenset({errno.EBADF, errno.EINVAL, errno.ENOTSOCK})


_AT_EOF: Final = frozenset({DirectionState.EOF, DirectionState.SHUT})


def _unread_input(flow: Flow) -> bool:
    """Whether the client sent bytes that nobody read (a close would reset).

    One non-blocking peek, and none at all when the handler read to EOF.
    """
    while flow.underlying is not None:
        flow = flow.underlying
    if not isinstance(flow, SocketFlow) or flow.closed or flow._reader.state in _AT_EOF:
        return False
    try:
        return bool(flow.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing there (EAGAIN), or the connection is gone
        return False


def _unsent_bytes(sock: socket.socket) -> int:
    """Bytes in the socket's send queue not yet acknowledged (-1: unknown)."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, AttributeError):
        return -1
    count: int = struct.unpack("i", raw)[0]
    return count


class _State(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Server:
    """Accept connections on listeners and run ``handler(flow)`` for each.

    Args:
        handler: called as ``handler(flow)`` in a new greenlet per
            connection. The server closes the flow when it returns or raises;
            an exception is logged and the server goes on.
        *listeners: :class:`~greenflow.listeners.Listener` objects, which the
            server owns from then on, or ``--bind`` URLs
            (``"tcp://127.0.0.1:0"``, ``"unix:/run/app.sock"``, see
            :func:`~greenflow.listeners.listen_url`), bound by :meth:`start`.
        max_connections: the most connections open at once (``None``: no
            limit). At the limit the server stops accepting; clients wait in
            the kernel's backlog until a connection ends.
        timeout: each flow's :attr:`~greenflow.Flow.timeout`, which bounds
            every blocking call a handler makes (a client that says nothing
            gets :class:`~greenflow.FlowTimeout` in its handler).
        grace: the default grace period of :meth:`stop`, in seconds.
        tls_context: the TLS server context for ``tls://`` URLs.
        handshake_timeout: the TLS handshake bound for ``tls://`` URLs.

    ``with Server(...) as server:`` starts it and stops it on leaving
    (gracefully, with the default grace period).
    """

    def __init__(
        self,
        handler: Handler,
        *listeners: Listener | str,
        max_connections: int | None = None,
        timeout: float | None = None,
        grace: float = DEFAULT_GRACE,
        tls_context: SSL.Context | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        if not listeners:
            raise ValueError("a server needs at least one listener or address")
        for item in listeners:
            if not isinstance(item, Listener | str):
                raise TypeError(f"expected a Listener or an address URL, not {type(item).__name__}")
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self._handler = handler
        self._pending_listeners = listeners
        self._listeners: list[Listener] = []
        self._max = sys.maxsize if max_connections is None else max_connections
        self._timeout = check_timeout(timeout)
        self._grace = grace
        self._tls_context = tls_context
        self._handshake_timeout = handshake_timeout
        self._state = _State.NEW
        self._connections: set[_Connection] = set()
        self._watchers: list[Any] = []
        self._accepting = False
        self._backoff = MIN_BACKOFF
        self._backoff_timer: Any = None
        self._stopping = Event()
        self._drained = Event()
        self._stopped = Event()

    def __repr__(self) -> str:
        where = ", ".join(listener.url for listener in self._listeners) or "unbound"
        return f"<Server {self._state.value} {where} active={len(self._connections)}>"

    # -- running ---------------------------------------------------------------

    def start(self) -> None:
        """Bind the address URLs, if any, and start accepting.

        Returns at once; the server runs in the background of the gevent hub.

        Raises:
            OSError: an address could not be bound (the listeners made so far
                are closed again).
            RuntimeError: the server was already started.
        """
        if self._state is not _State.NEW:
            raise RuntimeError(f"the server is {self._state.value}; a server starts only once")
        try:
            for item in self._pending_listeners:
                if isinstance(item, Listener):
                    self._listeners.append(item)
                else:
                    self._listeners.extend(
                        listen_url(
                            item, tls_context=self._tls_context, handshake_timeout=self._handshake_timeout
                        )
                    )
            if not self._listeners:
                raise ValueError("no listener to serve on (a systemd: URL found no activated socket)")
        except BaseException:
            self._close_listeners(also_pending=True)
            self._state = _State.STOPPED
            self._stopped.set()
            raise
        loop = gevent.get_hub().loop
        self._watchers = [loop.io(listener.fileno(), 1) for listener in self._listeners]
        self._state = _State.SERVING
        self._update_accepting()
        for listener in self._listeners:
            log.info("listening on %s", listener.url)

    def serve_forever(self) -> None:
        """Start if needed, then wait until the server has stopped.

        Another greenlet (or a signal handler) calls :meth:`stop`. If this
        wait is interrupted (``KeyboardInterrupt``, a kill), the server is
        stopped at once, with no grace period.
        """
        if self._state is _State.NEW:
            self.start()
        try:
            self._stopped.wait()
        finally:
            if self._state is _State.SERVING:
                self.stop(grace=0)

    def stop(self, grace: float | None = None) -> None:
        """Stop gracefully: refuse new connections, finish requests, end the rest.

        Closes the listeners at once, ends idle connections (see
        :func:`idle`), lets connections that are mid-request finish, and when
        ``grace`` seconds have passed closes what remains and kills its
        handlers. Returns when every connection has ended: within ``grace``,
        plus up to a second for killed handlers to unwind.

        Args:
            grace: seconds to wait for handlers to finish; ``None`` means
                the server's ``grace`` setting, ``math.inf`` no limit, 0 no
                wait at all.

        Idempotent. A second caller waits until the stop is complete. Called
        from a handler of this server (which cannot wait for itself), it
        begins the stop in a new greenlet and returns at once.
        """
        if grace is None:
            grace = self._grace
        if self._state is _State.STOPPED:
            return
        if self._state is _State.STOPPING:
            if not self._is_own_handler():
                self._stopped.wait()
            return
        if self._is_own_handler():
            gevent.spawn(self.stop, grace)
            gevent.sleep(0)  # let the stop begin: listeners closed, idle ones woken
            return
        started = time.monotonic()
        deadline = started + grace
        self._state = _State.STOPPING
        self._stopping.set()
        self._stop_accepting()
        self._close_listeners(also_pending=True)
        for connection in list(self._connections):
            if connection.idle:
                connection.wake_idle()
        if not self._connections:
            self._drained.set()
        try:
            remaining = None if math.isinf(grace) else max(0.0, deadline - time.monotonic())
            if not self._drained.wait(remaining):
                self._end_remaining()
        except BaseException:
            # The wait was interrupted (a timeout around stop(), a kill): the
            # server is marked stopped below, so nothing may be left running.
            self._end_remaining()
            raise
        finally:
            self._state = _State.STOPPED
            self._stopped.set()
            log.info(
                "stopped after %.2f s; %d connection(s) left",
                time.monotonic() - started,
                len(self._connections),
            )

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what can be seen from outside -----------------------------------------

    @property
    def listeners(self) -> tuple[Listener, ...]:
        """The listeners, once :meth:`start` has bound them."""
        return tuple(self._listeners)

    @property
    def addresses(self) -> list[object]:
        """The bound addresses, in listener order (the real port for port 0)."""
        return [listener.address for listener in self._listeners]

    @property
    def urls(self) -> list[str]:
        """The bound addresses as URLs (``tcp://127.0.0.1:8000``)."""
        return [listener.url for listener in self._listeners]

    @property
    def active_connections(self) -> int:
        """How many connections are open now (handshaking, handled, closing)."""
        return len(self._connections)

    @property
    def idle_connections(self) -> int:
        """How many of them are waiting for their next request (see :func:`idle`)."""
        return sum(1 for connection in self._connections if connection.idle)

    @property
    def max_connections(self) -> int | None:
        """The connection limit, or ``None``."""
        return None if self._max == sys.maxsize else self._max

    @property
    def stopping(self) -> Event:
        """An event set when :meth:`stop` begins; handlers may wait on it."""
        return self._stopping

    @property
    def serving(self) -> bool:
        """Whether the server has started and has not begun to stop."""
        return self._state is _State.SERVING

    @property
    def accepting(self) -> bool:
        """Whether the server is accepting right now (not full, not backing off)."""
        return self._accepting

    # -- accepting (runs in the hub) -------------------------------------------

    def _update_accepting(self) -> None:
        wanted = (
            self._state is _State.SERVING
            and self._backoff_timer is None
            and len(self._connections) < self._max
        )
        if wanted == self._accepting:
            return
        self._accepting = wanted
        if wanted:
            for watcher, listener in zip(self._watchers, self._listeners, strict=True):
                if not listener.closed:
                    watcher.start(self._on_acceptable, listener)
        else:
            for watcher in self._watchers:
                watcher.stop()

    def _on_acceptable(self, listener: Listener) -> None:
        try:
            self._accept_batch(listener)
        except Exception:  # pragma: no cover - defensive: the hub must never see it
            log.exception("unexpected error while accepting on %s", listener.url)

    def _accept_batch(self, listener: Listener) -> None:
        accept = listener.socket.accept
        connections = self._connections
        for _ in range(ACCEPT_BATCH):
            if len(connections) >= self._max:
                self._update_accepting()
                return
            try:
                sock, address = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _SKIPPED_ERRORS:
                    log.debug("accept on %s: skipped a connection: %s", listener.url, exc)
                    continue
                self._accept_failed(listener, exc)
                return
            self._backoff = MIN_BACKOFF  # the first successful accept resets the delay
            connection = _Connection(self, listener, sock, address)
            connections.add(connection)
            connection.start()

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
        self._backoff_timer = timer
        self._update_accepting()
        timer.start(self._resume_after_backoff)

    def _resume_after_backoff(self) -> None:
        if self._backoff_timer is not None:
            self._backoff_timer.close()
            self._backoff_timer = None
        self._update_accepting()

    def _stop_accepting(self) -> None:
        self._update_accepting()  # not SERVING any more: stops the watchers
        if self._backoff_timer is not None:
            self._backoff_timer.close()
            self._backoff_timer = None
        for watcher in self._watchers:
            watcher.close()
        self._watchers = []

    def _close_listeners(self, *, also_pending: bool) -> None:
        for listener in self._listeners:
            listener.close()
        if also_pending:
            for item in self._pending_listeners:
                if isinstance(item, Listener):
                    item.close()

    # -- connections (run in their greenlets) ----------------------------------

    def _serve(self, connection: _Connection) -> None:
        listener = connection.listener
        flow: Flow | None = None
        try:
            try:
                flow = connection.flow = listener.open_flow(connection.sock, self._timeout)
                if listener.tls_context is not None:
                    flow = connection.flow = listener.secure(flow)
            except Exception as exc:
                log.info("connection from %s on %s failed to open: %s", connection.peer, listener.url, exc)
                log.debug("details of the failed opening", exc_info=True)
                return
            try:
                self._handler(flow)
            except FlowError:
                log.debug(
                    "handler %r ended on a flow error (peer %s)",
                    self._handler,
                    connection.peer,
                    exc_info=True,
                )
            except Exception:
                log.exception("handler %r failed on the connection from %s", self._handler, connection.peer)
            if self._state is not _State.SERVING or _unread_input(flow):
                # Unread bytes from the client (a request body the handler
                # skipped, a pipelined request, a request that crossed a
                # stop) would make close() send a reset that can destroy the
                # end of the response: linger first. Otherwise close at once.
                self._linger(flow)
        finally:
            if flow is not None:
                flow.close()
            elif connection.flow is not None:
                connection.flow.close()
            else:
                connection.sock.close()
            self._connection_ended(connection)

    def _connection_ended(self, connection: _Connection) -> None:
        connections = self._connections
        connections.discard(connection)
        if not self._accepting:
            if self._state is _State.SERVING:
                self._update_accepting()
            elif not connections:
                self._drained.set()

    def _linger(self, flow: Flow) -> None:
        """Send our EOF, then wait until the client has our data, before the close.

        Closing a TCP socket that has unread data (a request that crossed the
        stop on the wire) makes the kernel send a reset, and a reset throws
        away whatever is still in our send queue: the last response, if the
        client has not acknowledged it yet. So the server reads and discards
        until the client's EOF, or until the send queue is empty (the client's
        kernel has every byte, and a reset no longer loses any), or at most
        :data:`_LINGER` seconds.
        """
        base = flow
        while base.underlying is not None:
            base = base.underlying
        try:
            if not flow.closed:
                flow.shutdown("write")
        except Exception:
            return
        if not isinstance(base, SocketFlow) or base.closed:
            return
        sock = base.socket
        hub = gevent.get_hub()
        watcher = hub.loop.io(sock.fileno(), 1)
        deadline = time.monotonic() + _LINGER
        try:
            while True:
                try:
                    if not sock.recv(_LINGER_READ):
                        return  # the client's EOF
                    continue
                except BlockingIOError:
                    pass
                except InterruptedError:
                    continue
                except OSError:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0 or _unsent_bytes(sock) == 0:
                    return
                timer = gevent.Timeout(min(remaining, _LINGER_POLL))
                timer.start()
                try:
                    hub.wait(watcher)
                except gevent.Timeout as exc:
                    if exc is not timer:
                        raise
                finally:
                    timer.close()
        finally:
            watcher.close()

    def _end_remaining(self) -> None:
        """The grace period is over: close what is left and kill its handlers."""
        remaining = list(self._connections)
        log.warning("grace period over: closing %d connection(s) still open", len(remaining))
        for connection in remaining:
            if connection.flow is not None:
                connection.flow.close()
            else:
                connection.sock.close()
        # killall(block=True, timeout=...) raises Timeout when a handler
        # outlives the wait; the stop must still finish its bookkeeping.
        gevent.killall(remaining, block=False)
        gevent.joinall(remaining, timeout=_KILL_WAIT)
        survivors = [connection for connection in remaining if not connection.dead]
        if survivors:
            log.error(
                "%d handler(s) still running %.1f s after they were killed (they catch GreenletExit?); "
                "their connections are closed and no longer counted",
                len(survivors),
                _KILL_WAIT,
            )
        for connection in remaining:
            if connection in self._connections:
                # Killed before it ever ran (its own cleanup never will), or
                # a handler that will not die: nothing more can be done.
                connection.sock.close()
                self._connections.discard(connection)

    def _is_own_handler(self) -> bool:
        current = getcurrent()
        return isinstance(current, _Connection) and current.server is self


if TYPE_CHECKING:
    _GreenletBase = Greenlet[[], None]
else:
    _GreenletBase = Greenlet


class _Connection(_GreenletBase):
    """The greenlet that serves one accepted connection."""

    # No __dict__: thousands of these stay parked at once (idle memory).
    __slots__ = ("flow", "listener", "marker", "peer", "server", "sock")

    def __init__(self, server: Server, listener: Listener, sock: socket.socket, peer: object) -> None:
        Greenlet.__init__(self)
        self.server = server
        self.listener = listener
        self.sock = sock
        self.peer = peer
        self.flow: Flow | None = None
        self.marker: _IdleMarker | None = None  # made on the first idle()

    @property
    def idle(self) -> bool:
        return self.marker is not None and self.marker.idle

    def _run(self) -> None:
        self.server._serve(self)

    def wake_idle(self) -> None:
        """End the idle read: the pending (or next) read returns EOF."""
        flow = self.flow
        if flow is None or flow.closed:
            return
        try:
            flow.shutdown("read")
        except Exception as exc:
            log.debug("could not end idle connection from %s: %s", self.peer, exc)


class _IdleMarker:
    """What :func:`idle` returns in a connection greenlet."""

    __slots__ = ("connection", "idle")

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection
        self.idle = False

    def __enter__(self) -> None:
        self.idle = True
        if self.connection.server._state is not _State.SERVING:
            self.connection.wake_idle()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.idle = False


class _NotServed:
    """:func:`idle` outside a connection greenlet: marks nothing."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None


_NOT_SERVED: Final = _NotServed()


def idle() -> AbstractContextManager[None]:
    """Mark the handler as waiting for its client's next request.

    Use it around the read that waits for a new request::

        with greenflow.idle():
            request = flow.read()

    Inside the block the connection counts as idle: if the server stops,
    the read returns ``b""`` (EOF) at once, and if the server is already
    stopping when the block is entered, the read returns ``b""`` without
    waiting. Outside it the connection counts as mid-request, and a stop
    waits for it (up to the grace period). Called outside a server's
    connection greenlet (a test, a helper greenlet the handler spawned) it
    does nothing.

    It costs two attribute writes: use it on every request.
    """
    current = getcurrent()
    if type(current) is _Connection:
        marker = current.marker
        if marker is None:
            marker = current.marker = _IdleMarker(current)
        return marker
    return _NOT_SERVED
