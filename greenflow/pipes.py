"""Flows over a pair of descriptors: pipes, FIFOs, a child's stdin and stdout.

A socket carries both directions on one descriptor and half-closes with a
FIN. Anything else that streams (a pipe, a FIFO, a character device) carries
one direction per descriptor, and the writer tells the reader "no more data"
by closing its end. :class:`PipeFlow` joins two such descriptors into one
flow: it reads from one, writes to the other, and ``shutdown("write")``
closes the writing descriptor, so the reader on the other side sees EOF.

Both descriptors are switched to non-blocking mode. For descriptors shared
with other processes (a terminal's stdin and stdout) that mode is shared too;
that is how every event loop on POSIX works with them, and why a flow should
own descriptors it was given rather than borrow them.

A write to a pipe whose reader has gone fails with ``EPIPE``, which becomes
:class:`~greenflow.BrokenError`. Python ignores SIGPIPE by default; a program
that restores its default action would be killed instead, as with ``os.write``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from .descriptors import DescriptorFlow
from .flow import Buffer
from .kit import check_timeout
from .scope import Scope, joined, joined_pair

__all__ = ["PipeFlow", "from_pipes", "pipe_pair"]


class _PipeEnds:
    """The two descriptors, with the data calls named as a socket's."""

    __slots__ = ("read_fd", "write_fd")

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd

    def recv(self, size: int, /) -> bytes:
        return os.read(self.read_fd, size)

    def recv_into(self, buffer: bytearray | memoryview, /) -> int:
        return os.readv(self.read_fd, [buffer])

    def send(self, data: Buffer, flags: int, /) -> int:
        return os.write(self.write_fd, data)

    def sendmsg(self, buffers: Sequence[Buffer], ancdata: tuple[()], flags: int, /) -> int:
        return os.writev(self.write_fd, buffers)


class PipeFlow(DescriptorFlow):
    """A flow that reads one descriptor and writes another, and owns both.

    Made by :func:`from_pipes` and :func:`pipe_pair`. The contract is
    :class:`~greenflow.Flow`'s; this class adds:

    - ``shutdown("write")`` closes the writing descriptor at once, which is
      how a pipe signals EOF; ``close()`` closes whatever is still open.
    - ``read_into`` reads straight into the caller's buffer (``readv``) and
      ``writev`` uses ``writev`` gather I/O.
    - It has no addresses: ``local_address`` and ``peer_address`` are None.
    """

    __slots__ = ("_ends",)

    def __init__(self, read_fd: int, write_fd: int, *, timeout: float | None = None) -> None:
        """Take ownership of ``read_fd`` and ``write_fd``; prefer :func:`from_pipes`."""
        ends = _PipeEnds(read_fd, write_fd)
        super().__init__(ends, read_fd, write_fd, timeout)
        self._ends = ends

    @property
    def read_fd(self) -> int:
        """The descriptor this flow reads from (-1 once closed)."""
        return -1 if self.closed else self._ends.read_fd

    @property
    def write_fd(self) -> int:
        """The descriptor this flow writes to (-1 once shut down or closed)."""
        return -1 if self.closed else self._ends.write_fd

    def _end_writing(self) -> None:
        # No writer can be parked (shutdown refuses while one writes), so the
        # write watcher is idle: drop it before its descriptor goes.
        watcher, self._write_watcher = self._write_watcher, None
        if watcher is not None:
            watcher.close()
        fd, self._ends.write_fd = self._ends.write_fd, -1
        os.close(fd)

    def _release(self) -> None:
        try:
            os.close(self._ends.read_fd)
        finally:
            if self._ends.write_fd != -1:  # not closed by shutdown("write")
                os.close(self._ends.write_fd)

    def _describe(self) -> str:
        return f"the pipe flow (reading fd {self._ends.read_fd}, writing fd {self._ends.write_fd})"


def from_pipes(
    read_fd: int, write_fd: int, *, timeout: float | None = None, scope: Scope | None = None
) -> PipeFlow:
    """Join a descriptor to read and one to write into one flow, which owns both.

    Typical uses: the ``stdout`` and ``stdin`` pipes of a child process, a pair
    of FIFOs, or this process's own stdin and stdout (``from_pipes(0, 1)``).
    Both descriptors are made non-blocking.

    Raises:
        ValueError: the two are the same descriptor (one descriptor cannot
            half-close: use :func:`~greenflow.from_fd` for a socket), or one
            is a regular file or a directory, which cannot be waited on.
    """
    check_timeout(timeout)
    if read_fd == write_fd:
        raise ValueError(
            f"from_pipes needs two descriptors, got {read_fd} twice; a socket goes to greenflow.from_fd"
        )
    for fd in (read_fd, write_fd):
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
            raise ValueError(
                f"descriptor {fd} is a file, not a stream: it is always ready, so it cannot be waited on"
            )
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    return joined(PipeFlow(read_fd, write_fd, timeout=timeout), scope)


def pipe_pair(*, timeout: float | None = None, scope: Scope | None = None) -> tuple[PipeFlow, PipeFlow]:
    """Return two flows connected to each other through two pipes."""
    check_timeout(timeout)
    left_read, right_write = os.pipe()
    right_read, left_write = os.pipe()
    pair = (
        from_pipes(left_read, left_write, timeout=timeout),
        from_pipes(right_read, right_write, timeout=timeout),
    )
    return joined_pair(pair, scope)
