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
import logging
import os
import socket
from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol

import gevent
from gevent import get_hub as _get_hub

from .errors import BrokenError, FlowError
from .flow import DEFAULT_READ_SIZE, Buffer, Shutdown
from .kit import (
    Direction,
    DirectionState,
    FlowBase,
    check_buffers,
    check_bytes_like,
    check_read_size,
    check_writable_buffer,
    closed_error,
    reraise,
)

log = logging.getLogger("greenflow")

__all__ = ["DescriptorFlow", "broken_error", "wait_ready"]

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
#: A read of this many bytes or more means a transfer is streaming in: the
#: next read tries the system call before it waits (``_wait_first``).
_STREAMING = 4096
_OPEN: Final = DirectionState.OPEN
_CLOSED: Final = DirectionState.CLOSED
_SHUT: Final = DirectionState.SHUT


class _WokenByClose(Exception):
    """Thrown into a greenlet parked on a watcher when the flow is closed."""


class _WokenByReadShutdown(Exception):
    """Thrown into a parked reader when this side shuts down reading."""


class _Transport(Protocol):
    """The data calls a descriptor flow makes, named and shaped as a socket's."""

    def recv(self, size: int, /) -> bytes: ...

    def recv_into(self, buffer: bytearray | memoryview, /) -> int: ...

    def send(self, data: Buffer, flags: int, /) -> int: ...

    def sendmsg(self, buffers: Sequence[Buffer], ancdata: tuple[()], flags: int, /) -> int: ...


