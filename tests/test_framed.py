"""The framed flow: the contract over every transport, hvsock's sizes, a lossy transport, the wire."""

from __future__ import annotations

import struct
from collections.abc import Callable

import gevent
import pytest

import greenflow
from greenflow import BrokenError, ClosedError, Flow, FramedFlow, Shutdown
from greenflow.framing import CLOSE, MAX_FRAME_RECEIVED, SHUTDOWN_READ, SHUTDOWN_WRITE
from greenflow.testing import MemoryFlow, MemoryPipe, check_flow_pair, lockstep_pair, memory_pair

from pairs import clogged, tcp_pair
from tls_helpers import contexts, shared_certs, tls_over

Pair = tuple[Flow, Flow]


def framed(make: Callable[[], tuple[Flow, Flow]], close_timeout: float = 5.0) -> Callable[[], Pair]:
    def make_framed() -> Pair:
        a, b = make()
        return FramedFlow(a, close_timeout=close_timeout), FramedFlow(b, close_timeout=close_timeout)

    return make_framed


def header(value: int) -> bytes:
    return struct.pack("<I", value)


def frame(payload: bytes) -> bytes:
    return header(len(payload)) + payload


def read_to_eof(flow: Flow) -> bytes:
    got = bytearray()
    while chunk := flow.read():
        got += chunk
    return bytes(got)


