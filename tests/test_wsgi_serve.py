"""greenflow.wsgi with real peers: Flask behind it, curl and http.client in front, and ``serve --wsgi``.

Flask runs over TCP, TLS, a Unix socket and TLS on a Unix socket; curl
(through gevent's subprocess module, so the server in this process keeps
serving) and ``http.client`` over :class:`greenflow.FlowSocket` are the
clients. Then the command line in a child process: ``greenflow serve
--wsgi``, its usage errors, and a graceful stop with 100 idle keep-alive
clients and 10 mid-request. Last, gevent's own ``pywsgi.WSGIHandler`` driven
over a flow (the second path the documentation shows).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent import pywsgi
from test_cli import LISTENING, Served, children, host_port, run_greenflow
from test_interop_curl import curl
from test_wsgi import read_reply, request

import greenflow
import greenflow.tls
import greenflow.wsgi
from greenflow import BufferedFlow, Flow, FlowSocket

from tls_helpers import Certs, shared_certs
from wsgi_apps import DOWNLOAD_BYTES, flask_app, plain

TESTS = Path(__file__).parent
HAVE_CURL = shutil.which("curl") is not None
need_curl = pytest.mark.skipif(not HAVE_CURL, reason="no curl binary on this machine")
__all__ = ["children"]  # the fixture, used by name


@pytest.fixture(scope="module")
def certs() -> Certs:
    return shared_certs()


@contextlib.contextmanager
def flask_server(url: str, certs: Certs, **listen: Any) -> Iterator[greenflow.Server]:
    context = None
    if "tls" in url:
        context = greenflow.tls.server_context(Path(certs.server), client_cafile=Path(certs.ca))
    listeners = greenflow.listen_url(url, tls_context=context, **listen)
    with greenflow.Server(greenflow.wsgi.handler(flask_app), *listeners, grace=5) as server:
        yield server


#: How to reach each kind of server: (curl's arguments before the URL, the URL's base).
def curl_target(server: greenflow.Server, kind: str, certs: Certs) -> tuple[list[str], str]:
    address = server.addresses[0]
    if kind == "tcp":
        return [], f"http://127.0.0.1:{address[1]}"  # type: ignore[index]
    if kind == "tls":
        return ["--cacert", certs.ca], f"https://localhost:{address[1]}"  # type: ignore[index]
    if kind == "unix":
        return ["--unix-socket", str(address)], "http://localhost"
    return ["--unix-socket", str(address), "--cacert", certs.ca], "https://localhost"


def client_flow(server: greenflow.Server, kind: str, certs: Certs) -> Flow:
    address = server.addresses[0]
    if kind in ("tcp", "tls"):
        flow: Flow = greenflow.connect_tcp("127.0.0.1", address[1], timeout=10)  # type: ignore[index]
    else:
        flow = greenflow.connect_unix(str(address), timeout=10)
    if "tls" in kind:
        context = greenflow.tls.client_context(cafile=Path(certs.ca))
        flow = greenflow.tls.client(flow, context, server_hostname="localhost")
    return flow


KINDS = {"tcp": "tcp://127.0.0.1:0", "tls": "tls://127.0.0.1:0", "unix": "unix:{}", "unix+tls": "unix+tls:{}"}


@need_curl
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_flask_with_curl(kind: str, certs: Certs, tmp_path: Path) -> None:
    with flask_server(KINDS[kind].format(tmp_path / "flask.sock"), certs) as server:
        options, base = curl_target(server, kind, certs)
        assert curl(*options, f"{base}/hello") == b"hello from flask"
        assert curl(*options, "-d", "name=ada", "-d", "blob=" + "x" * 5000, f"{base}/form") == (
            b"name=ada size=5000"
        )
        answer = json.loads(curl(*options, "--json", '{"a": [1, 2]}', f"{base}/json"))
        assert answer["got"] == {"a": [1, 2]}
        assert answer["scheme"] == ("https" if "tls" in kind else "http")
        assert answer["remote"] == ("127.0.0.1" if kind in ("tcp", "tls") else "")
        assert curl(*options, f"{base}/stream") == b"".join(b"line %d\n" % n for n in range(100))
        assert curl(*options, f"{base}/download") == DOWNLOAD_BYTES
        upload = tmp_path / "upload.bin"
        upload.write_bytes(bytes(range(256)) * 3000)
        digest = hashlib.sha256(upload.read_bytes()).hexdigest()
        chunked = ("-H", "Transfer-Encoding: chunked", "--data-binary", f"@{upload}")
        assert curl(*options, *chunked, f"{base}/upload") == f"{256 * 3000} {digest}".encode()
        with_two = curl(
            *options, f"{base}/hello", f"{base}/hello"
        )  # keep-alive: one connection, two requests
        assert with_two == b"hello from flask" * 2


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_flask_with_http_client(kind: str, certs: Certs, tmp_path: Path) -> None:
    with flask_server(KINDS[kind].format(tmp_path / "flask.sock"), certs) as server:
        client = http.client.HTTPConnection("localhost", timeout=10)
        client.sock = FlowSocket(client_flow(server, kind, certs))  # type: ignore[assignment]
        client.request("GET", "/hello")
        assert client.getresponse().read() == b"hello from flask"
        client.request(
            "POST", "/form", body="name=grace", headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert client.getresponse().read() == b"name=grace size=0"
        upload = bytes(range(256)) * 3000
        client.request(
            "POST", "/upload", body=iter([upload[:100_000], upload[100_000:]]), encode_chunked=True
        )
        assert client.getresponse().read() == f"{len(upload)} {hashlib.sha256(upload).hexdigest()}".encode()
        client.request("GET", "/stream")
        answer = client.getresponse()
        assert answer.getheader("Transfer-Encoding") == "chunked"
        assert answer.read().count(b"\n") == 100
        client.request("GET", "/download")
        assert client.getresponse().read() == DOWNLOAD_BYTES
        client.close()


@need_curl
def test_tls_variables_with_a_client_certificate(certs: Certs, tmp_path: Path) -> None:
    context = greenflow.tls.server_context(
        Path(certs.server), client_cafile=Path(certs.ca), require_client_certificate=True
    )
    path = tmp_path / "mtls.sock"
    listeners = greenflow.listen_url(f"unix+tls:{path}", tls_context=context)
    with greenflow.Server(greenflow.wsgi.handler(plain), *listeners, grace=5):
        report = json.loads(
            curl(
                "--unix-socket",
                str(path),
                "--cacert",
                certs.ca,
                "--cert",
                certs.client,
                "https://localhost/environ",
            )
        )
    assert report["wsgi.url_scheme"] == "https"
    assert report["HTTPS"] == "on"
    assert report["SSL_PROTOCOL"].startswith("TLSv1.")
    assert report["SSL_CIPHER"]
    assert report["SSL_CLIENT_VERIFY"] == "SUCCESS"
    assert "O=trustme" in report["SSL_CLIENT_S_DN"]  # trustme names the client in its SAN
    assert report["SSL_CLIENT_I_DN"]
    assert int(report["SSL_CLIENT_M_SERIAL"], 16) > 0
    assert report["SSL_CLIENT_CERT"].startswith("-----BEGIN CERTIFICATE-----")
    assert report["REMOTE_ADDR"] == ""
    assert report["SERVER_NAME"] == "localhost"


def test_tls_without_a_client_certificate(certs: Certs) -> None:
    context = greenflow.tls.server_context(Path(certs.server))
    with (
        greenflow.Server(
            greenflow.wsgi.handler(plain), greenflow.listen_tls("127.0.0.1", 0, context)
        ) as server,
        BufferedFlow(client_flow(server, "tls", certs)) as flow,
    ):
        flow.write(request("/environ"))
        report = json.loads(read_reply(flow).body)
    assert (report["HTTPS"], report["SSL_CLIENT_VERIFY"], report["SSL_CLIENT_CERT"]) == ("on", "NONE", None)


def test_file_wrapper_over_tls_iterates(certs: Certs) -> None:
    with (
        flask_server("tls://127.0.0.1:0", certs) as server,
        BufferedFlow(client_flow(server, "tls", certs)) as flow,
    ):
        flow.write(request("/download"))
        assert read_reply(flow).body == DOWNLOAD_BYTES


# -- greenflow serve --wsgi ----------------------------------------------------------------


def test_serve_wsgi_with_its_options(children: list[Served], tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    served = Served(
        "--wsgi",
        "wsgi_apps:flask_app",
        "--bind",
        "tcp://127.0.0.1:0",
        "--bind",
        f"unix+tls:{path}",
        "--max-body-size",
        "100",
        "--max-header-size",
        "2048",
        "--keepalive-timeout",
        "30",
        "--header-timeout",
        "5",
        "--access-log",
        cwd=TESTS,
    )
    children.append(served)
    url, _ = served.wait_for(LISTENING, 2)
    host, port = host_port(url)
    with BufferedFlow(greenflow.connect_tcp(host, port, timeout=10)) as flow:
        flow.write(request("/hello"))
        assert read_reply(flow).body == b"hello from flask"
        flow.write(request("/upload", "POST", b"x" * 101))
        assert read_reply(flow).status == 413
    with BufferedFlow(greenflow.connect_tcp(host, port, timeout=10)) as flow:
        flow.write(request("/hello", X_Big="b" * 2100))
        assert read_reply(flow).status == 431
    if HAVE_CURL:
        assert (
            curl("--unix-socket", str(path), "--insecure", "https://localhost/hello") == b"hello from flask"
        )
    assert served.terminate() == 0
    assert b'"GET /hello HTTP/1.1" 200 16' in served.output


def test_serve_wsgi_usage_errors() -> None:
    both = run_greenflow("serve", "echo", "--wsgi", "wsgi_apps:plain")
    assert both.returncode == 2
    assert b"either HANDLER (echo) or --wsgi" in both.stderr
    lonely = run_greenflow("serve", "--max-body-size", "10")
    assert lonely.returncode == 2
    assert b"--max-body-size applies to --wsgi only" in lonely.stderr
    bad = run_greenflow("serve", "--wsgi", "no_module_here:app")
    assert bad.returncode == 2
    assert b"cannot load the WSGI application" in bad.stderr
    builtin = run_greenflow("serve", "--wsgi", "echo")
    assert (builtin.returncode, b"expected MODULE:APP" in builtin.stderr) == (2, True)


def test_the_help_names_the_defaults() -> None:
    text = run_greenflow("serve", "--help").stdout.decode()
    text = re.sub(r"\s+", " ", text)
    for name in ("HEADER_TIMEOUT", "KEEPALIVE_TIMEOUT", "MAX_REQUESTS"):
        value = getattr(greenflow.wsgi, f"DEFAULT_{name}")
        assert f"greenflow.wsgi.DEFAULT_{name}, {value:g}" in text
    assert greenflow.wsgi.DEFAULT_MAX_BODY_SIZE == 1 << 30 and "DEFAULT_MAX_BODY_SIZE, 1 GiB" in text
    assert greenflow.wsgi.DEFAULT_MAX_HEADER_SIZE == 16 << 10 and "DEFAULT_MAX_HEADER_SIZE, 16 KiB" in text


@pytest.mark.timeout(90)
def test_graceful_stop_with_idle_and_busy_keep_alive_clients(children: list[Served]) -> None:
    grace = 20.0
    served = Served(
        "--wsgi", "wsgi_apps:slow_continue", "--grace", str(grace), "--bind", "tcp://127.0.0.1:0", cwd=TESTS
    )
    children.append(served)
    host, port = host_port(served.wait_for(LISTENING)[0])

    def idle_client() -> BufferedFlow:
        flow = BufferedFlow(greenflow.connect_tcp(host, port, timeout=30))
        flow.write(request("/hello"))
        assert read_reply(flow).body == b"got "
        return flow  # now waiting between requests

    def busy_client() -> BufferedFlow:
        flow = BufferedFlow(greenflow.connect_tcp(host, port, timeout=30))
        flow.write(request("/upload", "POST", None, Content_Length="5", Expect="100-continue"))
        assert read_reply(flow).status == 100  # the application is reading the body: mid-request
        return flow

    idle = [job.get() for job in [gevent.spawn(idle_client) for _ in range(100)]]
    busy = [job.get() for job in [gevent.spawn(busy_client) for _ in range(10)]]
    stopped = time.monotonic()
    served.process.send_signal(signal.SIGTERM)
    readers = [gevent.spawn(flow.read) for flow in idle]
    with gevent.Timeout(5, AssertionError("idle keep-alive clients were not closed at once")):
        gevent.joinall(readers, raise_error=True)
    assert [reader.value for reader in readers] == [b""] * len(idle)  # EOF: closed by the server
    closed_idle = time.monotonic() - stopped
    for flow in idle:
        flow.close()
    for number, flow in enumerate(busy):
        flow.write(b"%05d" % number)
    for number, flow in enumerate(busy):
        reply = read_reply(flow)
        assert (reply.status, reply.body) == (200, b"got %05d" % number)
        assert flow.read() == b""  # then closed: the server is stopping
        flow.close()
    assert served.process.wait(timeout=grace) == 0
    assert closed_idle < grace / 4
    assert time.monotonic() - stopped < grace


# -- the second path: gevent's own handler over any flow ----------------------------------------


class IdleAwarePywsgiHandler(pywsgi.WSGIHandler):  # type: ignore[misc]
    """gevent's handler, with its wait for the next request marked idle."""

    def read_requestline(self) -> Any:
        with greenflow.idle():
            return super().read_requestline()