class DescriptorFlow(FlowBase):
    """A flow over non-blocking descriptors whose system calls it makes itself.

    The machinery shared by :class:`~greenflow.SocketFlow` and
    :class:`~greenflow.PipeFlow`: the system calls and their waits, and
    waking parked greenlets on ``close`` and ``shutdown("read")``; the state
    of each direction, its busy guard and its timer are a
    :class:`~greenflow.kit.Direction`. Subclasses provide the transport (an
    object with ``recv``, ``recv_into``, ``send`` and ``sendmsg`` as a socket
    has them), the descriptor to wait on for each direction, and how to end
    writing and release everything.
    """

    __slots__ = ("_fd", "_hub", "_read_watcher", "_sock", "_starved", "_write_fd", "_write_watcher")

    def __init__(self, transport: _Transport, read_fd: int, write_fd: int, timeout: float | None) -> None:
        super().__init__(timeout=timeout)
        self._sock = transport
        self._starved = 0  # see _wait_first
        self._fd = read_fd
        self._write_fd = write_fd
        self._hub = _get_hub()
        self._read_watcher: Any = None
        self._write_watcher: Any = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<{type(self).__name__} {state} {self._describe()}>"

    # -- reading ---------------------------------------------------------------

    # The three data calls take and leave their direction inline (the kit's
    # rules, without the method calls): on a 64-byte round trip those calls
    # measured 8% (benchmarks.compare against 10c0836, ping-pong 0.916).

    def read(self, max_bytes: int | None = None) -> bytes:
        size = DEFAULT_READ_SIZE if max_bytes is None else check_read_size(max_bytes)
        reader = self._reader
        if reader.busy or reader.state is not _OPEN:
            if reader.refuse("read"):  # it raises, or takes the direction, or says EOF
                return b""
        else:
            reader.busy = True
        try:
            if self._starved and self._wait_first("read"):
                return b""
            while True:
                try:
                    data = self._sock.recv(size)
                except BlockingIOError:
                    self._starved = 1
                    data = None  # parked outside the handler, which would keep the error alive meanwhile
                except InterruptedError:
                    continue
                except OSError as exc:
                    raise self._read_failed(exc, "read") from exc
                if data is None:
                    if self._park("read"):
                        return b""
                    continue
                if not data:
                    reader.end()
                elif len(data) >= _STREAMING:
                    self._starved = 0
                elif len(data) < size and not self._starved:
                    self._starved = 1  # a short read took all there was
                return data
        finally:
            reader.busy = False
            if reader.timer is not None:
                reader.leave()

    def read_into(self, buffer: bytearray | memoryview) -> int:
        reader = self._reader
        if reader.busy or reader.state is not _OPEN:
            check_writable_buffer(buffer)  # misuse is refused first, at EOF and once closed too
            if reader.refuse("read_into"):
                return 0
        else:
            reader.busy = True
        try:
            if self._starved and self._wait_first("read_into"):
                return 0
            while True:
                try:
                    count = self._sock.recv_into(buffer)
                except BlockingIOError:
                    self._starved = 1
                    count = -1  # parked outside the handler (as in read)
                except InterruptedError:
                    continue
                except (TypeError, BufferError):
                    # The system call refused the buffer before taking any
                    # data: not a writable buffer (raises here), or strided.
                    return self._read_copied(check_writable_buffer(buffer))
                except OSError as exc:
                    raise self._read_failed(exc, "read_into") from exc
                if count < 0:
                    if self._park("read_into"):
                        return 0
                    continue
                if not count:
                    if not buffer or not memoryview(buffer).nbytes:  # no room: not EOF
                        raise ValueError("read_into needs a buffer with room for at least one byte")
                    reader.end()
                elif count >= _STREAMING:
                    self._starved = 0
                elif count < len(buffer) and not self._starved:
                    self._starved = 1  # a short read took all there was
                return count
        finally:
            reader.busy = False
            if reader.timer is not None:
                reader.leave()

    def _read_copied(self, view: memoryview) -> int:
        """``read_into`` a strided view, which no system call fills: read, then copy."""
        while True:
            try:
                data = self._sock.recv(min(view.nbytes, DEFAULT_READ_SIZE))
            except BlockingIOError:
                data = None  # parked outside the handler (as in read)
            except InterruptedError:
                continue
            except OSError as exc:
                raise self._read_failed(exc, "read_into") from exc
            if data is None:
                if self._park("read_into"):
                    return 0
                continue
            if not data:
                self._reader.end()
            view[: len(data)] = data
            return len(data)

    def _wait_first(self, what: str) -> bool:
        """For a starved reader: wait for data before trying to read it.

        A read tries the system call first, and waits only when it finds
        nothing (``EAGAIN``). In a request/response exchange it always finds
        nothing: the answer is still on its way. So a flow whose last try
        found nothing, or whose last read was short and small (it took all
        there was), is *starved*, and its next reads wait first, sparing a
        system call and an exception each (and a parked reader keeps no
        exception's frame alive). Every eighth read of a starved
        flow tries first anyway, to notice that data now waits; a read that
        brings a block of :data:`_STREAMING` bytes or more ends the state
        (a transfer is streaming in). True means reading was shut down.
        """
        starved = self._starved
        if starved & 7:
            self._starved = starved + 1
            return self._park(what)
        self._starved = 0  # this one tries first; EAGAIN makes it starved again
        return False

    def _park(self, what: str) -> bool:
        """Wait until the fd is readable; True means reading was shut down meanwhile."""
        reader = self._reader
        if self._timeout is not None and reader.timer is None:
            reader.arm(self._timeout, what)
        watcher = self._read_watcher
        if watcher is None:
            watcher = self._read_watcher = self._hub.loop.io(self._fd, _READ)
        try:
            self._hub.wait(watcher)
        except _WokenByClose:
            raise closed_error(what) from None
        except _WokenByReadShutdown:
            return True
        # The descriptor may have become ready in the same loop turn in which
        # another greenlet closed the flow or shut down reading, before the
        # wake-up callback ran: the state, not the watcher, has the last word.
        state = reader.state
        if state is _CLOSED:
            raise closed_error(what)
        return state is _SHUT

    def _read_failed(self, exc: OSError, what: str) -> FlowError:
        reader = self._reader
        if reader.state is _CLOSED:
            return closed_error(what)
        return reader.fail(self._broken(exc, "reading"))

    # -- writing ---------------------------------------------------------------

    def write(self, data: Buffer) -> None:
        writer = self._writer
        if writer.busy or writer.state is not _OPEN:
            writer.refuse("write")  # raises, or takes the direction
        else:
            writer.busy = True
        try:
            if type(data) is not bytes:
                data = check_bytes_like(data)  # TypeError: nothing was sent
            try:  # the common case, all at once, without a call more
                sent = self._sock.send(data, _NOSIGNAL)
            except BlockingIOError:
                sent = 0
            except BaseException as exc:
                reraise(exc, self._write_interrupted(writer, exc, "write"))
            if sent != len(data):
                self._send(writer, memoryview(data)[sent:], "write", not sent)
        finally:
            writer.busy = False
            if writer.timer is not None:
                writer.leave()

    def writev(self, buffers: Iterable[Buffer]) -> None:
        writer = self._writer
        if writer.busy or writer.state is not _OPEN:
            writer.refuse("writev")  # raises, or takes the direction
        else:
            writer.busy = True
        try:
            if type(buffers) is not list and type(buffers) is not tuple:
                buffers = check_buffers(buffers)
            try:
                # Items, not bytes, for odd formats: the total only picks the path.
                total = sum(map(len, buffers))
            except TypeError:
                buffers = check_buffers(buffers)  # raises for what is not bytes-like
                total = sum(map(len, buffers))
            if total < _JOIN_BELOW:
                # A small message: one copy and one send beat gather I/O.
                try:
                    data = b"".join(buffers)
                except TypeError:  # a strided view: check_buffers copies it
                    data = b"".join(check_buffers(buffers))
                try:  # the common case, all at once, without a call more
                    sent = self._sock.send(data, _NOSIGNAL)
                except BlockingIOError:
                    sent = 0
                except BaseException as exc:
                    reraise(exc, self._write_interrupted(writer, exc, "writev"))
                if sent != len(data):
                    self._send(writer, memoryview(data)[sent:], "writev", not sent)
            else:
                self._gather(writer, buffers, total)
        finally:
            writer.busy = False
            if writer.timer is not None:
                writer.leave()

    def _gather(self, writer: Direction, buffers: Sequence[Buffer], total: int) -> None:
        """A large ``writev``: one ``sendmsg`` of the caller's buffers, the common case."""
        # bytes and bytearray: their lengths are byte counts, and the system
        # call takes them as they are. Anything else is checked and made a
        # flat byte view first.
        for item in buffers:
            kind = type(item)
            if kind is not bytes and kind is not bytearray:
                buffers = check_buffers(buffers)
                total = sum(map(len, buffers))
                break
        blocked = False
        try:
            sent = self._sock.sendmsg(buffers, (), _NOSIGNAL) if len(buffers) <= _IOV_MAX else 0
        except BlockingIOError:
            sent, blocked = 0, True
        except BaseException as exc:
            reraise(exc, self._write_interrupted(writer, exc, "writev"))
        if sent != total:
            self._send_views(writer, [memoryview(b).cast("B") for b in buffers], sent, blocked)

    def _send(self, writer: Direction, data: bytes | memoryview, what: str, waiting: bool = False) -> None:
        """Send all of ``data`` (a flat byte view): try once, then wait and loop.

        ``waiting``: the caller's own try found the socket full (it refused
        the bytes: ``EAGAIN``), so wait before trying again: a retry at once
        would only fail again, at the cost of a system call. After a short
        send the loop retries at once, as space may have freed meanwhile.
        """
        send = self._sock.send
        try:
            sent = 0
            if not waiting:
                try:
                    sent = send(data, _NOSIGNAL)
                except BlockingIOError:
                    waiting = True
                if sent == len(data):
                    return
            view = memoryview(data)[sent:]
            while view:
                if waiting:
                    writer.arm(self._timeout, what)
                    self._wait_writable(what)
                try:
                    sent = send(view, _NOSIGNAL)
                except BlockingIOError:
                    waiting = True
                    continue
                except InterruptedError:
                    waiting = False
                    continue
                view = view[sent:]
                waiting = False  # a short send: space may free up at once (loopback ACKs)
        except BaseException as exc:
            reraise(exc, self._write_interrupted(writer, exc, what))

    def _send_views(self, writer: Direction, views: list[memoryview], sent: int, blocked: bool) -> None:
        # The rest of a gather write whose first ``sent`` bytes went out, and
        # whether the socket refused the last try (EAGAIN: wait before the
        # next; after a short send, retry at once, as _send does): this loop
        # owns the retries, drops what was sent and slices the first buffer
        # that was sent in part.
        first = 0
        try:
            while True:
                while first < len(views) and sent >= len(views[first]):
                    sent -= len(views[first])
                    first += 1
                if first == len(views):
                    return
                if sent:
                    views[first] = views[first][sent:]
                if blocked:
                    writer.arm(self._timeout, "writev")
                    self._wait_writable("writev")
                try:
                    sent = self._sock.sendmsg(views[first : first + _IOV_MAX], (), _NOSIGNAL)
                    blocked = False
                except BlockingIOError:
                    sent, blocked = 0, True
                except InterruptedError:
                    sent, blocked = 0, False
        except BaseException as exc:
            reraise(exc, self._write_interrupted(writer, exc, "writev"))

    def _wait_writable(self, what: str) -> None:
        watcher = self._write_watcher
        if watcher is None:
            watcher = self._write_watcher = self._hub.loop.io(self._write_fd, _WRITE)
        try:
            self._hub.wait(watcher)
        except _WokenByClose:
            raise closed_error(what) from None
        if self._writer.state is _CLOSED:  # closed in the turn the descriptor became ready
            raise closed_error(what)

    def _write_interrupted(self, writer: Direction, exc: BaseException, what: str) -> BaseException:
        """What a write that did not finish raises; the writing direction breaks.

        ``ClosedError`` if this side closed the flow, a ``BrokenError`` for an
        OS error, and otherwise (timeouts, kills) the interrupting exception
        itself.
        """
        if isinstance(exc, OSError) and not isinstance(exc, FlowError) and writer.state is not _CLOSED:
            return writer.fail(self._broken(exc, "writing to"))
        return writer.interrupted(exc, what)

    # -- ending ----------------------------------------------------------------

    def shutdown(self, how: Shutdown | str = Shutdown.WRITE) -> None:
        how = self.begin_shutdown(how)
        if how.writes and self._writer.shut():
            try:
                self._end_writing()
            except OSError as exc:
                raise self._writer.fail(self._broken(exc, "shutting down writing on")) from exc
        reader = self._reader
        if how.reads and reader.shut() and reader.busy and self._read_watcher is not None:
            self._hub.cancel_wait(self._read_watcher, _WokenByReadShutdown)

    def close(self) -> None:
        if not self.mark_closed():
            return
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


def wait_ready(watcher: Any, seconds: float) -> bool:
    """Park on a started-or-not libev ``watcher`` for at most ``seconds``.

    Returns True when the watcher fired, False when the time ran out first.
    Any other exception thrown into the wait (a kill, another timeout, a
    wake-up of the caller's own) comes out unchanged.
    """
    timer = gevent.Timeout(seconds)
    timer.start()
    try:
        _get_hub().wait(watcher)
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        return False
    finally:
        timer.close()
    return True


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
