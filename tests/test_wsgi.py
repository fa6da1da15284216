"""greenflow.wsgi in process: PEP 3333 (checked by wsgiref's validator), HTTP/1.1, limits, refusals.

The server runs in this process; clients are raw flows (for exact bytes:
pipelining, the smuggling vectors), ``http.client`` over
:class:`greenflow.FlowSocket`, and ``curl`` through gevent's subprocess
module. The Flask tests and the command line are in ``test_wsgi_serve.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
from collections.abc import Iterator
from typing import Any

import gevent
import pytest

import greenflow
import greenflow.testing
import greenflow.wsgi
from greenflow import BufferedFlow
from greenflow.wsgi._connection import WSGIHandler

import wsgi_apps
from wsgi_apps import DOWNLOAD_BYTES, Tracked, plain, tracked


@contextlib.contextmanager
def serving(app: Any = plain, url: str = "tcp://127.0.0.1:0", **options: Any) -> Iterator[greenflow.Server]:
    with greenflow.Server(greenflow.wsgi.handler(app, **options), url, grace=5) as server:
        yield server


def connect(server: greenflow.Server) -> BufferedFlow:
    host, port = server.addresses[0][:2]
    return BufferedFlow(greenflow.connect_tcp(host, port, timeout=10))


class Reply:
    """One response as a client reads it off the wire."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.headers} {self.body[:60]!r}>"


def read_reply(reader: BufferedFlow, method: str = "GET") -> Reply:
    """Read one response: the head, then a body by Content-Length, chunks or EOF."""
    head = reader.read_until(b"\r\n\r\n", 65536).decode("latin-1")
    status_line, *fields = head.split("\r\n")[:-2]
    headers: dict[str, str] = {}
    for field in fields:
        name, _, value = field.partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(status_line.split()[1])
    if method == "HEAD" or status in (100, 204, 304):
        return Reply(status, headers, b"")
    if "content-length" in headers:
        return Reply(status, headers, reader.read_exactly(int(headers["content-length"])))
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int(reader.read_until(b"\r\n").split(b";")[0], 16):
            body += reader.read_exactly(size)
            assert reader.read_exactly(2) == b"\r\n"
        assert reader.read_until(b"\r\n") == b"\r\n"
        return Reply(status, headers, body)
    body = b""
    while piece := reader.read():
        body += piece
    return Reply(status, headers, body)


def at_eof(reader: BufferedFlow) -> bool:
    return reader.read() == b""


