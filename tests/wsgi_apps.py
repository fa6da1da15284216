"""WSGI applications for the tests of greenflow.wsgi, in process and under ``greenflow serve --wsgi``.

The plain applications are wrapped in ``wsgiref.validate.validator``, so
every request they serve is also checked against PEP 3333 by the standard
library (it raises on a server that breaks the rules, and the test sees a
500). ``flask_app`` is a small real-framework application.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.validate import validator

from flask import Flask, Response, request, send_file, stream_with_context

Environ = dict[str, Any]
StartResponse = Callable[..., Any]

#: The file the download routes send (made on import: a child process makes its own).
DOWNLOAD = os.path.join(os.environ.get("WSGI_TEST_DIR", "/tmp"), f"greenflow-wsgi-download-{os.getpid()}.bin")
DOWNLOAD_BYTES = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit
with open(DOWNLOAD, "wb") as _file:
    _file.write(DOWNLOAD_BYTES)

#: The environ keys ``/environ`` reports.
REPORTED = (
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "PATH_INFO",
    "QUERY_STRING",
    "wsgi.url_scheme",
    "wsgi.input_terminated",
    "HTTPS",
    "SSL_PROTOCOL",
    "SSL_CIPHER",
    "SSL_CLIENT_VERIFY",
    "SSL_CLIENT_S_DN",
    "SSL_CLIENT_I_DN",
    "SSL_CLIENT_M_SERIAL",
    "SSL_CLIENT_CERT",
    "HTTP_X_TEST",
    "CONTENT_TYPE",
)


def _read_all(stream: Any) -> bytes:
    data = b""
    while piece := stream.read(7001):  # an odd size: pieces cross chunk boundaries
        data += piece
    return data


def _plain(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/echo":  # the body back, read in pieces
        body = _read_all(environ["wsgi.input"])
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [body]
    if path == "/lines":  # the body's lines, counted with readline and iteration
        stream = environ["wsgi.input"]
        first = stream.readline()
        rest = list(stream)
        start_response("200 OK", [("Content-Type", "text/plain")])
        digest = hashlib.sha256(first + b"".join(rest)).hexdigest().encode()
        return [b"%d %d %s" % (len(first), len(rest), digest)]
    if path == "/ignore-body":  # answers without reading the body
        start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"nope"]
    if path == "/environ":
        report = {key: environ.get(key) for key in REPORTED}
        body = json.dumps(report).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    if path == "/chunks":  # several pieces, no Content-Length: chunked for HTTP/1.1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"piece %d\n" % number for number in range(5))
    if path == "/write":  # the write() callable, then an iterable
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"returned"]
    if path == "/file":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(DOWNLOAD, "rb"), 65536)
    if path == "/big":  # 64 MiB, for a client that leaves half-way
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _big()
    if path == "/raise-before":
        raise RuntimeError("failed before start_response")
    if path == "/raise-after":
        return _raise_after(start_response)
    if path == "/exc-info":  # replaces its status before anything was sent
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("changed its mind")
        except ValueError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"unavailable"]
    if path == "/errors":
        environ["wsgi.errors"].write("a line for wsgi.errors\n")
        environ["wsgi.errors"].flush()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def _big() -> Iterator[bytes]:
    block = b"x" * 65536
    for _ in range(1024):
        yield block


def _raise_after(start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first part "
    raise RuntimeError("failed after the response started")


#: The validator-wrapped plain application.
plain = validator(_plain)


class Tracked:
    """An iterable whose ``close()`` is counted: the server must always call it."""

    closed = 0

    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def __iter__(self) -> Iterator[bytes]:
        yield b"tracked "
        if self.fail:
            raise RuntimeError("the tracked body failed")
        yield b"body"

    def close(self) -> None:
        Tracked.closed += 1


def tracked(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Tracked(fail=environ["PATH_INFO"] == "/fail")


def slow_continue(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Reads its body (answering ``100 Continue``) before it answers: the stop test's mid-request."""
    path = environ["PATH_INFO"]
    body = environ["wsgi.input"].read() if path == "/upload" else b""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"got " + body]


# -- Flask ----------------------------------------------------------------------------

flask_app = Flask(__name__)


@flask_app.get("/hello")
def hello() -> str:
    return "hello from flask"


@flask_app.post("/form")
def form() -> str:
    return f"name={request.form['name']} size={len(request.form.get('blob', ''))}"


@flask_app.post("/json")
def echo_json() -> Any:
    return {"got": request.get_json(), "scheme": request.scheme, "remote": request.remote_addr}


@flask_app.post("/upload")
def upload() -> str:
    data = request.stream.read()
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}"


@flask_app.get("/stream")
def stream() -> Response:
    def generate() -> Iterator[str]:
        for number in range(100):
            yield f"line {number}\n"

    return Response(stream_with_context(generate()), mimetype="text/plain")


@flask_app.get("/download")
def download() -> Response:
    return send_file(DOWNLOAD, mimetype="application/octet-stream")


def misbehaving(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Breaks PEP 3333 in the way its path names (not validated: the server must catch it)."""
    path = environ["PATH_INFO"]
    if path == "/write-first":
        environ["wsgi.input"].read(0)
        start_response.__self__.write(b"too early")  # type: ignore[attr-defined]
    if path == "/twice":
        start_response("200 OK", [])
        start_response("200 OK", [])
    if path == "/no-start":
        return [b"body without a status"]
    if path == "/empty-no-start":
        return []
    if path == "/str-body":
        start_response("200 OK", [])
        return ["text"]  # type: ignore[list-item]
    if path == "/exc-info-late":
        return _exc_info_late(start_response)
    if path == "/too-long":
        start_response("200 OK", [("Content-Length", "3")])
        return [b"abc", b"def"]
    if path == "/too-short":
        start_response("200 OK", [("Content-Length", "10")])
        return iter([b"abc"])
    if path == "/bad-length":
        start_response("200 OK", [("content-length", "many")])
    if path == "/bad-header":
        start_response("200 OK", [("Transfer-Encoding", "chunked")])
    if path == "/stringio-file":
        import io

        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"from memory"))  # type: ignore[no-any-return]
    if path == "/sized-file":
        start_response("200 OK", [("Content-Length", "100")])
        return environ["wsgi.file_wrapper"](open(DOWNLOAD, "rb"))  # type: ignore[no-any-return]
    if path == "/readers":
        stream = environ["wsgi.input"]
        parts = [
            stream.readline(4),
            stream.readline(),
            stream.readlines(5),
            stream.readlines(),
            stream.read(),
        ]
        start_response("200 OK", [])
        return [repr(parts).encode()]
    if path == "/read-after-failure":
        stream = environ["wsgi.input"]
        try:
            stream.read()
        except Exception as exc:
            first = exc
        try:
            stream.read(1)
        except Exception as exc:
            again = exc
        start_response("200 OK", [])
        return [b"same" if again is first else b"different"]
    start_response("204 No Content", [])
    return [b"a body a 204 must not have"]


def _exc_info_late(start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [])
    yield b"sent "
    try:
        raise ValueError("too late to change")
    except ValueError:
        start_response("500 Internal Server Error", [], sys.exc_info())
    yield b"never"
