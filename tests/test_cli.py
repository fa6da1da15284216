"""The command line, run as a user would: ``python -m greenflow serve`` and ``connect``."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import gevent.subprocess
import pytest

import greenflow
from greenflow.cli import DEFAULT_BIND, build_parser, load_handler
from greenflow.handlers import echo

REPO = Path(__file__).parent.parent
ENV = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
LISTENING = re.compile(rb"greenflow: listening on (\S+)")
CERTIFICATE = re.compile(rb"self-signed certificate for local use: (\S+)")

#: Plays systemd: moves the socket to descriptor 3, names its own pid (which
#: exec keeps) in LISTEN_PID, and runs the command.
SYSTEMD_LAUNCHER = """
import os, sys
fd = int(sys.argv[1])
os.dup2(fd, 3)
os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="web")
os.execv(sys.argv[2], sys.argv[2:])
"""

HAVE_TLS = importlib.util.find_spec("greenflow.tls") is not None


class Served:
    """A ``greenflow serve`` child process; always killed in teardown."""

    def __init__(self, *args: str, cwd: Path | None = None, activate_fd: int | None = None) -> None:
        command = [sys.executable, "-m", "greenflow", "serve", *args]
        if activate_fd is not None:
            command = [sys.executable, "-c", SYSTEMD_LAUNCHER, str(activate_fd), *command]
        self.process = gevent.subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ENV,
            cwd=cwd,
            pass_fds=() if activate_fd is None else (activate_fd,),
        )
        self.output = b""

    def wait_for(self, pattern: re.Pattern[bytes], count: int = 1) -> list[str]:
        """Read stderr until ``count`` lines match; return their first groups."""
        found: list[str] = []
        assert self.process.stderr is not None
        with gevent.Timeout(
            20, AssertionError(f"no {pattern.pattern!r} line; stderr so far: {self.output!r}")
        ):
            while len(found) < count:
                line = self.process.stderr.readline()
                if not line:
                    raise AssertionError(f"serve exited early: {self.output!r}")
                self.output += line
                match = pattern.search(line)
                if match:
                    found.append(match.group(1).decode())
        return found

    def terminate(self, signum: int = signal.SIGTERM, timeout: float = 15) -> int:
        self.process.send_signal(signum)
        _, rest = self.process.communicate(timeout=timeout)
        self.output += rest
        return int(self.process.returncode)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=15)


@pytest.fixture
def children() -> Iterator[list[Served]]:
    made: list[Served] = []
    yield made
    for child in made:
        child.kill()


def host_port(url: str) -> tuple[str, int]:
    match = re.fullmatch(r"(?:tcp|tls)://\[?([^\]]+)\]?:(\d+)", url)
    assert match, url
    return match.group(1), int(match.group(2))


def run_connect(url: str, stdin: bytes, *extra: str) -> subprocess.CompletedProcess[bytes]:
    process = gevent.subprocess.Popen(
        [sys.executable, "-m", "greenflow", "connect", url, *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    try:
        out, err = process.communicate(stdin, timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=15)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def talk(host: str, port: int, payload: bytes) -> bytes:
    with greenflow.connect_tcp(host, port, timeout=10) as flow:
        flow.write(payload)
        flow.shutdown("write")
        data = b""
        while chunk := flow.read():
            data += chunk
        return data


def test_parser_defaults() -> None:
    args = build_parser().parse_args(["serve"])
    assert args.handler == "echo"
    assert args.bind is None  # main() uses DEFAULT_BIND
    assert DEFAULT_BIND.startswith("tcp://127.0.0.1:")
    assert load_handler("echo") is echo


def test_serve_echo_connect_and_sigterm(children: list[Served]) -> None:
    served = Served("echo", "--bind", "tcp://127.0.0.1:0")
    children.append(served)
    (url,) = served.wait_for(LISTENING)
    host, port = host_port(url)
    assert port != 0
    # A plain socket client.
    assert talk(host, port, b"plain\n") == b"plain\n"
    # greenflow connect, like netcat: stdin to the server, the server to stdout.
    result = run_connect(url, b"hello\nworld\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello\nworld\n"
    assert served.terminate() == 0
    assert b"SIGTERM: stopping" in served.output
    assert served.output.rstrip().endswith(b"greenflow: stopped")


def test_sigterm_ends_idle_clients_promptly(children: list[Served]) -> None:
    served = Served("--bind", "tcp://127.0.0.1:0", "--grace", "30")
    children.append(served)
    (url,) = served.wait_for(LISTENING)
    host, port = host_port(url)
    with greenflow.connect_tcp(host, port, timeout=10) as client:
        client.write(b"x")
        assert client.read() == b"x"  # the handler is running and now idle
        started = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        assert client.read() == b""
        assert served.process.wait(timeout=10) == 0
        assert time.monotonic() - started < 5  # far less than the 30 s grace


def test_serve_a_handler_from_a_module_on_unix(children: list[Served], tmp_path: Path) -> None:
    (tmp_path / "shouting.py").write_text(
        textwrap.dedent(
            """
            def handler(flow):
                # Read until the client's EOF, then answer: connect must
                # half-close and still print the answer.
                data = b""
                while chunk := flow.read():
                    data += chunk
                flow.write(data.upper() + b"!")
            """
        )
    )
    path = tmp_path / "s.sock"
    served = Served("shouting:handler", "--bind", f"unix:{path}", "--unix-mode", "600", cwd=tmp_path)
    children.append(served)
    assert served.wait_for(LISTENING) == [f"unix:{path}"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    result = run_connect(f"unix:{path}", b"quiet words")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"QUIET WORDS!"
    assert served.terminate() == 0
    assert not path.exists()


def test_bad_handler_and_bad_bind(children: list[Served]) -> None:
    missing = Served("no_such_module_anywhere:handler", "--bind", "tcp://127.0.0.1:0")
    children.append(missing)
    _, err = missing.process.communicate(timeout=20)
    assert missing.process.returncode == 2
    assert b"cannot load the handler" in err
    bad = Served("--bind", "ftp://127.0.0.1:0")
    children.append(bad)
    _, err = bad.process.communicate(timeout=20)
    assert bad.process.returncode == 1
    assert b"unknown scheme" in err


def test_connect_reports_a_refused_connection() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: refused
        result = run_connect(f"tcp://127.0.0.1:{port}", b"")
    assert result.returncode == 1
    # One line, naming the address once (not "127.0.0.1:N: 127.0.0.1:N: ...").
    assert result.stderr == f"greenflow: could not connect to 127.0.0.1:{port}: Connection refused\n".encode()


def test_systemd_socket_activation(children: list[Served]) -> None:
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    port = listening.getsockname()[1]
    try:
        served = Served("--bind", "systemd:", activate_fd=listening.fileno())
    finally:
        listening.close()
    children.append(served)
    assert served.wait_for(LISTENING) == [f"tcp://127.0.0.1:{port}"]
    assert talk("127.0.0.1", port, b"activated") == b"activated"
    assert served.terminate() == 0


@pytest.mark.skipif(not HAVE_TLS, reason="greenflow.tls is not importable yet")
def test_tls_with_a_self_signed_certificate(children: list[Served]) -> None:
    served = Served("--bind", "tls://127.0.0.1:0", "--bind", "tcp://127.0.0.1:0")
    children.append(served)
    (certificate,) = served.wait_for(CERTIFICATE)
    tls_url, tcp_url = served.wait_for(LISTENING, 2)
    assert tls_url.startswith("tls://127.0.0.1:")
    result = run_connect(tls_url, b"secret\n", "--cafile", certificate)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"secret\n"
    # Verification is on by default: without the certificate it fails.
    refused = run_connect(tls_url, b"secret\n")
    assert refused.returncode == 1
    # The plain listener next to it is unaffected.
    assert talk(*host_port(tcp_url), b"plain") == b"plain"
    assert served.terminate() == 0
    assert not Path(certificate).exists()  # the temporary certificate is removed


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--max-connections", "0"),
        ("--max-connections", "many"),
        ("--timeout", "-1"),
        ("--grace", "-5"),
        ("--handshake-timeout", "nan"),
        ("--backlog", "0"),
    ],
)
def test_bad_numbers_are_usage_errors_and_bind_nothing(option: str, value: str, tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    result = subprocess.run(
        [sys.executable, "-m", "greenflow", "serve", option, value, "--bind", f"unix:{path}"],
        capture_output=True,
        timeout=30,
        env=ENV,
    )
    assert result.returncode == 2, result.stderr
    assert f"argument {option}".encode() in result.stderr
    assert b"Traceback" not in result.stderr
    assert not path.exists()


@contextlib.contextmanager
def connect_sharing_stdin(url: str, *extra: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``greenflow connect URL`` whose stdin is a pipe the test holds too.

    The same open file, as a shell and the programs it runs share a
    terminal: what the child does to its flags, the test sees. Yields the
    child and the pipe's read end; the child is killed at the end.
    """
    read_end, write_end = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "greenflow", "connect", url, *extra],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=ENV,
        )
        try:
            yield child, read_end
        finally:
            child.kill()
            child.wait()
            child.stderr.close()  # type: ignore[union-attr]
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_connect_puts_a_shared_stdin_back_when_signalled(signum: signal.Signals) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with connect_sharing_stdin(f"tcp://127.0.0.1:{port}") as (child, read_end):
            deadline = time.monotonic() + 20
            while os.get_blocking(read_end):  # the child switches it when it starts copying
                assert time.monotonic() < deadline, "greenflow connect never started"
                time.sleep(0.01)
            child.send_signal(signum)
            assert child.wait(timeout=20) == 128 + signum
            assert os.get_blocking(read_end), f"{signum.name} left O_NONBLOCK on the shared stdin"
            assert b"Traceback" not in child.stderr.read()  # type: ignore[union-attr]


