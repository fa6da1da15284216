"""vsock: listening on AF_VSOCK, and reaching a guest's vsock through a VMM's Unix socket.

- :func:`listen_vsock` binds an AF_VSOCK stream socket and returns a
  :class:`~greenflow.Listener` for :class:`~greenflow.Server`, whose flows
  may be framed (:class:`FramedListener`, a listener layer making
  :class:`~greenflow.FramedFlow`; opt-in: Linux AF_VSOCK keeps shutdown, so
  the hvsock framing is needed only by peers that speak it). Connecting is
  :func:`greenflow.connect_vsock`.
- :func:`connect_vsock_uds` is the host side of Firecracker's and Cloud
  Hypervisor's vsock: the VMM listens on a Unix socket, the client writes
  ``CONNECT <port>\\n`` and the VMM answers ``OK <number>\\n`` (the number
  is the VMM's host-side port of the connection, not the guest's), then the
  stream goes to the guest's listener on that port. A VMM that cannot reach
  the port closes the connection instead.

CIDs: :data:`VMADDR_CID_ANY` binds every CID of this machine,
:data:`VMADDR_CID_LOCAL` (1) is this machine over the kernel's vsock
loopback (``vsock_loopback``), 2 is the host as a guest sees it.
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING, Final

from .errors import BrokenError, FlowError, FlowTimeout
from .flow import Flow
from .framed import DEFAULT_CLOSE_TIMEOUT, FramedFlow
from .kit import check_timeout, start_timer
from .listener import Listener, ListenerLayer
from .listeners import _TLS_DEFAULT, DEFAULT_BACKLOG, _TLSDefault, _with_tls
from .sockets import connect_unix

if TYPE_CHECKING:
    from OpenSSL import SSL

__all__ = [
    "DEFAULT_UDS_CONNECT_TIMEOUT",
    "VMADDR_CID_ANY",
    "VMADDR_CID_HOST",
    "VMADDR_CID_LOCAL",
    "VMADDR_PORT_ANY",
    "FramedListener",
    "connect_vsock_uds",
    "listen_vsock",
]

#: Bind every CID of this machine.
VMADDR_CID_ANY: Final[int] = getattr(socket, "VMADDR_CID_ANY", 0xFFFFFFFF)
#: This machine, over the kernel's vsock loopback (Linux 5.6 and later).
VMADDR_CID_LOCAL: Final[int] = getattr(socket, "VMADDR_CID_LOCAL", 1)
#: The host, as a guest reaches it.
VMADDR_CID_HOST: Final[int] = getattr(socket, "VMADDR_CID_HOST", 2)
#: Bind any free port.
VMADDR_PORT_ANY: Final[int] = getattr(socket, "VMADDR_PORT_ANY", 0xFFFFFFFF)

#: Seconds connecting to a VMM's socket and its ``OK`` answer may take when
#: the caller gives no bound: a VMM that never answers must not hang us.
DEFAULT_UDS_CONNECT_TIMEOUT: Final = 10.0

#: The longest answer line a VMM sends (``OK 4294967295\n`` is 14 bytes).
_MAX_ANSWER: Final = 32
_U32: Final = 0xFFFFFFFF


class FramedListener(ListenerLayer):
    """A listener whose flows are :class:`~greenflow.FramedFlow` over the inner listener's.

    Its URL is the inner one's with ``framed`` added (``vsock+framed://``);
    a TLS layer over it runs TLS over the framing (``vsock+framed+tls://``).

    Attributes:
        close_timeout: the framed flows' ``close_timeout``.
    """

    __slots__ = ("close_timeout",)

    scheme = "framed"

    def __init__(self, listener: Listener, *, close_timeout: float = DEFAULT_CLOSE_TIMEOUT) -> None:
        limit = check_timeout(close_timeout)
        if limit is None:
            raise ValueError("close_timeout must be a number of seconds: a silent peer must not hold a flow")
        super().__init__(listener)
        self.close_timeout = limit

    def upgrade(self, flow: Flow) -> Flow:
        """Frame ``flow``: nothing is exchanged, so this never waits."""
        return FramedFlow(flow, close_timeout=self.close_timeout)


def listen_vsock(
    cid: int,
    port: int,
    *,
    framed: bool = False,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    backlog: int = DEFAULT_BACKLOG,
    tls_context: SSL.Context | None = None,
    handshake_timeout: float | _TLSDefault | None = _TLS_DEFAULT,
) -> Listener:
    """Listen on AF_VSOCK ``cid:port``; the listener's URL is ``vsock://CID:PORT``.

    Args:
        cid: :data:`VMADDR_CID_ANY` for every CID of this machine, or one
            CID (:data:`VMADDR_CID_LOCAL` for loopback only).
        port: the port; :data:`VMADDR_PORT_ANY` picks a free one (read it
            from the listener's ``address``).
        framed: wrap each accepted flow in a :class:`~greenflow.FramedFlow`
            (a :class:`FramedListener` over the socket listener; the clients
            must speak hvsock's protocol too).
        close_timeout: the framed flows' ``close_timeout``.
        tls_context: run a TLS server handshake on each flow (over the
            framing when framed), as for :func:`~greenflow.listen_tcp`.

    Raises:
        TypeError, ValueError: ``cid`` or ``port`` is not a 32-bit number.
        OSError: the kernel refused (no vsock support: ``EAFNOSUPPORT``;
            the CID is not this machine's, or no loopback: ``EADDRNOTAVAIL``
            or ``ENODEV``; the port is taken: ``EADDRINUSE``). The message
            names the address; ``errno`` is the kernel's.
    """
    address = (_check_u32(cid, "cid"), _check_u32(port, "port"))
    check_timeout(close_timeout)
    if not hasattr(socket, "AF_VSOCK"):  # pragma: no cover - not Linux
        raise OSError(errno.EAFNOSUPPORT, "AF_VSOCK is not available on this system")
    try:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    except OSError as exc:  # pragma: no cover - a kernel without the vsock module
        raise OSError(exc.errno, f"cannot make a vsock socket: {exc.strerror}") from exc
    try:
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on vsock://{cid}:{port}: {exc.strerror}") from exc
    except BaseException:  # pragma: no cover - an interruption between two system calls
        sock.close()
        raise
    listener = Listener(sock)
    if framed:
        listener = FramedListener(listener, close_timeout=close_timeout)
    return _with_tls(listener, tls_context, handshake_timeout)


def connect_vsock_uds(
    path: str,
    port: int,
    *,
    timeout: float | None = None,
    connect_timeout: float | None = DEFAULT_UDS_CONNECT_TIMEOUT,
    framed: bool = False,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> Flow:
    """Connect to vsock ``port`` of a guest through its VMM's Unix socket at ``path``.

    Writes ``CONNECT <port>\\n`` and reads the VMM's answer up to its newline
    and not a byte further (what follows is the guest's). The answer must be
    ``OK`` and a decimal number; the connection is then the guest's.

    Args:
        timeout: the flow's :attr:`~greenflow.Flow.timeout`.
        connect_timeout: the bound on connecting and the VMM's answer
            (``None``: no bound).
        framed: return a :class:`~greenflow.FramedFlow` over the connection.
        close_timeout: the framed flow's ``close_timeout``.

    Raises:
        BrokenError: the socket cannot be reached, or the VMM refused the
            port (it closed the connection) or answered something else than
            ``OK <number>``; the message names the path, the port and the
            answer.
        FlowTimeout: no answer within ``connect_timeout``.
    """
    _check_u32(port, "port")
    check_timeout(timeout)
    check_timeout(close_timeout)
    limit = check_timeout(connect_timeout)
    where = f"vsock port {port} through {path!r}"
    timer = (
        start_timer(limit, f"connecting to {where}", setting="connect_timeout") if limit is not None else None
    )
    flow: Flow | None = None
    try:
        flow = connect_unix(path)
        flow.write(b"CONNECT %d\n" % port)
        _read_answer(flow, where)
    except FlowTimeout:
        _close(flow)
        raise
    except FlowError as exc:
        _close(flow)
        if where in str(exc):
            raise
        raise BrokenError(f"cannot connect to {where}: {exc}") from exc
    except BaseException:
        _close(flow)
        raise
    finally:
        if timer is not None:
            timer.close()
    flow.timeout = timeout
    return FramedFlow(flow, close_timeout=close_timeout) if framed else flow


def _read_answer(flow: Flow, where: str) -> None:
    """Read the VMM's answer line, one byte at a time, and check it."""
    line = bytearray()
    while not line.endswith(b"\n"):
        if len(line) >= _MAX_ANSWER:
            raise BrokenError(f"cannot connect to {where}: the VMM answered {bytes(line)!r}..., not OK")
        byte = flow.read(1)
        if not byte:
            if line:
                raise BrokenError(f"cannot connect to {where}: the VMM closed after {bytes(line)!r}")
            raise BrokenError(
                f"cannot connect to {where}: the VMM closed the connection (nothing listens there?)"
            )
        line += byte
    words = line[:-1].split(b" ")
    if len(words) != 2 or words[0] != b"OK" or not words[1].isdigit() or int(words[1]) > _U32:
        raise BrokenError(f"cannot connect to {where}: the VMM answered {bytes(line)!r}, not OK <port>")


def _close(flow: Flow | None) -> None:
    if flow is not None:
        flow.close()


def _check_u32(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an integer, not {type(value).__name__}")
    if not 0 <= value <= _U32:
        raise ValueError(f"{what} must be between 0 and {_U32}, not {value}")
    return value
