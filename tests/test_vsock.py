"""vsock: listeners, the loopback end to end where the kernel has it, and the VMM Unix-socket connector."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import gevent
import gevent.event
import gevent.socket
import pytest

import greenflow
from greenflow import BrokenError, Flow, FlowTimeout, FramedFlow, Server
from greenflow.vsock import (
    VMADDR_CID_ANY,
    VMADDR_CID_LOCAL,
    VMADDR_PORT_ANY,
    FramedListener,
    connect_vsock_uds,
    listen_vsock,
)

from tls_helpers import contexts, shared_certs

# -- listening -------------------------------------------------------------------------------


def test_a_framed_listener_needs_a_close_timeout() -> None:
    with (
        listening(VMADDR_CID_ANY, VMADDR_PORT_ANY) as inner,
        pytest.raises(ValueError, match="close_timeout"),
    ):
        FramedListener(inner, close_timeout=None)  # type: ignore[arg-type]


def test_cid_constants() -> None:
    assert VMADDR_CID_LOCAL == 1
    assert VMADDR_CID_ANY == 0xFFFFFFFF
    assert VMADDR_PORT_ANY == 0xFFFFFFFF


def test_listen_on_any_cid_and_any_port() -> None:
    with listening(VMADDR_CID_ANY, VMADDR_PORT_ANY) as listener:
        cid, port = listener.address
        assert cid == VMADDR_CID_ANY and 0 <= port < VMADDR_PORT_ANY
        assert listener.url == f"vsock://{cid}:{port}"
        assert repr(listener) == f"<Listener vsock://{cid}:{port}>"
        assert isinstance(listener, greenflow.Listener)
    assert listener.closed


def test_a_framed_listener_frames_each_flow() -> None:
    with listening(VMADDR_CID_ANY, VMADDR_PORT_ANY, framed=True, close_timeout=2) as listener:
        assert listener.url.startswith("vsock+framed://")
        assert isinstance(listener, FramedListener) and listener.close_timeout == 2
        accepted, other = socket.socketpair()
        b = greenflow.from_socket(other)
        flow = listener.establish(listener.open_flow(accepted, None))  # as the server does
        assert isinstance(flow, FramedFlow) and flow.close_timeout == 2
        with flow, b:
            flow.write(b"x")
            assert b.read() == b"\x01\x00\x00\x00x"


def test_a_tls_listener_says_so_in_its_url() -> None:
    _client, server_ctx = contexts(shared_certs())
    with listening(VMADDR_CID_ANY, VMADDR_PORT_ANY, framed=True, tls_context=server_ctx) as listener:
        assert listener.url.startswith("vsock+framed+tls://")


def test_a_port_in_use_names_the_address() -> None:
    with listening(VMADDR_CID_ANY, VMADDR_PORT_ANY) as first:
        port = first.address[1]
        with pytest.raises(OSError, match=f"vsock://{VMADDR_CID_ANY}:{port}") as caught:
            listen_vsock(VMADDR_CID_ANY, port)
        assert caught.value.errno == errno.EADDRINUSE


@pytest.mark.parametrize(
    ("cid", "port", "error"),
    [
        ("1", 5, TypeError),
        (1, 5.0, TypeError),
        (True, 5, TypeError),
        (-1, 5, ValueError),
        (1, 2**32, ValueError),
    ],
)
def test_bad_cids_and_ports(cid: object, port: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        listen_vsock(cid, port)  # type: ignore[arg-type]


@contextmanager
def listening(cid: int, port: int, **options: object) -> Iterator[greenflow.Listener]:
    listener = listen_vsock(cid, port, **options)  # type: ignore[arg-type]
    try:
        yield listener
    finally:
        listener.close()


def _loopback_listener(**options: object) -> greenflow.Listener:
    """A listener on CID 1, or a skip saying why the kernel has no vsock loopback."""
    try:
        return listen_vsock(VMADDR_CID_LOCAL, VMADDR_PORT_ANY, **options)  # type: ignore[arg-type]
    except OSError as exc:
        if exc.errno in (errno.EADDRNOTAVAIL, errno.ENODEV):
            pytest.skip(
                f"no vsock loopback here: binding CID 1 failed with {errno.errorcode[exc.errno]}"
                " (load the vsock_loopback module to run this test)"
            )
        raise


@pytest.mark.parametrize("framed", [False, True], ids=["plain", "framed"])
def test_end_to_end_over_the_vsock_loopback(framed: bool) -> None:
    listener = _loopback_listener(framed=framed)

    def echo(flow: Flow) -> None:
        while data := flow.read():
            flow.write(data)

    with Server(echo, listener):
        port = listener.address[1]
        client: Flow = greenflow.connect_vsock(VMADDR_CID_LOCAL, port, timeout=10)
        if framed:
            client = FramedFlow(client)
        with client:
            client.write(b"over vsock")
            client.shutdown("write")
            got = bytearray()
            while chunk := client.read():
                got += chunk
            assert got == b"over vsock"


# -- the VMM's Unix socket: a fake VMM ----------------------------------------------------------


def vmm_path(tmp_path: os.PathLike[str]) -> str:
    return os.path.join(tmp_path, "vsock.sock")


def names(path: str, port: int, then: str) -> str:
    """A pattern for a message that names the VMM's socket and the port, then says ``then``."""
    return f"vsock port {port} through {re.escape(repr(path))}.*{then}"