# -- signals reach connect at any moment ----------------------------------------------------


@pytest.mark.skipif(not HAVE_TLS, reason="greenflow.tls is not importable yet")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_connect_signalled_while_it_connects(signum: signal.Signals) -> None:
    # The server takes the connection and never answers the ClientHello, so
    # the child is deterministically in its TLS handshake, before it has
    # touched stdin, when the signal comes: the earliest moment a test can
    # see. Its handlers must be installed already.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with connect_sharing_stdin(f"tls://127.0.0.1:{port}", "--timeout", "30") as (child, read_end):
            listener.settimeout(20)
            accepted, _ = listener.accept()
            with accepted:
                accepted.settimeout(20)
                assert accepted.recv(1) == b"\x16"  # a TLS handshake record: the ClientHello
                child.send_signal(signum)
                assert child.wait(timeout=20) == 128 + signum
            assert os.get_blocking(read_end)
            assert b"Traceback" not in child.stderr.read()  # type: ignore[union-attr]


# -- the smaller paths users take ------------------------------------------------------------


def run_greenflow(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "greenflow", *args],
        capture_output=True,
        timeout=30,
        env=ENV,
        stdin=subprocess.DEVNULL,
    )


def one_line(result: subprocess.CompletedProcess[bytes]) -> str:
    """The one ``greenflow: ...`` line a failed command prints (and nothing else)."""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("greenflow: "), result.stderr
    return lines[0]


