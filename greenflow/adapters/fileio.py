"""A file-like adapter: an ``io.RawIOBase`` over any flow.

``io.BufferedReader(FlowIO(flow))`` reads lines and exact counts,
``io.TextIOWrapper`` on top decodes text (a multi-byte character split
across reads included), and code that takes a binary file takes a
:class:`FlowIO`. :meth:`greenflow.FlowSocket.makefile` is built on it.

The flow's rules stay: each call yields to the gevent hub while it waits,
the flow's ``timeout`` bounds it (``TimeoutError``), and a flow with timeout
0 is non-blocking: ``readinto`` returns ``None`` when nothing is there, as
the ``io`` classes expect of a non-blocking raw stream.
"""

from __future__ import annotations

import io

from ..errors import FlowError
from ..flow import Flow
from ._errors import reraise, would_block

__all__ = ["FlowIO", "no_descriptor"]

_MODES = frozenset({"r", "w", "rw", "rb", "wb", "rwb"})


class FlowIO(io.RawIOBase):
    """A raw binary stream over ``flow``: ``readinto`` reads it, ``write`` writes it.

    Args:
        flow: the flow. Closing this object closes it, unless
            ``close_flow=False``.
        mode: ``"rwb"`` (the default), ``"rb"`` or ``"wb"``; ``"b"`` is
            optional, as for ``socket.SocketIO``.
        close_flow: whether :meth:`close` closes the flow.

    ``fileno()`` raises ``io.UnsupportedOperation``: a flow is not a
    descriptor (see :func:`greenflow.socket_bridge`). Not seekable.
    """

    def __init__(self, flow: Flow, mode: str = "rwb", *, close_flow: bool = True) -> None:
        if mode not in _MODES:
            raise ValueError(f"invalid mode {mode!r}: use 'rb', 'wb' or 'rwb'")
        super().__init__()
        self._flow = flow
        self._reading = "r" in mode
        self._writing = "w" in mode
        self._close_flow = close_flow
        self.mode = mode if "b" in mode else mode + "b"

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<FlowIO mode={self.mode!r}{state} over {self._flow!r}>"

    @property
    def flow(self) -> Flow:
        """The flow this stream reads and writes."""
        return self._flow

    def readable(self) -> bool:
        self._check_open("read")
        return self._reading

    def writable(self) -> bool:
        self._check_open("write")
        return self._writing

    def seekable(self) -> bool:
        self._check_open("seek")
        return False

    def fileno(self) -> int:
        raise no_descriptor("this FlowIO")

    def readinto(self, buffer: bytearray | memoryview) -> int | None:  # type: ignore[override]
        """Read what is there into ``buffer`` (at least a byte); 0 at EOF, None if it would block."""
        self._check_open("read")
        if not self._reading:
            raise io.UnsupportedOperation("this FlowIO was not opened for reading")
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        try:
            return self._flow.read_into(view)
        except FlowError as exc:
            if would_block(exc, self._flow):
                return None  # what io expects of a non-blocking raw stream
            reraise(exc, "read", self._flow, "FlowIO's flow")

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        """Write all of ``data`` and return its length."""
        self._check_open("write")
        if not self._writing:
            raise io.UnsupportedOperation("this FlowIO was not opened for writing")
        view = memoryview(data)
        try:
            self._flow.write(view)
        except FlowError as exc:
            reraise(exc, "write", self._flow, "FlowIO's flow")
        return view.nbytes

    def close(self) -> None:
        """Close the stream, and the flow unless ``close_flow=False``. Idempotent."""
        if self.closed:
            return
        super().close()
        if self._close_flow:
            self._flow.close()
        self._closed_hook()

    def _closed_hook(self) -> None:
        """Called once, after the stream closed (a socket adapter counts its files)."""

    def _check_open(self, what: str) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on a closed FlowIO ({what})")


def no_descriptor(what: str) -> io.UnsupportedOperation:
    """The error for ``fileno()`` where a flow has no descriptor to give."""
    return io.UnsupportedOperation(
        f"{what} has no file descriptor: a flow is not one; for code that needs a real "
        "descriptor (selectors, subprocess, ssl.wrap_socket, C extensions) use "
        "greenflow.socket_bridge(flow), which returns a connected socket pumped to and from the flow"
    )
