"""The :class:`Server`: its settings, its life (start, serve, stop) and what it shows.

The work is done by the parts: the accept loop (``_accept``), each
connection (``_connection``) and the stop's drain (``_stop``). The server
binds the listeners, holds the state, and puts the parts together.
"""

from __future__ import annotations

import enum
import logging
import resource
import signal
import sys
import time
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Final

import gevent
from gevent import getcurrent
from gevent.event import Event

from ..kit import check_timeout
from ..listener import Listener
from ..listeners import _TLS_DEFAULT, _TLSDefault, listen_url
from ._accept import Acceptor
from ._connection import Connection, Handler, Phase, Settings
from ._stop import Connections, stopping_on_signals

#: The phases of a connection accepted but not yet at its handler.
_OPENING: Final = frozenset({Phase.ACCEPTED, Phase.AWAITING_DATA, Phase.ESTABLISHING})

if TYPE_CHECKING:
    from OpenSSL import SSL

__all__ = ["DEFAULT_GRACE", "DEFAULT_STOP_SIGNALS", "Server", "default_max_connections"]

log = logging.getLogger("greenflow.server")

#: The default grace period of :meth:`Server.stop`, in seconds.
DEFAULT_GRACE: Final = 10.0

#: The signals :meth:`Server.serve_forever` turns into a graceful stop.
DEFAULT_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)

#: Descriptors :func:`default_max_connections` leaves for everything but
#: connections (listeners, log files, the hub's own, a handler's files),
#: and the fewest connections it ever gives.
_FD_RESERVE: Final = 64
_FD_FLOOR: Final = 16

#: What :func:`default_max_connections` counts on when the limit is infinite.
_UNLIMITED_FDS: Final = 1 << 20


