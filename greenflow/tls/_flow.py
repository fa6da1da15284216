"""TLSFlow: a TLS session over another flow, with the flow contract.

The calls of the contract, built on the pump (``_pump.py``), whose one retry
loop every TLS operation goes through, and on the kit's direction state:

- each direction is a :class:`~greenflow.kit.Direction` (busy guard,
  per-call timer, sticky error, shut down, closed). TLS failures stay in the
  engine, which raises them again, sticky, on every later call; other
  failures of the underlying flow break the direction they happened in.
  The reading direction's EOF is the engine's: after the peer's close_notify
  it answers ``b""`` for good.
- the flow as a whole is in one :class:`~greenflow.tls._pump.TLSState`:
  handshaking, open, ended (both directions shut down, the underlying flow
  closed), unwrapped (handed back by :meth:`TLSFlow.unwrap`), closed.

A read first asks the engine, which often has a whole record decrypted
already; only when it needs input does the read take its direction and
enter the loop. A write always takes its direction: its ciphertext must be
accepted below before it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final, TypeVar

from OpenSSL import SSL

from ..errors import BrokenError, BusyError
from ..flow import Buffer, Flow, Shutdown, check_max_bytes, log
from ..kit import (
    DirectionState,
    check_buffers,
    check_bytes_like,
    check_writable_buffer,
    closed_error,
    reraise,
    start_timer,
)
from ._engine import (
    _RECORD_OVERHEAD,
    NEED_INPUT,
    RECORD_SIZE,
    WRITE_CHUNK,
    EngineState,
    NeedInput,
    OurEnding,
    PeerEnding,
    TLSEngine,
    TLSEpoch,
)
from ._errors import TLSError
from ._pump import (
    CLOSE_NOTIFY_TIMEOUT,
    RECEIVE_SIZE,
    STREAM_BUFFER_SIZE,
    Sending,
    TLSPump,
    TLSState,
)

__all__ = ["CLOSE_NOTIFY_TIMEOUT", "RECEIVE_SIZE", "STREAM_BUFFER_SIZE", "TLSFlow"]

_A = TypeVar("_A")
_T = TypeVar("_T")

_OPEN: Final = DirectionState.OPEN
_SHUT: Final = DirectionState.SHUT
_WAIT: Final = Sending.WAIT
_NEVER: Final = Sending.NEVER
#: The peer's endings after which ``unwrap`` can hand the flow back (a
#: truncation counts only where it is allowed, else the read raised).
_PEER_ENDED: Final = (PeerEnding.CLOSE_NOTIFY_RECEIVED, PeerEnding.TRUNCATED)
#: The ciphertext a chunk of plaintext becomes, at most (records' overhead).
_CHUNK_SLACK: Final = 4 * _RECORD_OVERHEAD


class TLSFlow(TLSPump):
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

    __slots__ = ()

    def __init__(self, underlying: Flow, engine: TLSEngine, *, timeout: float | None = None) -> None:
        """Wrap ``underlying`` with ``engine``; use :func:`client` or :func:`server`."""
        super().__init__(underlying, engine, timeout=timeout)

    def __repr__(self) -> str:
        return f"<TLSFlow {self._state.value} over {self._under!r}>"

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
            timer = start_timer(timeout, "the TLS handshake", setting="the handshake timeout")
        try:
            self._retry(
                _do_handshake, engine, engine.do_handshake(), Sending.HANDSHAKE, None, what="handshake"
            )
        except TLSError:
            self.send_alert()
            raise
        finally:
            if timer is not None:
                timer.close()
        self._state = TLSState.OPEN

    # -- reading -----------------------------------------------------------------------

    def read(self, max_bytes: int | None = None) -> bytes:
        size = check_max_bytes(max_bytes)
        reader = self._reader
        if (reader.busy or reader.state is not _OPEN) and reader.refuse("read"):
            return b""
        # The common case first: a whole record may already be decrypted.
        engine = self._engine
        try:
            data = engine.read_plaintext(size)
        except TLSError:
            self.send_alert()
            raise
        if data is NEED_INPUT:
            return self._read_waiting(engine.read_plaintext, size, b"", "read")
        return data

    def read_into(self, buffer: bytearray | memoryview) -> int:
        # Checked before the engine hands over any plaintext, which could not
        # be put back if the copy into the buffer failed.
        view = check_writable_buffer(buffer)
        reader = self._reader
        if (reader.busy or reader.state is not _OPEN) and reader.refuse("read_into"):
            return 0
        engine = self._engine
        try:
            count = engine.read_plaintext_into(view)
        except TLSError:
            self.send_alert()
            raise
        if count is NEED_INPUT:
            return self._read_waiting(engine.read_plaintext_into, view, 0, "read_into")
        return count

    def _read_waiting(
        self, operation: Callable[[_A], _T | NeedInput], argument: _A, eof: _T, what: str
    ) -> _T:
        """A read that must wait for ciphertext: through the loop, as a reader."""
        reader = self._reader
        reader.busy = True  # read() found it idle and open, and nothing yielded since
        try:
            result = self._retry(operation, argument, NEED_INPUT, _NEVER, reader, what=what)
        except BaseException as exc:
            if isinstance(exc, BrokenError) and not isinstance(exc, TLSError) and reader.state is _OPEN:
                reader.fail(exc)  # sticky; TLS errors are the engine's, sticky there
            error = reader.interrupted(exc, what)
            if error is exc:
                raise
            raise error from None
        finally:
            reader.leave()
        return eof if result is NEED_INPUT else result

    # -- writing -------------------------------------------------------------------------

    def write(self, data: Buffer) -> None:
        writer = self._writer
        # The kit's enter and leave, inline on this path (as the descriptor
        # flows do): a writing direction refuses, or is taken.
        if writer.busy or writer.state is not _OPEN:
            writer.refuse("write")
        else:
            writer.busy = True
        try:
            view = data if type(data) is bytes else check_bytes_like(data)  # TypeError: nothing sent
            try:
                size = len(view)
                if size > WRITE_CHUNK:
                    self._encrypt_all(view, "write")
                elif size:
                    sealed = self._engine.encrypt(view)
                    lock = self._send_lock
                    if sealed is NEED_INPUT or self._outbox or lock.locked() or self._timeout is not None:
                        self._send_sealed(sealed, view, "write")
                    else:
                        # Nothing queued before it, nobody sending, no timer:
                        # rule 3 is the lock alone, and nothing can have
                        # changed the direction since it was taken.
                        with lock:
                            self._under.write(sealed)
            except BaseException as exc:
                reraise(exc, self._write_failed(exc, "write"))
        finally:
            writer.busy = False
            if writer.timer is not None:
                writer.leave()

    def writev(self, buffers: Iterable[Buffer]) -> None:
        writer = self._writer
        writer.enter("writev")
        try:
            views = check_buffers(buffers)  # TypeError: nothing sent
        except BaseException:
            writer.leave()
            raise
        self._run_write(self._encrypt_views, views, "writev")

    def _run_write(self, body: Callable[[_T, str], None], argument: _T, what: str) -> None:
        """Run a write's body on the writing direction, which the caller entered."""
        try:
            body(argument, what)
        except BaseException as exc:
            reraise(exc, self._write_failed(exc, what))
        finally:
            self._writer.leave()

    def _write_failed(self, exc: BaseException, what: str) -> BaseException:
        """What a write that did not finish raises; it breaks the direction."""
        writer = self._writer
        if isinstance(exc, BrokenError):
            if isinstance(exc, TLSError):
                self.send_alert()  # the engine's own call failed before the loop could send it
            writer.fail(exc)  # sticky: later writes say this one failed
        return writer.interrupted(exc, what)

    def _encrypt_views(self, views: list[memoryview], what: str) -> None:
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
                self._encrypt(b"".join(small), what)
            if size < RECORD_SIZE:
                small, small_size = [view], size
            else:
                small, small_size = [], 0
                self._encrypt_all(view, what)
        if small:
            self._encrypt(b"".join(small) if len(small) > 1 else small[0], what)

    def _encrypt_all(self, data: bytes | memoryview, what: str) -> None:
        if len(data) <= WRITE_CHUNK:
            if data:
                self._encrypt(data, what)
            return
        view = memoryview(data)
        for start in range(0, len(view), WRITE_CHUNK):
            self._encrypt(view[start : start + WRITE_CHUNK], what)

    def _encrypt(self, chunk: bytes | memoryview, what: str) -> None:
        """Encrypt one chunk and hand its ciphertext to the underlying flow.

        The engine takes a chunk whole (no partial writes on memory BIOs),
        or answers ``NEED_INPUT`` in a renegotiation, and the loop retries.
        """
        self._send_sealed(self._engine.encrypt(chunk), chunk, what)

    def _send_sealed(self, sealed: bytes | NeedInput, chunk: bytes | memoryview, what: str) -> None:
        """Send what :meth:`TLSEngine.encrypt` answered for ``chunk``."""
        if sealed is NEED_INPUT:  # a TLS 1.2 renegotiation must hear from the peer first
            self._retry(
                self._engine.write_plaintext,
                chunk,
                NEED_INPUT,
                _WAIT,
                self._writer,
                what=what,
                hint=len(chunk) + _CHUNK_SLACK,
            )
            return
        # What the loop does for an answer at once (rules 1 and 3): the
        # ciphertext joins the queue, and the writer sends it all, waiting.
        self._outbox.append(sealed)
        self._send_waiting(self._writer, what)

    # -- ending --------------------------------------------------------------------------

    def shutdown(self, how: Shutdown | str = Shutdown.WRITE) -> None:
        how = self.begin_shutdown(how)
        reader, writer = self._reader, self._writer
        # The read half first: it cannot fail, and a blocked reader should
        # not wait for the close_notify to go out.
        if how.reads and reader.shut():
            self._wake_reader()
        try:
            if how.writes and writer.state is _OPEN and not writer.busy and self._engine.error is None:
                # Like a write: after everything written before, with
                # backpressure, bounded by the timeout, failures raised.
                writer.enter("shutdown('write')")
                writer.shut()
                self._run_write(self._send_close_notify, None, "shutdown('write')")
            elif how.writes:
                writer.shut()
        finally:
            if reader.state is _SHUT and writer.state is _SHUT:
                self._close_underlying(TLSState.ENDED)

    def _send_close_notify(self, _: None, what: str) -> None:
        self._engine.write_close_notify()
        self._retry(_no_operation, None, None, _WAIT, self._writer, what=what)

    def close(self) -> None:
        if not self.mark_closed():
            return
        try:
            self._try_close_notify()
            self._discard_arrived()
        except Exception as exc:
            log.debug("could not end the TLS session on %r cleanly: %s", self, exc)
        self._close_underlying(TLSState.CLOSED)

    def _try_close_notify(self) -> None:
        engine = self._engine
        if (
            self._state is not TLSState.OPEN
            or engine.state is not EngineState.OPEN
            or engine.our_ending is not OurEnding.OPEN
            or self._writer.error is not None
            or self._writer.busy  # a record may be half sent: nothing may follow it
        ):
            return
        engine.write_close_notify()
        # If the background sender holds the lock (session tickets, say, that
        # the peer has not read yet), it sends everything queued, in order,
        # and _close_underlying gives it CLOSE_NOTIFY_TIMEOUT to finish.
        self._send_bounded()

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
        if self.closed:
            raise closed_error("unwrap")
        if self._reader.busy or self._writer.busy:
            raise BusyError("cannot unwrap: another greenlet is reading or writing this flow")
        self.shutdown(Shutdown.WRITE)
        # The caller may write in the clear as soon as we return, so our
        # close_notify must be out first (a reader may have left it to the
        # background sender).
        timer = start_timer(self._timeout, "unwrap") if self._timeout is not None else None
        try:  # the wait for the send lock too is bounded by the flow's timeout
            self._retry(_no_operation, None, None, _WAIT, None, what="unwrap")
        finally:
            if timer is not None:
                timer.close()
        engine = self._engine
        while engine.peer_ending not in _PEER_ENDED:
            data = self.read()
            if data:
                raise TLSError(
                    f"cannot unwrap: the peer sent {len(data)} bytes of data instead of its close_notify"
                )
            if engine.peer_ending not in _PEER_ENDED:
                raise TLSError("cannot unwrap: this side shut down reading before the peer's close_notify")
        trailing = engine.unread_ciphertext()
        self.mark_closed()
        self._state = TLSState.UNWRAPPED  # the underlying flow is the caller's now
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
        self._writer.enter("renegotiate")
        self._run_write(self._start_renegotiation, None, "renegotiate")

    def _start_renegotiation(self, _: None, what: str) -> None:
        self._engine.renegotiate()
        self._retry(_no_operation, None, None, _WAIT, self._writer, what=what)

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


def _do_handshake(engine: TLSEngine) -> NeedInput | None:
    return engine.do_handshake()


def _no_operation(_: None) -> None:
    """The operation of a turn that only sends what the engine produced."""
