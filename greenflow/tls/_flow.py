"""TLSFlow: the blocking pump that turns the sans-IO engine into a flow.

The engine (``_engine.py``) never waits; this module is the only place that
does, by reading and writing the underlying flow. Its rules:

1. **Send before you receive.** Any engine operation may leave ciphertext for
   the peer (a handshake reply, a renegotiation message, an alert). Before a
   greenlet waits for ciphertext from the peer, what the engine produced is
   on its way, or the two ends could each wait for the other.

2. **One sender, in order; readers never wait to send.** Both the reader
   and the writer produce ciphertext, so it goes through one queue,
   ``_outbox``, in the order the engine produced it, and one greenlet at a
   time (the holder of ``_send_lock``) writes the queue to the underlying
   flow, until it is empty. A writer takes the lock and waits, because
   ``write`` returns only once its bytes were accepted below (backpressure).
   A reader must not wait to send: its peer may be writing and not reading
   (on a lockstep pair nothing moves until the peer reads), and that peer's
   writer is what our reader is about to read. So what a reader or a
   finished handshake leaves (TLS 1.3 session tickets, renegotiation and key
   update replies: rare and small) is sent by a short-lived sender greenlet,
   unless someone already holds the lock and will send it anyway. The
   handshake's own flights are sent before it waits, in line.

3. **One receiver; the others retry.** Both the reader and (during a TLS 1.2
   renegotiation) the writer may need ciphertext from the peer, but only one
   greenlet may read the underlying flow (``_receiving``). It reads one block
   and feeds it to the engine; a greenlet that needed input meanwhile waits
   for that feed (``_fed``) and then retries its operation instead of
   reading, since what it needed may have arrived.

4. **Big blocks.** Ciphertext is read from the underlying flow 64 KiB at a
   time, and 256 KiB at a time into one reused buffer while a transfer
   streams in (dropped as soon as a read comes back short, so an idle flow
   holds no buffer); it is written in blocks of up to four records. Bulk
   data costs one underlying call per 64 to 256 KiB each way.

Interruptions: a greenlet only ever waits in the underlying flow's calls or
on the two locks, and engine calls never yield, so a timeout or a kill lands
where nothing is half-done on the receiving side: a read loses nothing. A
write interrupted while its ciphertext was going out breaks the writing
direction, as the contract says. ``shutdown("read")`` wakes a reader parked
in a receive by throwing a private exception into it from the hub, and only
while it is still parked there. ``close()`` closes the underlying flow, which
wakes whoever is blocked in it; anyone waiting on our locks follows as the
holder leaves.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Final, NoReturn, TypeVar

import gevent
from gevent.event import Event
from gevent.greenlet import Greenlet
from gevent.lock import Semaphore
from greenlet import getcurrent, greenlet
from OpenSSL import SSL

from ..errors import BrokenError, BusyError, ClosedError, FlowError, FlowTimeout
from ..flow import Buffer, Flow, Shutdown, log
from ..kit import (
    FlowAttributes,
    begin_shutdown,
    check_bytes_like,
    check_max_bytes,
    check_timeout,
    check_writable_buffer,
    closed_error,
    refuse_read,
    refuse_write,
    start_timer,
)
from ._engine import (
    _RECORD_OVERHEAD,
    NEED_INPUT,
    RECORD_SIZE,
    WRITE_CHUNK,
    EngineState,
    NeedInput,
    TLSEngine,
    TLSEpoch,
)
from ._errors import TLSError

__all__ = ["CLOSE_NOTIFY_TIMEOUT", "RECEIVE_SIZE", "STREAM_BUFFER_SIZE", "TLSFlow"]

_T = TypeVar("_T")

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
#: What the reader drains the engine's output with before it waits: enough
#: for a handshake flight or an alert in one call.
_PROBE_SIZE: Final = RECORD_SIZE + 4 * _RECORD_OVERHEAD


class _GiveUpError(BaseException):
    """Ends a bounded best-effort step; a BaseException, so no flow wraps it."""


@contextmanager
def _bounded(seconds: float) -> Iterator[None]:
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

    It names its flow: in TLS over TLS the outer flow's reader is parked in
    the inner flow's receive, and only the flow that shut down may take it.
    """

    def __init__(self, flow: TLSFlow) -> None:
        super().__init__("reading was shut down")
        self.flow = flow


