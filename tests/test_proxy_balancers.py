"""Real load balancers in front of ``greenflow serve --proxy-protocol``: HAProxy and nginx.

Each test starts the balancer with a configuration written to a temporary
folder (its pid and log files there too), on loopback ports only, relaying
to a ``greenflow serve`` child whose handler answers each line with the
peer address it sees. The client's own address and port must come back:
the header carried them. The tests skip, saying why, when the balancer is
not installed (``.ci/run`` installs both: Debian's ``haproxy`` and ``nginx``).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import gevent
import gevent.subprocess
import pytest
from test_cli import CERTIFICATE, LISTENING, Served, children, host_port

import greenflow

SCRIPTS = Path(__file__).parent / "scripts"
_FIXTURES = (children,)  # used by name
NGINX_STREAM = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def needs(program: str) -> str:
    path = shutil.which(program) or (
        f"/usr/sbin/{program}" if Path(f"/usr/sbin/{program}").exists() else None
    )
    if path is None:
        pytest.skip(f"{program} is not installed (Debian package {program!r}; .ci/run installs it)")
    return path


def serve_proxied(made: list[Served], *extra: str) -> tuple[Served, str]:
    served = Served(
        "proxied_handler:whom", "--bind", "tcp://127.0.0.1:0", "--proxy-protocol", *extra, cwd=SCRIPTS
    )
    made.append(served)
    (url,) = served.wait_for(LISTENING)
    if extra:
        served.wait_for(re.compile(rb"worker (\d+) ready"), int(extra[-1]))
    return served, url


class Balancer:
    """A load balancer child process; killed in teardown."""

    def __init__(self, command: list[str], *, pass_fds: tuple[int, ...] = ()) -> None:
        self.process = gevent.subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
        )

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
        out, _ = self.process.communicate(timeout=15)
        return out.decode(errors="replace")


@pytest.fixture
def balancers() -> Iterator[list[Balancer]]:
    made: list[Balancer] = []
    yield made
    for balancer in made:
        balancer.stop()


def ask(port: int, line: bytes = b"hello\n") -> tuple[dict[str, object], object]:
    """Send one line through the balancer; the handler's answer and this client's address."""
    with greenflow.connect_tcp("127.0.0.1", port, timeout=10) as flow:
        flow.write(line)
        answer = greenflow.BufferedFlow(flow).readline()
        assert answer, "the balancer closed the connection"
        return json.loads(answer), flow.local_address


def loopback_listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


# -- HAProxy -------------------------------------------------------------------------------


def start_haproxy(tmp_path: Path, server_line: str, made: list[Balancer]) -> int:
    """HAProxy on a socket bound here (``bind fd@N``: no port race, no wait); returns its port."""
    program = needs("haproxy")
    front = loopback_listener()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        f"""
global
    pidfile {tmp_path}/haproxy.pid
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend front
    bind fd@{front.fileno()}
    default_backend back
backend back
    {server_line}
