"""The URL grammar, host parsing and address formatting of greenflow.addresses."""

from __future__ import annotations

import re
import socket

import pytest

from greenflow.addresses import (
    Endpoint,
    Scheme,
    format_address,
    numeric_address,
    numeric_family,
    parse_host_port,
    parse_url,
    url_for,
)

GOOD = [
    ("tcp://127.0.0.1:8000", Endpoint(Scheme.TCP, host="127.0.0.1", port=8000), "tcp://127.0.0.1:8000"),
    ("TCP://localhost:0", Endpoint(Scheme.TCP, host="localhost", port=0), "tcp://localhost:0"),
    ("tcp://[::1]:65535", Endpoint(Scheme.TCP, host="::1", port=65535), "tcp://[::1]:65535"),
    ("tcp://[fe80::1%lo]:80", Endpoint(Scheme.TCP, host="fe80::1%lo", port=80), "tcp://[fe80::1%lo]:80"),
    ("tcp://127.0.0.1:80/", Endpoint(Scheme.TCP, host="127.0.0.1", port=80), "tcp://127.0.0.1:80"),
    ("127.0.0.1:8000", Endpoint(Scheme.TCP, host="127.0.0.1", port=8000), "tcp://127.0.0.1:8000"),
    ("localhost:1", Endpoint(Scheme.TCP, host="localhost", port=1), "tcp://localhost:1"),
    ("[::]:9", Endpoint(Scheme.TCP, host="::", port=9), "tcp://[::]:9"),
    ("tls://example.test:443", Endpoint(Scheme.TLS, host="example.test", port=443), "tls://example.test:443"),
    ("unix:/run/app.sock", Endpoint(Scheme.UNIX, path="/run/app.sock"), "unix:/run/app.sock"),
    ("unix:///run/app.sock", Endpoint(Scheme.UNIX, path="/run/app.sock"), "unix:/run/app.sock"),
    ("unix:relative.sock", Endpoint(Scheme.UNIX, path="relative.sock"), "unix:relative.sock"),
    ("unix:@hidden", Endpoint(Scheme.UNIX, path="\0hidden"), "unix:@hidden"),
    ("unix+tls:/run/s", Endpoint(Scheme.UNIX_TLS, path="/run/s"), "unix+tls:/run/s"),
    ("unix+tls:@s", Endpoint(Scheme.UNIX_TLS, path="\0s"), "unix+tls:@s"),
    ("fd://3", Endpoint(Scheme.FD, fd=3), "fd://3"),
    ("fd:4", Endpoint(Scheme.FD, fd=4), "fd://4"),
    ("systemd:", Endpoint(Scheme.SYSTEMD), "systemd:"),
    ("systemd://", Endpoint(Scheme.SYSTEMD), "systemd:"),
    ("systemd:web", Endpoint(Scheme.SYSTEMD, name="web"), "systemd:web"),
    ("vsock://1:1234", Endpoint(Scheme.VSOCK, cid=1, port=1234), "vsock://1:1234"),
    ("vsock://4294967295:4294967295", Endpoint(Scheme.VSOCK, cid=2**32 - 1, port=2**32 - 1), None),
]


@pytest.mark.parametrize(("url", "expected", "canonical"), GOOD, ids=[url for url, _, _ in GOOD])
def test_every_form(url: str, expected: Endpoint, canonical: str | None) -> None:
    endpoint = parse_url(url)
    assert endpoint == expected
    assert endpoint.url == url  # kept for messages
    assert str(endpoint) == (canonical or url)
    assert repr(endpoint) == f"Endpoint({str(endpoint)!r})"
    assert parse_url(str(endpoint)) == endpoint  # the canonical spelling parses back
    assert endpoint.tls == (endpoint.scheme in (Scheme.TLS, Scheme.UNIX_TLS))


