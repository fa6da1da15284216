"""The conformance suite: does a pair of flows keep the whole flow contract?

:func:`check_flow_pair` runs every check below against fresh pairs from the
caller's factory, in blocking style, with no pytest needed. Each check is
bounded in time; a hung check fails with the check's name instead of hanging
the caller. All checks run even when one fails, and the ``AssertionError`` at
the end lists every failing check with what it saw, so a third party whose
flow is wrong learns all that is wrong in one run.

Every check is written for the harshest flow control (the lockstep pair, where
a write returns only once the peer has read all of it): a write, and a
``shutdown("write")`` (which writes in a layer such as TLS), always has a
reader running at the same time, so the suite never deadlocks a correct flow.
"""

from __future__ import annotations

import array
import random
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import gevent
from gevent.greenlet import Greenlet

from ..errors import BrokenError, BusyError, ClosedError, FlowError, FlowTimeout
from ..flow import Flow, Shutdown

__all__ = ["MakePair", "check_flow_pair"]

#: A function that returns two flows connected to each other.
MakePair = Callable[[], tuple[Flow, Flow]]

_T = TypeVar("_T")
if TYPE_CHECKING:
    #: A greenlet of the suite, whose value is ``(ok, result or error)``.
    _Task = Greenlet[..., tuple[bool, object]]
_BIG_WRITE = 32 * 1024 * 1024  # more than any sane flow buffers: such a write blocks
_CHECKS: list[tuple[str, Callable[[_Context], None]]] = []


def check_flow_pair(
    make_pair: MakePair,
    make_clogged_pair: MakePair | None = None,
    *,
    check_timeout: float = 30.0,
    only: Iterable[str] | None = None,
) -> None:
    """Check that the flows ``make_pair`` returns keep the flow contract.

    Args:
        make_pair: returns two fresh flows connected to each other. It is
            called once per check; the suite closes both flows afterwards.
        make_clogged_pair: like ``make_pair``, but the first write on either
            flow blocks until the other end reads (for example a socket pair
            whose buffers were filled first). The checks that need a blocked
            writer use it; without it they write 32 MiB in one call instead.
            Data sent over a clogged pair is never checked.
        check_timeout: seconds each check may take before it counts as hung.
        only: run just the checks whose names contain one of these strings
            (for debugging one failure; a conformance run runs them all).

    Raises:
        AssertionError: one or more checks failed; the message names each
            failing check and what it saw.
    """
    checks = _CHECKS
    if only is not None:
        wanted = list(only)
        checks = [(name, check) for name, check in _CHECKS if any(part in name for part in wanted)]
        if not checks:
            raise ValueError(f"no check matches {wanted!r}")
    failures: list[str] = []
    first: BaseException | None = None
    for name, check in checks:
        context = _Context(make_pair, make_clogged_pair)
        hung = _Hung(f"did not finish within {check_timeout:g} s (a blocking call never returned)")
        timer = gevent.Timeout(check_timeout, hung)
        try:
            timer.start()
            try:
                check(context)
            finally:
                context.clean_up()
        except (Exception, _Hung) as exc:  # whatever a flow raises fails that check only
            failures.append(f"- {name}: {_describe(exc)}")
            first = first or exc
        finally:
            timer.close()
    if failures:
        summary = f"{len(failures)} of {len(checks)} flow contract checks failed:\n" + "\n".join(failures)
        raise AssertionError(summary) from first


def _describe(exc: BaseException) -> str:
    if isinstance(exc, AssertionError | _Hung):
        return str(exc) or "assertion failed"
    where = traceback.extract_tb(exc.__traceback__)[-1]
    return f"unexpected {type(exc).__name__}: {exc} (at {where.filename}:{where.lineno})"


class _Hung(BaseException):
    """A check ran out of time. BaseException, so no flow code swallows it."""


def _check(name: str) -> Callable[[Callable[[_Context], None]], Callable[[_Context], None]]:
    def register(function: Callable[[_Context], None]) -> Callable[[_Context], None]:
        _CHECKS.append((name, function))
        return function

    return register


