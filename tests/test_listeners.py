"""Listeners: TCP options, Unix socket files, adopted sockets, systemd, URLs."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import gevent
import pytest

import greenflow
from greenflow.listeners import (
    DEFAULT_BACKLOG,
    Listener,
    ListenerLayer,
    listen_fd,
    listen_socket,
    listen_systemd,
    listen_tcp,
    listen_unix,
    listen_url,
)

from pairs import has_ipv6


def test_tcp_options(closing: list[Listener]) -> None:
    listener = listen_tcp("127.0.0.1", 0)
    closing.append(listener)
    sock = listener.socket
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    assert not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    assert sock.gettimeout() == 0.0
    assert listener.address[1] != 0  # type: ignore[index]
    assert listener.tls_context is None
    assert DEFAULT_BACKLOG >= 1024


def test_reuse_port_lets_two_listeners_share_a_port(closing: list[Listener]) -> None:
    first = listen_tcp("127.0.0.1", 0, reuse_port=True)
    closing.append(first)
    port = first.address[1]  # type: ignore[index]
    second = listen_tcp("127.0.0.1", port, reuse_port=True)
    closing.append(second)
    assert second.address == first.address
    with pytest.raises(OSError):
        listen_tcp("127.0.0.1", port)


@pytest.mark.skipif(not has_ipv6(), reason="this machine has no IPv6 loopback (::1)")
def test_ipv6_is_v6_only(closing: list[Listener]) -> None:
    listener = listen_tcp("::1", 0)
    closing.append(listener)
    assert listener.socket.family == socket.AF_INET6
    assert listener.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    assert listener.url.startswith("tcp://[::1]:")


def test_unix_mode_and_cleanup(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    listener = listen_unix(str(path), mode=0o600)
    try:
        info = path.lstat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert listener.address == str(path)
        assert listener.url == f"unix:{path}"
        assert sorted(os.listdir(tmp_path)) == ["app.sock"]  # no temporary left
        flow = greenflow.connect_unix(str(path), timeout=5)
        flow.close()
    finally:
        listener.close()
    assert not path.exists()


def test_stale_unix_socket_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: stale
    assert os.path.exists(path)
    listener = listen_unix(path)
    try:
        flow = greenflow.connect_unix(path, timeout=5)
        flow.close()
    finally:
        listener.close()
    assert not os.path.exists(path)


def test_live_unix_socket_is_not_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "live.sock")
    live = listen_unix(path)
    try:
        with pytest.raises(OSError, match="another process is listening"):
            listen_unix(path)
        flow = greenflow.connect_unix(path, timeout=5)  # still the first one's
        flow.close()
    finally:
        live.close()


def test_a_file_that_is_not_a_socket_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("precious")
    with pytest.raises(FileExistsError):
        listen_unix(str(path))
    assert path.read_text() == "precious"


def test_close_leaves_a_newer_socket_alone(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    old = listen_unix(path)
    os.unlink(path)  # someone removed ours and a newer server took the path
    newer = listen_unix(path)
    try:
        old.close()
        assert os.path.exists(path)
    finally:
        newer.close()
    assert not os.path.exists(path)


def test_abstract_unix_socket(closing: list[Listener]) -> None:
    name = f"\0greenflow-test-{os.getpid()}"
    (listener,) = listen_url(f"unix:@{name[1:]}")
    closing.append(listener)
    assert listener.address == name
    assert listener.url == f"unix:@{name[1:]}"
    flow = greenflow.connect_unix(name, timeout=5)
    flow.close()


def test_adopting_sockets(closing: list[Listener]) -> None:
    raw = socket.socket()
    raw.bind(("127.0.0.1", 0))
    raw.listen()
    adopted = listen_socket(raw, name="mine")
    closing.append(adopted)
    assert adopted.name == "mine"
    assert adopted.address == raw.getsockname()

    raw2 = socket.socket()
    raw2.bind(("127.0.0.1", 0))
    raw2.listen()
    by_fd = listen_fd(raw2.detach())
    closing.append(by_fd)
    assert not os.get_inheritable(by_fd.fileno())

    not_listening = socket.socket()
    try:
        with pytest.raises(ValueError, match="not listening"):
            listen_socket(not_listening)
        with pytest.raises(ValueError, match="not listening"):
            listen_fd(not_listening.fileno())
        assert not_listening.fileno() >= 0  # refused: the caller keeps it
    finally:
        not_listening.close()


def test_systemd_ignores_sockets_meant_for_another_process() -> None:
    saved = {name: os.environ.get(name) for name in ("LISTEN_PID", "LISTEN_FDS")}
    try:
        os.environ["LISTEN_PID"] = str(os.getpid() + 1)
        os.environ["LISTEN_FDS"] = "1"
        assert listen_systemd() == []
        assert "LISTEN_FDS" not in os.environ  # unset, as sd_listen_fds does
        os.environ["LISTEN_FDS"] = "1"
        assert listen_systemd() == []  # no LISTEN_PID at all
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("foo://127.0.0.1:1", "unknown scheme"),
        ("tcp://127.0.0.1", "host and a port"),
        ("tcp://127.0.0.1:99999", "bad port"),
        ("tcp:127.0.0.1:80", "should look like"),
        ("tls://127.0.0.1:0", "no TLS context"),
        ("unix:", "not a listener URL"),
        ("fd://three", "descriptor number"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        listen_url(url)


@pytest.mark.parametrize(
    "url", ["tcp://127.0.0.1:0", "127.0.0.1:0", "unix:{tmp}/u.sock", "unix:///{tmp}/v.sock"]
)
def test_good_urls(url: str, tmp_path: Path, closing: list[Listener]) -> None:
    listeners = listen_url(url.format(tmp=tmp_path))
    closing.extend(listeners)
    assert len(listeners) == 1
    assert listeners[0].socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)


@pytest.mark.parametrize(
    "url",
    [
        "tcp://127.0.0.1:0/junk",
        "tcp://127.0.0.1:0?x=1",
        "tcp://u:p@127.0.0.1:0",
        "tcp://127.0.0.1:0#f",
        "tcp://[::1:0",
    ],
)
def test_url_with_more_than_host_and_port_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(url))):
        listen_url(url)


def test_systemd_failure_closes_what_it_adopted() -> None:
    # In a child, where fds 3 and 4 are ours to set: fd 3 a listening socket,
    # fd 4 not a socket. The listener adopted from fd 3 must not leak.
    script = """