def request(path: str, method: str = "GET", body: bytes | None = None, **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    if body is not None and "Transfer_Encoding" not in headers:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


def http_client(server: greenflow.Server) -> http.client.HTTPConnection:
    host, port = server.addresses[0][:2]
    client = http.client.HTTPConnection(host, port, timeout=10)
    client.sock = greenflow.FlowSocket(greenflow.connect_tcp(host, port, timeout=10))  # type: ignore[assignment]
    return client


# -- PEP 3333, checked by wsgiref.validate ------------------------------------------------


def test_the_validated_application_over_http_client() -> None:
    with serving() as server:
        client = http_client(server)
        client.request("GET", "/hello")
        answer = client.getresponse()
        assert (answer.status, answer.read()) == (200, b"hello")
        client.request("POST", "/echo", body=b"x" * 100_000)
        assert client.getresponse().read() == b"x" * 100_000
        client.request("GET", "/write")
        assert client.getresponse().read() == b"written returned"
        client.request("GET", "/chunks")
        answer = client.getresponse()
        assert answer.getheader("Transfer-Encoding") == "chunked"
        assert answer.read() == b"".join(b"piece %d\n" % n for n in range(5))
        client.request("GET", "/exc-info")
        answer = client.getresponse()
        assert (answer.status, answer.read()) == (503, b"unavailable")
        client.close()


def test_environ_from_a_tcp_flow() -> None:
    with serving() as server, connect(server) as flow:
        flow.write(request("/environ?a=1&b=%20", X_Test="yes"))
        report = json.loads(read_reply(flow).body)
        local = flow.peer_address
        assert report["REMOTE_ADDR"] == "127.0.0.1"
        assert report["REMOTE_PORT"] == str(flow.local_address[1])  # type: ignore[index]
        assert (report["SERVER_NAME"], report["SERVER_PORT"]) == ("127.0.0.1", str(local[1]))  # type: ignore[index]
        assert report["QUERY_STRING"] == "a=1&b=%20"
        assert report["wsgi.url_scheme"] == "http"
        assert report["wsgi.input_terminated"] is True
        assert report["HTTP_X_TEST"] == "yes"
        assert report["HTTPS"] is None


def test_environ_on_a_unix_socket(tmp_path: Any) -> None:
    path = tmp_path / "wsgi.sock"
    with serving(url=f"unix:{path}"), BufferedFlow(greenflow.connect_unix(str(path), timeout=10)) as flow:
        flow.write(request("/environ").replace(b"Host: test", b"Host: example.org:8080"))
        report = json.loads(read_reply(flow).body)
    assert (report["REMOTE_ADDR"], report["REMOTE_PORT"]) == ("", "")
    assert (report["SERVER_NAME"], report["SERVER_PORT"]) == ("example.org", "8080")


def test_header_names_with_underscores_are_dropped() -> None:
    with serving() as server, connect(server) as flow:
        flow.write(request("/environ", X_Test="real").replace(b"\r\n\r\n", b"\r\nX_Test: spoofed\r\n\r\n"))
        assert json.loads(read_reply(flow).body)["HTTP_X_TEST"] == "real"


def test_wsgi_errors_go_to_logging(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "greenflow.wsgi.errors"), serving() as server:
        flow = connect(server)
        flow.write(request("/errors"))
        assert read_reply(flow).body == b"hello"
        flow.close()
    assert [r.getMessage() for r in caplog.records if r.name == "greenflow.wsgi.errors"] == [
        "a line for wsgi.errors"
    ]


def test_the_access_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "greenflow.wsgi.access"), serving(access_log=True) as server:
        flow = connect(server)
        flow.write(request("/hello?x=1"))
        read_reply(flow)
        flow.close()
    (line,) = [r.getMessage() for r in caplog.records if r.name == "greenflow.wsgi.access"]
    assert line.startswith("127.0.0.1 - - [")
    assert line.endswith('] "GET /hello?x=1 HTTP/1.1" 200 5')


# -- keep-alive and pipelining --------------------------------------------------------------


def test_keep_alive_reuses_the_connection() -> None:
    with serving() as server, connect(server) as flow:
        ports = set()
        for _ in range(5):
            flow.write(request("/environ"))
            reply = read_reply(flow)
            assert "connection" not in reply.headers
            ports.add(json.loads(reply.body)["REMOTE_PORT"])
        assert ports == {str(flow.local_address[1])}  # type: ignore[index]


def test_pipelined_requests_are_answered_in_order() -> None:
    with serving() as server, connect(server) as flow:
        flow.write(
            request("/environ?first")
            + request("/echo", "POST", b"second body")
            + request("/echo", "POST", chunked(b"third", b" body"), Transfer_Encoding="chunked")
            + request("/hello")
        )
        assert json.loads(read_reply(flow).body)["QUERY_STRING"] == "first"
        assert read_reply(flow).body == b"second body"
        assert read_reply(flow).body == b"third body"
        assert read_reply(flow).body == b"hello"


def test_max_requests_closes_after_the_last() -> None:
    with serving(max_requests=2) as server, connect(server) as flow:
        flow.write(request("/hello"))
        assert "connection" not in read_reply(flow).headers
        flow.write(request("/hello"))
        assert read_reply(flow).headers["connection"] == "close"
        assert at_eof(flow)


def test_http_1_0_is_close_delimited() -> None:
    with serving() as server, connect(server) as flow:
        flow.write(b"GET /chunks HTTP/1.0\r\n\r\n")
        reply = read_reply(flow)
        assert "transfer-encoding" not in reply.headers
        assert reply.body == b"".join(b"piece %d\n" % n for n in range(5))


