"""Pipe flows: the contract over two pipes, and real children as peers."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import gevent
import pytest

import greenflow
from greenflow import BrokenError, PipeFlow
from greenflow.testing import check_flow_pair


def _clogged_pipe_pair() -> tuple[PipeFlow, PipeFlow]:
    a, b = greenflow.pipe_pair()
    for flow in (a, b):
        try:
            while True:
                os.write(flow.write_fd, b"\0" * 65536)
        except BlockingIOError:
            pass
    return a, b


@pytest.mark.timeout(120)
def test_conformance() -> None:
    check_flow_pair(greenflow.pipe_pair, _clogged_pipe_pair)


def test_shutdown_write_closes_the_descriptor() -> None:
    a, b = greenflow.pipe_pair()
    with a, b:
        fd = a.write_fd
        a.shutdown("write")
        assert a.write_fd == -1
        with pytest.raises(OSError):
            os.fstat(fd)
        assert b.read() == b""
        b.write(b"still flows back")
        assert a.read() == b"still flows back"
    assert a.read_fd == -1


def test_cat_child_as_the_peer() -> None:
    # The child's stdin is our writing end, its stdout our reading end.
    to_child_read, to_child_write = os.pipe()
    from_child_read, from_child_write = os.pipe()
    child = subprocess.Popen(["cat"], stdin=to_child_read, stdout=from_child_write)
    os.close(to_child_read)
    os.close(from_child_write)
    try:
        with greenflow.from_pipes(from_child_read, to_child_write, timeout=10) as flow:
            data = os.urandom(1_000_000)  # more than a pipe holds: reader and writer must overlap
            sending = gevent.spawn(lambda: (flow.write(data), flow.shutdown("write")))
            received = bytearray()
            while chunk := flow.read():
                received += chunk
            sending.get(timeout=10)
            assert received == data  # cat saw our EOF, finished, and closed its stdout
        assert child.wait(timeout=10) == 0
    finally:
        child.kill()
        child.wait()


def test_child_serving_its_own_stdio() -> None:
    script = """
import greenflow
flow = greenflow.from_pipes(0, 1)
while data := flow.read():
    flow.write(data.upper())
flow.close()
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        out, _ = child.communicate(b"shout this\n" * 1000, timeout=30)
        assert out == b"SHOUT THIS\n" * 1000
        assert child.returncode == 0
    finally:
        child.kill()
        child.wait()


def test_reader_gone_is_broken() -> None:
    read_end, write_end = os.pipe()
    other_read, other_write = os.pipe()
    flow = greenflow.from_pipes(other_read, write_end)
    os.close(read_end)
    with flow, pytest.raises(BrokenError, match="peer has closed") as caught:
        flow.write(b"nobody reads")
    os.close(other_write)
    assert caught.value.errno is not None


def test_refuses_one_descriptor_twice_and_files() -> None:
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(ValueError, match="two descriptors"):
            greenflow.from_pipes(read_end, read_end)
        with tempfile.TemporaryFile() as regular, pytest.raises(ValueError, match="is a file"):
            greenflow.from_pipes(read_end, regular.fileno())
    finally:
        os.close(read_end)
        os.close(write_end)


def test_no_addresses() -> None:
    a, b = greenflow.pipe_pair()
    with a, b:
        assert a.local_address is None and a.peer_address is None
        assert "pipe flow" in repr(a)


def test_close_closes_the_write_end_even_when_the_read_end_fails() -> None:
    a, b = greenflow.pipe_pair()
    with b:
        read_fd, write_fd = a.read_fd, a.write_fd
        os.close(read_fd)  # behind the flow's back: closing it again fails
        a.close()
        with pytest.raises(OSError):
            os.fstat(write_fd)  # not leaked