import os, socket, warnings
warnings.simplefilter("error", ResourceWarning)
listening = socket.create_server(("127.0.0.1", 0)).detach()
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(listening, 10)
os.dup2(null, 11)
os.close(listening)
os.close(null)
os.dup2(10, 3)
os.dup2(11, 4)
os.close(10)
os.close(11)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="2")
from greenflow.listeners import listen_systemd
try:
    listen_systemd()
except ValueError as exc:
    print("refused:", exc)
try:
    os.fstat(3)
    print("fd 3 still open")
except OSError:
    print("fd 3 closed")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "refused:" in result.stdout and "not a socket" in result.stdout
    assert "fd 3 closed" in result.stdout, result.stdout


# -- blocking scripts: accept and iteration --------------------------------------


def _read_to_eof(flow: greenflow.Flow) -> bytes:
    data = b""
    while chunk := flow.read():
        data += chunk
    return data


def _client(port: int, payload: bytes) -> bytes:
    with greenflow.connect_tcp("127.0.0.1", port, timeout=10) as flow:
        flow.write(payload)
        flow.shutdown("write")
        return _read_to_eof(flow)


def test_accept_serves_clients_in_greenlets_without_blocking_the_hub(closing: list[Listener]) -> None:
    listener = listen_tcp("127.0.0.1", 0)
    closing.append(listener)
    port = listener.address[1]  # type: ignore[index]
    # The clients only run while accept() waits on the hub.
    clients = [gevent.spawn(_client, port, b"client %d" % number) for number in range(2)]
    for _ in range(2):
        with listener.accept(timeout=10, flow_timeout=7) as flow:
            assert isinstance(flow, greenflow.SocketFlow)
            assert flow.timeout == 7
            assert flow.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            flow.write(_read_to_eof(flow).upper())
    assert sorted(client.get(timeout=10) for client in clients) == [b"CLIENT 0", b"CLIENT 1"]


def test_iterating_over_a_listener_yields_flows_until_it_is_closed(tmp_path: Path) -> None:
    path = str(tmp_path / "iter.sock")
    listener = listen_unix(path)

    def clients() -> list[bytes]:
        replies = []
        for number in range(3):
            with greenflow.connect_unix(path, timeout=10) as flow:
                flow.write(b"%d" % number)
                flow.shutdown("write")
                replies.append(_read_to_eof(flow))
        listener.close()  # wakes the loop's pending accept: the iteration ends
        return replies

    driver = gevent.spawn(clients)
    served = 0
    for flow in listener:
        with flow:
            flow.write(b"got " + _read_to_eof(flow))
        served += 1
    assert served == 3
    assert driver.get(timeout=10) == [b"got 0", b"got 1", b"got 2"]
    assert not os.path.exists(path)


def test_accept_timeout_and_closed_listener(closing: list[Listener]) -> None:
    listener = listen_tcp("127.0.0.1", 0)
    closing.append(listener)
    with pytest.raises(greenflow.FlowTimeout, match=r"accept did not complete within the timeout of 0\.05"):
        listener.accept(timeout=0.05)
    waiter = gevent.spawn(listener.accept)
    gevent.spawn(listener.close)
    with pytest.raises(greenflow.ClosedError, match="listener was closed"):
        waiter.get(timeout=10)
    with pytest.raises(greenflow.ClosedError, match="listener is closed"):
        listener.accept()
    assert list(listener) == []


class _Banner(ListenerLayer):
    """A layer that greets each client: the smallest listener layer."""

    scheme = "banner"

    def __init__(self, listener: Listener, text: bytes) -> None:
        super().__init__(listener)
        self.text = text

    def upgrade(self, flow: greenflow.Flow) -> greenflow.Flow:
        flow.write(self.text)
        return flow


def test_listener_layers_chain_their_steps_inner_first(closing: list[Listener]) -> None:
    inner = listen_tcp("127.0.0.1", 0)
    listener = _Banner(_Banner(inner, b"inner "), b"outer\n")
    closing.append(listener)
    port = inner.address[1]  # type: ignore[index]
    assert listener.url == f"banner+banner://127.0.0.1:{port}"
    assert listener.inner.url == f"banner://127.0.0.1:{port}"
    assert listener.address == inner.address and listener.name is None
    assert listener.tls_context is None
    with greenflow.Server(lambda flow: flow.write(b"served"), listener) as server:
        assert server.urls == [listener.url]
        assert _client(port, b"") == b"inner outer\nserved"
    assert inner.closed and listener.closed
    with pytest.raises(TypeError):
        _Banner("tcp://127.0.0.1:0", b"")  # type: ignore[arg-type]
