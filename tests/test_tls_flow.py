"""TLSFlow against the flow contract, over every kind of flow below it."""

from __future__ import annotations

import functools
import os
import time
import tracemalloc

import gevent
import pytest

import greenflow
from greenflow import BrokenError, ClosedError, FlowTimeout, tls
from greenflow.testing import check_flow_pair, lockstep_pair, memory_pair, wait_all_blocked
from greenflow.tls import TLSError, TLSFlow

from pairs import tcp_pair, unix_pair
from tls_helpers import contexts, shared_certs, tls_over

UNDERLYING = {
    "memory": memory_pair,
    "lockstep": lockstep_pair,
    "tcp": tcp_pair,
    "unix": unix_pair,
    "socketpair": greenflow.socketpair,
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
@pytest.mark.parametrize("below", sorted(UNDERLYING))
def test_conformance(below: str, version: str) -> None:
    client_ctx, server_ctx = contexts(shared_certs(), version)
    make = functools.partial(tls_over, UNDERLYING[below], client_ctx, server_ctx)
    clogged = functools.partial(tls_over, lockstep_pair, client_ctx, server_ctx)
    check_flow_pair(make, clogged)


def _tls_pair(version: str = "TLSv1.3", make=greenflow.socketpair, **options: object):  # type: ignore[no-untyped-def]
    client_ctx, server_ctx = contexts(shared_certs(), version)
    return tls_over(make, client_ctx, server_ctx, **options)


@pytest.mark.timeout(120)
def test_conformance_tls_over_tls() -> None:
    client_ctx, server_ctx = contexts(shared_certs())

    def make() -> tuple[greenflow.Flow, greenflow.Flow]:
        inner = functools.partial(tls_over, greenflow.socketpair, client_ctx, server_ctx)
        return tls_over(inner, client_ctx, server_ctx)

    check_flow_pair(make)


def test_unwrap_returns_bytes_after_close_notify() -> None:
    a, b = _tls_pair(timeout=5)
    assert isinstance(a, TLSFlow)
    b.write(b"secret")
    assert a.read() == b"secret"

    def server_side() -> tuple[greenflow.Flow, bytes]:
        plain, rest = b.unwrap()
        plain.write(b"plain text now")
        return plain, rest

    side = gevent.spawn(server_side)
    flow, trailing = a.unwrap()
    assert a.closed and not flow.closed
    got = trailing
    while len(got) < len(b"plain text now"):
        got += flow.read()
    assert got == b"plain text now"
    under_b, rest = side.get(timeout=5)
    assert rest == b""
    assert "unwrapped" in repr(a)
    a.close()  # handed back: closing the TLS flow leaves the underlying one to its new owner
    assert not flow.closed
    with pytest.raises(ClosedError):
        a.unwrap()
    flow.close()
    under_b.close()


def test_renegotiation_between_two_flows() -> None:
    a, b = _tls_pair("TLSv1.2", timeout=5)
    try:
        reading = gevent.spawn(a.read)
        b.renegotiate()
        b.write(b"after the request")
        assert reading.get(timeout=5) == b"after the request"
        # The client answered the HelloRequest while reading, so it is now
        # mid-handshake: its write waits for the server's reply, which the
        # server sends while it reads, as a server does. Both must run at
        # once, or each waits for the other.
        server_reading = gevent.spawn(b.read)
        a.write(b"client data")
        assert server_reading.get(timeout=5) == b"client data"
        assert a.epoch.renegotiations == 1
        assert b.epoch.renegotiations == 1
        # Data flows both ways on the new keys.
        reading = gevent.spawn(a.read)
        b.write(b"renegotiated")
        assert reading.get(timeout=5) == b"renegotiated"
    finally:
        a.close()
        b.close()


def test_client_initiated_renegotiation_is_refused() -> None:
    a, b = _tls_pair("TLSv1.2", timeout=5)
    try:
        server_reading = gevent.spawn(b.read)
        a.renegotiate()
        with pytest.raises(TLSError, match="peer refused to renegotiate"):
            a.write(b"x")
        with pytest.raises(TLSError):
            server_reading.get(timeout=5)  # the client gave up with an alert: no hang
    finally:
        a.close()
        b.close()


def test_renegotiation_refused_in_tls13() -> None:
    a, b = _tls_pair("TLSv1.3")
    with pytest.raises(ValueError, match=r"TLS 1\.2"):
        a.renegotiate()
    a.close()
    b.close()


def test_resumption() -> None:
    client_ctx, server_ctx = contexts(shared_certs(), "TLSv1.3")
    a, b = tls_over(greenflow.socketpair, client_ctx, server_ctx)
    b.write(b"x")
    assert a.read() == b"x"  # the tickets came before it
    session = a.tls_session
    assert session is not None and not a.epoch.resumed
    a.close()
    b.close()
    left, right = greenflow.socketpair()
    side = gevent.spawn(tls.server, right, server_ctx)
    c = tls.client(left, client_ctx, server_hostname="localhost", session=session)
    d = side.get(timeout=5)
    assert c.epoch.resumed and d.epoch.resumed
    c.close()
    d.close()


def test_close_on_a_silent_clogged_peer_is_bounded() -> None:
    a, b = _tls_pair(make=lockstep_pair)
    started = time.monotonic()
    a.close()
    assert time.monotonic() - started < 1
    assert a.underlying.closed
    with pytest.raises(greenflow.ClosedError):
        a.read()
    b.close()


def test_both_directions_shut_closes_underlying_once() -> None:
    a, b = _tls_pair()
    a.shutdown("read_write")
    assert a.underlying.closed and not a.closed
    assert a.read() == b""
    a.close()
    assert b.read() == b""  # the close_notify went out before the underlying closed
    b.close()


def test_read_timeout_loses_nothing_and_busy() -> None:
    a, b = _tls_pair(timeout=0.1)
    with pytest.raises(greenflow.FlowTimeout):
        a.read()
    b.write(b"later")
    assert a.read() == b"later"
    a.timeout = None
    reader = gevent.spawn(a.read)
    wait_all_blocked()
    with pytest.raises(greenflow.BusyError):
        a.read()
    a.close()
    with pytest.raises(greenflow.ClosedError):
        reader.get(timeout=5)
    b.close()


def _stream_buffers_held() -> int:
    """How many blocks of STREAM_BUFFER_SIZE or more the TLS pump holds now."""
    from greenflow.tls._pump import STREAM_BUFFER_SIZE

    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(True, "*greenflow/tls/_pump.py")]
    )
    return sum(1 for trace in snapshot.traces if trace.size >= STREAM_BUFFER_SIZE)


