"""The core's scatter reads: frames laid out in advance, read straight into place, checked after.

``readv`` here is the system call's rule written out (fill the buffers in
order, stop when the bytes run out), so that every layout the core plans is
tried against every way a transport can cut the stream, with no sockets.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenflow import BrokenError
from greenflow.framing import (
    CLOSE,
    MAX_FRAME_RECEIVED,
    SHUTDOWN_READ,
    SHUTDOWN_WRITE,
    Event,
    FrameProtocol,
    Inbound,
)


def header(value: int) -> bytes:
    return struct.pack("<I", value)


def frame(payload: bytes) -> bytes:
    return header(len(payload)) + payload


def body(size: int, seed: int = 0) -> bytes:
    return bytes((seed + i * 31) % 251 for i in range(size))


def full_frames(count: int, seed: int = 0) -> tuple[bytes, bytes]:
    """``count`` full 4096-byte frames: the stream and their payload."""
    payloads = [body(4096, seed + i) for i in range(count)]
    return b"".join(frame(p) for p in payloads), b"".join(payloads)


def readv(buffers: list[memoryview], data: bytes) -> int:
    """What ``os.readv`` does with ``data`` waiting: fill the buffers in order."""
    at = 0
    for buffer in buffers:
        part = min(len(buffer), len(data) - at)
        buffer[:part] = data[at : at + part]
        at += part
        if at == len(data):
            break
    return at


class Reader:
    """The adapter's read loop over a stream, with scatter reads where the core plans one."""

    def __init__(self, stream: bytes, cuts: list[int]) -> None:
        self.core = FrameProtocol()
        self.stream = stream
        self.cuts = cuts
        self.at = 0
        self.turn = 0
        self.scattered = 0  # reads that went straight into place

    def _next_cut(self) -> bytes:
        """What the transport has for the next read (it may take less)."""
        size = self.cuts[self.turn % len(self.cuts)]
        self.turn += 1
        return self.stream[self.at : self.at + size]

    def _readv(self, plan: list[memoryview]) -> int:
        count = readv(plan, self._next_cut())
        self.at += count
        return count

    def _read(self) -> bytes:
        data = self._next_cut()
        self.at += len(data)
        return data

    def read_into(self, buffer: bytearray) -> int:
        view = memoryview(buffer)
        core = self.core
        while True:
            plan = core.scatter(view)
            if plan is not None:
                self.scattered += 1
                got = core.scattered(view, self._readv(plan)) or core.take_into(view)
            else:
                got = core.take_into(view)
                if not got and core.inbound is Inbound.FRAMES:
                    core.feed(self._read())  # b"" once the stream is over: EOF
                    continue
            if got or core.inbound is not Inbound.FRAMES:
                return got

    def read_all(self, size: int) -> bytes:
        got = bytearray()
        buffer = bytearray(size)
        while count := self.read_into(buffer):
            got += buffer[:count]
        return bytes(got)


# -- the plan ---------------------------------------------------------------------------------


def test_a_plan_is_header_slots_between_the_bodies_in_the_buffer() -> None:
    core = FrameProtocol()
    buffer = bytearray(3 * 4096 + 100)
    plan = core.scatter(memoryview(buffer))
    assert plan is not None
    assert [len(b) for b in plan] == [4, 4096] * 3
    stream, payload = full_frames(3)
    assert core.scattered(memoryview(buffer), readv(plan, stream)) == 3 * 4096
    assert buffer[: 3 * 4096] == payload
    assert buffer[3 * 4096 :] == bytes(100)  # nothing written past the payload


def test_no_plan_where_the_core_must_parse_first() -> None:
    core = FrameProtocol()
    assert core.scatter(memoryview(bytearray(4095))) is None  # no room for a full frame
    assert core.scatter(memoryview(bytearray(8192))[::2]) is None  # strided: no system call fills it
    core.feed(frame(b"held"))
    assert core.scatter(memoryview(bytearray(8192))) is None  # payload held: take it first
    assert core.take(100) == b"held"
    core.feed(header(SHUTDOWN_WRITE))
    assert core.take(100) == b""
    assert core.inbound is Inbound.SHUT
    assert core.scatter(memoryview(bytearray(8192))) is None  # not receiving frames


