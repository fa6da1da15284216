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

from gevent.event import Event

from ..errors import BrokenError, FlowError, FlowTimeout
from ..flow import (
    Buffer,
    Flow,
    FlowAttributes,
    Shutdown,
    begin_shutdown,
    check_bytes_like,
    check_max_bytes,
    check_timeout,
    check_writable_buffer,
    closed_error,
    refuse_read,
    refuse_write,
    start_timer,
)

__all__ = ["DEFAULT_MEMORY_BUFFER", "MemoryFlow", "MemoryPipe", "lockstep_pair", "memory_pair"]

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
        self._pending = None
        self.changed()


class MemoryFlow(FlowAttributes, Flow):
    """One endpoint of :func:`memory_pair` or :func:`lockstep_pair`.

    Follows the :class:`~greenflow.Flow` contract exactly, with no sockets:
    closing one end gives the other EOF after the data already written, and
    its later writes raise :class:`BrokenError`, as a closed TCP peer does.
    """

    def __init__(self, incoming: MemoryPipe, outgoing: MemoryPipe, *, timeout: float | None = None) -> None:
        self.incoming = incoming
        self.outgoing = outgoing
        self._timeout = check_timeout(timeout)
        self._closed = False
        self._reading = False
        self._writing = False
        self._read_shut = False
        self._write_shut = False
        self._write_error: BrokenError | None = None

    def __repr__(self) -> str:
        return (
            f"<MemoryFlow {'closed' if self._closed else 'open'} in={self.incoming!r} out={self.outgoing!r}>"
        )

    # -- reading ---------------------------------------------------------------

    def read(self, max_bytes: int | None = None) -> bytes:
        return self._read(check_max_bytes(max_bytes), "read")

    def read_into(self, buffer: bytearray | memoryview) -> int:
        view = check_writable_buffer(buffer)
        data = self._read(len(view), "read_into")
        view[: len(data)] = data
        return len(data)

    def _read(self, size: int, what: str) -> bytes:
        if self._closed or self._reading:  # refuse_read raises for both
            refuse_read(what, closed=self._closed, reading=self._reading, at_eof=False, error=None)
        pipe = self.incoming
        self._reading = True
        timer = None
        try:
            while True:
                if self._closed:
                    raise closed_error(what)
                if self._read_shut:
                    return b""
                if not pipe.stalled:
                    if pipe.buffered_bytes or pipe.pending_bytes:
                        return pipe.take(size)
                    if pipe.writer_done:
                        return b""
                if timer is None and self._timeout is not None:
                    timer = start_timer(self._timeout, what)
                pipe.readable.clear()
                pipe.readable.wait()
        finally:
            self._reading = False
            if timer is not None:
                timer.close()

    # -- writing ---------------------------------------------------------------

    def write(self, data: Buffer) -> None:
        self._write(check_bytes_like(data), "write")

    def writev(self, buffers: Iterable[Buffer]) -> None:
        views = [check_bytes_like(b) for b in buffers]
        # The pipe copies anyway; one join keeps the buffers together.
        self._write(memoryview(b"".join(views)), "writev")

    def _write(self, view: memoryview, what: str) -> None:
        if self._closed or self._writing or self._write_shut or self._write_error is not None:
            refuse_write(
                what,
                closed=self._closed,
                writing=self._writing,
                shut=self._write_shut,
                error=self._write_error,
            )
        pipe = self.outgoing
        if pipe.reader_gone:
            self._write_error = BrokenError(f"cannot {what}: the peer has closed the flow")
            raise self._write_error
        if not view:
            return
        self._writing = True
        timer = None
        try:
            pipe.offer(view)
            while pipe.pending_bytes:
                if timer is None and self._timeout is not None:
                    timer = start_timer(self._timeout, what)
                pipe.writable.clear()
                pipe.writable.wait()
                if self._closed:
                    raise closed_error(what)
                if pipe.reader_gone:
                    self._write_error = BrokenError(f"{what} failed: the peer closed the flow")
                    raise self._write_error
        except BaseException as exc:
            pipe.withdraw()
            if not isinstance(exc, FlowError) or isinstance(exc, FlowTimeout):
                if self._write_error is None:
                    self._write_error = BrokenError(
                        f"a {what} was interrupted and may have sent part of its data"
                    )
            raise
        finally:
            self._writing = False
            if timer is not None:
                timer.close()

    # -- ending ----------------------------------------------------------------

    def shutdown(self, how: Shutdown | str = Shutdown.WRITE) -> None:
        how = begin_shutdown(how, closed=self._closed, writing=self._writing, write_shut=self._write_shut)
        if how.writes and not self._write_shut:
            self._write_shut = True
            self.outgoing.writer_done = True
            self.outgoing.changed()
        if how.reads and not self._read_shut:
            self._read_shut = True
            self.incoming.changed()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
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
