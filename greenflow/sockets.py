"""Flows over stream sockets: TCP, Unix, socketpairs, vsock, and any socket fd.

:class:`SocketFlow` is a :class:`~greenflow.descriptors.DescriptorFlow` over
one socket; this module adds what is particular to sockets (addresses, FIN,
options) and the functions that connect or adopt them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
import termios
import time
from typing import Any, Final

from gevent import get_hub as _get_hub
from gevent import socket as _gevent_socket

from .addresses import format_address, numeric_address
from .descriptors import DescriptorFlow, broken_error, wait_ready
from .errors import BrokenError, FlowError
from .kit import DirectionState, check_timeout, start_timer
from .scope import Scope, joined, joined_pair

__all__ = [
    "LINGER_TIMEOUT",
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

#: How long :meth:`SocketFlow.close_lingering` waits at most, in seconds.
LINGER_TIMEOUT: Final = 1.0

#: How much a lingering close reads at a time, and how often it looks at the
#: send queue while the peer sends nothing (seconds).
_LINGER_READ: Final = 65536
_LINGER_POLL: Final = 0.01

#: The flags of the peek in has_unread_input, as a plain int: or-ing the
#: enum members would run Python code on every connection's close.
_PEEK_NOW: Final = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)

_NO_NAMES: Final[tuple[object, object]] = (None, None)


class SocketFlow(DescriptorFlow):
    """A flow over a connected stream socket, which it owns.

    Made by :func:`connect_tcp`, :func:`connect_unix`, :func:`connect_vsock`,
    :func:`socketpair`, :func:`from_socket`, :func:`from_fd` and the server.
    The contract is :class:`~greenflow.Flow`'s; this class adds:

    - ``read_into`` goes straight from the kernel into the caller's buffer
      (``recv_into``), and ``writev`` uses ``sendmsg`` gather I/O (joining
      only small totals), looping over short sends and ``IOV_MAX``; no
      SIGPIPE (``MSG_NOSIGNAL``).
    - ``shutdown("write")`` sends a FIN; ``shutdown("read")`` is local only.
    - ``local_address`` and ``peer_address`` are the socket's addresses,
      looked up when first asked for (no system call per connection
      otherwise) and ``None`` once the flow is closed if never asked before.
    - :attr:`socket` gives the socket itself, for its options.
    """

    __slots__ = ("_addresses", "_names")

    def __init__(
        self,
        sock: socket.socket,
        *,
        timeout: float | None = None,
        local_address: object = None,
        peer_address: object = None,
    ) -> None:
        """Take ownership of a connected stream socket (stdlib ``socket``).

        Prefer :func:`from_socket`, which also accepts gevent sockets and
        checks the socket's type. ``local_address`` and ``peer_address``,
        when given, are reported instead of what the socket says: a Unix
        socket bound under a temporary name and then moved into place (as
        :func:`~greenflow.listen_unix` does) knows only the temporary name.
        """
        sock.setblocking(False)
        fd = sock.fileno()
        super().__init__(sock, fd, fd, timeout)
        self._sock: socket.socket = sock
        self._addresses: tuple[object, object] | None = None
        # Most flows are given no names: they share one tuple (a server keeps thousands).
        self._names = (
            _NO_NAMES if local_address is None and peer_address is None else (local_address, peer_address)
        )

    def _read_scatter(self, buffers: list[memoryview], what: str = "read_into") -> int:
        """One ``readv`` into ``buffers``, with ``read_into``'s rules; 0 at EOF.

        For a layer that reads straight into several places at once
        (:class:`~greenflow.FramedFlow` puts frame headers aside and bodies
        in its reader's buffer). The buffers are contiguous writable views,
        at most ``IOV_MAX`` of them. Like ``read_into``, it takes the reading
        direction, waits on the hub when the socket has nothing, and says 0
        at EOF or after this side shut down reading.
        """
        reader = self._reader
        if reader.busy or reader.state is not DirectionState.OPEN:
            if reader.refuse(what):
                return 0
        else:
            reader.busy = True
        try:
            while True:
                try:
                    count = os.readv(self._fd, buffers)
                except BlockingIOError:
                    if self._park(what):
                        return 0
                    continue
                except InterruptedError:
                    continue
                except OSError as exc:
                    raise self._read_failed(exc, what) from exc
                if not count:
                    reader.end()
                return count
        finally:
            reader.busy = False
            if reader.timer is not None:
                reader.leave()

    def _end_writing(self) -> None:
        self._sock.shutdown(socket.SHUT_WR)

    def _release(self) -> None:
        self._sock.close()

    @property
    def socket(self) -> socket.socket:
        """The socket under this flow, for reading and setting options.

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
            if self.closed:
                return (None, None)
            local, peer = self._names
            if local is None:
                local = self._sock.getsockname()
            try:
                self._addresses = (local, self._sock.getpeername() if peer is None else peer)
            except OSError:
                return (local, None)
        return self._addresses

    def _describe(self) -> str:
        try:
            peer = self._get_addresses()[1]
        except OSError:
            peer = None
        return f"the connection to {format_address(peer)}" if peer else "the connection"

    # -- closing without a reset ---------------------------------------------------

    def has_unread_input(self) -> bool:
        """Whether the peer sent bytes that no read has taken yet.

        Closing a TCP socket with unread input makes the kernel send a reset,
        which can destroy the end of what this side sent; see
        :meth:`close_lingering`. One non-blocking peek (none once a read has
        seen the peer's EOF): ``False`` when nothing is waiting, at EOF, and
        once the flow is closed.
        """
        state = self._reader.state
        if state is DirectionState.CLOSED or state is DirectionState.EOF:
            return False  # nothing can follow the peer's EOF: no system call
        try:
            return bool(self._sock.recv(1, _PEEK_NOW))
        except OSError:  # nothing there (EAGAIN), or the connection is gone
            return False

    def close_lingering(self, timeout: float = LINGER_TIMEOUT) -> bool:
        """Send our EOF, wait until the peer has our data, then close.

        Closing a socket that has unread input (a request body nobody read, a
        pipelined request, a request that crossed a server's stop) makes the
        kernel answer with a reset, and a reset throws away whatever is still
        in our send queue: the end of the last response, if the peer has not
        acknowledged it yet. So this shuts down writing, then reads and
        discards until the peer's EOF, or until the send queue is empty (the
        peer's kernel has every byte, and a reset no longer loses any), or
        for ``timeout`` seconds at most. The flow's own timeout does not
        apply.

        Returns:
            ``True`` if the peer's EOF came or the send queue emptied in
            time; ``False`` if the time ran out or the connection failed.
            The flow is closed either way. Never raises a flow error.
        """
        try:
            if self.closed:
                return False
            self.shutdown("write")
            return _linger(self._sock, timeout)
        except (FlowError, OSError):
            return False
        finally:
            self.close()


# -- constructors ------------------------------------------------------------------


def from_socket(
    sock: socket.socket | _gevent_socket.socket,
    *,
    timeout: float | None = None,
    nodelay: bool = True,
    scope: Scope | None = None,
) -> SocketFlow:
    """Wrap a connected stream socket (stdlib or gevent) in a flow.

    The flow takes ownership: closing the flow closes the socket. A gevent
    socket is detached from gevent's wrapper first, so the flow alone waits
    on the descriptor. On a TCP socket ``TCP_NODELAY`` is set unless
    ``nodelay=False``: a flow writes whole messages, and Nagle's algorithm
    would hold a reply back until the peer's delayed ACK.

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
    try:
        sock.getpeername()
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise ValueError(
                "that socket is not connected; connect it first, or use greenflow.connect_tcp"
            ) from None
        raise
    if type(sock) is not socket.socket:
        # A gevent socket (or a subclass): take the fd away from its wrapper,
        # so that only the flow waits on it.
        family, type_, proto = sock.family, sock.type, sock.proto
        sock = socket.socket(family, type_, proto, fileno=sock.detach())
    if nodelay and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):  # a stream that is not TCP (SCTP) has no such option
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return joined(SocketFlow(sock, timeout=timeout), scope)


def from_fd(
    fd: int, *, timeout: float | None = None, nodelay: bool = True, scope: Scope | None = None
) -> SocketFlow:
    """Wrap a descriptor of a connected stream socket in a flow.

    The flow takes ownership: closing the flow closes ``fd``. The socket's
    family and type are read from the descriptor; ``nodelay`` is as for
    :func:`from_socket`.

    Raises:
        ValueError: ``fd`` is not a connected stream socket.
    """
    check_timeout(timeout)
    sock = socket_at(fd)
    try:
        return from_socket(sock, timeout=timeout, nodelay=nodelay, scope=scope)
    except ValueError:
        sock.detach()  # the caller keeps ownership when we refuse it
        raise


def socket_at(fd: int) -> socket.socket:
    """A socket object for the socket at descriptor ``fd`` (family and type read from it).

    Raises:
        ValueError: ``fd`` is open but not a socket.
        OSError: ``fd`` is not open.
    """
    try:
        return socket.socket(fileno=fd)
    except OSError as exc:
        if exc.errno == errno.ENOTSOCK:
            raise ValueError(f"descriptor {fd} is not a socket") from exc
        raise


def socketpair(*, timeout: float | None = None, scope: Scope | None = None) -> tuple[SocketFlow, SocketFlow]:
    """Return two flows connected to each other through a Unix socketpair."""
    check_timeout(timeout)
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return joined_pair((SocketFlow(left, timeout=timeout), SocketFlow(right, timeout=timeout)), scope)


def connect_tcp(
    host: str,
    port: int,
    *,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    nodelay: bool = True,
    source_address: tuple[str, int] | None = None,
    scope: Scope | None = None,
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
    check_timeout(timeout)  # before connecting: a bad value must not leave a connection behind
    limit = check_timeout(timeout if connect_timeout is None else connect_timeout)
    setting = "the timeout" if connect_timeout is None else "connect_timeout"
    target = format_address((host, port))
    timer = start_timer(limit, f"connecting to {target}", setting=setting) if limit is not None else None
    try:
        failures: list[tuple[str, str]] = []
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
                failures.append((format_address(address), exc.strerror or str(exc)))
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            if nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return joined(SocketFlow(sock, timeout=timeout), scope)
        error = BrokenError(_connect_failure(target, failures))
        error.errno = last.errno if last is not None else None
        raise error from last
    finally:
        if timer is not None:
            timer.close()


def _connect_failure(target: str, failures: list[tuple[str, str]]) -> str:
    """What a failed connect says: each address tried, unless it is the target itself."""
    if len(failures) == 1 and failures[0][0] == target:
        return f"could not connect to {target}: {failures[0][1]}"
    tried = "; ".join(f"{address}: {reason}" for address, reason in failures)
    return f"could not connect to {target}: {tried}"


def connect_unix(
    path: str | bytes, *, timeout: float | None = None, scope: Scope | None = None
) -> SocketFlow:
    """Connect to the Unix socket at ``path`` (a leading NUL: abstract namespace).

    The flow's ``peer_address`` is ``path``, even where the server bound its
    socket under another name before moving it there.
    """
    name = os.fsdecode(path)
    # An abstract name is reported as the socket says it (bytes); a path as the str it named.
    flow = _connect_family(
        socket.AF_UNIX, path, timeout, peer_address=None if name.startswith("\0") else name
    )
    return joined(flow, scope)


def connect_vsock(
    cid: int, port: int, *, timeout: float | None = None, scope: Scope | None = None
) -> SocketFlow:
    """Connect to ``port`` on the virtual machine or host ``cid`` over AF_VSOCK.

    CID 1 (``VMADDR_CID_LOCAL``) is this machine, where the kernel has vsock
    loopback; CID 2 is the host.
    """
    if not hasattr(socket, "AF_VSOCK"):  # pragma: no cover - not Linux
        raise OSError(errno.EAFNOSUPPORT, "AF_VSOCK is not available on this system")
    return joined(_connect_family(socket.AF_VSOCK, (cid, port), timeout), scope)


def _connect_family(
    family: int, address: Any, timeout: float | None, *, peer_address: object = None
) -> SocketFlow:
    limit = check_timeout(timeout)
    name = format_address(address)
    timer = start_timer(limit, f"connecting to {name}", setting="the timeout") if limit is not None else None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        _connect(sock, address)
    except FlowError:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        raise broken_error(exc, f"connecting to {name}") from exc
    except BaseException:
        sock.close()
        raise
    finally:
        if timer is not None:
            timer.close()
    return SocketFlow(sock, timeout=timeout, peer_address=peer_address)


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
    numeric = numeric_address(host, port)
    if numeric is not None:
        return [numeric]
    try:
        infos = _gevent_socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except FlowError:  # our own timeout (an OSError too) while resolving: final
        raise
    except OSError as exc:
        error = BrokenError(f"could not resolve {host!r}: {exc.strerror or exc}")
        raise error from exc
    return [(info[0], info[4]) for info in infos]


def _is_listening(sock: socket.socket) -> bool:
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False


# -- lingering close ---------------------------------------------------------------


def _linger(sock: socket.socket, timeout: float) -> bool:
    """Read and discard until EOF, an empty send queue, or ``timeout``."""
    watcher = _get_hub().loop.io(sock.fileno(), _READ)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if not sock.recv(_LINGER_READ):
                    return True  # the peer's EOF
                if time.monotonic() < deadline:
                    continue
                return False  # a client that keeps sending does not hold the close past the bound
            except BlockingIOError:
                pass
            except InterruptedError:
                continue
            remaining = deadline - time.monotonic()
            if _unsent_bytes(sock) == 0:
                return True
            if remaining <= 0:
                return False
            wait_ready(watcher, min(remaining, _LINGER_POLL))
    finally:
        watcher.close()


def _unsent_bytes(sock: socket.socket) -> int:
    """Bytes in the socket's send queue not yet acknowledged (-1: unknown)."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, AttributeError):
        return -1
    count: int = struct.unpack("i", raw)[0]
    return count
