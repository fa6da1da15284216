"""Socket flows: the contract on every kind of socket, and what sockets add."""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import gevent
import gevent.socket
import pytest

import greenflow
from greenflow import BrokenError, ClosedError, Flow, FlowTimeout, SocketFlow
from greenflow.testing import check_flow_pair, wait_all_blocked

from pairs import SOCKET_PAIRS, clogged, tcp_pair, unix_pair

# -- the contract -------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_conformance(socket_pair_maker: Callable[[], tuple[SocketFlow, SocketFlow]]) -> None:
    check_flow_pair(socket_pair_maker, clogged(socket_pair_maker))


@pytest.mark.timeout(120)
def test_conformance_without_a_clogged_maker() -> None:
    # The suite falls back to one 32 MiB write to get a blocked writer.
    check_flow_pair(greenflow.socketpair)


SIZES = [0, 1, 4095, 4096, 4097, 4098, 4099, 5000, 2**20 - 1, 2**20, 2**20 + 1]


@pytest.mark.parametrize("kind", ["tcp4", "unix"])
@pytest.mark.parametrize("direction", ["client_to_server", "server_to_client"])
@pytest.mark.parametrize("size", SIZES)
def test_sizes_then_half_close(kind: str, direction: str, size: int) -> None:
    client, server = SOCKET_PAIRS[kind]()
    writer, reader = (client, server) if direction == "client_to_server" else (server, client)
    data = os.urandom(size)
    with client, server:
        sending = gevent.spawn(lambda: (writer.write(data), writer.shutdown("write")))
        received = bytearray()
        while chunk := reader.read():
            received += chunk
        sending.get(timeout=10)
        assert received == data
        assert reader.read() == b""
        # The half-closed writer can still read: the reply crosses back.
        reader.write(b"ack")
        reader.shutdown("write")
        assert writer.read() == b"ack"
        assert writer.read() == b""


# -- errors from the transport --------------------------------------------------------


def _reset(flow: SocketFlow) -> None:
    """Close with SO_LINGER 0, which sends the peer a RST."""
    flow.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    flow.close()


def test_peer_reset_is_broken_not_eof() -> None:
    client, server = tcp_pair()
    with client:
        client.write(b"unread")  # unread data at the peer: its close sends RST
        _reset(server)
        with pytest.raises(BrokenError) as caught:
            client.read()
        assert caught.value.errno == errno.ECONNRESET
        assert isinstance(caught.value.__cause__, ConnectionResetError)
        assert "reset" in str(caught.value)
        # Sticky: the next read raises too, and it is still an OSError for legacy code.
        with pytest.raises(ConnectionError, match="an earlier read failed"):
            client.read()
        with pytest.raises(BrokenError):
            for _ in range(10):
                client.write(b"x" * 65536)
        with pytest.raises(BrokenError, match="earlier write failed"):
            client.write(b"x")
    with pytest.raises(ClosedError):
        client.read()


def test_reset_wakes_a_blocked_reader() -> None:
    client, server = tcp_pair()
    with client:
        reading = gevent.spawn(client.read)
        wait_all_blocked()
        _reset(server)
        with pytest.raises(BrokenError):
            reading.get(timeout=5)


