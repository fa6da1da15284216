"""The framed flow: hvsock's shutdown protocol as a layer over any flow.

``FramedFlow(flow)`` speaks the protocol of :mod:`greenflow.framing` (the
sans-IO core) over ``flow``, the transport, so that a shutdown or a close is a
message after the data instead of a transport operation that may lose what
is still in flight (Hyper-V sockets did). It is wire-compatible with hvsock's
``Flow_shutdown`` and linuxkit's virtsock. Both ends must use it.

Theory of operation
-------------------

Reading: a read takes payload the core already holds; only when it holds
none does it read the transport, one large block (``READ_BLOCK``: the frames
of one 64 KiB write), and feed it to the core, which gathers the payload of
many frames into one answer. Over a socket flow, ``read_into`` skips the
block and its copies when the core can lay out the next frames
(:meth:`~greenflow.framing.FrameProtocol.scatter`): one ``readv`` puts the
bodies straight into the caller's buffer and the headers aside, and the core
checks the headers afterwards, parsing whatever was not a full data frame.

Writing: a write cuts the data into frames of 4 KiB, joined with their
headers per 64 KiB, and hands them to the transport in one call (a gather
write of the headers and views of the caller's data measured no faster over
a socket flow: the copy in C costs about what the kernel's and ``sendmsg``'s
per-piece work does).

Control frames go out in order with the data, from the core's outbox:
ShutdownWrite at once, by ``shutdown("write")`` itself; ShutdownRead and
Close without waiting, by the writer after its current write or else by the
*sender*, a background greenlet that holds the writing direction for that
one send (a user's write meanwhile waits for it rather than being refused).
Over a flow without buffers a send waits for the peer to read, and neither
``shutdown("read")`` nor the end of the protocol may wait on that.

Ending:

- ``shutdown("write")`` sends ShutdownWrite; ``shutdown("read")`` sends
  ShutdownRead, and the peer's later writes fail.
- ``close()`` returns at once and wakes every blocked call, as every flow's
  does. Then a background greenlet, the *finisher*, has Close sent and
  reads and discards until the peer's Close, ShutdownRead or EOF (or
  :data:`MAX_DRAIN` bytes: a peer that keeps writing is not reading), within
  ``close_timeout``, and closes the transport. A write blocked in the
  transport at the time may have sent half a frame, after which no Close can
  follow: then the transport is closed at once.
  :meth:`~FramedFlow.close_gracefully` waits for the finisher.
- The peer's Close: reads return the data before it, then EOF; writes raise
  :class:`~greenflow.BrokenError`. The finisher answers with our Close and
  closes the transport at the transport's EOF or after ``close_timeout``,
  keeping what arrives meanwhile: :meth:`~FramedFlow.unwrap` hands it back
  with the transport.
- Both directions shut down: the finisher starts as for a close.

A call blocked in the transport is woken by an exception thrown into its
greenlet from the hub (as gevent's ``kill`` does), which the transport's
contract makes safe: an interrupted read loses nothing. The throw is
scheduled before the finisher starts (the hub runs callbacks in order), so the
finisher never finds the transport busy with a woken reader.

The flow's :attr:`timeout` bounds each call here, with one timer around the
transport calls of that call; the transport's own timeout is set to ``None``
while the framed flow owns it (and restored by :meth:`~FramedFlow.unwrap`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from typing import Final, TypeVar

import gevent
import greenlet
from gevent import getcurrent

from .errors import BrokenError, BusyError, FlowError
from .flow import DEFAULT_READ_SIZE, Buffer, Flow, Shutdown
from .framing import READ_BLOCK, Event, FrameProtocol, Inbound
from .kit import (
    DirectionState,
    FlowBase,
    check_buffers,
    check_bytes_like,
    check_read_size,
    check_timeout,
    check_writable_buffer,
    closed_error,
    start_timer,
)
from .sockets import SocketFlow

__all__ = ["DEFAULT_CLOSE_TIMEOUT", "MAX_DRAIN", "MAX_TRAILING", "FramedFlow"]

log = logging.getLogger("greenflow")

#: Seconds the finisher may take to end the protocol before it closes the
#: transport anyway: neither peer has a deadline of its own, and a silent
#: peer must not hold our resources.
DEFAULT_CLOSE_TIMEOUT: Final = 10.0

#: The most data the finisher reads and discards after our Close before it
#: gives up on the peer (whose writes then fail on the closed transport).
MAX_DRAIN: Final = 1024 * 1024

#: The most bytes kept after the peer's Close for :meth:`FramedFlow.unwrap`;
#: past it the finisher stops reading.
MAX_TRAILING: Final = 1024 * 1024

_FRAMES: Final = Inbound.FRAMES
_A = TypeVar("_A", int, memoryview)
_R = TypeVar("_R", bytes, int)
_X = TypeVar("_X")
_Y = TypeVar("_Y")
_CLOSED: Final = DirectionState.CLOSED
_SHUT: Final = DirectionState.SHUT


class Transport(enum.Enum):
    """Who has the transport."""

    OWNED = "owned"  # the framed flow's calls use it
    FINISHING = "finishing"  # the finisher ends the protocol on it
    CLOSED = "closed"
    UNWRAPPED = "handed back"


class _FinishTimeout(BaseException):
    """The finisher's close_timeout, told apart from any other timeout."""