def test_stream_buffer_only_while_streaming() -> None:
    # Bulk data is received into one reused 256 KiB buffer, but a flow that
    # goes idle must not hold it: thousands of idle TLS flows stay cheap.
    # tracemalloc sees the pump's allocations, without looking inside it.
    from greenflow.tls._pump import STREAM_BUFFER_SIZE

    a, b = _tls_pair("TLSv1.3")
    tracemalloc.start()
    try:
        data = os.urandom(4 * STREAM_BUFFER_SIZE)
        sending = gevent.spawn(b.write, data)
        received = bytearray()
        saw_buffer = False
        while len(received) < len(data):
            received += a.read()
            saw_buffer = saw_buffer or _stream_buffers_held() > 0
        sending.get(timeout=10)
        assert received == data
        assert saw_buffer, "a bulk transfer never used the reused buffer"
        idle = gevent.spawn(a.read)
        wait_all_blocked()  # parked, waiting for data that does not come
        assert not idle.ready()
        assert _stream_buffers_held() == 0, "an idle TLS flow holds its 256 KiB receive buffer"
        b.write(b"wake")
        assert idle.get(timeout=5) == b"wake"
    finally:
        tracemalloc.stop()
        a.close()
        b.close()


# -- regressions found in review ------------------------------------------------------


