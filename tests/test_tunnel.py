"""``greenflow tunnel`` as a user runs it: a child process between real clients and real servers.

The backends are greenflow servers in this process; the clients are
greenflow flows, the stdlib's ``ssl``, ``curl``, ``openssl s_client`` and
``stunnel``. Every tunnel is stopped with SIGTERM at the end of its test,
and must exit with status 0 and no traceback.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import gevent
import gevent.subprocess
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from gevent.event import Event

import greenflow
from greenflow import Flow
from greenflow.tls import TLSListener, client_context, server_context

from tls_helpers import Certs, shared_certs

REPO = Path(__file__).parent.parent
ENV = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
LISTENING = re.compile(r"greenflow: listening on (\S+)")
MiB = 1 << 20
REPLY = (bytes(range(256)) * (MiB // 256))[:MiB]
STUNNEL = shutil.which("stunnel4") or shutil.which("stunnel")


class Tunnel:
    """A ``greenflow tunnel`` child; its stderr is drained into :attr:`output` as it comes."""

    def __init__(self, *args: str, pass_fds: tuple[int, ...] = ()) -> None:
        self.process = gevent.subprocess.Popen(
            [sys.executable, "-m", "greenflow", "tunnel", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=ENV,
            pass_fds=pass_fds,
        )
        self.output = ""
        self._news = Event()
        self._drain = gevent.spawn(self._read_stderr)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while line := self.process.stderr.readline():
            self.output += line.decode()
            self._news.set()
        self._news.set()

    def wait_for(self, pattern: str | re.Pattern[str], count: int = 1, timeout: float = 20) -> list[str]:
        """Wait until ``count`` lines of stderr match; return their first groups (or whole matches)."""
        compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
        with gevent.Timeout(timeout, AssertionError(f"no {compiled.pattern!r}; stderr: {self.output}")):
            while True:
                found = list(compiled.finditer(self.output))
                if len(found) >= count:
                    return [m.group(1) if m.groups() else m.group(0) for m in found[:count]]
                if self._drain.dead:
                    raise AssertionError(f"the tunnel exited: {self.output}")
                self._news.clear()
                self._news.wait()

    @property
    def url(self) -> str:
        return self.wait_for(LISTENING)[0]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        status = self.process.wait(timeout=20)
        self._drain.join(timeout=10)
        assert "Traceback" not in self.output, self.output
        return int(status)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._drain.kill()


@pytest.fixture
def tunnels() -> Iterator[Callable[..., Tunnel]]:
    made: list[Tunnel] = []

    def start(*args: str, **options: tuple[int, ...]) -> Tunnel:
        tunnel = Tunnel(*args, **options)
        made.append(tunnel)
        return tunnel

    yield start
    for tunnel in made:
        tunnel.kill()


@pytest.fixture
def certs() -> Certs:
    return shared_certs()


# -- backends in this process ---------------------------------------------------------


def _read_all(flow: Flow) -> bytes:
    chunks = []
    while chunk := flow.read():
        chunks.append(chunk)
    return b"".join(chunks)


def reply_after_eof(flow: Flow) -> None:
    """Read the request to its EOF, then answer ``request + 1 MiB`` and shut down writing."""
    request = _read_all(flow)
    flow.writev([len(request).to_bytes(4, "big"), request, REPLY])
    flow.shutdown("write")


def echo_lines(flow: Flow) -> None:
    while data := flow.read():
        flow.write(data)
    flow.shutdown("write")


def http_responder(flow: Flow) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = flow.read()
        if not chunk:
            return
        request += chunk
    body = b"hello through the tunnel\n"
    flow.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    flow.shutdown("write")


@contextlib.contextmanager
def backend(
    handler: Callable[[Flow], None], *listeners: greenflow.Listener | str
) -> Iterator[greenflow.Server]:
    server = greenflow.Server(handler, *(listeners or ("tcp://127.0.0.1:0",)), grace=1)
    server.start()
    try:
        yield server
    finally:
        server.stop(0)


def tcp_url(server: greenflow.Server) -> str:
    return f"tcp://127.0.0.1:{server.addresses[0][1]}"


def tls_backend_listener(certs: Certs, **options: object) -> TLSListener:
    return TLSListener(greenflow.listen_tcp("127.0.0.1", 0), server_context(certs.server, **options))  # type: ignore[arg-type]


def check_half_close(flow: Flow) -> None:
    """Write, shut down writing, then read the 1 MiB reply of reply_after_eof to its EOF."""
    flow.write(b"the whole request")
    flow.shutdown("write")
    answer = _read_all(flow)
    assert answer[:4] == (17).to_bytes(4, "big")
    assert answer[4:21] == b"the whole request"
    assert answer[21:] == REPLY
    flow.close()


def tls_client(port: int, certs: Certs, host: str = "127.0.0.1", **options: object) -> Flow:
    context = client_context(cafile=certs.ca, **options)  # type: ignore[arg-type]
    return greenflow.connect_tls(host, port, context, server_hostname="localhost", timeout=20)


# -- plain forwarding over every kind of hop ------------------------------------------


def _connect(url: str, certs: Certs) -> Flow:
    endpoint = greenflow.addresses.parse_url(url)
    if endpoint.scheme.value == "tcp":
        return greenflow.connect_tcp(endpoint.host, endpoint.port, timeout=20)
    if endpoint.scheme.value == "tls":
        return tls_client(endpoint.port, certs)
    flow = greenflow.connect_unix(endpoint.path, timeout=20)
    if endpoint.scheme.value == "unix":
        return flow
    return greenflow.tls.client(flow, client_context(cafile=certs.ca), server_hostname="localhost")


@pytest.mark.parametrize(
    ("listen", "target"),
    [("tcp", "unix"), ("unix", "tcp"), ("tls", "unix+tls"), ("unix+tls", "tls"), ("tls", "tls")],
)
def test_half_close_through_every_kind_of_hop(
    listen: str, target: str, tunnels: Callable[..., Tunnel], certs: Certs, tmp_path: Path
) -> None:
    backends = {
        "tcp": lambda: "tcp://127.0.0.1:0",
        "unix": lambda: f"unix:{tmp_path}/backend.sock",
        "tls": lambda: tls_backend_listener(certs),
        "unix+tls": lambda: TLSListener(
            greenflow.listen_unix(f"{tmp_path}/tls.sock"), server_context(certs.server)
        ),
    }
    listens = {"tcp": "tcp://127.0.0.1:0", "tls": "tls://127.0.0.1:0", "unix": f"unix:{tmp_path}/t.sock"}
    listens["unix+tls"] = f"unix+tls:{tmp_path}/t.sock"
    tls_args = ["--certfile", certs.server] if "tls" in listen else []
    if "tls" in target:
        tls_args += ["--cafile", certs.ca, "--server-name", "localhost"]
    with backend(reply_after_eof, backends[target]()) as server:
        url = server.urls[0]
        tunnel = tunnels("--listen", listens[listen], "--to", url, *tls_args)
        check_half_close(_connect(tunnel.url, certs))
        tunnel.wait_for(r"sent 17 bytes, received 1048597 bytes, [\d.]+ s, clean")
        assert tunnel.stop() == 0


def test_fd_listener_and_fd_target(tunnels: Callable[..., Tunnel]) -> None:
    listening = socket.create_server(("127.0.0.1", 0))
    ours, theirs = socket.socketpair()
    with listening, ours:
        tunnel = tunnels(
            "--listen",
            f"fd://{listening.fileno()}",
            "--to",
            f"fd://{theirs.fileno()}",
            pass_fds=(listening.fileno(), theirs.fileno()),
        )
        theirs.close()
        port = listening.getsockname()[1]
        tunnel.wait_for(LISTENING)
        target = greenflow.from_socket(ours.dup())
        serving = gevent.spawn(reply_after_eof, target)
        check_half_close(greenflow.connect_tcp("127.0.0.1", port, timeout=20))
        serving.get(timeout=20)
        target.close()
        with greenflow.connect_tcp("127.0.0.1", port, timeout=20) as second:  # the descriptor is used up
            assert second.read() == b""
        tunnel.wait_for("was the target of an earlier connection")
        assert tunnel.stop(signal.SIGINT) == 0


# -- TLS terminator --------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl binary on this machine")
def test_curl_through_a_tls_terminating_tunnel(tunnels: Callable[..., Tunnel], certs: Certs) -> None:
    with backend(http_responder) as server:
        tunnel = tunnels("--listen", "tls://127.0.0.1:0", "--to", tcp_url(server), "--certfile", certs.server)
        result = gevent.subprocess.run(
            ["curl", "-sS", "--cacert", certs.ca, "--max-time", "20",
             "--resolve", f"localhost:{tunnel.port}:127.0.0.1", f"https://localhost:{tunnel.port}/"],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"hello through the tunnel\n"
        tunnel.wait_for(
            r"127\.0\.0\.1:\d+ -> tcp://127\.0\.0\.1:\d+: sent \d+ bytes, received \d+ bytes, [\d.]+ s, clean"
        )
        assert tunnel.stop() == 0


def s_client(port: int, certs: Certs, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return gevent.subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", certs.ca,
         "-servername", "localhost", "-quiet", *extra],
        input=b"GET / HTTP/1.0\r\n\r\n", capture_output=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary on this machine")
def test_openssl_s_client_with_and_without_a_client_certificate(
    tunnels: Callable[..., Tunnel], certs: Certs
) -> None:
    with backend(http_responder) as server:
        tunnel = tunnels(
            "--listen", "tls://127.0.0.1:0", "--to", tcp_url(server),
            "--certfile", certs.server, "--client-cafile", certs.ca,
        )  # fmt: skip
        port = tunnel.port
        served = s_client(port, certs, "-cert", certs.client, "-key", certs.client)
        assert b"hello through the tunnel" in served.stdout, served.stderr
        refused = s_client(port, certs)
        assert b"hello through the tunnel" not in refused.stdout
        assert re.search(rb"alert|certificate required|errno|error", refused.stderr), refused.stderr
        assert tunnel.stop() == 0


def _pin(path: str) -> str:
    certificate = x509.load_pem_x509_certificates(Path(path).read_bytes())[0]
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.mark.parametrize("admitted", [True, False])
def test_the_allow_list_by_pin_or_name(admitted: bool, tunnels: Callable[..., Tunnel], certs: Certs) -> None:
    allow = (
        ["--allow-pin", _pin(certs.client)]
        if admitted
        else ["--allow-dns", "other.example", "--allow-pin", _pin(certs.server)]
    )
    with backend(reply_after_eof) as server:
        tunnel = tunnels(
            "--listen", "tls://127.0.0.1:0", "--to", tcp_url(server),
            "--certfile", certs.server, "--client-cafile", certs.ca, *allow,
        )  # fmt: skip
        flow = tls_client(tunnel.port, certs, certfile=certs.client)
        if admitted:
            check_half_close(flow)
        else:
            with contextlib.suppress(greenflow.BrokenError):  # refused: closed, maybe before our write
                flow.write(b"let me in")
                flow.shutdown("write")
                assert _read_all(flow) == b""
            flow.close()
            tunnel.wait_for(r"refused: the client certificate \(.*\) is not on the allow-list")
        assert tunnel.stop() == 0


# -- TLS originator --------------------------------------------------------------------


def test_a_plain_client_through_a_tls_originating_tunnel(
    tunnels: Callable[..., Tunnel], certs: Certs
) -> None:
    # The greenflow TLS server requires a client certificate: the tunnel presents one.
    listener = tls_backend_listener(certs, client_cafile=certs.ca, require_client_certificate=True)
    with backend(reply_after_eof, listener) as server:
        tunnel = tunnels(
            "--listen", "tcp://127.0.0.1:0", "--to", f"tls://localhost:{server.addresses[0][1]}",
            "--cafile", certs.ca, "--client-certfile", certs.client,
        )  # fmt: skip
        check_half_close(greenflow.connect_tcp("127.0.0.1", tunnel.port, timeout=20))
        assert tunnel.stop() == 0


def test_a_target_whose_certificate_fails_is_logged(tunnels: Callable[..., Tunnel], certs: Certs) -> None:
    with backend(reply_after_eof, tls_backend_listener(certs)) as server:
        tunnel = tunnels("--listen", "tcp://127.0.0.1:0", "--to", f"tls://localhost:{server.addresses[0][1]}")
        with greenflow.connect_tcp("127.0.0.1", tunnel.port, timeout=20) as flow:
            assert flow.read() == b""  # the system store does not trust the test CA
        tunnel.wait_for(r"cannot reach tls://localhost:\d+: .*certificate")
        assert tunnel.stop() == 0


# -- SNI routes -------------------------------------------------------------------------


def _sni_client(port: int, name: str, certs: Certs) -> Flow:
    """A TLS client that asks for ``name`` (the test certificate is for localhost: no name check)."""
    flow = greenflow.connect_tcp("127.0.0.1", port, timeout=20)
    context = client_context(cafile=certs.ca)
    return greenflow.tls.client(flow, context, server_hostname=name, check_hostname=False)


def test_sni_routing_to_two_backends(tunnels: Callable[..., Tunnel], certs: Certs) -> None:
    def named(name: bytes) -> Callable[[Flow], None]:
        def handler(flow: Flow) -> None:
            _read_all(flow)
            flow.write(name)
            flow.shutdown("write")

        return handler

    with backend(named(b"alpha")) as alpha, backend(named(b"beta")) as beta:
        tunnel = tunnels(
            "--listen", "tls://127.0.0.1:0", "--certfile", certs.server,
            "--route", f"alpha.example={tcp_url(alpha)}", "--route", f"*.beta.example={tcp_url(beta)}",
        )  # fmt: skip
        port = tunnel.port

        def ask(name: str) -> bytes:
            with _sni_client(port, name, certs) as client:
                client.write(b"?")
                client.shutdown("write")
                return _read_all(client)

        assert ask("alpha.example") == b"alpha"
        assert ask("ALPHA.example") == b"alpha"
        assert ask("one.beta.example") == b"beta"
        try:  # a wildcard matches one label only: the tunnel closes, and our write may find it gone
            refused = ask("two.one.beta.example")
        except greenflow.BrokenError:
            refused = b""
        assert refused == b""
        tunnel.wait_for(r"no route for the server name 'two\.one\.beta\.example', and no --to")
        assert tunnel.stop() == 0


# -- reloads, timeouts, signals ----------------------------------------------------------


def _certificate_of(flow: Flow) -> bytes:
    epoch = flow.epoch  # type: ignore[attr-defined]
    return bytes(epoch.peer_certificate.fingerprint(epoch.peer_certificate.signature_hash_algorithm))


def test_a_sighup_reload_while_100_connections_are_open_drops_none(
    tunnels: Callable[..., Tunnel], certs: Certs, tmp_path: Path
) -> None:
    ca = trustme.CA()
    served_cert = tmp_path / "served.pem"
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(served_cert))
    with backend(echo_lines) as server:
        tunnel = tunnels(
            "--listen", "tls://127.0.0.1:0", "--to", tcp_url(server), "--certfile", str(served_cert)
        )
        port = tunnel.port
        context = client_context(cafile=ca_file)

        def open_one(index: int) -> Flow:
            flow = greenflow.connect_tls("127.0.0.1", port, context, server_hostname="localhost", timeout=20)
            flow.write(b"before %d" % index)
            assert flow.read() == b"before %d" % index
            return flow

        flows = [job.get() for job in [gevent.spawn(open_one, i) for i in range(100)]]
        old = _certificate_of(flows[0])
        ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(served_cert))
        tunnel.process.send_signal(signal.SIGHUP)
        tunnel.wait_for("SIGHUP: certificates reloaded")

        def finish(index: int, flow: Flow) -> None:
            flow.write(b"after %d" % index)
            flow.shutdown("write")
            assert _read_all(flow) == b"after %d" % index
            flow.close()

        gevent.joinall([gevent.spawn(finish, i, flow) for i, flow in enumerate(flows)], raise_error=True)
        fresh = open_one(100)
        assert _certificate_of(fresh) != old  # new handshakes take the new certificate
        fresh.close()
        # A broken file is refused: the reload says why, and the certificate in use stays.
        served_cert.write_text("not a certificate\n")
        tunnel.process.send_signal(signal.SIGHUP)
        tunnel.wait_for(r"SIGHUP: keeping the certificates in use, the reload failed: .*served\.pem")
        still = open_one(101)
        still.close()
        tunnel.wait_for(r"clean", count=102)
        assert tunnel.stop() == 0


def test_a_timer_reloads_changed_certificates(tunnels: Callable[..., Tunnel], tmp_path: Path) -> None:
    ca = trustme.CA()
    served_cert = tmp_path / "served.pem"
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(served_cert))
    with backend(echo_lines) as server:
        tunnel = tunnels(
            "--listen", "tls://127.0.0.1:0", "--to", tcp_url(server),
            "--certfile", str(served_cert), "--reload-interval", "0.2",
        )  # fmt: skip
        tunnel.wait_for(LISTENING)
        ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(served_cert))
        tunnel.wait_for("timer: certificates reloaded")
        assert tunnel.output.count("certificates reloaded") == 1  # unchanged files are not reloaded again
        assert tunnel.stop() == 0


def test_a_handshake_stall_is_cut_by_the_timeout(tunnels: Callable[..., Tunnel], certs: Certs) -> None:
    with backend(echo_lines) as server:
        tunnel = tunnels(
            "--listen", "tls://127.0.0.1:0", "--to", tcp_url(server),
            "--certfile", certs.server, "--handshake-timeout", "0.5",
        )  # fmt: skip
        port = tunnel.port
        with greenflow.connect_tcp("127.0.0.1", port, timeout=10) as stalled:
            stalled.write(b"\x16\x03\x01\x02\x00")  # the start of a ClientHello, and nothing more
            started = time.monotonic()
            with contextlib.suppress(greenflow.BrokenError):
                assert stalled.read() == b""
            assert time.monotonic() - started < 5
        with tls_client(port, certs) as fine:  # the tunnel goes on serving others
            fine.write(b"ok")
            assert fine.read() == b"ok"
        assert tunnel.stop() == 0


def test_the_idle_timeout_ends_a_quiet_connection(tunnels: Callable[..., Tunnel]) -> None:
    with backend(echo_lines) as server:
        tunnel = tunnels("--listen", "tcp://127.0.0.1:0", "--to", tcp_url(server), "--idle-timeout", "0.3")
        with greenflow.connect_tcp("127.0.0.1", tunnel.port, timeout=10) as flow:
            flow.write(b"x")
            assert flow.read() == b"x"
            assert flow.read() == b""  # nothing more either way: the tunnel ends it
        tunnel.wait_for(r"idle: the proxy moved no data either way for 0\.3 s")
        assert tunnel.stop() == 0


def test_sigterm_lets_open_connections_finish(tunnels: Callable[..., Tunnel]) -> None:
    reached = Event()

    def handler(flow: Flow) -> None:
        reached.set()
        reply_after_eof(flow)

    with backend(handler) as server:
        tunnel = tunnels("--listen", "tcp://127.0.0.1:0", "--to", tcp_url(server))
        flow = greenflow.connect_tcp("127.0.0.1", tunnel.port, timeout=20)
        flow.write(b"the whole ")
        assert reached.wait(20)  # the connection is through to the backend before the stop begins
        tunnel.process.send_signal(signal.SIGTERM)
        tunnel.wait_for("SIGTERM: stopping")
        flow.write(b"request")
        flow.shutdown("write")
        answer = _read_all(flow)
        assert answer[21:] == REPLY
        flow.close()
        assert tunnel.process.wait(timeout=20) == 0
        assert "Traceback" not in tunnel.output


# -- the command line checks ------------------------------------------------------------


def run_tunnel(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "greenflow", "tunnel", *args],
        capture_output=True, text=True, env=ENV, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to", "tcp://10.1.2.3:80"], "not on this machine"),
        (["--to", "tcp://example.com:80"], "not on this machine"),
        (["--to", "vsock://3:80"], "another machine"),
        (["--to", "systemd:"], "a listener, not a target"),
        (["--to", "nonsense"], "--to:"),
        ([], "give a target"),
        (["--to", "tcp://127.0.0.1:1", "--route", "a=tcp://127.0.0.1:2"], "--route needs a TLS --listen URL"),
        (["--to", "tcp://127.0.0.1:1", "--cafile", "x"], "--cafile needs a TLS target"),
        (["--to", "tcp://127.0.0.1:1", "--route", "no-equals"], "expected NAME=URL"),
    ],
)
def test_usage_errors(args: list[str], message: str) -> None:
    result = run_tunnel("--listen", "tcp://127.0.0.1:0", *args)
    assert result.returncode == 2
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_more_usage_errors(certs: Certs) -> None:
    tls_listen = ["--listen", "tls://127.0.0.1:0", "--to", "tcp://127.0.0.1:1", "--certfile", certs.server]
    result = run_tunnel(*tls_listen, "--allow-dns", "x")
    assert result.returncode == 2 and "needs --client-cafile" in result.stderr
    result = run_tunnel(*tls_listen, "--client-cafile", certs.ca, "--allow-pin", "nope")
    assert result.returncode == 2 and "is not a public-key pin" in result.stderr
    result = run_tunnel(*tls_listen, "--client-cafile", certs.ca, "--allow-subject", "garbage")
    assert result.returncode == 2 and "is not a certificate subject" in result.stderr
    result = run_tunnel(
        "--listen", "tls://127.0.0.1:0", "--to", "tcp://127.0.0.1:1", "--certfile", "/nonexistent.pem"
    )
    assert result.returncode == 1 and "/nonexistent.pem" in result.stderr


def test_remote_targets_need_the_option(tunnels: Callable[..., Tunnel]) -> None:
    tunnel = tunnels("--listen", "tcp://127.0.0.1:0", "--to", "tcp://192.0.2.1:80", "--allow-remote-targets")
    tunnel.wait_for(LISTENING)
    assert tunnel.stop() == 0


# -- stunnel, an outside peer --------------------------------------------------------------


@contextlib.contextmanager
def stunnel(
    tmp_path: Path, name: str, *, client: bool, accept: int, connect: int, cert: str, ca: str
) -> Iterator[None]:
    assert STUNNEL is not None
    config = tmp_path / f"{name}.conf"
    lines = [
        "foreground = yes", f"pid = {tmp_path}/{name}.pid", "debug = 4", f"output = {tmp_path}/{name}.log",
        f"[{name}]", f"client = {'yes' if client else 'no'}",
        f"accept = 127.0.0.1:{accept}", f"connect = 127.0.0.1:{connect}",
    ]  # fmt: skip
    if client:
        lines += [f"CAfile = {ca}", "verifyChain = yes", "checkHost = localhost"]
    else:
        lines += [f"cert = {cert}"]
    config.write_text("\n".join(lines) + "\n")
    process = gevent.subprocess.Popen(
        [STUNNEL, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        with gevent.Timeout(20, AssertionError("stunnel did not start listening")):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", accept), timeout=1).close()
                    break
                except OSError:
                    gevent.sleep(0.05)
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.skipif(STUNNEL is None, reason="no stunnel binary (Debian package stunnel4)")
def test_stunnel_in_front_of_the_tunnel(tunnels: Callable[..., Tunnel], certs: Certs, tmp_path: Path) -> None:
    """plain client -> stunnel (TLS client) -> greenflow tunnel (TLS terminator) -> plain backend."""
    with backend(reply_after_eof) as server:
        tunnel = tunnels("--listen", "tls://127.0.0.1:0", "--to", tcp_url(server), "--certfile", certs.server)
        front = _free_port()
        with stunnel(tmp_path, "front", client=True, accept=front, connect=tunnel.port, cert="", ca=certs.ca):
            check_half_close(greenflow.connect_tcp("127.0.0.1", front, timeout=20))
        tunnel.wait_for(r"sent 17 bytes, received 1048597 bytes, [\d.]+ s, clean")
        assert tunnel.stop() == 0


@pytest.mark.skipif(STUNNEL is None, reason="no stunnel binary (Debian package stunnel4)")
def test_stunnel_behind_the_tunnel(tunnels: Callable[..., Tunnel], certs: Certs, tmp_path: Path) -> None:
    """plain client -> greenflow tunnel (TLS originator) -> stunnel (TLS server) -> plain backend."""
    with backend(reply_after_eof) as server:
        behind = _free_port()
        with stunnel(
            tmp_path,
            "behind",
            client=False,
            accept=behind,
            connect=server.addresses[0][1],
            cert=certs.server,
            ca="",
        ):
            tunnel = tunnels(
                "--listen", "tcp://127.0.0.1:0", "--to", f"tls://localhost:{behind}", "--cafile", certs.ca
            )
            check_half_close(greenflow.connect_tcp("127.0.0.1", tunnel.port, timeout=20))
            assert tunnel.stop() == 0


def _vsock_loopback_port() -> int:
    if not hasattr(socket, "AF_VSOCK"):
        pytest.skip("no AF_VSOCK on this system")
    try:
        with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as probe:
            probe.bind((1, socket.VMADDR_PORT_ANY))
            return int(probe.getsockname()[1])
    except OSError as exc:
        pytest.skip(f"the kernel has no vsock loopback: {exc}")


def test_a_vsock_listener(tunnels: Callable[..., Tunnel]) -> None:
    port = _vsock_loopback_port()
    with backend(reply_after_eof) as server:
        tunnel = tunnels("--listen", f"vsock://1:{port}", "--to", tcp_url(server))
        tunnel.wait_for(LISTENING)
        check_half_close(greenflow.connect_vsock(1, port, timeout=20))
        assert tunnel.stop() == 0


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_send_proxy_tells_the_target_who_the_client_is(tunnels: Callable[..., Tunnel], version: str) -> None:
    """The tunnel in front of a greenflow server that takes the PROXY protocol (issue 15's layer)."""
    from greenflow.proxy_protocol import ProxyProtocolListener

    def who(flow: Flow) -> None:
        flow.write(repr(flow.peer_address).encode())

    layered = ProxyProtocolListener(greenflow.listen_tcp("127.0.0.1", 0), header_timeout=5)
    with backend(who, layered) as server:
        tunnel = tunnels("--listen", "tcp://127.0.0.1:0", "--to", tcp_url(server), "--send-proxy", version)
        with greenflow.connect_tcp("127.0.0.1", tunnel.port, timeout=10) as flow:
            me = flow.local_address
            seen = b""
            while chunk := flow.read():
                seen += chunk
        assert seen.decode() == repr(me), "the target saw the tunnel, not the client"
        assert tunnel.stop() == 0
