"""The memtrace stream format, version 1: sans-IO encoder and decoder.

A memtrace stream is what a traced process sends to one viewer. It is made
of *sessions*, one per connection (a file saved by the viewer may hold
several, one after the other). Every session opens with a fixed preamble and
goes on with length-prefixed frames::

    preamble = b"GFMTRACE" version:u16
    frame    = length:u32 type:u8 payload      (length counts type + payload)

All integers are big-endian. A frame, its four length bytes included, is at
most :data:`MAX_FRAME` (32 KiB) long: the encoder leaves out the least
important entries of a record rather than go over, and the decoder refuses a
longer frame (a corrupt stream must not make the reader buffer gigabytes).
The preamble is told from a frame by its first byte: ``G`` (0x47), where a
frame's length, at most 32 KiB, starts with a zero byte. The version is
read before anything else, so that a reader meets a newer stream with a
clear "unknown version" error instead of garbage.

Records (the payload layouts; ``str`` is ``length:u16`` then UTF-8, at most
:data:`MAX_TEXT` bytes):

- ``HELLO`` (type 1), the first frame of every session: ``pid:u32
  started:f64`` (Unix time) ``interval:f64 frames:u8 top:u16 program:str``.
- ``SAMPLE`` (type 2), one per interval: ``seq:u32 elapsed:f64 rss:u64
  current:u64 peak:u64 dropped:u32``, then ``n:u16`` sites, each ``size:u64
  growth:i64 count:u32 count_growth:i32 depth:u8`` and ``depth`` frames of
  ``filename:str lineno:u32``, then ``n:u16`` greenlets, each ``label:str
  allocated:i64 total:i64``. Values are absolute (``size``, ``count``,
  ``rss``...) or changes since the previous *sample taken* (``growth``,
  ``allocated``), so a record that was dropped on the way loses nothing but
  its own moment; ``dropped`` counts the records this viewer lost just
  before this one.
- ``END`` (type 3): ``reason:str``; the tracer stopped.

Decoding errors are :class:`TraceFormatError` (a :class:`~greenflow.FlowError`);
a stream of another version is :class:`TraceVersionError`. After an error the
decoder stays broken: every later call raises the same error.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Final

from ..errors import FlowError

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_FRAME",
    "MAX_TEXT",
    "Decoder",
    "End",
    "GreenletUsage",
    "Hello",
    "Record",
    "Sample",
    "Site",
    "TraceFormatError",
    "TraceVersionError",
    "encode",
    "preamble",
]

#: The format version this module writes and reads.
FORMAT_VERSION: Final = 1

#: The first bytes of every session.
MAGIC: Final = b"GFMTRACE"

#: The most bytes one frame may take, its length prefix included.
MAX_FRAME: Final = 32 * 1024

#: The most bytes of UTF-8 one string may take (longer ones are cut).
MAX_TEXT: Final = 512

_PREAMBLE = struct.Struct(">8sH")
_LENGTH = struct.Struct(">I")
_HELLO = struct.Struct(">IddBH")
_SAMPLE = struct.Struct(">IdQQQI")
_SITE = struct.Struct(">QqIiB")
_LINE = struct.Struct(">I")
_USAGE = struct.Struct(">qq")
_COUNT = struct.Struct(">H")
_TEXT = struct.Struct(">H")


class TraceFormatError(FlowError):
    """A memtrace stream is truncated, corrupt, or not a memtrace stream."""


class TraceVersionError(TraceFormatError):
    """A memtrace stream of a format version this reader does not know."""


class _Type(enum.IntEnum):
    HELLO = 1
    SAMPLE = 2
    END = 3


@dataclass(frozen=True)
class Hello:
    """The first record of a session: who is traced, and how."""

    pid: int
    started: float
    interval: float
    frames: int
    top: int
    program: str


@dataclass(frozen=True)
class Site:
    """One allocation site: its traceback (innermost first) and what it holds."""

    frames: tuple[tuple[str, int], ...]
    size: int
    growth: int
    count: int
    count_growth: int


@dataclass(frozen=True)
class GreenletUsage:
    """Traced memory charged to one greenlet while it ran."""

    label: str
    allocated: int
    total: int


@dataclass(frozen=True)
class Sample:
    """One interval's record."""

    seq: int
    elapsed: float
    rss: int
    current: int
    peak: int
    dropped: int = 0
    sites: tuple[Site, ...] = field(default=())
    greenlets: tuple[GreenletUsage, ...] = field(default=())


