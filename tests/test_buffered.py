"""BufferedFlow: the contract as a layer, records, limits, EOF, push-back, detach."""

from __future__ import annotations

import itertools

import gevent
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import greenflow
from greenflow import (
    BrokenError,
    BufferedFlow,
    BusyError,
    ClosedError,
    Flow,
    FlowError,
    FlowTimeout,
    IncompleteReadError,
    LimitOverrunError,
)
from greenflow.testing import check_flow_pair, lockstep_pair, memory_pair

from pairs import MEMORY_PAIRS, clogged

Pair = tuple[Flow, Flow]


def buffered(make_pair: object) -> object:
    def make() -> Pair:
        a, b = make_pair()  # type: ignore[operator]
        return BufferedFlow(a), BufferedFlow(b)

    return make


@pytest.mark.parametrize("kind", sorted(MEMORY_PAIRS))
def test_conformance_over_memory(kind: str) -> None:
    check_flow_pair(buffered(MEMORY_PAIRS[kind]))  # type: ignore[arg-type]


def test_conformance_over_sockets() -> None:
    check_flow_pair(buffered(greenflow.socketpair), buffered(clogged(greenflow.socketpair)))  # type: ignore[arg-type]


def feed(chunks: list[bytes], *, end: bool = True) -> tuple[BufferedFlow, gevent.Greenlet]:  # type: ignore[type-arg]
    """A buffered flow whose peer writes ``chunks`` one write each (lockstep: one read each)."""
    a, b = lockstep_pair()

    def send() -> None:
        for chunk in chunks:
            b.write(chunk)
        if end:
            b.shutdown("write")

    return BufferedFlow(a), gevent.spawn(send)


# -- records ----------------------------------------------------------------------------


def test_records_at_every_split_position() -> None:
    stream = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nBODY"
    for cut in range(len(stream) + 1):
        flow, sending = feed([stream[:cut], stream[cut:]])
        assert flow.read_until(b"\r\n") == b"GET / HTTP/1.1\r\n"
        assert flow.read_until(b"\r\n\r\n") == b"Host: x\r\n\r\n"
        assert flow.read_exactly(4) == b"BODY"
        with pytest.raises(IncompleteReadError) as info:
            flow.read_until(b"\r\n")
        assert (info.value.partial, info.value.expected) == (b"", None)
        sending.get(timeout=5)
        flow.close()


def test_readline_and_iteration_return_the_partial_last_line_then_stop() -> None:
    flow, sending = feed([b"one\ntw", b"o\nthr", b"ee"])
    assert list(flow) == [b"one\n", b"two\n", b"three"]
    assert flow.readline() == b""
    assert flow.read() == b""
    sending.get(timeout=5)


def test_read_until_at_eof_raises_with_the_partial_record() -> None:
    flow, sending = feed([b"abc"])
    with pytest.raises(IncompleteReadError) as info:
        flow.read_until(b";")
    error = info.value
    assert isinstance(error, EOFError) and isinstance(error, FlowError)
    assert (error.partial, error.expected) == (b"abc", None)
    assert "after 3 bytes, before the delimiter b';'" in str(error)
    sending.get(timeout=5)


def test_read_exactly_at_eof_raises_with_what_came() -> None:
    flow, sending = feed([b"12", b"345"])
    assert flow.read_exactly(0) == b""
    assert flow.read_exactly(2) == b"12"
    with pytest.raises(IncompleteReadError) as info:
        flow.read_exactly(10)
    assert (info.value.partial, info.value.expected) == (b"345", 10)
    assert str(info.value) == "the flow reached EOF after 3 bytes, before 10 bytes"
    with pytest.raises(IncompleteReadError):
        flow.read_exactly(1)
    assert flow.read_exactly(0) == b""
    sending.get(timeout=5)


def test_the_limit_counts_the_delimiter_and_leaves_the_data_buffered() -> None:
    flow, sending = feed([b"abc\r", b"\nabcd\r\n"])
    assert flow.read_until(b"\r\n", max_size=5) == b"abc\r\n"  # exactly at the limit
    with pytest.raises(LimitOverrunError) as info:
        flow.read_until(b"\r\n", max_size=5)
    assert (info.value.delimiter, info.value.limit) == (b"\r\n", 5)
    assert "no b'\\r\\n' within the first 5 bytes" in str(info.value)
    assert flow.read_until(b"\r\n", max_size=6) == b"abcd\r\n"  # nothing was lost
    sending.get(timeout=5)


def test_the_default_limit_applies_to_readline() -> None:
    flow, sending = feed([b"x" * 10, b"\n"])
    flow.limit = 8
    with pytest.raises(LimitOverrunError):
        flow.readline()
    assert flow.readline(max_size=11) == b"x" * 10 + b"\n"
    sending.get(timeout=5)


