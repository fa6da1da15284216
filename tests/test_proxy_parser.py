"""The PROXY protocol core, sans-IO: the parser and the sender, every branch.

No sockets here: bytes in, headers out. The listener layer over real
sockets, and real load balancers, are in ``test_proxy_listener.py`` and
``test_proxy_balancers.py``.
"""

from __future__ import annotations

import struct

import pytest

from greenflow.proxy_protocol import (
    TLV,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    Command,
    Family,
    HeaderParser,
    ParserState,
    ProxyHeader,
    ProxyHeaderError,
    ProxyInfo,
    SSLClient,
    TLVType,
    Transport,
    crc32c,
    encode,
    ssl_tlv,
)

SOURCE4, DEST4 = ("192.0.2.7", 51234), ("198.51.100.1", 443)
SOURCE6, DEST6 = ("2001:db8::7", 51234, 0, 0), ("2001:db8::1", 443, 0, 0)


def parse(data: bytes, *, optional: bool = False) -> HeaderParser:
    """Feed ``data`` at once; the parser must finish."""
    parser = HeaderParser(optional=optional)
    assert parser.feed(data)
    return parser


def parse_bytewise(data: bytes, *, optional: bool = False) -> HeaderParser:
    """Feed ``data`` one byte at a time, never more than the parser wants."""
    parser = HeaderParser(optional=optional)
    for index in range(len(data)):
        assert parser.wanted >= 1
        if parser.feed(data[index : index + 1]):
            break
    assert parser.finished
    return parser


def v2(body: bytes, *, command: int = 1, family: int = 1, transport: int = 1, version: int = 2) -> bytes:
    """A v2 header made by hand, for what :func:`encode` refuses to write."""
    return (
        V2_SIGNATURE
        + bytes([version << 4 | command, family << 4 | transport])
        + struct.pack("!H", len(body))
        + body
    )


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def fails(data: bytes, match: str, *, optional: bool = False) -> None:
    parser = HeaderParser(optional=optional)
    with pytest.raises(ProxyHeaderError, match=match):
        parser.feed(data)
    assert parser.state is ParserState.FAILED
    assert parser.wanted == 0


# -- version 1 ---------------------------------------------------------------------------


def test_v1_tcp4_and_the_bytes_after_it() -> None:
    parser = parse(encode(SOURCE4, DEST4, version=1) + b"GET / HTTP/1.1\r\n")
    header = parser.header
    assert header == ProxyHeader(1, Command.PROXY, Family.INET, Transport.STREAM, SOURCE4, DEST4)
    assert header.relayed
    assert parser.rest == b"GET / HTTP/1.1\r\n"
    assert parser.state is ParserState.DONE
    assert parser.wanted == 0


def test_v1_tcp6_one_byte_at_a_time() -> None:
    data = encode(SOURCE6, DEST6, version=1)
    assert data == b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n"
    parser = parse_bytewise(data)
    assert parser.header is not None
    assert (parser.header.source, parser.header.destination) == (SOURCE6, DEST6)
    assert parser.rest == b""


@pytest.mark.parametrize("line", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ::1 ::1 1 2\r\n"])
def test_v1_unknown(line: bytes) -> None:
    header = parse(line).header
    assert header is not None
    assert (header.family, header.source, header.relayed) == (Family.UNSPEC, None, False)


def test_v1_unknown_is_what_encode_writes_without_addresses() -> None:
    assert encode(None, None, version=1) == b"PROXY UNKNOWN\r\n"


def test_v1_longest_line_is_accepted() -> None:
    address = ":".join(["ffff"] * 8)
    line = f"PROXY UNKNOWN {address} {address} 65535 65535\r\n".encode()
    assert len(line) == V1_MAX_LENGTH
    assert parse(line).header is not None


def test_v1_without_crlf_within_107_bytes() -> None:
    parser = HeaderParser()
    parser.feed(b"PROXY TCP4 " + b"1" * 95)
    assert parser.wanted == 1 and parser.state is ParserState.V1
    with pytest.raises(ProxyHeaderError, match="no CRLF within 107 bytes"):
        parser.feed(b"1")


def test_v1_wanted_never_reaches_past_the_bound() -> None:
    parser = HeaderParser()
    assert parser.wanted == 16
    parser.feed(b"PROXY TCP4 1.2.3")
    assert parser.wanted == V1_MAX_LENGTH - 16


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare LF"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "CR without LF"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "no known protocol"),
        (b"PROXY\r\n", "did not start with a PROXY protocol header"),
        (b"PROXY TCP5\r\n", "no known protocol"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "5 fields, not 6"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "7 fields"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "where an IPv4 address belongs"),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "where an IPv4 address belongs"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "where an IPv6 address belongs"),
        (b"PROXY TCP6 \xff ::1 1 2\r\n", "where an IPv6 address belongs"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "with a scope"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "where a port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "where a port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "where a port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xd9\xa3\r\n", "where a port"),
    ],
)
def test_v1_malformed(line: bytes, match: str) -> None:
    fails(line, match)


