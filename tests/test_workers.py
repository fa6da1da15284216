"""Worker processes, run as a user would: ``greenflow serve --workers N`` and its signals.

Clients are greenlets of this process; the supervisor and its workers are
real processes. Each handler answers with the pid of the worker serving it,
so that the tests can see which workers serve.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path

import gevent
import pytest
from test_cli import LISTENING, Served, children, host_port

import greenflow

SCRIPTS = Path(__file__).parent / "scripts"
_FIXTURES = (children,)  # used by name
READY = re.compile(rb"worker (\d+) ready")


def start(children: list[Served], *args: str, workers: int = 2, cwd: Path = SCRIPTS) -> tuple[Served, int]:
    served = Served(*args, "--workers", str(workers), cwd=cwd)
    children.append(served)
    (url,) = served.wait_for(LISTENING)
    served.wait_for(READY, workers)
    return served, host_port(url)[1]


def request(port: int, line: bytes = b"hello\n") -> int:
    """One connection, one request; the pid of the worker that answered."""
    with greenflow.connect_tcp("127.0.0.1", port, timeout=10) as flow:
        flow.write(line)
        answer = greenflow.BufferedFlow(flow).readline()
    assert answer, "the connection ended without an answer"
    return int(answer)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_until_gone(pids: set[int], seconds: float = 15) -> None:
    with gevent.Timeout(seconds, AssertionError(f"workers {pids} did not exit")):
        while not all(gone(pid) for pid in pids):
            gevent.sleep(0.02)


def test_a_reload_under_load_refuses_and_resets_nothing(children: list[Served]) -> None:
    served, port = start(children, "worker_handlers:once", "--bind", "tcp://127.0.0.1:0")
    old = {int(pid) for pid in READY.findall(served.output)}
    answers: list[int] = []
    errors: list[BaseException] = []
    running = True

    def client() -> None:
        while running:
            try:
                answers.append(request(port))
            except (greenflow.FlowError, OSError, AssertionError, ValueError) as exc:
                errors.append(exc)

    clients = [gevent.spawn(client) for _ in range(8)]
    try:
        with gevent.Timeout(10, AssertionError("no load before the reload")):
            while len(answers) < 50:
                gevent.sleep(0.01)
        served.process.send_signal(signal.SIGHUP)
        served.wait_for(re.compile(rb"reload: (\d+) new worker\(s\) ready"))
        wait_until_gone(old)
        before = len(answers)
        with gevent.Timeout(10, AssertionError("no load after the reload")):
            while len(answers) < before + 50:
                gevent.sleep(0.01)
    finally:
        running = False
        gevent.joinall(clients, timeout=15)
    assert errors == []
    assert set(answers[-20:]).isdisjoint(old)  # the new workers serve now
    assert served.terminate() == 0


def test_a_spinning_handler_gets_its_worker_killed_and_replaced(children: list[Served]) -> None:
    timeout = 1.0
    served, port = start(
        children, "worker_handlers:spin_on_request", "--bind", "tcp://127.0.0.1:0",
        "--worker-timeout", str(timeout), workers=1,
    )  # fmt: skip
    (first,) = {int(pid) for pid in READY.findall(served.output)}
    spinner = greenflow.connect_tcp("127.0.0.1", port, timeout=10)
    spinner.write(b"spin\n")
    assert greenflow.BufferedFlow(spinner).readline() == b"spinning\n"
    started = time.monotonic()
    assert request(port) != first  # queued meanwhile, served by the replacement
    assert time.monotonic() - started < timeout + 1
    assert spinner.read() == b""  # the killed worker's connections end
    spinner.close()
    assert served.terminate() == 0
    log = served.output.decode()
    assert f"worker {first} (handler worker_handlers:spin_on_request) did not answer" in log
    assert "spin_forever" in log  # faulthandler's traceback: where it spun


def test_a_graceful_stop_ends_100_idle_keep_alive_connections_at_once(children: list[Served]) -> None:
    served, port = start(children, "worker_handlers:keepalive", "--bind", "tcp://127.0.0.1:0")
    flows = [greenflow.connect_tcp("127.0.0.1", port, timeout=10) for _ in range(100)]
    try:
        readers = [greenflow.BufferedFlow(flow) for flow in flows]
        for flow in flows:
            flow.write(b"one\n")
        assert all(reader.readline() for reader in readers)  # served, now idle between requests
        started = time.monotonic()
        assert served.terminate() == 0
        assert time.monotonic() - started < 1.0
        assert all(reader.read() == b"" for reader in readers)
    finally:
        for flow in flows:
            flow.close()


def test_a_crash_at_import_is_reported_once(children: list[Served]) -> None:
    served = Served("broken_handler:handler", "--workers", "2", "--bind", "tcp://127.0.0.1:0", cwd=SCRIPTS)
    children.append(served)
    _, rest = served.process.communicate(timeout=30)
    log = served.output.decode() + rest.decode()
    assert served.process.returncode == 1
    assert log.count("RuntimeError: broken on purpose, at import") == 1, log
    assert "Traceback (most recent call last)" in log
    assert "failed to start (the same error as before)" in log
    assert "no worker could start" in log


def test_a_reload_whose_workers_fail_keeps_the_old_ones(children: list[Served], tmp_path: Path) -> None:
    shutil.copy(SCRIPTS / "switchable_handler.py", tmp_path)
    served, port = start(children, "switchable_handler:answer", "--bind", "tcp://127.0.0.1:0", cwd=tmp_path)
    old = {int(pid) for pid in READY.findall(served.output)}
    (tmp_path / "broken").touch()
    served.process.send_signal(signal.SIGHUP)
    served.wait_for(re.compile(rb"(reload failed)"))
    assert {request(port) for _ in range(10)} <= old
    assert "switched off: the file 'broken' exists" in served.output.decode()
    (tmp_path / "broken").unlink()
    served.process.send_signal(signal.SIGHUP)
    served.wait_for(re.compile(rb"reload: (\d+) new worker"))
    wait_until_gone(old)
    assert request(port) not in old
    assert served.terminate() == 0


def test_max_requests_recycles_workers(children: list[Served]) -> None:
    served, port = start(
        children, "worker_handlers:once", "--bind", "tcp://127.0.0.1:0",
        "--max-requests", "3", "--max-requests-jitter", "1", workers=1,
    )  # fmt: skip
    pids = [request(port) for _ in range(12)]
    assert len(set(pids)) >= 3  # at most 4 connections each
    assert max(pids.count(pid) for pid in pids) <= 4
    assert served.terminate() == 0
    assert "served its max_requests" in served.output.decode()


def test_sigttin_and_sigttou(children: list[Served]) -> None:
    served, port = start(children, "worker_handlers:once", "--bind", "tcp://127.0.0.1:0", workers=1)
    served.process.send_signal(signal.SIGTTIN)
    assert served.wait_for(re.compile(rb"SIGTTIN: (\d+) worker")) == ["2"]
    served.wait_for(READY)  # the second worker
    served.process.send_signal(signal.SIGTTOU)
    served.wait_for(re.compile(rb"SIGTTOU: (\d+) worker"))
    assert request(port) > 0
    assert served.terminate() == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_reuse_port_gives_each_worker_its_own_socket(children: list[Served]) -> None:
    port = free_port()
    served, _ = start(children, "worker_handlers:once", "--bind", f"tcp://127.0.0.1:{port}", "--reuse-port")
    assert "SO_REUSEPORT, a socket per worker" in served.output.decode()
    assert len({request(port) for _ in range(40)}) == 2  # the kernel spreads them over both
    assert served.terminate() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-requests", "5"], "--max-requests applies with --workers only"),
        (["--workers", "2", "--reuse-port"], "needs a fixed port"),
        (["--workers", "2", "--worker-timeout", "0"], "--worker-timeout must be more than 0"),
        (["--workers", "2", "--max-requests", "-1"], "must be at least 0"),
        (["nonsense", "--workers", "2"], "expected MODULE:FUNCTION"),
    ],
)
def test_worker_options_that_make_no_sense(args: list[str], message: str) -> None:
    served = Served(*args, "--bind", "tcp://127.0.0.1:0")
    _, rest = served.process.communicate(timeout=30)
    assert served.process.returncode == 2
    assert message in rest.decode()


def test_wsgi_in_workers(children: list[Served]) -> None:
    served, port = start(children, "--wsgi", "worker_handlers:wsgi_app", "--bind", "tcp://127.0.0.1:0")
    workers = {int(pid) for pid in READY.findall(served.output)}
    with greenflow.connect_tcp("127.0.0.1", port, timeout=10) as flow:
        flow.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        reply = b""
        while chunk := flow.read():
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200"), reply
    assert int(body) in workers
    assert served.terminate() == 0


def test_max_requests_is_the_workers_and_keepalive_requests_the_connections() -> None:
    """Issue 15 names --max-requests for recycling workers; WSGI's per-connection bound has its own name."""
    from greenflow.cli import build_parser

    argv = ["serve", "--wsgi", "app:x", "--workers", "2", "--max-requests", "3", "--max-requests-jitter", "1"]
    args = build_parser().parse_args([*argv, "--keepalive-requests", "5"])
    assert (args.worker_max_requests, args.worker_max_requests_jitter, args.max_requests) == (3, 1, 5)