def test_version() -> None:
    result = run_greenflow("--version")
    assert result.returncode == 0
    assert result.stdout.decode().strip() == f"greenflow {greenflow.__version__}"


def test_listening_and_stopped_are_said_once(children: list[Served]) -> None:
    served = Served("--bind", "tcp://127.0.0.1:0")
    children.append(served)
    (url,) = served.wait_for(LISTENING)
    assert served.terminate() == 0
    assert served.output.count(b"listening on") == 1
    assert served.output.count(b"stopped") == 1
    assert talk is not None and url.startswith("tcp://127.0.0.1:")


def test_connect_takes_a_bare_host_port(children: list[Served]) -> None:
    served = Served("--bind", "127.0.0.1:0")
    children.append(served)
    (url,) = served.wait_for(LISTENING)
    host, port = host_port(url)
    result = run_connect(f"{host}:{port}", b"bare\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"bare\n"


def test_connect_to_what_names_no_peer() -> None:
    for url, problem in [
        ("fd://3", "names no peer"),
        ("systemd:", "names no peer"),
        ("nonsense", "try tcp://"),
    ]:
        result = run_connect(url, b"")
        assert result.returncode == 1
        assert problem in one_line(result)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["serve", "--certfile", "c.pem", "--bind", "tcp://127.0.0.1:0"], "--certfile"),
        (["serve", "--keyfile", "k.pem", "--bind", "unix:{tmp}/s.sock"], "--keyfile"),
        (["serve", "--client-cafile", "ca.pem"], "--client-cafile"),
        (["serve", "--keyfile", "k.pem", "--bind", "tls://127.0.0.1:0"], "--keyfile needs --certfile"),
        (["connect", "tcp://127.0.0.1:1", "--cafile", "ca.pem"], "--cafile"),
        (["connect", "unix:/nowhere", "--insecure"], "--insecure"),
        (["connect", "127.0.0.1:1", "--alpn", "h2"], "--alpn"),
        (["connect", "tls://127.0.0.1:1", "--keyfile", "k.pem"], "--keyfile needs --certfile"),
    ],
)
def test_tls_options_with_nothing_to_apply_to_are_usage_errors(
    args: list[str], option: str, tmp_path: Path
) -> None:
    result = run_greenflow(*(arg.format(tmp=tmp_path) for arg in args))
    assert result.returncode == 2
    assert option in one_line(result)
    assert not (tmp_path / "s.sock").exists()