class _Context:
    """What one check works with: pair factories, and clean-up of what it made."""

    def __init__(self, make_pair: MakePair, make_clogged_pair: MakePair | None) -> None:
        self._make_pair = make_pair
        self._make_clogged_pair = make_clogged_pair
        self._flows: list[Flow] = []
        self._greenlets: list[_Task] = []

    def pair(self) -> tuple[Flow, Flow]:
        a, b = self._make_pair()
        self._flows += [a, b]
        return a, b

    def clogged_pair(self) -> tuple[Flow, Flow, int]:
        """A pair and the size of a write that blocks on it."""
        if self._make_clogged_pair is None:
            a, b = self.pair()
            return a, b, _BIG_WRITE
        a, b = self._make_clogged_pair()
        self._flows += [a, b]
        return a, b, 1024 * 1024

    def spawn(self, function: Callable[..., _T], *args: object) -> _Task:
        """Run ``function`` in a greenlet whose value is ``(ok, result or error)``.

        Errors are caught and returned, not raised, so that gevent does not
        print the tracebacks of errors a check expects.
        """
        greenlet = gevent.spawn(_capture, function, *args)
        self._greenlets.append(greenlet)
        return greenlet

    def clean_up(self) -> None:
        for flow in self._flows:
            flow.close()
        gevent.killall([g for g in self._greenlets if not g.dead], timeout=5)


# -- helpers ---------------------------------------------------------------------


def _settle() -> None:
    """Let every runnable greenlet run until it blocks (or finishes)."""
    for _ in range(3):
        gevent.idle()
        gevent.sleep(0.005)


