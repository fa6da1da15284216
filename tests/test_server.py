"""The server loop: serving, limits, misbehaving clients, accept errors, graceful stop."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import gevent
import pytest
from gevent.event import Event

import greenflow
from greenflow import BrokenError, ClosedError, Flow
from greenflow.handlers import echo
from greenflow.server import Server, idle
from greenflow.testing import wait_all_blocked

from pairs import has_ipv6

SCRIPTS = Path(__file__).parent / "scripts"
REPO = Path(__file__).parent.parent


def read_exactly(flow: Flow, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = flow.read(count - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def read_to_eof(flow: Flow) -> bytes:
    data = bytearray()
    while chunk := flow.read():
        data += chunk
    return bytes(data)


def port_of(server: Server) -> int:
    address = server.addresses[0]
    assert isinstance(address, tuple)
    return int(address[1])


def exchange(port: int, payload: bytes, host: str = "127.0.0.1") -> bytes:
    with greenflow.connect_tcp(host, port, timeout=10) as flow:
        flow.write(payload)
        flow.shutdown("write")
        return read_to_eof(flow)


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    """Start servers for a test; stop them (without grace) afterwards."""
    servers: list[Server] = []

    def start(handler: Callable[[Flow], object], *listeners: object, **options: object) -> Server:
        server = Server(handler, *(listeners or ("tcp://127.0.0.1:0",)), **options)  # type: ignore[arg-type]
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop(grace=0)


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} descriptors, and RLIMIT_NOFILE's hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# -- serving -------------------------------------------------------------------


def test_echo_over_tcp_port_zero(serve: Callable[..., Server]) -> None:
    server = serve(echo)
    assert port_of(server) != 0
    assert server.urls == [f"tcp://127.0.0.1:{port_of(server)}"]
    assert exchange(port_of(server), b"hello") == b"hello"


@pytest.mark.skipif(not has_ipv6(), reason="this machine has no IPv6 loopback (::1)")
def test_echo_over_ipv6(serve: Callable[..., Server]) -> None:
    server = serve(echo, "tcp://[::1]:0")
    assert server.urls[0].startswith("tcp://[::1]:")
    assert exchange(port_of(server), b"six", host="::1") == b"six"


def test_echo_over_unix_and_tcp_at_once(serve: Callable[..., Server], tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    server = serve(echo, "tcp://127.0.0.1:0", f"unix:{path}")
    assert server.addresses[1] == path
    with greenflow.connect_unix(path, timeout=10) as flow:
        flow.write(b"over unix")
        flow.shutdown("write")
        assert read_to_eof(flow) == b"over unix"
    assert exchange(port_of(server), b"over tcp") == b"over tcp"


def test_accepted_tcp_flows_have_nodelay_and_the_timeout() -> None:
    seen: list[tuple[int, float | None]] = []
    done = Event()

    def handler(flow: Flow) -> None:
        assert isinstance(flow, greenflow.SocketFlow)
        seen.append((flow.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), flow.timeout))
        done.set()

    with (
        Server(handler, "tcp://127.0.0.1:0", timeout=7.5) as server,
        greenflow.connect_tcp("127.0.0.1", port_of(server)) as client,
    ):
        assert done.wait(10)
        assert read_to_eof(client) == b""  # closed when the handler returned
    assert seen == [(1, 7.5)]


def test_context_manager_closes_listeners() -> None:
    with Server(echo, "tcp://127.0.0.1:0") as server:
        port = port_of(server)
        assert server.serving
    assert not server.serving
    with pytest.raises(BrokenError):
        greenflow.connect_tcp("127.0.0.1", port, timeout=5)
    with pytest.raises(RuntimeError):
        server.start()


def test_bind_failure_closes_what_was_bound(tmp_path: Path) -> None:
    taken = greenflow.listeners.listen_tcp("127.0.0.1", 0)
    try:
        port = taken.address[1]  # type: ignore[index]
        server = Server(echo, f"unix:{tmp_path / 'a.sock'}", f"tcp://127.0.0.1:{port}")
        with pytest.raises(OSError):
            server.start()
        assert not (tmp_path / "a.sock").exists()
    finally:
        taken.close()


@pytest.mark.timeout(60)
def test_a_thousand_concurrent_clients(serve: Callable[..., Server]) -> None:
    clients = 1000
    raise_fd_limit(2 * clients + 200)
    handling = 0
    all_handled = Event()
    go = Event()

    def counting_echo(flow: Flow) -> None:
        nonlocal handling
        handling += 1
        if handling == clients:
            all_handled.set()
        echo(flow)

    server = serve(counting_echo)
    port = port_of(server)

    def client(number: int) -> bytes:
        with greenflow.connect_tcp("127.0.0.1", port, timeout=30) as flow:
            go.wait()
            payload = b"%015d\n" % number
            flow.write(payload)
            reply = read_exactly(flow, len(payload))
            flow.shutdown("write")
            assert read_to_eof(flow) == b""
            return reply

    greenlets = [gevent.spawn(client, number) for number in range(clients)]
    assert all_handled.wait(30)
    # Every client holds its connection open, each with its own handler.
    assert server.active_connections == clients
    go.set()
    gevent.joinall(greenlets, timeout=30, raise_error=True)
    assert [g.value for g in greenlets] == [b"%015d\n" % number for number in range(clients)]


def test_connection_limit_holds_and_accepting_resumes(serve: Callable[..., Server]) -> None:
    limit = 8
    clients = 40
    release = Event()
    running = 0
    most = 0
    served = 0
    reached = Event()

    def handler(flow: Flow) -> None:
        nonlocal running, most, served
        running += 1
        most = max(most, running)
        try:
            if running == limit:
                reached.set()
            flow.write(flow.read())
            release.wait()
            served += 1
        finally:
            running -= 1

    server = serve(handler, max_connections=limit)
    port = port_of(server)
    assert server.max_connections == limit

    def client(number: int) -> bytes:
        return exchange(port, b"n%d" % number)

    greenlets = [gevent.spawn(client, number) for number in range(clients)]
    assert reached.wait(10)
    # At the limit: the rest wait in the backlog, not accepted and dropped.
    assert server.active_connections == limit
    assert not server.accepting
    wait_all_blocked()  # give a wrong implementation the chance to overshoot
    assert server.active_connections == limit
    assert sum(1 for g in greenlets if g.ready()) == 0
    release.set()
    gevent.joinall(greenlets, timeout=20, raise_error=True)
    assert [g.value for g in greenlets] == [b"n%d" % number for number in range(clients)]
    assert most == limit
    assert served == clients


# -- misbehaving handlers and clients --------------------------------------------


def test_handler_exception_is_logged_and_serving_goes_on(
    serve: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="greenflow.server")

    def handler(flow: Flow) -> None:
        data = flow.read()
        if data == b"boom":
            raise ZeroDivisionError("the handler has a bug")
        flow.write(data)

    server = serve(handler)
    port = port_of(server)
    assert exchange(port, b"boom") == b""  # the flow is closed after the error
    assert exchange(port, b"fine") == b"fine"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert len(errors) == 1
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is ZeroDivisionError
    assert server.active_connections == 0


def test_client_reset_does_not_disturb_others(serve: Callable[..., Server]) -> None:
    failures: list[BaseException] = []
    got_error = Event()

    def handler(flow: Flow) -> None:
        try:
            first = flow.read()
            flow.write(first)
            while data := flow.read():
                flow.write(data)
        except BrokenError as exc:
            failures.append(exc)
            got_error.set()
            raise

    server = serve(handler)
    port = port_of(server)
    with greenflow.connect_tcp("127.0.0.1", port, timeout=10) as client:
        client.write(b"x")
        assert client.read() == b"x"
        client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # Closed with SO_LINGER 0: a reset.
    assert got_error.wait(10)
    assert exchange(port, b"still here") == b"still here"
    assert len(failures) == 1


def test_silent_clients_time_out_while_others_are_served(serve: Callable[..., Server]) -> None:
    server = serve(echo, timeout=0.3)
    port = port_of(server)
    silent = [greenflow.connect_tcp("127.0.0.1", port, timeout=10) for _ in range(5)]
    try:
        started = time.monotonic()
        # Served meanwhile, several times over the silent ones' timeout.
        for _ in range(3):
            assert exchange(port, b"talkative") == b"talkative"
        for flow in silent:
            assert flow.read() == b""  # the server gave up on it and closed
        assert time.monotonic() - started < 5
    finally:
        for flow in silent:
            flow.close()


# -- graceful stop -----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_graceful_stop_under_load() -> None:
    busy_count = 20
    idle_count = 20
    grace = 10.0
    release = Event()
    in_work = 0
    all_in_work = Event()

    def handler(flow: Flow) -> None:
        nonlocal in_work
        while True:
            with idle():
                request = flow.read()
            if not request:
                return
            if request == b"slow":
                in_work += 1
                if in_work == busy_count:
                    all_in_work.set()
                release.wait()
            flow.write(b"done:" + request)

    server = Server(handler, "tcp://127.0.0.1:0", grace=grace)
    server.start()
    port = port_of(server)
    try:
        busy = [greenflow.connect_tcp("127.0.0.1", port, timeout=20) for _ in range(busy_count)]
        idlers = [greenflow.connect_tcp("127.0.0.1", port, timeout=20) for _ in range(idle_count)]
        for flow in idlers:
            flow.write(b"quick")
            assert read_exactly(flow, 10) == b"done:quick"
        for flow in busy:
            flow.write(b"slow")
        assert all_in_work.wait(10)

        started = time.monotonic()
        stopper = gevent.spawn(server.stop)
        assert server.stopping.wait(5)
        # New connections are refused at once.
        with pytest.raises(BrokenError) as refused:
            greenflow.connect_tcp("127.0.0.1", port, timeout=5)
        assert refused.value.errno == 111
        # Idle connections end promptly, while the busy ones are still working.
        for flow in idlers:
            assert flow.read() == b""
        assert time.monotonic() - started < 2
        assert not release.is_set()
        assert not stopper.ready()
        # The requests in flight complete, then their connections end too.
        release.set()
        for flow in busy:
            assert read_to_eof(flow) == b"done:slow"
        stopper.join(grace)
        assert stopper.successful()
        assert time.monotonic() - started < grace
        assert server.active_connections == 0
    finally:
        server.stop(grace=0)
        for flow in busy + idlers:
            flow.close()


def test_stop_ends_a_handler_waiting_for_its_first_request() -> None:
    with Server(echo, "tcp://127.0.0.1:0") as server:
        client = greenflow.connect_tcp("127.0.0.1", port_of(server), timeout=10)
        # Make sure the handler is running and waiting before the stop.
        client.write(b"a")
        assert client.read() == b"a"
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2
        assert client.read() == b""
        client.close()


def test_grace_period_expiry_closes_and_kills() -> None:
    woken: list[type[BaseException]] = []
    entered = Event()

    def stuck_reader(flow: Flow) -> None:
        # Never marks itself idle: the server must wait for it, then end it.
        entered.set()
        try:
            flow.read()
        except ClosedError:
            woken.append(ClosedError)
            while True:  # ignores the hint: only a kill ends it
                gevent.sleep(0.01)

    server = Server(stuck_reader, "tcp://127.0.0.1:0")
    server.start()
    with greenflow.connect_tcp("127.0.0.1", port_of(server), timeout=10) as client:
        assert entered.wait(10)
        started = time.monotonic()
        server.stop(grace=0.3)
        elapsed = time.monotonic() - started
        assert 0.25 < elapsed < 0.3 + 1.5
        assert woken == [ClosedError]
        assert server.active_connections == 0
        with pytest.raises(BrokenError):
            while client.read():
                pass
            raise BrokenError("EOF is fine too")


def test_stop_from_inside_a_handler() -> None:
    def handler(flow: Flow) -> None:
        if flow.read() == b"shutdown":
            server.stop()
            flow.write(b"bye")

    server = Server(handler, "tcp://127.0.0.1:0")
    server.start()
    assert exchange(port_of(server), b"shutdown") == b"bye"
    waiter = gevent.spawn(server.serve_forever)
    waiter.join(10)
    assert waiter.successful()
    assert not server.serving


def test_a_stop_before_start_closes_given_listeners(tmp_path: Path) -> None:
    listener = greenflow.listeners.listen_unix(str(tmp_path / "x.sock"))
    server = Server(echo, listener)
    server.stop()
    assert listener.closed
    assert not (tmp_path / "x.sock").exists()


# -- accept errors -----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_out_of_descriptors_pauses_accepting_then_recovers() -> None:
    """EMFILE for real: a server in a child process with a tiny RLIMIT_NOFILE."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "emfile_server.py"), "6"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        clients = 30

        def client(number: int) -> bytes:
            return exchange(port, b"c%d" % number)

        greenlets = [gevent.spawn(client, number) for number in range(clients)]
        gevent.joinall(greenlets, timeout=40, raise_error=True)
        assert [g.value for g in greenlets] == [b"c%d" % number for number in range(clients)]
    finally:
        child.terminate()
        _, errors = child.communicate(timeout=20)
    assert b"Too many open files" in errors, errors.decode(errors="replace")
    assert b"pausing accepting" in errors