def test_v1_port_zero_is_a_port() -> None:
    header = parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 0 2\r\n").header
    assert header is not None and header.source == ("1.2.3.4", 0)


# -- version 2 ---------------------------------------------------------------------------


def test_v2_inet_reads_not_a_byte_more() -> None:
    data = encode(SOURCE4, DEST4)
    parser = HeaderParser()
    assert not parser.feed(data[:12])
    assert parser.state is ParserState.V2
    assert parser.wanted == 4  # the length is not known yet
    assert not parser.feed(data[12:16])
    assert parser.wanted == len(data) - 16  # exactly the rest of the header
    assert parser.feed(data[16:])
    header = parser.header
    assert header == ProxyHeader(2, Command.PROXY, Family.INET, Transport.STREAM, SOURCE4, DEST4)
    assert parser.rest == b""


def test_v2_inet6_one_byte_at_a_time_then_the_request() -> None:
    data = encode(SOURCE6, DEST6)
    parser = parse_bytewise(data)
    assert parser.header is not None
    assert (parser.header.source, parser.header.destination) == (SOURCE6, DEST6)
    assert parse(data + b"hello").rest == b"hello"


def test_v2_unix_paths_and_abstract_names() -> None:
    header = parse(encode("/run/client.sock", "\0balancer")).header
    assert header is not None
    assert (header.family, header.source, header.destination) == (
        Family.UNIX,
        "/run/client.sock",
        "\0balancer",
    )


def test_v2_local_ignores_the_addresses_it_carries() -> None:
    header = parse(v2(bytes(12), command=0)).header
    assert header is not None
    assert (header.command, header.family, header.source, header.relayed) == (
        Command.LOCAL,
        Family.INET,
        None,
        False,
    )
    local = parse(encode(None, None, local=True)).header
    assert local is not None and (local.command, local.family) == (Command.LOCAL, Family.UNSPEC)


def test_v2_unspec_family_or_transport_has_no_addresses() -> None:
    for family, transport in ((0, 0), (1, 0)):
        header = parse(v2(bytes(12), family=family, transport=transport)).header
        assert header is not None and header.source is None and not header.relayed


def test_v2_dgram_is_reported() -> None:
    header = parse(v2(bytes(12), transport=2)).header
    assert header is not None and header.transport is Transport.DGRAM and header.source == ("0.0.0.0", 0)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (v2(b"", version=1), "version 1, not 2"),
        (v2(b"", command=2), "unknown command 0x2"),
        (v2(b"", family=4), "unknown address family 0x4"),
        (v2(b"", transport=3), "unknown transport 0x3"),
        (v2(bytes(11)), "length 11 is too short for its INET addresses"),
        (v2(bytes(12) + b"\x01\x00"), "cut-short TLV"),
        (v2(bytes(12) + b"\x01\x00\x05ab"), "type 0x01 whose length 5 runs 3 bytes past"),
        (b"GET / HTTP/1.1\r\n", "did not start with a PROXY protocol header"),
        (b"PROXYZ", "did not start with"),
        (V2_SIGNATURE[:5] + b"x", "did not start with"),
    ],
)
def test_v2_and_signature_malformed(data: bytes, match: str) -> None:
    fails(data, match)


# -- TLVs ----------------------------------------------------------------------------------


