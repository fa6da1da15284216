"""Listening sockets for :class:`greenflow.Server`: TCP, Unix, inherited, TLS.

A :class:`Listener` owns one listening stream socket and knows how to turn a
socket it accepted into a flow. The constructors here make one each:

- :func:`listen_tcp` binds an IPv4 or IPv6 address with ``SO_REUSEADDR``
  (and ``SO_REUSEPORT`` when asked) and a generous backlog.
- :func:`listen_unix` binds a Unix socket path. A file already at the path is
  replaced only if it is a socket that nobody listens on (a stale socket left
  by a process that died); anything else is refused. The new socket gets its
  file mode *before* it appears at the path, and appears atomically, so no
  client ever sees it half set up.
- :func:`listen_socket` and :func:`listen_fd` adopt a socket that is already
  listening (handed over by a parent process, a supervisor, a test).
- :func:`listen_systemd` adopts the sockets of systemd socket activation
  (``LISTEN_FDS`` / ``LISTEN_PID`` / ``LISTEN_FDNAMES``).
- :func:`listen_url` makes listeners from the URLs the command line takes:
  ``tcp://host:port``, ``tls://host:port``, ``unix:/path``, ``unix:@name``
  (abstract namespace), ``fd://N`` and ``systemd:``.

Every constructor takes ``tls_context``: with one, each accepted connection
runs a TLS server handshake (``greenflow.tls.server``) in its own greenlet,
bounded by ``handshake_timeout``, before the handler sees it. The accept path
never waits on a handshake.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
import stat
from typing import TYPE_CHECKING, Final

from ._defaults import DEFAULT_HANDSHAKE_TIMEOUT
from .addresses import Endpoint, Scheme, SocketAddress, numeric_address, parse_url, url_for
from .flow import Flow
from .sockets import SocketFlow, socket_at

if TYPE_CHECKING:
    from OpenSSL import SSL

__all__ = [
    "DEFAULT_BACKLOG",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "Listener",
    "listen_fd",
    "listen_socket",
    "listen_systemd",
    "listen_tcp",
    "listen_tls",
    "listen_unix",
    "listen_url",
]

#: The backlog asked of ``listen()``. The kernel caps it at
#: ``net.core.somaxconn`` (4096 on current Linux), so asking high costs
#: nothing, and while the server is at its connection limit the backlog is
#: what holds the next clients.
DEFAULT_BACKLOG: Final = 4096


#: systemd passes activated sockets from this descriptor on (sd_listen_fds).
_SD_LISTEN_FDS_START: Final = 3

_TCP_FAMILIES: Final = (socket.AF_INET, socket.AF_INET6)


class Listener:
    """One listening stream socket, owned, and how to make flows from it.

    Made by the ``listen_*`` functions; hand it to :class:`greenflow.Server`,
    which then owns it and closes it when it stops. A listener may also be
    closed on its own with :meth:`close`.

    Attributes:
        socket: the listening socket (non-blocking). Read options from it; do
            not accept from it while a server uses it.
        address: the bound address: ``(host, port)`` (IPv6: a 4-tuple) for
            TCP, with the real port when port 0 was asked; the path (``str``)
            for a Unix socket, starting with NUL in the abstract namespace.
        tls_context: the server TLS context, or ``None`` for plain flows.
        handshake_timeout: seconds a TLS handshake may take.
        name: a label for logs (the ``LISTEN_FDNAMES`` name for systemd).
    """

    __slots__ = (
        "_closed",
        "_is_tcp",
        "_unlink",
        "address",
        "handshake_timeout",
        "name",
        "socket",
        "tls_context",
    )

    def __init__(
        self,
        sock: socket.socket,
        *,
        address: object = None,
        tls_context: SSL.Context | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        name: str | None = None,
        unlink: tuple[str, int, int] | None = None,
    ) -> None:
        """Take ownership of a listening socket; prefer :func:`listen_socket`."""
        sock.setblocking(False)
        self.socket = sock
        self.address = sock.getsockname() if address is None else address
        self.tls_context = tls_context
        self.handshake_timeout = handshake_timeout
        self.name = name
        self._is_tcp = sock.family in _TCP_FAMILIES
        self._unlink = unlink  # (path, st_dev, st_ino) of a socket file we made
        self._closed = False

    @property
    def url(self) -> str:
        """The listener's address as a ``--bind`` URL (``tcp://127.0.0.1:8000``)."""
        return url_for(self.address, tls=self.tls_context is not None)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def fileno(self) -> int:
        """The listening descriptor (-1 once closed)."""
        return self.socket.fileno()

    def close(self) -> None:
        """Close the socket, and remove its file if this listener made it.

        The file is removed only if the path still names the socket this
        listener bound (same device and inode): a newer server that has
        replaced it in the meantime keeps its socket. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self.socket.close()
        if self._unlink is not None:
            path, device, inode = self._unlink
            try:
                info = os.lstat(path)
                if (info.st_dev, info.st_ino) == (device, inode):
                    os.unlink(path)
            except OSError:
                pass

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<Listener {self.url}{state}>"

    def open_flow(self, sock: socket.socket, timeout: float | None) -> SocketFlow:
        """Wrap a socket accepted from this listener in a plain flow.

        Sets ``TCP_NODELAY`` on TCP sockets: flows write whole messages, so
        Nagle's algorithm only adds latency. A Unix socket file's flows
        report its final path as their ``local_address``. The TLS handshake, if any, is
        :meth:`secure`'s job, so that the server can see the plain flow (and
        close it) while the handshake runs.
        """
        if self._is_tcp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return SocketFlow(sock, timeout=timeout)
        # A Unix socket bound under a temporary name knows only that name.
        path = self._unlink[0] if self._unlink is not None else None
        return SocketFlow(sock, timeout=timeout, local_address=path)

    def secure(self, flow: Flow) -> Flow:
        """Run the TLS server handshake over ``flow`` if this is a TLS listener.

        Returns ``flow`` itself for a plain listener. Runs in the
        connection's greenlet; raises what ``greenflow.tls.server`` raises
        (a :class:`~greenflow.FlowError`) when the handshake fails or times
        out.
        """
        if self.tls_context is None:
            return flow
        from . import tls  # noqa: PLC0415 - imported late: plain servers never load pyOpenSSL

        return tls.server(
            flow, self.tls_context, handshake_timeout=self.handshake_timeout, timeout=flow.timeout
        )


# -- TCP ---------------------------------------------------------------------------


def listen_tcp(
    host: str,
    port: int,
    *,
    backlog: int = DEFAULT_BACKLOG,
    reuse_port: bool = False,
    tls_context: SSL.Context | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> Listener:
    """Listen on TCP ``host:port``; port 0 picks a free port.

    ``host`` is a numeric IPv4 or IPv6 address (``"127.0.0.1"``, ``"::1"``,
    ``"0.0.0.0"``, ``"::"``) or a name, of which the first address is used.
    An IPv6 listener sets ``IPV6_V6ONLY``: ``"::"`` means IPv6 only, and a
    server that wants both families binds two listeners. That is explicit,
    and the same on every system.

    ``SO_REUSEADDR`` is always set, so a restarted server binds at once while
    old connections sit in TIME_WAIT. ``reuse_port=True`` sets
    ``SO_REUSEPORT`` so that several processes can listen on one port and
    the kernel spreads connections among them.
    """
    family, address = _tcp_address(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return Listener(sock, tls_context=tls_context, handshake_timeout=handshake_timeout)


def listen_tls(
    host: str,
    port: int,
    context: SSL.Context,
    *,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    backlog: int = DEFAULT_BACKLOG,
    reuse_port: bool = False,
) -> Listener:
    """Listen on TCP ``host:port`` and serve TLS with ``context``.

    The same as ``listen_tcp(host, port, tls_context=context, ...)``.
    ``context`` is a server context from ``greenflow.tls``.
    """
    return listen_tcp(
        host,
        port,
        backlog=backlog,
        reuse_port=reuse_port,
        tls_context=context,
        handshake_timeout=handshake_timeout,
    )


def _tcp_address(host: str, port: int) -> tuple[int, SocketAddress]:
    numeric = numeric_address(host, port)
    if numeric is not None:
        return numeric
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    if not infos:  # pragma: no cover - getaddrinfo raises instead
        raise OSError(errno.EADDRNOTAVAIL, f"{host!r} has no address")
    return infos[0][0], infos[0][4]  # type: ignore[return-value]


# -- Unix --------------------------------------------------------------------------


def listen_unix(
    path: str,
    *,
    mode: int | None = None,
    backlog: int = DEFAULT_BACKLOG,
    tls_context: SSL.Context | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> Listener:
    """Listen on the Unix socket ``path`` (a leading NUL: abstract namespace).

    A file already at ``path`` is replaced only if it is a *stale* socket:
    a socket file whose connect is refused because no process listens on it
    any more. A live socket raises ``OSError(EADDRINUSE)``; a file that is
    not a socket raises ``FileExistsError``; neither is touched.

    The socket is bound under a temporary name in the same directory, given
    ``mode`` (e.g. ``0o660``; ``None`` keeps what the umask gives), then
    moved to ``path`` in one step (a hard link where nothing was, a rename
    over a stale socket), so clients never meet a socket with the wrong mode
    or a missing file. The one race left is another process starting on the
    same path at the same instant, between the check and the rename.

    The listener removes the file when it closes, if the path still names
    its socket.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if path.startswith("\0"):
            sock.bind(path)
            unlink = None
        else:
            unlink = _bind_unix_file(sock, path, mode)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return Listener(
        sock, address=path, tls_context=tls_context, handshake_timeout=handshake_timeout, unlink=unlink
    )


