"""The conformance checks about what a flow carries: bytes, intact, in order, promptly.

Reads return what was written, no more than asked and as soon as some is
there; writes take any bytes-like object, whole, and keep no reference to it;
both directions run at once. :mod:`._checks_ending` has the checks about how
directions end and how calls fail.
"""

from __future__ import annotations

import array
import random
from functools import partial

import gevent

from ..flow import Flow, Shutdown
from ._harness import (
    Context,
    Hung,
    check,
    expect,
    join,
    pattern,
    read_exactly,
    send_and_receive,
)


@check("data flows both ways, intact")
def _both_ways(ctx: Context) -> None:
    a, b = ctx.pair()
    send_and_receive(ctx, a, b, b"hello from a")
    send_and_receive(ctx, b, a, b"hello from b")
    send_and_receive(ctx, a, b, pattern(100_000))


@check("read returns partial data promptly and a fresh bytes object")
def _partial_read(ctx: Context) -> None:
    a, b = ctx.pair()
    sending = ctx.spawn(a.write, b"abc")
    chunk = b.read(1000)
    assert type(chunk) is bytes, f"read returned {type(chunk).__name__}, not bytes"
    assert 1 <= len(chunk) <= 3 and b"abc".startswith(chunk), (
        f"read(1000) after writing b'abc' gave {chunk!r}"
    )
    rest = read_exactly(b, 3 - len(chunk))
    assert chunk + rest == b"abc"
    join(sending, "write")


@check("read never returns more than max_bytes")
def _max_bytes(ctx: Context) -> None:
    a, b = ctx.pair()
    data = pattern(10_000, 1)
    sending = ctx.spawn(a.write, data)
    got = bytearray()
    for size in [1, 7, 7, 100, 4095, 1]:
        chunk = b.read(size)
        assert 1 <= len(chunk) <= size, f"read({size}) returned {len(chunk)} bytes"
        got += chunk
    got += read_exactly(b, len(data) - len(got))
    assert got == data, "the bytes read differ from the bytes written"
    join(sending, "write")


@check("read rejects bad max_bytes, read_into an empty buffer")
def _max_bytes_validation(ctx: Context) -> None:
    a, b = ctx.pair()
    for bad in (0, -1, -65536):
        expect(ValueError, partial(b.read, bad), f"read({bad})")
    for wrong in (1.5, "3", b"1"):
        expect(TypeError, partial(b.read, wrong), f"read({wrong!r})")  # type: ignore[arg-type]
    expect(ValueError, lambda: b.read_into(bytearray()), "read_into(bytearray())")
    send_and_receive(ctx, a, b, b"still works")


@check("misuse is a TypeError or ValueError that sends and takes nothing")
def _misuse(ctx: Context) -> None:
    a, b = ctx.pair()
    expect(TypeError, partial(a.write, 5), "write(5)")  # type: ignore[arg-type]
    expect(TypeError, partial(a.writev, b"abc"), "writev(b'abc'), a single buffer")  # type: ignore[arg-type]
    expect(TypeError, partial(a.writev, [b"x", 5]), "writev([b'x', 5])")  # type: ignore[list-item]
    expect(TypeError, partial(b.read_into, b"abcd"), "read_into(b'abcd'), a read-only buffer")  # type: ignore[arg-type]
    expect(TypeError, partial(b.read_into, 5), "read_into(5)")  # type: ignore[arg-type]
    for bad, error in ((-1, ValueError), (float("nan"), ValueError), (10**400, ValueError), ("3", TypeError)):

        def set_timeout(value: object = bad) -> None:
            a.timeout = value  # type: ignore[assignment]

        expect(error, set_timeout, f"setting timeout = {bad!r:.20}")
    sending = ctx.spawn(a.write, b"wxyz")  # nothing above was sent or taken
    strided = bytearray(8)
    got = b""
    while len(got) < 4:
        count = b.read_into(memoryview(strided)[::2])
        assert 1 <= count <= 4, f"read_into(a strided 4-byte view) returned {count}"
        got += bytes(strided[: 2 * count : 2])
    assert got == b"wxyz", f"after the refused calls the flow carried {got!r}, not b'wxyz'"
    join(sending, "write")


