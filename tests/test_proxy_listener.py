"""The PROXY protocol over flows and listeners: accept(), ProxyFlow, the layer in a server."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import gevent
import pytest
import trustme
from OpenSSL import SSL

import greenflow
from greenflow import Flow, Server
from greenflow.errors import FlowTimeout
from greenflow.listeners import Listener, listen_tcp, listen_unix
from greenflow.proxy_protocol import (
    Family,
    ProxyFlow,
    ProxyHeaderError,
    ProxyProtocolListener,
    TLVType,
    accept,
    encode,
    parse_networks,
)
from greenflow.testing import check_flow_pair, lockstep_pair, memory_pair

from pairs import clogged

CLIENT4, BALANCER4 = ("203.0.113.9", 40000), ("198.51.100.1", 443)
CLIENT6 = ("2001:db8::9", 40001, 0, 0)

Pair = tuple[Flow, Flow]


# -- the flow ------------------------------------------------------------------------------


def proxied(make_pair: Callable[[], Pair]) -> Callable[[], Pair]:
    """Pairs whose first end read a header (with bytes after it) through accept()."""

    def make() -> Pair:
        a, b = make_pair()
        writer = gevent.spawn(b.write, encode(CLIENT4, BALANCER4, version=1))
        flow = accept(a, timeout=5)
        writer.get(timeout=5)
        return flow, ProxyFlow(b, None)

    return make


def test_conformance_over_memory() -> None:
    check_flow_pair(proxied(memory_pair))  # type: ignore[arg-type]
    check_flow_pair(proxied(lockstep_pair))  # type: ignore[arg-type]


def test_conformance_over_sockets() -> None:
    def clogged_after_the_header() -> Pair:
        pair = proxied(greenflow.socketpair)()  # the header goes first,
        clogged(lambda: (pair[0].underlying, pair[1].underlying))()  # type: ignore[arg-type,return-value]
        return pair  # then the send buffers are filled

    check_flow_pair(proxied(greenflow.socketpair), clogged_after_the_header)  # type: ignore[arg-type]


def test_header_one_byte_at_a_time_then_the_request() -> None:
    a, b = lockstep_pair()  # one read per write: the header arrives byte by byte
    data = encode(CLIENT6, ("2001:db8::1", 443, 0, 0), tlvs=[(TLVType.ALPN, b"h2")], checksum=True)

    def send() -> None:
        for index in range(len(data)):
            b.write(data[index : index + 1])
        b.write(b"GET / HTTP/1.1\r\n\r\n")

    sender = gevent.spawn(send)
    flow = accept(a, timeout=5)
    assert flow.peer_address == CLIENT6
    assert flow.proxy_info is not None and flow.proxy_info.header.alpn == b"h2"
    assert flow.read_until(b"\r\n\r\n") == b"GET / HTTP/1.1\r\n\r\n"
    sender.get(timeout=5)
    flow.close()
    b.close()


@pytest.mark.parametrize("version", [1, 2])
def test_header_and_request_in_one_write(version: int) -> None:
    a, b = lockstep_pair()
    request = b"GET /index.html HTTP/1.1\r\nHost: example\r\n\r\n"
    sender = gevent.spawn(b.write, encode(CLIENT4, BALANCER4, version=version) + request)
    flow = accept(a, timeout=5)
    if version == 2:
        assert flow.buffered == 0  # the length field: not a byte read past the header
    assert flow.read_exactly(len(request)) == request
    sender.get(timeout=5)
    assert flow.peer_address == CLIENT4
    assert flow.local_address is None  # the memory flow's, not the header's
    assert "ProxyFlow from ('203.0.113.9', 40000)" in repr(flow)
    flow.close()
    b.close()


def test_a_failed_header_closes_the_flow() -> None:
    a, b = memory_pair()
    b.write(b"SSH-2.0-OpenSSH\r\n")
    with pytest.raises(ProxyHeaderError, match="did not start with a PROXY protocol header"):
        accept(a)
    assert a.closed
    c, d = memory_pair()
    d.write(b"PROXY TCP4 1.2.3.4")
    d.shutdown("write")
    with pytest.raises(ProxyHeaderError, match="ended 18 bytes into"):
        accept(c)
    b.close()
    d.close()


def test_a_silent_peer_hits_the_header_timeout() -> None:
    a, b = memory_pair()
    started = time.monotonic()
    with pytest.raises(FlowTimeout, match="reading the PROXY protocol header did not complete within"):
        accept(a, timeout=0.2)
    assert time.monotonic() - started < 2
    assert a.closed
    b.close()


def test_networks() -> None:
    assert [str(n) for n in parse_networks(["10.0.0.0/8", "::1", "192.168.1.7/24"])] == [
        "10.0.0.0/8",
        "::1/128",
        "192.168.1.0/24",
    ]
    with pytest.raises(ValueError, match="'nowhere' is not a network"):
        parse_networks(["nowhere"])
    with pytest.raises(TypeError, match="wrap a single one in a list"):
        parse_networks("10.0.0.0/8")


def test_trust_is_by_ip_address_only() -> None:
    from greenflow.proxy_protocol._listener import _trusted

    loopback = parse_networks(["127.0.0.0/8"])
    assert _trusted(("::ffff:127.0.0.1", 1, 0, 0), loopback)  # a v4-mapped peer of a dual-stack socket
    assert not _trusted(("::1", 1, 0, 0), loopback)
    assert not _trusted(("localhost", 1), loopback)
    assert not _trusted((3, 1234), loopback)  # a vsock peer: (cid, port)
    assert not _trusted(("127.0.0.1", 1), ())


def test_no_header_timeout() -> None:
    a, b = memory_pair()
    b.write(b"PROXY UNKNOWN\r\n")
    flow = accept(a, timeout=None)
    assert flow.proxy_info is not None and flow.peer_address is None
    flow.close()
    b.close()


def test_layers_report_the_proxy_info_of_the_flow_below() -> None:
    a, b = memory_pair()
    b.write(encode(CLIENT4, BALANCER4))
    flow = accept(a)
    layered = greenflow.BufferedFlow(flow)
    assert layered.proxy_info is flow.proxy_info and layered.peer_address == CLIENT4
    assert b.proxy_info is None
    layered.close()
    b.close()


# -- the layer in a server -----------------------------------------------------------------


class Seen:
    """What a handler saw, request by request (one request: one line)."""

    def __init__(self) -> None:
        self.peers: list[object] = []
        self.infos: list[object] = []

    def handler(self, flow: Flow) -> None:
        buffered = flow if isinstance(flow, greenflow.BufferedFlow) else greenflow.BufferedFlow(flow)
        while True:
            with greenflow.idle():
                line = buffered.readline()
            if not line:
                return
            self.peers.append(flow.peer_address)
            self.infos.append(flow.proxy_info)
            buffered.write(b"ok " + line)


@pytest.fixture
def seen() -> Seen:
    return Seen()


def serve_proxied(seen: Seen, **options: object) -> Iterator[tuple[Server, int]]:
    listener = ProxyProtocolListener(listen_tcp("127.0.0.1", 0), **options)  # type: ignore[arg-type]
    server = Server(seen.handler, listener, timeout=10)
    server.start()
    try:
        yield server, int(server.addresses[0][1])  # type: ignore[index]
    finally:
        server.stop(grace=1)


@pytest.fixture
def proxied_server(seen: Seen) -> Iterator[tuple[Server, int]]:
    yield from serve_proxied(seen, header_timeout=0.5)


def ended(flow: Flow) -> bool:
    """Whether the server closed the connection (EOF or a reset)."""
    try:
        return flow.read() == b""
    except greenflow.BrokenError:
        return True


def test_keep_alive_requests_see_the_same_client(seen: Seen, proxied_server: tuple[Server, int]) -> None:
    server, port = proxied_server
    assert server.urls[0].startswith("tcp+proxy://127.0.0.1:")
    with greenflow.connect_tcp("127.0.0.1", port, timeout=10) as flow:
        reader = greenflow.BufferedFlow(flow)
        flow.write(encode(CLIENT4, BALANCER4, tlvs=[(TLVType.AUTHORITY, b"example.com")]) + b"one\n")
        assert reader.readline() == b"ok one\n"
        for word in (b"two\n", b"three\n"):
            flow.write(word)
            assert reader.readline() == b"ok " + word
        balancer = flow.local_address
    assert seen.peers == [CLIENT4] * 3
    info = seen.infos[0]
    assert all(other is info for other in seen.infos)
    assert info.proxy_address == balancer  # type: ignore[attr-defined]
    assert info.header.authority == "example.com"  # type: ignore[attr-defined]


def test_a_kibibyte_of_tlvs_through_the_server(seen: Seen, proxied_server: tuple[Server, int]) -> None:
    _, port = proxied_server
    tlvs = [(0xE0 + index % 16, bytes([index]) * 61) for index in range(16)]
    with greenflow.connect_tcp("127.0.0.1", port, timeout=10) as flow:
        flow.write(encode(CLIENT6, ("2001:db8::1", 443, 0, 0), tlvs=tlvs, checksum=True) + b"hi\n")
        assert greenflow.BufferedFlow(flow).readline() == b"ok hi\n"
    assert seen.peers == [CLIENT6]
    assert len(seen.infos[0].tlvs) == 17  # type: ignore[attr-defined]


def test_proxy_unknown_and_local_keep_the_real_peer(seen: Seen, proxied_server: tuple[Server, int]) -> None:
    _, port = proxied_server
    for header in (b"PROXY UNKNOWN\r\n", encode(None, None, local=True)):
        with greenflow.connect_tcp("127.0.0.1", port, timeout=10) as flow:
            flow.write(header + b"ping\n")
            assert greenflow.BufferedFlow(flow).readline() == b"ok ping\n"
            assert seen.peers[-1] == flow.local_address
            assert seen.infos[-1].header.family is Family.UNSPEC  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"PROXY TCP4 " + b"1" * 120, "no CRLF within 107 bytes"),
        (b"hello\n", "did not start with a PROXY protocol header"),
        (b"", "did not complete within the header timeout of 0.5 seconds"),
    ],
    ids=["v1-without-crlf", "untrusted-source-without-header", "silent-client"],
)
def test_bad_headers_close_the_connection_with_a_log_line(
    data: bytes,
    why: str,
    seen: Seen,
    proxied_server: tuple[Server, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, port = proxied_server
    caplog.set_level(logging.INFO, logger="greenflow.server")
    started = time.monotonic()
    with greenflow.connect_tcp("127.0.0.1", port, timeout=10) as flow:
        if data:
            flow.write(data)
        assert ended(flow)
    assert time.monotonic() - started < 2
    assert seen.peers == []
    assert any("failed to open" in r.getMessage() and why in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]


def test_a_wrong_crc32c_closes_the_connection(
    seen: Seen, proxied_server: tuple[Server, int], caplog: pytest.LogCaptureFixture
) -> None:
    _, port = proxied_server
    caplog.set_level(logging.INFO, logger="greenflow.server")
    header = bytearray(encode(CLIENT4, BALANCER4, checksum=True))
    header[-2] ^= 0xFF
    with greenflow.connect_tcp("127.0.0.1", port, timeout=10) as flow:
        flow.write(bytes(header) + b"hi\n")
        assert ended(flow)
    assert seen.peers == []
    assert any("CRC32C" in record.getMessage() for record in caplog.records)


def test_trusted_sources_may_come_without_a_header(seen: Seen) -> None:
    for server, port in serve_proxied(seen, trusted=["127.0.0.0/8"]):
        with greenflow.connect_tcp("127.0.0.1", port, timeout=10) as flow:
            flow.write(b"direct\n")
            assert greenflow.BufferedFlow(flow).readline() == b"ok direct\n"
            assert seen.peers == [flow.local_address] and seen.infos == [None]
        with greenflow.connect_tcp("127.0.0.1", port, timeout=10) as flow:
            flow.write(encode(CLIENT4, BALANCER4, version=1) + b"relayed\n")
            assert greenflow.BufferedFlow(flow).readline() == b"ok relayed\n"
        assert seen.peers[-1] == CLIENT4
        assert server.listeners[0].trusted == parse_networks(["127.0.0.0/8"])  # type: ignore[attr-defined]


def test_trust_does_not_reach_other_networks(seen: Seen) -> None:
    for _, port in serve_proxied(seen, trusted=["10.0.0.0/8", "::1"]):
        with greenflow.connect_tcp("127.0.0.1", port, timeout=10) as flow:
            flow.write(b"direct\n")
            assert ended(flow)
    assert seen.peers == []


def test_over_a_unix_socket(seen: Seen, tmp_path: object) -> None:
    listener = ProxyProtocolListener(listen_unix(f"{tmp_path}/s.sock"), trusted=["0.0.0.0/0"])
    assert listener.url.startswith("unix+proxy:") and listener.header_timeout == 10
    with Server(seen.handler, listener, timeout=10):
        with greenflow.connect_unix(f"{tmp_path}/s.sock", timeout=10) as flow:
            flow.write(encode("/run/client", "/run/balancer") + b"x\n")
            assert greenflow.BufferedFlow(flow).readline() == b"ok x\n"
        with greenflow.connect_unix(f"{tmp_path}/s.sock", timeout=10) as flow:
            flow.write(b"no header\n")  # a Unix peer is in no network: not trusted
            assert ended(flow)
    assert seen.peers == ["/run/client"]


# -- TLS behind the header -----------------------------------------------------------------


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[SSL.Context, SSL.Context]:
    from greenflow import tls

    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
    return tls.server_context(folder / "server.pem"), tls.client_context(cafile=folder / "ca.pem")


def test_tls_behind_the_header(seen: Seen, contexts: tuple[SSL.Context, SSL.Context]) -> None:
    from greenflow import tls

    listener = tls.TLSListener(ProxyProtocolListener(listen_tcp("127.0.0.1", 0)), contexts[0])
    assert listener.url.startswith("tcp+proxy+tls://127.0.0.1:")
    with Server(seen.handler, listener, timeout=10) as server:
        port = int(server.addresses[0][1])  # type: ignore[index]
        raw = greenflow.connect_tcp("127.0.0.1", port, timeout=10)
        raw.write(encode(CLIENT4, BALANCER4, tlvs=[(TLVType.ALPN, b"http/1.1")]))
        with tls.client(raw, contexts[1], server_hostname="localhost", handshake_timeout=10) as flow:
            flow.write(b"secret\n")
            assert greenflow.BufferedFlow(flow).readline() == b"ok secret\n"
    assert seen.peers == [CLIENT4]
    assert seen.infos[0].header.alpn == b"http/1.1"  # type: ignore[attr-defined]


def test_the_layer_checks_its_arguments(closing: list[Listener]) -> None:
    inner = listen_tcp("127.0.0.1", 0)
    closing.append(inner)
    with pytest.raises(ValueError, match="is not a network"):
        ProxyProtocolListener(inner, trusted=["x"])
    with pytest.raises(ValueError, match="at least 0 seconds"):
        ProxyProtocolListener(inner, header_timeout=-1)
    with pytest.raises(TypeError, match="wraps a Listener"):
        ProxyProtocolListener("tcp://127.0.0.1:0")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "tls"),
    [
        ("tcp+proxy://127.0.0.1:8000", False),
        ("tcp+proxy+tls://[::1]:8000", True),
        ("unix+proxy:/run/a.sock", False),
    ],
)
def test_the_proxy_url_forms_parse_and_print_back(url: str, tls: bool) -> None:
    from greenflow.addresses import parse_url

    endpoint = parse_url(url)
    assert endpoint.proxy and endpoint.tls is tls
    assert str(endpoint) == url


def test_a_server_on_a_tcp_proxy_url_sees_the_client_from_the_header() -> None:
    from greenflow.proxy_protocol import encode

    def who(flow: greenflow.Flow) -> None:
        flow.write(repr(flow.peer_address).encode() + b" " + flow.read())

    with greenflow.Server(who, "tcp+proxy://127.0.0.1:0", grace=1) as server:
        assert server.urls[0].startswith("tcp+proxy://127.0.0.1:")
        port = server.addresses[0][1]
        with greenflow.connect_tcp("127.0.0.1", port, timeout=5) as client:
            client.write(encode(("192.0.2.7", 4242), ("127.0.0.1", port), version=1) + b"hello")
            client.shutdown("write")
            got = b""
            while chunk := client.read():
                got += chunk
    assert got == b"('192.0.2.7', 4242) hello"


def test_wsgi_behind_the_proxy_protocol_sees_the_client_in_remote_addr() -> None:
    """Issue 13 asks REMOTE_ADDR from the PROXY information: the flow's peer_address carries it."""
    from greenflow import wsgi
    from greenflow.proxy_protocol import encode

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])  # type: ignore[operator]
        return [f"{environ['REMOTE_ADDR']}:{environ['REMOTE_PORT']}".encode()]

    with greenflow.Server(wsgi.handler(app), "tcp+proxy://127.0.0.1:0", grace=1) as server:
        port = server.addresses[0][1]
        with greenflow.connect_tcp("127.0.0.1", port, timeout=5) as client:
            header = encode(("198.51.100.9", 5555), ("127.0.0.1", port), version=2)
            client.write(header + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := client.read():
                reply += chunk
    assert reply.endswith(b"198.51.100.9:5555"), reply
