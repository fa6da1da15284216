"""What sockets, listeners and flows say about where they are, and which bind failed."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import greenflow
from greenflow.listeners import Listener, listen_unix, listen_url

# -- Unix sockets report their final path, not the temporary bind name ----------------


def test_unix_flows_report_the_final_path(tmp_path: Path, closing: list[Listener]) -> None:
    path = str(tmp_path / "app.sock")
    listener = listen_unix(path)
    closing.append(listener)
    assert listener.address == path
    assert listener.url == f"unix:{path}"
    with greenflow.connect_unix(path, timeout=5) as client:
        sock, _ = listener.socket.accept()
        with listener.open_flow(sock, timeout=5) as accepted:
            assert client.peer_address == path
            assert accepted.local_address == path
            assert f"the connection to {path}>" in repr(client)
            assert ".app.sock." not in repr(client) + repr(accepted) + repr(listener)
            client.write(b"ping")
            assert accepted.read() == b"ping"  # the names changed, nothing else


def test_a_bytes_path_is_reported_as_text(tmp_path: Path, closing: list[Listener]) -> None:
    path = str(tmp_path / "b.sock")
    closing.append(listen_unix(path))
    with greenflow.connect_unix(os.fsencode(path), timeout=5) as client:
        assert client.peer_address == path


def test_an_abstract_name_is_reported_as_the_socket_says(closing: list[Listener]) -> None:
    name = f"\0greenflow-names-{os.getpid()}"
    closing.append(listen_unix(name))
    with greenflow.connect_unix(name, timeout=5) as client:
        assert client.peer_address == name.encode()  # what getpeername gives, as before


# -- TCP_NODELAY on adopted TCP sockets -------------------------------------------------


def _accepted_tcp_socket() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return client, accepted


def test_from_socket_sets_nodelay_on_tcp() -> None:
    client, accepted = _accepted_tcp_socket()
    assert not accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # Nagle is on by default
    with client, greenflow.from_socket(accepted) as flow:
        assert flow.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_from_fd_sets_nodelay_on_tcp() -> None:
    client, accepted = _accepted_tcp_socket()
    with client, greenflow.from_fd(accepted.detach()) as flow:
        assert flow.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_nodelay_can_be_left_off() -> None:
    client, accepted = _accepted_tcp_socket()
    with client, greenflow.from_socket(accepted, nodelay=False) as flow:
        assert not flow.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    client, accepted = _accepted_tcp_socket()
    with client, greenflow.from_fd(accepted.detach(), nodelay=False) as flow:
        assert not flow.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_from_socket_on_a_unix_socket_needs_no_nodelay() -> None:
    left, right = socket.socketpair()
    with greenflow.from_socket(left) as a, greenflow.from_socket(right) as b:
        a.write(b"x")
        assert b.read() == b"x"


# -- bind errors name the URL -----------------------------------------------------------


def test_address_in_use_names_the_url(closing: list[Listener]) -> None:
    (first,) = listen_url("tcp://127.0.0.1:0")
    closing.append(first)
    url = first.url
    with pytest.raises(OSError, match=f"^\\[Errno {errno.EADDRINUSE}\\] cannot listen on {url}: ") as caught:
        listen_url(url)
    assert caught.value.errno == errno.EADDRINUSE
    assert isinstance(caught.value.__cause__, OSError)


def test_a_missing_folder_names_the_url_and_the_folder(tmp_path: Path) -> None:
    url = f"unix:{tmp_path}/missing/app.sock"
    with pytest.raises(FileNotFoundError, match=f"cannot listen on {url}: .*{tmp_path}/missing") as caught:
        listen_url(url)
    assert caught.value.errno == errno.ENOENT


def test_a_closed_descriptor_names_the_url() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)  # a number that is surely not open now
    with pytest.raises(OSError, match=f"cannot listen on fd://{fd}: descriptor {fd} is not open") as caught:
        listen_url(f"fd://{fd}")
    assert caught.value.errno == errno.EBADF


def test_a_descriptor_that_is_not_a_listening_socket_names_the_url() -> None:
    with socket.socket() as idle:
        with pytest.raises(ValueError, match=f"cannot listen on fd://{idle.fileno()}: .*not listening"):
            listen_url(f"fd://{idle.fileno()}")
        assert idle.fileno() >= 0


def test_a_vsock_bind_error_names_the_url_once() -> None:
    try:
        listeners = listen_url("vsock://1:1234")  # CID 1 binds only where the kernel has vsock loopback
    except OSError as exc:
        assert str(exc).count("cannot listen on vsock://1:1234") == 1, str(exc)
    else:
        for listener in listeners:
            listener.close()
        pytest.skip("this kernel has vsock loopback: CID 1 binds")


def test_a_malformed_url_names_itself() -> None:
    with pytest.raises(ValueError, match="'tcp://h' is not a listener URL"):
        listen_url("tcp://h")


# -- systemd:NAME ---------------------------------------------------------------------


def test_systemd_by_name() -> None:
    # In a child, where fds 3 and 4 are ours to set: two listening sockets
    # named web and admin. Each name finds its own socket, in either order.
    script = """
import os, socket
for fd in (3, 4):
    made = socket.create_server(("127.0.0.1", 0)).detach()
    os.dup2(made, 10 + fd)
    os.close(made)
for fd in (3, 4):
    os.dup2(10 + fd, fd)
    os.close(10 + fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="2", LISTEN_FDNAMES="web:admin")
from greenflow.listeners import listen_url
(admin,) = listen_url("systemd:admin")
(web,) = listen_url("systemd:web")
print(admin.name, admin.fileno(), web.name, web.fileno(), listen_url("systemd:nothing"))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert result.stdout.split() == ["admin", "4", "web", "3", "[]"], result.stderr
