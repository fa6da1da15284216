"""The conformance checks about how a flow ends and how its calls fail.

Half-close and EOF, ``shutdown("read")``, close from any greenlet, a broken
peer, two users at once, timeouts and kills, a graceful close, and the
attributes. :mod:`._checks_data` has the checks about the bytes themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import gevent

from ..errors import BrokenError, BusyError, ClosedError, FlowError, FlowTimeout
from ..flow import Flow, Shutdown
from ._harness import (
    Context,
    blocked,
    check,
    expect,
    join,
    join_error,
    kill,
    pattern,
    read_to_eof,
    send_and_receive,
)


@check("shutdown('write') is a half-close; EOF is sticky")
def _half_close(ctx: Context) -> None:
    a, b = ctx.pair()

    def send_then_shut() -> None:
        a.write(b"from a")
        a.shutdown(Shutdown.WRITE)

    sending = ctx.spawn(send_then_shut)
    assert read_to_eof(b) == b"from a", "data before shutdown('write') was not delivered whole"
    join(sending, "write then shutdown('write')")
    for _ in range(3):
        assert b.read() == b"", "a read after EOF did not return b'' again"
    expect(ClosedError, lambda: a.write(b"x"), "write after shutdown('write')")
    expect(ClosedError, lambda: a.write(b""), "write(b'') after shutdown('write')")
    expect(ClosedError, lambda: a.writev([b"x"]), "writev after shutdown('write')")
    a.shutdown(Shutdown.WRITE)  # idempotent
    a.shutdown("write")
    send_and_receive(ctx, b, a, pattern(50_000, 4))  # the other direction still works
    # A layer may write to end a direction (TLS close_notify): like any
    # write, that needs the peer reading at the same time.
    shutting = ctx.spawn(b.shutdown, "write")
    assert a.read() == b"", "EOF did not reach a after b shut down writing"
    assert a.read(1) == b"", "EOF is not sticky"
    join(shutting, "shutdown('write')")


@check("shutdown('read') makes reads return b'', discards what is in flight, wakes a blocked reader")
def _shutdown_read(ctx: Context) -> None:
    a, b = ctx.pair()
    with blocked(ctx, a.read) as reading:
        a.shutdown("read")
        assert join(reading, "a read blocked when shutdown('read') was called") == b"", (
            "a read blocked during shutdown('read') did not return b''"
        )
    assert a.read() == b"", "read after shutdown('read') did not return b''"
    assert a.read_into(bytearray(4)) == 0, "read_into after shutdown('read') did not return 0"
    a.shutdown(Shutdown.READ)  # idempotent
    send_and_receive(ctx, a, b, b"writing still works")
    c, d = ctx.pair()
    ctx.spawn(d.write, b"in flight")
    ctx.settle()  # delivered, or waiting for a reader
    c.shutdown("read")
    got = c.read()
    assert got == b"", f"read after shutdown('read') returned data that was in flight: {got!r}"


@check("shutdown rejects anything but read, write and read_write")
def _shutdown_validation(ctx: Context) -> None:
    a, _b = ctx.pair()
    for bad in ("bogus", "WRITE", 1, None):
        expect(ValueError, partial(a.shutdown, bad), f"shutdown({bad!r})")  # type: ignore[arg-type]


@check("close is idempotent and every later call raises ClosedError")
def _close(ctx: Context) -> None:
    a, _b = ctx.pair()
    assert a.closed is False, "closed is not False on a new flow"
    with a:
        pass
    assert a.closed is True, "leaving 'with flow:' did not close it"
    a.close()
    a.close()
    calls: list[tuple[str, Callable[[], object]]] = [
        ("read", a.read),
        ("read(1)", lambda: a.read(1)),
        ("read_into", lambda: a.read_into(bytearray(8))),
        ("write", lambda: a.write(b"x")),
        ("write(b'')", lambda: a.write(b"")),
        ("writev", lambda: a.writev([b"x", b"y"])),
        ("shutdown('write')", lambda: a.shutdown("write")),
        ("shutdown('read')", lambda: a.shutdown("read")),
    ]
    for what, call in calls:
        expect(ClosedError, call, f"{what} on a closed flow")


@check("close from another greenlet wakes a blocked reader with ClosedError")
def _close_wakes_reader(ctx: Context) -> None:
    a, _b = ctx.pair()
    with blocked(ctx, a.read) as reading:
        a.close()
        join_error(reading, ClosedError, "a read blocked when the flow was closed")


@check("close from another greenlet wakes a blocked writer with ClosedError")
def _close_wakes_writer(ctx: Context) -> None:
    a, _b, size = ctx.clogged_pair()
    with blocked(ctx, a.write, b"w" * size) as writing:
        a.close()
        join_error(writing, ClosedError, "a write blocked when the flow was closed")


@check("closing one end delivers its data, then EOF, to the other")
def _close_delivers(ctx: Context) -> None:
    a, b = ctx.pair()
    data = pattern(300_000, 5)

    def send_then_close() -> None:
        a.write(data)
        a.close()

    sending = ctx.spawn(send_then_close)
    assert read_to_eof(b) == data, "data written before close() was not delivered whole before EOF"
    join(sending, "write then close")


@check("writes to a closed peer raise BrokenError, sticky; ClosedError wins after close")
def _broken_peer(ctx: Context) -> None:
    a, b = ctx.pair()
    b.close()
    try:
        for _ in range(200):
            a.write(b"p" * 65536)
    except BrokenError:
        pass
    except FlowError as exc:
        raise AssertionError(
            f"writing to a closed peer raised {type(exc).__name__}, not BrokenError"
        ) from exc
    else:
        raise AssertionError("200 writes of 64 KiB to a closed peer all succeeded")
    expect(BrokenError, lambda: a.write(b"again"), "a write after a write failed")
    a.close()
    expect(ClosedError, lambda: a.write(b"x"), "a write after close() on a broken flow")
    expect(ClosedError, a.read, "a read after close() on a broken flow")


@check("two readers, or two writers, get BusyError")
def _busy(ctx: Context) -> None:
    a, b = ctx.pair()
    with blocked(ctx, a.read) as reading:
        expect(BusyError, a.read, "a second read")
        expect(BusyError, lambda: a.read_into(bytearray(4)), "a second read_into")
        sending = ctx.spawn(b.write, b"x")
        assert join(reading, "the first read") == b"x", "the first reader did not get the data"
        join(sending, "write")
    c, _d, size = ctx.clogged_pair()
    with blocked(ctx, c.write, b"w" * size):
        expect(BusyError, lambda: c.write(b"x"), "a second write")
        expect(BusyError, lambda: c.writev([b"x"]), "a second writev")
        expect(BusyError, lambda: c.shutdown("write"), "shutdown('write') while another greenlet writes")


@check("timeout: FlowTimeout leaves reads usable; gevent.Timeout and kill pass through")
def _read_timeouts(ctx: Context) -> None:
    a, b = ctx.pair()
    expect(ValueError, lambda: setattr(a, "timeout", -1), "timeout = -1")
    expect(TypeError, lambda: setattr(a, "timeout", "1"), "timeout = '1'")
    a.timeout = 0.05
    assert a.timeout == 0.05, f"timeout reads back as {a.timeout!r}"
    exc = expect(FlowTimeout, a.read, "a read with nothing to read and timeout=0.05")
    assert isinstance(exc, TimeoutError), "FlowTimeout is not a TimeoutError"
    a.timeout = None
    send_and_receive(ctx, b, a, b"after a FlowTimeout")
    outer = gevent.Timeout(0.05)
    outer.start()
    try:
        got = a.read()
    except gevent.Timeout as raised:
        assert raised is outer, f"a gevent.Timeout came out of read as {raised!r}"
    else:
        raise AssertionError(f"read returned {got!r} with nothing to read")
    finally:
        outer.close()
    send_and_receive(ctx, b, a, b"after a gevent.Timeout")
    with blocked(ctx, a.read) as reading:
        kill(reading, "a blocked read")
        assert reading.dead, "a blocked read did not die when killed"
    send_and_receive(ctx, b, a, b"after a kill")


@check("a write interrupted by a timeout, a gevent.Timeout or a kill breaks the writing direction")
def _write_timeout(ctx: Context) -> None:
    a, _b, size = ctx.clogged_pair()
    a.timeout = 0.05
    expect(FlowTimeout, lambda: a.write(b"t" * size), "a blocked write with timeout=0.05")
    expect(BrokenError, lambda: a.write(b"x"), "a write after a write timed out")
    c, _d, size = ctx.clogged_pair()
    outer = gevent.Timeout(0.05)
    outer.start()
    try:
        c.write(b"t" * size)
    except gevent.Timeout as raised:
        assert raised is outer, f"a gevent.Timeout came out of write as {raised!r}"
    else:
        raise AssertionError("a blocked write returned")
    finally:
        outer.close()
    expect(BrokenError, lambda: c.write(b"x"), "a write after a write a gevent.Timeout interrupted")
    e, _f, size = ctx.clogged_pair()
    with blocked(ctx, e.write, b"k" * size) as writing:
        kill(writing, "a blocked write")
    expect(BrokenError, lambda: e.write(b"x"), "a write after a killed write")


@check("close_gracefully: True once the peer's EOF came, False on a silent peer")
def _close_gracefully(ctx: Context) -> None:
    a, b = ctx.pair()

    def peer() -> bytes:
        data = read_to_eof(b)
        b.close()
        return data

    peering = ctx.spawn(peer)
    sending = ctx.spawn(a.write, b"bye")
    join(sending, "write")
    assert a.close_gracefully(ctx.time_left() / 2) is True, (
        "close_gracefully returned False though the peer closed"
    )
    assert a.closed, "close_gracefully did not close the flow"
    assert join(peering, "the peer reading to EOF") == b"bye"
    c, _d = ctx.pair()
    assert c.close_gracefully(0.1) is False, "close_gracefully returned True though the peer never closed"
    assert c.closed, "close_gracefully did not close the flow after its timeout"


@check("attributes: closed, timeout, underlying, addresses")
def _attributes(ctx: Context) -> None:
    a, _b = ctx.pair()
    assert a.underlying is None or isinstance(a.underlying, Flow), f"underlying is {a.underlying!r}"
    a.timeout = 1.5
    assert a.timeout == 1.5, f"timeout reads back as {a.timeout!r}"
    a.timeout = None
    assert a.timeout is None, f"timeout reads back as {a.timeout!r}"
    _ = a.local_address, a.peer_address
    a.close()
    assert a.closed is True
    _ = a.local_address, a.peer_address  # still answer after close
