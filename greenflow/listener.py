"""The :class:`Listener` and the :class:`ListenerLayer` over it.

A :class:`Listener` owns one listening stream socket and turns the sockets
it accepts into flows, in two steps. :meth:`Listener.open_flow` is cheap (a
socket option and an object) and is all a socket listener does.
:meth:`Listener.establish` is the slow part, which the server runs in the
connection's own greenlet and never on the accept path: nothing for a
socket listener; the TLS handshake for a :class:`greenflow.tls.TLSListener`.

That listener is a :class:`ListenerLayer`: it wraps any listener the way
``greenflow.tls.server`` wraps any flow, delegates the socket and all about
it to the inner listener, and adds its own step after the inner one's. So
the socket listener knows nothing of TLS, and further layers (a PROXY
protocol header) stack the same way.

A blocking script needs no server: :meth:`Listener.accept` waits on the hub
for the next client and returns its flow, and iterating over a listener
yields one flow per client. The functions that make listeners are in
:mod:`greenflow.listeners`.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from gevent import get_hub

from .addresses import url_for
from .errors import ClosedError, FlowError
from .flow import Flow
from .kit import check_timeout, start_timer
from .sockets import SocketFlow

if TYPE_CHECKING:
    from OpenSSL import SSL

__all__ = ["SKIPPED_ACCEPT_ERRORS", "Listener", "ListenerLayer"]

log = logging.getLogger("greenflow.listeners")

_TCP_FAMILIES: Final = (socket.AF_INET, socket.AF_INET6)

#: The socket type, named apart from the ``socket`` properties below.
_Socket: TypeAlias = socket.socket

_READ: Final = 1  # libev's EV_READ

#: Errors ``accept()`` reports about one would-be connection (Linux passes
#: some network errors of the new connection through it): skip it, accept
#: the next.
SKIPPED_ACCEPT_ERRORS: Final = frozenset(
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


class _ListenerClosed(Exception):
    """Thrown into a greenlet waiting in :meth:`Listener.accept` when the listener closes."""


class Listener:
    """One listening stream socket, owned, and how to make flows from it.

    Made by the ``listen_*`` functions; hand it to :class:`greenflow.Server`,
    which then owns it and closes it when it stops, or call :meth:`accept`
    (or iterate over it) in a blocking script. A listener may also be closed
    on its own with :meth:`close`. Its :attr:`socket`, :attr:`address` and
    :attr:`name` are read-only.
    """

    __slots__ = ("_address", "_closed", "_is_tcp", "_name", "_socket", "_unlink", "_waiters")

    def __init__(
        self,
        sock: _Socket,
        *,
        address: object = None,
        name: str | None = None,
        unlink: tuple[str, int, int] | None = None,
    ) -> None:
        """Take ownership of a listening socket; prefer :func:`listen_socket`."""
        sock.setblocking(False)
        self._socket = sock
        self._address = sock.getsockname() if address is None else address
        self._name = name
        self._is_tcp = sock.family in _TCP_FAMILIES
        self._unlink = unlink  # (path, st_dev, st_ino) of a socket file we made
        self._closed = False
        self._waiters: set[Any] = set()  # the watchers of greenlets in accept()

    @property
    def socket(self) -> _Socket:
        """The listening socket (non-blocking).

        Read options from it; do not accept from it while a server uses it.
        """
        return self._socket

    @property
    def address(self) -> object:
        """The bound address.

        ``(host, port)`` (IPv6: a 4-tuple) for TCP, with the real port when
        port 0 was asked; the path (``str``) for a Unix socket, starting with
        NUL in the abstract namespace.
        """
        return self._address

    @property
    def name(self) -> str | None:
        """A label for logs (the ``LISTEN_FDNAMES`` name for systemd), or ``None``."""
        return self._name

    @property
    def tls_context(self) -> SSL.Context | None:
        """The TLS server context: ``None`` for a socket listener (see ``greenflow.tls.TLSListener``)."""
        return None

    @property
    def handshake_timeout(self) -> float | None:
        """``greenflow.tls.DEFAULT_HANDSHAKE_TIMEOUT`` here (reading it loads the TLS package)."""
        from .tls import DEFAULT_HANDSHAKE_TIMEOUT  # noqa: PLC0415 - a plain server never loads pyOpenSSL

        return DEFAULT_HANDSHAKE_TIMEOUT

    @property
    def url(self) -> str:
        """The listener's address as a ``--bind`` URL (``tcp://127.0.0.1:8000``)."""
        return url_for(self._address)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def fileno(self) -> int:
        """The listening descriptor (-1 once closed)."""
        return self._socket.fileno()

    def close(self) -> None:
        """Close the socket, and remove its file if this listener made it.

        The file is removed only if the path still names the socket this
        listener bound (same device and inode): a newer server that has
        replaced it in the meantime keeps its socket. A greenlet waiting in
        :meth:`accept` gets :class:`~greenflow.ClosedError`. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        if self._waiters:
            # The descriptor is closed only once the watchers on it are.
            waiters, self._waiters = list(self._waiters), set()
            get_hub().cancel_waits_close_and_then(waiters, _ListenerClosed, self._socket.close)
        else:
            self._socket.close()
        if self._unlink is not None:
            path, device, inode = self._unlink
            try:
                info = os.lstat(path)
                if (info.st_dev, info.st_ino) == (device, inode):
                    os.unlink(path)
            except OSError:
                pass

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""  # the property: a layer answers for its inner listener
        return f"<{type(self).__name__} {self.url}{state}>"

    # -- making flows ------------------------------------------------------------

    def open_flow(self, sock: _Socket, timeout: float | None) -> SocketFlow:
        """Wrap a socket accepted from this listener in a plain flow.

        Sets ``TCP_NODELAY`` on TCP sockets: flows write whole messages, so
        Nagle's algorithm only adds latency; a Unix socket file's flows
        report its final path as their ``local_address``. Cheap; the slow per-connection
        work is :meth:`establish`'s, so that the server can see the plain
        flow (and close it) while that runs.
        """
        if self._is_tcp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return SocketFlow(sock, timeout=timeout)
        # A Unix socket bound under a temporary name knows only that name.
        path = self._unlink[0] if self._unlink is not None else None
        return SocketFlow(sock, timeout=timeout, local_address=path)

    def establish(self, flow: Flow) -> Flow:
        """Make the flow a handler gets from the one :meth:`open_flow` made.

        Runs in the connection's own greenlet and may wait: a layer's
        handshake or header. A socket listener returns ``flow`` itself; a
        :class:`ListenerLayer` runs its inner listener's step, then its own.
        On failure it raises a :class:`~greenflow.FlowError` and ``flow`` is
        closed.
        """
        return flow

    def secure(self, flow: Flow) -> Flow:
        """Deprecated: the old name of :meth:`establish`."""
        return self.establish(flow)

    # -- blocking scripts --------------------------------------------------------

    def accept(self, timeout: float | None = None, *, flow_timeout: float | None = None) -> Flow:
        """Wait for the next client and return its flow, ready to use.

        Waits on the gevent hub (other greenlets run meanwhile), then runs
        :meth:`open_flow` and :meth:`establish`, so a TLS listener returns a
        flow whose handshake is done (bounded by its ``handshake_timeout``).
        For scripts and tests; a server should use :class:`greenflow.Server`,
        which runs each slow step in the connection's own greenlet. Do not
        call it on a listener a server uses.

        Args:
            timeout: seconds to wait for a client (``None``: no limit).
            flow_timeout: the new flow's :attr:`~greenflow.Flow.timeout`.

        Raises:
            FlowTimeout: no client within ``timeout``.
            ClosedError: the listener is closed, or was closed meanwhile.
            FlowError: what :meth:`establish` raises (a failed handshake).
            OSError: accepting failed for want of resources (``EMFILE``...).
                Errors that concern one would-be client only are skipped.
        """
        check_timeout(flow_timeout)
        sock = self._next_socket(check_timeout(timeout))
        try:
            flow = self.open_flow(sock, flow_timeout)
        except BaseException:
            sock.close()
            raise
        try:
            return self.establish(flow)
        except BaseException:
            flow.close()
            raise

    def __iter__(self) -> Iterator[Flow]:
        """Yield the flow of each client as it comes, until the listener is closed.

        ``for flow in listener:`` is :meth:`accept` in a loop, except that a
        client whose :meth:`establish` fails (a bad handshake) is logged at
        ``INFO`` on the ``greenflow.listeners`` logger and skipped.
        """
        while not self.closed:
            try:
                flow = self.accept()
            except FlowError as exc:
                if self.closed:
                    return
                log.info("a client of %s failed to connect: %s", self.url, exc)
                continue
            yield flow

    def _next_socket(self, timeout: float | None) -> _Socket:
        """Accept one socket, waiting on the hub; a layer asks its inner listener."""
        timer = start_timer(timeout, "accept", setting="the timeout") if timeout is not None else None
        watcher = None
        try:
            while True:
                if self._closed:
                    raise ClosedError("cannot accept: the listener is closed")
                try:
                    return self._socket.accept()[0]
                except BlockingIOError:
                    pass
                except OSError as exc:
                    if self._closed:
                        raise ClosedError("cannot accept: the listener is closed") from exc
                    if exc.errno in SKIPPED_ACCEPT_ERRORS:
                        continue
                    raise
                if watcher is None:
                    watcher = get_hub().loop.io(self._socket.fileno(), _READ)
                    self._waiters.add(watcher)
                try:
                    get_hub().wait(watcher)
                except _ListenerClosed:
                    watcher = None  # closed by close() itself
                    raise ClosedError("cannot accept: the listener was closed") from None
        finally:
            if watcher is not None:
                self._waiters.discard(watcher)
                watcher.close()
            if timer is not None:
                timer.close()


class ListenerLayer(Listener):
    """A listener over another listener, adding a step to :meth:`establish`.

    Delegates the socket and everything about it (``socket``, ``address``,
    ``name``, ``fileno``, ``close``, ``closed``, ``open_flow``, accepting) to
    the inner listener, which it owns. Its :meth:`establish` runs the inner
    listener's, then :meth:`upgrade`; a subclass implements :meth:`upgrade`
    (``greenflow.tls.TLSListener`` runs the TLS handshake there) and sets
    :attr:`scheme`, which :attr:`url` adds to the inner listener's.
    """

    __slots__ = ("_inner",)

    #: The URL scheme this layer adds: ``tls`` makes ``tcp://`` into
    #: ``tls://`` and ``unix:`` into ``unix+tls:``.
    scheme = "layer"

    def __init__(self, listener: Listener) -> None:
        """Wrap ``listener``, which the layer owns from now on."""
        if not isinstance(listener, Listener):
            raise TypeError(f"a listener layer wraps a Listener, not {type(listener).__name__}")
        self._inner = listener

    @property
    def inner(self) -> Listener:
        """The listener this layer wraps."""
        return self._inner

    @property
    def socket(self) -> _Socket:
        return self._inner.socket

    @property
    def address(self) -> object:
        return self._inner.address

    @property
    def name(self) -> str | None:
        return self._inner.name

    @property
    def tls_context(self) -> SSL.Context | None:
        return self._inner.tls_context

    @property
    def handshake_timeout(self) -> float | None:
        return self._inner.handshake_timeout

    @property
    def url(self) -> str:
        """The inner listener's URL with this layer's scheme added."""
        scheme, colon, rest = self._inner.url.partition(":")
        return (self.scheme if scheme == "tcp" else f"{scheme}+{self.scheme}") + colon + rest

    @property
    def closed(self) -> bool:
        return self._inner.closed

    def fileno(self) -> int:
        return self._inner.fileno()

    def close(self) -> None:
        """Close the inner listener (and so the socket)."""
        self._inner.close()

    def open_flow(self, sock: _Socket, timeout: float | None) -> SocketFlow:
        return self._inner.open_flow(sock, timeout)

    def establish(self, flow: Flow) -> Flow:
        """The inner listener's step, then this layer's :meth:`upgrade`."""
        return self.upgrade(self._inner.establish(flow))

    def upgrade(self, flow: Flow) -> Flow:
        """This layer's own step over ``flow``; on failure, close it and raise a FlowError."""
        raise NotImplementedError

    def _next_socket(self, timeout: float | None) -> _Socket:
        return self._inner._next_socket(timeout)
