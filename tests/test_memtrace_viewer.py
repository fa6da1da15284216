"""memtrace end to end: a server that leaks on purpose, traced, and the viewer's command line.

The traced process is ``tests/scripts/memtrace_leaky.py`` (it leaks 4 KiB
per request at the line marked ``# the leak``); the viewer is ``python -m
greenflow.memtrace`` (the ``greenflow memtrace`` command), run as a real
subprocess, on a pipe or in a pseudo-terminal.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenflow import memtrace

SCRIPT = Path(__file__).resolve().parent / "scripts" / "memtrace_leaky.py"
ROOT = Path(__file__).resolve().parent.parent
VIEWER = [sys.executable, "-m", "greenflow", "memtrace"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _line_of(marker: str) -> int:
    for number, line in enumerate(SCRIPT.read_text().splitlines(), 1):
        if line.rstrip().endswith(marker):
            return number
    raise AssertionError(f"no line ends with {marker!r} in {SCRIPT}")


LEAK_SITE = f"{SCRIPT}:{_line_of('# the leak')}"
CHILD_SITE = f"{SCRIPT}:{_line_of('# the child')}"


class Traced:
    """The leaking server as a child process, and its stdout lines awaited with a deadline."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), *args],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=ENV,
        )
        assert self.process.stdout is not None
        self._fd = self.process.stdout.fileno()
        self._buffer = b""

    def line(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._fd], [], [], max(left, 0))
            if not ready:
                raise AssertionError("the traced process said nothing in time")
            chunk = os.read(self._fd, 4096)
            if not chunk:
                raise AssertionError(f"the traced process exited ({self.process.wait()})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def viewer_url(self) -> str:
        words = self.line().split()
        assert words[0] == "viewers", words
        assert self.line() == "ready"
        return words[1]

    def close(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout=10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            assert self.process.stdout is not None
            self.process.stdout.close()
        return status


@pytest.fixture
def traced() -> Iterator[list[Traced]]:
    started: list[Traced] = []
    yield started
    for process in started:
        process.close()


def _samples(output: str) -> list[dict[str, str]]:
    found = []
    for line in output.splitlines():
        if line.startswith("#"):
            found.append(dict(word.split("=", 1) for word in line.split()[1:] if "=" in word))
    return found


def _view(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VIEWER, *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def _assert_leak_found(samples: list[dict[str, str]]) -> None:
    assert samples, "no sample"
    # The leak is the top growing site and the leaking handler the top greenlet in
    # most samples (an interval in which the driving client did not run may show none).
    top_sites = [sample.get("top-site") for sample in samples]
    assert top_sites.count(LEAK_SITE) >= len(samples) // 2, top_sites
    top_greenlets = [sample.get("top-greenlet", "") for sample in samples]
    assert sum("leaky_handler" in label for label in top_greenlets) >= len(samples) // 2, top_greenlets
    assert int(samples[-1]["size"]) > 0


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_the_viewer_finds_the_leak(kind: str, traced: list[Traced], tmp_path: Path) -> None:
    where = "tcp://127.0.0.1:0" if kind == "tcp" else f"unix:{tmp_path / 'trace.sock'}"
    process = Traced(f"listen:{where}")
    traced.append(process)
    url = process.viewer_url()
    result = _view("connect", url, "--samples", "12", "--save", str(tmp_path / "trace.gfmt"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("greenflow memtrace: tracing memtrace_leaky.py")
    _assert_leak_found(_samples(result.stdout))

    png = tmp_path / "trace.png"
    report = _view("report", str(tmp_path / "trace.gfmt"), "--png", str(png))
    assert report.returncode == 0, report.stderr
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1000, 800)
    assert process.close() == 0


def test_a_collector_gets_the_leak_and_the_tracer_reconnects(traced: list[Traced], tmp_path: Path) -> None:
    url = f"unix:{tmp_path / 'collector.sock'}"
    first = subprocess.Popen(
        [*VIEWER, "listen", url, "--samples", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
    )
    try:
        assert first.stderr is not None
        assert first.stderr.readline().decode().startswith("greenflow memtrace: listening on unix:")
        process = Traced(url)
        traced.append(process)
        assert process.line() == "ready"
        out, _ = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
    assert first.returncode == 0
    assert len(_samples(out.decode())) == 3
    # The collector went away; a new one at the same address gets records again.
    second = _view("listen", url, "--samples", "12")
    assert second.returncode == 0, second.stderr
    _assert_leak_found(_samples(second.stdout))


def test_the_terminal_ui_appears_and_refreshes(traced: list[Traced]) -> None:
    process = Traced("listen:tcp://127.0.0.1:0")
    traced.append(process)
    url = process.viewer_url()
    pid, master = pty.fork()
    if pid == 0:  # the child: the viewer, its stdout a terminal
        os.environ.update(ENV, COLUMNS="120", LINES="40", TERM="xterm-256color")
        os.execv(sys.executable, [*VIEWER, "connect", url, "--samples", "8"])
    screen = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the viewer exited and the terminal closed
                break
            if not chunk:
                break
            screen += chunk
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 0, screen[-2000:]
    text = screen.decode("utf-8", "replace")
    assert "top growing allocation sites" in text
    assert "top greenlets" in text
    assert "\x1b[" in text  # drawn with escape codes: a terminal UI, not plain lines
    numbers = set(re.findall(r"sample\s+(?:\x1b\[[0-9;]*m)*#(\d+)", text))
    assert len(numbers) >= 5, numbers  # redrawn with every new sample
    assert "memtrace_leaky.py" in text
    assert "leaky_handler" in text


def test_sigusr2_starts_and_stops_tracing(traced: list[Traced], tmp_path: Path) -> None:
    socket_path = tmp_path / "toggle.sock"
    process = Traced(f"listen:unix:{socket_path}", "--signal")
    traced.append(process)
    assert process.line() == "ready"
    assert not socket_path.exists()  # not tracing yet: nobody listens
    process.process.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 20
    while not socket_path.exists():  # nothing to wait on across processes but the socket file
        assert time.monotonic() < deadline, "SIGUSR2 did not start tracing"
        time.sleep(0.01)
    viewer = subprocess.Popen(
        [*VIEWER, "connect", f"unix:{socket_path}", "--plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert viewer.stdout is not None
        assert viewer.stdout.readline().startswith("greenflow memtrace: tracing")
        assert viewer.stdout.readline().startswith("#")
        process.process.send_signal(signal.SIGUSR2)  # off again: END, then EOF
        out, err = viewer.communicate(timeout=20)
    finally:
        if viewer.poll() is None:
            viewer.kill()
            viewer.communicate()
    assert viewer.returncode == 0, err
    assert out.splitlines()[-1] == "greenflow memtrace: the tracer says: tracing stopped"
    assert process.close() == 0


def test_a_forked_child_never_writes_to_the_parents_viewers(traced: list[Traced], tmp_path: Path) -> None:
    process = Traced(f"listen:unix:{tmp_path / 'fork.sock'}", "--fork")
    traced.append(process)
    url = process.viewer_url()
    saved = tmp_path / "fork.gfmt"
    result = _view("connect", url, "--plain", "--save", str(saved))
    assert result.returncode == 0, result.stderr
    assert process.line() == "child tracing=False"
    assert process.line() == "child done"
    assert process.line() == "stopped"
    records = list(memtrace.Decoder().feed(saved.read_bytes()))
    hellos = [record for record in records if isinstance(record, memtrace.Hello)]
    assert len(hellos) == 1 and hellos[0].pid == process.process.pid
    samples = [record for record in records if isinstance(record, memtrace.Sample)]
    seqs = [sample.seq for sample in samples]
    assert seqs == sorted(set(seqs)), seqs  # one writer: no record twice, none out of order
    sites = {f"{site.frames[0][0]}:{site.frames[0][1]}" for sample in samples for site in sample.sites}
    assert CHILD_SITE not in sites
    assert isinstance(records[-1], memtrace.End)


def test_viewer_errors_are_clear(tmp_path: Path) -> None:
    refused = _view("connect", f"unix:{tmp_path / 'nobody.sock'}")
    assert refused.returncode == 1
    assert "cannot connect to unix:" in refused.stderr
    corrupt = tmp_path / "corrupt.gfmt"
    corrupt.write_bytes(memtrace.preamble() + b"\x00\x00\x00\x05\x09abcd")
    bad = _view("report", str(corrupt), "--png", str(tmp_path / "x.png"))
    assert bad.returncode == 2
    assert "bad trace: record type 9 is unknown" in bad.stderr
    newer = tmp_path / "newer.gfmt"
    newer.write_bytes(b"GFMTRACE\x00\x02")
    version = _view("report", str(newer), "--png", str(tmp_path / "x.png"))
    assert version.returncode == 2
    assert "format version 2" in version.stderr
    empty = tmp_path / "empty.gfmt"
    empty.write_bytes(memtrace.preamble())
    nothing = _view("report", str(empty), "--png", str(tmp_path / "x.png"))
    assert nothing.returncode == 1
    assert "holds no sample" in nothing.stderr
    wrong = _view("connect", "http://example.com/")
    assert wrong.returncode == 1
    assert "not a URL memtrace can connect to" in wrong.stderr


def test_greenflow_serve_memtrace_traces_the_server_from_its_start(tmp_path: Path) -> None:
    """`greenflow serve --memtrace listen:URL`: a viewer finds the served handler's leak."""
    viewers = tmp_path / "viewers.sock"
    command = [sys.executable, "-m", "greenflow", "serve", "memtrace_leaky:leaky_handler"]
    command += ["--bind", "tcp://127.0.0.1:0", "--memtrace", f"listen:unix:{viewers}"]
    server = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=SCRIPT.parent,
        env=ENV,
    )
    try:
        assert server.stderr is not None
        line = server.stderr.readline().decode()
        match = re.search(r"listening on tcp://127\.0\.0\.1:(\d+)", line)
        assert match, line
        port = int(match.group(1))
        stop = threading.Event()

        def drive() -> None:  # a client in a thread: this test's hub runs nothing else
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                while not stop.wait(0.001):  # a request a millisecond, as memtrace_leaky.py drives itself
                    client.sendall(b"ping")
                    client.recv(16)

        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        result = _view("connect", f"unix:{viewers}", "--samples", "3", "--plain", timeout=40)
        stop.set()
        driver.join(timeout=10)
        assert result.returncode == 0, result.stderr
        samples = _samples(result.stdout)
        assert samples, result.stdout
        assert any(sample.get("top-site") == LEAK_SITE for sample in samples), samples
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=15)
    assert server.returncode == 0
