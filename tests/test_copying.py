"""copy and proxy: bytes moved one way and both ways, half-closes passed on, real peers."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable

import gevent
import gevent.subprocess
import pytest

import greenflow
from greenflow import BrokenError, Flow, FlowTimeout, copy, proxy
from greenflow.copying import ProxyEnd
from greenflow.testing import memory_pair, wait_all_blocked

from pairs import MEMORY_PAIRS, SOCKET_PAIRS, Pair
from tls_helpers import contexts, shared_certs, tls_over

MiB = 1 << 20


def _tls_tcp() -> Pair:
    from pairs import tcp_pair

    client_ctx, server_ctx = contexts(shared_certs())
    return tls_over(tcp_pair, client_ctx, server_ctx)


HOPS: dict[str, Callable[[], Pair]] = {
    **SOCKET_PAIRS,
    **MEMORY_PAIRS,
    "pipes": greenflow.pipe_pair,
    "tls": _tls_tcp,
}


def _read_all(flow: Flow) -> bytes:
    chunks = []
    while chunk := flow.read():
        chunks.append(chunk)
    return b"".join(chunks)


def _pattern(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


# -- copy -----------------------------------------------------------------------------


def test_copy_moves_everything_and_passes_the_eof_on() -> None:
    src_writer, src = greenflow.socketpair()
    dst, dst_reader = greenflow.socketpair()
    data = _pattern(3 * MiB + 17)

    def feed() -> None:
        src_writer.write(data)
        src_writer.shutdown("write")

    feeder = gevent.spawn(feed)
    reader = gevent.spawn(_read_all, dst_reader)
    stats = copy(src, dst, buffer_size=65536)
    feeder.get(timeout=10)
    assert reader.get(timeout=10) == data
    assert stats.bytes == len(data)
    assert stats.writes >= len(data) // 65536
    assert stats.reads == stats.writes + 1  # the read that found the EOF
    assert stats.seconds >= 0
    assert "bytes in" in str(stats)
    for flow in (src_writer, src, dst, dst_reader):
        flow.close()


def test_copy_without_shutdown_leaves_dst_writable() -> None:
    src_writer, src = memory_pair()
    dst, dst_reader = memory_pair()
    src_writer.write(b"abc")
    src_writer.shutdown("write")
    stats = copy(src, dst, shutdown=False)
    assert (stats.bytes, stats.reads, stats.writes) == (3, 2, 1)
    dst.write(b"more")
    dst.shutdown("write")
    assert _read_all(dst_reader) == b"abcmore"


def test_copy_raises_the_flows_error_and_refuses_a_bad_buffer() -> None:
    src_writer, src = greenflow.socketpair()
    dst, dst_reader = greenflow.socketpair()
    dst_reader.close()
    src_writer.write(b"x" * 100_000)
    with pytest.raises(BrokenError):
        while True:
            copy(src, dst)
    with pytest.raises(ValueError, match="buffer_size"):
        copy(src, dst, buffer_size=0)
    for flow in (src_writer, src, dst):
        flow.close()


# -- proxy ----------------------------------------------------------------------------


def _through_proxy(
    make: Callable[[], Pair], idle_timeout: float | None = None
) -> tuple[Flow, Flow, gevent.Greenlet]:
    """client <-> [a  proxy  b] <-> server, over two pairs made by ``make``."""
    client, a = make()
    b, server = make()
    return client, server, gevent.spawn(proxy, a, b, idle_timeout)


@pytest.mark.parametrize("hop", sorted(HOPS))
def test_request_shutdown_then_a_1mib_reply_through_every_hop(hop: str) -> None:
    client, server, running = _through_proxy(HOPS[hop])
    reply = _pattern(MiB)

    def serve() -> bytes:
        request = _read_all(server)  # to the EOF the proxy passed on
        server.write(reply)
        server.shutdown("write")
        return request

    serving = gevent.spawn(serve)
    client.write(b"GET everything")
    client.shutdown("write")
    assert _read_all(client) == reply
    assert serving.get(timeout=20) == b"GET everything"
    stats = running.get(timeout=20)
    assert stats.error is None and stats.end is ProxyEnd.CLEAN, stats
    assert stats.a_to_b.bytes == len(b"GET everything")
    assert stats.b_to_a.bytes == MiB
    client.close()
    server.close()


def test_both_ways_at_once() -> None:
    client, server, running = _through_proxy(SOCKET_PAIRS["tcp4"])
    up, down = _pattern(4 * MiB), _pattern(4 * MiB)[::-1]

    def send(flow: Flow, data: bytes) -> None:
        flow.write(data)
        flow.shutdown("write")

    senders = [gevent.spawn(send, client, up), gevent.spawn(send, server, down)]
    readers = [gevent.spawn(_read_all, server), gevent.spawn(_read_all, client)]
    assert readers[0].get(timeout=20) == up
    assert readers[1].get(timeout=20) == down
    gevent.joinall(senders, raise_error=True)
    stats = running.get(timeout=10)
    assert stats.error is None
    assert (stats.a_to_b.bytes, stats.b_to_a.bytes) == (len(up), len(down))
    client.close()
    server.close()


def test_each_half_close_is_passed_on_alone() -> None:
    client, server, running = _through_proxy(SOCKET_PAIRS["unix"])
    client.write(b"question")
    client.shutdown("write")
    assert _read_all(server) == b"question"  # EOF reached the server...
    server.write(b"answer 1, ")  # ...which may still talk back
    wait_all_blocked()
    assert not running.ready()
    server.write(b"answer 2")
    server.shutdown("write")
    assert _read_all(client) == b"answer 1, answer 2"
    assert running.get(timeout=10).error is None
    client.close()
    server.close()


def _reset(flow: Flow) -> None:
    sock = flow.socket  # type: ignore[attr-defined]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    flow.close()


@pytest.mark.parametrize("side", ["client", "server"])
def test_a_reset_on_either_side_ends_it_with_the_error(side: str) -> None:
    client, server, running = _through_proxy(SOCKET_PAIRS["tcp4"])
    client.write(b"hello")
    assert server.read() == b"hello"
    _reset(client if side == "client" else server)
    stats = running.get(timeout=10)
    assert stats.end is ProxyEnd.FAILED
    assert isinstance(stats.error, BrokenError)
    assert "failed" in str(stats)
    survivor = server if side == "client" else client
    with pytest.raises(BrokenError):  # the proxy closed its side: the survivor sees it go
        while survivor.read():
            pass
        survivor.write(b"x" * MiB)
    survivor.close()
    (server if side == "client" else client).close()


def test_the_idle_timeout_counts_data_either_way() -> None:
    client, server, running = _through_proxy(SOCKET_PAIRS["socketpair"], idle_timeout=1.0)
    for _ in range(6):  # 1.2 s of traffic in all, longer than the timeout: each way keeps it alive
        client.write(b"ping")
        assert server.read() == b"ping"
        gevent.sleep(0.1)
        server.write(b"pong")
        assert client.read() == b"pong"
        gevent.sleep(0.1)
    assert not running.ready()
    stats = running.get(timeout=5)
    assert stats.end is ProxyEnd.IDLE
    assert isinstance(stats.error, FlowTimeout)
    assert stats.seconds >= 2.0  # 1.1 s from the first byte to the last, then a full second of silence
    assert client.read() == b""  # both flows were closed: the peers see EOF
    assert server.read() == b""
    client.close()
    server.close()


def test_proxy_closes_both_flows_and_checks_its_arguments() -> None:
    a, a_peer = greenflow.socketpair()
    b, b_peer = greenflow.socketpair()
    with pytest.raises(ValueError, match="idle_timeout"):
        proxy(a, b, idle_timeout=0)
    with pytest.raises(ValueError, match="buffer_size"):
        proxy(a, b, buffer_size=0)
    a_peer.shutdown("write")
    b_peer.shutdown("write")
    stats = proxy(a, b)
    assert a.closed and b.closed
    assert stats.error is None
    assert "clean" in str(stats)
    a_peer.close()
    b_peer.close()


def test_a_kill_of_the_caller_closes_both_flows() -> None:
    a, a_peer = greenflow.socketpair()
    b, b_peer = greenflow.socketpair()
    running = gevent.spawn(proxy, a, b)
    wait_all_blocked()
    running.kill()
    assert a.closed and b.closed
    assert a_peer.read() == b"" and b_peer.read() == b""
    a_peer.close()
    b_peer.close()


def test_pipes_between_processes() -> None:
    """A child process at one end (cat), through proxy, to a socket pair at the other."""
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    cat = gevent.subprocess.Popen(["cat"], stdin=to_child_r, stdout=from_child_w)
    os.close(to_child_r)
    os.close(from_child_w)
    child = greenflow.from_pipes(from_child_r, to_child_w)
    outside, inside = greenflow.socketpair()
    running = gevent.spawn(proxy, inside, child)
    data = _pattern(MiB)
    sender = gevent.spawn(lambda: (outside.write(data), outside.shutdown("write")))
    assert _read_all(outside) == data
    sender.get(timeout=10)
    assert running.get(timeout=10).error is None
    outside.close()
    assert cat.wait(timeout=10) == 0
