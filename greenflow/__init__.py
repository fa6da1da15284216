"""greenflow: blocking-style network flows on gevent.

A *flow* is one endpoint of a reliable, ordered, bidirectional byte stream,
read and written with plain blocking calls that yield to the gevent hub. The
contract every flow keeps is written on :class:`Flow`.

The TLS names (:class:`TLSFlow`, :func:`connect_tls`, the TLS errors) are
loaded on first use: importing pyOpenSSL and cryptography costs more than
the rest of greenflow together, and a program that never uses TLS should not
pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .adapters import FlowIO, FlowSocket, socket_bridge
from .buffered import BufferedFlow
from .copying import CopyStats, ProxyStats, copy, proxy
from .errors import (
    BrokenError,
    BusyError,
    ClosedError,
    FlowError,
    FlowTimeout,
    IncompleteReadError,
    LimitOverrunError,
)
from .flow import DEFAULT_READ_SIZE, Flow, Shutdown
from .framed import FramedFlow
from .listeners import (
    Listener,
    ListenerLayer,
    listen_fd,
    listen_socket,
    listen_systemd,
    listen_tcp,
    listen_tls,
    listen_unix,
    listen_url,
)
from .pipes import PipeFlow, from_pipes, pipe_pair
from .scope import Scope
from .server import Server, idle
from .sockets import (
    SocketFlow,
    connect_tcp,
    connect_unix,
    connect_vsock,
    from_fd,
    from_socket,
    socketpair,
)
from .vsock import connect_vsock_uds, listen_vsock
from .workers import Supervisor

if TYPE_CHECKING:
    from .tls import TLSCertificateError, TLSError, TLSFlow, TLSTruncatedError, connect_tls

__all__ = [
    "DEFAULT_READ_SIZE",
    "BrokenError",
    "BufferedFlow",
    "BusyError",
    "ClosedError",
    "CopyStats",
    "Flow",
    "FlowError",
    "FlowIO",
    "FlowSocket",
    "FlowTimeout",
    "FramedFlow",
    "IncompleteReadError",
    "LimitOverrunError",
    "Listener",
    "ListenerLayer",
    "PipeFlow",
    "ProxyStats",
    "Scope",
    "Server",
    "Shutdown",
    "Supervisor",
    "SocketFlow",
    "TLSCertificateError",
    "TLSError",
    "TLSFlow",
    "TLSTruncatedError",
    "connect_tcp",
    "connect_tls",
    "connect_unix",
    "connect_vsock",
    "connect_vsock_uds",
    "copy",
    "from_fd",
    "from_pipes",
    "from_socket",
    "idle",
    "listen_fd",
    "listen_socket",
    "listen_systemd",
    "listen_tcp",
    "listen_tls",
    "listen_unix",
    "listen_url",
    "listen_vsock",
    "pipe_pair",
    "proxy",
    "socket_bridge",
    "socketpair",
]

__version__ = "0.1.0"

_FROM_TLS = frozenset({"TLSCertificateError", "TLSError", "TLSFlow", "TLSTruncatedError", "connect_tls"})


def __getattr__(name: str) -> object:
    if name in _FROM_TLS:
        from . import tls  # noqa: PLC0415 - loaded on first use, see the module docstring

        value = getattr(tls, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'greenflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The TLS names are listed before they are loaded, so that dir() and
    # help() show the whole API; help() loads them when it documents them.
    return sorted(set(globals()) | _FROM_TLS)