def test_bind_errors_name_the_bind(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_greenflow(
            "serve", "--bind", f"unix:{tmp_path}/ok.sock", "--bind", f"tcp://127.0.0.1:{port}"
        )
    assert result.returncode == 1
    assert one_line(result) == f"greenflow: cannot listen on tcp://127.0.0.1:{port}: Address already in use"
    assert not (tmp_path / "ok.sock").exists()  # the bind that worked is undone
    missing = run_greenflow("serve", "--bind", f"unix:{tmp_path}/no/such/folder/s.sock")
    assert missing.returncode == 1
    line = one_line(missing)
    assert f"cannot listen on unix:{tmp_path}/no/such/folder/s.sock: No such file or directory" in line
    closed = run_greenflow("serve", "--bind", "fd://97")
    assert closed.returncode == 1
    assert one_line(closed) == "greenflow: cannot listen on fd://97: descriptor 97 is not open"
    vsock = run_greenflow("serve", "--bind", "vsock://1:1234")
    assert vsock.returncode == 1
    assert "cannot listen on vsock://1:1234: " in one_line(vsock)


@pytest.mark.skipif(not HAVE_TLS, reason="greenflow.tls is not importable yet")
def test_bad_tls_files_are_one_line(tmp_path: Path) -> None:
    from tls_helpers import shared_certs

    certs = shared_certs()
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    certificate_only = tmp_path / "certificate-only.pem"
    certificate_only.write_text(Path(certs.ca).read_text())
    bind = ["--bind", "tls://127.0.0.1:0", "--bind", f"unix+tls:{tmp_path}/s.sock"]
    cases = [
        (["serve", "--certfile", "/missing.pem", *bind], "/missing.pem"),
        (["serve", "--certfile", str(not_pem), *bind], str(not_pem)),
        (["serve", "--certfile", str(certificate_only), *bind], str(certificate_only)),
        (["serve", "--certfile", certs.server, "--keyfile", certs.client, *bind], certs.client),
        (
            ["serve", "--certfile", certs.server, "--client-cafile", "/missing-ca.pem", *bind],
            "/missing-ca.pem",
        ),
        (["connect", "tls://127.0.0.1:1", "--cafile", "/missing.pem"], "/missing.pem"),
        (["connect", "tls://127.0.0.1:1", "--cafile", str(not_pem)], str(not_pem)),
        (
            ["connect", "tls://127.0.0.1:1", "--cafile", certs.ca, "--certfile", str(certificate_only)],
            "certificate-only",
        ),
    ]
    for args, named in cases:
        result = run_greenflow(*args)
        assert result.returncode == 1, (args, result.stderr)
        line = one_line(result)
        assert named in line, (args, line)
        assert "Traceback" not in line
    assert not (tmp_path / "s.sock").exists()


@pytest.mark.skipif(not HAVE_TLS, reason="greenflow.tls is not importable yet")
def test_a_self_signed_server_suggests_cafile(children: list[Served]) -> None:
    served = Served("--bind", "tls://127.0.0.1:0")
    children.append(served)
    (url,) = served.wait_for(LISTENING)
    refused = run_connect(url, b"")
    assert refused.returncode == 1
    line = one_line(refused)
    assert line.startswith(f"greenflow: cannot connect to {url}: ")
    assert "--cafile" in line


@pytest.mark.skipif(not HAVE_TLS, reason="greenflow.tls is not importable yet")
def test_client_certificates(children: list[Served]) -> None:
    from tls_helpers import shared_certs

    certs = shared_certs()
    served = Served("--bind", "tls://127.0.0.1:0", "--certfile", certs.server, "--client-cafile", certs.ca)
    children.append(served)
    (url,) = served.wait_for(LISTENING)
    presented = run_connect(url, b"mine\n", "--cafile", certs.ca, "--certfile", certs.client)
    assert presented.returncode == 0, presented.stderr
    assert presented.stdout == b"mine\n"
    # Without a certificate, or with one the server's CA did not sign, no data flows.
    for extra in ([], ["--certfile", certs.untrusted]):
        refused = run_connect(url, b"mine\n", "--cafile", certs.ca, *extra)
        assert refused.stdout == b""
        assert refused.returncode == 1, refused.stderr
        assert b"Traceback" not in refused.stderr
    assert served.terminate() == 0


@pytest.mark.skipif(not HAVE_TLS, reason="greenflow.tls is not importable yet")
def test_connect_server_name_and_alpn() -> None:
    from greenflow import tls

    from tls_helpers import shared_certs

    certs = shared_certs()
    asked: list[str | None] = []

    def remember(name: str | None) -> None:
        asked.append(name)

    context = tls.server_context(certs.server, alpn_protocols=["x-greenflow"], sni_callback=remember)
    server = greenflow.Server(greenflow.handlers.echo, greenflow.listen_tls("127.0.0.1", 0, context))
    with server:
        url = server.urls[0]
        spoken = run_connect(
            url, b"hi", "--cafile", certs.ca, "--server-name", "localhost", "--alpn", "h2,x-greenflow"
        )
        assert spoken.returncode == 0, spoken.stderr
        assert spoken.stdout == b"hi"
        assert asked == ["localhost"]
        # An offer the server does not speak is refused: the option is passed on.
        other = run_connect(url, b"hi", "--cafile", certs.ca, "--server-name", "localhost", "--alpn", "h2")
        assert other.returncode == 1
        assert "cannot connect to" in one_line(other)


def test_serve_has_safe_defaults_and_says_them() -> None:
    from greenflow.server import default_max_connections

    args = build_parser().parse_args(["serve"])
    assert args.first_data_timeout == 30.0 and args.deadline is None and args.max_connections is None
    help_text = " ".join(run_greenflow("serve", "--help").stdout.decode().split())
    assert f"here {default_max_connections()}" in help_text
    assert "(default 30; 0 turns it off" in help_text
    from greenflow import tls

    assert f"DEFAULT_HANDSHAKE_TIMEOUT, {tls.DEFAULT_HANDSHAKE_TIMEOUT:g})" in help_text


def test_serve_closes_a_silent_client_and_a_trickling_one(children: list[Served]) -> None:
    served = Served("--bind", "tcp://127.0.0.1:0", "--first-data-timeout", "0.3", "--deadline", "1.5")
    children.append(served)
    (url,) = served.wait_for(LISTENING)
    host, port = host_port(url)
    with greenflow.connect_tcp(host, port, timeout=10) as silent:
        started = time.monotonic()
        assert silent.read() == b""  # closed by the server: it sent nothing
        assert time.monotonic() - started < 5
    with greenflow.connect_tcp(host, port, timeout=10) as trickling:
        started = time.monotonic()
        with contextlib.suppress(greenflow.BrokenError):  # a reset is an end too
            while time.monotonic() - started < 10:  # a byte every 0.1 s keeps per-call timeouts happy
                trickling.write(b".")
                if trickling.read() == b"":
                    break
                gevent.sleep(0.1)  # the trickle under test, not a wait
        assert 1.0 < time.monotonic() - started < 8, "the deadline did not end the trickling client"
    assert served.terminate() == 0
    assert b"sent nothing in 0.3 s; closed" in served.output


def test_the_command_line_loads_no_tls_for_plain_use() -> None:
    code = (
        "import sys; from greenflow.cli import build_parser; build_parser(); print('OpenSSL' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=ENV)
    assert result.stdout.strip() == "False", result.stderr