def default_max_connections() -> int:
    """A connection limit that fits this process's descriptor limit.

    Each connection holds one descriptor (a TLS one too), so the limit is
    the soft ``RLIMIT_NOFILE`` less a reserve of 64 for everything else,
    and at least 16. A server at this limit stops accepting and lets the
    kernel's backlog hold the next clients, instead of running out of
    descriptors (``EMFILE``) and backing off.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = _UNLIMITED_FDS
    return max(_FD_FLOOR, soft - _FD_RESERVE)


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
        *listeners: :class:`~greenflow.Listener` objects (TLS and other
            layers included), which the server owns from then on, or
            ``--bind`` URLs (``"tcp://127.0.0.1:0"``, ``"unix:/run/app.sock"``,
            see :func:`~greenflow.listeners.listen_url`), bound by :meth:`start`.
        max_connections: the most connections open at once (``None``: no
            limit; :func:`default_max_connections` gives one that fits the
            descriptor limit). At the limit the server stops accepting;
            clients wait in the kernel's backlog until a connection ends.
        timeout: each flow's :attr:`~greenflow.Flow.timeout`, which bounds
            every blocking call a handler makes (a client that says nothing
            gets :class:`~greenflow.FlowTimeout` in its handler).
        grace: the default grace period of :meth:`stop`, in seconds.
        tls_context: the TLS server context for ``tls://`` URLs (they become
            :class:`greenflow.tls.TLSListener` objects).
        handshake_timeout: the TLS handshake bound for ``tls://`` URLs
            (default ``greenflow.tls.DEFAULT_HANDSHAKE_TIMEOUT``, 10 s).
        first_data_timeout: seconds a new connection may take to send its
            first bytes (a request, a TLS ClientHello), or ``None`` for no
            bound. One that sends nothing in time is closed, with a log line
            at ``INFO``, before any handshake or handler; while it waits it
            counts as idle for a stop.
        connection_deadline: seconds a connection may live in all, or
            ``None`` for no bound. ``timeout`` bounds each call, so a client
            that trickles a byte now and then keeps its connection forever;
            the deadline ends it whatever it is doing (the handler's pending
            call is interrupted by a ``gevent.Timeout``), with a log line at
            ``INFO``.

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
        handshake_timeout: float | _TLSDefault | None = _TLS_DEFAULT,
        first_data_timeout: float | None = None,
        connection_deadline: float | None = None,
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
        self._grace = grace
        self._tls_context = tls_context
        self._handshake_timeout = handshake_timeout
        settings = Settings(
            handler=handler,
            timeout=check_timeout(timeout),
            first_data_timeout=check_timeout(first_data_timeout),
            deadline=check_timeout(connection_deadline),
        )
        self._connections = Connections(settings, sys.maxsize if max_connections is None else max_connections)
        self._acceptor: Acceptor | None = None
        self._state = _State.NEW
        self._stopping = Event()
        self._stopped = Event()

    def __repr__(self) -> str:
        where = ", ".join(listener.url for listener in self._listeners) or "unbound"
        return f"<Server {self._state.value} {where} active={len(self._connections.live)}>"

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
                    self._listeners.extend(self._listen(item))
            if not self._listeners:
                raise ValueError("no listener to serve on (a systemd: URL found no activated socket)")
        except BaseException:
            self._close_listeners()
            self._state = _State.STOPPED
            self._stopped.set()
            raise
        self._acceptor = self._connections.acceptor = Acceptor(self._listeners, self._connections)
        self._state = _State.SERVING
        self._acceptor.update()
        for listener in self._listeners:
            log.info("listening on %s", listener.url)

    def _listen(self, url: str) -> list[Listener]:
        return listen_url(url, tls_context=self._tls_context, handshake_timeout=self._handshake_timeout)

    def serve_forever(self, stop_signals: Iterable[int] = DEFAULT_STOP_SIGNALS) -> None:
        """Start if needed, then wait until the server has stopped.

        While it waits, each of ``stop_signals`` (SIGTERM and SIGINT by
        default, so ``kill`` and Ctrl-C) begins a graceful :meth:`stop` with
        the server's grace period, and this call returns once the stop is
        complete: a script that ends with ``server.serve_forever()`` exits
        with status 0 and no traceback, after the requests in flight have
        finished. A second signal during the stop changes nothing. The
        signals' earlier handlers are put back on return. Give ``()`` to
        leave signals alone (signals are only watched in the main thread).

        Another greenlet may also call :meth:`stop`. If this wait is
        interrupted (a kill, a ``KeyboardInterrupt`` of a signal not in
        ``stop_signals``), the server is stopped at once, with no grace
        period.
        """
        if self._state is _State.NEW:
            self.start()
        with stopping_on_signals(stop_signals, self._on_stop_signal):
            try:
                self._stopped.wait()
            finally:
                if self._state is _State.SERVING:
                    self.stop(grace=0)

    def _on_stop_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._state is _State.SERVING:
            log.info("%s: stopping gracefully (grace period %g s)", name, self._grace)
            self.stop()
        else:
            log.info("%s: already stopping", name)

    def stop_accepting(self) -> None:
        """Accept no more connections and close the listeners, ending none.

        The first half of :meth:`stop`, for a worker process that hands its
        share of a listening socket back to the others (``greenflow.workers``):
        the connections accepted already go on, and a :meth:`stop` after it
        drains them as usual. Idempotent.
        """
        if self._acceptor is not None:
            self._acceptor.close()
        self._close_listeners()

    def stop(self, grace: float | None = None) -> None:
        """Stop gracefully: refuse new connections, finish requests, end the rest.

        Closes the listeners at once, ends the connections that have no
        request in progress (idle ones, see :func:`idle`; those still in
        their TLS handshake or waiting for their first bytes), lets
        connections that are mid-request finish, and when ``grace`` seconds
        have passed closes what remains and kills its handlers. Returns when
        every connection has ended: within ``grace``, plus up to a second
        for killed handlers to unwind.

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
        self._state = _State.STOPPING
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.close()
        self._close_listeners()
        try:
            self._connections.drain(grace)
        finally:
            self._state = _State.STOPPED
            self._stopped.set()
            log.info(
                "stopped after %.2f s; %d connection(s) left",
                time.monotonic() - started,
                len(self._connections.live),
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

    def _close_listeners(self) -> None:
        for listener in self._listeners:
            listener.close()
        for item in self._pending_listeners:
            if isinstance(item, Listener):
                item.close()

    def _is_own_handler(self) -> bool:
        current = getcurrent()
        return isinstance(current, Connection) and current.pool is self._connections

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
        return len(self._connections.live)

    @property
    def idle_connections(self) -> int:
        """How many of them are waiting for their next request (see :func:`idle`)."""
        return sum(1 for connection in self._connections.live if connection.phase is Phase.IDLE)

    @property
    def opening_connections(self) -> int:
        """How many of them have not reached their handler yet (first bytes, handshake, header)."""
        return sum(1 for connection in self._connections.live if connection.phase in _OPENING)

    @property
    def max_connections(self) -> int | None:
        """The connection limit, or ``None``."""
        limit = self._connections.limit
        return None if limit == sys.maxsize else limit

    @property
    def first_data_timeout(self) -> float | None:
        """Seconds a new connection may take to send its first bytes, or ``None``."""
        return self._connections.settings.first_data_timeout

    @property
    def connection_deadline(self) -> float | None:
        """Seconds a connection may live in all, or ``None``."""
        return self._connections.settings.deadline

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
        return self._acceptor is not None and self._acceptor.accepting