def test_a_handler_that_survives_its_kill_does_not_break_stop(caplog: pytest.LogCaptureFixture) -> None:
    entered = Event()
    release = Event()

    def stubborn(flow: Flow) -> None:
        entered.set()
        with contextlib.suppress(ClosedError):
            flow.read()
        try:
            release.wait()
        except gevent.GreenletExit:
            release.wait()  # ignores its kill until the test lets it go

    server = Server(stubborn, "tcp://127.0.0.1:0")
    server.start()
    try:
        with greenflow.connect_tcp("127.0.0.1", port_of(server), timeout=10):
            assert entered.wait(10)
            started = time.monotonic()
            server.stop(grace=0.2)  # must not raise gevent.Timeout
            assert time.monotonic() - started < 0.2 + 2.5
            assert server.active_connections == 0
            assert "still running" in caplog.text
    finally:
        release.set()


def test_an_interrupted_stop_still_ends_every_handler() -> None:
    entered = Event()
    ended: list[str] = []

    def slow(flow: Flow) -> None:
        entered.set()
        try:
            flow.read()  # never idle(): the stop waits for it
        finally:
            ended.append("ended")

    server = Server(slow, "tcp://127.0.0.1:0")
    server.start()
    with greenflow.connect_tcp("127.0.0.1", port_of(server), timeout=10):
        assert entered.wait(10)
        outer = gevent.Timeout(0.2)
        outer.start()
        try:
            server.stop(grace=30)
        except gevent.Timeout as exc:
            assert exc is outer
        finally:
            outer.close()
        assert ended == ["ended"], "the stop was interrupted and left its handler running"
        assert server.active_connections == 0
        assert not server.serving