def read_exactly(flow: Flow, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        chunk = flow.read(size - len(got))
        assert chunk, f"EOF after {len(got)} of {size} bytes"
        got += chunk
    return bytes(got)


def pattern(size: int, seed: int) -> bytes:
    return bytes((seed + i * 7) % 251 for i in range(min(size, 251 * 7))) * (size // (251 * 7) + 1)


# -- the contract ----------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_conformance_over_a_socketpair() -> None:
    check_flow_pair(framed(greenflow.socketpair), framed(clogged(greenflow.socketpair)))


@pytest.mark.timeout(300)
def test_conformance_over_tcp() -> None:
    check_flow_pair(framed(tcp_pair))


@pytest.mark.timeout(300)
def test_conformance_over_a_memory_pair() -> None:
    check_flow_pair(framed(memory_pair))


@pytest.mark.timeout(300)
def test_conformance_over_a_lockstep_pair() -> None:
    check_flow_pair(framed(lockstep_pair))


@pytest.mark.timeout(300)
def test_conformance_over_tls() -> None:
    client_ctx, server_ctx = contexts(shared_certs())
    check_flow_pair(framed(lambda: tls_over(greenflow.socketpair, client_ctx, server_ctx)))


# -- hvsock's sizes, both ways at once, each followed by a half-close -----------------------

SIZES = [0, 1, 4095, 4096, 4097, 4098, 4099, 5000, 1024 * 1024 - 1, 1024 * 1024, 1024 * 1024 + 1]


def lossy_pair(buffer_size: int = 4 * 1024 * 1024) -> tuple[MemoryFlow, MemoryFlow]:
    """A memory pair that drops what is in flight on shutdown("write") or close, as Hyper-V did."""
    left, right = MemoryPipe(buffer_size), MemoryPipe(buffer_size)
    return LossyFlow(left, right), LossyFlow(right, left)


class LossyFlow(MemoryFlow):
    """Drops what it sent and the peer has not read yet when it shuts down writing or closes."""

    def shutdown(self, how: Shutdown | str = Shutdown.WRITE) -> None:
        if Shutdown(how).writes and not self.closed:
            self.outgoing.discard()
        super().shutdown(how)

    def close(self) -> None:
        if not self.closed:
            self.outgoing.discard()
        super().close()


TRANSPORTS: dict[str, Callable[[], tuple[Flow, Flow]]] = {
    "socketpair": greenflow.socketpair,
    "lossy": lossy_pair,
}


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
@pytest.mark.parametrize("size", SIZES)
def test_sizes_both_ways_then_half_close(transport: str, size: int) -> None:
    a, b = framed(TRANSPORTS[transport])()
    out_a, out_b = pattern(size, 1)[:size], pattern(size, 2)[:size]

    def send(flow: Flow, data: bytes) -> None:
        flow.write(data)
        flow.shutdown("write")

    with a, b:
        greenlets = [
            gevent.spawn(send, a, out_a),
            gevent.spawn(send, b, out_b),
            gevent.spawn(read_to_eof, a),
            gevent.spawn(read_to_eof, b),
        ]
        gevent.joinall(greenlets, timeout=30, raise_error=True)
        assert greenlets[2].value == out_b
        assert greenlets[3].value == out_a


# -- a lossy transport: plain flows lose data over it, framed flows lose none ------------------


@pytest.mark.parametrize("ending", ["shutdown", "close"])
def test_the_lossy_transport_loses_data_of_plain_flows(ending: str) -> None:
    a, b = lossy_pair()
    data = pattern(100_000, 3)
    a.write(data)
    a.shutdown("write") if ending == "shutdown" else a.close()
    got = read_to_eof(b)
    assert len(got) < len(data)  # what was in flight is gone
    a.close()
    b.close()


@pytest.mark.parametrize("ending", ["shutdown", "close"])
def test_framed_flows_lose_nothing_over_the_lossy_transport(ending: str) -> None:
    a, b = framed(lossy_pair)()
    data = pattern(100_000, 4)
    a.write(data)
    if ending == "shutdown":
        a.shutdown("write")
    else:
        a.close()
    assert read_to_eof(b) == data
    b.close()
    assert a.close_gracefully(5) is True
    assert b.close_gracefully(5) is True
    assert a.underlying.closed and b.underlying.closed


def test_close_gracefully_over_the_lossy_transport_waits_for_the_peers_close() -> None:
    a, b = framed(lossy_pair)()
    data = pattern(300_000, 5)
    sending = gevent.spawn(a.write, data)
    receiving = gevent.spawn(read_to_eof, b)
    sending.get(timeout=10)
    closing = gevent.spawn(a.close_gracefully, 10)
    assert receiving.get(timeout=10) == data
    b.close()
    assert closing.get(timeout=10) is True


# -- interop by bytes: what goes on the wire, and hand-built frames ---------------------------


def raw_and_framed(**options: float) -> tuple[Flow, FramedFlow]:
    raw, transport = greenflow.socketpair()
    return raw, FramedFlow(transport, **options)


def test_frames_on_the_wire_byte_for_byte() -> None:
    raw, flow = raw_and_framed()
    with raw, flow:
        flow.write(b"hi")
        flow.writev([b"a" * 5000, b"b" * 10])
        flow.write(b"")
        flow.shutdown("read")
        flow.shutdown("write")
        body = b"a" * 5000 + b"b" * 10
        expected = (
            frame(b"hi")
            + frame(body[:4096])
            + frame(body[4096:])
            + header(SHUTDOWN_READ)
            + header(SHUTDOWN_WRITE)
            + header(CLOSE)  # both directions shut down: the protocol's end
        )
        assert read_exactly(raw, len(expected)) == expected
        raw.write(header(CLOSE))
        assert raw.read() == b""  # then the transport is closed
        assert flow.close_gracefully(5) is True


def test_hand_built_data_frames_and_a_zero_length_frame() -> None:
    raw, flow = raw_and_framed()
    with raw, flow:
        raw.write(frame(b"1") + header(0) + frame(b"f" * 4096) + header(SHUTDOWN_WRITE))
        assert read_to_eof(flow) == b"1" + b"f" * 4096
        flow.write(b"reply")  # a half-close: writing goes on
        assert read_exactly(raw, 9) == frame(b"reply")


def test_a_header_split_into_single_bytes() -> None:
    raw, transport = lockstep_pair()  # each write returns once the framed side has read it
    flow = FramedFlow(transport)
    stream = frame(b"split") + header(SHUTDOWN_WRITE)

    def dribble() -> None:
        for byte in stream:
            raw.write(bytes([byte]))

    with raw, flow:
        writing = gevent.spawn(dribble)
        assert read_to_eof(flow) == b"split"
        writing.get(timeout=5)


def test_the_peers_shutdown_read_makes_writes_fail() -> None:
    raw, flow = raw_and_framed()
    with raw, flow:
        raw.write(header(SHUTDOWN_READ) + frame(b"x"))
        assert flow.read() == b"x"
        with pytest.raises(BrokenError, match="the peer has shut down reading"):
            flow.write(b"y")
        with pytest.raises(BrokenError):
            flow.write(b"")


def test_the_peers_close_gives_eof_broken_writes_and_our_close_in_answer() -> None:
    raw, flow = raw_and_framed(close_timeout=5)
    with raw:
        raw.write(frame(b"last") + header(CLOSE) + b"after")
        assert read_to_eof(flow) == b"last"
        with pytest.raises(BrokenError, match="the peer has closed"):
            flow.write(b"y")
        assert read_exactly(raw, 4) == header(CLOSE)  # our answer
        raw.shutdown("write")  # the peer's EOF: the transport is closed then
        assert raw.read() == b""
        assert flow.close_gracefully(5) is True
        assert flow.underlying.closed


def test_unwrap_hands_back_the_bytes_after_the_peers_close() -> None:
    raw, flow = raw_and_framed()
    with raw:
        raw.write(header(CLOSE) + b"next protocol")
        assert flow.read() == b""
        transport, trailing = flow.unwrap()
        assert trailing == b"next protocol"
        assert flow.closed and not transport.closed
        assert read_exactly(raw, 4) == header(CLOSE)
        transport.write(b"plain again")
        assert raw.read() == b"plain again"
        transport.close()
        with pytest.raises(ClosedError):
            flow.unwrap()


@pytest.mark.parametrize("transport", ["socketpair", "lockstep"])
def test_unwrap_on_both_ends(transport: str) -> None:
    a, b = framed({"socketpair": greenflow.socketpair, "lockstep": lockstep_pair}[transport])()
    sending = gevent.spawn(a.write, b"framed")
    assert b.read() == b"framed"
    sending.get(timeout=5)
    left = gevent.spawn(a.unwrap)
    right = gevent.spawn(b.unwrap)
    (ta, rest_a), (tb, rest_b) = left.get(timeout=5), right.get(timeout=5)
    assert rest_a == rest_b == b""
    with ta, tb:
        sending = gevent.spawn(ta.write, b"clear")
        assert tb.read() == b"clear"
        sending.get(timeout=5)


def test_unwrap_refuses_data_instead_of_a_close() -> None:
    raw, flow = raw_and_framed()
    with raw, flow:
        raw.write(frame(b"unread"))
        with pytest.raises(BrokenError, match="data instead of its Close"):
            flow.unwrap()


def test_unwrap_refuses_eof_before_a_close() -> None:
    raw, flow = raw_and_framed()
    with raw, flow:
        raw.shutdown("write")
        with pytest.raises(BrokenError, match="the transport ended before the peer's Close"):
            flow.unwrap()


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (frame(b"ok") + header(MAX_FRAME_RECEIVED + 1), f"a frame of {MAX_FRAME_RECEIVED + 1} bytes"),
        (frame(b"ok") + header(9)[:3], r"inside a frame header \(3 of its 4 bytes"),
        (frame(b"ok") + header(9) + b"abc", r"inside a data frame \(3 of its 9 bytes"),
    ],
    ids=["oversize", "eof-in-header", "eof-in-body"],
)
def test_bad_streams_are_broken_after_the_data_before_them(stream: bytes, message: str) -> None:
    raw, flow = raw_and_framed()
    with raw, flow:
        raw.write(stream)
        raw.shutdown("write")
        got = bytearray()
        with pytest.raises(BrokenError, match=message):
            while chunk := flow.read():
                got += chunk
        assert got.startswith(b"ok")  # the data before the fault came first
        with pytest.raises(BrokenError):  # sticky
            flow.read()


