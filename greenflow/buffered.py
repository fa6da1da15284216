"""Buffered reading over any flow: records, lines, exact counts, peeking, pushing back.

:class:`BufferedFlow` is a layer: a flow itself, kept to the whole contract,
that adds the record-reading calls every protocol needs. The record search
is the sans-IO :class:`~greenflow.records.RecordBuffer`; this module only
waits for bytes and keeps the contract's rules (one reader at a time, sticky
errors, the timeout over the whole call, shutdown and close).

Conventions, as the standard library and asyncio have them:

- :meth:`~BufferedFlow.read_until` and :meth:`~BufferedFlow.readline` return
  the record with its delimiter, and ``max_size`` counts the delimiter.
- At EOF, :meth:`~BufferedFlow.readline` returns the partial last line, then
  ``b""``, as ``io`` does; :meth:`~BufferedFlow.read_until` and
  :meth:`~BufferedFlow.read_exactly` raise :class:`~greenflow.IncompleteReadError`
  (also an ``EOFError``) carrying what did arrive.
- Every search is bounded: a record longer than its limit raises
  :class:`~greenflow.LimitOverrunError` and the bytes stay buffered, so the
  caller decides. Memory stays within the limit plus one read of the flow
  below (64 KiB).
- The answers never depend on how the bytes were chunked on their way in.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator
from typing import Final, TypeVar

from .errors import BrokenError, BusyError, IncompleteReadError, LimitOverrunError
from .flow import Buffer, Flow, Shutdown, check_max_bytes
from .kit import (
    Direction,
    DirectionState,
    FlowBase,
    check_buffers,
    check_bytes_like,
    check_read_size,
    check_writable_buffer,
    closed_error,
    reraise,
)
from .records import RecordBuffer, Search

__all__ = ["DEFAULT_LIMIT", "BufferedFlow"]

#: The default record size limit, in bytes (the delimiter included), as asyncio's.
DEFAULT_LIMIT: Final = 65536

_OVERRUN: Final = Search.OVERRUN
_NEED_MORE: Final = Search.NEED_MORE
_CLOSED: Final = DirectionState.CLOSED
_T = TypeVar("_T")


class BufferedFlow(FlowBase):
    """A flow that reads ahead from another flow, to hand out records.

    Writes pass straight through; ``read`` and ``read_into`` return buffered
    bytes first, then read from the flow below. Everything else is the
    contract of :class:`~greenflow.Flow`, with ``timeout`` the inner flow's
    (it bounds each whole call here, a record read included).

    Args:
        flow: the flow to read from and write to. Closing this flow closes it.
        limit: the default ``max_size`` of :meth:`read_until` and
            :meth:`readline`, in bytes.

    Iterating over a buffered flow yields lines (:meth:`readline`) until EOF.
    """

    __slots__ = ("_buffer", "_inner", "limit")

    def __init__(self, flow: Flow, limit: int = DEFAULT_LIMIT) -> None:
        if not isinstance(flow, Flow):
            raise TypeError(f"BufferedFlow needs a Flow, not {type(flow).__name__}")
        super().__init__(timeout=flow.timeout)
        self._inner = flow
        self._buffer = RecordBuffer()
        self.limit = _check_size(limit, "limit", 1)

    def __repr__(self) -> str:
        return f"<BufferedFlow {len(self._buffer)} bytes buffered over {self._inner!r}>"

    # -- attributes --------------------------------------------------------------

    @property
    def underlying(self) -> Flow:  # type: ignore[override]
        """The flow this one reads from and writes to."""
        return self._inner

    @property
    def timeout(self) -> float | None:
        """The inner flow's timeout, which also bounds each call here."""
        return self._inner.timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._inner.timeout = value

    @property
    def local_address(self) -> object:
        return self._inner.local_address

    @property
    def peer_address(self) -> object:
        return self._inner.peer_address

    @property
    def buffered(self) -> int:
        """How many bytes were read ahead and not yet handed out."""
        return len(self._buffer)

    # -- the contract's reads ------------------------------------------------------

    def read(self, max_bytes: int | None = None) -> bytes:
        size = check_read_size(max_bytes)
        reader = self._reader
        if reader.enter("read"):
            return b""
        try:
            if len(self._buffer):
                return self._buffer.take(size)
            return self._inner.read(size)
        except BrokenError as exc:
            reader.fail(exc)
            raise
        finally:
            reader.leave()

    def read_into(self, buffer: bytearray | memoryview) -> int:
        view = check_writable_buffer(buffer)
        reader = self._reader
        if reader.enter("read_into"):
            return 0
        try:
            if len(self._buffer):
                return self._buffer.take_into(view)
            return self._inner.read_into(view)
        except BrokenError as exc:
            reader.fail(exc)
            raise
        finally:
            reader.leave()

    # -- records ---------------------------------------------------------------------

    def read_exactly(self, size: int) -> bytes:
        """Read exactly ``size`` bytes, waiting for as many reads as it takes.

        Raises:
            IncompleteReadError: EOF came first; ``partial`` holds the bytes
                that came (consumed), ``expected`` is ``size``.
            ValueError, TypeError: ``size`` is negative or not an integer.
            and the errors of :meth:`~greenflow.Flow.read`.
        """
        size = _check_size(size, "size", 0)
        reader = self._reader
        buffer = self._buffer
        if reader.enter("read_exactly"):
            if not size:
                return b""
            raise _incomplete(b"", size)
        try:
            while len(buffer) < size:
                if not self._fill(reader, "read_exactly"):
                    raise _incomplete(buffer.take_all(), size)
            return buffer.take(size)
        finally:
            reader.leave()

    def read_until(self, delimiter: bytes = b"\n", max_size: int | None = None) -> bytes:
        """Read one record: everything up to and including the next ``delimiter``.

        Args:
            delimiter: the non-empty bytes that end a record.
            max_size: the longest record allowed, the delimiter included
                (default :attr:`limit`); at least ``len(delimiter)``.

        Raises:
            LimitOverrunError: no delimiter within ``max_size`` bytes; they
                stay buffered.
            IncompleteReadError: EOF came first; ``partial`` holds the bytes
                that came (consumed), ``expected`` is ``None``.
            and the errors of :meth:`~greenflow.Flow.read`.
        """
        return self._record(delimiter, max_size, "read_until", at_eof=False)

    def readline(self, max_size: int | None = None) -> bytes:
        """Read one line, ``b"\\n"`` included; at EOF the partial last line, then ``b""``.

        Raises:
            LimitOverrunError: no newline within ``max_size`` bytes (default
                :attr:`limit`); they stay buffered.
            and the errors of :meth:`~greenflow.Flow.read`.
        """
        return self._record(b"\n", max_size, "readline", at_eof=True)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def _record(self, delimiter: bytes, max_size: int | None, what: str, *, at_eof: bool) -> bytes:
        delimiter = check_bytes_like(delimiter).tobytes()
        if not delimiter:
            raise ValueError(f"{what} needs a delimiter of at least one byte")
        limit = self.limit if max_size is None else _check_size(max_size, "max_size", len(delimiter))
        if limit < len(delimiter):
            raise ValueError(f"the limit of {limit} bytes is shorter than the delimiter {delimiter!r}")
        reader = self._reader
        buffer = self._buffer
        if reader.enter(what):
            if at_eof:
                return b""
            raise _incomplete(b"", None, delimiter)
        try:
            while True:
                found = buffer.find(delimiter, limit)
                if found is _NEED_MORE:
                    if self._fill(reader, what):
                        continue
                    rest = buffer.take_all()
                    if at_eof:
                        return rest
                    raise _incomplete(rest, None, delimiter)
                if found is _OVERRUN:
                    raise LimitOverrunError(delimiter, limit)
                return buffer.take(found)
        finally:
            reader.leave()

    def _fill(self, reader: Direction, what: str) -> bool:
        """Read once from below into the buffer; False at EOF."""
        reader.arm(self._inner.timeout, what)
        try:
            data = self._inner.read()
        except BrokenError as exc:
            reader.fail(exc)
            raise
        if not data:
            return False
        self._buffer.feed(data)
        return True

    # -- looking ahead and back ----------------------------------------------------------

    def peek(self, max_bytes: int = 1) -> bytes:
        """Up to ``max_bytes`` bytes that the next read will return, without consuming them.

        Waits for at least one byte unless the flow is at EOF (then ``b""``);
        never waits for more than what is buffered once one byte is.
        """
        size = check_max_bytes(max_bytes)
        reader = self._reader
        if reader.enter("peek"):
            return b""
        try:
            if not len(self._buffer):
                self._fill(reader, "peek")
            return self._buffer.peek(size)
        finally:
            reader.leave()

    def unread(self, data: Buffer) -> None:
        """Push ``data`` back: the next reads return it before anything else.

        The bytes need not be ones that were read (a protocol may put back a
        normalised header). After ``shutdown("read")`` they are discarded,
        as data in flight is.
        """
        view = check_bytes_like(data)
        reader = self._reader
        if reader.enter("unread"):
            return
        try:
            self._buffer.unread(view)
        finally:
            reader.leave()

    def detach(self) -> tuple[Flow, bytes]:
        """Hand the inner flow back, with the bytes read past what was consumed.

        For switching protocols (a PROXY header, then STARTTLS, then TLS):
        the caller carries on with the inner flow and the leftover bytes,
        which belong in front of anything it reads next. This flow is closed
        afterwards (every call raises ``ClosedError``), and the inner flow is
        left open.

        Raises:
            ClosedError: this flow was closed or already detached.
            BusyError: another greenlet is reading or writing this flow.
        """
        if self._reader.state is _CLOSED:
            raise closed_error("detach")
        if self._reader.busy or self._writer.busy:
            raise BusyError("cannot detach: another greenlet is reading or writing this flow")
        leftover = self._buffer.take_all()
        self.mark_closed()
        return self._inner, leftover

    # -- writes pass through ---------------------------------------------------------------

    def write(self, data: Buffer) -> None:
        # Checked before the writer is taken: a TypeError breaks nothing.
        self._pass_on(self._inner.write, check_bytes_like(data), "write")

    def writev(self, buffers: Iterable[Buffer]) -> None:
        self._pass_on(self._inner.writev, check_buffers(buffers), "writev")

    def _pass_on(self, call: Callable[[_T], None], argument: _T, what: str) -> None:
        """Run the inner flow's write ``call``, keeping this flow's writing state."""
        writer = self._writer
        writer.enter(what)
        try:
            call(argument)
        except BaseException as exc:
            if isinstance(exc, BrokenError):
                writer.fail(exc)  # sticky: later writes say this write failed
            reraise(exc, writer.interrupted(exc, what))  # a timeout or a kill breaks writing too
        finally:
            writer.leave()

    # -- ending ------------------------------------------------------------------------------

    def shutdown(self, how: Shutdown | str = Shutdown.WRITE) -> None:
        how = self.begin_shutdown(how)
        ends_writing = how.writes and self._writer.shut()
        ends_reading = how.reads and self._reader.shut()
        if ends_reading:
            self._buffer.clear()
        if ends_writing or ends_reading:
            self._inner.shutdown(how)

    def close(self) -> None:
        if self.mark_closed():
            self._buffer.clear()
            self._inner.close()


def _check_size(value: int, name: str, least: int) -> int:
    size = operator.index(value)  # TypeError for floats and strings
    if size < least:
        raise ValueError(f"{name} must be at least {least}, not {size}")
    return size


def _incomplete(partial: bytes, expected: int | None, delimiter: bytes | None = None) -> IncompleteReadError:
    what = None if delimiter is None else f"the delimiter {delimiter!r}"
    return IncompleteReadError(partial, expected, what)