def test_unread_request_bytes_do_not_reset_the_response_away(serve: Callable[..., Server]) -> None:
    # The handler reads part of the request, answers with more than the
    # socket buffers hold, and returns. Closing with unread input makes the
    # kernel send a reset, which would destroy the tail of the response: the
    # server must linger instead, in normal serving as during a stop.
    body = os.urandom(4_000_000)

    def answer_early(flow: Flow) -> None:
        flow.read(1)
        flow.write(body)

    server = serve(answer_early)
    with greenflow.connect_tcp("127.0.0.1", port_of(server), timeout=10) as client:
        client.write(b"xy" * 1000)  # more than the handler reads
        received = bytearray()
        while chunk := client.read():
            received += chunk
    assert len(received) == len(body)
    assert received == body


# -- stop signals, safe defaults -------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_forever_stops_gracefully_on_a_signal(signum: int) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "signalled_server.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        with greenflow.connect_tcp("127.0.0.1", port, timeout=20) as client:
            client.write(b"a")
            assert read_exactly(client, 8) == b"started\n"
            child.send_signal(signum)
            # The stop has begun while the request is in flight...
            assert read_exactly(client, 9) == b"stopping\n"
            client.write(b"b")
            # ...and the request still completes before the connection ends.
            assert read_to_eof(client) == b"done:b"
        output, errors = child.communicate(timeout=20)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0, errors.decode(errors="replace")
    assert b"Traceback" not in errors, errors.decode(errors="replace")
    assert output.split(b"\n")[:2] == [b"serve_forever returned", b"SIGINT handler restored"]