def test_a_peer_that_never_sends_the_delimiter_is_stopped_at_the_limit() -> None:
    a, b = memory_pair()
    flow = BufferedFlow(a, limit=100_000)
    sending = gevent.spawn(lambda: [b.write(b"z" * 4096) for _ in range(10_000)])
    with pytest.raises(LimitOverrunError):
        flow.readline()
    # Memory stays within the limit plus one read below, whatever the peer sends.
    assert 100_000 <= flow.buffered <= 100_000 + 65536
    flow.close()
    with pytest.raises(BrokenError):
        sending.get(timeout=5)


def test_a_reset_mid_record_is_an_error_not_eof() -> None:
    a, b = greenflow.socketpair()
    flow = BufferedFlow(a)
    b.write(b"half a rec")
    a.write(b"unread by the peer, so that its close resets")
    b.close()
    with pytest.raises(BrokenError):
        flow.read_until(b"\n")
    with pytest.raises(BrokenError):  # sticky
        flow.read()
    flow.close()


def test_a_timeout_mid_record_loses_nothing() -> None:
    a, b = memory_pair()
    flow = BufferedFlow(a)
    flow.timeout = 0.05
    b.write(b"part")
    with pytest.raises(FlowTimeout):
        flow.read_until(b"\n")
    b.write(b" two\n")
    assert flow.read_until(b"\n") == b"part two\n"
    flow.close()
    b.close()


def test_bad_arguments() -> None:
    a, b = memory_pair()
    flow = BufferedFlow(a)
    with pytest.raises(ValueError, match="at least one byte"):
        flow.read_until(b"")
    with pytest.raises(ValueError, match="max_size must be at least 2"):
        flow.read_until(b"\r\n", max_size=1)
    with pytest.raises(ValueError, match="size must be at least 0"):
        flow.read_exactly(-1)
    with pytest.raises(TypeError):
        flow.read_exactly(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit must be at least 1"):
        BufferedFlow(b, limit=0)
    with pytest.raises(TypeError, match="needs a Flow"):
        BufferedFlow(object())  # type: ignore[arg-type]
    flow.limit = 1
    with pytest.raises(ValueError, match="shorter than the delimiter"):
        flow.read_until(b"\r\n")
    flow.close()
    b.close()


# -- peek, unread, detach ------------------------------------------------------------------


def test_peek_waits_for_one_byte_and_consumes_nothing() -> None:
    flow, sending = feed([b"hello", b" world"])
    assert flow.peek(3) == b"hel"
    assert flow.peek(100) == b"hello"  # what is buffered: no wait for more
    assert flow.read(100) == b"hello"
    assert flow.read(100) == b" world"
    assert flow.peek() == b""  # at EOF
    sending.get(timeout=5)


def test_unread_pushes_back_in_front() -> None:
    flow, sending = feed([b"rest\n"])
    flow.unread(b"first\n")
    flow.unread(memoryview(b"zero "))
    assert flow.readline() == b"zero first\n"
    buffer = bytearray(2)
    assert flow.read_into(buffer) == 2 and buffer == b"re"
    assert flow.readline() == b"st\n"
    flow.unread(b"after eof")
    assert flow.read() == b"after eof"
    flow.shutdown("read")
    flow.unread(b"discarded")
    assert flow.read() == b""
    sending.get(timeout=5)


def test_detach_hands_back_the_inner_flow_and_the_leftover() -> None:
    flow, sending = feed([b"PROXY TCP4 1.2.3.4\r\n\x16\x03\x01tls bytes"], end=False)
    inner = flow.underlying
    assert flow.read_until(b"\r\n") == b"PROXY TCP4 1.2.3.4\r\n"
    got, leftover = flow.detach()
    assert got is inner and leftover == b"\x16\x03\x01tls bytes"
    assert flow.closed and not inner.closed
    with pytest.raises(ClosedError):
        flow.read()
    with pytest.raises(ClosedError, match="cannot detach"):
        flow.detach()
    sending.get(timeout=5)
    inner.close()


def test_detach_refuses_while_another_greenlet_reads() -> None:
    a, b = memory_pair()
    flow = BufferedFlow(a)
    reading = gevent.spawn(flow.read)
    gevent.sleep(0)
    with pytest.raises(BusyError, match="cannot detach"):
        flow.detach()
    b.write(b"x")
    assert reading.get(timeout=5) == b"x"
    flow.close()
    b.close()


def test_attributes_come_from_the_inner_flow() -> None:
    a, b = greenflow.socketpair()
    flow = BufferedFlow(a)
    assert flow.underlying is a
    assert flow.local_address == a.local_address and flow.peer_address == a.peer_address
    flow.timeout = 3
    assert a.timeout == 3 == flow.timeout
    assert "0 bytes buffered" in repr(flow)
    flow.close()
    assert a.closed
    b.close()


# -- the property: chunking never changes the answers ----------------------------------------

_DELIMITERS = st.sampled_from([b"\n", b"\r\n", b"ab", b"\r\n\r\n"])
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("line"), st.integers(1, 12)),
        st.tuples(st.just("until"), _DELIMITERS, st.integers(4, 12)),
        st.tuples(st.just("exactly"), st.integers(0, 8)),
        st.tuples(st.just("unread"), st.binary(max_size=3)),
    ),
    max_size=12,
)


