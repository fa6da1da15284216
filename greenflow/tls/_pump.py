"""The TLS pump: the one retry loop that moves ciphertext for a TLS flow.

The engine (``_engine.py``) never waits; the pump is the only place that
does, by reading and writing the underlying flow. Every TLS operation (the
handshake, a read, a write, close_notify, a renegotiation, and so unwrap)
goes through one loop, :meth:`TLSPump._retry`: try the engine operation,
send what it produced, and while it needs input, receive and try again.

Theory of operation
===================

1. **Send before you receive.** Any engine operation may leave ciphertext for
   the peer (a handshake reply, a renegotiation message, an alert). Before a
   greenlet waits for ciphertext from the peer, what the engine produced is
   on its way, or the two ends could each wait for the other.

2. **One blocking step per turn.** Each turn of the loop waits at most once:
   for a send, or for a receive, or for another greenlet's receive. After a
   wait the operation is tried again before anything else, because while we
   waited another greenlet may have fed the engine what we needed (its
   reader took the peer's renegotiation reply, say), and a receive then
   would wait for bytes that are not coming.

3. **One sender, in order.** Both the reader and the writer produce
   ciphertext, so it goes through one queue, ``_outbox``, in the order the
   engine produced it, and one greenlet at a time (the holder of
   ``_send_lock``) writes the queue to the underlying flow until it is
   empty. A writer takes the lock and waits, because ``write`` returns only
   once its bytes were accepted below (backpressure), and so does the
   handshake before it waits for the peer's next flight.

4. **Readers never wait to send; that is why there is a background
   sender.** What a reader leaves (TLS 1.3 session tickets after the
   handshake, renegotiation and key update replies: rare and small) cannot
   be sent by the reader itself. Its peer may be writing and not reading: on
   a lockstep pair (or any transport whose buffers are full) nothing moves
   until the peer reads, and the peer's writer is exactly what our reader is
   about to read, so a reader that waited to send would deadlock with it.
   Nor can it be left in the queue: the peer may be waiting for it (a
   renegotiation reply) and our side may never write again. So a
   short-lived sender greenlet sends it, unless someone already holds the
   lock and will send it anyway. A write's records may sit in the queue
   behind it; if the sender fails, it breaks the *writing direction*
   (``self._writer.fail``), and the writer, which checks its direction once
   it holds the lock, raises instead of reporting bytes that never left.

5. **One receiver; the others retry.** Both the reader and (during a TLS 1.2
   renegotiation) the writer may need ciphertext from the peer, but only one
   greenlet may read the underlying flow (``_receiving``). It reads one block
   and feeds it to the engine; a greenlet that needed input meanwhile waits
   for that feed (``_fed``) and then retries its operation (rule 2).

6. **Big blocks.** Ciphertext is read from the underlying flow 64 KiB at a
   time, and 256 KiB at a time into one reused buffer while a transfer
   streams in (dropped as soon as a read comes back short, so an idle flow
   holds no buffer); it is written in blocks of up to four records. Bulk
   data costs one underlying call per 64 to 256 KiB each way.

Interruptions: a greenlet only ever waits in the underlying flow's calls or
on the send lock and the feed event, and engine calls never yield, so a
timeout or a kill lands where nothing is half-done on the receiving side: a
read loses nothing. A write interrupted while its ciphertext was going out
breaks the writing direction, as the contract says. ``shutdown("read")``
wakes a reader parked in a receive by throwing a private exception into it
from the hub, and only while it is still parked there.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, TypeVar

import gevent
from gevent.event import Event
from gevent.greenlet import Greenlet
from gevent.lock import Semaphore
from greenlet import getcurrent, greenlet

from ..errors import BrokenError, FlowError
from ..flow import Flow, log
from ..kit import Direction, DirectionState, FlowBase, closed_error
from ._engine import _RECORD_OVERHEAD, NEED_INPUT, RECORD_SIZE, NeedInput, TLSEngine
from ._errors import TLSError

__all__ = ["CLOSE_NOTIFY_TIMEOUT", "RECEIVE_SIZE", "STREAM_BUFFER_SIZE", "Sending", "TLSPump", "TLSState"]

_A = TypeVar("_A")
_R = TypeVar("_R")

#: Ciphertext asked of the underlying flow per read: about four records,
#: the block size the performance notes found cheapest, and no bigger, so
#: that each read allocates below glibc's trimming thresholds.
RECEIVE_SIZE: Final = 65536
#: The buffer ciphertext is received into while a transfer streams in, kept
#: only while each receive fills it. Big blocks cost one underlying read and
#: one ``bio_write`` per 256 KiB; reusing it spares an allocation of a fresh
#: ``bytes`` per block, which measured 0.94 against 1.51 of gevent's stdlib
#: ``ssl`` in bulk. An idle flow holds none.
STREAM_BUFFER_SIZE: Final = 262144
#: The most ``close()`` spends handing our close_notify to the underlying
#: flow. On a socket the write is immediate; the bound only matters when the
#: peer stopped reading and its buffers are full, and then close must not hang.
CLOSE_NOTIFY_TIMEOUT: Final = 0.1
#: What the engine's output is drained with when no write says how much
#: there is: enough for a handshake flight or an alert in one call.
PROBE_SIZE: Final = RECORD_SIZE + 4 * _RECORD_OVERHEAD

_OPEN: Final = DirectionState.OPEN
_SHUT: Final = DirectionState.SHUT
_CLOSED: Final = DirectionState.CLOSED


class TLSState(enum.Enum):
    """Where a TLS flow stands (the engine's state is the session's)."""

    HANDSHAKING = "handshaking"
    OPEN = "open"
    #: Both directions were shut down, so the underlying flow was closed.
    ENDED = "ended"
    #: :meth:`~greenflow.tls.TLSFlow.unwrap` handed the underlying flow back.
    UNWRAPPED = "unwrapped"
    CLOSED = "closed"


#: The states in which the underlying flow is still ours and open.
_UNDER_OPEN: Final = (TLSState.HANDSHAKING, TLSState.OPEN)


class Sending(enum.Enum):
    """How an operation's ciphertext goes out (rules 3 and 4)."""

    #: A writer's: wait until it was accepted below, before receiving and
    #: before returning.
    WAIT = "wait"
    #: The handshake's: wait before receiving the peer's next flight, but
    #: not for what follows the last one (TLS 1.3 session tickets need no
    #: answer, so they must not hold up the handshake).
    HANDSHAKE = "handshake"
    #: A reader's: never wait; the background sender sends it.
    NEVER = "never"


