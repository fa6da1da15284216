"""The sans-IO core of the framed protocol: the wire layout, byte by byte, and every branch."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenflow import BrokenError, ClosedError
from greenflow.framing import (
    CLOSE,
    MAX_FRAME_RECEIVED,
    MAX_FRAME_SENT,
    SHUTDOWN_READ,
    SHUTDOWN_WRITE,
    Event,
    FrameProtocol,
    Inbound,
    Outbound,
)


def header(value: int) -> bytes:
    return struct.pack("<I", value)


def frame(payload: bytes) -> bytes:
    return header(len(payload)) + payload


def wire(frames: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(f) for f in frames)


def take_all(core: FrameProtocol) -> bytes:
    got = bytearray()
    while chunk := core.take(1 << 20):
        got += chunk
    return bytes(got)


# -- the layout ----------------------------------------------------------------------


def test_control_codes_are_the_hvsock_ones() -> None:
    assert header(SHUTDOWN_READ) == b"\xef\xbe\xad\xde"
    assert header(SHUTDOWN_WRITE) == b"\xad\xde\xef\xbe"
    assert header(CLOSE) == b"\xad\xde\xad\xde"
    assert MAX_FRAME_SENT == 4096
    assert MAX_FRAME_RECEIVED >= 64 * 1024


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 8192, 10000])
def test_data_frames_are_at_most_4096_bytes(size: int) -> None:
    payload = bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]
    expected = b"".join(frame(payload[at : at + 4096]) for at in range(0, size, 4096))
    assert wire(FrameProtocol().frames(memoryview(payload))) == expected


def test_no_zero_length_frame_is_sent() -> None:
    core = FrameProtocol()
    assert core.frames(memoryview(b"")) == []
    assert wire(core.frames_of([memoryview(b""), memoryview(b"ab"), memoryview(b"")])) == frame(b"ab")
    assert core.frames_of([memoryview(b""), memoryview(b"")]) == []


def test_writev_joins_small_buffers_and_frames_large_ones_in_place() -> None:
    core = FrameProtocol()
    small = [memoryview(b"a" * 100), memoryview(b"b" * 100)]
    assert wire(core.frames_of(small)) == frame(b"a" * 100 + b"b" * 100)
    big = [memoryview(b"x" * 40000), memoryview(b"y" * 40000)]
    expected = wire(core.frames(big[0])) + wire(core.frames(big[1]))
    assert wire(core.frames_of(big)) == expected
    assert wire(core.frames_of([memoryview(b"solo")])) == frame(b"solo")


def test_control_frames_are_queued_once_in_order() -> None:
    core = FrameProtocol()
    assert core.shut_read() is True
    assert core.shut_read() is False
    assert core.shut_write() is True
    assert core.shut_write() is False
    assert core.close() is True
    assert core.close() is False
    assert core.shut_read() is False
    assert core.pending() == header(SHUTDOWN_READ) + header(SHUTDOWN_WRITE) + header(CLOSE)
    assert core.pending() == b""
    assert core.outbound is Outbound.CLOSED


def test_close_without_shutdown_is_one_frame() -> None:
    core = FrameProtocol()
    core.close()
    assert core.pending() == header(CLOSE)
    assert core.shut_write() is False


# -- refusals on sending -----------------------------------------------------------------


def test_data_after_our_shutdown_write_is_a_closed_error() -> None:
    core = FrameProtocol()
    core.shut_write()
    with pytest.raises(ClosedError, match="shut down writing"):
        core.frames(memoryview(b"x"))


def test_data_after_our_close_is_a_closed_error() -> None:
    core = FrameProtocol()
    core.close()
    with pytest.raises(ClosedError, match="closed"):
        core.frames(memoryview(b"x"))


def test_data_after_the_peers_shutdown_read_is_a_broken_error() -> None:
    core = FrameProtocol()
    core.feed(header(SHUTDOWN_READ) + frame(b"still"))
    assert core.take(100) == b"still"
    assert core.events == [Event.SHUTDOWN_READ]
    assert core.peer_reading is False
    with pytest.raises(BrokenError, match="the peer has shut down reading"):
        core.frames(memoryview(b"x"))


def test_data_after_the_peers_close_is_a_broken_error_even_after_our_answer() -> None:
    core = FrameProtocol()
    core.feed(header(CLOSE))
    assert core.take(10) == b""
    core.close()  # our answer
    with pytest.raises(BrokenError, match="the peer has closed"):
        core.frames(memoryview(b"x"))


# -- parsing -------------------------------------------------------------------------------


def test_data_frames_of_1_and_4096_bytes() -> None:
    core = FrameProtocol()
    core.feed(frame(b"z") + frame(b"q" * 4096))
    assert core.take(1 << 20) == b"z" + b"q" * 4096
    assert core.inbound is Inbound.FRAMES


def test_a_header_split_one_byte_at_a_time() -> None:
    core = FrameProtocol()
    stream = frame(b"hello") + header(SHUTDOWN_WRITE)
    got = bytearray()
    for byte in stream:
        core.feed(bytes([byte]))
        got += core.take(100)
    assert got == b"hello"
    assert core.inbound is Inbound.SHUT
    assert core.events == [Event.SHUTDOWN_WRITE]


def test_take_stops_at_max_bytes_and_goes_on_later() -> None:
    core = FrameProtocol()
    core.feed(frame(b"abc") + frame(b"defg") + header(SHUTDOWN_WRITE))
    assert core.take(2) == b"ab"
    assert core.take(3) == b"cde"
    assert core.take(100) == b"fg"
    assert core.take(100) == b""
    assert core.inbound is Inbound.SHUT


def test_take_into_gathers_across_frames() -> None:
    core = FrameProtocol()
    core.feed(frame(b"abc") + frame(b"defg"))
    buffer = bytearray(5)
    assert core.take_into(memoryview(buffer)) == 5
    assert buffer == b"abcde"
    assert core.take_into(memoryview(buffer)) == 2
    assert buffer[:2] == b"fg"
    assert core.take_into(memoryview(buffer)) == 0


def test_a_zero_length_frame_is_skipped_not_eof() -> None:
    core = FrameProtocol()
    core.feed(header(0) + header(0) + frame(b"after"))
    assert core.take(100) == b"after"
    assert core.inbound is Inbound.FRAMES
    core.feed(header(SHUTDOWN_WRITE) + header(0))  # one after ShutdownWrite is skipped too
    assert core.take(100) == b""
    assert core.inbound is Inbound.SHUT


def test_shutdown_write_then_close_then_trailing_bytes() -> None:
    core = FrameProtocol()
    core.feed(frame(b"data") + header(SHUTDOWN_WRITE) + header(CLOSE) + b"next protocol")
    assert core.take(100) == b"data"
    assert core.take(100) == b""
    assert core.inbound is Inbound.CLOSED
    assert core.events == [Event.SHUTDOWN_WRITE, Event.CLOSE]
    assert core.trailing() == b"next protocol"
    core.feed(b" and more")  # what follows the Close is kept, not parsed
    assert core.trailing() == b"next protocol and more"
    core.feed(b"")
    assert core.take(100) == b""
    assert core.inbound is Inbound.CLOSED


def test_no_trailing_bytes_before_a_close() -> None:
    core = FrameProtocol()
    core.feed(frame(b"x"))
    assert core.trailing() == b""


def test_each_control_code_alone() -> None:
    for code, event in [
        (SHUTDOWN_READ, Event.SHUTDOWN_READ),
        (SHUTDOWN_WRITE, Event.SHUTDOWN_WRITE),
        (CLOSE, Event.CLOSE),
    ]:
        core = FrameProtocol()
        core.feed(header(code))
        assert core.take(10) == b""
        assert core.events == [event], hex(code)


def test_eof_at_a_frame_boundary_is_eof() -> None:
    core = FrameProtocol()
    core.feed(frame(b"last"))
    core.feed(b"")
    assert core.take(100) == b"last"
    assert core.take(100) == b""
    assert core.inbound is Inbound.EOF
    assert core.events == [Event.EOF]
    assert core.take(100) == b""
    with pytest.raises(ValueError, match="after the transport's EOF"):
        core.feed(b"more")


def test_eof_after_shutdown_write_is_eof() -> None:
    core = FrameProtocol()
    core.feed(header(SHUTDOWN_WRITE))
    core.feed(b"")
    assert core.take(10) == b""
    assert core.inbound is Inbound.EOF
    assert core.events == [Event.SHUTDOWN_WRITE, Event.EOF]


def test_eof_inside_a_header_is_broken() -> None:
    core = FrameProtocol()
    core.feed(frame(b"ok") + header(7)[:2])
    core.feed(b"")
    assert core.take(100) == b"ok"
    with pytest.raises(BrokenError, match=r"inside a frame header \(2 of its 4 bytes"):
        core.take(100)
    assert core.inbound is Inbound.BROKEN
    with pytest.raises(BrokenError, match="frame header"):  # sticky
        core.take(100)


def test_eof_inside_a_body_is_broken() -> None:
    core = FrameProtocol()
    core.feed(header(10) + b"abc")
    assert core.take(100) == b"abc"
    core.feed(b"")
    with pytest.raises(BrokenError, match=r"inside a data frame \(3 of its 10 bytes"):
        core.take(100)


def test_an_oversize_frame_names_its_length_after_the_data_before_it() -> None:
    core = FrameProtocol()
    too_long = MAX_FRAME_RECEIVED + 1
    core.feed(frame(b"fine") + header(too_long) + b"junk")
    assert core.take(100) == b"fine"
    with pytest.raises(BrokenError, match=f"a frame of {too_long} bytes"):
        core.take(100)
    with pytest.raises(BrokenError, match=f"{too_long}"):
        core.discard()


def test_the_largest_frame_accepted() -> None:
    core = FrameProtocol()
    core.feed(frame(b"m" * MAX_FRAME_RECEIVED))
    assert core.take(1 << 20) == b"m" * MAX_FRAME_RECEIVED


def test_data_after_shutdown_write_is_broken() -> None:
    core = FrameProtocol()
    core.feed(header(SHUTDOWN_WRITE) + frame(b"late"))
    with pytest.raises(BrokenError, match="data frame of 4 bytes after its ShutdownWrite"):
        core.take(100)


def test_discard_drops_payload_and_parses_control_frames() -> None:
    core = FrameProtocol()
    core.feed(frame(b"a" * 5000) + header(CLOSE))
    assert core.discard() == 5000
    assert core.inbound is Inbound.CLOSED


def test_feeding_memoryviews_of_other_formats() -> None:
    core = FrameProtocol()
    words = memoryview(bytearray(frame(b"wxyz"))).cast("I")
    core.feed(words)
    assert core.take(10) == b"wxyz"


def test_repr_says_both_states() -> None:
    core = FrameProtocol()
    core.shut_write()
    assert repr(core) == "<FrameProtocol in: receiving frames, out: shut down writing>"


# -- the property: whatever is written arrives, in any cut ---------------------------------

_operations = st.lists(
    st.one_of(
        st.binary(max_size=9000).map(lambda data: ("write", data)),
        st.lists(st.binary(max_size=3000), max_size=4).map(lambda parts: ("writev", parts)),
        st.sampled_from([("shut_read", None), ("shut_write", None), ("close", None)]),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(operations=_operations, cuts=st.lists(st.integers(min_value=1, max_value=5000), min_size=1))
def test_any_writes_and_ends_cut_anyhow_deliver_exactly_the_bytes_then_eof(
    operations: list[tuple[str, object]], cuts: list[int]
) -> None:
    sender = FrameProtocol()
    stream = bytearray()
    sent = bytearray()
    for kind, argument in operations:
        if kind in ("write", "writev"):
            if sender.outbound is not Outbound.OPEN:
                continue
            if kind == "write":
                assert isinstance(argument, bytes)
                stream += wire(sender.frames(memoryview(argument)))
                sent += argument
            else:
                assert isinstance(argument, list)
                stream += wire(sender.frames_of([memoryview(p) for p in argument]))
                sent += b"".join(argument)
        else:
            getattr(sender, kind)()
            stream += sender.pending()
    if sender.outbound is Outbound.OPEN:  # end it, as the flow's close would
        sender.close()
        stream += sender.pending()

    receiver = FrameProtocol()
    got = bytearray()
    at = 0
    turn = 0
    while True:
        chunk = receiver.take(cuts[turn % len(cuts)])
        turn += 1
        if chunk:
            got += chunk
            continue
        if receiver.inbound is not Inbound.FRAMES:
            break
        size = cuts[turn % len(cuts)]
        receiver.feed(bytes(stream[at : at + size]))  # b"" at the end: the transport's EOF
        at += size
    assert bytes(got) == bytes(sent)
    assert receiver.inbound in (Inbound.SHUT, Inbound.CLOSED)
    assert receiver.take(10) == b""


def test_runs_of_full_frames_and_a_run_broken_by_a_short_frame() -> None:
    sender = FrameProtocol()
    payload = bytes(range(256)) * 64 * 5  # 80 KiB: full frames only
    stream = wire(sender.frames(memoryview(payload)))
    stream += frame(b"short") + wire(sender.frames(memoryview(payload[:8192]))) + header(SHUTDOWN_WRITE)
    core = FrameProtocol()
    core.feed(stream)
    assert take_all(core) == payload + b"short" + payload[:8192]
    assert core.inbound is Inbound.SHUT
    core = FrameProtocol()
    core.feed(stream)
    buffer = bytearray(10_000)
    assert core.take_into(memoryview(buffer)) == 10_000
    assert buffer == payload[:10_000]


def test_a_full_frame_run_stops_at_shutdown_write() -> None:
    core = FrameProtocol()
    core.feed(header(SHUTDOWN_WRITE) + frame(b"x" * 4096) + frame(b"y" * 4096))
    with pytest.raises(BrokenError, match="after its ShutdownWrite"):
        core.take(1 << 20)