def test_head_sends_no_body_whatever_the_app_returns() -> None:
    with serving() as server, connect(server) as flow:
        flow.write(request("/chunks", "HEAD") + request("/hello", "HEAD") + request("/hello"))
        first = read_reply(flow, "HEAD")
        assert first.headers["transfer-encoding"] == "chunked"
        second = read_reply(flow, "HEAD")
        assert second.headers["content-length"] == "5"
        assert read_reply(flow).body == b"hello"  # nothing of a body came before it


# -- the request body ---------------------------------------------------------------------


def test_chunked_request_bodies_read_to_the_end() -> None:
    lines = b"".join(b"line %d\n" % n for n in range(1000))
    with serving() as server, connect(server) as flow:
        body = chunked(lines[:3001], lines[3001:])
        flow.write(request("/lines", "POST", body, Transfer_Encoding="chunked"))
        first, rest, digest = read_reply(flow).body.split()
        assert (int(first), int(rest)) == (7, 999)
        assert digest.decode() == hashlib.sha256(lines).hexdigest()


def test_100_continue_is_sent_on_the_first_read() -> None:
    with serving() as server, connect(server) as flow:
        flow.write(request("/echo", "POST", None, Content_Length="4", Expect="100-continue"))
        assert read_reply(flow).status == 100
        flow.write(b"body")
        assert read_reply(flow).body == b"body"
        flow.write(request("/hello"))  # and the connection goes on
        assert read_reply(flow).body == b"hello"


def test_100_continue_is_not_sent_when_the_app_does_not_read() -> None:
    with serving() as server, connect(server) as flow:
        flow.write(request("/ignore-body", "POST", None, Content_Length="4", Expect="100-continue"))
        reply = read_reply(flow)
        assert (reply.status, reply.body) == (401, b"nope")
        assert at_eof(flow)  # closed: the body may or may not follow


def test_an_unread_body_is_drained_to_keep_the_connection() -> None:
    with serving() as server, connect(server) as flow:
        flow.write(request("/ignore-body", "POST", b"z" * 1000) + request("/hello"))
        assert read_reply(flow).status == 401
        assert read_reply(flow).body == b"hello"


def test_a_large_content_length_gets_413_without_the_app() -> None:
    with serving(max_body_size=100) as server, connect(server) as flow:
        flow.write(request("/echo", "POST", None, Content_Length="101", Expect="100-continue"))
        reply = read_reply(flow)
        assert reply.status == 413
        assert at_eof(flow)


def test_a_large_chunked_body_gets_413_from_wsgi_input() -> None:
    with serving(max_body_size=100) as server, connect(server) as flow:
        flow.write(request("/echo", "POST", chunked(b"a" * 60, b"b" * 60), Transfer_Encoding="chunked"))
        assert read_reply(flow).status == 413
        assert at_eof(flow)


def test_a_client_that_closes_in_its_body() -> None:
    with serving() as server:
        with connect(server) as flow:
            flow.write(request("/echo", "POST", None, Content_Length="100") + b"only part")
            flow.shutdown("write")
            assert read_reply(flow).status == 400
        with connect(server) as flow:  # the server goes on
            flow.write(request("/hello"))
            assert read_reply(flow).body == b"hello"


# -- limits and refusals ------------------------------------------------------------------


def test_431_for_a_long_head() -> None:
    with serving() as server, connect(server) as flow:
        flow.write(request("/hello", X_Long="a" * 17000))
        assert read_reply(flow).status == 431
        assert at_eof(flow)
    with serving(max_header_size=1024) as server, connect(server) as flow:
        flow.write(request("/hello", X_Long="a" * 1000))
        assert read_reply(flow).status == 431


