"""A socket-like adapter: what stdlib and popular clients call on a socket, over any flow.

``FlowSocket(flow)`` has the calls ``http.client``, ``smtplib``, ``imaplib``,
``poplib`` and redis-py make on their socket, with the standard library's
semantics, so such a client runs over TLS on a Unix socket, a pipe, an
in-memory pair or vsock without changes: hand it the adapter where it would
have made its socket (``HTTPConnection.sock``, ``SMTP._get_socket``,
``IMAP4._create_socket``, ``POP3._create_socket``, redis-py's
``Connection._connect``; the documentation has the table).

What it maps, and how:

- ``recv``, ``recv_into``, ``send``, ``sendall`` are the flow's ``read``,
  ``read_into`` and ``write`` (``send`` sends everything and says so).
- ``settimeout`` / ``gettimeout`` / ``setblocking`` set the flow's timeout.
  Timeouts raise ``TimeoutError`` (``socket.timeout``); with timeout 0 a
  call that would wait raises ``BlockingIOError`` (``EAGAIN``) instead, as
  a non-blocking socket does. A write cut short that way may have sent part
  of its data, and the flow's writing is broken from then on.
- ``makefile`` returns ``io`` objects over :class:`~greenflow.FlowIO`, and
  counts them as a socket does: ``close()`` closes the flow only once every
  file made from it is closed too (``http.client`` relies on it).
- ``getpeername`` / ``getsockname`` / ``family`` / ``type`` come from the
  flow's addresses (the first flow down the layers that has one); a flow
  with none (an in-memory pair) looks like an unnamed ``AF_UNIX`` socket,
  as a ``socketpair`` does.
- ``setsockopt`` / ``getsockopt`` go to the real socket at the bottom of the
  layers where there is one. Otherwise ``TCP_NODELAY`` and ``SO_KEEPALIVE``
  are remembered and do nothing (they mean nothing on a memory pair) and
  any other option raises ``OSError`` (``ENOPROTOOPT``).
- ``fileno()`` is the descriptor of a plain socket flow, and raises
  ``io.UnsupportedOperation`` pointing to :func:`greenflow.socket_bridge`
  for any other flow (a TLS flow's descriptor carries ciphertext).
- There is no ``_sock`` attribute: gevent.pywsgi probes for one.
"""

from __future__ import annotations

import errno
import io
import socket
from types import TracebackType
from typing import IO, Any, Final, cast

from ..errors import FlowError
from ..flow import Buffer, Flow, Shutdown
from ..sockets import SocketFlow
from ._errors import closed, reraise
from .fileio import FlowIO, no_descriptor

__all__ = ["FlowSocket"]

_NAME: Final = "socket adapter"
_SHUTDOWNS: Final = {
    socket.SHUT_RD: Shutdown.READ,
    socket.SHUT_WR: Shutdown.WRITE,
    socket.SHUT_RDWR: Shutdown.READ_WRITE,
}
#: Options that mean nothing without a real socket, and that clients set anyway.
_HARMLESS: Final = {
    (socket.IPPROTO_TCP, socket.TCP_NODELAY),
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
}