def reference(stream: bytes, ops: list[tuple[object, ...]]) -> list[object]:
    """What each operation returns or raises, from the whole stream at once."""
    rest = stream
    out: list[object] = []
    for op in ops:
        kind = op[0]
        if kind == "unread":
            rest = op[1] + rest  # type: ignore[operator]
            out.append(None)
        elif kind == "exactly":
            size = op[1]
            if len(rest) >= size:  # type: ignore[operator]
                out.append(rest[:size])  # type: ignore[misc]
                rest = rest[size:]  # type: ignore[misc]
            else:
                out.append(("incomplete", rest, size))
                rest = b""
        else:
            delimiter, limit = (b"\n", op[1]) if kind == "line" else (op[1], op[2])
            index = rest.find(delimiter, 0, limit)  # type: ignore[arg-type]
            if index >= 0:
                end = index + len(delimiter)  # type: ignore[arg-type]
                out.append(rest[:end])
                rest = rest[end:]
            elif len(rest) >= limit:  # type: ignore[operator]
                out.append("overrun")
            else:
                out.append(rest if kind == "line" else ("incomplete", rest, None))
                rest = b""
    return out


def run_ops(flow: BufferedFlow, ops: list[tuple[object, ...]]) -> list[object]:
    out: list[object] = []
    for op in ops:
        kind = op[0]
        try:
            if kind == "unread":
                out.append(flow.unread(op[1]))  # type: ignore[arg-type, func-returns-value]
            elif kind == "exactly":
                out.append(flow.read_exactly(op[1]))  # type: ignore[arg-type]
            elif kind == "line":
                out.append(flow.readline(max_size=op[1]))  # type: ignore[arg-type]
            else:
                out.append(flow.read_until(op[1], max_size=op[2]))  # type: ignore[arg-type]
        except IncompleteReadError as exc:
            out.append(("incomplete", exc.partial, exc.expected))
        except LimitOverrunError:
            out.append("overrun")
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=st.lists(st.sampled_from([b"a", b"b", b"x", b"\n", b"\r"]), max_size=40).map(b"".join),
    cuts=st.lists(st.integers(0, 40), max_size=8),
    ops=_OPS,
)
def test_chunking_never_changes_the_answers(
    stream: bytes, cuts: list[int], ops: list[tuple[object, ...]]
) -> None:
    points = sorted({min(cut, len(stream)) for cut in cuts} | {0, len(stream)})
    chunks = [stream[start:end] for start, end in itertools.pairwise(points) if end > start]
    flow, sending = feed(chunks)
    try:
        assert run_ops(flow, ops) == reference(stream, ops)
    finally:
        flow.close()
        sending.kill()


def test_record_reads_after_shutdown_read_answer_eof() -> None:
    flow, sending = feed([b"data\n"], end=False)
    flow.shutdown("read")
    assert flow.readline() == b""
    assert flow.peek() == b""
    assert flow.read_exactly(0) == b""
    with pytest.raises(IncompleteReadError):
        flow.read_exactly(1)
    with pytest.raises(IncompleteReadError):
        flow.read_until(b";")
    assert flow.read_into(bytearray(1)) == 0
    flow.close()
    sending.kill()


def test_read_into_after_a_reset_is_sticky() -> None:
    a, b = greenflow.socketpair()
    flow = BufferedFlow(a)
    a.write(b"unread by the peer, so that its close resets")
    b.close()
    with pytest.raises(BrokenError):
        flow.read_into(bytearray(8))
    with pytest.raises(BrokenError):
        flow.read_into(bytearray(8))
    flow.close()


def test_a_very_long_line_in_small_pieces() -> None:
    a, b = memory_pair()
    a.incoming.trickle = 4096
    line = bytes(range(11, 21)) * 500_000 + b"\n"  # 5 MB, newline only at the end
    sending = gevent.spawn(b.write, line)
    flow = BufferedFlow(a, limit=len(line))
    assert flow.readline() == line
    sending.get(timeout=10)
    flow.close()
    b.close()


def test_conformance_over_tls() -> None:
    from tls_helpers import contexts, shared_certs, tls_over

    client_ctx, server_ctx = contexts(shared_certs())
    check_flow_pair(buffered(lambda: tls_over(memory_pair, client_ctx, server_ctx)))  # type: ignore[arg-type]
