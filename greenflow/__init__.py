"""greenflow: blocking-style network flows on gevent.

A *flow* is one endpoint of a reliable, ordered, bidirectional byte stream,
read and written with plain blocking calls that yield to the gevent hub. The
contract every flow keeps is written on :class:`Flow`.
"""

from __future__ import annotations

from .errors import BrokenError, BusyError, ClosedError, FlowError, FlowTimeout
from .flow import DEFAULT_READ_SIZE, Flow, Shutdown
from .pipes import PipeFlow, from_pipes, pipe_pair
from .sockets import (
    SocketFlow,
    connect_tcp,
    connect_unix,
    connect_vsock,
    from_fd,
    from_socket,
    socketpair,
)

__all__ = [
    "DEFAULT_READ_SIZE",
    "BrokenError",
    "BusyError",
    "ClosedError",
    "Flow",
    "FlowError",
    "FlowTimeout",
    "PipeFlow",
    "Shutdown",
    "SocketFlow",
    "connect_tcp",
    "connect_unix",
    "connect_vsock",
    "from_fd",
    "from_pipes",
    "from_socket",
    "pipe_pair",
    "socketpair",
]

__version__ = "0.1.0"
