"""``greenflow connect`` shows a transfer's progress on stderr when stderr is a terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import gevent.subprocess
import pytest

import greenflow
from greenflow.cli._progress import Progress, human_bytes
from greenflow.handlers import echo

REPO = Path(__file__).parent.parent
ENV = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")


def _connect_with_a_terminal_stderr(url: str, data: bytes, *extra: str) -> tuple[bytes, str]:
    """Run connect, stderr on a pseudo-terminal; return its stdout and what the terminal showed."""
    controller, terminal = pty.openpty()
    try:
        process = gevent.subprocess.Popen(
            [sys.executable, "-m", "greenflow", "connect", url, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=terminal,
            env=ENV,
        )
        os.close(terminal)
        terminal = -1
        out, _ = process.communicate(data, timeout=30)
        assert process.returncode == 0
        os.set_blocking(controller, False)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except (BlockingIOError, OSError):  # EIO once the child's end is closed
                break
            if not chunk:
                break
            shown += chunk
        return out, shown.decode()
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)


@pytest.mark.parametrize("choice", ["auto", "never"])
def test_progress_on_a_terminal(choice: str) -> None:
    data = os.urandom(3 << 20)
    with greenflow.Server(echo, "tcp://127.0.0.1:0") as server:
        port = server.addresses[0][1]
        out, shown = _connect_with_a_terminal_stderr(f"tcp://127.0.0.1:{port}", data, "--progress", choice)
    assert out == data
    if choice == "auto":
        assert "sent 3.0 MiB, received 3.0 MiB" in shown, shown
        assert "/s" in shown and shown.endswith("\n")
    else:
        assert "sent" not in shown


def test_no_progress_when_stderr_is_a_pipe() -> None:
    with greenflow.Server(echo, "tcp://127.0.0.1:0") as server:
        port = server.addresses[0][1]
        result = gevent.subprocess.run(
            [sys.executable, "-m", "greenflow", "connect", f"tcp://127.0.0.1:{port}"],
            input=b"hello",
            capture_output=True,
            env=ENV,
            timeout=30,
        )
    assert result.stdout == b"hello"
    assert b"sent" not in result.stderr


def test_human_bytes_and_the_line() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 << 20) == "3.0 MiB"
    assert human_bytes(5 << 50) == "5120.0 TiB"
    counting = Progress(None)
    counting.sent, counting.received = 2048, 1
    assert counting.line().startswith("sent 2.0 KiB, received 1 B, ")
    with counting:  # with no stream it draws nothing and raises nothing
        pass