@dataclass(frozen=True)
class End:
    """The tracer stopped; ``reason`` says why."""

    reason: str


Record = Hello | Sample | End


# -- encoding ---------------------------------------------------------------------------


def preamble() -> bytes:
    """The bytes that open a session."""
    return _PREAMBLE.pack(MAGIC, FORMAT_VERSION)


def _text(value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    if len(data) > MAX_TEXT:
        data = data[:MAX_TEXT].decode("utf-8", "ignore").encode()
    return _TEXT.pack(len(data)) + data


def _frame(kind: _Type, payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload) + 1) + bytes((kind,)) + payload


def _site(site: Site) -> bytes:
    frames = site.frames[:255]
    parts = [_SITE.pack(site.size, site.growth, site.count, site.count_growth, len(frames))]
    for filename, lineno in frames:
        parts.append(_text(filename))
        parts.append(_LINE.pack(lineno))
    return b"".join(parts)


def _fitting(items: list[bytes], room: int) -> tuple[list[bytes], int]:
    """The leading items that fit in ``room`` bytes, and the room left."""
    kept = []
    for item in items:
        if len(item) > room:
            break
        kept.append(item)
        room -= len(item)
    return kept, room


def encode(record: Record) -> bytes:
    """One record as a frame of at most :data:`MAX_FRAME` bytes.

    A sample with more sites or greenlets than fit keeps the first ones (the
    tracer sends them most important first) and leaves out the rest.
    """
    if isinstance(record, Hello):
        payload = _HELLO.pack(record.pid, record.started, record.interval, record.frames, record.top) + _text(
            record.program
        )
        return _frame(_Type.HELLO, payload)
    if isinstance(record, End):
        return _frame(_Type.END, _text(record.reason))
    head = _SAMPLE.pack(record.seq, record.elapsed, record.rss, record.current, record.peak, record.dropped)
    room = MAX_FRAME - _LENGTH.size - 1 - len(head) - 2 * _COUNT.size
    usages = [_text(usage.label) + _USAGE.pack(usage.allocated, usage.total) for usage in record.greenlets]
    # Greenlets get a quarter of the room at most; sites get the rest.
    usages, _ = _fitting(usages[:0xFFFF], room // 4)
    room -= sum(map(len, usages))
    sites, _ = _fitting([_site(site) for site in record.sites[:0xFFFF]], room)
    payload = b"".join([head, _COUNT.pack(len(sites)), *sites, _COUNT.pack(len(usages)), *usages])
    return _frame(_Type.SAMPLE, payload)


# -- decoding ---------------------------------------------------------------------------


class _State(enum.Enum):
    PREAMBLE = "awaiting a preamble"
    HELLO = "awaiting a HELLO record"
    RECORDS = "reading records"
    BROKEN = "broken"


class _Payload:
    """A cursor over one frame's payload; every read checks the bounds."""

    def __init__(self, data: bytes, kind: _Type) -> None:
        self._data = data
        self._at = 0
        self._kind = kind

    def take(self, shape: struct.Struct) -> tuple[int | float | bytes, ...]:
        end = self._at + shape.size
        if end > len(self._data):
            raise TraceFormatError(f"the {self._kind.name} record is cut short ({len(self._data)} bytes)")
        values = shape.unpack_from(self._data, self._at)
        self._at = end
        return values

    def int(self, shape: struct.Struct) -> int:
        (value,) = self.take(shape)
        assert isinstance(value, int)
        return value

    def text(self) -> str:
        length = self.int(_TEXT)
        end = self._at + length
        if end > len(self._data):
            raise TraceFormatError(f"the {self._kind.name} record is cut short inside a string")
        raw = self._data[self._at : end]
        self._at = end
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TraceFormatError(f"the {self._kind.name} record holds a string that is not UTF-8") from exc

    def finish(self) -> None:
        if self._at != len(self._data):
            extra = len(self._data) - self._at
            raise TraceFormatError(f"the {self._kind.name} record has {extra} bytes too many")


def _decode_hello(payload: _Payload) -> Hello:
    pid, started, interval, frames, top = payload.take(_HELLO)
    return Hello(int(pid), float(started), float(interval), int(frames), int(top), payload.text())


def _decode_site(payload: _Payload) -> Site:
    size, growth, count, count_growth, depth = (int(v) for v in payload.take(_SITE))
    frames = tuple((payload.text(), payload.int(_LINE)) for _ in range(depth))
    return Site(frames, size, growth, count, count_growth)


def _decode_sample(payload: _Payload) -> Sample:
    seq, elapsed, rss, current, peak, dropped = payload.take(_SAMPLE)
    sites = tuple(_decode_site(payload) for _ in range(payload.int(_COUNT)))
    usages = []
    for _ in range(payload.int(_COUNT)):
        label = payload.text()
        allocated, total = payload.take(_USAGE)
        usages.append(GreenletUsage(label, int(allocated), int(total)))
    return Sample(
        int(seq), float(elapsed), int(rss), int(current), int(peak), int(dropped), sites, tuple(usages)
    )


class Decoder:
    """Turns the bytes of a memtrace stream into records, as they arrive.

    ``feed(data)`` returns the records completed so far; ``end()`` says the
    stream is over and raises if it stopped inside a frame or a preamble.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._state = _State.PREAMBLE
        self._error: TraceFormatError | None = None

    def feed(self, data: bytes) -> list[Record]:
        """Take more bytes; return the records they complete, in order."""
        if self._error is not None:
            raise self._error
        self._buffer += data
        records: list[Record] = []
        try:
            while (record := self._next()) is not None:
                records.append(record)
        except TraceFormatError as exc:
            self._state = _State.BROKEN
            self._error = exc
            raise
        return records

    def end(self) -> None:
        """The stream is over: raise if it stopped in the middle of something."""
        if self._error is not None:
            raise self._error
        if self._buffer:
            self._error = TraceFormatError(
                f"the stream ends {len(self._buffer)} bytes into a frame or preamble ({self._state.value})"
            )
            self._state = _State.BROKEN
            raise self._error

    def _next(self) -> Record | None:
        buffer = self._buffer
        if buffer[:1] == MAGIC[:1] or self._state is _State.PREAMBLE:
            if len(buffer) < _PREAMBLE.size:
                if buffer and not MAGIC.startswith(bytes(buffer[: len(MAGIC)])):
                    raise TraceFormatError(f"not a memtrace stream: it starts {bytes(buffer[:8])!r}")
                return None
            magic, version = _PREAMBLE.unpack_from(buffer)
            if magic != MAGIC:
                raise TraceFormatError(f"not a memtrace stream: it starts {bytes(magic)!r}")
            if version != FORMAT_VERSION:
                raise TraceVersionError(
                    f"the stream is memtrace format version {version}; this reader knows only"
                    f" version {FORMAT_VERSION} (a newer greenflow wrote it?)"
                )
            del buffer[: _PREAMBLE.size]
            self._state = _State.HELLO
            if not buffer:
                return None
        if len(buffer) < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack_from(buffer)
        if length == 0 or length + _LENGTH.size > MAX_FRAME:
            raise TraceFormatError(f"a frame of {length} bytes: frames hold 1 to {MAX_FRAME - 4} bytes")
        if len(buffer) < _LENGTH.size + length:
            return None
        raw = bytes(buffer[_LENGTH.size + 1 : _LENGTH.size + length])
        code = buffer[_LENGTH.size]
        del buffer[: _LENGTH.size + length]
        return self._record(code, raw)

    def _record(self, code: int, raw: bytes) -> Record:
        try:
            kind = _Type(code)
        except ValueError:
            raise TraceFormatError(
                f"record type {code} is unknown to format version {FORMAT_VERSION}"
            ) from None
        if (kind is _Type.HELLO) != (self._state is _State.HELLO):
            raise TraceFormatError(f"the {kind.name} record arrived where the stream was {self._state.value}")
        payload = _Payload(raw, kind)
        record: Record
        if kind is _Type.HELLO:
            record = _decode_hello(payload)
            self._state = _State.RECORDS
        elif kind is _Type.SAMPLE:
            record = _decode_sample(payload)
        else:
            record = End(payload.text())
        payload.finish()
        return record