@contextmanager
def fake_vmm(tmp_path: os.PathLike[str], behave: Callable[[Flow, bytes], None]) -> Iterator[str]:
    """A Unix socket that reads one CONNECT line per connection and then does ``behave``."""
    path = vmm_path(tmp_path)
    listening = gevent.socket.socket(gevent.socket.AF_UNIX, gevent.socket.SOCK_STREAM)
    listening.bind(path)
    listening.listen(8)
    flows: list[Flow] = []

    def serve() -> None:
        while True:
            sock, _ = listening.accept()
            flow = greenflow.from_socket(sock)
            flows.append(flow)
            line = bytearray()
            while not line.endswith(b"\n") and (byte := flow.read(1)):
                line += byte
            gevent.spawn(_quietly, behave, flow, bytes(line))

    server = gevent.spawn(serve)
    try:
        yield path
    finally:
        server.kill()
        listening.close()
        for flow in flows:
            flow.close()


def _quietly(behave: Callable[[Flow, bytes], None], flow: Flow, line: bytes) -> None:
    """Run a fake VMM's part; the test closing its flow at the end is no failure."""
    with contextlib.suppress(greenflow.ClosedError):
        behave(flow, line)


def _accept_then_echo(flow: Flow, line: bytes) -> None:
    assert line == b"CONNECT 52\n"
    flow.write(b"OK 1073741824\nhello from the guest")  # one write: the handshake must not eat the greeting
    while data := flow.read():
        flow.write(data)


def test_the_connector_reads_no_byte_past_the_answer(tmp_path: os.PathLike[str]) -> None:
    with fake_vmm(tmp_path, _accept_then_echo) as path, connect_vsock_uds(path, 52, timeout=5) as flow:
        assert flow.timeout == 5
        greeting = b"hello from the guest"
        got = bytearray()
        while len(got) < len(greeting):
            got += flow.read()
        assert got == greeting
        flow.write(b"ping")
        assert flow.read() == b"ping"


def _framed_guest(flow: Flow, line: bytes) -> None:
    flow.write(b"OK 7\n")
    with FramedFlow(flow) as guest:
        while data := guest.read():
            guest.write(data)


def test_the_connector_frames_when_asked(tmp_path: os.PathLike[str]) -> None:
    with fake_vmm(tmp_path, _framed_guest) as path:
        flow = connect_vsock_uds(path, 52, framed=True, close_timeout=2)
        assert isinstance(flow, FramedFlow)
        with flow:
            flow.write(b"framed over the VMM")
            assert flow.read() == b"framed over the VMM"


def _refuse(flow: Flow, line: bytes) -> None:
    flow.close()  # what Firecracker does when nothing listens on the port


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (b"NO 52\n", "answered b'NO 52\\\\n'"),
        (b"OK\n", "answered b'OK\\\\n'"),
        (b"OK abc\n", "answered b'OK abc"),
        (b"OK 99999999999\n", "answered b'OK 99999999999"),
        (b"x" * 40, "answered b'xxxx"),
        (b"OK 5", "closed after b'OK 5'"),
    ],
    ids=["refusal-line", "no-port", "not-a-number", "too-big", "no-newline", "eof-mid-line"],
)
def test_bad_answers_name_the_path_and_the_port(tmp_path: os.PathLike[str], answer: bytes, says: str) -> None:
    def answer_then_close(flow: Flow, line: bytes) -> None:
        flow.write(answer)
        flow.close()

    path = vmm_path(tmp_path)
    with fake_vmm(tmp_path, answer_then_close), pytest.raises(BrokenError, match=names(path, 52, says)):
        connect_vsock_uds(path, 52)