def test_a_client_that_sends_nothing_is_closed_after_first_data_timeout(
    serve: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="greenflow.server")
    server = serve(echo, first_data_timeout=0.2)
    assert server.first_data_timeout == 0.2
    port = port_of(server)
    with greenflow.connect_tcp("127.0.0.1", port, timeout=10) as silent:
        started = time.monotonic()
        assert exchange(port, b"talkative") == b"talkative"  # served meanwhile
        assert silent.read() == b""  # closed by the server, not by the flow's timeout
        assert 0.15 < time.monotonic() - started < 5
    assert "sent nothing in 0.2 s" in caplog.text
    assert server.active_connections == 0


def test_first_data_timeout_bounds_only_the_first_bytes(serve: Callable[..., Server]) -> None:
    server = serve(echo, first_data_timeout=0.2)
    with greenflow.connect_tcp("127.0.0.1", port_of(server), timeout=10) as client:
        client.write(b"first")
        assert read_exactly(client, 5) == b"first"
        client.timeout = 0.5  # longer than first_data_timeout: the server keeps the connection
        with pytest.raises(greenflow.FlowTimeout):
            client.read()
        client.write(b"again")
        assert read_exactly(client, 5) == b"again"


def test_a_connection_waiting_for_its_first_bytes_is_idle_for_a_stop() -> None:
    server = Server(echo, "tcp://127.0.0.1:0", first_data_timeout=30, grace=5)
    server.start()
    try:
        port = port_of(server)
        with greenflow.connect_tcp("127.0.0.1", port, timeout=10) as silent:
            # Accepted in order: once a later client is served, the silent one waits.
            assert exchange(port, b"later") == b"later"
            assert server.active_connections == 1
            started = time.monotonic()
            server.stop()
            assert time.monotonic() - started < 1
            assert silent.read() == b""
    finally:
        server.stop(grace=0)


