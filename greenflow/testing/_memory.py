"""In-memory flow pairs: a buffered one and a zero-buffer (lockstep) one.

Theory of operation
-------------------

Each direction of a pair is a :class:`MemoryPipe`: a bounded ``bytearray``
between one writing endpoint and one reading endpoint. A write copies into the
buffer as much as there is room for and offers the rest as ``pending`` (a view
of the caller's data); it returns once nothing of its data is pending any
more. A read takes bytes from the buffer first and then straight from the
pending view, and then tops the buffer up from what is still pending.

With a capacity of 0 nothing is ever buffered, so a write returns only when
reads have taken all of it: that is the lockstep pair, the harshest flow
control there is, for finding code that deadlocks when writes block.

Waiting: each pipe has one event for its reader and one for its writer. Any
change to a pipe sets both; a woken greenlet re-checks its condition and waits
again if it is not met. At most one greenlet waits on each event, since a
second reader or writer gets ``BusyError`` before it could wait.

Hooks for tests: ``stalled`` holds back every byte from the reader until it is
set back to False; ``trickle`` caps how much one read can return. Both are
attributes of the pipe, reachable from a flow as ``flow.incoming`` (the pipe
it reads from) and ``flow.outgoing`` (the pipe it writes to).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from gevent.event import Event

from ..errors import BrokenError
from ..flow import Buffer, Shutdown
from ..kit import (
    DirectionState,
    FlowBase,
    check_buffers,
    check_bytes_like,
    check_max_bytes,
    check_writable_buffer,
    closed_error,
    reraise,
)

__all__ = ["DEFAULT_MEMORY_BUFFER", "MemoryFlow", "MemoryPipe", "lockstep_pair", "memory_pair"]

_CLOSED: Final = DirectionState.CLOSED
_SHUT: Final = DirectionState.SHUT

#: The default capacity of each direction of :func:`memory_pair`.
DEFAULT_MEMORY_BUFFER = 65536


class MemoryPipe:
    """One direction of an in-memory pair, with hooks to stall or trickle it."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be at least 0, not {capacity}")
        self.capacity = capacity
        self._buffer = bytearray()
        self._pending: memoryview | None = None
        self._stalled = False
        self._trickle: int | None = None
        self.writer_done = False  # the writer shut down writing or closed: EOF after the data
        self.reader_gone = False  # the reader closed: writes fail
        self.offer_lost = False  # the reader went away before taking all of a pending offer
        self.readable = Event()
        self.writable = Event()

    def __repr__(self) -> str:
        return (
            f"<MemoryPipe buffered={len(self._buffer)}/{self.capacity}"
            f" pending={self.pending_bytes} stalled={self._stalled} trickle={self._trickle}>"
        )

    @property
    def buffered_bytes(self) -> int:
        """Bytes copied into the buffer and not read yet."""
        return len(self._buffer)

    @property
    def pending_bytes(self) -> int:
        """Bytes a blocked writer still offers beyond the buffer."""
        return len(self._pending) if self._pending is not None else 0

    @property
    def stalled(self) -> bool:
        """While True, the reader gets nothing, not even EOF: a silent peer."""
        return self._stalled

    @stalled.setter
    def stalled(self, value: bool) -> None:
        self._stalled = bool(value)
        self.changed()

    @property
    def trickle(self) -> int | None:
        """The most bytes one read may return (``None``: no cap)."""
        return self._trickle

    @trickle.setter
    def trickle(self, value: int | None) -> None:
        self._trickle = None if value is None else check_max_bytes(value)
        self.changed()

    def changed(self) -> None:
        """Wake whoever waits on this pipe so that it looks again."""
        self.readable.set()
        self.writable.set()

    # Called by the endpoints --------------------------------------------------

    def offer(self, view: memoryview) -> None:
        """Buffer what fits of ``view`` and leave the rest pending."""
        room = self.capacity - len(self._buffer)
        if room > 0:
            self._buffer += view[:room]
            view = view[room:]
        self._pending = view if view else None
        self.changed()

    def take(self, size: int) -> bytes:
        """Remove and return up to ``size`` bytes (the caller checked there are some)."""
        if self._trickle is not None:
            size = min(size, self._trickle)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        if len(data) < size and self._pending is not None:
            more = size - len(data)
            data += self._pending[:more]
            self._pending = self._pending[more:]
        if self._pending is not None:
            room = self.capacity - len(self._buffer)
            if room > 0:
                self._buffer += self._pending[:room]
                self._pending = self._pending[room:]
            if not self._pending:
                self._pending = None
        self.changed()
        return data

    def withdraw(self) -> None:
        """Drop a pending offer (its writer was interrupted)."""
        self._pending = None
        self.changed()

    def discard(self) -> None:
        """Drop everything buffered and pending (the reader went away)."""
        self._buffer.clear()
        if self._pending is not None:
            self.offer_lost = True
        self._pending = None
        self.changed()