"""
    )
    made.append(Balancer([program, "-db", "-f", str(config)], pass_fds=(front.fileno(),)))
    port = int(front.getsockname()[1])
    front.close()  # HAProxy has its own copy
    return port


@pytest.mark.parametrize(
    ("option", "version", "extra"),
    [("send-proxy", 1, ()), ("send-proxy-v2", 2, ()), ("send-proxy-v2", 2, ("--workers", "2"))],
    ids=["send-proxy", "send-proxy-v2", "send-proxy-v2-workers"],
)
def test_haproxy(  # noqa: PLR0917 - the parameters and the fixtures
    option: str,
    version: int,
    extra: tuple[str, ...],
    tmp_path: Path,
    children: list[Served],
    balancers: list[Balancer],
) -> None:
    _, url = serve_proxied(children, *extra)
    host, port = host_port(url.replace("tcp+proxy://", "tcp://"))
    front = start_haproxy(tmp_path, f"server app {host}:{port} {option}", balancers)
    for _ in range(2):
        answer, client = ask(front)
        assert tuple(answer["peer"]) == client  # type: ignore[arg-type]
        assert answer["version"] == version
        assert tuple(answer["proxy"]) != client  # type: ignore[arg-type]  # HAProxy's own connection


def test_haproxy_tls_passthrough(tmp_path: Path, children: list[Served], balancers: list[Balancer]) -> None:
    from greenflow import tls

    served = Served("proxied_handler:whom", "--bind", "tls://127.0.0.1:0", "--proxy-protocol", cwd=SCRIPTS)
    children.append(served)
    (certificate,) = served.wait_for(CERTIFICATE)
    (url,) = served.wait_for(LISTENING)
    assert url.startswith("tcp+proxy+tls://")
    host, port = host_port(url.replace("tcp+proxy+tls://", "tls://"))
    front = start_haproxy(tmp_path, f"server app {host}:{port} send-proxy-v2", balancers)
    context = tls.client_context(cafile=certificate)
    with tls.connect_tls("127.0.0.1", front, context, server_hostname="localhost", timeout=10) as flow:
        flow.write(b"secret\n")
        answer = json.loads(greenflow.BufferedFlow(flow).readline())
        client = flow.local_address
    assert tuple(answer["peer"]) == client and answer["version"] == 2


# -- nginx ---------------------------------------------------------------------------------


def start_nginx(tmp_path: Path, upstream: str, made: list[Balancer]) -> int:
    program = needs("nginx")
    if not NGINX_STREAM.exists():
        pytest.skip(f"nginx's stream module is not installed ({NGINX_STREAM}: Debian libnginx-mod-stream)")
    probe = loopback_listener()
    port = int(probe.getsockname()[1])
    probe.close()  # nginx binds it by itself (a race with other programs, on loopback only)
    config = tmp_path / "nginx.conf"
    config.write_text(
        f"""
load_module {NGINX_STREAM};
daemon off;
master_process off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log info;
events {{ worker_connections 64; }}
stream {{
    server {{
        listen 127.0.0.1:{port};
        proxy_pass {upstream};
        proxy_protocol on;
    }}
}}
"""
    )
    balancer = Balancer([program, "-e", f"{tmp_path}/error.log", "-p", str(tmp_path), "-c", str(config)])
    made.append(balancer)
    # nginx writes its pid file once its listening sockets are open.
    with gevent.Timeout(10, AssertionError(f"nginx did not start: {tmp_path}/error.log")):
        while not (tmp_path / "nginx.pid").exists():
            assert balancer.process.poll() is None, balancer.stop()
            gevent.sleep(0.02)
    return port


def test_nginx_stream_proxy_protocol(
    tmp_path: Path, children: list[Served], balancers: list[Balancer]
) -> None:
    _, url = serve_proxied(children)
    host, port = host_port(url.replace("tcp+proxy://", "tcp://"))
    front = start_nginx(tmp_path, f"{host}:{port}", balancers)
    for _ in range(2):
        answer, client = ask(front)
        assert tuple(answer["peer"]) == client  # type: ignore[arg-type]
        assert answer["version"] == 1  # nginx sends v1


# -- the command line's own checks -----------------------------------------------------------


def test_serve_trusts_the_networks_it_is_told(children: list[Served]) -> None:
    served = Served(
        "proxied_handler:whom",
        "--proxy-protocol",
        "--proxy-protocol-trust",
        "10.0.0.0/8",
        "--proxy-protocol-trust",
        "127.0.0.1/32",
        "--proxy-header-timeout",
        "5",
        "--bind",
        "tcp://127.0.0.1:0",
        cwd=SCRIPTS,
    )
    children.append(served)
    (url,) = served.wait_for(LISTENING)
    answer, client = ask(host_port(url.replace("tcp+proxy://", "tcp://"))[1])
    assert tuple(answer["peer"]) == client and answer["proxy"] is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--proxy-protocol-trust", "10.0.0.0/8"],
            "--proxy-protocol-trust applies with --proxy-protocol only",
        ),
        (["--proxy-header-timeout", "3"], "--proxy-header-timeout applies with --proxy-protocol only"),
        (
            ["--proxy-protocol", "--proxy-protocol-trust", "ten"],
            "--proxy-protocol-trust: 'ten' is not a network",
        ),
    ],
)
def test_serve_refuses_proxy_options_that_make_no_sense(args: list[str], message: str) -> None:
    served = Served(*args, "--bind", "tcp://127.0.0.1:0")
    status = served.terminate(signum=0)
    assert status == 2
    assert message in served.output.decode()