def _bind_unix_file(sock: socket.socket, path: str, mode: int | None) -> tuple[str, int, int]:
    stale = _check_unix_path(path)
    directory, base = os.path.split(path)
    temporary = os.path.join(directory, f".{base}.{secrets.token_hex(4)}")
    if len(os.fsencode(temporary)) >= 108:
        # The temporary name does not fit in sun_path: bind in place instead.
        if stale:
            os.unlink(path)
        sock.bind(path)
        if mode is not None:
            os.chmod(path, mode)
    else:
        sock.bind(temporary)
        try:
            if mode is not None:
                os.chmod(temporary, mode)
            if stale:
                os.rename(temporary, path)  # atomic replacement of the stale socket
            else:
                try:
                    os.link(temporary, path)  # fails if anything appeared meanwhile
                except FileExistsError:
                    raise OSError(
                        errno.EADDRINUSE, f"{path} appeared while binding; not replacing it"
                    ) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
    info = os.lstat(path)
    return (path, info.st_dev, info.st_ino)


def _check_unix_path(path: str) -> bool:
    """Return True if ``path`` is a stale socket, False if nothing is there.

    Raises if something that must not be replaced is there.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(info.st_mode):
        raise FileExistsError(errno.EEXIST, f"{path} exists and is not a socket; not replacing it", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        code = probe.connect_ex(path)
    finally:
        probe.close()
    if code == errno.ECONNREFUSED:
        return True
    if code == errno.ENOENT:
        return False
    if code in (0, errno.EAGAIN, errno.EINPROGRESS):
        raise OSError(errno.EADDRINUSE, f"another process is listening on {path}")
    raise OSError(code, f"cannot tell whether {path} is in use: {os.strerror(code)}")


# -- adopted sockets ---------------------------------------------------------------


def listen_socket(
    sock: socket.socket,
    *,
    tls_context: SSL.Context | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    name: str | None = None,
) -> Listener:
    """Adopt a socket that is already bound and listening (stdlib or gevent).

    The listener takes ownership: closing it closes the socket.

    Raises:
        ValueError: the socket is not a listening stream socket.
    """
    if not isinstance(sock, socket.socket):
        raise TypeError(f"listen_socket needs a socket object, not {type(sock).__name__}")
    if sock.type != socket.SOCK_STREAM:
        raise ValueError(f"a listener needs a stream socket, not {sock.type!r}")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ValueError("that socket is not listening; call listen() on it first")
    if type(sock) is not socket.socket:
        family, type_, proto = sock.family, sock.type, sock.proto
        sock = socket.socket(family, type_, proto, fileno=sock.detach())
    return Listener(sock, tls_context=tls_context, handshake_timeout=handshake_timeout, name=name)


def listen_fd(
    fd: int,
    *,
    tls_context: SSL.Context | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    name: str | None = None,
) -> Listener:
    """Adopt the listening socket at descriptor ``fd`` (inherited from a parent).

    The listener takes ownership of ``fd``; the descriptor is made
    close-on-exec so that it does not leak into processes the server runs.

    Raises:
        ValueError: ``fd`` is not a listening stream socket (the caller keeps
            it).
    """
    sock = socket_at(fd)
    try:
        listener = listen_socket(
            sock, tls_context=tls_context, handshake_timeout=handshake_timeout, name=name
        )
    except ValueError:
        sock.detach()
        raise
    os.set_inheritable(fd, False)
    return listener


def listen_systemd(
    *,
    unset_environment: bool = True,
    tls_context: SSL.Context | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    name: str | None = None,
) -> list[Listener]:
    """Adopt the sockets passed by systemd socket activation.

    Follows ``sd_listen_fds``: the sockets are descriptors 3 to
    ``3 + LISTEN_FDS - 1``, and they are meant for this process only if
    ``LISTEN_PID`` is its pid (otherwise, or if the variables are absent, the
    result is empty). Names from ``LISTEN_FDNAMES`` become the listeners'
    ``name``. With ``unset_environment`` (the default) the three variables
    are removed, so that child processes do not take the sockets for theirs.

    With ``name``, only the sockets of that name are adopted (the others
    stay where they are, for another call), and the environment is kept
    whatever ``unset_environment`` says, so that the other names can still
    be found.
    """
    sockets = _systemd_sockets(unset_environment=unset_environment and name is None)
    listeners: list[Listener] = []
    try:
        for fd, fd_name in sockets:
            if name is None or fd_name == name:
                listeners.append(
                    listen_fd(fd, tls_context=tls_context, handshake_timeout=handshake_timeout, name=fd_name)
                )
    except BaseException:
        for listener in listeners:  # adopted already: ours to close
            listener.close()
        raise
    return listeners


def _systemd_sockets(*, unset_environment: bool) -> list[tuple[int, str | None]]:
    """The (descriptor, name) pairs systemd passed to this process."""
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
        count = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    if unset_environment:
        for variable in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(variable, None)
    if pid != os.getpid() or count < 1:
        return []
    return [
        (_SD_LISTEN_FDS_START + index, names[index] if index < len(names) and names[index] else None)
        for index in range(count)
    ]


# -- URLs --------------------------------------------------------------------------


def listen_url(
    url: str,
    *,
    backlog: int = DEFAULT_BACKLOG,
    reuse_port: bool = False,
    mode: int | None = None,
    tls_context: SSL.Context | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> list[Listener]:
    """Make the listeners a ``--bind`` URL names.

    The grammar is :mod:`greenflow.addresses`':

    - ``tcp://HOST:PORT`` (an IPv6 host in brackets: ``tcp://[::1]:8000``),
      or just ``HOST:PORT``;
    - ``tls://HOST:PORT``: TCP with TLS; needs ``tls_context``;
    - ``unix:/path/to/socket`` (also ``unix:///path``, or a relative
      ``unix:name``), ``unix:@name`` for the abstract namespace, and
      ``unix+tls:...`` for TLS over a Unix socket;
    - ``fd://N``: the listening socket inherited at descriptor N;
    - ``systemd:``: every socket passed by systemd socket activation, and
      ``systemd:NAME`` those named NAME in ``LISTEN_FDNAMES`` (an empty list
      when there are none).

    ``tls_context`` applies to ``tls://`` and ``unix+tls:`` only; ``backlog``,
    ``reuse_port`` and ``mode`` apply where they mean something.

    Raises:
        ValueError: the URL is malformed, a TLS URL has no context, or
            ``fd://N`` is not a listening stream socket; the message names
            the URL.
        OSError: binding or listening failed; the message names the URL and
            the cause, and ``errno`` is the system's.
    """
    endpoint = parse_url(url, kind="a listener URL")
    if endpoint.tls and tls_context is None:
        raise ValueError(f"{url!r} asks for TLS, but no TLS context was given")
    context = tls_context if endpoint.tls else None
    try:
        return _listen_endpoint(
            endpoint,
            backlog=backlog,
            reuse_port=reuse_port,
            mode=mode,
            context=context,
            handshake_timeout=handshake_timeout,
        )
    except (OSError, ValueError) as exc:
        raise _listen_error(exc, endpoint) from exc


def _listen_endpoint(
    endpoint: Endpoint,
    *,
    backlog: int,
    reuse_port: bool,
    mode: int | None,
    context: SSL.Context | None,
    handshake_timeout: float,
) -> list[Listener]:
    scheme = endpoint.scheme
    if scheme is Scheme.SYSTEMD:
        return listen_systemd(
            tls_context=context, handshake_timeout=handshake_timeout, name=endpoint.name or None
        )
    if scheme is Scheme.FD:
        return [listen_fd(endpoint.fd, tls_context=context, handshake_timeout=handshake_timeout)]
    if scheme in (Scheme.UNIX, Scheme.UNIX_TLS):
        return [
            listen_unix(
                endpoint.path,
                mode=mode,
                backlog=backlog,
                tls_context=context,
                handshake_timeout=handshake_timeout,
            )
        ]
    if scheme is Scheme.VSOCK:
        raise ValueError("vsock listeners are not supported yet (there is connect_vsock, no listen_vsock)")
    return [
        listen_tcp(
            endpoint.host,
            endpoint.port,
            backlog=backlog,
            reuse_port=reuse_port,
            tls_context=context,
            handshake_timeout=handshake_timeout,
        )
    ]


def _listen_error(exc: OSError | ValueError, endpoint: Endpoint) -> OSError | ValueError:
    """The one place a failed bind becomes an error that names its URL."""
    url = endpoint.url or str(endpoint)
    if isinstance(exc, ValueError):
        return ValueError(f"cannot listen on {url}: {exc}")
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EBADF and endpoint.scheme is Scheme.FD:
        reason = f"descriptor {endpoint.fd} is not open"
    elif exc.errno == errno.ENOENT and endpoint.scheme in (Scheme.UNIX, Scheme.UNIX_TLS):
        folder = os.path.dirname(endpoint.path) or "."
        reason = f"{reason} (is there a folder {folder}?)"
    return OSError(exc.errno, f"cannot listen on {url}: {reason}")  # errno picks the subclass