class FlowSocket:
    """A socket-like object over ``flow``, for code written for sockets.

    Args:
        flow: any flow; the adapter owns it (closing the adapter, and every
            file made by :meth:`makefile`, closes the flow).
    """

    __slots__ = ("__weakref__", "_closed", "_file_count", "_flow", "_options")

    def __init__(self, flow: Flow) -> None:
        if not isinstance(flow, Flow):
            raise TypeError(f"FlowSocket needs a Flow, not {type(flow).__name__}")
        self._flow = flow
        self._closed = False
        self._file_count = 0
        self._options: dict[tuple[int, int], int] = {}

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<FlowSocket{state} over {self._flow!r}>"

    @property
    def flow(self) -> Flow:
        """The flow under this adapter."""
        return self._flow

    # -- data ----------------------------------------------------------------------

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Up to ``bufsize`` bytes, as soon as any are there; ``b""`` at EOF."""
        self._check("recv", flags)
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        if bufsize == 0:
            return b""
        try:
            return self._flow.read(bufsize)
        except FlowError as exc:
            reraise(exc, "recv", self._flow, _NAME)

    def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0, flags: int = 0) -> int:
        """As :meth:`recv`, into ``buffer`` (its first ``nbytes`` bytes if given)."""
        self._check("recv_into", flags)
        view = memoryview(buffer).cast("B")
        if nbytes < 0:
            raise ValueError("negative buffersize in recv_into")
        if nbytes > len(view):
            raise ValueError("buffer too small for requested bytes")
        if nbytes:
            view = view[:nbytes]
        if not len(view):
            return 0
        try:
            return self._flow.read_into(view)
        except FlowError as exc:
            reraise(exc, "recv_into", self._flow, _NAME)

    def send(self, data: Buffer, flags: int = 0) -> int:
        """Send all of ``data`` (a flow takes all or fails); return its length."""
        self.sendall(data, flags)
        return memoryview(data).nbytes

    def sendall(self, data: Buffer, flags: int = 0) -> None:
        """Send all of ``data``."""
        self._check("sendall", flags)
        try:
            self._flow.write(data)
        except FlowError as exc:
            reraise(exc, "send", self._flow, _NAME)

    def makefile(
        self,
        mode: str = "r",
        buffering: int | None = None,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> IO[Any]:
        """A file object over the flow, with ``socket.makefile``'s modes and buffering.

        ``mode`` holds ``r``, ``w`` and ``b``; ``buffering=0`` gives the raw
        :class:`~greenflow.FlowIO` (binary only). The adapter's ``close()``
        closes the flow once every file made here is closed too.
        """
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
        if self._closed:
            raise closed("makefile", _NAME)
        writing = "w" in mode
        reading = "r" in mode or not writing
        binary = "b" in mode
        size = io.DEFAULT_BUFFER_SIZE if buffering is None or buffering < 0 else buffering
        if size == 0 and not binary:
            raise ValueError("unbuffered streams must be binary")
        file = _SocketFile(self, ("r" if reading else "") + ("w" if writing else ""))
        self._file_count += 1
        raw = cast("io.RawIOBase", file)  # FlowIO's write takes what a socket's takes
        if size == 0:
            return cast("IO[Any]", raw)
        stream: io.BufferedIOBase
        if reading and writing:
            stream = io.BufferedRWPair(raw, raw, size)
        elif reading:
            stream = io.BufferedReader(raw, size)
        else:
            stream = io.BufferedWriter(raw, size)
        if binary:
            return cast("IO[Any]", stream)
        text = io.TextIOWrapper(cast("IO[bytes]", stream), encoding, errors, newline)
        text.mode = mode  # type: ignore[misc]
        return text

    # -- timeouts ----------------------------------------------------------------------

    def settimeout(self, value: float | None) -> None:
        """Bound each call by ``value`` seconds; ``None`` blocks, ``0`` is non-blocking."""
        self._flow.timeout = value

    def gettimeout(self) -> float | None:
        """The timeout, as :meth:`settimeout` set it."""
        return self._flow.timeout

    @property
    def timeout(self) -> float | None:
        """The timeout (read-only here, as on a socket)."""
        return self._flow.timeout

    def setblocking(self, flag: bool) -> None:
        """``setblocking(False)`` is ``settimeout(0)``; ``setblocking(True)`` is ``settimeout(None)``."""
        self._flow.timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        """False when non-blocking (timeout 0)."""
        return self._flow.timeout != 0

    # -- ending --------------------------------------------------------------------------

    def shutdown(self, how: int) -> None:
        """``SHUT_RD``, ``SHUT_WR`` or ``SHUT_RDWR``: the flow's ``shutdown``."""
        if self._closed:
            raise closed("shutdown", _NAME)
        if how not in _SHUTDOWNS:
            raise OSError(errno.EINVAL, f"shutdown takes SHUT_RD, SHUT_WR or SHUT_RDWR, not {how!r}")
        try:
            self._flow.shutdown(_SHUTDOWNS[how])
        except FlowError as exc:
            reraise(exc, "shutdown", self._flow, _NAME)

    def close(self) -> None:
        """Close the adapter; the flow closes once no file made from it is open. Idempotent."""
        self._closed = True
        if self._file_count <= 0:
            self._flow.close()

    def _file_closed(self) -> None:
        self._file_count -= 1
        if self._closed and self._file_count <= 0:
            self._flow.close()

    def __enter__(self) -> FlowSocket:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- what the socket is ------------------------------------------------------------------

    def getpeername(self) -> Any:
        """The other end's address, from the flow ("" where the flow has none)."""
        return self._address("peer_address", "getpeername")

    def getsockname(self) -> Any:
        """This end's address, from the flow ("" where the flow has none)."""
        return self._address("local_address", "getsockname")

    @property
    def family(self) -> socket.AddressFamily:
        """The address family, from the real socket or the shape of the flow's address."""
        sock = self._real_socket()
        if sock is not None:
            return sock.family
        return _family_of(self._find_address("local_address") or self._find_address("peer_address"))

    @property
    def type(self) -> socket.SocketKind:
        """Always ``SOCK_STREAM``: a flow is a byte stream."""
        return socket.SOCK_STREAM

    @property
    def proto(self) -> int:
        """The protocol number: the real socket's, or 0."""
        sock = self._real_socket()
        return sock.proto if sock is not None else 0

    def setsockopt(self, level: int, option: int, value: int | Buffer) -> None:
        """Set an option on the real socket, or remember a harmless one (see the module)."""
        if self._closed:
            raise closed("setsockopt", _NAME)
        sock = self._real_socket()
        if sock is not None:
            sock.setsockopt(level, option, value)
        elif (level, option) in _HARMLESS:
            self._options[level, option] = (
                value if isinstance(value, int) else int.from_bytes(value, "little")
            )
        else:
            raise _no_option(level, option)

    def getsockopt(self, level: int, option: int, buflen: int = 0) -> int | bytes:
        """Read an option from the real socket, or a remembered harmless one (0 by default)."""
        if self._closed:
            raise closed("getsockopt", _NAME)
        sock = self._real_socket()
        if sock is not None:
            return sock.getsockopt(level, option, buflen) if buflen else sock.getsockopt(level, option)
        if (level, option) in _HARMLESS:
            value = self._options.get((level, option), 0)
            return value.to_bytes(buflen, "little") if buflen else value
        raise _no_option(level, option)

    def fileno(self) -> int:
        """The descriptor of a plain socket flow; otherwise ``io.UnsupportedOperation``."""
        if self._closed:
            return -1  # as a closed socket answers
        if isinstance(self._flow, SocketFlow):
            return self._flow.socket.fileno()
        raise no_descriptor(f"this FlowSocket (over {type(self._flow).__name__})")

    # -- helpers -------------------------------------------------------------------------------

    def _check(self, what: str, flags: int) -> None:
        if self._closed:
            raise closed(what, _NAME)
        if flags:
            raise OSError(errno.EOPNOTSUPP, f"{what} takes no flags on a socket adapter (got {flags})")

    def _layers(self) -> list[Flow]:
        layers = [self._flow]
        while (below := layers[-1].underlying) is not None:
            layers.append(below)
        return layers

    def _real_socket(self) -> socket.socket | None:
        bottom = self._layers()[-1]
        if isinstance(bottom, SocketFlow) and not bottom.closed:
            return bottom.socket
        return None

    def _find_address(self, name: str) -> object:
        for layer in self._layers():
            address = getattr(layer, name)
            if address is not None:
                return address
        return None

    def _address(self, name: str, what: str) -> object:
        if self._closed:
            raise closed(what, _NAME)
        address = self._find_address(name)
        return "" if address is None else address


def _no_option(level: int, option: int) -> OSError:
    return OSError(
        errno.ENOPROTOOPT, f"socket option {option} at level {level} needs a real socket; this flow has none"
    )


def _family_of(address: object) -> socket.AddressFamily:
    """The address family an address of this shape belongs to."""
    if isinstance(address, tuple):
        if len(address) == 4:
            return socket.AF_INET6
        if len(address) == 2 and isinstance(address[0], int):
            return socket.AF_VSOCK
        return socket.AF_INET
    return socket.AF_UNIX


class _SocketFile(FlowIO):
    """A :class:`FlowIO` made by ``makefile``: it tells its adapter when it closes."""

    def __init__(self, owner: FlowSocket, mode: str) -> None:
        super().__init__(owner.flow, mode, close_flow=False)
        self._owner = owner

    def _closed_hook(self) -> None:
        self._owner._file_closed()  # the adapter's own helper class