def test_v2_registered_tlvs_and_unknown_ones_kept() -> None:
    items = [
        TLV(TLVType.ALPN, b"h2"),
        (TLVType.AUTHORITY, "bücher.example".encode()),
        (TLVType.UNIQUE_ID, b"\x01" * 128),
        (TLVType.NETNS, b"blue"),
        (TLVType.NOOP, b""),
        (0xE3, b"custom"),
        (TLVType.ALPN, b"second, ignored"),
        ssl_tlv(
            SSLClient.SSL | SSLClient.CERT_CONN,
            0,
            version="TLSv1.3",
            cn="client.example",
            cipher="TLS_AES_128_GCM_SHA256",
            sig_alg="RSA-SHA256",
            key_alg="RSA2048",
        ),
    ]
    header = parse(encode(SOURCE4, DEST4, tlvs=items)).header
    assert header is not None
    assert header.alpn == b"h2"
    assert header.authority == "bücher.example"
    assert header.unique_id == b"\x01" * 128
    assert header.netns == "blue"
    assert header.tlv(0xE3) == b"custom" and header.tlv(0xE4) is None
    assert [item.type for item in header.tlvs] == [1, 2, 5, 0x30, 4, 0xE3, 1, 0x20]
    ssl = header.ssl
    assert ssl is not None and ssl.verified
    assert (ssl.version, ssl.cn, ssl.cipher, ssl.sig_alg, ssl.key_alg) == (
        "TLSv1.3",
        "client.example",
        "TLS_AES_128_GCM_SHA256",
        "RSA-SHA256",
        "RSA2048",
    )
    assert not header.checksummed


def test_ssl_tlv_without_a_certificate_and_unknown_sub_tlvs() -> None:
    value = struct.pack("!BI", 0x01, 1) + tlv(0x21, b"TLSv1.2") + tlv(0x21, b"again") + tlv(0x99, b"x")
    header = parse(encode(SOURCE4, DEST4, tlvs=[(TLVType.SSL, value)])).header
    assert header is not None and header.ssl is not None
    assert header.ssl.version == "TLSv1.2" and not header.ssl.verified
    assert [item.type for item in header.ssl.tlvs] == [0x21, 0x21, 0x99]
    assert ssl_tlv(SSLClient.CERT_CONN, 5).value == struct.pack("!BI", 2, 5)


def test_a_kibibyte_of_tlvs_with_a_checksum() -> None:
    items = [(0xE0 + index % 16, bytes([index]) * 61) for index in range(16)]  # 16 * 64 = 1 KiB
    data = encode(SOURCE6, DEST6, tlvs=items, checksum=True)
    assert len(data) > 16 + 36 + 1024
    parser = parse_bytewise(data)
    assert parser.header is not None and parser.header.checksummed
    assert len(parser.header.tlvs) == 17


def test_a_wrong_crc32c() -> None:
    data = bytearray(encode(SOURCE4, DEST4, tlvs=[(TLVType.ALPN, b"h2")], checksum=True))
    data[-1] ^= 0x01
    fails(bytes(data), "CRC32C is 0x[0-9a-f]{8}, but its bytes give 0x[0-9a-f]{8}")
    other = bytearray(encode(SOURCE4, DEST4, checksum=True))
    other[20] ^= 0x80  # an address byte: the checksum covers the whole header
    fails(bytes(other), "CRC32C")


def test_two_crc32c_tlvs() -> None:
    blank = v2(bytes(12) + tlv(3, bytes(4)) + tlv(3, bytes(4)))
    first = crc32c(blank).to_bytes(4, "big")  # right for the first, which is checked first
    fails(blank[:31] + first + blank[35:], "two CRC32C TLVs")


def test_crc32c_itself() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C
    assert crc32c(b"") == 0


@pytest.mark.parametrize(
    ("items", "match"),
    [
        (tlv(3, b"abc"), "CRC32C TLV is 3 bytes long, not 4"),
        (tlv(2, b"\xff"), "authority TLV is not UTF-8"),
        (tlv(0x30, "é".encode()), "network namespace TLV is not ASCII"),
        (tlv(5, bytes(129)), "unique id is 129 bytes long, over the 128 allowed"),
        (tlv(0x20, b"\x01\x00\x00"), "SSL TLV is 3 bytes long"),
        (tlv(0x20, bytes(5) + b"\x21\x00"), "SSL TLV ends in a cut-short TLV"),
        (tlv(0x20, bytes(5) + tlv(0x22, b"\xff")), "SSL cn TLV is not UTF-8"),
        (tlv(0x20, bytes(5) + tlv(0x23, "é".encode())), "SSL cipher TLV is not ASCII"),
    ],
)
def test_malformed_tlvs(items: bytes, match: str) -> None:
    fails(v2(bytes(12) + items), match)


# -- optional headers, EOF, misuse ---------------------------------------------------------


def test_an_optional_header_that_is_absent() -> None:
    parser = HeaderParser(optional=True)
    assert not parser.feed(b"PRO")  # could still be a v1 header
    assert parser.feed(b"FIND x")
    assert parser.state is ParserState.NO_HEADER
    assert parser.header is None and parser.rest == b"PROFIND x"
    assert parse(b"\r\n\r\nhello", optional=True).rest == b"\r\n\r\nhello"


