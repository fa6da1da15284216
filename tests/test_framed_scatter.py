"""FramedFlow's fast path over a socket flow: ``read_into`` scatters frames straight into place.

The peer here is a raw socket flow writing hand-built frames in pieces, one
piece at a time once the reader is blocked again, so that each of the
reader's ``readv`` calls gets exactly one piece: headers split across reads,
reads ending inside a body, frames of other lengths, control frames, an
oversize frame, EOF in the middle, all on the path that reads into place.
"""

from __future__ import annotations

import struct

import gevent
import pytest

import greenflow
from greenflow import BrokenError, ClosedError, Flow, FlowTimeout, FramedFlow
from greenflow.framing import CLOSE, MAX_FRAME_RECEIVED, SHUTDOWN_WRITE
from greenflow.testing import wait_all_blocked


def header(value: int) -> bytes:
    return struct.pack("<I", value)


def frame(payload: bytes) -> bytes:
    return header(len(payload)) + payload


def body(size: int, seed: int) -> bytes:
    return bytes((seed + i * 31) % 251 for i in range(size))


def full_frames(count: int, seed: int = 0) -> tuple[bytes, bytes]:
    payloads = [body(4096, seed + i) for i in range(count)]
    return b"".join(frame(p) for p in payloads), b"".join(payloads)


def raw_and_framed(**options: float) -> tuple[Flow, FramedFlow]:
    raw, transport = greenflow.socketpair()
    flow = FramedFlow(transport, **options)
    assert flow._scatter_read is not None  # the fast path is the one under test
    return raw, flow


def read_in_pieces(
    pieces: list[bytes], size: int = 65536, *, into: bool = True
) -> tuple[bytes, BaseException | None, Flow]:
    """Write ``pieces`` one per read of the framed side; what it read, and how it ended.

    The framed side reads with ``read_into`` (``into``, the fast path) or
    ``read`` (which parses the frames of block reads: the same pieces, for contrast).
    """
    raw, flow = raw_and_framed()
    got = bytearray()

    def read() -> BaseException | None:
        buffer = bytearray(size)
        try:
            if into:
                while count := flow.read_into(buffer):
                    got.extend(buffer[:count])
            else:
                while chunk := flow.read(size):
                    assert type(chunk) is bytes
                    got.extend(chunk)
        except BrokenError as exc:
            return exc
        return None

    with flow:
        reading = gevent.spawn(read)
        for piece in pieces:
            wait_all_blocked()
            raw.write(piece)
        wait_all_blocked()
        raw.shutdown("write")
        error = reading.get(timeout=5)
    return bytes(got), error, raw


def test_full_frames_in_one_read_go_straight_into_place() -> None:
    stream, payload = full_frames(16)
    got, error, raw = read_in_pieces([stream + header(SHUTDOWN_WRITE)])
    assert (got, error) == (payload, None)
    raw.close()


@pytest.mark.parametrize("use_read_into", [True, False], ids=["read_into", "read"])
@pytest.mark.parametrize("into", [1, 2, 3, 4, 5, 2000, 4099])
def test_reads_ending_inside_a_frame(into: int, use_read_into: bool) -> None:
    stream, payload = full_frames(6)
    cut = 2 * 4100 + into  # inside the third frame's header (1-3) or body
    pieces = [stream[:cut], stream[cut:], header(SHUTDOWN_WRITE)]
    got, error, raw = read_in_pieces(pieces, into=use_read_into)
    assert (got, error) == (payload, None)
    raw.close()


def test_a_header_split_one_byte_per_read() -> None:
    stream, payload = full_frames(3)
    pieces = [stream[:4100], *(bytes([b]) for b in stream[4100:4104]), stream[4104:], header(SHUTDOWN_WRITE)]
    got, error, raw = read_in_pieces(pieces)
    assert (got, error) == (payload, None)
    raw.close()


@pytest.mark.parametrize("use_read_into", [True, False], ids=["read_into", "read"])
def test_frames_of_other_lengths_and_zero_length_frames_mixed_in(use_read_into: bool) -> None:
    parts = [body(4096, 1), body(1, 2), b"", body(4096, 3), body(5000, 4), b"", body(4095, 5), body(4096, 6)]
    stream = b"".join(frame(p) for p in parts)
    pieces = [stream[:9000], stream[9000:12345], stream[12345:]]
    got, error, raw = read_in_pieces(pieces, size=4 * 4096, into=use_read_into)
    assert (got, error) == (b"".join(parts), None)
    raw.close()


