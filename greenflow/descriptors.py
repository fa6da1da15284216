"""The engine of every flow over operating-system descriptors.

A :class:`DescriptorFlow` owns non-blocking descriptors and makes the system
calls itself: it tries the call, and only when the kernel says ``EAGAIN`` does
it park the greenlet on a libev I/O watcher until the descriptor is ready.
That is what gevent's own socket does too, minus the per-call overhead the
performance notes measured (``sendall`` querying ``SO_SNDBUF`` on every call,
``sendmsg`` giving up after one wait).

Memory per idle flow is kept small on purpose: no read buffer is held
(``read`` asks the kernel for a fresh ``bytes`` of at most ``max_bytes``;
``read_into`` fills the caller's buffer), and the two watchers are made the
first time the flow has to wait.

Waking blocked greenlets: ``close()`` and ``shutdown("read")`` throw a private
exception into the greenlet parked on a watcher (``hub.cancel_wait``); the call
turns it into :class:`ClosedError` or EOF. The descriptors are closed only
after every watcher on them has been stopped, so libev never polls a closed
descriptor.

OS errors become flow errors in one place, :func:`broken_error`.

A flow owns its descriptors. One closed behind its back while a greenlet
waits on it is not noticed (the kernel drops it from epoll without a word):
only ``close()`` or the flow's timeout ends that wait. A call that starts
afterwards gets ``EBADF``, which becomes :class:`BrokenError`.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable
from typing import Any, NoReturn, Protocol

from gevent import get_hub as _get_hub

from .errors import BrokenError, ClosedError, FlowError, FlowTimeout
from .flow import (
    DEFAULT_READ_SIZE,
    MAX_READ_SIZE,
    Buffer,
    Flow,
    FlowAttributes,
    Shutdown,
    begin_shutdown,
    check_bytes_like,
    check_max_bytes,
    check_timeout,
    closed_error,
    log,
    refuse_read,
    refuse_write,
    start_timer,
)

__all__ = ["DescriptorFlow", "broken_error"]

_READ = 1  # libev's EV_READ
_WRITE = 2  # libev's EV_WRITE
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)  # no SIGPIPE on a dead peer
try:
    _IOV_MAX = os.sysconf("SC_IOV_MAX")
except (AttributeError, ValueError, OSError):  # pragma: no cover - not Linux
    _IOV_MAX = 1024
#: writev joins the buffers into one send below this total size: a copy of a
#: few KiB is cheaper than the gather bookkeeping (performance notes, point 2).
_JOIN_BELOW = 4096


class _WokenByClose(Exception):
    """Thrown into a greenlet parked on a watcher when the flow is closed."""


class _WokenByReadShutdown(Exception):
    """Thrown into a parked reader when this side shuts down reading."""


class _Transport(Protocol):
    """The data calls a descriptor flow makes, named and shaped as a socket's."""

    def recv(self, size: int, /) -> bytes: ...

    def recv_into(self, buffer: bytearray | memoryview, /) -> int: ...

    def send(self, data: Buffer, flags: int, /) -> int: ...

    def sendmsg(self, buffers: list[memoryview], ancdata: tuple[()], flags: int, /) -> int: ...


