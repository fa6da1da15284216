"""greenflow.kit: direction state, refusals in the contract's order, argument checks."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import gevent
import pytest

import greenflow
from greenflow import BrokenError, BusyError, ClosedError, Flow, FlowTimeout
from greenflow.kit import (
    MAX_TIMEOUT,
    Direction,
    DirectionState,
    check_buffers,
    check_timeout,
    check_writable_buffer,
)
from greenflow.testing import check_flow_pair, memory_pair

sys.path.insert(0, str(Path(__file__).parent.parent / "docs" / "examples"))
from counting_flow import CountingFlow


def test_a_direction_is_taken_and_left() -> None:
    reader = Direction(reading=True)
    assert reader.enter("read") is False
    assert reader.busy
    with pytest.raises(BusyError, match="another greenlet is already reading"):
        reader.enter("read")
    reader.leave()
    assert not reader.busy


def test_the_refusals_come_in_the_contracts_order() -> None:
    writer = Direction(reading=False)
    writer.fail(BrokenError("the peer reset"))
    with pytest.raises(BrokenError, match=r"an earlier write failed \(the peer reset\)"):
        writer.enter("write")
    assert writer.shut()  # a local shutdown beats an earlier failure
    with pytest.raises(ClosedError, match="shut down writing"):
        writer.enter("write")
    writer.busy = True
    with pytest.raises(BusyError):  # busy beats shut down
        writer.enter("write")
    writer.close()
    with pytest.raises(ClosedError, match="the flow is closed"):  # closed beats everything
        writer.enter("write")
    assert writer.error is not None and "reset" in str(writer.error)


def test_a_reading_direction_at_eof_or_shut_answers_eof() -> None:
    reader = Direction(reading=True)
    reader.end()
    assert reader.state is DirectionState.EOF
    assert reader.enter("read") is True
    assert not reader.busy
    broken = Direction(reading=True)
    broken.fail(BrokenError("cut"))
    with pytest.raises(BrokenError):
        broken.enter("read")
    assert broken.shut()
    assert broken.enter("read") is True
    assert not broken.shut()  # the first time only


def test_the_per_call_timer_is_the_directions() -> None:
    reader = Direction(reading=True)
    reader.enter("read")
    reader.arm(0.01, "read")
    reader.arm(10, "read")  # once per call: the first timer stays
    with pytest.raises(FlowTimeout, match=r"read did not complete within the flow's timeout of 0.01 seconds"):
        gevent.sleep(5)
    reader.leave()
    reader.enter("read")
    reader.arm(None, "read")  # no limit: no timer
    gevent.sleep(0.02)
    reader.leave()


def test_an_interrupted_write_breaks_the_direction_and_a_read_does_not() -> None:
    writer = Direction(reading=False)
    timeout = gevent.Timeout(1)
    assert writer.interrupted(timeout, "write") is timeout
    assert writer.state is DirectionState.BROKEN
    assert "may have sent part of its data" in str(writer.error)
    reader = Direction(reading=True)
    reader.interrupted(timeout, "read")
    assert reader.state is DirectionState.OPEN
    reader.close()
    assert isinstance(reader.interrupted(timeout, "read"), ClosedError)


@pytest.mark.parametrize("value", [10**400, float("inf"), MAX_TIMEOUT * 2])
def test_a_timeout_too_large_is_a_value_error(value: float) -> None:
    with pytest.raises(ValueError, match="at most"):
        check_timeout(value)
    left, right = memory_pair()
    with pytest.raises(ValueError, match="timeout must be at most"):
        left.timeout = value
    left.close()
    right.close()


def test_writev_refuses_a_single_buffer_and_names_a_bad_item() -> None:
    with pytest.raises(TypeError, match="writev takes an iterable of bytes-like objects, not bytes"):
        check_buffers(b"abc")
    with pytest.raises(TypeError, match="expected a bytes-like object, not int"):
        check_buffers([b"x", 5])
    with pytest.raises(TypeError, match="not int"):
        check_buffers(5)  # type: ignore[arg-type]


def test_a_strided_buffer_is_writable_and_a_read_only_one_is_not() -> None:
    strided = memoryview(bytearray(8))[::2]
    assert check_writable_buffer(strided).nbytes == 4
    with pytest.raises(TypeError, match="read-only"):
        check_writable_buffer(b"abcd")


def _tls_pair() -> tuple[Flow, Flow]:
    from tls_helpers import contexts, shared_certs, tls_over

    return tls_over(greenflow.socketpair, *contexts(shared_certs()))


MAKERS: dict[str, Callable[[], tuple[Flow, Flow]]] = {
    "socketpair": greenflow.socketpair,
    "pipes": greenflow.pipe_pair,
    "memory": memory_pair,
    "tls": _tls_pair,
}


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_misuse_gets_the_same_error_on_every_flow(kind: str) -> None:
    left, right = MAKERS[kind]()
    try:
        with pytest.raises(TypeError, match="writev takes an iterable of bytes-like objects, not bytes"):
            left.writev(b"abc")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="expected a bytes-like object, not int"):
            left.writev([b"x", 5])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="read-only"):
            right.read_into(b"abcd")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="writable buffer, not int"):
            right.read_into(5)  # type: ignore[arg-type]
        left.write(b"wxyz")  # nothing above was sent, nothing was taken
        strided = bytearray(8)
        count = right.read_into(memoryview(strided)[::2])
        assert count >= 1
        assert bytes(strided[: 2 * count : 2]) == b"wxyz"[:count]
    finally:
        left.close()
        right.close()


def _counting_pair(make: Callable[[], tuple[Flow, Flow]]) -> Callable[[], tuple[Flow, Flow]]:
    def make_counting() -> tuple[Flow, Flow]:
        left, right = make()
        return CountingFlow(left), CountingFlow(right)

    return make_counting


@pytest.mark.parametrize("make", [greenflow.socketpair, memory_pair], ids=["socketpair", "memory"])
def test_the_documented_example_passes_the_suite(
    make: Callable[[], tuple[Flow, Flow]],
) -> None:
    check_flow_pair(_counting_pair(make))


def test_the_documented_example_flow_counts() -> None:
    left, right = _counting_pair(greenflow.socketpair)()
    with left, right:
        left.writev([b"ab", b"cd"])
        left.shutdown("write")
        assert right.read() == b"abcd"
        assert right.read() == b""
        assert isinstance(left, CountingFlow) and isinstance(right, CountingFlow)
        assert (left.bytes_out, right.bytes_in) == (4, 4)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_a_read_only_buffer_is_refused_at_eof_and_once_closed(kind: str) -> None:
    """Found in review: descriptor flows answered EOF (or ClosedError) before checking the buffer."""
    left, right = MAKERS[kind]()
    left.shutdown("write")
    assert right.read() == b""
    with pytest.raises(TypeError, match="read-only"):
        right.read_into(b"abcd")  # type: ignore[arg-type]
    right.close()
    with pytest.raises(TypeError, match="read-only"):
        right.read_into(b"abcd")  # type: ignore[arg-type]
    left.close()