@pytest.mark.parametrize("use_read_into", [True, False], ids=["read_into", "read"])
def test_an_oversize_frame_after_full_frames_is_broken_naming_the_length(use_read_into: bool) -> None:
    stream, payload = full_frames(2)
    got, error, raw = read_in_pieces(
        [stream + header(MAX_FRAME_RECEIVED + 1) + b"x" * 8000], into=use_read_into
    )
    assert got == payload  # the data before the fault came first
    assert isinstance(error, BrokenError)
    assert f"a frame of {MAX_FRAME_RECEIVED + 1} bytes" in str(error)
    raw.close()


@pytest.mark.parametrize("use_read_into", [True, False], ids=["read_into", "read"])
def test_eof_inside_a_body_is_broken(use_read_into: bool) -> None:
    stream, payload = full_frames(2)
    got, error, raw = read_in_pieces([stream[: 4100 + 1000]], into=use_read_into)
    assert got == payload[: 4096 + 996]
    assert isinstance(error, BrokenError)
    assert "inside a data frame (996 of its 4096 bytes came)" in str(error)
    raw.close()


def test_eof_at_a_frame_boundary_is_eof() -> None:
    stream, payload = full_frames(3)
    got, error, raw = read_in_pieces([stream])
    assert (got, error) == (payload, None)
    raw.close()


def test_the_peers_close_after_full_frames_gives_eof_and_our_close() -> None:
    raw, flow = raw_and_framed()
    stream, payload = full_frames(4)
    with raw, flow:
        raw.write(stream + header(CLOSE))
        buffer = bytearray(65536)
        assert flow.read_into(buffer) == len(payload)
        assert buffer[: len(payload)] == payload
        assert flow.read_into(buffer) == 0
        with pytest.raises(BrokenError, match="the peer has closed"):
            flow.write(b"late")
        assert raw.read() == header(CLOSE)  # the finisher's answer


def test_a_timeout_on_the_fast_path_loses_nothing() -> None:
    raw, flow = raw_and_framed()
    flow.timeout = 0.05
    stream, payload = full_frames(2)
    with raw, flow:
        buffer = bytearray(65536)
        with pytest.raises(FlowTimeout):
            flow.read_into(buffer)
        raw.write(stream)
        assert flow.read_into(buffer) == len(payload)
        assert buffer[: len(payload)] == payload


def test_close_wakes_a_read_blocked_on_the_fast_path() -> None:
    raw, flow = raw_and_framed()
    with raw:
        reading = gevent.spawn(flow.read_into, bytearray(65536))
        wait_all_blocked()
        flow.close()
        with pytest.raises(ClosedError):
            reading.get(timeout=5)


def test_shutdown_read_wakes_a_read_blocked_on_the_fast_path_with_eof() -> None:
    raw, flow = raw_and_framed()
    with raw, flow:
        reading = gevent.spawn(flow.read_into, bytearray(65536))
        wait_all_blocked()
        flow.shutdown("read")
        assert reading.get(timeout=5) == 0


def test_strided_and_small_buffers_take_the_general_path() -> None:
    raw, flow = raw_and_framed()
    stream, payload = full_frames(2)
    with raw, flow:
        raw.write(stream + header(SHUTDOWN_WRITE))
        strided = bytearray(2 * 4096)
        assert flow.read_into(memoryview(strided)[::2]) == 4096
        assert strided[::2] == payload[:4096]
        small = bytearray(1000)
        got = bytearray()
        while count := flow.read_into(small):
            got += small[:count]
        assert bytes(got) == payload[4096:]


def test_the_fast_path_over_a_socket_flow_only() -> None:
    a, b = greenflow.testing.memory_pair()
    assert FramedFlow(a)._scatter_read is None
    assert FramedFlow(b)._scatter_read is None


def test_read_gives_at_most_the_frames_of_one_block() -> None:
    raw, flow = raw_and_framed()
    stream, payload = full_frames(20)
    with raw, flow:
        raw.write(stream + header(SHUTDOWN_WRITE))
        first = flow.read(1 << 20)
        assert first == payload[:65536]
        assert flow.read(100) == payload[65536 : 65536 + 100]
        got = bytearray(first) + payload[65536 : 65536 + 100]
        while chunk := flow.read(1 << 20):
            got += chunk
        assert bytes(got) == payload
