"""Flows over stream sockets: TCP, Unix, socketpairs, vsock, and any socket fd.

A :class:`SocketFlow` owns a plain non-blocking stdlib socket and makes the
system calls itself: it tries the call, and only when the kernel says
``EAGAIN`` does it park the greenlet on a libev I/O watcher until the
descriptor is ready. That is what gevent's own socket does too, minus the
per-call overhead the performance notes measured (``sendall`` querying
``SO_SNDBUF`` on every call, ``sendmsg`` giving up after one wait).

Memory per idle flow is kept small on purpose: no read buffer is held
(``read`` asks the kernel for a fresh ``bytes`` of at most ``max_bytes``;
``read_into`` fills the caller's buffer), and the two watchers are made the
first time the flow has to wait.

Waking blocked greenlets: ``close()`` and ``shutdown("read")`` throw a private
exception into the greenlet parked on a watcher (``hub.cancel_wait``); the call
turns it into :class:`ClosedError` or EOF. The descriptor is closed only after
every watcher on it has been stopped, so libev never polls a closed fd.

OS errors become flow errors in one place, :meth:`SocketFlow._broken`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterable
from typing import Any

from gevent import get_hub as _get_hub
from gevent import socket as _gevent_socket

from .errors import BrokenError, BusyError, ClosedError, FlowError, FlowTimeout
from .flow import (
    DEFAULT_READ_SIZE,
    Buffer,
    Flow,
    Shutdown,
    check_bytes_like,
    check_max_bytes,
    check_timeout,
    closed_error,
    log,
    parse_shutdown,
    start_timer,
)

__all__ = [
    "SocketFlow",
    "connect_tcp",
    "connect_unix",
    "connect_vsock",
    "from_fd",
    "from_socket",
    "socketpair",
]

_READ = 1  # libev's EV_READ
_WRITE = 2  # libev's EV_WRITE
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)  # no SIGPIPE on a dead peer
try:
    _IOV_MAX = os.sysconf("SC_IOV_MAX")
except (AttributeError, ValueError, OSError):  # pragma: no cover - not Linux
    _IOV_MAX = 1024
#: writev joins the buffers into one send below this total size: a copy of a
#: few KiB is cheaper than the gather bookkeeping (performance notes, point 2).
_JOIN_BELOW = 4096


class _WokenByClose(Exception):
    """Thrown into a greenlet parked on a watcher when the flow is closed."""


class _WokenByReadShutdown(Exception):
    """Thrown into a parked reader when this side shuts down reading."""


class SocketFlow(Flow):
    """A flow over a connected stream socket, which it owns.

    Made by :func:`connect_tcp`, :func:`connect_unix`, :func:`socketpair`,
    :func:`from_socket`, :func:`from_fd` and the server. The contract is
    :class:`~greenflow.Flow`'s; this class adds:

    - ``read_into`` goes straight from the kernel into the caller's buffer
      (``recv_into``), and ``writev`` uses ``sendmsg`` gather I/O (joining
      only small totals), looping over short sends and ``IOV_MAX``.
    - ``shutdown("write")`` sends a FIN; ``shutdown("read")`` is local only.
    - ``local_address`` and ``peer_address`` are the socket's addresses.
    - :attr:`socket` gives the socket itself for options (read-only use).
    """

    __slots__ = (
        "_addresses",
        "_closed",
        "_fd",
        "_hub",
        "_read_eof",
        "_read_error",
        "_read_watcher",
        "_reading",
        "_sock",
        "_timeout",
        "_write_error",
        "_write_shut",
        "_write_watcher",
        "_writing",
    )

    def __init__(self, sock: socket.socket, *, timeout: float | None = None) -> None:
        """Take ownership of a connected stream socket (stdlib ``socket``).

        Prefer :func:`from_socket`, which also accepts gevent sockets and
        checks the socket's type.
        """
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._hub = _get_hub()
        self._read_watcher: Any = None
        self._write_watcher: Any = None
        self._timeout = check_timeout(timeout)
        self._closed = False
        self._reading = False
        self._writing = False
        self._read_eof = False  # EOF seen, or this side shut down reading
        self._write_shut = False
        self._read_error: BrokenError | None = None
        self._write_error: BrokenError | None = None
        self._addresses: tuple[object, object] | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fd}"
        return f"<SocketFlow {state} peer={self.peer_address!r}>"

    # -- reading ---------------------------------------------------------------

    def read(self, max_bytes: int | None = None) -> bytes:
        size = DEFAULT_READ_SIZE if max_bytes is None else check_max_bytes(max_bytes)
        if self._reading or self._closed or self._read_eof or self._read_error:
            if self._enter_read("read"):
                return b""
        self._reading = True
        timer = None
        try:
            while True:
                try:
                    data = self._sock.recv(size)
                except BlockingIOError:
                    if timer is None and self._timeout is not None:
                        timer = start_timer(self._timeout, "read")
                    if self._wait_readable():
                        return b""
                    continue
                except InterruptedError:
                    continue
                except OSError as exc:
                    raise self._read_failed(exc) from exc
                if not data:
                    self._read_eof = True
                return data
        finally:
            self._reading = False
            if timer is not None:
                timer.close()

    def read_into(self, buffer: bytearray | memoryview) -> int:
        if not buffer:
            raise ValueError("read_into needs a buffer with room for at least one byte")
        if self._reading or self._closed or self._read_eof or self._read_error:
            if self._enter_read("read_into"):
                return 0
        self._reading = True
        timer = None
        try:
            while True:
                try:
                    count = self._sock.recv_into(buffer)
                except BlockingIOError:
                    if timer is None and self._timeout is not None:
                        timer = start_timer(self._timeout, "read_into")
                    if self._wait_readable():
                        return 0
                    continue
                except InterruptedError:
                    continue
                except OSError as exc:
                    raise self._read_failed(exc) from exc
                if not count:
                    self._read_eof = True
                return count
        finally:
            self._reading = False
            if timer is not None:
                timer.close()

    def _enter_read(self, what: str) -> bool:
        """The slow checks before a read; True means "return EOF now"."""
        if self._closed:
            raise closed_error(what)
        if self._reading:
            raise BusyError(f"cannot {what}: another greenlet is already reading this flow")
        if self._read_eof:
            return True
        assert self._read_error is not None
        raise BrokenError(f"cannot {what}: an earlier read failed ({self._read_error})")

    def _wait_readable(self) -> bool:
        """Park until the fd is readable; True means reading was shut down."""
        watcher = self._read_watcher
        if watcher is None:
            watcher = self._read_watcher = self._hub.loop.io(self._fd, _READ)
        try:
            self._hub.wait(watcher)
        except _WokenByClose:
            raise closed_error("read") from None
        except _WokenByReadShutdown:
            return True
        return False

    def _read_failed(self, exc: OSError) -> FlowError:
        if self._closed:
            return closed_error("read")
        error = self._broken(exc, "reading")
        self._read_error = error
        return error

    # -- writing ---------------------------------------------------------------

    def write(self, data: Buffer) -> None:
        if self._writing or self._closed or self._write_shut or self._write_error:
            self._enter_write("write")
        if type(data) is not bytes:
            data = check_bytes_like(data)
        self._writing = True
        try:
            try:
                sent = self._sock.send(data, _NOSIGNAL)
            except BlockingIOError:
                sent = 0
            if sent != len(data):
                self._send_rest(memoryview(data)[sent:], "write")
        except BaseException as exc:
            error = self._write_interrupted(exc)
            if error is exc:
                raise
            raise error from exc
        finally:
            self._writing = False

    def writev(self, buffers: Iterable[Buffer]) -> None:
        if self._writing or self._closed or self._write_shut or self._write_error:
            self._enter_write("writev")
        views = [check_bytes_like(b) for b in buffers]
        total = sum(len(view) for view in views)
        if total < _JOIN_BELOW:
            self.write(b"".join(views))
            return
        self._writing = True
        try:
            self._sendmsg_all(views)
        except BaseException as exc:
            error = self._write_interrupted(exc)
            if error is exc:
                raise
            raise error from exc
        finally:
            self._writing = False

    def _enter_write(self, what: str) -> None:
        if self._closed:
            raise closed_error(what)
        if self._writing:
            raise BusyError(f"cannot {what}: another greenlet is already writing this flow")
        if self._write_shut:
            raise ClosedError(f"cannot {what}: this side has shut down writing")
        raise BrokenError(f"cannot {what}: an earlier write failed ({self._write_error})")

    def _send_rest(self, view: memoryview, what: str) -> None:
        timer = None
        try:
            while view:
                try:
                    sent = self._sock.send(view, _NOSIGNAL)
                except BlockingIOError:
                    if timer is None and self._timeout is not None:
                        timer = start_timer(self._timeout, what)
                    self._wait_writable()
                    continue
                except InterruptedError:
                    continue
                view = view[sent:]
        finally:
            if timer is not None:
                timer.close()

    def _sendmsg_all(self, views: list[memoryview]) -> None:
        # gevent's sendmsg tries once, waits once and may return a short
        # count; this loop owns the retries, drops what was sent and slices
        # the first buffer that was sent in part.
        timer = None
        first = 0
        try:
            while first < len(views):
                batch = views[first : first + _IOV_MAX]
                try:
                    sent = self._sock.sendmsg(batch, (), _NOSIGNAL)
                except BlockingIOError:
                    if timer is None and self._timeout is not None:
                        timer = start_timer(self._timeout, "writev")
                    self._wait_writable()
                    continue
                except InterruptedError:
                    continue
                while first < len(views) and sent >= len(views[first]):
                    sent -= len(views[first])
                    first += 1
                if sent:
                    views[first] = views[first][sent:]
        finally:
            if timer is not None:
                timer.close()

    def _wait_writable(self) -> None:
        watcher = self._write_watcher
        if watcher is None:
            watcher = self._write_watcher = self._hub.loop.io(self._fd, _WRITE)
        try:
            self._hub.wait(watcher)
        except _WokenByClose:
            raise closed_error("write") from None

    def _write_interrupted(self, exc: BaseException) -> BaseException:
        """Mark the writing direction broken after a write that did not finish.

        Returns what the write raises: ``ClosedError`` if this side closed the
        flow, a ``BrokenError`` for an OS error, and otherwise (timeouts,
        kills) the interrupting exception itself.
        """
        if self._closed:
            return exc if isinstance(exc, ClosedError) else closed_error("write")
        if isinstance(exc, OSError) and not isinstance(exc, FlowError):
            error = self._broken(exc, "writing")
            self._write_error = error
            return error
        if self._write_error is None:
            kind = "timed out" if isinstance(exc, FlowTimeout) else f"was interrupted ({type(exc).__name__})"
            self._write_error = BrokenError(f"a write {kind} and may have sent part of its data")
        return exc

    # -- ending ----------------------------------------------------------------

    def shutdown(self, how: Shutdown | str = Shutdown.WRITE) -> None:
        how = parse_shutdown(how)
        if self._closed:
            raise closed_error("shut down")
        if how.writes and not self._write_shut:
            if self._writing:
                raise BusyError("cannot shut down writing: another greenlet is writing")
            self._write_shut = True
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                error = self._broken(exc, "shutting down writing on")
                self._write_error = error
                raise error from exc
        if how.reads and not self._read_eof:
            self._read_eof = True
            if self._reading and self._read_watcher is not None:
                self._hub.cancel_wait(self._read_watcher, _WokenByReadShutdown)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._addresses is None:
            with contextlib.suppress(OSError):
                self._addresses = (self._sock.getsockname(), self._sock.getpeername())
        watchers = (self._read_watcher, self._write_watcher)
        self._read_watcher = self._write_watcher = None
        try:
            self._hub.cancel_waits_close_and_then(watchers, _WokenByClose, self._sock.close)
        except Exception as exc:  # pragma: no cover - defensive: close never raises
            log.debug("closing %r failed: %s", self, exc)

    # -- attributes ------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def timeout(self) -> float | None:
        return self._timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._timeout = check_timeout(value)

    @property
    def socket(self) -> socket.socket:
        """The socket under this flow, for reading options and addresses.

        Do not read from it, write to it or close it: the flow owns it.
        """
        return self._sock

    @property
    def local_address(self) -> object:
        return self._get_addresses()[0]

    @property
    def peer_address(self) -> object:
        return self._get_addresses()[1]

    def _get_addresses(self) -> tuple[object, object]:
        if self._addresses is None:
            if self._closed:
                return (None, None)
            try:
                self._addresses = (self._sock.getsockname(), self._sock.getpeername())
            except OSError:
                return (self._sock.getsockname(), None)
        return self._addresses

    # -- errors ----------------------------------------------------------------

    def _broken(self, exc: OSError, doing: str) -> BrokenError:
        """Translate an OS error into the flow error that describes it."""
        return broken_error(exc, f"{doing} {self._describe()}")

    def _describe(self) -> str:
        peer = self._addresses[1] if self._addresses else None
        return f"the connection to {_format_address(peer)}" if peer else "the connection"


def broken_error(exc: OSError, context: str) -> BrokenError:
    """The one place an OS error becomes a :class:`BrokenError`.

    The message names what was being done and what the kernel said, and
    ``errno`` is kept so legacy code that looks at it still can.
    """
    reasons = {
        errno.ECONNRESET: "the peer reset the connection",
        errno.EPIPE: "the peer has closed the connection",
        errno.ECONNABORTED: "the connection was aborted",
        errno.ETIMEDOUT: "the connection timed out in the kernel",
        errno.EBADF: "the descriptor was closed behind the flow's back",
        errno.ENOTCONN: "the socket is not connected",
        errno.ECONNREFUSED: "the connection was refused",
        errno.EHOSTUNREACH: "the host is unreachable",
        errno.ENETUNREACH: "the network is unreachable",
    }
    reason = reasons.get(exc.errno or 0) or exc.strerror or str(exc)
    error = BrokenError(f"{context} failed: {reason}")
    error.errno = exc.errno
    return error


def _format_address(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(address, bytes):
        address = address.decode(errors="replace")
    return str(address) if address else "an unnamed socket"


# -- constructors ------------------------------------------------------------------


def from_socket(sock: socket.socket | _gevent_socket.socket, *, timeout: float | None = None) -> SocketFlow:
    """Wrap a connected stream socket (stdlib or gevent) in a flow.

    The flow takes ownership: closing the flow closes the socket. A gevent
    socket is detached from gevent's wrapper first, so the flow alone waits
    on the descriptor.

    Raises:
        ValueError: the socket is not a connected stream socket (a datagram
            socket, or a listening one).
    """
    check_timeout(timeout)
    if not isinstance(sock, socket.socket | _gevent_socket.socket):
        raise TypeError(f"from_socket needs a socket object, not {type(sock).__name__}")
    if sock.type != socket.SOCK_STREAM:
        raise ValueError(f"a flow needs a stream socket, not {sock.type!r}")
    if _is_listening(sock):
        raise ValueError("that socket is listening; accept connections with greenflow.Server")
    if type(sock) is not socket.socket:
        # A gevent socket (or a subclass): take the fd away from its wrapper,
        # so that only the flow waits on it.
        family, type_, proto = sock.family, sock.type, sock.proto
        sock = socket.socket(family, type_, proto, fileno=sock.detach())
    return SocketFlow(sock, timeout=timeout)


def from_fd(fd: int, *, timeout: float | None = None) -> SocketFlow:
    """Wrap a descriptor of a connected stream socket in a flow.

    The flow takes ownership: closing the flow closes ``fd``. The socket's
    family and type are read from the descriptor.

    Raises:
        ValueError: ``fd`` is not a connected stream socket.
    """
    check_timeout(timeout)
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        if exc.errno == errno.ENOTSOCK:
            raise ValueError(f"descriptor {fd} is not a socket") from exc
        raise
    try:
        return from_socket(sock, timeout=timeout)
    except ValueError:
        sock.detach()  # the caller keeps ownership when we refuse it
        raise


def socketpair(*, timeout: float | None = None) -> tuple[SocketFlow, SocketFlow]:
    """Return two flows connected to each other through a Unix socketpair."""
    check_timeout(timeout)
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return SocketFlow(left, timeout=timeout), SocketFlow(right, timeout=timeout)


def connect_tcp(
    host: str,
    port: int,
    *,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    nodelay: bool = True,
    source_address: tuple[str, int] | None = None,
) -> SocketFlow:
    """Connect to ``host:port`` over TCP (IPv4 or IPv6) and return the flow.

    A numeric host (``"127.0.0.1"``, ``"::1"``) is used as it is; a name is
    resolved with gevent's resolver and its addresses are tried in order.

    Args:
        timeout: the flow's :attr:`~greenflow.Flow.timeout`.
        connect_timeout: the bound on resolving and connecting; defaults to
            ``timeout``.
        nodelay: set ``TCP_NODELAY`` (on by default: a flow writes whole
            messages, so Nagle's algorithm only adds latency).
        source_address: a local ``(host, port)`` to bind before connecting.

    Raises:
        BrokenError: every address refused or failed; the message lists them.
        FlowTimeout: no connection within ``connect_timeout``.
    """
    limit = check_timeout(timeout if connect_timeout is None else connect_timeout)
    timer = (
        start_timer(limit, f"connecting to {_format_address((host, port))}") if limit is not None else None
    )
    try:
        failures = []
        last: OSError | None = None
        for family, address in _resolve(host, port):
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                if source_address is not None:
                    sock.bind(source_address)
                _connect(sock, address)
            except FlowError:  # our own timeout: an OSError too, but final
                sock.close()
                raise
            except OSError as exc:
                sock.close()
                failures.append(f"{_format_address(address)}: {exc.strerror or exc}")
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            if nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return SocketFlow(sock, timeout=timeout)
        error = BrokenError(f"could not connect to {_format_address((host, port))}: {'; '.join(failures)}")
        error.errno = last.errno if last is not None else None
        raise error from last
    finally:
        if timer is not None:
            timer.close()


def connect_unix(path: str | bytes, *, timeout: float | None = None) -> SocketFlow:
    """Connect to the Unix socket at ``path`` (a leading NUL: abstract namespace)."""
    return _connect_family(socket.AF_UNIX, path, path, timeout)


def connect_vsock(cid: int, port: int, *, timeout: float | None = None) -> SocketFlow:
    """Connect to ``port`` on the virtual machine or host ``cid`` over AF_VSOCK.

    CID 1 (``VMADDR_CID_LOCAL``) is this machine, where the kernel has vsock
    loopback; CID 2 is the host.
    """
    if not hasattr(socket, "AF_VSOCK"):  # pragma: no cover - not Linux
        raise OSError(errno.EAFNOSUPPORT, "AF_VSOCK is not available on this system")
    return _connect_family(socket.AF_VSOCK, (cid, port), f"vsock {cid}:{port}", timeout)


def _connect_family(family: int, address: Any, name: object, timeout: float | None) -> SocketFlow:
    limit = check_timeout(timeout)
    timer = start_timer(limit, f"connecting to {name!r}") if limit is not None else None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        _connect(sock, address)
    except FlowError:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        raise broken_error(exc, f"connecting to {name!r}") from exc
    except BaseException:
        sock.close()
        raise
    finally:
        if timer is not None:
            timer.close()
    return SocketFlow(sock, timeout=timeout)


def _connect(sock: socket.socket, address: Any) -> None:
    """Connect a socket without blocking the thread; raises OSError on failure."""
    sock.setblocking(False)
    code = sock.connect_ex(address)
    if code in (0, errno.EISCONN):
        return
    if code not in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY, errno.EINTR):
        raise OSError(code, os.strerror(code))
    hub = _get_hub()
    watcher = hub.loop.io(sock.fileno(), _WRITE)
    try:
        hub.wait(watcher)
    finally:
        watcher.close()
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, os.strerror(code))


def _resolve(host: str, port: int) -> list[tuple[int, Any]]:
    """Addresses to try for ``host:port``; numeric hosts skip the resolver."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host.split("%", 1)[0])
        except (OSError, ValueError):
            continue
        if family == socket.AF_INET:
            return [(family, (host, port))]
        return [
            (
                family,
                socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)[0][4],
            )
        ]
    try:
        infos = _gevent_socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except OSError as exc:
        error = BrokenError(f"could not resolve {host!r}: {exc.strerror or exc}")
        raise error from exc
    return [(info[0], info[4]) for info in infos]


def _is_listening(sock: socket.socket) -> bool:
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False
