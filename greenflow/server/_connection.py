"""One connection: the greenlet that serves it, phase by phase.

A :class:`Connection` is made on the accept path for each accepted socket
and started there (at once, or once its first bytes come); everything slow
happens in its own greenlet. It goes
through the phases of :class:`Phase`, always forward::

    ACCEPTED -> [AWAITING_DATA] -> ESTABLISHING -> SERVING <-> IDLE -> [LINGERING] -> CLOSED

- ``AWAITING_DATA`` only with the server's ``first_data_timeout``: the
  client's first bytes (a request, a TLS ClientHello) must come within it.
  The connection waits on the hub, with an I/O watcher and a timer and no
  greenlet stack (:meth:`Connection.begin`), so a silent client costs a
  fraction of a parked greenlet; the greenlet is started when the socket
  becomes readable (bytes, EOF or a reset), when the time runs out, when
  the connection deadline passes, or when a stop begins. Without the
  timeout the greenlet starts at once, as protocols in which the server
  speaks first need.
- ``ESTABLISHING`` is the listener's slow step
  (:meth:`~greenflow.listener.Listener.establish`): the TLS handshake, a
  PROXY header; nothing at all for a plain listener.
- ``SERVING`` while the handler runs; ``IDLE`` while it waits for its next
  request inside :func:`idle`.
- ``LINGERING`` after the handler, when a close could reset the response
  away (:meth:`~greenflow.SocketFlow.close_lingering`).

A stop reads the phase to decide what to do: a connection that is
``AWAITING_DATA``, ``ESTABLISHING`` or ``IDLE`` has no request in progress
and is ended at once (:meth:`Connection.end_if_idle`); one whose greenlet
has not run yet, or that finishes its handshake after the stop began, never
gets to its handler. Only ``SERVING`` connections are waited for.

The per-connection deadline (``connection_deadline``) is a timer in the
connection's greenlet: it interrupts whatever the connection is doing, in
any phase, and the connection is closed.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import gevent
from gevent import Greenlet, get_hub, getcurrent

from ..errors import FlowError
from ..flow import Flow
from ..listener import Listener
from ..sockets import SocketFlow

if TYPE_CHECKING:
    import socket

    from ._stop import Connections

__all__ = ["ENDED_BY_STOP", "Connection", "Handler", "Phase", "Settings", "idle"]

log = logging.getLogger("greenflow.server")

#: What a server runs for each connection: ``handler(flow)``.
Handler = Callable[[Flow], object]

_READ: Final = 1  # libev's EV_READ


class Phase(enum.Enum):
    """Where a connection is in its life; see the module docstring."""

    ACCEPTED = "accepted"
    AWAITING_DATA = "awaiting data"
    ESTABLISHING = "establishing"
    SERVING = "serving"
    IDLE = "idle"
    LINGERING = "lingering"
    CLOSED = "closed"


#: The phases in which a stop ends a connection at once: no request is in
#: progress, so nothing is lost but a wait.
ENDED_BY_STOP: Final = frozenset({Phase.AWAITING_DATA, Phase.ESTABLISHING, Phase.IDLE})


@dataclass(frozen=True, slots=True)
class Settings:
    """What every connection of one server is run with."""

    handler: Handler
    timeout: float | None
    first_data_timeout: float | None
    deadline: float | None


class _Wake(enum.Enum):
    """Why a connection that waited for its first bytes on the hub was started."""

    DATA = "data"  # readable: bytes, or the client's EOF or reset
    TIMEOUT = "timeout"  # the first-data timeout passed
    DEADLINE = "deadline"  # the connection deadline passed while it waited
    STOP = "stop"  # a stop began


if TYPE_CHECKING:
    _GreenletBase = Greenlet[[], None]
else:
    _GreenletBase = Greenlet


class Connection(_GreenletBase):
    """The greenlet that serves one accepted connection.

    With a first-data timeout it is not started on the accept path: until
    the client's first bytes come, it waits on the hub (an I/O watcher and
    a timer, no greenlet stack), and it is started when they come, when the
    time runs out, or when a stop begins. Inside :func:`idle` its phase is
    ``IDLE``, ``SERVING`` again after.
    """

    # No __dict__: thousands of these stay parked at once (idle memory).
    # No spawning stack either (gevent's documented knob): it would always be
    # the hub's accept path, copied frame by frame for every connection.
    spawning_stack_limit = 0
    __slots__ = (
        "accepted_at",
        "flow",
        "listener",
        "peer",
        "phase",
        "pool",
        "sock",
        "timer",
        "waiter",
        "woken",
    )

    def __init__(self, pool: Connections, listener: Listener, sock: socket.socket, peer: object) -> None:
        Greenlet.__init__(self)
        self.pool = pool
        self.listener = listener
        self.sock = sock
        self.peer = peer
        self.phase = Phase.ACCEPTED
        self.flow: Flow | None = None  # the plain flow, then the established one
        self.waiter: Any = None  # the I/O watcher while AWAITING_DATA on the hub
        self.timer: Any = None  # and the timer of the first-data timeout (or the deadline)
        self.woken: _Wake | None = None  # why the wait on the hub ended
        self.accepted_at: float | None = None  # the loop's time of the accept, for a deadline after a wait

    @property
    def handler(self) -> Handler:
        """The handler this connection runs (for tools that label greenlets, such as memtrace)."""
        return self.pool.settings.handler

    # -- on the accept path, in the hub ------------------------------------------

    def begin(self) -> None:
        """Start the greenlet now, or (with a first-data timeout) once the client has sent something."""
        settings = self.pool.settings
        seconds = settings.first_data_timeout
        if seconds is None:
            self.start()
            return
        self.phase = Phase.AWAITING_DATA
        loop = get_hub().loop
        reason = _Wake.TIMEOUT
        if settings.deadline is not None:
            self.accepted_at = loop.now()
            if settings.deadline < seconds:
                seconds, reason = settings.deadline, _Wake.DEADLINE
        watcher = self.waiter = loop.io(self.sock.fileno(), _READ)
        timer = self.timer = loop.timer(seconds)
        watcher.start(self._wake, _Wake.DATA)
        timer.start(self._wake, reason)

    def _wake(self, reason: _Wake) -> None:
        """The wait on the hub is over: start the greenlet, which reads ``woken``."""
        waiter, timer = self.waiter, self.timer
        if waiter is None:
            return
        self.waiter = self.timer = None
        waiter.close()
        timer.close()
        self.woken = reason
        self.start()

    # -- the life of a connection ----------------------------------------------

    def _run(self) -> None:
        settings = self.pool.settings
        deadline = None
        if settings.deadline is not None:
            deadline = self._start_deadline(settings.deadline)
        try:
            if self._first_data_came(settings):
                flow = self._open(settings)
                if flow is not None:
                    if not self.pool.draining:  # until its handler runs, a connection is idle for a stop
                        self._handle(settings.handler, flow)
                    self._end(flow)
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise
            self._deadline_passed(settings.deadline)
        finally:
            if deadline is not None:
                deadline.close()
            self.phase = Phase.CLOSED
            if self.flow is not None:
                self.flow.close()
            else:
                self.sock.close()
            self.pool.ended(self)

    def _start_deadline(self, seconds: float) -> gevent.Timeout:
        """The connection deadline, less the time it waited on the hub for its first bytes."""
        if self.accepted_at is not None:
            seconds = max(0.0, seconds - (get_hub().loop.now() - self.accepted_at))
        deadline = gevent.Timeout(seconds)
        deadline.start()
        return deadline

    def _deadline_passed(self, seconds: float | None) -> None:
        log.info(
            "connection from %s on %s: its deadline of %g s passed; closed",
            self.peer,
            self.listener.url,
            seconds,
        )

    def _first_data_came(self, settings: Settings) -> bool:
        """Whether the connection goes on after its wait on the hub, if it had one (False: it ends)."""
        woken = self.woken
        if woken is None:
            return True  # started on the accept path
        if woken is _Wake.DATA:
            return not self.pool.draining
        if woken is _Wake.TIMEOUT:
            log.info(
                "connection from %s on %s sent nothing in %g s; closed",
                self.peer,
                self.listener.url,
                settings.first_data_timeout,
            )
        elif woken is _Wake.DEADLINE:
            self._deadline_passed(settings.deadline)
        return False

    def _open(self, settings: Settings) -> Flow | None:
        """From the accepted socket to the flow for the handler (None: the connection ends)."""
        listener = self.listener
        try:
            flow: Flow = listener.open_flow(self.sock, settings.timeout)
            self.flow = flow
            if self.pool.draining:
                return flow  # no handshake once the stop began: the caller ends it
            self.phase = Phase.ESTABLISHING
            flow = self.flow = listener.establish(flow)
        except Exception as exc:
            if self.pool.draining:
                log.debug(
                    "connection from %s on %s ended by the stop while opening: %s",
                    self.peer,
                    listener.url,
                    exc,
                )
            else:
                log.info("connection from %s on %s failed to open: %s", self.peer, listener.url, exc)
                log.debug("details of the failed opening", exc_info=True)
            return None
        return flow

    def _handle(self, handler: Handler, flow: Flow) -> None:
        self.phase = Phase.SERVING
        try:
            handler(flow)
        except FlowError:
            log.debug("handler %r ended on a flow error (peer %s)", handler, self.peer, exc_info=True)
        except Exception:
            log.exception("handler %r failed on the connection from %s", handler, self.peer)

    def _end(self, flow: Flow) -> None:
        """Before the close: linger if a plain close could reset the response away.

        Unread bytes from the client (a request body the handler skipped, a
        pipelined request) would make the close send a reset, and so may a
        request that crosses a stop on the wire: then the flow shuts down
        writing and lingers. Otherwise the caller closes it at once.
        """
        base = flow
        while base.underlying is not None:
            base = base.underlying
        if not isinstance(base, SocketFlow) or not (self.pool.draining or base.has_unread_input()):
            return
        self.phase = Phase.LINGERING
        if flow is not base:
            try:
                flow.shutdown("write")  # the layer's own EOF first (TLS: close_notify)
            except FlowError:
                return
        base.close_lingering()

    # -- what a stop does to it ------------------------------------------------

    def end_if_idle(self) -> None:
        """End the connection at once if it has no request in progress.

        ``IDLE``: the handler's pending (or next) read returns EOF.
        ``AWAITING_DATA``: the wait ends. ``ESTABLISHING``: the plain flow
        under the handshake is closed, so the handshake fails at once.
        """
        phase = self.phase
        if phase is Phase.IDLE:
            self.wake_idle()
        elif phase is Phase.AWAITING_DATA:
            self._wake(_Wake.STOP)  # started, it sees the stop and ends
        elif phase is Phase.ESTABLISHING and self.flow is not None:
            self.flow.close()

    def end_now(self) -> None:
        """The grace period is over: close the connection (its greenlet is killed next)."""
        if self.phase is Phase.AWAITING_DATA:
            self.end_if_idle()  # closed as the greenlet unwinds (by the drain, if it never ran)
        elif self.flow is not None:
            self.flow.close()
        else:
            self.sock.close()

    def wake_idle(self) -> None:
        """End an idle wait: the handler's pending (or next) read returns EOF."""
        flow = self.flow
        if flow is None or flow.closed:
            return
        try:
            flow.shutdown("read")
        except Exception as exc:
            log.debug("could not end idle connection from %s: %s", self.peer, exc)


class _IdleMarker:
    """What :func:`idle` returns: marks the current connection, if any, idle inside."""

    __slots__ = ()

    def __enter__(self) -> None:
        current = getcurrent()
        if type(current) is Connection:
            current.phase = Phase.IDLE
            if current.pool.draining:
                current.wake_idle()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        current = getcurrent()
        if type(current) is Connection:
            current.phase = Phase.SERVING


_IDLE: Final = _IdleMarker()


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
    return _IDLE