_WAIT: Final = Sending.WAIT
_NEVER: Final = Sending.NEVER


class _GiveUpError(BaseException):
    """Ends a bounded best-effort step; a BaseException, so no flow wraps it."""


@contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Run the block for at most ``seconds``, then give up on it quietly."""
    expired = _GiveUpError()
    timer = gevent.Timeout(seconds, expired)
    timer.start()
    try:
        yield
    except _GiveUpError as exc:
        if exc is not expired:
            raise
    finally:
        timer.close()


class _ReadShutdownWakeupError(Exception):
    """Thrown into a reader parked in a receive when reading is shut down.

    It names its pump: in TLS over TLS the outer flow's reader is parked in
    the inner flow's receive, and only the flow that shut down may take it.
    """

    def __init__(self, pump: TLSPump) -> None:
        super().__init__("reading was shut down")
        self.pump = pump


class TLSPump(FlowBase):
    """The ciphertext side of a TLS flow: the retry loop and what it needs.

    :class:`~greenflow.tls.TLSFlow` builds the flow's calls on it; the two
    are one object, so the hot paths pay no extra indirection.
    """

    __slots__ = (
        "_engine",
        "_fed",
        "_hub",
        "_outbox",
        "_reader_parked",
        "_receiving",
        "_send_lock",
        "_sender",
        "_state",
        "_stream_buffer",
        "_under",
    )

    def __init__(self, underlying: Flow, engine: TLSEngine, *, timeout: float | None = None) -> None:
        super().__init__(timeout=timeout)
        self._under = underlying
        self._engine = engine
        self._state = TLSState.HANDSHAKING
        self._hub = gevent.get_hub()
        self._outbox: deque[bytes] = deque()
        self._send_lock = Semaphore()
        self._sender: Greenlet[[], None] | None = None
        self._receiving = False  # a greenlet is reading the underlying flow
        self._fed: Event | None = None  # made when someone waits for that read
        self._stream_buffer: bytearray | None = None
        self._reader_parked: greenlet | None = None

    # -- the one loop --------------------------------------------------------------

    def _retry(
        self,
        operation: Callable[[_A], _R | NeedInput],
        argument: _A,
        result: _R | NeedInput,
        sending: Sending,
        direction: Direction | None,
        *,
        what: str,
        hint: int = PROBE_SIZE,
    ) -> _R | NeedInput:
        """Run ``operation(argument)`` until it answers, moving ciphertext.

        ``result`` is what the operation answered when the caller first
        tried it. Each turn sends what the engine left (rule 1), waits at
        most once (rule 2), and tries the operation again. ``direction`` is
        the caller's, for the per-call timer (``None`` for the handshake,
        which has a timer of its own); ``hint`` is the ciphertext expected.
        Returns ``NEED_INPUT`` only to a reader whose reading was shut down
        while it waited.
        """
        engine = self._engine
        outbox = self._outbox
        try:
            while True:
                if result is NEED_INPUT or sending is not _NEVER:
                    # Rule 1. A reader that got its answer leaves what the
                    # engine produced to the next turn of any loop: it
                    # sends nothing itself (rule 4), and the check would
                    # cost every read.
                    data = engine.ciphertext_to_send(hint)
                    if data:
                        outbox.append(data)
                    if outbox:
                        if sending is _WAIT or (sending is Sending.HANDSHAKE and result is NEED_INPUT):
                            self._send_waiting(direction, what)  # this turn's blocking step
                            if result is NEED_INPUT:
                                result = operation(argument)
                                continue
                        else:
                            self._send_soon()
                if result is not NEED_INPUT:
                    return result
                if self._receive(direction, what, sending is _NEVER):  # this turn's blocking step
                    return NEED_INPUT  # reading was shut down
                result = operation(argument)
        except TLSError:
            self.send_alert()
            raise

    # -- receiving (rule 5) ----------------------------------------------------------

    def _receive(self, direction: Direction | None, what: str, reading: bool) -> bool:
        """Read one block of ciphertext and feed it to the engine (rule 5).

        If another greenlet is receiving, wait until it has fed the engine
        (or failed) and return, so that the caller retries its operation with
        what arrived. Queueing on a lock instead would not do: its holder,
        a reader, takes it again without yielding when its own operation
        still needs input, and a writer waiting in a TLS 1.2 renegotiation
        would never get to retry the send that could now go through.

        A reader (``reading``) is parked while it waits, so that
        ``shutdown("read")`` can wake it; returns True then.
        """
        if direction is not None and self._timeout is not None:
            direction.arm(self._timeout, what)
        if self._receiving:
            fed = self._fed
            if fed is None:
                fed = self._fed = Event()
            fed.wait()
            return reading and self._reader.state is _SHUT
        self._receiving = True
        if reading:
            self._reader_parked = getcurrent()
        try:
            buffer = self._stream_buffer
            if buffer is None:
                data: bytes | memoryview = self._under.read(RECEIVE_SIZE)
                count = len(data)
                if count == RECEIVE_SIZE:
                    # A full block: a transfer is streaming in. Receive the
                    # next blocks into one reused buffer (rule 6).
                    self._stream_buffer = bytearray(STREAM_BUFFER_SIZE)
            else:
                count = self._under.read_into(buffer)
                data = memoryview(buffer)[:count]
                if count < len(buffer):
                    # The burst is over: a flow that goes idle must not keep
                    # the buffer while it waits (idle memory matters).
                    self._stream_buffer = None
        except _ReadShutdownWakeupError as wakeup:
            if wakeup.pump is not self:
                raise  # an outer TLS flow's: not ours to take
            return True
        finally:
            self._reader_parked = None
            self._receiving = False
            fed = self._fed
            if fed is not None:  # wake whoever waited for this receive, fed or failed
                self._fed = None
                fed.set()
        if count:
            self._engine.receive_ciphertext(data)
        else:
            self._engine.receive_eof()
        return reading and self._reader.state is _SHUT

    def _wake_reader(self) -> None:
        """Wake a reader parked in a receive: reading was shut down."""
        parked = self._reader_parked
        if parked is None:
            return
        throw_into = parked.throw

        def throw() -> None:
            # Only if it is still parked in the same receive: by now it may
            # have moved on, and then it must not be disturbed.
            if self._reader_parked is parked:
                throw_into(_ReadShutdownWakeupError(self))

        self._hub.loop.run_callback(throw)

    # -- sending (rules 3 and 4) ---------------------------------------------------------

    def _send_waiting(self, direction: Direction | None, what: str) -> None:
        """Write the queued ciphertext to the underlying flow, in order, waiting.

        For a writer, the queue may have been sent by the background
        sender; if that failed, it broke the writing direction, and the
        writer must not report success (rule 4).
        """
        if direction is not None and self._timeout is not None:
            direction.arm(self._timeout, what)
        with self._send_lock:
            if direction is not None:
                if direction.state is _CLOSED:
                    raise closed_error(what)
                error = direction.error
                if error is not None:
                    raise BrokenError(f"the {what} failed: {error}") from error
            outbox = self._outbox
            while outbox:
                self._under.write(outbox.popleft())

    def _send_soon(self) -> None:
        """Have the queued ciphertext sent without waiting for it here."""
        if self._send_lock.locked() or not self._outbox:
            return  # the holder sends everything queued before it lets go
        sender = self._sender
        if sender is None or sender.dead:
            self._sender = gevent.spawn(self._send_in_background)

    def _send_in_background(self) -> None:
        try:
            self._send_waiting(None, "send")
        except FlowError as exc:
            if self._state in _UNDER_OPEN:
                self._writer.fail(
                    exc if isinstance(exc, BrokenError) else BrokenError(f"sending failed: {exc}")
                )
            log.debug("sending TLS records on %r failed: %s", self, exc)
        except BaseException:
            # Killed mid-send: part of a record may be out, so nothing can
            # follow it on this stream.
            if self._state in _UNDER_OPEN:
                self._writer.fail(BrokenError("sending TLS records was interrupted mid-stream"))
            raise
        finally:
            self._sender = None

    def send_alert(self) -> None:
        """Best effort: send the alert a failed engine left for the peer."""
        try:
            if self._state in _UNDER_OPEN:
                self._send_bounded()
        except FlowError as exc:
            log.debug("could not send the TLS alert on %r: %s", self, exc)

    def _send_bounded(self) -> None:
        """Queue what the engine left and send it within CLOSE_NOTIFY_TIMEOUT.

        For what is sent on the way out (an alert, close's close_notify),
        where waiting long would be worse than not sending; nothing is sent
        here if the lock's holder will send it anyway.
        """
        data = self._engine.ciphertext_to_send(PROBE_SIZE)
        if data:
            self._outbox.append(data)
        if self._send_lock.locked() or not self._outbox:
            return
        with bounded(CLOSE_NOTIFY_TIMEOUT):
            self._send_waiting(None, "send")

    # -- ending ------------------------------------------------------------------------

    def _discard_arrived(self) -> None:
        """Read and drop what already arrived, without waiting for more.

        A TCP socket closed with unread bytes in its receive buffer answers
        with a reset, and a reset can destroy data still on its way to the
        peer. A TLS 1.3 client that only writes always has such bytes: the
        server's session tickets. So ``close`` takes them first.
        """
        if self._receiving or self._state not in _UNDER_OPEN:
            return
        under = self._under
        arrived = getattr(under, "has_unread_input", None)  # socket flows: a non-blocking peek
        if arrived is not None:
            # Each read takes what is there without waiting, and this costs
            # no turn of the event loop (a zero timer would, at every close).
            for _ in range(16):
                if not arrived() or not under.read(RECEIVE_SIZE):
                    break
            return
        with bounded(0):
            for _ in range(16):
                if not self._under.read(RECEIVE_SIZE):
                    break

    def _close_underlying(self, then: TLSState) -> None:
        """Close the underlying flow once, and move to ``then``."""
        if self._state not in _UNDER_OPEN:
            if self._state is TLSState.ENDED:
                self._state = then
            return
        sender = self._sender
        if sender is not None and not sender.dead and sender is not getcurrent():
            # A close_notify (or a handshake's tail) may still be on its way.
            sender.join(CLOSE_NOTIFY_TIMEOUT)
        self._state = then
        self._under.close()
