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

The :class:`~greenflow.listener.Listener` class and the layers over it are
in :mod:`greenflow.listener`. The socket listener knows nothing of TLS: the
``tls_context`` keyword these functions take is a shortcut that wraps the
new listener in a :class:`greenflow.tls.TLSListener`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import os
import secrets
import socket
import stat
from typing import TYPE_CHECKING, Final

from .addresses import Endpoint, Scheme, SocketAddress, numeric_address, parse_url
from .listener import Listener, ListenerLayer
from .sockets import socket_at

if TYPE_CHECKING:
    from OpenSSL import SSL

    from .tls import DEFAULT_HANDSHAKE_TIMEOUT

__all__ = [
    "DEFAULT_BACKLOG",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "Listener",
    "ListenerLayer",
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


class _TLSDefault(enum.Enum):
    """Stands for ``greenflow.tls.DEFAULT_HANDSHAKE_TIMEOUT`` in signatures here.

    The value lives in the TLS package, which this module must not import
    (a plain server never loads pyOpenSSL): the legacy TLS keywords take this
    marker as their default and the TLS layer puts its own default in.
    """

    HANDSHAKE_TIMEOUT = "DEFAULT_HANDSHAKE_TIMEOUT"

    def __repr__(self) -> str:
        return self.value


_TLS_DEFAULT: Final = _TLSDefault.HANDSHAKE_TIMEOUT


def __getattr__(name: str) -> object:
    if name == "DEFAULT_HANDSHAKE_TIMEOUT":  # kept here for old imports; it lives in greenflow.tls
        from .tls import DEFAULT_HANDSHAKE_TIMEOUT  # noqa: PLC0415 - loads pyOpenSSL: on demand only

        return DEFAULT_HANDSHAKE_TIMEOUT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _with_tls(
    listener: Listener, context: SSL.Context | None, handshake_timeout: float | _TLSDefault | None
) -> Listener:
    """The ``tls_context`` shortcut of the constructors: wrap in a TLS layer."""
    if context is None:
        return listener
    try:
        from .tls import TLSListener  # noqa: PLC0415 - a plain server never loads pyOpenSSL

        if handshake_timeout is _TLS_DEFAULT:
            return TLSListener(listener, context)
        return TLSListener(listener, context, handshake_timeout=handshake_timeout)
    except BaseException:
        listener.close()
        raise


# -- TCP ---------------------------------------------------------------------------


def listen_tcp(
    host: str,
    port: int,
    *,
    backlog: int = DEFAULT_BACKLOG,
    reuse_port: bool = False,
    tls_context: SSL.Context | None = None,
    handshake_timeout: float | _TLSDefault | None = _TLS_DEFAULT,
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
    return _with_tls(Listener(sock), tls_context, handshake_timeout)


def listen_tls(
    host: str,
    port: int,
    context: SSL.Context,
    *,
    handshake_timeout: float | _TLSDefault | None = _TLS_DEFAULT,
    backlog: int = DEFAULT_BACKLOG,
    reuse_port: bool = False,
) -> Listener:
    """Listen on TCP ``host:port`` and serve TLS with ``context``.

    Returns a :class:`greenflow.tls.TLSListener` over ``listen_tcp(host,
    port, ...)``; ``context`` is a server context from ``greenflow.tls``, and
    ``handshake_timeout`` defaults to ``greenflow.tls.DEFAULT_HANDSHAKE_TIMEOUT``.
    """
    return _with_tls(
        listen_tcp(host, port, backlog=backlog, reuse_port=reuse_port), context, handshake_timeout
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
    handshake_timeout: float | _TLSDefault | None = _TLS_DEFAULT,
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
    return _with_tls(Listener(sock, address=path, unlink=unlink), tls_context, handshake_timeout)


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
    handshake_timeout: float | _TLSDefault | None = _TLS_DEFAULT,
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
    return _with_tls(Listener(sock, name=name), tls_context, handshake_timeout)


def listen_fd(
    fd: int,
    *,
    tls_context: SSL.Context | None = None,
    handshake_timeout: float | _TLSDefault | None = _TLS_DEFAULT,
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
    handshake_timeout: float | _TLSDefault | None = _TLS_DEFAULT,
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
    handshake_timeout: float | _TLSDefault | None = _TLS_DEFAULT,
) -> list[Listener]:
    """Make the listeners a ``--bind`` URL names.

    The grammar is :mod:`greenflow.addresses`':

    - ``tcp://HOST:PORT`` (an IPv6 host in brackets: ``tcp://[::1]:8000``),
      or just ``HOST:PORT``;
    - ``tls://HOST:PORT``: TCP with TLS; needs ``tls_context``;
    - ``unix:/path/to/socket`` (also ``unix:///path``, or a relative
      ``unix:name``), ``unix:@name`` for the abstract namespace, and
      ``unix+tls:...`` for TLS over a Unix socket;
    - ``tcp+proxy://HOST:PORT`` and ``unix+proxy:/path``: a PROXY protocol
      header comes first (:class:`greenflow.proxy_protocol.ProxyProtocolListener`,
      the header required, no source trusted without one); ``tcp+proxy+tls://``
      and ``unix+proxy+tls:`` run TLS after the header;
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
    handshake_timeout: float | _TLSDefault | None,
) -> list[Listener]:
    scheme = endpoint.scheme
    if endpoint.proxy:  # the plain listener, the PROXY layer on it, then TLS after the header
        plain = dataclasses.replace(endpoint, scheme=Scheme.TCP if endpoint.tcp else Scheme.UNIX)
        listeners = _listen_endpoint(
            plain, backlog=backlog, reuse_port=reuse_port, mode=mode, context=None, handshake_timeout=None
        )
        from .proxy_protocol import ProxyProtocolListener  # noqa: PLC0415 - it builds on this module

        return [
            _with_tls(ProxyProtocolListener(listener), context, handshake_timeout) for listener in listeners
        ]
    if scheme is Scheme.SYSTEMD:
        return listen_systemd(
            tls_context=context, handshake_timeout=handshake_timeout, name=endpoint.name or None
        )
    if scheme is Scheme.FD:
        return [listen_fd(endpoint.fd, tls_context=context, handshake_timeout=handshake_timeout)]
    if endpoint.unix:
        return [
            listen_unix(
                endpoint.path,
                mode=mode,
                backlog=backlog,
                tls_context=context,
                handshake_timeout=handshake_timeout,
            )
        ]
    if endpoint.vsock:
        from .vsock import listen_vsock  # noqa: PLC0415 - vsock.py builds on this module

        return [
            listen_vsock(
                endpoint.cid,
                endpoint.port,
                framed=endpoint.framed,
                backlog=backlog,
                tls_context=context,
                handshake_timeout=handshake_timeout,
            )
        ]
    if scheme in (Scheme.VSOCK_UDS, Scheme.VSOCK_UDS_FRAMED):
        raise ValueError("a vsock+uds: URL is for connecting to a guest through its VMM, not for listening")
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
    if (exc.strerror or "").startswith("cannot listen on "):
        return exc  # named already, by the listen_* function itself (listen_vsock)
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EBADF and endpoint.scheme is Scheme.FD:
        reason = f"descriptor {endpoint.fd} is not open"
    elif exc.errno == errno.ENOENT and endpoint.unix:
        folder = os.path.dirname(endpoint.path) or "."
        reason = f"{reason} (is there a folder {folder}?)"
    return OSError(exc.errno, f"cannot listen on {url}: {reason}")  # errno picks the subclass