def pywsgi_handler(app: Any) -> Any:
    settings = pywsgi.WSGIServer(("localhost", 0), app, log=None)  # never started: it holds the settings
    settings.update_environ()

    def handle(flow: Flow) -> None:
        sock = FlowSocket(flow)
        IdleAwarePywsgiHandler(sock, sock.getpeername(), settings).handle()

    return handle


def test_pywsgi_handler_over_tls_on_a_unix_socket(certs: Certs, tmp_path: Path) -> None:
    context = greenflow.tls.server_context(Path(certs.server))
    path = tmp_path / "pywsgi.sock"
    listeners = greenflow.listen_url(f"unix+tls:{path}", tls_context=context)
    server = greenflow.Server(pywsgi_handler(flask_app), *listeners, grace=10)
    server.start()
    try:
        clients = []
        for _ in range(3):
            client = http.client.HTTPConnection("localhost", timeout=10)
            client.sock = FlowSocket(client_flow(server, "unix+tls", certs))  # type: ignore[assignment]
            for _ in range(2):  # keep-alive
                client.request("GET", "/hello")
                assert client.getresponse().read() == b"hello from flask"
            client.request("GET", "/download")
            assert client.getresponse().read() == DOWNLOAD_BYTES
            clients.append(client)
        started = time.monotonic()
        server.stop()  # the idle keep-alive connections end at once
        assert time.monotonic() - started < 5
    finally:
        server.stop(0)
    for client in clients:
        client.close()