# -- closing: the finisher is bounded -------------------------------------------------------


def test_a_silent_peer_cannot_hold_the_transport_past_close_timeout() -> None:
    raw, flow = raw_and_framed(close_timeout=0.1)
    with raw:
        flow.close()
        assert flow.closed
        assert flow.close_gracefully(None) is False  # the finisher gave up after 0.1 s
        assert flow.finished and flow.underlying.closed
        assert read_exactly(raw, 4) == header(CLOSE)


def test_close_gracefully_gives_up_at_its_own_timeout() -> None:
    raw, flow = raw_and_framed(close_timeout=30)
    with raw:
        assert flow.close_gracefully(0.05) is False
        assert flow.finished and flow.underlying.closed


def test_close_with_a_write_blocked_closes_the_transport_at_once() -> None:
    a, b = framed(clogged(greenflow.socketpair))()
    with b:
        writing = gevent.spawn(a.write, b"w" * (1024 * 1024))
        gevent.sleep(0)  # the hub starts the writer, which runs until the full socket blocks it
        a.close()
        with pytest.raises(ClosedError):
            writing.get(timeout=5)
        assert a.finished and a.ended_cleanly is False


def test_close_timeout_must_be_a_number() -> None:
    raw, transport = greenflow.socketpair()
    with raw, transport:
        with pytest.raises(ValueError, match="close_timeout"):
            FramedFlow(transport, close_timeout=None)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            FramedFlow(transport, close_timeout=-1)
        with pytest.raises(TypeError, match="over a Flow"):
            FramedFlow(raw.socket)  # type: ignore[arg-type]


