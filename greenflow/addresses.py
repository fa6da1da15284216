"""Addresses: the URL grammar, host parsing, and how addresses are written.

One module says what the URLs of ``--bind``, :func:`greenflow.listen_url`
and ``greenflow connect`` mean, and how a socket address is shown in reprs,
logs and error messages:

================================  ==============================================
``tcp://HOST:PORT``               TCP; an IPv6 host in brackets (``[::1]``)
``HOST:PORT``                     the same, without the scheme
``tls://HOST:PORT``               TLS over TCP
``unix:/path``, ``unix:///path``  a Unix socket file (``unix:name``: relative)
``unix:@name``                    a Unix socket in the abstract namespace
``unix+tls:...``                  TLS over a Unix socket, same paths
``tcp+proxy://HOST:PORT``         a listener that reads a PROXY protocol header
                                  first (``unix+proxy:``; ``+proxy+tls`` for TLS
                                  after the header)
``fd://N`` (or ``fd:N``)          the socket at descriptor N
``systemd:``, ``systemd:NAME``    sockets from systemd socket activation (all,
                                  or those named NAME in ``LISTEN_FDNAMES``)
``vsock://CID:PORT``              AF_VSOCK
``vsock+tls://CID:PORT``          TLS over AF_VSOCK
``vsock+framed://CID:PORT``       AF_VSOCK with hvsock's framed shutdown
                                  protocol (``vsock+framed+tls://``: TLS over it)
``vsock+uds:/path:PORT``          a guest's vsock PORT through its VMM's Unix
                                  socket (Firecracker, Cloud Hypervisor);
                                  ``vsock+uds+framed:`` with the framing
================================  ==============================================

:func:`parse_url` turns one into an :class:`Endpoint`, a small frozen value
whose :class:`Scheme` says which of its fields mean something. A malformed
URL is a ``ValueError`` whose message quotes the URL and says what is wrong.

This module imports no gevent and opens no socket: it is pure parsing and
formatting (numeric hosts are recognised with ``inet_pton``; names are left
to the resolver of whoever connects or binds).
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass, field
from typing import Final, TypeAlias

__all__ = [
    "Endpoint",
    "Scheme",
    "SocketAddress",
    "format_address",
    "numeric_family",
    "numeric_address",
    "parse_host_port",
    "parse_url",
    "url_for",
]

#: The largest port of TCP; vsock ports and CIDs are 32-bit.
_MAX_TCP_PORT: Final = 65535
_MAX_VSOCK: Final = 2**32 - 1

#: What may not appear in a host: these start a path, query, fragment or user.
_NOT_IN_HOST: Final = frozenset("/?#@ \t\r\n[]")


class Scheme(enum.Enum):
    """What kind of socket a URL names."""

    TCP = "tcp"
    TLS = "tls"
    UNIX = "unix"
    UNIX_TLS = "unix+tls"
    TCP_PROXY = "tcp+proxy"
    TCP_PROXY_TLS = "tcp+proxy+tls"
    UNIX_PROXY = "unix+proxy"
    UNIX_PROXY_TLS = "unix+proxy+tls"
    FD = "fd"
    SYSTEMD = "systemd"
    VSOCK = "vsock"
    VSOCK_TLS = "vsock+tls"
    VSOCK_FRAMED = "vsock+framed"
    VSOCK_FRAMED_TLS = "vsock+framed+tls"
    VSOCK_UDS = "vsock+uds"
    VSOCK_UDS_FRAMED = "vsock+uds+framed"


#: An IP socket address: ``(host, port)``, or IPv6's ``(host, port, flowinfo, scope_id)``.
SocketAddress: TypeAlias = tuple[str, int] | tuple[str, int, int, int]

_SCHEMES: Final = {scheme.value: scheme for scheme in Scheme}
_TLS_SCHEMES: Final = frozenset(
    {
        Scheme.TLS,
        Scheme.UNIX_TLS,
        Scheme.TCP_PROXY_TLS,
        Scheme.UNIX_PROXY_TLS,
        Scheme.VSOCK_TLS,
        Scheme.VSOCK_FRAMED_TLS,
    }
)
_PROXY_SCHEMES: Final = frozenset(
    {Scheme.TCP_PROXY, Scheme.TCP_PROXY_TLS, Scheme.UNIX_PROXY, Scheme.UNIX_PROXY_TLS}
)
_TCP_SCHEMES: Final = frozenset({Scheme.TCP, Scheme.TLS, Scheme.TCP_PROXY, Scheme.TCP_PROXY_TLS})
_UNIX_SCHEMES: Final = frozenset({Scheme.UNIX, Scheme.UNIX_TLS, Scheme.UNIX_PROXY, Scheme.UNIX_PROXY_TLS})
_FRAMED_SCHEMES: Final = frozenset({Scheme.VSOCK_FRAMED, Scheme.VSOCK_FRAMED_TLS, Scheme.VSOCK_UDS_FRAMED})
_VSOCK_SCHEMES: Final = frozenset(
    {Scheme.VSOCK, Scheme.VSOCK_TLS, Scheme.VSOCK_FRAMED, Scheme.VSOCK_FRAMED_TLS}
)


@dataclass(frozen=True)
class Endpoint:
    """A parsed URL: the scheme and the fields that scheme uses.

    - ``TCP``, ``TLS``: ``host`` (brackets removed) and ``port``;
    - ``UNIX``, ``UNIX_TLS``: ``path``, starting with NUL for the abstract
      namespace (as ``socket.bind`` takes it);
    - ``FD``: ``fd``;
    - ``SYSTEMD``: ``name`` (empty: every activated socket);
    - ``VSOCK`` and its ``+tls``, ``+framed`` and ``+framed+tls`` forms:
      ``cid`` and ``port``;
    - ``VSOCK_UDS``, ``VSOCK_UDS_FRAMED``: ``path`` (the VMM's Unix socket)
      and ``port`` (the guest's vsock port).

    The other fields keep their defaults. ``url`` is the text as given (for
    messages); ``str()`` gives the canonical spelling.
    """

    scheme: Scheme
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = 0
    name: str = ""
    cid: int = 0
    url: str = field(default="", compare=False)

    @property
    def tls(self) -> bool:
        """Whether the URL asks for TLS (``tls://``, ``unix+tls:``, ``vsock+tls://``, ...)."""
        return self.scheme in _TLS_SCHEMES

    @property
    def framed(self) -> bool:
        """Whether the URL asks for hvsock's framed protocol (``vsock+framed://``, ...)."""
        return self.scheme in _FRAMED_SCHEMES

    @property
    def proxy(self) -> bool:
        """Whether a listener URL asks for a PROXY protocol header first (``tcp+proxy://``, ...)."""
        return self.scheme in _PROXY_SCHEMES

    @property
    def tcp(self) -> bool:
        """Whether the URL names a TCP address (``tcp://``, ``tls://`` and the ``+proxy`` forms)."""
        return self.scheme in _TCP_SCHEMES

    @property
    def unix(self) -> bool:
        """Whether the URL names a Unix socket (``unix:``, ``unix+tls:`` and the ``+proxy`` forms)."""
        return self.scheme in _UNIX_SCHEMES

    @property
    def vsock(self) -> bool:
        """Whether the URL names an AF_VSOCK socket (``vsock://`` and its ``+`` forms)."""
        return self.scheme in _VSOCK_SCHEMES

    def __str__(self) -> str:
        scheme = self.scheme
        if scheme in _TCP_SCHEMES:
            return f"{scheme.value}://{_host_text(self.host)}:{self.port}"
        if scheme in _UNIX_SCHEMES:
            return f"{scheme.value}:{_path_text(self.path)}"
        if scheme is Scheme.FD:
            return f"fd://{self.fd}"
        if scheme is Scheme.SYSTEMD:
            return f"systemd:{self.name}"
        if scheme in (Scheme.VSOCK_UDS, Scheme.VSOCK_UDS_FRAMED):
            return f"{scheme.value}:{self.path}:{self.port}"
        return f"{scheme.value}://{self.cid}:{self.port}"

    def __repr__(self) -> str:
        return f"Endpoint({str(self)!r})"


# -- parsing -----------------------------------------------------------------------


def parse_url(url: str, *, kind: str = "an address URL") -> Endpoint:
    """Parse one URL of the grammar above.

    ``kind`` is how error messages call what was expected (``"a listener
    URL"``, ``"a URL to connect to"``).

    Raises:
        ValueError: the URL is malformed; the message quotes it and says why.
    """
    if not isinstance(url, str):
        raise TypeError(f"a URL is a str, not {type(url).__name__}")
    prefix, colon, rest = url.partition(":")
    scheme = _SCHEMES.get(prefix.lower()) if colon else None
    if scheme is None:
        if "://" in url:
            raise _error(url, kind, f"unknown scheme {prefix!r} (known: {', '.join(_SCHEMES)})")
        if not colon:
            raise _error(url, kind, "try tcp://127.0.0.1:8000, unix:/path or HOST:PORT")
        host, port = parse_host_port(url, url, kind=kind)  # HOST:PORT with no scheme
        return Endpoint(Scheme.TCP, host=host, port=port, url=url)
    if scheme in _UNIX_SCHEMES:
        return Endpoint(scheme, path=_unix_path(rest, url, kind), url=url)
    if scheme is Scheme.SYSTEMD:
        name = "" if rest == "//" else rest
        if _NOT_IN_HOST.intersection(name) or ":" in name:
            raise _error(url, kind, f"{name!r} is not a socket name (systemd: or systemd:NAME)")
        return Endpoint(scheme, name=name, url=url)
    if scheme is Scheme.FD:
        number = rest[2:] if rest.startswith("//") else rest
        if not (number.isascii() and number.isdigit()):
            raise _error(url, kind, "it does not name a descriptor number (fd://3)")
        return Endpoint(scheme, fd=int(number), url=url)
    if scheme in (Scheme.VSOCK_UDS, Scheme.VSOCK_UDS_FRAMED):
        path, colon, port_text = rest.rpartition(":")
        if not colon or not path:
            raise _error(url, kind, f"it should look like {scheme.value}:/run/vm/v.sock:PORT")
        port = _number(port_text, _MAX_VSOCK, "port", url, kind)
        return Endpoint(scheme, path=_unix_path(path, url, kind), port=port, url=url)
    if not rest.startswith("//"):
        raise _error(url, kind, f"it should look like {scheme.value}://{_EXAMPLES.get(scheme, 'CID:PORT')}")
    if scheme in _VSOCK_SCHEMES:
        cid, port = _vsock_address(rest[2:], url, kind)
        return Endpoint(scheme, cid=cid, port=port, url=url)
    host, port = parse_host_port(rest[2:], url, kind=kind)
    return Endpoint(scheme, host=host, port=port, url=url)


_EXAMPLES: Final = {scheme: "HOST:PORT" for scheme in _TCP_SCHEMES}


def parse_host_port(text: str, url: str | None = None, *, kind: str = "an address URL") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[IPV6]:PORT`` for IPv6) into the host and the port.

    The brackets are removed from an IPv6 host, which must be numeric (a
    zone such as ``%eth0`` is allowed). One trailing ``/`` is allowed. ``url``
    is what error messages quote (``text`` by default).

    Raises:
        ValueError: no host, no port, a bad port, an IPv6 host without
            brackets, or more than a host and a port (a path, a query, a
            user name).
    """
    url = text if url is None else url
    text = text.removesuffix("/")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _error(url, kind, "its IPv6 host has no closing ']'")
        host, after = text[1:end], text[end + 1 :]
        if _NOT_IN_HOST.intersection(after):
            raise _error(url, kind, _MORE_THAN_HOST)
        if numeric_family(host) != socket.AF_INET6:
            raise _error(url, kind, f"[{host}] is not an IPv6 address")
        if not after.startswith(":"):
            raise _error(url, kind, "it needs a host and a port, as in tcp://[::1]:8000")
        port_text = after[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if _NOT_IN_HOST.intersection(text):
            raise _error(url, kind, _MORE_THAN_HOST)
        if not colon or not host:
            raise _error(url, kind, "it needs a host and a port, as in tcp://127.0.0.1:8000")
        if ":" in host:
            raise _error(url, kind, "an IPv6 host goes in brackets, as in tcp://[::1]:8000")
    return host, _number(port_text, _MAX_TCP_PORT, "port", url, kind)


_MORE_THAN_HOST: Final = "it has more than a host and a port (a path, query or user name)"


def _unix_path(rest: str, url: str, kind: str) -> str:
    if rest.startswith("//") and not rest.startswith("///"):
        raise _error(url, kind, "a Unix socket URL is unix:/path or unix:///path, with no host")
    path = rest[2:] if rest.startswith("///") else rest
    if "\0" in path:
        raise _error(url, kind, "a socket path cannot hold a NUL byte (unix:@name is the abstract namespace)")
    if path.startswith("@"):
        if len(path) == 1:
            raise _error(url, kind, "it names no abstract socket (unix:@name)")
        return "\0" + path[1:]
    if not path:
        raise _error(url, kind, "it names no socket path (unix:/path)")
    return path


def _vsock_address(text: str, url: str, kind: str) -> tuple[int, int]:
    cid_text, colon, port_text = text.removesuffix("/").partition(":")
    if not colon:
        raise _error(url, kind, "it needs a CID and a port, as in vsock://1:1234")
    cid = _number(cid_text, _MAX_VSOCK, "CID", url, kind)
    return cid, _number(port_text, _MAX_VSOCK, "port", url, kind)


def _number(text: str, maximum: int, what: str, url: str, kind: str) -> int:
    if not (text.isascii() and text.isdigit()):
        problem = "no port" if not text and what == "port" else f"a bad {what} {text!r}"
        raise _error(url, kind, f"it has {problem}: a whole number from 0 to {maximum} is needed")
    value = int(text)
    if value > maximum:
        raise _error(url, kind, f"it has a bad {what} {value}: the largest is {maximum}")
    return value


def _error(url: str, kind: str, problem: str) -> ValueError:
    return ValueError(f"{url!r} is not {kind}: {problem}")


# -- hosts -------------------------------------------------------------------------


def numeric_family(host: str) -> int | None:
    """``AF_INET`` or ``AF_INET6`` if ``host`` is a numeric address, else ``None``.

    An IPv6 zone (``fe80::1%eth0``) is allowed; brackets are not.
    """
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host.split("%", 1)[0])
        except (OSError, ValueError):
            continue
        return family
    return None


def numeric_address(host: str, port: int) -> tuple[int, SocketAddress] | None:
    """``(family, sockaddr)`` for a numeric host, or ``None`` for a name.

    The IPv6 socket address is the 4-tuple, with the zone resolved to its
    scope id; no name resolution ever happens here.
    """
    family = numeric_family(host)
    if family is None:
        return None
    if family == socket.AF_INET:
        return family, (host, port)
    info = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    address: SocketAddress = info[0][4]  # type: ignore[assignment]  # IPv6: the 4-tuple
    return family, address


# -- formatting --------------------------------------------------------------------


def format_address(address: object) -> str:
    """An address as people read it: ``127.0.0.1:80``, ``[::1]:80``, ``/run/app.sock``.

    An abstract Unix name is shown as ``@name``, a vsock address as
    ``vsock://CID:PORT``, an unnamed socket (an empty name) as such.
    """
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        if isinstance(host, int):
            return f"vsock://{host}:{port}"
        return f"{_host_text(str(host))}:{port}"
    if isinstance(address, bytes):
        address = address.decode(errors="replace")
    if not address:
        return "an unnamed socket"
    return _path_text(str(address))


def url_for(address: object, *, tls: bool = False) -> str:
    """The URL that names ``address`` (a socket address), as ``--bind`` takes it.

    ``(host, port)`` gives ``tcp://`` (``tls://`` with ``tls``), ``(cid,
    port)`` with an int CID ``vsock://``, and a path ``unix:`` (``unix+tls:``).
    """
    if isinstance(address, tuple) and len(address) >= 2:
        if isinstance(address[0], int):
            return format_address(address)
        return ("tls://" if tls else "tcp://") + format_address(address)
    if isinstance(address, bytes):
        address = address.decode(errors="replace")
    return ("unix+tls:" if tls else "unix:") + _path_text(str(address))


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _path_text(path: str) -> str:
    return "@" + path[1:] if path.startswith("\0") else path