@pytest.mark.parametrize("ending", ["close", "peer_gone"])
def test_a_write_never_reports_bytes_it_did_not_send(ending: str) -> None:
    # TLS 1.3 over lockstep: the server's background sender holds the send
    # lock while its session tickets wait for the peer; a write queues its
    # records behind them. If the sender then fails to send them, the write
    # must fail too, not find an empty queue and report success.
    client, server = _tls_pair("TLSv1.3", make=lockstep_pair)
    raw = client.underlying
    assert raw is not None
    try:
        wait_all_blocked()  # the server's sender blocks on the tickets: lockstep moves nothing unread
        writing = gevent.spawn(server.write, b"important data" * 100)
        wait_all_blocked()
        assert raw.read(65536)  # the tickets: the sender moves on to the write's records
        wait_all_blocked()
        if ending == "close":
            server.close()
            with pytest.raises(ClosedError):
                writing.get(timeout=5)
        else:
            raw.close()
            with pytest.raises(BrokenError):
                writing.get(timeout=5)
    finally:
        server.close()
        client.close()


@pytest.mark.parametrize(
    "make", [lockstep_pair, memory_pair, greenflow.socketpair], ids=["lockstep", "memory", "socketpair"]
)
def test_renegotiation_under_full_duplex(make: object) -> None:
    # Each side reads and writes in two greenlets; the server renegotiates
    # between two writes. A writer that needs the peer's handshake reply
    # while its own reader is receiving must get to retry its send.
    client, server = _tls_pair("TLSv1.2", make=make, timeout=10)
    size = 200_000

    def writer(flow: TLSFlow, renegotiate: bool) -> str:
        flow.write(b"x" * size)
        if renegotiate:
            flow.renegotiate()
        flow.write(b"y" * size)
        return "done"

    def reader(flow: TLSFlow) -> bytes:
        got = bytearray()
        while len(got) < 2 * size:
            chunk = flow.read()
            assert chunk
            got += chunk
        return bytes(got)

    greenlets = [
        gevent.spawn(writer, server, True),
        gevent.spawn(reader, client),
        gevent.spawn(writer, client, False),
        gevent.spawn(reader, server),
    ]
    try:
        gevent.joinall(greenlets, timeout=20, raise_error=True)
        assert all(g.ready() for g in greenlets), "renegotiation under full duplex hung"
        assert greenlets[1].value == greenlets[3].value == b"x" * size + b"y" * size
        assert client.epoch.renegotiations >= 1
    finally:
        gevent.killall(greenlets)
        client.close()
        server.close()


def test_read_into_a_buffer_it_cannot_fill_loses_nothing() -> None:
    import array

    client, server = _tls_pair("TLSv1.3")
    try:
        server.write(b"A" * 8 + b"B" * 8)
        with pytest.raises(TypeError, match="read-only"):
            client.read_into(b"\0" * 16)  # type: ignore[arg-type]
        halves = array.array("H", [0] * 8)  # 8 items, 16 bytes
        count = client.read_into(memoryview(halves))
        got = halves.tobytes()[:count]
        while len(got) < 16:
            got += client.read()
        assert got == b"A" * 8 + b"B" * 8
    finally:
        client.close()
        server.close()


def test_an_empty_server_hostname_is_refused() -> None:
    client_ctx, _ = contexts(shared_certs())
    a, b = greenflow.socketpair()
    try:
        with pytest.raises(ValueError, match="server_hostname is empty"):
            tls.client(a, client_ctx, server_hostname="")
    finally:
        a.close()
        b.close()


def test_shutdown_read_write_wakes_the_reader_even_when_the_write_half_times_out() -> None:
    client, server = _tls_pair("TLSv1.3", make=lockstep_pair)
    try:
        # Let the tickets through first: the server's sender is blocked on them.
        wait_all_blocked()
        assert client.underlying.read(65536)  # type: ignore[union-attr]
        wait_all_blocked()
        reading = gevent.spawn(client.read)
        wait_all_blocked()
        client.timeout = 0.2
        with pytest.raises(FlowTimeout):
            client.shutdown("read_write")  # the silent lockstep peer never takes the close_notify
        assert reading.get(timeout=5) == b"", "the blocked reader was not released by shutdown('read_write')"
    finally:
        client.close()
        server.close()