def test_the_transport_timeout_moves_to_the_framed_flow_and_back() -> None:
    raw, transport = greenflow.socketpair(timeout=7)
    flow = FramedFlow(transport)
    assert flow.timeout == 7 and transport.timeout is None
    assert "FramedFlow" in repr(flow)
    assert flow.local_address == transport.local_address
    assert flow.peer_address == transport.peer_address
    with raw:
        raw.write(header(CLOSE))
        back, _ = flow.unwrap()
        assert back.timeout == 7
        back.close()


# -- control frames and a busy writer ----------------------------------------------------------


def test_shutdown_read_while_a_write_is_blocked_goes_out_after_it() -> None:
    raw, flow = raw_and_framed()
    data = pattern(2 * 1024 * 1024, 6)[: 2 * 1024 * 1024]
    with raw, flow:
        writing = gevent.spawn(flow.write, data)
        gevent.sleep(0)  # the writer runs until the full socket blocks it
        flow.shutdown("read")
        expected = b"".join(frame(data[at : at + 4096]) for at in range(0, len(data), 4096))
        expected += header(SHUTDOWN_READ)
        assert read_exactly(raw, len(expected)) == expected
        writing.get(timeout=5)


def test_a_write_waits_for_the_shutdown_read_being_sent() -> None:
    raw, transport = lockstep_pair()  # the ShutdownRead waits for the raw side to read it
    flow = FramedFlow(transport)
    with raw, flow:
        flow.shutdown("read")
        gevent.sleep(0)  # the background sender starts and waits for a reader
        writing = gevent.spawn(flow.write, b"after")
        gevent.sleep(0)
        assert not writing.dead  # waiting for the sender, not refused with BusyError
        assert read_exactly(raw, 4) == header(SHUTDOWN_READ)
        assert read_exactly(raw, 9) == frame(b"after")
        writing.get(timeout=5)


def test_bytes_after_the_peers_close_are_not_lost_by_unwrap() -> None:
    raw, flow = raw_and_framed()
    with raw:
        raw.write(header(CLOSE))
        assert flow.read() == b""
        assert read_exactly(raw, 4) == header(CLOSE)  # the finisher's answer
        raw.write(b"more")
        transport, trailing = flow.unwrap()
        with transport:
            got = trailing
            while len(got) < 4:  # kept by the finisher, or still in the transport
                got += transport.read()
            assert got == b"more"


def test_unwrap_while_another_greenlet_reads_is_busy() -> None:
    raw, flow = raw_and_framed()
    with raw, flow:
        reading = gevent.spawn(flow.read)
        gevent.sleep(0)
        with pytest.raises(greenflow.BusyError, match="cannot unwrap"):
            flow.unwrap()
        flow.close()
        with pytest.raises(ClosedError):
            reading.get(timeout=5)