def test_an_optional_header_that_is_present() -> None:
    parser = parse_bytewise(encode(SOURCE4, DEST4, version=1), optional=True)
    assert parser.header is not None and parser.header.source == SOURCE4


def test_eof() -> None:
    optional = HeaderParser(optional=True)
    optional.feed_eof()
    assert optional.state is ParserState.NO_HEADER and optional.rest == b""
    optional.feed_eof()  # finished already: nothing more happens
    with pytest.raises(ProxyHeaderError, match="ended before its PROXY protocol header"):
        HeaderParser().feed_eof()
    partial = HeaderParser(optional=True)
    partial.feed(b"PROXY TCP4 1.2")
    with pytest.raises(ProxyHeaderError, match="ended 14 bytes into its PROXY protocol header"):
        partial.feed_eof()
    assert partial.state is ParserState.FAILED


def test_a_finished_parser_takes_no_more() -> None:
    parser = parse(b"PROXY UNKNOWN\r\n")
    with pytest.raises(ValueError, match="is done: it takes no more bytes"):
        parser.feed(b"x")
    failed = HeaderParser()
    with pytest.raises(ProxyHeaderError):
        failed.feed(b"x")
    with pytest.raises(ValueError, match="is failed"):
        failed.feed(b"x")


def test_proxy_info() -> None:
    header = parse(encode(SOURCE4, DEST4, tlvs=[(1, b"h2")])).header
    assert header is not None
    info = ProxyInfo(header, ("127.0.0.1", 9999), header.source)
    assert info.tlvs == header.tlvs and info.proxy_address == ("127.0.0.1", 9999)


# -- the sender's refusals -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((SOURCE4, DEST4), {"version": 3}, "versions 1 and 2, not 3"),
        ((SOURCE4, DEST4), {"version": 1, "tlvs": [(1, b"x")]}, "v1 header has no TLVs"),
        ((SOURCE4, DEST4), {"version": 1, "local": True}, "v1 header has no TLVs"),
        ((SOURCE4, DEST4), {"local": True}, "LOCAL PROXY header carries no addresses"),
        ((SOURCE4, DEST6), {"version": 1}, "of different families"),
        ((SOURCE4, DEST6), {}, "of different families"),
        (("x", DEST4), {}, "must be \\(host, port\\), a Unix path or None"),
        ((("example.com", 1), DEST4), {}, "must be a numeric IP address"),
        ((("1.2.3.4", 65536), DEST4), {}, "port must be 0 to 65535"),
        ((SOURCE4, DEST4), {"tlvs": [(256, b"")]}, "TLV type is one byte"),
        ((SOURCE4, DEST4), {"tlvs": [(1, bytes(65536))]}, "TLV value holds at most 65535"),
        ((SOURCE4, DEST4), {"tlvs": [(1, bytes(40000)), (1, bytes(40000))]}, "at most 65535 bytes after"),
        (("/" + "x" * 108, "/y"), {}, "at most 108 bytes, not 109"),
    ],
)
def test_encode_refuses(args: tuple[object, object], kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode(*args, **kwargs)  # type: ignore[arg-type]


def test_header_for_a_flow_says_who_connected_to_whom() -> None:
    """What greenflow tunnel --send-proxy writes: the flow's peer and local addresses, or UNKNOWN."""
    import greenflow
    from greenflow.proxy_protocol import HeaderParser, header_for

    listener = greenflow.listen_tcp("127.0.0.1", 0)
    try:
        with greenflow.connect_tcp("127.0.0.1", listener.address[1], timeout=5) as client:
            line = header_for(client, version=1)  # from this end: the peer connected to us
            port = client.local_address[1]
            assert line == f"PROXY TCP4 127.0.0.1 127.0.0.1 {listener.address[1]} {port}\r\n".encode()
            parser = HeaderParser()
            parser.feed(header_for(client, version=2))
            assert parser.header is not None and parser.header.source == client.peer_address[:2]
    finally:
        listener.close()
    left, right = greenflow.socketpair()  # unnamed Unix sockets: nothing a header can carry
    with left, right:
        assert header_for(left, version=1) == b"PROXY UNKNOWN\r\n"
        assert header_for(left, version=2).startswith(b"\r\n\r\n\x00\r\nQUIT\n")