CHUNKED = {"Transfer_Encoding": "chunked"}
SMUGGLING = {
    "content-length and chunked": request("/echo", "POST", b"0\r\n\r\n", Transfer_Encoding="chunked").replace(
        b"Host: test", b"Host: test\r\nContent-Length: 5"
    ),
    "bare LF in the head": b"GET /hello HTTP/1.1\nHost: test\n\n",
    "bare LF in one header line": b"GET /hello HTTP/1.1\r\nHost: test\nX: y\r\n\r\n",
    "bare LF in a chunk size line": request("/echo", "POST", b"5\nhello\r\n0\r\n\r\n", **CHUNKED),
    "bare LF after the last chunk": request("/echo", "POST", b"5\r\nhello\r\n0\r\n\n", **CHUNKED),
    "bare LF in a trailer": request("/echo", "POST", b"0\r\nX: y\n\r\n", **CHUNKED),
    "two content lengths": request("/echo", "POST", b"hello").replace(
        b"Host: test", b"Host: t\r\nContent-Length: 4"
    ),
    "chunked, not last": request("/echo", "POST", b"0\r\n\r\n", Transfer_Encoding="chunked, gzip"),
    "a space before the colon": b"GET /hello HTTP/1.1\r\nHost : test\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(SMUGGLING))
def test_smuggling_vectors_are_refused_and_closed(case: str) -> None:
    with serving() as server, connect(server) as flow:
        flow.write(SMUGGLING[case] + request("/hello"))
        reply = read_reply(flow)
        assert 400 <= reply.status < 600, reply
        assert reply.headers["connection"] == "close"
        assert at_eof(flow)  # the request after it was never served


def test_the_head_timeout_ends_a_trickling_client() -> None:
    with serving(header_timeout=0.3) as server, connect(server) as flow:
        flow.write(b"GET /hello HTTP/1.1\r\n")
        with gevent.Timeout(5):
            assert at_eof(flow)


def test_the_keepalive_timeout_ends_an_idle_connection() -> None:
    with serving(keepalive_timeout=0.3) as server, connect(server) as flow:
        flow.write(request("/hello"))
        read_reply(flow)
        with gevent.Timeout(5):
            assert at_eof(flow)


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_header_size"):
        greenflow.wsgi.handler(plain, max_header_size=10)
    with pytest.raises(ValueError, match="keepalive_timeout"):
        greenflow.wsgi.handler(plain, keepalive_timeout=0)
    with pytest.raises(TypeError, match="header_timeout"):
        greenflow.wsgi.handler(plain, header_timeout="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_requests"):
        greenflow.wsgi.handler(plain, max_requests=True)
    with pytest.raises(ValueError, match="max_body_size"):
        greenflow.wsgi.handler(plain, max_body_size=-1)
    with pytest.raises(TypeError, match="callable"):
        greenflow.wsgi.handler("app")  # type: ignore[arg-type]
    made = greenflow.wsgi.handler(plain, max_body_size=None, max_requests=None, header_timeout=None)
    assert isinstance(made, WSGIHandler)
    assert "greenflow.wsgi handler" in repr(made)


# -- applications that fail, clients that leave ---------------------------------------------


def test_an_app_raising_before_start_response_gets_500(caplog: pytest.LogCaptureFixture) -> None:
    with serving() as server, connect(server) as flow:
        flow.write(request("/raise-before"))
        reply = read_reply(flow)
        assert (reply.status, reply.headers["connection"]) == (500, "close")
        assert at_eof(flow)
    assert any("before its response started" in r.getMessage() for r in caplog.records)


def test_an_app_raising_after_start_response_is_cut_off() -> None:
    with serving() as server, connect(server) as flow:
        flow.write(request("/raise-after"))
        head = flow.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        rest = b""
        while piece := flow.read():
            rest += piece
        assert b"first part" in rest
        assert not rest.endswith(b"0\r\n\r\n")  # no end of the chunked body: the client knows


def test_iterable_close_is_always_called() -> None:
    before = Tracked.closed
    with serving(tracked) as server, connect(server) as flow:
        flow.write(request("/ok"))
        assert read_reply(flow).body == b"tracked body"
    with serving(tracked) as server, connect(server) as flow:
        flow.write(request("/fail"))
        read_until_eof = flow.read_until(b"\r\n\r\n")
        assert read_until_eof.startswith(b"HTTP/1.1 200")
        while flow.read():
            pass
    assert Tracked.closed == before + 2


def test_a_client_leaving_mid_response() -> None:
    with serving() as server:
        with connect(server) as flow:
            flow.write(request("/big"))
            assert flow.read_until(b"\r\n\r\n").startswith(b"HTTP/1.1 200")
            flow.read_exactly(100_000)
        greenflow.testing.wait_all_blocked()
        assert server.active_connections == 0  # its write failed, and the handler ended
        with connect(server) as flow:
            flow.write(request("/hello"))
            assert read_reply(flow).body == b"hello"


# -- wsgi.file_wrapper ----------------------------------------------------------------------


def files(environ: dict[str, Any], start_response: Any) -> Any:
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    wrapper = environ["wsgi.file_wrapper"](open(wsgi_apps.DOWNLOAD, "rb"))  # noqa: SIM115 - closed by the server
    if environ["PATH_INFO"] == "/part":
        wrapper.file.seek(1000)
    return wrapper


def test_file_wrapper_over_plain_tcp_with_sendfile() -> None:
    with serving(files) as server, connect(server) as flow:
        flow.write(request("/") + request("/part") + request("/", "HEAD"))
        whole = read_reply(flow)
        assert whole.headers["content-length"] == str(len(DOWNLOAD_BYTES))
        assert whole.body == DOWNLOAD_BYTES
        assert read_reply(flow).body == DOWNLOAD_BYTES[1000:]
        assert read_reply(flow, "HEAD").headers["content-length"] == str(len(DOWNLOAD_BYTES))


def test_file_wrapper_iterates_through_the_validator() -> None:
    with serving() as server, connect(server) as flow:
        flow.write(request("/file"))
        assert read_reply(flow).body == DOWNLOAD_BYTES


def test_file_wrapper_iterates() -> None:
    with open(wsgi_apps.DOWNLOAD, "rb") as file:
        wrapper = greenflow.wsgi.FileWrapper(file, 1 << 20)
        assert b"".join(wrapper) == DOWNLOAD_BYTES
        wrapper.close()
        assert file.closed


# -- applications that break PEP 3333 ---------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/write-first", 500),
        ("/twice", 500),
        ("/no-start", 500),
        ("/empty-no-start", 500),
        ("/bad-header", 500),
        ("/str-body", 500),
        ("/bad-length", 500),
    ],
)
def test_misuse_before_the_response_gets_500(path: str, status: int) -> None:
    with serving(wsgi_apps.misbehaving) as server, connect(server) as flow:
        flow.write(request(path))
        assert read_reply(flow).status == status
        assert at_eof(flow)


