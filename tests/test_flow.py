"""The Flow base class: argument checks, Shutdown, and the defaults it gives."""

from __future__ import annotations

import gevent
import pytest

from greenflow import Flow, FlowTimeout, Shutdown
from greenflow.kit import check_bytes_like, check_max_bytes, check_timeout, parse_shutdown, start_timer
from greenflow.testing import MemoryFlow, check_flow_pair, memory_pair, wait_all_blocked


def test_shutdown_enum_and_strings() -> None:
    assert parse_shutdown("write") is Shutdown.WRITE
    assert parse_shutdown(Shutdown.READ_WRITE) is Shutdown.READ_WRITE
    assert Shutdown.READ.reads and not Shutdown.READ.writes
    assert Shutdown.WRITE.writes and not Shutdown.WRITE.reads
    assert Shutdown.READ_WRITE.reads and Shutdown.READ_WRITE.writes
    for bad in ("", "Write", "both", 0, None, b"write"):
        with pytest.raises(ValueError, match='how must be "read", "write" or "read_write"'):
            parse_shutdown(bad)  # type: ignore[arg-type]


def test_check_max_bytes() -> None:
    assert check_max_bytes(None) == 65536
    assert check_max_bytes(None, 10) == 10
    assert check_max_bytes(1) == 1
    with pytest.raises(ValueError, match="at least 1, not 0"):
        check_max_bytes(0)
    with pytest.raises(TypeError):
        check_max_bytes(2.0)  # type: ignore[arg-type]


def test_check_timeout() -> None:
    assert check_timeout(None) is None
    assert check_timeout(0) == 0.0
    assert check_timeout(2) == 2.0
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError):
            check_timeout(bad)
    for wrong in ("1", True, [1]):
        with pytest.raises(TypeError):
            check_timeout(wrong)  # type: ignore[arg-type]


def test_check_bytes_like() -> None:
    assert check_bytes_like(b"ab").tobytes() == b"ab"
    import array

    ints = array.array("i", [1, 2])
    view = check_bytes_like(ints)
    assert view.format == "B" and len(view) == 2 * ints.itemsize
    with pytest.raises(TypeError, match="bytes-like object, not str"):
        check_bytes_like("text")


def test_start_timer_raises_flow_timeout_naming_the_call() -> None:
    timer = start_timer(0.01, "frobnicate")
    try:
        with pytest.raises(
            FlowTimeout, match=r"frobnicate did not complete within the flow's timeout of 0\.01"
        ):
            gevent.sleep(1)
    finally:
        timer.close()


class ReadIntoOnly(MemoryFlow):
    """A flow that gives only read_into: Flow.read must be built on it."""

    read = Flow.read  # type: ignore[assignment]


def test_default_read_is_built_on_read_into() -> None:
    def make() -> tuple[Flow, Flow]:
        a, b = memory_pair()
        a.__class__ = b.__class__ = ReadIntoOnly
        return a, b

    check_flow_pair(make)


def test_close_gracefully_is_bounded_and_closes() -> None:
    a, b = memory_pair()
    a.timeout = 0.01  # the flow's own timeout does not cut close_gracefully short
    closing = gevent.spawn(a.close_gracefully, 5)
    assert b.read() == b""  # a shut down writing first
    gevent.sleep(0.05)
    assert not closing.ready()
    b.write(b"discarded")
    b.close()
    assert closing.get(timeout=5) is True
    assert a.closed


def test_close_gracefully_without_limit() -> None:
    a, b = memory_pair()
    closing = gevent.spawn(a.close_gracefully, None)
    wait_all_blocked()
    b.close()
    assert closing.get(timeout=5) is True


def test_flow_is_abstract() -> None:
    with pytest.raises(TypeError):
        Flow()  # type: ignore[abstract]