def test_no_plan_after_the_transports_eof() -> None:
    core = FrameProtocol()
    core.feed(b"")
    assert core.scatter(memoryview(bytearray(8192))) is None


def test_the_rest_of_a_body_comes_first_then_full_frames() -> None:
    core = FrameProtocol()
    core.feed(header(4096) + b"a" * 1000)
    assert core.take(5000) == b"a" * 1000
    buffer = bytearray(3096 + 4096)
    plan = core.scatter(memoryview(buffer))
    assert plan is not None
    assert [len(b) for b in plan] == [3096, 4, 4096]
    assert core.scattered(memoryview(buffer), readv(plan, b"b" * 3096 + frame(b"c" * 4096))) == 7192
    assert buffer == b"b" * 3096 + b"c" * 4096


def test_a_body_due_and_a_small_buffer_reads_the_body_alone() -> None:
    core = FrameProtocol()
    core.feed(header(4096) + b"a")
    assert core.take(10) == b"a"
    buffer = bytearray(100)  # less than the 4095 bytes due
    plan = core.scatter(memoryview(buffer))
    assert plan is not None
    assert [len(b) for b in plan] == [100]
    assert core.scattered(memoryview(buffer), readv(plan, b"b" * 100)) == 100
    buffer = bytearray(5000)  # room for the rest of the body but not for a frame more
    plan = core.scatter(memoryview(buffer))
    assert plan is not None
    assert [len(b) for b in plan] == [3995]
    assert core.scattered(memoryview(buffer), readv(plan, b"c" * 3000)) == 3000  # short: 995 still due
    plan = core.scatter(memoryview(bytearray(995 + 4096)))  # now a frame more fits
    assert plan is not None
    assert [len(b) for b in plan] == [995, 4, 4096]


def test_a_plan_covers_at_most_64_frames() -> None:
    core = FrameProtocol()
    plan = core.scatter(memoryview(bytearray(100 * 4096)))
    assert plan is not None
    assert len(plan) == 128


# -- reads that end early ---------------------------------------------------------------------


def test_a_read_ending_inside_a_body_leaves_the_rest_due() -> None:
    stream, payload = full_frames(4)
    reader = Reader(stream, [4100 + 4 + 10, 100_000])
    buffer = bytearray(4 * 4096)
    assert reader.read_into(buffer) == 4096 + 10
    assert buffer[: 4096 + 10] == payload[: 4096 + 10]
    assert reader.read_all(4 * 4096) == payload[4096 + 10 :]
    assert reader.scattered == 3  # each read went straight into place, the last one found EOF


@pytest.mark.parametrize("into_header", [1, 2, 3])
def test_a_read_ending_inside_a_header_hands_it_to_the_parser(into_header: int) -> None:
    stream, payload = full_frames(3)
    reader = Reader(stream, [4100 + into_header, 100_000])
    buffer = bytearray(3 * 4096)
    assert reader.read_into(buffer) == 4096
    assert reader.core.scatter(memoryview(buffer)) is None  # part of a header held
    assert reader.read_all(3 * 4096) == payload[4096:]


def test_a_read_ending_at_a_frame_boundary() -> None:
    stream, payload = full_frames(3)
    reader = Reader(stream, [4100, 8200])
    assert reader.read_all(3 * 4096) == payload


def test_eof_at_a_frame_boundary_is_eof() -> None:
    stream, payload = full_frames(1)
    reader = Reader(stream, [100_000])
    assert reader.read_all(8192) == payload
    assert reader.core.inbound is Inbound.EOF
    assert reader.core.events == [Event.EOF]


def test_eof_inside_a_body_due_is_a_frame_cut_short() -> None:
    stream, _ = full_frames(1)
    reader = Reader(stream[:1000], [100_000])
    buffer = bytearray(8192)
    assert reader.read_into(buffer) == 996
    with pytest.raises(BrokenError, match=r"inside a data frame \(996 of its 4096 bytes"):
        reader.read_into(buffer)


# -- headers that are not full data frames: the parser decides --------------------------------


