"""The framed shutdown protocol of hvsock and virtsock, sans-IO: bytes in, events and bytes out.

Hyper-V sockets once lost data in flight after a ``shutdown`` or a
``close``. hvsock's ``Flow_shutdown`` and linuxkit's virtsock work around it
with a thin framing over the stream, so that ending a direction is a message
in the stream, after the data, instead of a transport operation that can
overtake it. :class:`FramedFlow <greenflow.FramedFlow>` runs it over any flow;
this module is the protocol alone, with no sockets and no gevent.

The wire format
---------------

Every frame starts with a 4-byte little-endian unsigned header:

- ``0xdeadbeef`` (:data:`SHUTDOWN_READ`): the sender will read no more;
- ``0xbeefdead`` (:data:`SHUTDOWN_WRITE`): the sender will write no more
  (EOF after the data before it);
- ``0xdeaddead`` (:data:`CLOSE`): the sender is closing; nothing follows
  from it in this protocol;
- any other value ``n``: a data frame, ``n`` bytes of payload follow.

Frames are sent with at most :data:`MAX_FRAME_SENT` (4096) bytes of payload,
what both known peers send; a zero-length frame is never sent, and one
received is skipped (it is not EOF). A data frame longer than
:data:`MAX_FRAME_RECEIVED` (256 KiB; no known peer sends more than 32 KiB) is
a protocol violation: the stream is out of step, and the receiving side
breaks with a :class:`~greenflow.BrokenError` naming the length.

Theory of operation
-------------------

:class:`FrameProtocol` is one end of the protocol, both halves of it.

Receiving: :meth:`~FrameProtocol.feed` takes what the transport read (``b""``
for its EOF); :meth:`~FrameProtocol.take` and :meth:`~FrameProtocol.take_into`
give back payload, gathered across as many frames as fit, and parse control
frames as they reach them. A payload body is handed out as it arrives, so no
frame is ever buffered whole. The inbound stream moves one way through
:class:`Inbound`::

    FRAMES --ShutdownWrite--> SHUT --Close--> CLOSED
    FRAMES --Close--> CLOSED
    FRAMES --EOF at a frame boundary--> EOF
    FRAMES, SHUT --bad frame, or EOF inside a frame--> BROKEN

Each control frame parsed also appends an :class:`Event` to
:attr:`~FrameProtocol.events`, for the adapter to act on (answer a Close,
refuse writes after the peer stopped reading). After the peer's Close the
rest of what arrives is not parsed: it belongs to whatever comes next on the
transport, and :meth:`~FrameProtocol.trailing` returns it.

Scatter reads: bulk data comes as full 4096-byte frames, so a read can be
laid out before it is made. :meth:`~FrameProtocol.scatter` gives the buffers
for one ``readv``: the rest of the body now due, then a 4-byte slot for each
header and the reader's buffer, 4096 bytes at a time, for each body. After
the read, :meth:`~FrameProtocol.scattered` checks the headers: where each is
a full data frame the payload is already in place; from the first that is
not (a control frame, another length, a read that ended early), the bytes
that came are put back in stream order and fed to the parser, which has the
last word. A layout only runs while frames are received and nothing is held.

Sending: :meth:`~FrameProtocol.frames` cuts payload into frames (a list of
buffers for one gather write); :meth:`~FrameProtocol.shut_write`,
:meth:`~FrameProtocol.shut_read` and :meth:`~FrameProtocol.close` queue
control frames in :attr:`~FrameProtocol.outbox`, which the adapter sends and
clears with :meth:`~FrameProtocol.pending`. The outbound stream moves through
:class:`Outbound`: ``OPEN --shut_write--> SHUT --close--> CLOSED``, and
``OPEN --close--> CLOSED``.
"""

from __future__ import annotations

import enum
import operator
import struct
import sys
from collections.abc import Callable
from typing import Final

from .errors import BrokenError, ClosedError

__all__ = [
    "CLOSE",
    "MAX_FRAME_RECEIVED",
    "MAX_FRAME_SENT",
    "READ_BLOCK",
    "SHUTDOWN_READ",
    "SHUTDOWN_WRITE",
    "Event",
    "FrameProtocol",
    "Inbound",
    "Outbound",
]

SHUTDOWN_READ: Final = 0xDEADBEEF
SHUTDOWN_WRITE: Final = 0xBEEFDEAD
CLOSE: Final = 0xDEADDEAD