def test_a_refusal_names_the_path_and_the_port(tmp_path: os.PathLike[str]) -> None:
    path = vmm_path(tmp_path)
    with (
        fake_vmm(tmp_path, _refuse),
        pytest.raises(BrokenError, match=names(path, 52, "closed the connection")),
    ):
        connect_vsock_uds(path, 52)


def test_a_silent_vmm_hits_the_connect_timeout(tmp_path: os.PathLike[str]) -> None:
    done = gevent.event.Event()

    def silent(flow: Flow, line: bytes) -> None:
        done.wait()

    with fake_vmm(tmp_path, silent) as path:
        with pytest.raises(FlowTimeout, match=names(path, 52, "connect_timeout of 0.2")):
            connect_vsock_uds(path, 52, connect_timeout=0.2)
        done.set()


def test_no_socket_at_the_path(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "missing.sock")
    with pytest.raises(BrokenError, match=names(path, 9, "")):
        connect_vsock_uds(path, 9)


def test_bad_ports_for_the_connector(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(ValueError, match="port"):
        connect_vsock_uds(os.path.join(tmp_path, "x"), -1)


# -- the URL forms (greenflow.addresses, listen_url, greenflow connect) ------------


@pytest.mark.parametrize(
    ("url", "framed", "tls"),
    [
        ("vsock://1:5000", False, False),
        ("vsock+tls://1:5000", False, True),
        ("vsock+framed://1:5000", True, False),
        ("vsock+framed+tls://1:5000", True, True),
    ],
)
def test_vsock_url_forms(url: str, framed: bool, tls: bool) -> None:
    from greenflow.addresses import parse_url

    endpoint = parse_url(url)
    assert (endpoint.cid, endpoint.port, endpoint.vsock) == (1, 5000, True)
    assert (endpoint.framed, endpoint.tls) == (framed, tls)
    assert str(endpoint) == url
    assert parse_url(str(endpoint)) == endpoint


def test_vsock_uds_url_forms() -> None:
    from greenflow.addresses import Scheme, parse_url

    endpoint = parse_url("vsock+uds:/run/vm/v.sock:52")
    assert (endpoint.scheme, endpoint.path, endpoint.port) == (Scheme.VSOCK_UDS, "/run/vm/v.sock", 52)
    assert not endpoint.vsock and not endpoint.framed
    assert parse_url("vsock+uds+framed:/run/vm/v.sock:52").framed
    assert str(endpoint) == "vsock+uds:/run/vm/v.sock:52"
    for bad, why in [
        ("vsock+uds:/run/vm/v.sock", "should look like vsock\\+uds:/run/vm/v.sock:PORT"),
        ("vsock+uds:/run/vm/v.sock:", "no port"),
        ("vsock+uds::52", "should look like vsock\\+uds:/run/vm/v.sock:PORT"),
        ("vsock+framed://1", "a CID and a port"),
        ("vsock+tls://1:x", "a bad port 'x'"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_url(bad)


def test_listen_url_binds_the_vsock_forms() -> None:
    (plain,) = greenflow.listen_url(f"vsock://{VMADDR_CID_ANY}:{VMADDR_PORT_ANY}")
    (framed,) = greenflow.listen_url(f"vsock+framed://{VMADDR_CID_ANY}:{VMADDR_PORT_ANY}")
    try:
        assert plain.url.startswith(f"vsock://{VMADDR_CID_ANY}:")
        assert framed.url.startswith(f"vsock+framed://{VMADDR_CID_ANY}:")
    finally:
        plain.close()
        framed.close()
    with pytest.raises(ValueError, match="for connecting to a guest through its VMM, not for listening"):
        greenflow.listen_url("vsock+uds:/run/vm/v.sock:52")


def test_greenflow_connect_reaches_a_guest_through_the_vmm_socket(tmp_path: os.PathLike[str]) -> None:
    import subprocess
    import sys

    from gevent import subprocess as cooperative

    def echo_then_end(flow: Flow, line: bytes) -> None:
        _accept_then_echo(flow, line)
        flow.shutdown("write")  # the guest's EOF, after the client's

    with fake_vmm(tmp_path, echo_then_end) as path:  # the fake VMM runs while we wait for the child
        process = cooperative.Popen(
            [sys.executable, "-m", "greenflow", "connect", f"vsock+uds:{path}:52", "--timeout", "5"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = process.communicate(b" and back\n", timeout=20)
    assert process.returncode == 0, err
    assert out == b"hello from the guest and back\n"