@pytest.mark.parametrize("path", ["/exc-info-late", "/too-long", "/too-short"])
def test_misuse_after_the_response_started_closes(path: str) -> None:
    with serving(wsgi_apps.misbehaving) as server, connect(server) as flow:
        flow.write(request(path) + request("/hello"))
        head = flow.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        while flow.read():  # whatever came of the body, then the close: the next request is not served
            pass


def test_a_204_sends_no_body() -> None:
    with serving(wsgi_apps.misbehaving) as server, connect(server) as flow:
        flow.write(request("/204") + request("/204"))
        assert read_reply(flow).status == 204
        assert read_reply(flow).status == 204  # no stray body bytes in between


def test_file_wrapper_of_what_sendfile_cannot_send() -> None:
    with serving(wsgi_apps.misbehaving) as server, connect(server) as flow:
        flow.write(request("/stringio-file") + request("/sized-file"))
        assert read_reply(flow).body == b"from memory"
        assert read_reply(flow).body == DOWNLOAD_BYTES[:100]


def test_the_readers_of_wsgi_input() -> None:
    body = b"abcdefgh\nline two\nthree\nfour\nrest"
    with serving(wsgi_apps.misbehaving) as server, connect(server) as flow:
        flow.write(request("/readers", "POST", chunked(body[:11], body[11:]), **CHUNKED))
        parts = read_reply(flow).body
    assert (
        parts == repr([b"abcd", b"efgh\n", [b"line two\n"], [b"three\n", b"four\n", b"rest"], b""]).encode()
    )


def test_a_failed_body_read_fails_again_the_same_way() -> None:
    with serving(wsgi_apps.misbehaving, max_body_size=3) as server, connect(server) as flow:
        flow.write(request("/read-after-failure", "POST", chunked(b"toolong"), **CHUNKED))
        reply = read_reply(flow)
        assert (reply.status, reply.body) == (200, b"same")
        assert at_eof(flow)  # the body was not read to its end