class TLSFlow(FlowAttributes, Flow):
    """A TLS session over another flow (``underlying``).

    Made by :func:`greenflow.tls.client`, :func:`greenflow.tls.server` and
    :func:`greenflow.tls.connect_tls`, which run the handshake first. The
    contract is :class:`~greenflow.Flow`'s; this class adds:

    - ``shutdown("write")`` sends close_notify and reading goes on (the TLS
      1.3 half-close; OpenSSL allows it in TLS 1.2 too). Like a write, it
      returns once the close_notify was accepted below, after everything
      written before, and raises if that fails or times out. The underlying
      flow is not shut down, so :meth:`unwrap` can still hand it back.
    - An EOF of the underlying flow without the peer's close_notify raises
      :class:`TLSTruncatedError` (a :class:`~greenflow.BrokenError`), unless
      the flow was made with ``allow_truncation=True``.
    - ``close()`` first hands a close_notify to the underlying flow if that
      can be done within :data:`CLOSE_NOTIFY_TIMEOUT` and no write is under
      way; it then closes the underlying flow, once.
    - TLS failures (alerts, garbage, certificates) raise :class:`TLSError`;
      the alert OpenSSL prepared for the peer is sent first, when it can be.
      They break both directions.
    - :attr:`epoch` (what was agreed), :meth:`renegotiate`, :meth:`unwrap`,
      :attr:`tls_session` (for resumption) and :attr:`connection`.

    Data the peer sends to start a renegotiation or a key update is answered
    when this side next waits to read or writes.
    """

    __slots__ = (
        "_closed",
        "_engine",
        "_fed",
        "_hub",
        "_outbox",
        "_read_error",
        "_read_shut",
        "_reader_parked",
        "_reading",
        "_receiving",
        "_send_lock",
        "_sender",
        "_stream_buffer",
        "_timeout",
        "_under",
        "_under_closed",
        "_write_error",
        "_write_shut",
        "_writing",
    )

    def __init__(self, underlying: Flow, engine: TLSEngine, *, timeout: float | None = None) -> None:
        """Wrap ``underlying`` with ``engine``; use :func:`client` or :func:`server`."""
        self._under = underlying
        self._engine = engine
        self._timeout = check_timeout(timeout)
        self._hub = gevent.get_hub()
        self._outbox: deque[bytes] = deque()
        self._send_lock = Semaphore()
        self._sender: Greenlet[[], None] | None = None
        self._receiving = False  # a greenlet is reading the underlying flow
        self._fed: Event | None = None  # made when someone waits for that read
        self._stream_buffer: bytearray | None = None
        self._closed = False
        self._under_closed = False
        self._reading = False
        self._writing = False
        self._read_shut = False
        self._write_shut = False
        self._read_error: FlowError | None = None
        self._write_error: FlowError | None = None
        self._reader_parked: greenlet | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._engine.state.value
        return f"<TLSFlow {state} over {self._under!r}>"

    @property
    def underlying(self) -> Flow:  # type: ignore[override]
        """The flow the TLS records travel over."""
        return self._under

    # -- the handshake ---------------------------------------------------------------

    def _handshake(self, timeout: float | None) -> None:
        """Run the handshake to completion, within ``timeout`` seconds."""
        engine = self._engine
        timer = None
        if timeout is not None:
            message = f"the TLS handshake did not complete within {timeout:g} seconds"
            timer = gevent.Timeout.start_new(timeout, FlowTimeout(message))
        try:
            while True:
                answer = engine.do_handshake()
                self._queue_output(_PROBE_SIZE)
                if answer is None:
                    # What follows the last flight (TLS 1.3 tickets) needs
                    # no answer, so it must not hold up the handshake.
                    self._send_soon()
                    return
                self._send_outbox(wait=True)
                self._receive()
        except TLSError:
            self._send_alert()
            raise
        finally:
            if timer is not None:
                timer.close()

    # -- reading -----------------------------------------------------------------------

    def read(self, max_bytes: int | None = None) -> bytes:
        size = check_max_bytes(max_bytes)
        if (self._reading or self._closed or self._read_shut or self._read_error) and self._enter_read(
            "read"
        ):
            return b""
        engine = self._engine
        # The common case first: a whole record may already be decrypted.
        try:
            data = engine.recv(size)
        except TLSError:
            self._send_alert()
            raise
        if data is not NEED_INPUT:
            return data
        return self._read_loop(lambda: engine.recv(size), b"", "read")

    def read_into(self, buffer: bytearray | memoryview) -> int:
        # Checked before the engine hands over any plaintext, which could not
        # be put back if the copy into the buffer failed.
        buffer = check_writable_buffer(buffer)
        if (self._reading or self._closed or self._read_shut or self._read_error) and self._enter_read(
            "read_into"
        ):
            return 0
        engine = self._engine
        try:
            count = engine.recv_into(buffer)
        except TLSError:
            self._send_alert()
            raise
        if count is not NEED_INPUT:
            return count
        return self._read_loop(lambda: engine.recv_into(buffer), 0, "read_into")

    def _read_loop(self, operation: Callable[[], _T | NeedInput], eof: _T, what: str) -> _T:
        """Receive ciphertext and retry ``operation`` until it answers."""
        self._reading = True
        timer = None
        try:
            while True:
                if timer is None and self._timeout is not None:
                    timer = start_timer(self._timeout, what)
                # Send before receiving (rule 1), without waiting (rule 2).
                if self._queue_output(_PROBE_SIZE) or self._outbox:
                    self._send_soon()
                self._reader_parked = getcurrent()
                try:
                    self._receive()
                except _ReadShutdownWakeupError as wakeup:
                    if wakeup.flow is not self:
                        raise  # an outer TLS flow's: not ours to take
                    return eof
                finally:
                    self._reader_parked = None
                if self._read_shut:
                    return eof
                result = operation()
                if result is not NEED_INPUT:
                    return result
        except TLSError:
            self._send_alert()
            raise
        except ClosedError:
            if self._closed:
                raise closed_error(what) from None
            raise
        except BrokenError as exc:
            if self._closed:
                raise closed_error(what) from None
            self._read_error = exc
            raise
        finally:
            self._reading = False
            if timer is not None:
                timer.close()

    def _enter_read(self, what: str) -> bool:
        """The slow checks before a read; True means "return EOF now"."""
        return refuse_read(
            what, closed=self._closed, reading=self._reading, at_eof=self._read_shut, error=self._read_error
        )

    def _receive(self) -> None:
        """Read one block of ciphertext and feed it to the engine (rule 3).

        If another greenlet is receiving, wait until it has fed the engine
        (or failed) and return, so that the caller retries its operation with
        what arrived. Queueing on the lock instead would not do: its holder,
        a reader, takes it again without yielding when its own operation
        still needs input, and a writer waiting in a TLS 1.2 renegotiation
        would never get to retry the send that could now go through.
        """
        if self._receiving:
            fed = self._fed
            if fed is None:
                fed = self._fed = Event()
            fed.wait()
            return
        self._receiving = True
        try:
            buffer = self._stream_buffer
            if buffer is None:
                data: bytes | memoryview = self._under.read(RECEIVE_SIZE)
                count = len(data)
                if count == RECEIVE_SIZE:
                    # A full block: a transfer is streaming in. Receive
                    # the next blocks into one reused buffer (rule 4).
                    self._stream_buffer = bytearray(STREAM_BUFFER_SIZE)
            else:
                count = self._under.read_into(buffer)
                data = memoryview(buffer)[:count]
                if count < len(buffer):
                    # The burst is over: a flow that goes idle must not
                    # keep the buffer while it waits (idle memory matters).
                    self._stream_buffer = None
            if count:
                self._engine.receive_data(data)
            else:
                self._engine.receive_eof()
        finally:
            self._receiving = False
            fed = self._fed
            if fed is not None:  # wake whoever waited for this receive, fed or failed
                self._fed = None
                fed.set()

    # -- writing -------------------------------------------------------------------------

    def write(self, data: Buffer) -> None:
        if self._writing or self._closed or self._write_shut or self._write_error:
            self._enter_write("write")
        view = data if type(data) is bytes else check_bytes_like(data)
        self._run_write(self._encrypt_all, view, "write")

    def writev(self, buffers: Iterable[Buffer]) -> None:
        if self._writing or self._closed or self._write_shut or self._write_error:
            self._enter_write("writev")
        views = [check_bytes_like(buffer) for buffer in buffers]
        self._run_write(self._encrypt_views, views, "writev")

    def _run_write(self, body: Callable[[_T], None], argument: _T, what: str) -> None:
        self._writing = True
        timer = start_timer(self._timeout, what) if self._timeout is not None else None
        try:
            body(argument)
        except BaseException as exc:
            error = self._write_interrupted(exc, what)
            if error is exc:
                raise
            raise error from exc
        finally:
            self._writing = False
            if timer is not None:
                timer.close()

    def _enter_write(self, what: str) -> NoReturn:
        refuse_write(
            what, closed=self._closed, writing=self._writing, shut=self._write_shut, error=self._write_error
        )

    def _encrypt_views(self, views: list[memoryview]) -> None:
        # Record-sized pieces straight from the caller's buffers: small
        # neighbours are joined into one record (a copy of under 16 KiB beats
        # a tiny record each), large buffers are fed in slices; nothing is
        # ever joined into one big copy.
        small: list[memoryview] = []
        small_size = 0
        for view in views:
            size = len(view)
            if not size:
                continue
            if size < RECORD_SIZE and small_size + size <= RECORD_SIZE:
                small.append(view)
                small_size += size
                continue
            if small:
                self._encrypt(b"".join(small))
            if size < RECORD_SIZE:
                small, small_size = [view], size
            else:
                small, small_size = [], 0
                self._encrypt_all(view)
        if small:
            self._encrypt(b"".join(small) if len(small) > 1 else small[0])

    def _encrypt_all(self, data: bytes | memoryview) -> None:
        if len(data) <= WRITE_CHUNK:
            if data:
                self._encrypt(data)
            return
        view = memoryview(data)
        for start in range(0, len(view), WRITE_CHUNK):
            self._encrypt(view[start : start + WRITE_CHUNK])

    def _encrypt(self, chunk: bytes | memoryview) -> None:
        """Encrypt one chunk and hand its ciphertext to the underlying flow."""
        engine = self._engine
        while True:
            sent = engine.send(chunk)
            if sent is NEED_INPUT:
                # A renegotiation needs the peer's answer before more data.
                self._queue_output(_PROBE_SIZE)
                self._send_outbox(wait=True)
                self._check_sent()
                self._receive()
                continue
            if sent == len(chunk):
                break
            chunk = chunk[sent:]
        self._queue_output(len(chunk) + 4 * _RECORD_OVERHEAD)
        self._send_outbox(wait=True)
        self._check_sent()

    def _check_sent(self) -> None:
        """Raise if what a writer queued may not have gone out.

        The holder of the send lock sends everything queued, a writer's
        ciphertext included; if it failed, the writer that finds the queue
        empty must not report success.
        """
        if self._closed:
            raise closed_error("write")
        if self._write_error is not None:
            raise BrokenError(f"the write failed: {self._write_error}") from self._write_error

    def _write_interrupted(self, exc: BaseException, what: str) -> BaseException:
        """Mark the writing direction broken after a write that did not finish."""
        if self._closed:
            return exc if isinstance(exc, ClosedError) else closed_error(what)
        if isinstance(exc, TLSError):
            self._send_alert()
            self._write_error = exc
            return exc
        if isinstance(exc, BrokenError):
            self._write_error = exc
            return exc
        if self._write_error is None:
            kind = "timed out" if isinstance(exc, FlowTimeout) else f"was interrupted ({type(exc).__name__})"
            self._write_error = BrokenError(f"a TLS {what} {kind} and may have sent part of its data")
        return exc

    # -- moving ciphertext out (rule 2) ----------------------------------------------------

    def _queue_output(self, size_hint: int) -> bool:
        data = self._engine.data_to_send(size_hint)
        if data:
            self._outbox.append(data)
            return True
        return False

    def _send_outbox(self, *, wait: bool) -> None:
        """Write the queued ciphertext to the underlying flow, in order.

        With ``wait`` false, return at once if another greenlet is sending: it
        sends what we queued as well.
        """
        lock = self._send_lock
        if not wait and lock.locked():
            return
        with lock:
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
            self._send_outbox(wait=True)
        except FlowError as exc:
            if not self._closed and self._write_error is None:
                self._write_error = exc
            log.debug("sending TLS records on %r failed: %s", self, exc)
        except BaseException:
            # Killed mid-send: part of a record may be out, so nothing can
            # follow it on this stream.
            if not self._closed and self._write_error is None:
                self._write_error = BrokenError("sending TLS records was interrupted mid-stream")
            raise
        finally:
            self._sender = None

    def _send_alert(self) -> None:
        """Best effort: send the alert a failed engine left for the peer."""
        try:
            if self._under_closed:
                return
            self._queue_output(_PROBE_SIZE)
            if self._send_lock.locked():
                return  # its holder sends everything queued, the alert too
            if self._outbox:
                with _bounded(CLOSE_NOTIFY_TIMEOUT):
                    self._send_outbox(wait=False)
        except FlowError as exc:
            log.debug("could not send the TLS alert on %r: %s", self, exc)

    # -- ending --------------------------------------------------------------------------

    def shutdown(self, how: Shutdown | str = Shutdown.WRITE) -> None:
        how = begin_shutdown(how, closed=self._closed, writing=self._writing, write_shut=self._write_shut)
        ending_writes = how.writes and not self._write_shut
        # The read half first: it cannot fail, and a blocked reader should
        # not wait for the close_notify to go out.
        if how.reads and not self._read_shut:
            self._read_shut = True
            self._wake_reader()
        try:
            if ending_writes:
                self._write_shut = True
                if self._write_error is None and self._engine.error is None:
                    try:
                        self._engine.send_close_notify()
                    except TLSError as exc:
                        self._write_error = exc
                        self._send_alert()
                        raise
                    # Everything written before was accepted below already;
                    # the close_notify follows it like a write: with
                    # backpressure, bounded by the timeout, failures raised.
                    self._run_write(self._send_close_notify, None, "shutdown('write')")
        finally:
            if self._read_shut and self._write_shut:
                self._close_underlying()

    def _send_close_notify(self, _: None) -> None:
        self._queue_output(_PROBE_SIZE)
        self._send_outbox(wait=True)
        self._check_sent()

    def _wake_reader(self) -> None:
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

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._try_close_notify()
            self._discard_arrived()
        except Exception as exc:
            log.debug("could not end the TLS session on %r cleanly: %s", self, exc)
        self._close_underlying()

    def _try_close_notify(self) -> None:
        engine = self._engine
        if (
            engine.sent_close_notify
            or engine.error is not None
            or self._write_error is not None
            or self._under_closed
            or self._writing  # a record may be half sent: nothing may follow it
            or engine.state is not EngineState.OPEN
        ):
            return
        engine.send_close_notify()
        self._queue_output(_PROBE_SIZE)
        if self._send_lock.locked():
            # The background sender holds it (session tickets, say, that the
            # peer has not read yet); it sends everything queued, in order,
            # and _close_underlying gives it CLOSE_NOTIFY_TIMEOUT to finish.
            return
        with _bounded(CLOSE_NOTIFY_TIMEOUT):
            self._send_outbox(wait=False)

    def _discard_arrived(self) -> None:
        """Read and drop what already arrived, without waiting for more.

        A TCP socket closed with unread bytes in its receive buffer answers
        with a reset, and a reset can destroy data still on its way to the
        peer. A TLS 1.3 client that only writes always has such bytes: the
        server's session tickets. So ``close`` takes them first.
        """
        if self._receiving or self._under_closed:
            return
        with _bounded(0):
            for _ in range(16):
                if not self._under.read(RECEIVE_SIZE):
                    break

    def _close_underlying(self) -> None:
        if self._under_closed:
            return
        sender = self._sender
        if sender is not None and not sender.dead and sender is not getcurrent():
            # A close_notify (or a handshake's tail) may still be on its way.
            sender.join(CLOSE_NOTIFY_TIMEOUT)
        self._under_closed = True
        self._under.close()

    def unwrap(self) -> tuple[Flow, bytes]:
        """End TLS and hand back the underlying flow, for STARTTLS protocols.

        Sends our close_notify (if not sent yet), waits for the peer's
        (within :attr:`timeout`), and returns the underlying flow with the
        bytes that arrived after the peer's close_notify, which belong to
        whatever comes next on the flow. This flow is closed afterwards,
        without closing the underlying one.

        Raises:
            TLSError: the peer sent application data instead of its
                close_notify, or the session failed.
            BusyError: another greenlet is reading or writing.
            ClosedError, BrokenError, FlowTimeout: as for reads.
        """
        if self._closed:
            raise closed_error("unwrap")
        if self._reading or self._writing:
            raise BusyError("cannot unwrap: another greenlet is reading or writing this flow")
        self.shutdown(Shutdown.WRITE)
        # The caller may write in the clear as soon as we return, so our
        # close_notify must be out first.
        self._send_outbox(wait=True)
        while not self._engine.received_close_notify:
            data = self.read()
            if data:
                raise TLSError(
                    f"cannot unwrap: the peer sent {len(data)} bytes of data instead of its close_notify"
                )
            if not self._engine.received_close_notify:
                raise TLSError("cannot unwrap: this side shut down reading before the peer's close_notify")
        trailing = self._engine.unread_ciphertext()
        self._closed = True
        self._under_closed = True  # it is the caller's now
        return self._under, trailing

    def renegotiate(self) -> None:
        """Start a TLS 1.2 renegotiation; it completes while data flows.

        Sends the request (a HelloRequest from a server, a ClientHello from a
        client) and returns; the exchange finishes as either side reads and
        writes (the peer must be reading or writing too, or each side waits
        for the other). :attr:`epoch` counts renegotiations. Counts as a
        write for :class:`BusyError`. A server made with
        :func:`greenflow.tls.server_context` refuses renegotiations that
        clients start (OpenSSL's default, against a denial of service): the
        client's next call then raises :class:`TLSError`.

        Raises:
            ValueError: the session is not TLS 1.2.
        """
        if self._writing or self._closed or self._write_shut or self._write_error:
            self._enter_write("renegotiate")

        def start(_: None) -> None:
            self._engine.renegotiate()
            self._queue_output(_PROBE_SIZE)
            self._send_outbox(wait=True)

        self._run_write(start, None, "renegotiate")

    # -- attributes ------------------------------------------------------------------------

    @property
    def local_address(self) -> object:
        return self._under.local_address

    @property
    def peer_address(self) -> object:
        return self._under.peer_address

    @property
    def epoch(self) -> TLSEpoch:
        """What the handshake agreed: version, cipher, ALPN, SNI, peer certificate."""
        return self._engine.epoch()

    @property
    def tls_session(self) -> SSL.Session | None:
        """The session, to resume later (``greenflow.tls.client(..., session=)``).

        In TLS 1.3 the server sends its tickets after the handshake, so read
        from the flow before taking this.
        """
        return self._engine.connection.get_session()

    @property
    def connection(self) -> SSL.Connection:
        """The pyOpenSSL connection, for what this class does not wrap.

        Do not read, write or shut it down: the flow owns it.
        """
        return self._engine.connection
