"""The sans-IO parts of greenflow.wsgi, case by case: head cutting, the chunked end, validation, environ."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from greenflow.wsgi._environ import ErrorStream, _server_from_host
from greenflow.wsgi._input import CHUNKED_END_WINDOW, HeadScanner, Refusal, check_chunked_end
from greenflow.wsgi._response import _check_headers, _check_status

HEAD = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Long: " + b"v" * 200 + b"\r\n\r\n"


def feed_in_pieces(data: bytes, size: int, limit: int = 16384) -> tuple[bytes | None, bytes]:
    scanner = HeadScanner(limit)
    for start in range(0, len(data), size):
        head = scanner.feed(data[start : start + size])
        if head is not None:
            return head, scanner.rest
    return None, b""


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_the_head_is_found_however_it_is_cut(size: int) -> None:
    assert feed_in_pieces(HEAD + b"next", size)[0] == HEAD


def test_the_rest_after_the_head_is_kept() -> None:
    scanner = HeadScanner(16384)
    assert scanner.feed(HEAD + b"GET /next") == HEAD
    assert scanner.rest == b"GET /next"


def test_empty_lines_before_the_request_line_are_skipped() -> None:
    assert feed_in_pieces(b"\r\n\r\n" + HEAD, 1000)[0] == HEAD
    scanner = HeadScanner(100)
    assert scanner.feed(b"\r\n") is None
    assert scanner.feed(HEAD[:50]) is None


@pytest.mark.parametrize("size", [1, 5, 1000])
@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\n\r\n",
        b"GET / HTTP/1.1\r\n\nHost: a\r\n\r\n",
        b"\nGET / HTTP/1.1\r\n\r\n",
    ],
)
def test_a_bare_lf_is_refused_wherever_it_is(head: bytes, size: int) -> None:
    with pytest.raises(Refusal, match="bare LF") as caught:
        feed_in_pieces(head, size)
    assert caught.value.status == 400


def test_a_cr_lf_across_two_pieces_is_no_bare_lf() -> None:
    scanner = HeadScanner(16384)
    assert scanner.feed(b"GET / HTTP/1.1\r") is None
    assert scanner.feed(b"\nHost: a\r") is None
    assert scanner.feed(b"\n\r\n") == b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def test_a_long_head_is_refused_as_soon_as_it_passes_the_limit() -> None:
    scanner = HeadScanner(100)
    assert scanner.feed(b"GET / HTTP/1.1\r\nX: " + b"a" * 60) is None
    with pytest.raises(Refusal) as caught:
        scanner.feed(b"a" * 30)
    assert caught.value.status == 431
    with pytest.raises(Refusal, match="100 bytes"):
        HeadScanner(100).feed(b"GET / HTTP/1.1\r\nX: " + b"a" * 100 + b"\r\n\r\n")


@pytest.mark.parametrize(
    "end",
    [b"0\r\n\r\n", b"00;ext=1\r\nX: y\r\nZ: w\r\n\r\n", b"data\r\n0\r\n\r\n", b"1\r\na\r\n0 \r\n\r\n"],
)
def test_a_good_chunked_end_passes(end: bytes) -> None:
    check_chunked_end(end)


@pytest.mark.parametrize("end", [b"0\r\n\n", b"0\r\nX: y\n\r\n", b"0\n\r\n", b"a\n0\r\n\n"])
def test_a_bare_lf_in_the_chunked_end_is_refused(end: bytes) -> None:
    with pytest.raises(Refusal, match="bare LF"):
        check_chunked_end(end)


def test_a_trailer_section_past_the_window_is_refused() -> None:
    trailers = b"".join(b"X-%d: y\r\n" % n for n in range(CHUNKED_END_WINDOW // 8))
    with pytest.raises(Refusal, match="longer than"):
        check_chunked_end(trailers[-CHUNKED_END_WINDOW:] + b"\r\n")


@pytest.mark.parametrize(
    ("status", "expected"),
    [("200 OK", (200, b"OK")), ("404 Not Found", (404, b"Not Found")), ("599 ", (599, b""))],
)
def test_good_statuses(status: str, expected: tuple[int, bytes]) -> None:
    assert _check_status(status) == expected


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (b"200 OK", TypeError),
        ("200", ValueError),
        ("20 OK", ValueError),
        ("200 OK\r\nX: y", ValueError),
        ("100 Continue", ValueError),
    ],
)
def test_bad_statuses(status: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        _check_status(status)


def test_good_headers_are_encoded() -> None:
    assert _check_headers(
        [("Content-Type", "text/plain"), ("X-Name", "caf\xe9"), ("Connection", "close")]
    ) == [
        (b"Content-Type", b"text/plain"),
        (b"X-Name", b"caf\xe9"),
        (b"Connection", b"close"),
    ]


@pytest.mark.parametrize(
    ("headers", "error", "match"),
    [
        ((("A", "b"),), TypeError, "list"),
        ([("A", "b", "c")], TypeError, "tuple"),
        ([["A", "b"]], TypeError, "tuple"),
        ([("A", 1)], TypeError, "str"),
        ([("Bad Name", "x")], ValueError, "header name"),
        ([("X", "a\r\nInjected: y")], ValueError, "control character"),
        ([("Transfer-Encoding", "chunked")], ValueError, "hop-by-hop"),
        ([("Connection", "keep-alive")], ValueError, "hop-by-hop"),
        ([("X", "\u20ac")], ValueError, "latin-1"),
    ],
)
def test_bad_headers(headers: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        _check_headers(headers)


@pytest.mark.parametrize(
    ("host", "scheme", "expected"),
    [
        ("example.org:8080", "http", ("example.org", "8080")),
        ("example.org", "https", ("example.org", "443")),
        ("[::1]:9000", "http", ("[::1]", "9000")),
        ("[::1]", "http", ("[::1]", "80")),
        ("", "http", ("localhost", "80")),
        ("name:port", "https", ("name", "443")),
    ],
)
def test_server_name_from_host(host: str, scheme: str, expected: tuple[str, str]) -> None:
    environ = {"wsgi.url_scheme": scheme, "HTTP_HOST": host}
    _server_from_host(environ)
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == expected


def test_the_error_stream_logs_whole_lines(caplog: pytest.LogCaptureFixture) -> None:
    stream = ErrorStream()
    with caplog.at_level(logging.ERROR, "greenflow.wsgi.errors"):
        assert stream.write("one\ntw") == 6
        stream.writelines(["o\n", "three"])
        stream.flush()
        stream.flush()
    assert [record.getMessage() for record in caplog.records] == ["one", "two", "three"]
    with pytest.raises(TypeError, match="str"):
        stream.write(b"bytes")  # type: ignore[arg-type]