#: The longest payload a frame we send carries (what hvsock and virtsock send).
MAX_FRAME_SENT: Final = 4096
#: The longest payload a frame we accept carries; longer is a BrokenError.
MAX_FRAME_RECEIVED: Final = 256 * 1024

#: The payload of the full frames joined into one buffer by ``frames``.
SEND_BATCH: Final = 16 * MAX_FRAME_SENT
#: What the adapter asks the transport for in one read: the frames of one
#: :data:`SEND_BATCH`, headers included (65,600 bytes), so that reads stay in
#: step with a peer's 64 KiB writes instead of leaving a piece of a frame
#: behind each time (a 64 KiB read did: 1.12 to 1.15 times slower).
READ_BLOCK: Final = SEND_BATCH // MAX_FRAME_SENT * (4 + MAX_FRAME_SENT)
#: writev joins its buffers before framing them up to this total (a copy of
#: a few pages is cheaper than many small frames).
_JOIN_UP_TO: Final = SEND_BATCH
#: Frames parsed at C speed (see ``_pull``) need the machine's byte order to be the wire's.
_LITTLE_ENDIAN: Final = sys.byteorder == "little"
_FULL_FRAME: Final = 4 + MAX_FRAME_SENT
_WORDS_PER_FRAME: Final = _FULL_FRAME // 4
#: The most full frames taken in one run.
_MAX_RUN: Final = 64


def _slicer(slices: list[slice]) -> Callable[[memoryview], tuple[memoryview, ...]]:
    """One call that cuts a view into the pieces ``slices`` name, in C.

    ``operator.itemgetter`` with many slices makes all the pieces in one
    call, a tuple: about twice as fast as slicing through ``map``, which a
    join must first turn into a list.
    """
    if len(slices) == 1:
        (only,) = slices
        return lambda view: (view[only],)
    return operator.itemgetter(*slices)


#: For a run of ``count`` full frames: the cutter of their bodies out of the
#: run (``_BODY_CUTS[count - 1]``), and of ``count`` frames' worth of payload
#: (``_PAYLOAD_CUTS[count - 1]``), to send or to read into.
_BODY_CUTS: Final = [
    _slicer([slice(i * _FULL_FRAME + 4, (i + 1) * _FULL_FRAME) for i in range(count)])
    for count in range(1, _MAX_RUN + 1)
]
_PAYLOAD_CUTS: Final = [
    _slicer([slice(i * MAX_FRAME_SENT, (i + 1) * MAX_FRAME_SENT) for i in range(count)])
    for count in range(1, _MAX_RUN + 1)
]
#: For ``count`` full frames, their headers as they come (``_HEADERS[count]``).
_HEADERS: Final = [b"\x00\x10\x00\x00" * count for count in range(_MAX_RUN + 1)]
_NO_HEADS: Final = b""
_HEADER: Final = struct.Struct("<I")
_unpack_from: Final = _HEADER.unpack_from
_FULL_HEADER: Final = _HEADER.pack(MAX_FRAME_SENT)


class Inbound(enum.Enum):
    """Where the stream from the peer stands."""

    FRAMES = "receiving frames"
    SHUT = "the peer shut down writing"
    CLOSED = "the peer closed"
    EOF = "the transport ended"
    BROKEN = "broken"


class Outbound(enum.Enum):
    """Where the stream to the peer stands."""

    OPEN = "open"
    SHUT = "shut down writing"
    CLOSED = "closed"


class Event(enum.Enum):
    """What the peer said, in the order it said it (:attr:`FrameProtocol.events`)."""

    SHUTDOWN_READ = "the peer shut down reading"
    SHUTDOWN_WRITE = "the peer shut down writing"
    CLOSE = "the peer closed"
    EOF = "the transport ended"


_CONTROL_EVENTS: Final = {
    SHUTDOWN_READ: Event.SHUTDOWN_READ,
    SHUTDOWN_WRITE: Event.SHUTDOWN_WRITE,
    CLOSE: Event.CLOSE,
}
_FRAMES: Final = Inbound.FRAMES
_SHUT_IN: Final = Inbound.SHUT
_OPEN_OUT: Final = Outbound.OPEN