def _read_exactly(flow: Flow, size: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < size:
        chunk = flow.read(size - got)
        assert isinstance(chunk, bytes), f"read returned {type(chunk).__name__}, not bytes"
        assert chunk, f"read returned EOF after {got} of the {size} bytes that were sent"
        assert len(chunk) <= size - got, f"read({size - got}) returned {len(chunk)} bytes"
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _read_to_eof(flow: Flow, limit: int = 64 * 1024 * 1024) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while True:
        chunk = flow.read()
        if not chunk:
            return b"".join(chunks)
        got += len(chunk)
        assert got <= limit, f"read more than the {limit} bytes that were sent, and no EOF"
        chunks.append(chunk)


def _expect(error: type[BaseException], call: Callable[[], object], what: str) -> BaseException:
    try:
        result = call()
    except error as exc:
        return exc
    except BaseException as exc:
        raise AssertionError(f"{what} raised {type(exc).__name__}({exc}), expected {error.__name__}") from exc
    raise AssertionError(f"{what} returned {result!r}, expected {error.__name__}")


def _capture(function: Callable[..., object], *args: object) -> tuple[bool, object]:
    try:
        return True, function(*args)
    except Exception as exc:
        return False, exc


def _outcome(greenlet: _Task, what: str, timeout: float) -> tuple[bool, object]:
    greenlet.join(timeout)
    assert greenlet.ready(), f"{what} was still blocked after {timeout:g} s"
    assert greenlet.successful(), f"{what} was killed by {greenlet.exception!r}"
    assert greenlet.value is not None
    return greenlet.value


def _join(greenlet: _Task, what: str, timeout: float = 10.0) -> object:
    ok, result = _outcome(greenlet, what, timeout)
    if not ok:
        raise AssertionError(f"{what} raised {type(result).__name__}: {result}") from result  # type: ignore[misc]
    return result


def _join_error(greenlet: _Task, error: type[BaseException], what: str, timeout: float = 10.0) -> None:
    ok, result = _outcome(greenlet, what, timeout)
    if ok:
        raise AssertionError(f"{what} returned {result!r}, expected {error.__name__}")
    assert isinstance(result, error), (
        f"{what} raised {type(result).__name__}({result}), expected {error.__name__}"
    )


def _pattern(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _send_and_receive(ctx: _Context, writer: Flow, reader: Flow, data: bytes) -> None:
    sending = ctx.spawn(writer.write, data)
    got = _read_exactly(reader, len(data))
    _join(sending, "write")
    assert got == data, "the bytes read differ from the bytes written"


@contextmanager
def _blocked(ctx: _Context, function: Callable[..., object], *args: object) -> Iterator[_Task]:
    greenlet = ctx.spawn(function, *args)
    _settle()
    assert not greenlet.ready(), (
        f"expected {getattr(function, '__name__', function)} to block, but it ended with {greenlet.value!r}"
    )
    yield greenlet


# -- the checks ------------------------------------------------------------------


@_check("data flows both ways, intact")
def _both_ways(ctx: _Context) -> None:
    a, b = ctx.pair()
    _send_and_receive(ctx, a, b, b"hello from a")
    _send_and_receive(ctx, b, a, b"hello from b")
    _send_and_receive(ctx, a, b, _pattern(100_000))


@_check("read returns partial data promptly and a fresh bytes object")
def _partial_read(ctx: _Context) -> None:
    a, b = ctx.pair()
    sending = ctx.spawn(a.write, b"abc")
    chunk = b.read(1000)
    assert type(chunk) is bytes, f"read returned {type(chunk).__name__}, not bytes"
    assert 1 <= len(chunk) <= 3 and b"abc".startswith(chunk), (
        f"read(1000) after writing b'abc' gave {chunk!r}"
    )
    rest = _read_exactly(b, 3 - len(chunk))
    assert chunk + rest == b"abc"
    _join(sending, "write")


@_check("read never returns more than max_bytes")
def _max_bytes(ctx: _Context) -> None:
    a, b = ctx.pair()
    data = _pattern(10_000, 1)
    sending = ctx.spawn(a.write, data)
    got = bytearray()
    for size in [1, 7, 7, 100, 4095, 1]:
        chunk = b.read(size)
        assert 1 <= len(chunk) <= size, f"read({size}) returned {len(chunk)} bytes"
        got += chunk
    got += _read_exactly(b, len(data) - len(got))
    assert got == data, "the bytes read differ from the bytes written"
    _join(sending, "write")


@_check("read rejects bad max_bytes, read_into an empty buffer")
def _max_bytes_validation(ctx: _Context) -> None:
    a, b = ctx.pair()
    for bad in (0, -1, -65536):
        _expect(ValueError, partial(b.read, bad), f"read({bad})")
    for wrong in (1.5, "3", b"1"):
        _expect(TypeError, partial(b.read, wrong), f"read({wrong!r})")  # type: ignore[arg-type]
    _expect(ValueError, lambda: b.read_into(bytearray()), "read_into(bytearray())")
    _send_and_receive(ctx, a, b, b"still works")


@_check("read_into fills the caller's buffer and returns 0 only at EOF")
def _read_into(ctx: _Context) -> None:
    a, b = ctx.pair()
    data = b"hello, read_into"

    def send() -> None:
        a.write(data)
        a.shutdown(Shutdown.WRITE)

    sending = ctx.spawn(send)
    small = bytearray(5)
    count = b.read_into(small)
    assert 1 <= count <= 5, f"read_into(5-byte buffer) returned {count}"
    got = bytes(small[:count])
    big = bytearray(100)
    while True:
        count = b.read_into(memoryview(big)[10:40])
        assert 0 <= count <= 30, f"read_into(30-byte view) returned {count}"
        if count == 0:
            break
        got += big[10 : 10 + count]
    assert got == data, f"read_into gave {got!r}, expected {data!r}"
    for _ in range(2):
        assert b.read_into(bytearray(10)) == 0, "read_into after EOF did not return 0"
    _join(sending, "write and shutdown")


@_check("write(b'') sends nothing and is not EOF")
def _empty_write(ctx: _Context) -> None:
    a, b = ctx.pair()
    a.write(b"")
    a.write(bytearray())
    a.writev([])
    a.writev([b"", b""])
    reading = ctx.spawn(b.read)
    reading.join(0.1)
    assert not reading.ready(), (
        f"after write(b'') the peer's read returned {reading.value!r} instead of waiting"
    )
    reading.kill()
    _send_and_receive(ctx, a, b, b"z")


@_check("writev keeps order and content, small and huge buffers, past IOV_MAX")
def _writev(ctx: _Context) -> None:
    a, b = ctx.pair()
    rng = random.Random(2)
    buffers: list[bytes | bytearray | memoryview] = []
    for index in range(2500):
        piece = rng.randbytes(rng.choice([0, 1, 2, 5, 16, 100]))
        kind = index % 3
        buffers.append(piece if kind == 0 else bytearray(piece) if kind == 1 else memoryview(piece))
        if index in (10, 1200):
            buffers.append(rng.randbytes(2 * 1024 * 1024 + 1))
    expected = b"".join(bytes(piece) for piece in buffers)
    sending = ctx.spawn(a.writev, buffers)
    got = _read_exactly(b, len(expected))
    _join(sending, "writev")
    assert got == expected, "writev delivered the buffers' bytes out of order or altered"
    sending = ctx.spawn(a.writev, (piece for piece in [b"gen", b"erator"]))
    assert _read_exactly(b, 9) == b"generator", "writev of a generator lost or reordered bytes"
    _join(sending, "writev of a generator")


@_check("write takes any bytes-like object whole and keeps no reference to it")
def _write_buffers(ctx: _Context) -> None:
    a, b = ctx.pair()
    ints = array.array("i", range(1000))  # 1000 items, 4000 bytes
    sending = ctx.spawn(a.write, ints)
    got = _read_exactly(b, len(ints) * ints.itemsize)
    _join(sending, "write of an array('i')")
    assert got == ints.tobytes(), "write of an array('i') did not send its bytes (items counted as bytes?)"
    buffer = bytearray(b"original")
    sending = ctx.spawn(a.write, buffer)
    _settle()
    if sending.ready():  # a buffering flow: the write returned before any read
        _join(sending, "write")
        buffer[:] = b"MUTATED!"
        got = _read_exactly(b, 8)
    else:  # the write returns only once it was read (lockstep): nothing to keep
        got = _read_exactly(b, 8)
        _join(sending, "write")
    assert got == b"original", (
        f"the peer read {got!r}: the flow kept the caller's buffer after write returned"
    )


@_check("one write much larger than any buffer reaches a slow reader whole")
def _huge_write(ctx: _Context) -> None:
    a, b = ctx.pair()
    data = _pattern(8 * 1024 * 1024 + 3, 3)
    sending = ctx.spawn(a.write, data)
    got = bytearray()
    reads = 0
    while len(got) < len(data):
        got += b.read(min(4096, len(data) - len(got)))
        reads += 1
        if reads % 64 == 0:
            gevent.sleep(0)
    _join(sending, "write")
    assert got == data, "the bytes read differ from the 8 MiB written"


@_check("shutdown('write') is a half-close; EOF is sticky")
def _half_close(ctx: _Context) -> None:
    a, b = ctx.pair()

    def send_then_shut() -> None:
        a.write(b"from a")
        a.shutdown(Shutdown.WRITE)

    sending = ctx.spawn(send_then_shut)
    assert _read_to_eof(b) == b"from a", "data before shutdown('write') was not delivered whole"
    _join(sending, "write then shutdown('write')")
    for _ in range(3):
        assert b.read() == b"", "a read after EOF did not return b'' again"
    _expect(ClosedError, lambda: a.write(b"x"), "write after shutdown('write')")
    _expect(ClosedError, lambda: a.write(b""), "write(b'') after shutdown('write')")
    _expect(ClosedError, lambda: a.writev([b"x"]), "writev after shutdown('write')")
    a.shutdown(Shutdown.WRITE)  # idempotent
    a.shutdown("write")
    _send_and_receive(ctx, b, a, _pattern(50_000, 4))  # the other direction still works
    # A layer may write to end a direction (TLS close_notify): like any
    # write, that needs the peer reading at the same time.
    shutting = ctx.spawn(b.shutdown, "write")
    assert a.read() == b"", "EOF did not reach a after b shut down writing"
    assert a.read(1) == b"", "EOF is not sticky"
    _join(shutting, "shutdown('write')")


@_check("shutdown('read') makes reads return b'', discards what is in flight, wakes a blocked reader")
def _shutdown_read(ctx: _Context) -> None:
    a, b = ctx.pair()
    with _blocked(ctx, a.read) as reading:
        a.shutdown("read")
        assert _join(reading, "a read blocked when shutdown('read') was called") == b"", (
            "a read blocked during shutdown('read') did not return b''"
        )
    assert a.read() == b"", "read after shutdown('read') did not return b''"
    assert a.read_into(bytearray(4)) == 0, "read_into after shutdown('read') did not return 0"
    a.shutdown(Shutdown.READ)  # idempotent
    _send_and_receive(ctx, a, b, b"writing still works")
    c, d = ctx.pair()
    ctx.spawn(d.write, b"in flight")
    _settle()  # delivered, or waiting for a reader
    c.shutdown("read")
    got = c.read()
    assert got == b"", f"read after shutdown('read') returned data that was in flight: {got!r}"


@_check("shutdown rejects anything but read, write and read_write")
def _shutdown_validation(ctx: _Context) -> None:
    a, _b = ctx.pair()
    for bad in ("bogus", "WRITE", 1, None):
        _expect(ValueError, partial(a.shutdown, bad), f"shutdown({bad!r})")  # type: ignore[arg-type]


@_check("close is idempotent and every later call raises ClosedError")
def _close(ctx: _Context) -> None:
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
        _expect(ClosedError, call, f"{what} on a closed flow")


@_check("close from another greenlet wakes a blocked reader with ClosedError")
def _close_wakes_reader(ctx: _Context) -> None:
    a, _b = ctx.pair()
    with _blocked(ctx, a.read) as reading:
        a.close()
        _join_error(reading, ClosedError, "a read blocked when the flow was closed")


@_check("close from another greenlet wakes a blocked writer with ClosedError")
def _close_wakes_writer(ctx: _Context) -> None:
    a, _b, size = ctx.clogged_pair()
    with _blocked(ctx, a.write, b"w" * size) as writing:
        a.close()
        _join_error(writing, ClosedError, "a write blocked when the flow was closed")


@_check("closing one end delivers its data, then EOF, to the other")
def _close_delivers(ctx: _Context) -> None:
    a, b = ctx.pair()
    data = _pattern(300_000, 5)

    def send_then_close() -> None:
        a.write(data)
        a.close()

    sending = ctx.spawn(send_then_close)
    assert _read_to_eof(b) == data, "data written before close() was not delivered whole before EOF"
    _join(sending, "write then close")


@_check("writes to a closed peer raise BrokenError, sticky; ClosedError wins after close")
def _broken_peer(ctx: _Context) -> None:
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
    _expect(BrokenError, lambda: a.write(b"again"), "a write after a write failed")
    a.close()
    _expect(ClosedError, lambda: a.write(b"x"), "a write after close() on a broken flow")
    _expect(ClosedError, a.read, "a read after close() on a broken flow")


@_check("two readers, or two writers, get BusyError")
def _busy(ctx: _Context) -> None:
    a, b = ctx.pair()
    with _blocked(ctx, a.read) as reading:
        _expect(BusyError, a.read, "a second read")
        _expect(BusyError, lambda: a.read_into(bytearray(4)), "a second read_into")
        sending = ctx.spawn(b.write, b"x")
        assert _join(reading, "the first read") == b"x", "the first reader did not get the data"
        _join(sending, "write")
    c, _d, size = ctx.clogged_pair()
    with _blocked(ctx, c.write, b"w" * size):
        _expect(BusyError, lambda: c.write(b"x"), "a second write")
        _expect(BusyError, lambda: c.writev([b"x"]), "a second writev")
        _expect(BusyError, lambda: c.shutdown("write"), "shutdown('write') while another greenlet writes")


@_check("a reader and a writer run at once (full duplex)")
def _full_duplex(ctx: _Context) -> None:
    a, b = ctx.pair()
    size = 1024 * 1024
    out_a, out_b = _pattern(size, 6), _pattern(size, 7)
    greenlets = [
        ctx.spawn(a.write, out_a),
        ctx.spawn(b.write, out_b),
        ctx.spawn(_read_exactly, a, size),
        ctx.spawn(_read_exactly, b, size),
    ]
    results = [
        _join(g, what) for g, what in zip(greenlets, ["a.write", "b.write", "a.read", "b.read"], strict=True)
    ]
    assert results[2] == out_b and results[3] == out_a, "data was altered under full-duplex use"


@_check("timeout: FlowTimeout leaves reads usable; gevent.Timeout and kill pass through")
def _read_timeouts(ctx: _Context) -> None:
    a, b = ctx.pair()
    _expect(ValueError, lambda: setattr(a, "timeout", -1), "timeout = -1")
    _expect(TypeError, lambda: setattr(a, "timeout", "1"), "timeout = '1'")
    a.timeout = 0.05
    assert a.timeout == 0.05, f"timeout reads back as {a.timeout!r}"
    exc = _expect(FlowTimeout, a.read, "a read with nothing to read and timeout=0.05")
    assert isinstance(exc, TimeoutError), "FlowTimeout is not a TimeoutError"
    a.timeout = None
    _send_and_receive(ctx, b, a, b"after a FlowTimeout")
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
    _send_and_receive(ctx, b, a, b"after a gevent.Timeout")
    with _blocked(ctx, a.read) as reading:
        reading.kill(block=True, timeout=5)
        assert reading.dead, "a blocked read did not die when killed"
    _send_and_receive(ctx, b, a, b"after a kill")


@_check("a write interrupted by a timeout, a gevent.Timeout or a kill breaks the writing direction")
def _write_timeout(ctx: _Context) -> None:
    a, _b, size = ctx.clogged_pair()
    a.timeout = 0.05
    _expect(FlowTimeout, lambda: a.write(b"t" * size), "a blocked write with timeout=0.05")
    _expect(BrokenError, lambda: a.write(b"x"), "a write after a write timed out")
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
    _expect(BrokenError, lambda: c.write(b"x"), "a write after a write a gevent.Timeout interrupted")
    e, _f, size = ctx.clogged_pair()
    with _blocked(ctx, e.write, b"k" * size) as writing:
        writing.kill(block=True, timeout=5)
    _expect(BrokenError, lambda: e.write(b"x"), "a write after a killed write")


@_check("random full-duplex stress: write, writev, read, read_into, then EOF both ways")
def _stress(ctx: _Context) -> None:
    a, b = ctx.pair()

    def send(flow: Flow, seed: int) -> bytes:
        rng = random.Random(seed)
        sent = []
        for _ in range(150):
            pieces = [
                rng.randbytes(rng.choice([0, 1, 3, 100, 1500, 16384, 70000]))
                for _ in range(rng.randint(1, 4))
            ]
            if len(pieces) == 1 and rng.random() < 0.5:
                flow.write(pieces[0])
            else:
                flow.writev(pieces)
            sent.extend(pieces)
            if rng.random() < 0.2:
                gevent.sleep(0)
        flow.shutdown("write")
        return b"".join(sent)

    def receive(flow: Flow, seed: int) -> bytes:
        rng = random.Random(seed)
        got = bytearray()
        buffer = bytearray(100_000)
        while True:
            if rng.random() < 0.5:
                chunk = flow.read(rng.choice([1, 2, 1000, 65536, 100_000]))
            else:
                count = flow.read_into(memoryview(buffer)[: rng.choice([1, 7, 4096, 100_000])])
                chunk = bytes(buffer[:count])
            if not chunk:
                return bytes(got)
            got += chunk

    greenlets = [
        ctx.spawn(send, a, 8),
        ctx.spawn(send, b, 9),
        ctx.spawn(receive, a, 10),
        ctx.spawn(receive, b, 11),
    ]
    sent_a, sent_b, got_a, got_b = (_join(g, "a stress greenlet", 60) for g in greenlets)
    assert got_b == sent_a, f"b read {len(got_b)} bytes, a sent {len(sent_a)}, or they differ"  # type: ignore[arg-type]
    assert got_a == sent_b, f"a read {len(got_a)} bytes, b sent {len(sent_b)}, or they differ"  # type: ignore[arg-type]


@_check("close_gracefully: True once the peer's EOF came, False on a silent peer")
def _close_gracefully(ctx: _Context) -> None:
    a, b = ctx.pair()

    def peer() -> bytes:
        data = _read_to_eof(b)
        b.close()
        return data

    peering = ctx.spawn(peer)
    sending = ctx.spawn(a.write, b"bye")
    _join(sending, "write")
    assert a.close_gracefully(10) is True, "close_gracefully returned False though the peer closed"
    assert a.closed, "close_gracefully did not close the flow"
    assert _join(peering, "the peer reading to EOF") == b"bye"
    c, _d = ctx.pair()
    assert c.close_gracefully(0.1) is False, "close_gracefully returned True though the peer never closed"
    assert c.closed, "close_gracefully did not close the flow after its timeout"


@_check("attributes: closed, timeout, underlying, addresses")
def _attributes(ctx: _Context) -> None:
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