def test_a_shutdown_write_after_full_frames() -> None:
    stream, payload = full_frames(3)
    reader = Reader(stream + header(SHUTDOWN_WRITE), [100_000])
    buffer = bytearray(8 * 4096)
    assert reader.read_into(buffer) == 3 * 4096
    assert buffer[: 3 * 4096] == payload
    assert reader.core.inbound is Inbound.SHUT
    assert reader.core.events == [Event.SHUTDOWN_WRITE]
    assert reader.read_into(buffer) == 0


def test_control_frames_between_full_frames() -> None:
    first, one = full_frames(2, seed=1)
    second, two = full_frames(2, seed=2)
    stream = first + header(SHUTDOWN_READ) + second + header(CLOSE) + b"next protocol"
    reader = Reader(stream, [100_000])
    assert reader.read_all(8 * 4096) == one + two
    assert reader.core.events == [Event.SHUTDOWN_READ, Event.CLOSE]
    assert reader.core.peer_reading is False
    assert reader.core.trailing() == b"next protocol"


def test_a_zero_length_frame_is_skipped_on_the_fast_path_too() -> None:
    first, one = full_frames(1, seed=1)
    second, two = full_frames(2, seed=2)
    stream = first + header(0) + second + header(SHUTDOWN_WRITE)
    reader = Reader(stream, [100_000])
    assert reader.read_all(4 * 4096) == one + two
    assert reader.core.inbound is Inbound.SHUT


def test_frames_of_other_lengths_mixed_in() -> None:
    lengths = [4096, 1, 4096, 100, 5000, 4096, 4095]
    parts = [body(length, seed) for seed, length in enumerate(lengths)]
    stream = b"".join(frame(p) for p in parts) + header(SHUTDOWN_WRITE)
    for cuts in ([100_000], [4100], [3, 4097, 9000], [1]):
        reader = Reader(stream, cuts)
        assert reader.read_all(4 * 4096) == b"".join(parts), cuts


def test_an_oversize_frame_after_full_frames_comes_after_their_payload() -> None:
    stream, payload = full_frames(2)
    reader = Reader(stream + header(MAX_FRAME_RECEIVED + 1) + b"x" * 5000, [100_000])
    buffer = bytearray(4 * 4096)
    assert reader.read_into(buffer) == 2 * 4096
    assert buffer[: 2 * 4096] == payload
    message = f"a frame of {MAX_FRAME_RECEIVED + 1} bytes"
    with pytest.raises(BrokenError, match=message):
        reader.read_into(buffer)
    with pytest.raises(BrokenError, match=message):  # sticky
        reader.read_into(buffer)


def test_an_oversize_frame_first_breaks_at_once() -> None:
    reader = Reader(header(0x12345678) + b"x" * 9000, [100_000])
    with pytest.raises(BrokenError, match=r"a frame of 305419896 bytes \(0x12345678\)"):
        reader.read_into(bytearray(4 * 4096))
    assert reader.core.inbound is Inbound.BROKEN


def test_a_larger_frame_than_4096_is_parsed_and_reading_goes_back_to_the_fast_path() -> None:
    big = body(10_000, 9)
    tail, payload = full_frames(4, seed=3)
    reader = Reader(frame(big) + tail, [100_000])
    assert reader.read_all(16 * 4096) == big + payload
    assert reader.scattered >= 2


# -- the property: any stream of frames, cut anyhow, read with any buffers ------------------

_lengths = st.one_of(st.just(4096), st.just(4096), st.just(0), st.integers(min_value=1, max_value=9000))
_endings = st.sampled_from([b"", header(SHUTDOWN_WRITE), header(CLOSE), header(SHUTDOWN_READ)])


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(_lengths, max_size=20),
    ending=_endings,
    cuts=st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=6),
    size=st.integers(min_value=1, max_value=70_000),
)
def test_any_frames_cut_anyhow_arrive_exactly_through_scatter_reads(
    lengths: list[int], ending: bytes, cuts: list[int], size: int
) -> None:
    payloads = [body(length, seed) for seed, length in enumerate(lengths)]
    stream = b"".join(frame(p) for p in payloads) + ending
    reader = Reader(stream, cuts)
    assert reader.read_all(size) == b"".join(payloads)
    assert reader.core.inbound in (Inbound.EOF, Inbound.SHUT, Inbound.CLOSED)
