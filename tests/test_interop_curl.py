"""curl, a client we did not write, against greenflow.Server: HTTP, HTTPS and a Unix socket.

The handler speaks just enough HTTP/1.1 for one request per connection. curl
runs through gevent's subprocess module, so the server in this process keeps
serving while the test waits for curl.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import gevent.subprocess
import pytest

import greenflow
from greenflow import Flow
from greenflow.tls import TLSFlow, server_context

from tls_helpers import shared_certs

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="no curl binary on this machine")

BODY = os.urandom(1024 * 1024 + 7)
MAX_HEAD = 16 * 1024


def http_handler(flow: Flow) -> None:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = flow.read(4096)
        if not chunk:
            return
        head += chunk
        if len(head) > MAX_HEAD:
            flow.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n")
            return
    request_line = head.split(b"\r\n", 1)[0]
    method, target, _ = request_line.split(b" ", 2)
    if target == b"/tls-info" and isinstance(flow, TLSFlow):
        epoch = flow.epoch
        body = f"{epoch.version} {epoch.alpn_protocol} {epoch.server_name}".encode()
    elif target == b"/big":
        body = BODY
    else:
        body = b"hello from greenflow\n"
    flow.writev(
        [
            b"HTTP/1.1 200 OK\r\n",
            b"Content-Length: %d\r\nContent-Type: application/octet-stream\r\n" % len(body),
            b"Connection: close\r\n\r\n",
            body if method != b"HEAD" else b"",
        ]
    )
    flow.shutdown("write")


def curl(*args: str) -> bytes:
    result = gevent.subprocess.run(
        ["curl", "--silent", "--show-error", "--fail", "--max-time", "20", *args],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr.decode()
    return bytes(result.stdout)


def test_http_over_tcp() -> None:
    with greenflow.Server(http_handler, "tcp://127.0.0.1:0") as server:
        host, port = server.addresses[0][:2]
        assert curl(f"http://{host}:{port}/") == b"hello from greenflow\n"
        got = curl(f"http://{host}:{port}/big")
        assert hashlib.sha256(got).digest() == hashlib.sha256(BODY).digest()


def test_http_over_a_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "http.sock"
    with greenflow.Server(http_handler, f"unix:{path}"):
        assert curl("--unix-socket", str(path), "http://localhost/") == b"hello from greenflow\n"


@pytest.mark.parametrize("version", ["tlsv1.2", "tlsv1.3"])
def test_https_with_alpn_and_sni(version: str) -> None:
    certs = shared_certs()
    context = server_context(Path(certs.server), alpn_protocols=["http/1.1"])
    with greenflow.Server(http_handler, "tls://127.0.0.1:0", tls_context=context) as server:
        port = server.addresses[0][1]
        url = f"https://localhost:{port}"
        resolve = f"localhost:{port}:127.0.0.1"
        pin = "--tls-max" if version == "tlsv1.2" else "--tlsv1.3"
        pinned = [pin, "1.2"] if version == "tlsv1.2" else [pin]
        info = curl("--cacert", certs.ca, "--resolve", resolve, "--http1.1", *pinned, f"{url}/tls-info")
        expected = "TLSv1.2" if version == "tlsv1.2" else "TLSv1.3"
        assert info == f"{expected} http/1.1 localhost".encode()
        got = curl("--cacert", certs.ca, "--resolve", resolve, *pinned, f"{url}/big")
        assert hashlib.sha256(got).digest() == hashlib.sha256(BODY).digest()


def test_https_refused_by_curl_without_the_ca() -> None:
    certs = shared_certs()
    context = server_context(Path(certs.server))
    with greenflow.Server(http_handler, "tls://127.0.0.1:0", tls_context=context) as server:
        port = server.addresses[0][1]
        result = gevent.subprocess.run(
            ["curl", "--silent", "--max-time", "20", f"https://127.0.0.1:{port}/"],
            capture_output=True,
            timeout=30,
        )
        assert result.returncode == 60, result.stderr  # curl: peer certificate cannot be authenticated
        # The failed handshake did not hurt the server: a trusting client is served.
        assert curl("--cacert", certs.ca, f"https://127.0.0.1:{port}/") == b"hello from greenflow\n"