def test_connection_deadline_ends_a_trickling_client(
    serve: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="greenflow.server")
    server = serve(echo, timeout=1.0, connection_deadline=0.5)
    assert server.connection_deadline == 0.5
    with greenflow.connect_tcp("127.0.0.1", port_of(server), timeout=10) as client:
        started = time.monotonic()
        with pytest.raises(BrokenError):
            # A byte every 50 ms, each well inside the per-call timeout.
            while time.monotonic() - started < 10:
                client.write(b"x")
                if client.read() != b"x":
                    raise BrokenError("the server ended the connection")
                gevent.sleep(0.05)
        assert 0.45 < time.monotonic() - started < 5
    assert "its deadline of 0.5 s passed" in caplog.text


def test_default_max_connections_follows_the_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (500, hard))
        assert greenflow.server.default_max_connections() == 500 - 64
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, hard))
        assert greenflow.server.default_max_connections() == 16
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert 16 <= greenflow.server.default_max_connections() < max(soft, 17)


def test_a_plain_server_never_loads_pyopenssl() -> None:
    code = (
        "import sys, greenflow\n"
        "from greenflow.handlers import echo\n"
        "with greenflow.Server(echo, 'tcp://127.0.0.1:0') as server:\n"
        "    with greenflow.connect_tcp('127.0.0.1', server.addresses[0][1], timeout=10) as flow:\n"
        "        flow.write(b'x'); assert flow.read() == b'x'\n"
        "assert 'OpenSSL' not in sys.modules, 'loaded'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "ok", result.stderr


def test_a_listener_on_a_socket_subclass_is_served(serve: Callable[..., Server]) -> None:
    class Tagged(socket.socket):
        pass

    sock = Tagged(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    server = serve(echo, greenflow.Listener(sock))
    assert exchange(port_of(server), b"subclass") == b"subclass"