class DescriptorFlow(FlowAttributes, Flow):
    """A flow over non-blocking descriptors whose system calls it makes itself.

    The machinery shared by :class:`~greenflow.SocketFlow` and
    :class:`~greenflow.PipeFlow`: the busy checks, sticky errors, per-call
    timers, and waking parked greenlets on ``close`` and ``shutdown("read")``.
    Subclasses provide the transport (an object with ``recv``, ``recv_into``,
    ``send`` and ``sendmsg`` as a socket has them), the descriptor to wait on
    for each direction, and how to end writing and release everything.
    """

    __slots__ = (
        "_closed",
        "_fd",
        "_hub",
        "_read_eof",
        "_read_error",
        "_read_watcher",
        "_reading",
        "_sock",
        "_timeout",
        "_write_error",
        "_write_fd",
        "_write_shut",
        "_write_watcher",
        "_writing",
    )

    def __init__(self, transport: _Transport, read_fd: int, write_fd: int, timeout: float | None) -> None:
        self._sock = transport
        self._fd = read_fd
        self._write_fd = write_fd
        self._hub = _get_hub()
        self._read_watcher: Any = None
        self._write_watcher: Any = None
        self._timeout = check_timeout(timeout)
        self._closed = False
        self._reading = False
        self._writing = False
        self._read_eof = False  # EOF seen, or this side shut down reading
        self._write_shut = False
        self._read_error: BrokenError | None = None
        self._write_error: BrokenError | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fd}"
        return f"<{type(self).__name__} {state} {self._describe()}>"

    # -- reading ---------------------------------------------------------------

    def read(self, max_bytes: int | None = None) -> bytes:
        size = DEFAULT_READ_SIZE if max_bytes is None else min(check_max_bytes(max_bytes), MAX_READ_SIZE)
        if self._reading or self._closed or self._read_eof or self._read_error:
            if self._enter_read("read"):
                return b""
        self._reading = True
        timer = None
        try:
            while True:
                try:
                    data = self._sock.recv(size)
                except BlockingIOError:
                    if timer is None and self._timeout is not None:
                        timer = start_timer(self._timeout, "read")
                    if self._wait_readable():
                        return b""
                    continue
                except InterruptedError:
                    continue
                except OSError as exc:
                    raise self._read_failed(exc) from exc
                if not data:
                    self._read_eof = True
                return data
        finally:
            self._reading = False
            if timer is not None:
                timer.close()

    def read_into(self, buffer: bytearray | memoryview) -> int:
        if not buffer:
            raise ValueError("read_into needs a buffer with room for at least one byte")
        if self._reading or self._closed or self._read_eof or self._read_error:
            if self._enter_read("read_into"):
                return 0
        self._reading = True
        timer = None
        try:
            while True:
                try:
                    count = self._sock.recv_into(buffer)
                except BlockingIOError:
                    if timer is None and self._timeout is not None:
                        timer = start_timer(self._timeout, "read_into")
                    if self._wait_readable():
                        return 0
                    continue
                except InterruptedError:
                    continue
                except OSError as exc:
                    raise self._read_failed(exc) from exc
                if not count:
                    if not memoryview(buffer).nbytes:  # len() > 0 but no bytes: not EOF
                        raise ValueError("read_into needs a buffer with room for at least one byte")
                    self._read_eof = True
                return count
        finally:
            self._reading = False
            if timer is not None:
                timer.close()

    def _enter_read(self, what: str) -> bool:
        """The slow checks before a read; True means "return EOF now"."""
        return refuse_read(
            what, closed=self._closed, reading=self._reading, at_eof=self._read_eof, error=self._read_error
        )

    def _wait_readable(self) -> bool:
        """Park until the fd is readable; True means reading was shut down."""
        watcher = self._read_watcher
        if watcher is None:
            watcher = self._read_watcher = self._hub.loop.io(self._fd, _READ)
        try:
            self._hub.wait(watcher)
        except _WokenByClose:
            raise closed_error("read") from None
        except _WokenByReadShutdown:
            return True
        # The descriptor may have become ready in the same loop turn in which
        # another greenlet closed the flow or shut down reading, before the
        # wake-up callback ran: the flags, not the watcher, have the last word.
        if self._closed:
            raise closed_error("read")
        return self._read_eof

    def _read_failed(self, exc: OSError) -> FlowError:
        if self._closed:
            return closed_error("read")
        error = self._broken(exc, "reading")
        self._read_error = error
        return error

    # -- writing ---------------------------------------------------------------

    def write(self, data: Buffer) -> None:
        if self._writing or self._closed or self._write_shut or self._write_error:
            self._enter_write("write")
        if type(data) is not bytes:
            data = check_bytes_like(data)
        self._write_bytes(data)

    def writev(self, buffers: Iterable[Buffer]) -> None:
        if self._writing or self._closed or self._write_shut or self._write_error:
            self._enter_write("writev")
        if type(buffers) is not list and type(buffers) is not tuple:
            buffers = list(buffers)
        total = 0
        for buffer in buffers:
            total += len(buffer)  # items, not bytes, for odd formats: it only picks the path
        if total < _JOIN_BELOW:
            # A small message: one copy and one send beat gather I/O.
            try:
                data = b"".join(buffers)
            except TypeError:  # a strided view, or not bytes-like: say which
                data = b"".join([check_bytes_like(b) for b in buffers])
            self._write_bytes(data)
            return
        views = [check_bytes_like(b) for b in buffers]
        self._writing = True
        try:
            self._sendmsg_all(views)
        except BaseException as exc:
            error = self._write_interrupted(exc)
            if error is exc:
                raise
            raise error from exc
        finally:
            self._writing = False

    def _write_bytes(self, data: bytes | memoryview) -> None:
        """Send all of ``data`` (a flat byte view): try once, then wait and loop."""
        self._writing = True
        try:
            try:
                sent = self._sock.send(data, _NOSIGNAL)
            except BlockingIOError:
                sent = 0
            if sent != len(data):
                self._send_rest(memoryview(data)[sent:], "write")
        except BaseException as exc:
            error = self._write_interrupted(exc)
            if error is exc:
                raise
            raise error from exc
        finally:
            self._writing = False

    def _enter_write(self, what: str) -> NoReturn:
        refuse_write(
            what, closed=self._closed, writing=self._writing, shut=self._write_shut, error=self._write_error
        )

    def _send_rest(self, view: memoryview, what: str) -> None:
        timer = None
        try:
            while view:
                try:
                    sent = self._sock.send(view, _NOSIGNAL)
                except BlockingIOError:
                    if timer is None and self._timeout is not None:
                        timer = start_timer(self._timeout, what)
                    self._wait_writable()
                    continue
                except InterruptedError:
                    continue
                view = view[sent:]
        finally:
            if timer is not None:
                timer.close()

    def _sendmsg_all(self, views: list[memoryview]) -> None:
        # gevent's sendmsg tries once, waits once and may return a short
        # count; this loop owns the retries, drops what was sent and slices
        # the first buffer that was sent in part.
        timer = None
        first = 0
        try:
            while first < len(views):
                batch = views[first : first + _IOV_MAX]
                try:
                    sent = self._sock.sendmsg(batch, (), _NOSIGNAL)
                except BlockingIOError:
                    if timer is None and self._timeout is not None:
                        timer = start_timer(self._timeout, "writev")
                    self._wait_writable()
                    continue
                except InterruptedError:
                    continue
                while first < len(views) and sent >= len(views[first]):
                    sent -= len(views[first])
                    first += 1
                if sent:
                    views[first] = views[first][sent:]
        finally:
            if timer is not None:
                timer.close()

    def _wait_writable(self) -> None:
        watcher = self._write_watcher
        if watcher is None:
            watcher = self._write_watcher = self._hub.loop.io(self._write_fd, _WRITE)
        try:
            self._hub.wait(watcher)
        except _WokenByClose:
            raise closed_error("write") from None
        if self._closed:  # closed in the turn the descriptor became ready
            raise closed_error("write")

    def _write_interrupted(self, exc: BaseException) -> BaseException:
        """Mark the writing direction broken after a write that did not finish.

        Returns what the write raises: ``ClosedError`` if this side closed the
        flow, a ``BrokenError`` for an OS error, and otherwise (timeouts,
        kills) the interrupting exception itself.
        """
        if self._closed:
            return exc if isinstance(exc, ClosedError) else closed_error("write")
        if isinstance(exc, OSError) and not isinstance(exc, FlowError):
            error = self._broken(exc, "writing to")
            self._write_error = error
            return error
        if self._write_error is None:
            kind = "timed out" if isinstance(exc, FlowTimeout) else f"was interrupted ({type(exc).__name__})"
            self._write_error = BrokenError(f"a write {kind} and may have sent part of its data")
        return exc

    # -- ending ----------------------------------------------------------------

    def shutdown(self, how: Shutdown | str = Shutdown.WRITE) -> None:
        how = begin_shutdown(how, closed=self._closed, writing=self._writing, write_shut=self._write_shut)
        if how.writes and not self._write_shut:
            self._write_shut = True
            try:
                self._end_writing()
            except OSError as exc:
                error = self._broken(exc, "shutting down writing on")
                self._write_error = error
                raise error from exc
        if how.reads and not self._read_eof:
            self._read_eof = True
            if self._reading and self._read_watcher is not None:
                self._hub.cancel_wait(self._read_watcher, _WokenByReadShutdown)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        watchers = (self._read_watcher, self._write_watcher)
        self._read_watcher = self._write_watcher = None
        try:
            # The descriptors are closed only once the watchers on them are.
            self._hub.cancel_waits_close_and_then(watchers, _WokenByClose, self._release_quietly)
        except Exception as exc:  # pragma: no cover - defensive: close never raises
            log.debug("closing %r failed: %s", self, exc)

    def _end_writing(self) -> None:
        """Tell the peer no more data comes (a FIN, or closing a pipe's end)."""
        raise NotImplementedError

    def _release_quietly(self) -> None:
        # Runs in a hub callback when a greenlet was parked: an error here
        # must be logged, as close() promises, not printed by the hub.
        try:
            self._release()
        except Exception as exc:
            log.debug("closing the descriptors of %r failed: %s", self, exc)

    def _release(self) -> None:
        """Close the descriptors; called once, after the watchers are stopped."""
        raise NotImplementedError

    # -- errors ----------------------------------------------------------------

    def _broken(self, exc: OSError, doing: str) -> BrokenError:
        """Translate an OS error into the flow error that describes it."""
        return broken_error(exc, f"{doing} {self._describe()}")

    def _describe(self) -> str:
        """Names the flow in error messages."""
        return "the flow"


def broken_error(exc: OSError, context: str) -> BrokenError:
    """The one place an OS error becomes a :class:`BrokenError`.

    The message names what was being done and what the kernel said, and
    ``errno`` is kept so legacy code that looks at it still can.
    """
    reasons = {
        errno.ECONNRESET: "the peer reset the connection",
        errno.EPIPE: "the peer has closed the connection",
        errno.ECONNABORTED: "the connection was aborted",
        errno.ETIMEDOUT: "the connection timed out in the kernel",
        errno.EBADF: "the descriptor was closed behind the flow's back",
        errno.ENOTCONN: "the socket is not connected",
        errno.ECONNREFUSED: "the connection was refused",
        errno.EHOSTUNREACH: "the host is unreachable",
        errno.ENETUNREACH: "the network is unreachable",
    }
    reason = reasons.get(exc.errno or 0) or exc.strerror or str(exc)
    error = BrokenError(f"{context} failed: {reason}")
    error.errno = exc.errno
    return error