class FrameProtocol:
    """One end of the framed protocol; see the module's theory of operation.

    Attributes:
        inbound: the :class:`Inbound` state.
        outbound: the :class:`Outbound` state.
        peer_reading: False once the peer shut down reading or closed.
        events: the :class:`Event` list, appended as control frames are
            parsed; the user clears it.
        outbox: control frames queued and not sent yet.
        error: the :class:`~greenflow.BrokenError` that broke the inbound
            stream, or ``None``.
    """

    __slots__ = (
        "_body",
        "_data",
        "_eof",
        "_length",
        "_pos",
        "_read_shut",
        "_scatter",
        "_slots",
        "error",
        "events",
        "inbound",
        "outbound",
        "outbox",
        "peer_reading",
    )

    def __init__(self) -> None:
        self.inbound = _FRAMES
        self.outbound = _OPEN_OUT
        self.peer_reading = True
        self.events: list[Event] = []
        self.outbox = bytearray()
        self.error: BrokenError | None = None
        self._data = memoryview(b"")  # what arrived and is not taken yet
        self._pos = 0
        self._body = 0  # payload bytes of the current data frame still to come
        self._length = 0  # the current data frame's length, for messages
        self._read_shut = False
        self._eof = False
        # The last scatter read planned: (body bytes due first, full frames, their header slots).
        self._scatter: tuple[int, int, bytes | bytearray] = (0, 0, _NO_HEADS)
        # Made for the last frame count asked for: the header slots and the
        # buffer list with their views in place (bodies in between).
        self._slots: tuple[bytearray, list[memoryview]] = (bytearray(), [])

    def __repr__(self) -> str:
        return f"<FrameProtocol in: {self.inbound.value}, out: {self.outbound.value}>"

    # -- receiving -----------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add what the transport read; ``b""`` is the transport's EOF."""
        if not data:
            self._eof = True
            return
        if self.inbound is Inbound.EOF or self._eof:
            raise ValueError("feed after the transport's EOF")
        rest = len(self._data) - self._pos
        if rest:  # a header split across reads (or a caller feeding ahead): rare, and small
            self._data = memoryview(bytes(self._data[self._pos :]) + bytes(data))
        else:
            self._data = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
        self._pos = 0

    def take(self, max_bytes: int) -> bytes:
        """Payload that arrived, at most ``max_bytes``; ``b""`` when there is none now.

        Then :attr:`inbound` says whether more may come after a :meth:`feed`
        (``FRAMES``), or not (the peer shut down writing or closed, or the
        transport ended). Raises :attr:`error` once the payload before the
        violation has been taken.
        """
        pieces = self._pull(max_bytes)
        if len(pieces) == 1:
            return bytes(pieces[0])
        return b"".join(pieces)

    def take_into(self, buffer: memoryview) -> int:
        """As :meth:`take`, into ``buffer``; returns the count."""
        pieces = self._pull(len(buffer))
        if not pieces:
            return 0
        # One join and one copy beat a slice assignment per frame.
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        count = len(data)
        buffer[:count] = data
        return count

    def discard(self) -> int:
        """Drop the payload that arrived (while closing); returns how much."""
        return sum(len(piece) for piece in self._pull(1 << 62))

    def trailing(self) -> bytes:
        """The bytes that arrived after the peer's Close, unparsed."""
        if self.inbound is not Inbound.CLOSED:
            return b""
        return bytes(self._data[self._pos :])

    def _pull(self, limit: int) -> list[memoryview]:
        """Payload pieces up to ``limit`` bytes, parsing headers on the way."""
        inbound = self.inbound
        if inbound is not _FRAMES and inbound is not _SHUT_IN:
            if inbound is Inbound.BROKEN:
                raise BrokenError(str(self.error)) from self.error
            return []
        data, pos, body = self._data, self._pos, self._body
        end = len(data)
        if pos == end and not self._eof:
            return []  # the common case of a read that must wait: nothing to parse
        pieces: list[memoryview] = []
        while limit:
            if body:
                count = min(body, end - pos, limit)
                if not count:
                    break
                pieces.append(data[pos : pos + count])
                pos += count
                body -= count
                limit -= count
            elif end - pos >= 4:
                if _LITTLE_ENDIAN and limit >= 2 * MAX_FRAME_SENT and end - pos >= 2 * _FULL_FRAME:
                    # Bulk data comes in full frames: check a run of their
                    # headers with one strided look, and slice out the bodies.
                    count = min((end - pos) // _FULL_FRAME, limit // MAX_FRAME_SENT, _MAX_RUN)
                    stop = pos + count * _FULL_FRAME
                    run = data[pos:stop]
                    heads = run.cast("I")[::_WORDS_PER_FRAME].tolist()
                    if heads.count(MAX_FRAME_SENT) == count and self.inbound is _FRAMES:
                        pieces += _BODY_CUTS[count - 1](run)
                        pos = stop
                        limit -= count * MAX_FRAME_SENT
                        continue
                (value,) = _unpack_from(data, pos)
                pos += 4
                if value <= MAX_FRAME_RECEIVED and (self.inbound is _FRAMES or not value):
                    body = self._length = value  # a zero-length frame is skipped
                elif not self._control(value):
                    break
            else:
                break
        self._pos, self._body = pos, body
        if not pieces:
            if self._eof and (self.inbound is _FRAMES or self.inbound is _SHUT_IN):
                self._end_of_transport(end - pos)
            if self.inbound is Inbound.BROKEN:
                raise BrokenError(str(self.error)) from self.error
        return pieces

    # -- scatter reads: payload straight into the reader's buffer -----------------

    def scatter(self, buffer: memoryview) -> list[memoryview] | None:
        """Buffers for one transport read that puts payload straight where ``buffer`` wants it.

        Bulk data comes as full frames, so a read can be laid out in advance:
        the rest of the current frame's body first (if any is due), then for
        each full frame that fits a 4-byte slot for its header and the next
        4096 bytes of ``buffer`` for its body. Read the transport into these
        buffers (a ``readv``) and tell :meth:`scattered` how many bytes came.

        Returns None when no read can be laid out now: the stream is not
        receiving frames, a header or payload is held (take it first), the
        buffer is strided, or it has no room for a full frame and no body is due.
        """
        if self.inbound is not _FRAMES or self._pos != len(self._data) or self._eof:
            return None
        if not buffer.c_contiguous:
            return None
        room = len(buffer)
        first = min(self._body, room)
        count = min((room - first) // MAX_FRAME_SENT, _MAX_RUN)
        if not count:
            if not first:
                return None
            self._scatter = (first, 0, _NO_HEADS)
            return [buffer[:first]]
        heads, template = self._slots
        if len(heads) != 4 * count:
            heads = bytearray(4 * count)
            view = memoryview(heads)
            template = [view[i : i + 4] for i in range(0, 4 * count, 4) for _ in (0, 1)]
            self._slots = (heads, template)
        self._scatter = (first, count, heads)
        buffers = template.copy()
        buffers[1::2] = _PAYLOAD_CUTS[count - 1](buffer[first:] if first else buffer)
        if first:
            buffers.insert(0, buffer[:first])
        return buffers

    def scattered(self, buffer: memoryview, count: int) -> int:
        """After a read into :meth:`scatter`'s buffers: the payload now at the start of ``buffer``.

        ``count`` is what the transport read (0 for its EOF). Where the
        frames were not full 4096-byte data frames (a control frame, another
        length, a read that ended early), the bytes from there on are handed
        to the parser as if fed, and what it makes of them is put in place:
        the layout is a guess, the parser has the last word.
        """
        first, frames, heads = self._scatter
        if count == first + frames * _FULL_FRAME and heads == _HEADERS[frames]:
            self._body -= first
            return count - 4 * frames
        if count <= first:
            if not count:
                self._eof = True  # take() says what it means: EOF, or a frame cut short
            self._body -= count
            return count
        self._body = 0
        placed, left, index = first, count - first, 0
        while index < frames and left >= 4 and heads[4 * index : 4 * index + 4] == _FULL_HEADER:
            got = min(left - 4, MAX_FRAME_SENT)
            placed += got
            left -= 4 + got
            if got < MAX_FRAME_SENT:  # the read ended inside this frame's body
                self._length = MAX_FRAME_SENT
                self._body = MAX_FRAME_SENT - got
                return placed
            index += 1
        if not left:
            return placed
        stream = bytearray()  # what came from frame ``index`` on, in the order it came
        start = first + index * MAX_FRAME_SENT
        while left:
            head = min(left, 4)
            stream += heads[4 * index : 4 * index + head]
            body = min(left - head, MAX_FRAME_SENT)
            stream += buffer[start : start + body]
            left -= head + body
            start += MAX_FRAME_SENT
            index += 1
        self.feed(stream)
        try:
            return placed + self.take_into(buffer[placed:])
        except BrokenError:
            if not placed:
                raise
            return placed  # the error stays: the next take raises it

    def _control(self, value: int) -> bool:
        """Act on a header that is not a data frame; True to parse on."""
        event = _CONTROL_EVENTS.get(value)
        if event is None:
            if value <= MAX_FRAME_RECEIVED:
                self._break(f"the peer sent a data frame of {value} bytes after its ShutdownWrite")
            else:
                self._break(
                    f"the peer sent a frame of {value} bytes (0x{value:08x}), more than the"
                    f" {MAX_FRAME_RECEIVED} bytes a frame may carry: the stream is out of step"
                )
            return False
        self.events.append(event)
        if event is Event.SHUTDOWN_READ:
            self.peer_reading = False
            return True
        if event is Event.SHUTDOWN_WRITE:
            self.inbound = _SHUT_IN
            return True
        self.inbound = Inbound.CLOSED
        self.peer_reading = False
        return False

    def _end_of_transport(self, left: int) -> None:
        if self._body:
            got = self._length - self._body
            self._break(f"the transport ended inside a data frame ({got} of its {self._length} bytes came)")
        elif left:
            self._break(f"the transport ended inside a frame header ({left} of its 4 bytes came)")
        elif self.inbound is _FRAMES:
            self.inbound = Inbound.EOF
            self.events.append(Event.EOF)
        else:  # after the peer's ShutdownWrite: as expected
            self.inbound = Inbound.EOF
            self.events.append(Event.EOF)

    def _break(self, message: str) -> None:
        self.inbound = Inbound.BROKEN
        self.error = BrokenError(message)

    # -- sending -------------------------------------------------------------------

    def frames(self, payload: memoryview) -> list[bytes | memoryview]:
        """``payload`` cut into data frames, as a few buffers for one gather write.

        Full frames are joined, headers and bodies, into one buffer per
        :data:`SEND_BATCH` bytes of payload: one copy in C is much cheaper
        than a header and a body per frame handed to the transport one by one.

        Raises:
            ClosedError: this side shut down writing or closed.
            BrokenError: the peer shut down reading or closed.
        """
        if self.outbound is not _OPEN_OUT or not self.peer_reading:
            self._refuse_data()
        size = len(payload)
        if size <= MAX_FRAME_SENT:
            return [_HEADER.pack(size), payload] if size else []
        out: list[bytes | memoryview] = []
        full = size - size % MAX_FRAME_SENT
        join = _FULL_HEADER.join
        for start in range(0, full, SEND_BATCH):
            batch = payload[start : start + SEND_BATCH] if full - start > SEND_BATCH else payload[start:full]
            # A leading b"" makes join put a header before the first body too.
            out.append(join((b"", *_PAYLOAD_CUTS[len(batch) // MAX_FRAME_SENT - 1](batch))))
        if full < size:
            out += (_HEADER.pack(size - full), payload[full:])
        return out

    def frames_of(self, buffers: list[memoryview]) -> list[bytes | memoryview]:
        """As :meth:`frames`, for the concatenation of ``buffers``.

        Small buffers are joined first, so that a writev of many pieces does
        not become as many tiny frames; large ones are framed where they are.
        """
        if len(buffers) == 1:
            return self.frames(buffers[0])
        total = sum(len(b) for b in buffers)
        if total <= _JOIN_UP_TO:
            return self.frames(memoryview(b"".join(buffers)))
        out: list[bytes | memoryview] = []
        for buffer in buffers:
            out += self.frames(buffer)
        return out

    def _refuse_data(self) -> None:
        # This side's shutdown beats the peer's doing; the peer's Close beats
        # the Close we send in answer to it.
        if self.outbound is Outbound.SHUT or self.peer_reading:
            raise ClosedError(f"cannot send data: this side has {self.outbound.value}")
        what = "closed" if self.inbound is Inbound.CLOSED else "shut down reading"
        raise BrokenError(f"cannot send data: the peer has {what}")

    def shut_write(self) -> bool:
        """Queue ShutdownWrite; True the first time (False after a Close too)."""
        if self.outbound is not _OPEN_OUT:
            return False
        self.outbound = Outbound.SHUT
        self.outbox += _HEADER.pack(SHUTDOWN_WRITE)
        return True

    def shut_read(self) -> bool:
        """Queue ShutdownRead; True the first time, and never after a Close."""
        if self.outbound is Outbound.CLOSED or self._read_shut:
            return False
        self._read_shut = True
        self.outbox += _HEADER.pack(SHUTDOWN_READ)
        return True

    def close(self) -> bool:
        """Queue Close; True the first time. Nothing is sent after it."""
        if self.outbound is Outbound.CLOSED:
            return False
        self.outbound = Outbound.CLOSED
        self.outbox += _HEADER.pack(CLOSE)
        return True

    def pending(self) -> bytes:
        """The queued control frames, to send now; the outbox is cleared."""
        out = bytes(self.outbox)
        self.outbox.clear()
        return out