class MemoryFlow(FlowBase):
    """One endpoint of :func:`memory_pair` or :func:`lockstep_pair`.

    Follows the :class:`~greenflow.Flow` contract exactly, with no sockets:
    closing one end gives the other EOF after the data already written, and
    its later writes raise :class:`BrokenError`, as a closed TCP peer does.
    """

    def __init__(self, incoming: MemoryPipe, outgoing: MemoryPipe, *, timeout: float | None = None) -> None:
        super().__init__(timeout=timeout)
        self.incoming = incoming
        self.outgoing = outgoing

    def __repr__(self) -> str:
        return (
            f"<MemoryFlow {'closed' if self.closed else 'open'} in={self.incoming!r} out={self.outgoing!r}>"
        )

    # -- reading ---------------------------------------------------------------

    def read(self, max_bytes: int | None = None) -> bytes:
        return self._read(check_max_bytes(max_bytes), "read")

    def read_into(self, buffer: bytearray | memoryview) -> int:
        view = check_writable_buffer(buffer)
        data = self._read(view.nbytes, "read_into")
        view[: len(data)] = data
        return len(data)

    def _read(self, size: int, what: str) -> bytes:
        reader = self._reader
        if reader.enter(what):
            return b""
        pipe = self.incoming
        try:
            while True:
                state = reader.state
                if state is _CLOSED:
                    raise closed_error(what)
                if state is _SHUT:
                    return b""
                if not pipe.stalled:
                    if pipe.buffered_bytes or pipe.pending_bytes:
                        return pipe.take(size)
                    if pipe.writer_done:
                        reader.end()
                        return b""
                reader.arm(self._timeout, what)
                pipe.readable.clear()
                pipe.readable.wait()
        finally:
            reader.leave()

    # -- writing ---------------------------------------------------------------

    def write(self, data: Buffer) -> None:
        self._write(check_bytes_like(data), "write")

    def writev(self, buffers: Iterable[Buffer]) -> None:
        # The pipe copies anyway; one join keeps the buffers together.
        self._write(memoryview(b"".join(check_buffers(buffers))), "writev")

    def _write(self, view: memoryview, what: str) -> None:
        writer = self._writer
        writer.enter(what)
        pipe = self.outgoing
        try:
            if pipe.reader_gone:
                raise writer.fail(BrokenError(f"cannot {what}: the peer has closed the flow"))
            if not view:
                return
            pipe.offer(view)
            while pipe.pending_bytes:
                writer.arm(self._timeout, what)
                pipe.writable.clear()
                pipe.writable.wait()
                if writer.state is _CLOSED:
                    raise closed_error(what)
                if pipe.offer_lost:  # not when the reader took it all, then closed
                    raise writer.fail(BrokenError(f"{what} failed: the peer closed the flow"))
        except BaseException as exc:
            pipe.withdraw()
            reraise(exc, writer.interrupted(exc, what))
        finally:
            writer.leave()

    # -- ending ----------------------------------------------------------------

    def shutdown(self, how: Shutdown | str = Shutdown.WRITE) -> None:
        how = self.begin_shutdown(how)
        if how.writes and self._writer.shut():
            self.outgoing.writer_done = True
            self.outgoing.changed()
        if how.reads and self._reader.shut():
            self.incoming.changed()

    def close(self) -> None:
        if not self.mark_closed():
            return
        self.outgoing.writer_done = True
        self.outgoing.withdraw()
        self.incoming.reader_gone = True
        self.incoming.discard()


def memory_pair(
    buffer_size: int = DEFAULT_MEMORY_BUFFER, *, timeout: float | None = None
) -> tuple[MemoryFlow, MemoryFlow]:
    """Return two connected in-memory flows.

    Each direction buffers at most ``buffer_size`` bytes; past that, writes
    wait for the reader, as they do on a socket whose peer falls behind.
    """
    if buffer_size < 1:
        raise ValueError("memory_pair needs a buffer of at least 1 byte; use lockstep_pair for none")
    return _pair(buffer_size, timeout)


def lockstep_pair(*, timeout: float | None = None) -> tuple[MemoryFlow, MemoryFlow]:
    """Return two connected in-memory flows with no buffering at all.

    A write returns only once reads on the other end have taken all of it, so
    any code that writes without someone reading at the same time deadlocks
    here at once instead of under load in production.
    """
    return _pair(0, timeout)


def _pair(capacity: int, timeout: float | None) -> tuple[MemoryFlow, MemoryFlow]:
    left_to_right = MemoryPipe(capacity)
    right_to_left = MemoryPipe(capacity)
    left = MemoryFlow(right_to_left, left_to_right, timeout=timeout)
    right = MemoryFlow(left_to_right, right_to_left, timeout=timeout)
    return left, right