@check("read_into fills the caller's buffer and returns 0 only at EOF")
def _read_into(ctx: Context) -> None:
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
    join(sending, "write and shutdown")


@check("write(b'') sends nothing and is not EOF")
def _empty_write(ctx: Context) -> None:
    a, b = ctx.pair()
    a.write(b"")
    a.write(bytearray())
    a.writev([])
    a.writev([b"", b""])
    reading = ctx.spawn(b.read)
    ctx.settle()
    assert not reading.ready(), (
        f"after write(b'') the peer's read returned {reading.value!r} instead of waiting"
    )
    reading.kill()
    send_and_receive(ctx, a, b, b"z")


@check("writev keeps order and content, small and huge buffers, past IOV_MAX")
def _writev(ctx: Context) -> None:
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
    got = read_exactly(b, len(expected))
    join(sending, "writev")
    assert got == expected, "writev delivered the buffers' bytes out of order or altered"
    sending = ctx.spawn(a.writev, (piece for piece in [b"gen", b"erator"]))
    assert read_exactly(b, 9) == b"generator", "writev of a generator lost or reordered bytes"
    join(sending, "writev of a generator")


@check("write takes any bytes-like object whole and keeps no reference to it")
def _write_buffers(ctx: Context) -> None:
    a, b = ctx.pair()
    ints = array.array("i", range(1000))  # 1000 items, 4000 bytes
    sending = ctx.spawn(a.write, ints)
    got = read_exactly(b, len(ints) * ints.itemsize)
    join(sending, "write of an array('i')")
    assert got == ints.tobytes(), "write of an array('i') did not send its bytes (items counted as bytes?)"
    buffer = bytearray(b"original")
    sending = ctx.spawn(a.write, buffer)
    ctx.settle()
    if sending.ready():  # a buffering flow: the write returned before any read
        join(sending, "write")
        buffer[:] = b"MUTATED!"
        got = read_exactly(b, 8)
    else:  # the write returns only once it was read (lockstep): nothing to keep
        got = read_exactly(b, 8)
        join(sending, "write")
    assert got == b"original", (
        f"the peer read {got!r}: the flow kept the caller's buffer after write returned"
    )


@check("one write much larger than any buffer reaches a slow reader whole")
def _huge_write(ctx: Context) -> None:
    a, b = ctx.pair()
    data = pattern(8 * 1024 * 1024 + 3, 3)
    sending = ctx.spawn(a.write, data)
    got = bytearray()
    reads = 0
    try:
        while len(got) < len(data):
            got += b.read(min(4096, len(data) - len(got)))
            reads += 1
            if reads % 64 == 0:
                gevent.sleep(0)  # a slow reader: let the writer run into a full buffer
    except Hung as hung:
        hung.add_note(f"{len(got)} of the {len(data)} bytes written had come, and no more came")
        raise
    join(sending, "write")
    assert got == data, "the bytes read differ from the 8 MiB written"


@check("a reader and a writer run at once (full duplex)")
def _full_duplex(ctx: Context) -> None:
    a, b = ctx.pair()
    size = 1024 * 1024
    out_a, out_b = pattern(size, 6), pattern(size, 7)
    greenlets = [
        ctx.spawn(a.write, out_a),
        ctx.spawn(b.write, out_b),
        ctx.spawn(read_exactly, a, size),
        ctx.spawn(read_exactly, b, size),
    ]
    results = [
        join(g, what) for g, what in zip(greenlets, ["a.write", "b.write", "a.read", "b.read"], strict=True)
    ]
    assert results[2] == out_b and results[3] == out_a, "data was altered under full-duplex use"


@check("random full-duplex stress: write, writev, read, read_into, then EOF both ways")
def _stress(ctx: Context) -> None:
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
    sent_a, sent_b, got_a, got_b = (join(g, "a stress greenlet") for g in greenlets)
    assert got_b == sent_a, f"b read {len(got_b)} bytes, a sent {len(sent_a)}, or they differ"  # type: ignore[arg-type]
    assert got_a == sent_b, f"a read {len(got_a)} bytes, b sent {len(sent_b)}, or they differ"  # type: ignore[arg-type]