class _WokenByClose(Exception):
    """Thrown into a greenlet blocked in the transport when the flow is closed."""


class _WokenByReadShutdown(Exception):
    """Thrown into a blocked reader when this side shuts down reading."""


class FramedFlow(FlowBase):
    """A flow that frames its data so that shutdown and close lose nothing in flight.

    Args:
        flow: the transport; the framed flow owns it (closing the framed
            flow closes it, after the protocol's end, within
            ``close_timeout``).
        close_timeout: seconds the protocol's end may take in the
            background after :meth:`close` or the peer's Close.

    Adds to the :class:`~greenflow.Flow` contract: :meth:`unwrap`, and
    :attr:`finished` (whether the protocol's end has completed).
    """

    __slots__ = (
        "_core",
        "_cut",
        "_finisher",
        "_flow",
        "_inner_timeout",
        "_read_greenlet",
        "_scatter_read",
        "_sender",
        "_transport",
        "_write_greenlet",
        "close_timeout",
        "ended_cleanly",
    )

    def __init__(self, flow: Flow, *, close_timeout: float = DEFAULT_CLOSE_TIMEOUT) -> None:
        if not isinstance(flow, Flow):
            raise TypeError(f"FramedFlow runs over a Flow, not {type(flow).__name__}")
        limit = check_timeout(close_timeout)
        if limit is None:
            raise ValueError("close_timeout must be a number of seconds: a silent peer must not hold a flow")
        super().__init__(timeout=flow.timeout)
        self.close_timeout = limit
        self._flow = flow
        self._inner_timeout = flow.timeout
        flow.timeout = None  # this flow's own timer bounds each call
        self._core = FrameProtocol()
        self._cut = False  # a transport write failed: what is on the wire may end mid-frame
        self._transport = Transport.OWNED
        self._finisher: gevent.Greenlet[[], None] | None = None
        self._sender: gevent.Greenlet[[], None] | None = None
        self._read_greenlet: greenlet.greenlet | None = None
        self._write_greenlet: greenlet.greenlet | None = None
        # A socket flow reads into many buffers at once: frames go straight into place.
        self._scatter_read: Callable[[list[memoryview]], int] | None = (
            flow._read_scatter if isinstance(flow, SocketFlow) else None
        )
        #: Whether the protocol ended as it should (the peer's Close,
        #: ShutdownRead or EOF came in time); None while it has not ended.
        self.ended_cleanly: bool | None = None

    def __repr__(self) -> str:
        state = f"{self._core.inbound.value}, transport {self._transport.value}"
        return f"<FramedFlow {state} over {self._flow!r}>"

    @property
    def underlying(self) -> Flow:  # type: ignore[override]
        """The transport."""
        return self._flow

    @property
    def local_address(self) -> object:
        return self._flow.local_address

    @property
    def peer_address(self) -> object:
        return self._flow.peer_address

    # -- reading -------------------------------------------------------------------

    def read(self, max_bytes: int | None = None) -> bytes:
        return self._receive(self._core.take, check_read_size(max_bytes), "read", b"")

    def read_into(self, buffer: bytearray | memoryview) -> int:
        view = check_writable_buffer(buffer)
        scatter_read = self._scatter_read
        if scatter_read is None:
            return self._receive(self._core.take_into, view, "read_into", 0)
        return self._receive_scattered(view, scatter_read)

    def _receive(self, take: Callable[[_A], _R], argument: _A, what: str, eof: _R) -> _R:
        """A read: payload the core holds, or one transport block at a time until some comes."""
        reader = self._reader
        if reader.enter(what):
            return eof
        core = self._core
        try:
            got = take(argument)
            while not got:
                if core.inbound is not _FRAMES or not self._fill(what):
                    reader.end()
                    break
                got = take(argument)
        except BrokenError as exc:
            reader.fail(exc)  # sticky: later reads say this one failed
            raise
        finally:
            reader.leave()
            if core.events:
                self._on_events()
        return got

    def _receive_scattered(self, view: memoryview, scatter_read: Callable[[list[memoryview]], int]) -> int:
        """``read_into`` over a socket flow: frames read straight into place when they can be.

        As :meth:`_receive`, but where the core can lay out the next frames
        (:meth:`~greenflow.framing.FrameProtocol.scatter`), one ``readv``
        puts their bodies in ``view`` and their headers aside, and the core
        checks them: no copy of the payload on the way.
        """
        reader = self._reader
        if reader.enter("read_into"):
            return 0
        core = self._core
        try:
            got = core.take_into(view)
            while not got:
                if core.inbound is not _FRAMES:
                    reader.end()
                    break
                plan = core.scatter(view)
                if plan is None:
                    if not self._fill("read_into"):
                        reader.end()
                        break
                else:
                    count = self._from_transport(scatter_read, plan, "read_into")
                    if count is None:
                        reader.end()
                        break
                    got = core.scattered(view, count)
                    if got:
                        break
                got = core.take_into(view)
        except BrokenError as exc:
            reader.fail(exc)
            raise
        finally:
            reader.leave()
            if core.events:
                self._on_events()
        return got

    def _fill(self, what: str) -> bool:
        """Read one block from the transport into the core; False if reading was shut down."""
        block = self._from_transport(self._flow.read, READ_BLOCK, what)
        if block is None:
            return False
        self._core.feed(block)
        return True

    def _from_transport(self, call: Callable[[_X], _Y], argument: _X, what: str) -> _Y | None:
        """One read call on the transport, woken by close() or shutdown("read"); None for the latter."""
        reader = self._reader
        reader.arm(self._timeout, what)
        self._read_greenlet = getcurrent()
        try:
            return call(argument)
        except _WokenByReadShutdown:
            return None
        except _WokenByClose:
            raise closed_error(what) from None
        except BaseException as exc:
            if reader.state is _CLOSED and isinstance(exc, FlowError):
                raise closed_error(what) from exc  # the transport closed under us by close()
            raise
        finally:
            self._read_greenlet = None

    # -- writing -------------------------------------------------------------------

    def write(self, data: Buffer) -> None:
        self._write(self._core.frames, check_bytes_like(data), "write")

    def writev(self, buffers: Iterable[Buffer]) -> None:
        self._write(self._core.frames_of, check_buffers(buffers), "writev")

    def _write(self, cut: Callable[[_X], list[bytes | memoryview]], data: _X, what: str) -> None:
        """Take the writing direction, cut ``data`` into frames with ``cut``, send them."""
        writer = self._writer
        try:
            writer.enter(what)
        except BusyError:
            self._after_sender(what)
        try:
            self._send(cut(data), what)
        except BaseException as exc:
            self._write_failed(exc, what)
        finally:
            writer.leave()

    def _send(self, frames: list[bytes | memoryview], what: str) -> None:
        if frames:
            self._writer.arm(self._timeout, what)
            self._write_greenlet = getcurrent()
            try:
                if len(frames) == 1:  # a full batch, joined: one buffer
                    self._flow.write(frames[0])
                else:
                    self._flow.writev(frames)
            except BaseException:
                self._cut = True  # part of a frame may be out: nothing may follow it
                raise
            finally:
                self._write_greenlet = None
        if self._core.outbox:  # control frames asked for while we were writing
            self._flush_control()

    def _flush_control(self) -> None:
        """Send the queued control frames; the caller holds the writing direction."""
        core = self._core
        while core.outbox and not self._cut and not self.finished:
            frames = core.pending()
            self._write_greenlet = getcurrent()
            try:
                self._flow.write(frames)
            except BaseException:
                self._cut = True
                raise
            finally:
                self._write_greenlet = None

    def _write_failed(self, exc: BaseException, what: str) -> None:
        writer = self._writer
        if isinstance(exc, BrokenError):
            writer.fail(exc)  # sticky: later writes say this one failed
        error = writer.interrupted(exc, what)
        if error is exc:
            raise exc
        raise error from exc

    def _after_sender(self, what: str) -> None:
        """Take the writing direction once the background sender is done with it.

        The sender holds it only to send a ShutdownRead that this side asked
        for: a write waits for that (within :attr:`timeout`) instead of being
        refused. Raises BusyError when another greenlet is writing.
        """
        sender = self._sender
        if sender is None:
            self._writer.enter(what)  # raises the BusyError again
            return
        timer = start_timer(self._timeout, what) if self._timeout is not None else None
        try:
            sender.join()
        finally:
            if timer is not None:
                timer.close()
        self._writer.enter(what)

    # -- ending --------------------------------------------------------------------

    def shutdown(self, how: Shutdown | str = Shutdown.WRITE) -> None:
        try:
            how = self.begin_shutdown(how)
        except BusyError:
            self._after_sender("shut down")
            self._writer.leave()
            how = self.begin_shutdown(how)
        core = self._core
        if how.writes and self._writer.shut():
            core.shut_write()
            self._control_now("shut down")
        if how.reads and self._reader.shut():
            core.shut_read()
            reading = self._read_greenlet
            if reading is not None:
                self._wake(reading, _WokenByReadShutdown)
            # Sent in the background: on a flow without buffers the send
            # waits for the peer to read, and shutdown("read") must not.
            self._send_soon()
        if self._reader.state is _SHUT and self._writer.state is _SHUT:
            self._start_finisher()

    def _control_now(self, what: str) -> None:
        """Send the queued control frames from a caller that is not the writer."""
        writer = self._writer
        writer.busy = True
        timer = start_timer(self._timeout, what) if self._timeout is not None else None
        try:
            self._flush_control()
        except BrokenError as exc:
            writer.fail(exc)
            raise
        finally:
            writer.busy = False
            if timer is not None:
                timer.close()

    def _send_soon(self) -> None:
        """Have the queued control frames sent without waiting here.

        A writer busy now sends them after its write; else the *sender*, a
        background greenlet, takes the writing direction to send them (a
        user's write meanwhile waits for it, see :meth:`_after_sender`).
        """
        if not self._writer.busy and self._sender is None:
            self._sender = gevent.spawn(self._send_in_background)

    def _send_in_background(self) -> None:
        """The sender: control frames (ShutdownRead, Close) asked for while nobody was writing."""
        try:
            if not self._writer.busy:  # else the writer sends them after its write
                self._control_now("send a control frame")
        except FlowError as exc:
            log.debug("%r: could not send a control frame: %s", self, exc)
        finally:
            self._sender = None

    def close(self) -> None:
        if not self.mark_closed():
            return
        if self._write_greenlet is not None:
            # Half a frame may be out: no Close may follow it, so the transport
            # goes now (which wakes the writer, and any reader, with ClosedError).
            self._close_transport(clean=False)
            return
        reading = self._read_greenlet
        if reading is not None:
            self._wake(reading, _WokenByClose)  # runs before the finisher starts
        self._start_finisher()

    def close_gracefully(self, timeout: float | None = 10.0) -> bool:
        """Close, and wait up to ``timeout`` for the protocol's end.

        Returns True if the peer's Close, ShutdownRead or EOF came in time;
        otherwise the transport is closed at once and the answer is False.
        """
        limit = check_timeout(timeout)
        self.close()
        finisher = self._finisher
        if finisher is not None:
            finisher.join(limit)
            if not finisher.dead:
                finisher.kill(block=True, timeout=1)
        return bool(self.ended_cleanly)

    @property
    def finished(self) -> bool:
        """Whether the protocol has ended and the transport is closed or handed back."""
        return self._transport is Transport.CLOSED or self._transport is Transport.UNWRAPPED

    def unwrap(self) -> tuple[Flow, bytes]:
        """End the protocol and hand back the transport, for what comes next on it.

        Sends our Close (if not sent), waits for the peer's (within
        :attr:`timeout`), and returns the transport, with its timeout as it
        was, and the bytes that arrived after the peer's Close, which belong
        to whatever comes next. This flow is closed afterwards without
        closing the transport.

        Raises:
            BrokenError: the peer sent data instead of its Close, or the
                transport ended or failed first.
            BusyError: another greenlet is reading or writing.
            ClosedError, FlowTimeout: as for reads.
        """
        if self.closed or self.finished:
            raise closed_error("unwrap")
        if self._reader.busy or (self._writer.busy and self._sender is None):
            raise BusyError("cannot unwrap: another greenlet is reading or writing this flow")
        finisher = self._finisher
        if finisher is not None:
            self._transport = Transport.OWNED  # so that it leaves the transport open
            finisher.kill(block=True)  # it was keeping what came after the peer's Close
        core = self._core
        timer = start_timer(self._timeout, "unwrap") if self._timeout is not None else None
        try:
            core.close()
            self._send_soon()  # while we read: the peer may be sending its Close meanwhile
            while True:
                if core.discard():
                    raise BrokenError("cannot unwrap: the peer sent data instead of its Close")
                if core.inbound is Inbound.CLOSED:
                    break
                if core.inbound is not _FRAMES and core.inbound is not Inbound.SHUT:
                    raise BrokenError(f"cannot unwrap: {core.inbound.value} before the peer's Close")
                core.feed(self._flow.read(DEFAULT_READ_SIZE))
            sender = self._sender
            if sender is not None:
                sender.join()  # what comes next on the transport must follow our Close
        finally:
            if timer is not None:
                timer.close()
        if self._cut or core.outbox:
            raise BrokenError("cannot unwrap: our Close could not be sent")
        self.mark_closed()
        self._transport = Transport.UNWRAPPED
        self.ended_cleanly = True
        self._flow.timeout = self._inner_timeout
        return self._flow, core.trailing()

    # -- the protocol's end, in the background -------------------------------------

    def _on_events(self) -> None:
        events = self._core.events
        if Event.CLOSE in events:
            self._start_finisher()
        events.clear()

    def _start_finisher(self) -> None:
        if self._transport is Transport.OWNED:
            self._transport = Transport.FINISHING
            self._finisher = gevent.spawn(self._finish)

    def _wake(self, greenlet: greenlet.greenlet, error: type[Exception]) -> None:
        def throw() -> None:
            if greenlet is self._read_greenlet:  # still blocked in the same read
                greenlet.throw(error)

        gevent.get_hub().loop.run_callback(throw)

    def _finish(self) -> None:
        """The finisher: send Close, wait for the peer's end, close the transport."""
        core = self._core
        answering = core.inbound is Inbound.CLOSED  # the peer closed first
        clean = False
        expired = _FinishTimeout()
        timer = gevent.Timeout.start_new(self.close_timeout, expired)
        try:
            core.close()
            # Sent while we read: over a flow without buffers the peer may be
            # blocked writing to us, and reads only once we have read.
            self._send_soon()
            if not self._cut:
                clean = self._drain(answering)
        except FlowError as exc:
            log.debug("%r: the framed protocol did not end cleanly: %s", self, exc)
        except _FinishTimeout as exc:
            if exc is not expired:  # pragma: no cover - only ours is started here
                raise
            log.debug("%r: no end from the peer within close_timeout=%g s", self, self.close_timeout)
        finally:
            timer.close()
            if self._transport is Transport.FINISHING:
                self._close_transport(clean=clean)

    def _drain(self, answering: bool) -> bool:
        """Read until the protocol's end; True when it came."""
        core = self._core
        flow = self._flow
        dropped = 0
        while True:
            dropped += core.discard()  # raises the peer's protocol violation, if any
            if core.inbound is Inbound.CLOSED:
                break
            if core.inbound is Inbound.EOF or not core.peer_reading:
                return True
            if dropped > MAX_DRAIN:
                # A peer that keeps sending long after our Close is not
                # reading: closing the transport is how its writes learn.
                return False
            core.feed(flow.read(DEFAULT_READ_SIZE))
        if answering:
            # Keep what follows the peer's Close, for unwrap, until its EOF.
            size = len(core.trailing())
            while size < MAX_TRAILING:
                block = flow.read(DEFAULT_READ_SIZE)
                if not block:
                    break
                core.feed(block)
                size += len(block)
        return True

    def _close_transport(self, *, clean: bool) -> None:
        self._transport = Transport.CLOSED
        self.ended_cleanly = clean
        self._flow.close()