BAD = [
    ("", "try tcp://"),
    ("localhost", "try tcp://"),
    ("ftp://127.0.0.1:21", "unknown scheme 'ftp'"),
    ("tcp:127.0.0.1:80", "should look like tcp://HOST:PORT"),
    ("tls:/x", "should look like tls://HOST:PORT"),
    ("vsock:1:2", "should look like vsock://CID:PORT"),
    ("tcp://127.0.0.1", "needs a host and a port"),
    ("tcp://:80", "needs a host and a port"),
    ("tcp://127.0.0.1:", "no port"),
    ("tcp://127.0.0.1:99999", "bad port 99999"),
    ("tcp://127.0.0.1:http", "bad port 'http'"),
    ("tcp://127.0.0.1:+80", "bad port '\\+80'"),
    ("tcp://127.0.0.1:-1", "bad port '-1'"),
    ("tcp://127.0.0.1:٣", "bad port"),  # a non-ASCII digit
    ("tcp://::1:80", "IPv6 host goes in brackets"),
    ("::1:80", "IPv6 host goes in brackets"),
    ("tcp://[::1:80", "no closing"),
    ("tcp://[::1]", "needs a host and a port"),
    ("tcp://[::1]80", "needs a host and a port"),
    ("tcp://[127.0.0.1]:80", "not an IPv6 address"),
    ("tcp://[example.test]:80", "not an IPv6 address"),
    ("tcp://127.0.0.1:0/junk", "more than a host and a port"),
    ("tcp://127.0.0.1:0?x=1", "more than a host and a port"),
    ("tcp://127.0.0.1:0#f", "more than a host and a port"),
    ("tcp://u:p@127.0.0.1:0", "more than a host and a port"),
    ("tcp://[::1]:0/x", "more than a host and a port"),
    ("tcp://a b:1", "more than a host and a port"),
    ("unix:", "names no socket path"),
    ("unix:///", None),  # "/" is a path: bind refuses it, not the parser
    ("unix://host/path", "with no host"),
    ("unix:@", "names no abstract socket"),
    ("unix:/a\0b", "NUL"),
    ("fd://", "descriptor number"),
    ("fd://three", "descriptor number"),
    ("fd://-1", "descriptor number"),
    ("fd://3/", "descriptor number"),
    ("systemd:a:b", "not a socket name"),
    ("systemd:a/b", "not a socket name"),
    ("vsock://1", "needs a CID and a port"),
    ("vsock://x:1", "bad CID 'x'"),
    ("vsock://1:", "no port"),
    ("vsock://4294967296:1", "bad CID 4294967296"),
    ("vsock://1:4294967296", "bad port 4294967296"),
]


@pytest.mark.parametrize(("url", "problem"), BAD, ids=[url or "empty" for url, _ in BAD])
def test_every_malformed_form(url: str, problem: str | None) -> None:
    if problem is None:
        assert parse_url(url).path == "/"
        return
    with pytest.raises(ValueError, match=re.escape(repr(url)) + " is not a listener URL: .*" + problem):
        parse_url(url, kind="a listener URL")


def test_a_url_is_a_string() -> None:
    with pytest.raises(TypeError, match="not bytes"):
        parse_url(b"tcp://127.0.0.1:1")  # type: ignore[arg-type]


def test_the_default_kind() -> None:
    with pytest.raises(ValueError, match="'x' is not an address URL"):
        parse_url("x")


def test_parse_host_port_alone() -> None:
    assert parse_host_port("[::1]:80") == ("::1", 80)
    assert parse_host_port("example.test:0") == ("example.test", 0)
    with pytest.raises(ValueError, match="'h:x' is not an address URL: it has a bad port"):
        parse_host_port("h:x")
    with pytest.raises(ValueError, match="'tcp://h' is not"):
        parse_host_port("h", "tcp://h")


def test_numeric_hosts() -> None:
    assert numeric_family("127.0.0.1") == socket.AF_INET
    assert numeric_family("::1") == socket.AF_INET6
    assert numeric_family("fe80::1%lo") == socket.AF_INET6
    assert numeric_family("[::1]") is None
    assert numeric_family("localhost") is None
    assert numeric_family("1.2.3") is None
    assert numeric_address("127.0.0.1", 5) == (socket.AF_INET, ("127.0.0.1", 5))
    assert numeric_address("::1", 5) == (socket.AF_INET6, ("::1", 5, 0, 0))
    family, address = numeric_address("fe80::1%lo", 5) or (0, ())
    assert family == socket.AF_INET6
    assert address[3] == socket.if_nametoindex("lo")  # the zone becomes the scope id
    assert numeric_address("localhost", 5) is None  # names are for the resolver


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (("127.0.0.1", 80), "127.0.0.1:80"),
        (("::1", 80, 0, 0), "[::1]:80"),
        (("example.test", 1), "example.test:1"),
        ((2, 1234), "vsock://2:1234"),
        ("/run/app.sock", "/run/app.sock"),
        ("\0hidden", "@hidden"),
        (b"\0hidden", "@hidden"),
        (b"/run/app.sock", "/run/app.sock"),
        ("", "an unnamed socket"),
        (b"", "an unnamed socket"),
        (None, "an unnamed socket"),
    ],
)
def test_format_address(address: object, text: str) -> None:
    assert format_address(address) == text


@pytest.mark.parametrize(
    ("address", "tls", "url"),
    [
        (("127.0.0.1", 80), False, "tcp://127.0.0.1:80"),
        (("127.0.0.1", 80), True, "tls://127.0.0.1:80"),
        (("::1", 80, 0, 0), False, "tcp://[::1]:80"),
        (("::1", 80, 0, 0), True, "tls://[::1]:80"),
        ((1, 1234), False, "vsock://1:1234"),
        ("/run/s", False, "unix:/run/s"),
        ("/run/s", True, "unix+tls:/run/s"),
        ("\0s", False, "unix:@s"),
        (b"\0s", True, "unix+tls:@s"),
    ],
)
def test_url_for(address: object, tls: bool, url: str) -> None:
    assert url_for(address, tls=tls) == url
    assert str(parse_url(url)) == url