def test_write_to_closed_peer_never_raises_sigpipe() -> None:
    # Run in a child that restores the default SIGPIPE action, which would kill
    # it on a plain send(); MSG_NOSIGNAL must turn it into BrokenError.
    script = """
import signal, greenflow
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
a, b = greenflow.socketpair()
b.close()
try:
    for _ in range(10):
        a.write(b"x" * 65536)
except greenflow.BrokenError as exc:
    print("broken:", exc)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("broken:")


def test_descriptor_closed_behind_the_flows_back() -> None:
    a, b = greenflow.socketpair()
    with b:
        os.close(a.socket.fileno())
        with pytest.raises(BrokenError, match="behind the flow's back"):
            a.read()
        a.socket.detach()
        a.close()


# -- timeouts ----------------------------------------------------------------------------


def test_timeout_bounds_the_whole_call_not_each_wait() -> None:
    a, b = greenflow.socketpair(timeout=0.2)
    with a, b:
        # Trickle one byte every 50 ms into a 1 MiB write: each wait is short,
        # but the call as a whole must still end at 0.2 s.
        b.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        a.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

        def trickle() -> None:
            while True:
                b.read(1)
                gevent.sleep(0.05)

        reader = gevent.spawn(trickle)
        start = gevent.get_hub().loop.now()
        with pytest.raises(FlowTimeout, match="write did not complete within"):
            a.write(b"x" * 2**20)
        elapsed = gevent.get_hub().loop.now() - start
        reader.kill()
        assert elapsed < 5
        with pytest.raises(BrokenError, match="timed out"):
            a.write(b"x")


def test_timeout_is_passed_by_constructors() -> None:
    a, b = greenflow.socketpair(timeout=1.5)
    with a, b:
        assert a.timeout == b.timeout == 1.5
    with pytest.raises(ValueError):
        greenflow.socketpair(timeout=-1)


# -- constructors --------------------------------------------------------------------------


def test_connect_tcp_sets_nodelay_and_addresses() -> None:
    client, server = tcp_pair()
    with client, server:
        assert client.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert client.peer_address == server.local_address
        assert client.local_address == server.peer_address
        assert "127.0.0.1" in repr(client)
    assert client.peer_address == server.local_address  # remembered after close


def test_connect_tcp_by_name() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with greenflow.connect_tcp("localhost", port) as flow:
            accepted, _ = listener.accept()
            with accepted:
                flow.write(b"by name")
                assert accepted.recv(16) == b"by name"


def test_connect_tcp_refused_names_the_address() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(BrokenError, match=f"could not connect to 127.0.0.1:{port}.*refused") as caught:
            greenflow.connect_tcp("127.0.0.1", port)
    assert caught.value.errno == errno.ECONNREFUSED
    assert isinstance(caught.value, ConnectionError)


def test_connect_tcp_timeout() -> None:
    # A listener with a full backlog that never accepts: SYNs go unanswered.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            with pytest.raises(FlowTimeout, match=r"connecting to 127\.0\.0\.1"):
                for _ in range(16):
                    fillers.append(greenflow.connect_tcp("127.0.0.1", port, connect_timeout=0.2))
        finally:
            for flow in fillers:
                flow.close()


def test_unresolvable_name() -> None:
    with pytest.raises(BrokenError, match="could not resolve"):
        greenflow.connect_tcp("no-such-host.invalid", 80, connect_timeout=10)


def test_connect_unix_missing_path() -> None:
    with tempfile.TemporaryDirectory() as folder, pytest.raises(BrokenError, match="connecting to"):
        greenflow.connect_unix(os.path.join(folder, "nobody-here"))


def test_unix_addresses() -> None:
    client, server = unix_pair()
    with client, server:
        assert str(server.local_address).endswith("/s")
        assert client.peer_address == server.local_address


def test_from_socket_takes_ownership() -> None:
    left, right = socket.socketpair()
    flow = greenflow.from_socket(left)
    with right:
        flow.close()
        assert left.fileno() == -1  # closed with the flow
        assert right.recv(1) == b""


def test_from_gevent_socket_detaches_it() -> None:
    left, right = gevent.socket.socketpair()
    flow = greenflow.from_socket(left)
    with flow, greenflow.from_socket(right) as other:
        assert left.fileno() == -1  # gevent's wrapper gave its fd away
        flow.write(b"hi")
        assert other.read() == b"hi"


def test_from_socket_refuses_what_is_not_a_connected_stream() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(ValueError, match="stream"):
        greenflow.from_socket(udp)
    with socket.create_server(("127.0.0.1", 0)) as listener, pytest.raises(ValueError, match="listening"):
        greenflow.from_socket(listener)
    with pytest.raises(TypeError):
        greenflow.from_socket(3)  # type: ignore[arg-type]


def test_from_fd_refuses_a_pipe_and_leaves_it_open() -> None:
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(ValueError, match="not a socket"):
            greenflow.from_fd(read_end)
        os.write(write_end, b"x")  # still open
    finally:
        os.close(read_end)
        os.close(write_end)


VMADDR_CID_LOCAL = 1  # not named in Python 3.11's socket module


def test_vsock_local_loopback() -> None:
    # CID 1 is this machine; never CID 2 (the host).
    if not hasattr(socket, "AF_VSOCK"):
        pytest.skip("no AF_VSOCK in this Python")
    try:
        listener = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    except OSError as exc:
        pytest.skip(f"the kernel offers no AF_VSOCK: {exc}")
    with listener:
        try:
            listener.bind((VMADDR_CID_LOCAL, socket.VMADDR_PORT_ANY))
            listener.listen(1)
            port = listener.getsockname()[1]
            client = greenflow.connect_vsock(VMADDR_CID_LOCAL, port, timeout=5)
        except (OSError, BrokenError) as exc:
            pytest.skip(f"the kernel has no vsock loopback: {exc}")
        accepted, _ = listener.accept()
        with client, greenflow.from_socket(accepted) as server:
            client.write(b"over vsock")
            assert server.read() == b"over vsock"


# -- what a server needs ----------------------------------------------------------------------


def test_hub_stays_live_while_flows_block() -> None:
    ticks = 0

    def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            gevent.sleep(0.005)

    pairs = [greenflow.socketpair() for _ in range(50)]
    ticking = gevent.spawn(ticker)
    readers = [gevent.spawn(a.read) for a, _ in pairs]
    try:
        gevent.sleep(0.2)
        assert ticks >= 10, "the hub stalled while flows were blocked in read"
        assert not any(r.ready() for r in readers)
    finally:
        ticking.kill()
        for _, b in pairs:
            b.write(b"go")
        gevent.joinall(readers, timeout=5)
        assert all(r.value == b"go" for r in readers)
        for a, b in pairs:
            a.close()
            b.close()


@pytest.mark.timeout(60)
def test_shutdown_read_then_peer_data_is_discarded() -> None:
    a, b = greenflow.socketpair()
    with a, b:
        a.shutdown("read")
        b.write(b"ignored")
        assert a.read() == b""
        a.write(b"still writing")
        assert b.read() == b"still writing"


def test_close_in_the_same_loop_turn_as_readiness_wins() -> None:
    # The closer and the reader wake in one loop turn, and the closer runs
    # first and closes the flow; then the reader's watcher fires with data
    # ready. The read must raise ClosedError, not return the data.
    a, b = greenflow.socketpair()
    trigger_a, trigger_b = greenflow.socketpair()
    with a, b, trigger_a, trigger_b:
        outcome: list[object] = []

        def reader() -> None:
            try:
                data = a.read()
            except ClosedError as exc:
                outcome.append(exc)
            else:
                outcome.append((data, a.closed))

        def closer() -> None:
            trigger_b.read()
            a.close()

        closing = gevent.spawn(closer)
        reading = gevent.spawn(reader)
        wait_all_blocked()  # both parked on their watchers
        # Both descriptors ready before the loop polls again; libev invokes
        # the later one's watcher first, so the closer runs first.
        b.socket.send(b"data")
        trigger_a.socket.send(b"go")
        gevent.joinall([closing, reading], timeout=5)
        assert len(outcome) == 1
        if isinstance(outcome[0], tuple) and outcome[0][1] is False:
            pytest.skip("this loop ran the reader before the closer: the race was not reached")
        assert isinstance(outcome[0], ClosedError), f"read returned {outcome[0]!r} from a closed flow"


# -- regressions found in review ----------------------------------------------------------


@pytest.mark.parametrize("make", [greenflow.socketpair, greenflow.pipe_pair], ids=["socketpair", "pipes"])
def test_a_buffer_with_no_bytes_is_refused_not_taken_for_eof(make: Callable[[], tuple[Flow, Flow]]) -> None:
    import ctypes

    empty_rows = (ctypes.c_char * 0 * 3)()  # len() is 3, but it holds no byte
    a, b = make()
    with a, b:
        b.write(b"waiting")
        with pytest.raises(ValueError, match="room for at least one byte"):
            a.read_into(memoryview(empty_rows))
        assert a.read() == b"waiting", "the refused read_into latched a false EOF"


@pytest.mark.parametrize("make", [greenflow.socketpair, greenflow.pipe_pair], ids=["socketpair", "pipes"])
def test_a_strided_view_is_written_whole(make: Callable[[], tuple[Flow, Flow]]) -> None:
    a, b = make()
    with a, b:
        data = bytes(range(200))
        a.write(memoryview(data)[::2])
        a.writev([memoryview(data)[1::2], b"!"])
        expected = data[::2] + data[1::2] + b"!"
        got = b""
        while len(got) < len(expected):
            got += b.read()
        assert got == expected
        a.write(b"the writing direction is not broken")


@pytest.mark.parametrize("make", [greenflow.socketpair, greenflow.pipe_pair], ids=["socketpair", "pipes"])
def test_a_huge_max_bytes_is_fine(make: Callable[[], tuple[Flow, Flow]]) -> None:
    a, b = make()
    with a, b:
        b.write(b"hi")
        assert a.read(2**62) == b"hi"  # no 2**62-byte allocation, no OverflowError


def test_connect_tcp_checks_its_timeout_before_connecting() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with pytest.raises(ValueError):
            greenflow.connect_tcp("127.0.0.1", port, timeout=-1, connect_timeout=5)
        listener.settimeout(0)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected: nothing was left behind


def test_connect_timeout_while_resolving_is_a_flow_timeout() -> None:
    # A name goes to gevent's resolver, which yields; a connect_timeout of 0
    # expires there. FlowTimeout is an OSError too, and must not come out as
    # "could not resolve".
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        pytest.raises(FlowTimeout, match="within connect_timeout of 0 seconds"),
    ):
        greenflow.connect_tcp("localhost", listener.getsockname()[1], connect_timeout=0)


def test_from_socket_refuses_an_unconnected_socket() -> None:
    with socket.socket() as unconnected, pytest.raises(ValueError, match="not connected"):
        greenflow.from_socket(unconnected)


def test_close_after_the_descriptor_vanished_logs_instead_of_crashing_the_hub(
    capfd: pytest.CaptureFixture[str],
) -> None:
    a, b = greenflow.socketpair()

    def reader() -> object:
        try:
            return a.read()
        except ClosedError as exc:
            return exc

    with b:
        reading = gevent.spawn(reader)
        wait_all_blocked()  # parked on its watcher
        os.close(a.socket.fileno())  # behind the flow's back
        a.close()
        assert isinstance(reading.get(timeout=5), ClosedError)
        wait_all_blocked()  # the deferred release has run
        a.socket.detach()
    errors = capfd.readouterr().err
    assert "Traceback" not in errors, errors
    assert "Bad file descriptor" not in errors


# -- closing without a reset --------------------------------------------------------


def test_has_unread_input_peeks_without_taking() -> None:
    mine, theirs = tcp_pair()
    with mine, theirs:
        assert not mine.has_unread_input()
        theirs.write(b"xy")
        assert mine.read(1) == b"x"  # waits for the data: then one byte is left
        assert mine.has_unread_input()
        assert mine.read() == b"y"  # the peek took nothing
        assert not mine.has_unread_input()
        theirs.shutdown("write")
        assert mine.read() == b""
        assert not mine.has_unread_input()  # at EOF
    assert not mine.has_unread_input()  # closed


def test_close_lingering_keeps_a_response_that_a_reset_would_destroy() -> None:
    # The peer sent bytes nobody read: a plain close would reset, and the
    # reset would throw away the unsent end of a large reply.
    body = os.urandom(4_000_000)
    mine, theirs = tcp_pair()
    with theirs:
        theirs.write(b"unread request")
        assert mine.read(1) == b"u"
        received = gevent.spawn(_read_all, theirs)
        mine.write(body)  # returns with the end of it still in the send queue
        assert mine.has_unread_input()
        assert mine.close_lingering(10) is True
        assert mine.closed
        assert received.get(timeout=10) == body


def _read_all(flow: Flow) -> bytes:
    data = bytearray()
    while chunk := flow.read():
        data += chunk
    return bytes(data)


def test_close_lingering_gives_up_after_its_timeout() -> None:
    mine, theirs = tcp_pair()
    with theirs:
        mine.timeout = 0.2
        with pytest.raises(FlowTimeout):
            mine.write(b"x" * 64_000_000)  # a peer that never reads: the buffers fill up
        started = time.monotonic()
        assert mine.close_lingering(0.2) is False  # the queue never empties, no EOF comes
        assert 0.15 < time.monotonic() - started < 3
        assert mine.closed
    assert mine.close_lingering() is False  # closed already: nothing to do


# -- a starved reader waits before it tries (descriptors._wait_first) ---------------------


def _starve(reader: SocketFlow, writer: SocketFlow, buffer: bytearray) -> None:
    """One read that finds nothing and waits: the reader is starved after it."""
    late = gevent.spawn(reader.read_into, buffer)
    wait_all_blocked()
    writer.write(b"a")
    assert late.get(timeout=5) == 1
    assert reader._starved  # type: ignore[attr-defined]


@pytest.mark.timeout(30)
def test_a_starved_reader_waits_first_and_loses_nothing() -> None:
    a, b = tcp_pair()
    buffer = bytearray(100)
    _starve(b, a, buffer)
    # Data already there: the reader waits first, the loop finds it ready.
    a.write(b"bc")
    assert b.read_into(buffer) == 2 and buffer[:2] == b"bc"
    # A timeout while waiting first raises, and what comes later is read.
    b.timeout = 0.05
    with pytest.raises(FlowTimeout):
        b.read_into(buffer)
    b.timeout = None
    a.write(b"d")
    assert b.read(10) == b"d"
    # Every eighth read of a starved flow tries first; all see their data.
    for index in range(20):
        a.write(bytes([65 + index]))
        assert b.read(10) == bytes([65 + index])
    # A block of 4 KiB or more: a transfer is streaming in, starvation ends.
    a.write(b"x" * 5000)
    got = b""
    while len(got) < 5000:
        got += b.read(65536)
    assert got == b"x" * 5000
    assert not b._starved  # type: ignore[attr-defined]
    a.close()
    b.close()


@pytest.mark.timeout(30)
def test_a_starved_reader_is_woken_by_shutdown_and_close() -> None:
    a, b = tcp_pair()
    buffer = bytearray(100)
    _starve(b, a, buffer)
    parked = gevent.spawn(b.read_into, buffer)
    wait_all_blocked()
    b.shutdown("read")
    assert parked.get(timeout=5) == 0
    c, d = tcp_pair()
    _starve(d, c, buffer)
    parked = gevent.spawn(d.read, 10)
    wait_all_blocked()
    d.close()
    with pytest.raises(ClosedError):
        parked.get(timeout=5)
    a.close()
    b.close()
    c.close()


@pytest.mark.timeout(30)
def test_a_starved_reader_sees_eof() -> None:
    a, b = tcp_pair()
    buffer = bytearray(100)
    _starve(b, a, buffer)
    a.shutdown("write")
    assert b.read_into(buffer) == 0
    assert b.read() == b""
    a.close()
    b.close()
