"""Real clients against real servers through FlowSocket: smtplib with aiosmtpd, redis-py with redis-server.

redis-server is the Debian package (``.ci/run`` installs it); without the
binary the redis tests skip and say so. Each test starts its own server in a
temporary folder, on a Unix socket, and for TLS on a loopback port.
"""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import smtplib
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from typing import Any

import pytest

import greenflow
from greenflow import BufferedFlow, Flow, FlowSocket, tls

from tls_helpers import contexts, shared_certs

# -- smtplib against aiosmtpd ---------------------------------------------------------------


class Collector:
    """An aiosmtpd handler that keeps what it receives."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


class FlowSMTP(smtplib.SMTP):
    """smtplib.SMTP whose socket is a FlowSocket over a Unix socket flow."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(timeout=10)

    def _get_socket(self, host: str, port: int, timeout: float) -> FlowSocket:  # type: ignore[override]
        return FlowSocket(greenflow.connect_unix(self.path, timeout=timeout))


def test_smtplib_sends_mail_to_aiosmtpd() -> None:
    from aiosmtpd.controller import UnixSocketController

    collector = Collector()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "smtp.sock")
        controller = UnixSocketController(collector, unix_socket=path)
        controller.start()
        try:
            message = EmailMessage()
            message["From"] = "alice@example.org"
            message["To"] = "bob@example.org"
            message["Subject"] = "over a flow"
            message.set_content("Hello Bob.\n.a line that starts with a dot\n" + "long line " * 2000)
            with FlowSMTP(path) as client:
                client.connect("localhost", 25)
                assert client.ehlo()[0] == 250
                client.send_message(message)
                assert client.noop()[0] == 250
        finally:
            controller.stop()
    (envelope,) = collector.envelopes
    assert envelope.mail_from == "alice@example.org" and envelope.rcpt_tos == ["bob@example.org"]
    received = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
    assert received["Subject"] == "over a flow"
    sent = message.get_content().replace("\n", "\r\n")  # as SMTP carries lines
    assert received.get_content() == sent  # dot-stuffing and the long line undone


# -- redis-py against redis-server --------------------------------------------------------------

REDIS = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS is None, reason="redis-server is not installed (apt-get install redis-server; .ci/run does it)"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def redis_server() -> Iterator[dict[str, Any]]:
    """A redis-server of our own: a Unix socket, and TLS on a loopback port."""
    certs = shared_certs()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "redis.sock")
        tls_port = _free_port()
        command = [REDIS or "redis-server", "--port", "0", "--unixsocket", path, "--dir", folder]
        command += [
            "--save",
            "",
            "--appendonly",
            "no",
            "--tls-port",
            str(tls_port),
            "--tls-auth-clients",
            "no",
        ]
        command += ["--tls-cert-file", certs.server, "--tls-key-file", certs.server]
        command += ["--tls-ca-cert-file", certs.ca]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert server.stdout is not None
        log = []
        for line in server.stdout:  # bounded by the test's timeout
            log.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            server.wait()
            pytest.fail("redis-server did not start:\n" + "".join(log))
        try:
            yield {"path": path, "tls_port": tls_port}
        finally:
            server.terminate()
            server.wait(timeout=10)
            server.stdout.close()


def flow_connection_class() -> type:
    import redis

    class FlowConnection(redis.connection.UnixDomainSocketConnection):
        """redis-py's connection class, with its socket a FlowSocket over a flow we make."""

        def __init__(self, make_flow: Callable[[], Flow], **options: Any) -> None:
            self.make_flow = make_flow
            super().__init__(path="greenflow", **options)

        def _connect(self) -> FlowSocket:
            sock = FlowSocket(self.make_flow())
            sock.settimeout(self.socket_timeout)
            return sock

    return FlowConnection


def redis_over(make_flow: Callable[[], Flow]) -> Any:
    import redis

    connection_class = flow_connection_class()
    pool = redis.ConnectionPool(connection_class=connection_class, make_flow=make_flow, socket_timeout=10)
    return redis.Redis(connection_pool=pool)


def exercise(client: Any) -> None:
    client.set("greeting", "hello")
    assert client.get("greeting") == b"hello"
    assert client.incr("counter") == 1 and client.incr("counter") == 2
    big = os.urandom(3 * 1024 * 1024)
    client.set("big", big)
    assert client.get("big") == big
    pipe = client.pipeline()
    for i in range(100):
        pipe.rpush("list", i)
    pipe.lrange("list", 0, -1)
    assert pipe.execute()[-1] == [str(i).encode() for i in range(100)]


def check_can_read(client: Any) -> None:
    """redis-py's can_read: settimeout(0), recv, BlockingIOError when nothing is there."""
    connection = client.connection_pool.get_connection()
    try:
        assert connection.can_read(timeout=0) is False  # nothing there: BlockingIOError inside
        connection.send_command("PING")
        buffered: BufferedFlow = connection._sock.flow
        assert buffered.peek(1) == b"+"  # the reply has arrived, and is not consumed
        assert connection.can_read(timeout=0) is True  # recv with timeout 0 finds it
        assert connection.read_response() in (b"PONG", "PONG", True)
        assert connection._sock.gettimeout() == 10  # restored after the probe
    finally:
        client.connection_pool.release(connection)


@needs_redis
def test_redis_py_over_a_unix_socket_flow(redis_server: dict[str, Any]) -> None:
    client = redis_over(lambda: BufferedFlow(greenflow.connect_unix(redis_server["path"], timeout=10)))
    exercise(client)
    check_can_read(client)
    client.close()


@needs_redis
def test_redis_py_through_a_tls_flow(redis_server: dict[str, Any]) -> None:
    client_ctx, _server_ctx = contexts(shared_certs())

    def make_flow() -> Flow:
        plain = greenflow.connect_tcp("127.0.0.1", redis_server["tls_port"], timeout=10)
        return BufferedFlow(tls.client(plain, client_ctx, server_hostname="localhost"))

    client = redis_over(make_flow)
    exercise(client)
    check_can_read(client)
    assert client.info("server")["redis_version"]
    client.close()
