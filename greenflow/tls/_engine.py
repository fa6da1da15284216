"""The TLS engine: one TLS session as a state machine, with no I/O (sans-IO).

Theory of operation
===================

The engine wraps a pyOpenSSL ``SSL.Connection`` made with no socket, which
gives it two memory BIOs: an *incoming* one that we fill with ciphertext from
the peer (``bio_write``) and an *outgoing* one that OpenSSL fills with
ciphertext for the peer (``bio_read``). Everything else is the four OpenSSL
operations: ``do_handshake``, ``recv`` (decrypt), ``send`` (encrypt) and
``shutdown`` (write close_notify). The engine never blocks, never sleeps and
imports neither gevent nor sockets: bytes go in, bytes and answers come out.
That keeps the protocol testable with no sockets at all, and lets the pump in
``_flow.py`` be the only place that waits.

What an operation answers
-------------------------

Each operation (``do_handshake``, ``read_plaintext``, ``write_plaintext``,
``write_close_notify``, ``renegotiate``) either finishes, or says it needs
more ciphertext from the peer (``NEED_INPUT``, OpenSSL's ``WantReadError``),
or fails. It can never
need to *write* first: the outgoing BIO grows on demand, so OpenSSL never
answers ``WantWriteError`` here. Any operation may leave ciphertext in the
outgoing BIO (a handshake reply, a renegotiation message, an alert), and the
caller must send it to the peer *before* it waits for input, or both sides
may wait for each other forever. That is the pump's first rule: send before
you receive.

The states (the rules every method keeps)
-----------------------------------------

The session as a whole is in one :class:`EngineState`:

- ``HANDSHAKING`` until ``do_handshake`` answers ``None``, then ``OPEN``.
- ``ERROR`` for good as soon as any call that touched OpenSSL raised, for
  whatever reason: a TLS failure, garbage, a truncated stream, a callback of
  the context that raised, even ``MemoryError``. The first such error is kept
  (:attr:`~TLSEngine.error`, always a :class:`TLSError`) and every later
  operation raises it again (sticky, same kind). Only ``ciphertext_to_send``
  keeps working in ``ERROR``, so that the alert OpenSSL wrote for the peer
  can still be sent: a peer that is told why it failed does not hang.
- A call refused *before* it touches OpenSSL, for misuse (reading before the
  handshake is done, writing after close_notify, renegotiating TLS 1.3),
  raises ``ValueError`` and changes nothing.

TLS ends each direction on its own, so each side's ending has a state of
its own beside the session's:

- our side (:class:`OurEnding`): ``OPEN``; ``CLOSE_NOTIFY_SENT`` once
  ``write_close_notify`` wrote it (no more plaintext may be written; reading
  goes on, which is the TLS 1.3 half-close); ``ABANDONED`` when that was asked
  during the handshake, where nothing was agreed and so nothing is sent.
- the peer's side (:class:`PeerEnding`): ``OPEN``; ``TRANSPORT_EOF`` once
  ``receive_eof`` said the transport ended (what was fed before is still
  read); then ``CLOSE_NOTIFY_RECEIVED`` when the peer's close_notify is read,
  or ``TRUNCATED`` when the fed ciphertext runs out without it. A truncation
  is an error (:class:`TLSTruncatedError`, the engine goes to ``ERROR``)
  unless the engine was made with ``allow_truncation``; then reads report it
  as EOF. After either ending, reads return EOF.

The method names say which side of the record layer they touch: ciphertext
comes in through ``receive_ciphertext`` and ``receive_eof`` and goes out
through ``ciphertext_to_send``; plaintext goes in through
``write_plaintext`` and out through ``read_plaintext`` and
``read_plaintext_into``.

Bounds
------

The engine holds no buffers of its own. OpenSSL holds at most one record of
plaintext (16 KiB) and the incoming BIO holds what the caller fed it; the
pump feeds only when an operation answered ``NEED_INPUT`` (which means less
than a whole record is left), one read of the underlying flow at a time, so
the incoming BIO stays under a record plus one read. The outgoing BIO is
drained after every operation that writes, and ``write_plaintext`` is given at most
:data:`WRITE_CHUNK` bytes at a time, so it stays under one chunk's
ciphertext.

Cost
----

The engine's calls go straight to OpenSSL's record layer through the
private bindings (``_openssl.RecordLayer``): no pyOpenSSL wrapper code per
call, and "wants more input" is a number, not a ``WantReadError`` (about
1.2 us each in pyOpenSSL). ``write_plaintext`` takes up to four records'
worth of plaintext in one call, ``ciphertext_to_send`` asks how much is
there and takes it in one call, ``read_plaintext_into`` decrypts straight
into the caller's buffer, and a read that finds nothing fed and nothing
decrypted answers ``NEED_INPUT`` without asking OpenSSL at all.

What pyOpenSSL does not expose
------------------------------

Every use of pyOpenSSL's internals is in ``_openssl.py``, which says what it
needs and fails loudly when an upgrade removes it: the record layer above,
whole (not partial) writes (``SSL_clear_mode``), whether a session was
resumed, taking back the ciphertext that follows the peer's close_notify
out of the incoming BIO (what ``unwrap`` returns for STARTTLS-style
protocols), the host name check inside the handshake (for ``_context.py``,
so a wrong server fails *before* we send it anything, with an alert), the
reason a certificate did not verify and a subject that ``cryptography``
cannot parse (for ``_errors.py``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final, NoReturn, TypeVar, cast

from OpenSSL import SSL

from ._context import expect_server
from ._epoch import TLSEpoch, read_epoch
from ._errors import TLSCertificateError, TLSError, TLSTruncatedError, translate
from ._openssl import WANT_INPUT, RecordLayer

__all__ = [
    "NEED_INPUT",
    "WRITE_CHUNK",
    "EngineState",
    "NeedInput",
    "OurEnding",
    "PeerEnding",
    "TLSEngine",
    "TLSEpoch",
]

_E = TypeVar("_E", bytes, int)
_W = TypeVar("_W")

#: The largest TLS record's plaintext.
RECORD_SIZE: Final = 16384
#: Plaintext handed to OpenSSL per ``write_plaintext`` call: four records, so
#: that each call and each underlying write moves about 64 KiB (performance
#: notes).
WRITE_CHUNK: Final = 4 * RECORD_SIZE
#: Worst-case bytes a record adds (TLS 1.2 CBC with SHA-384 and padding; TLS
#: 1.3 and GCM add 22 to 29), with room to spare.
_RECORD_OVERHEAD: Final = 512
#: The block ``unread_ciphertext`` takes the incoming BIO's leftovers in.
_DRAIN_SIZE: Final = WRITE_CHUNK + 4 * _RECORD_OVERHEAD
#: Why a read first checks whether it is *starved* (no plaintext decrypted
#: and not taken, no ciphertext fed and not processed, and no transport EOF
#: to report): asking OpenSSL anyway costs a call into OpenSSL on every read
#: that finds nothing there, which is every read of a request/response
#: exchange; two cheap queries of its buffers cost less.
#:
#: Most plaintext one ``read_plaintext_into`` call asks for: OpenSSL returns
#: at most one record per call anyway (``read_plaintext`` asks for one record).
_READ_CHUNK: Final = 65536


class NeedInput(enum.Enum):
    """The answer of an operation that needs more ciphertext from the peer."""

    NEED_INPUT = "need input"


#: The one value of :class:`NeedInput`.
NEED_INPUT: Final = NeedInput.NEED_INPUT


class EngineState(enum.Enum):
    """Where a TLS session stands; see the module's theory of operation."""

    HANDSHAKING = "handshaking"
    OPEN = "open"
    ERROR = "error"


class OurEnding(enum.Enum):
    """How far our side (our writing direction) has ended."""

    OPEN = "open"
    CLOSE_NOTIFY_SENT = "close_notify sent"
    ABANDONED = "ended during the handshake"


class PeerEnding(enum.Enum):
    """How far the peer's side (our reading direction) has ended."""

    OPEN = "open"
    TRANSPORT_EOF = "transport EOF, data left to read"
    CLOSE_NOTIFY_RECEIVED = "close_notify received"
    TRUNCATED = "EOF without close_notify"


class TLSEngine:
    """One TLS session over memory BIOs: bytes in, bytes and answers out.

    Args:
        context: the pyOpenSSL context (see ``_context.py`` for secure ones).
        server_side: whether this end is the server.
        server_hostname: on a client, the name to send as SNI and, when
            ``check_hostname`` is true, the name (or IP address) the
            server's certificate must hold.
        check_hostname: verify ``server_hostname`` against the certificate
            inside the handshake.
        allow_truncation: treat a transport EOF without close_notify as a
            clean EOF instead of a :class:`TLSTruncatedError`.
        session: a ``SSL.Session`` from an earlier connection to resume.

    Raises:
        ValueError: a host name check was asked for on a context that does
            not verify certificates at all, where it would silently do
            nothing.
    """

    __slots__ = (
        "_conn",
        "_error",
        "_ours",
        "_peer",
        "_records",
        "_server_hostname",
        "allow_truncation",
        "server_side",
        "state",
    )

    def __init__(
        self,
        context: SSL.Context,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        check_hostname: bool = True,
        allow_truncation: bool = False,
        session: SSL.Session | None = None,
    ) -> None:
        conn = SSL.Connection(context, None)
        self._conn = conn
        self._records = RecordLayer(conn)  # whole writes; no exception for "wants input"
        self.server_side = server_side
        self.allow_truncation = allow_truncation
        self.state = EngineState.HANDSHAKING
        self._ours = OurEnding.OPEN
        self._peer = PeerEnding.OPEN
        self._error: TLSError | None = None
        self._server_hostname = server_hostname
        if server_side:
            conn.set_accept_state()
            return
        conn.set_connect_state()
        if session is not None:
            conn.set_session(session)
        if server_hostname is not None:
            expect_server(conn, context, server_hostname, check_hostname=check_hostname)

    def __repr__(self) -> str:
        side = "server" if self.server_side else "client"
        return f"<TLSEngine {side} {self.state.value}>"

    # -- ciphertext in and out -----------------------------------------------------

    def receive_ciphertext(self, data: bytes | bytearray | memoryview) -> None:
        """Feed ciphertext that arrived from the peer."""
        if data:
            try:
                self._records.feed(data)
            except BaseException as exc:
                self._raise_failure(exc, "session")

    def receive_eof(self) -> None:
        """Tell the engine that the transport reached EOF."""
        if self._peer is PeerEnding.OPEN:
            self._peer = PeerEnding.TRANSPORT_EOF

    def ciphertext_to_send(self, size_hint: int = _DRAIN_SIZE) -> bytes:
        """Take all the ciphertext waiting for the peer (``b""`` if none).

        ``size_hint`` is no longer needed (the engine asks OpenSSL how much
        there is) and is kept for callers of greenflow 0.1. Works in
        ``ERROR`` too (the alert).
        """
        return self._records.take_all()

    # -- the operations -----------------------------------------------------------

    def do_handshake(self) -> NeedInput | None:
        """Advance the handshake; ``None`` when it is complete.

        Raises:
            TLSError: the handshake failed (alert, garbage, certificate), or
                the transport ended before it completed.
        """
        if self.state is not EngineState.HANDSHAKING:
            self._check_error()
            return None
        try:
            done = self._records.handshake()
        except BaseException as exc:
            self._raise_failure(exc, "handshake")
        if done == WANT_INPUT:
            if self._peer is not PeerEnding.OPEN:
                raise self._fail(
                    TLSError("TLS handshake failed: the peer closed the connection during the handshake")
                )
            return NEED_INPUT
        self.state = EngineState.OPEN
        return None

    def read_plaintext(self, max_bytes: int) -> bytes | NeedInput:
        """Decrypt and return up to ``max_bytes`` of plaintext (one record).

        Returns ``b""`` at EOF: the peer's close_notify arrived (or, with
        ``allow_truncation``, the transport ended).

        Raises:
            TLSTruncatedError: the transport ended without close_notify.
            TLSError: an alert, garbage, or a failed renegotiation.
            ValueError: the handshake has not completed.
        """
        if max_bytes < 1:  # OpenSSL would answer 0, which reads as the peer's close_notify
            raise ValueError(f"read_plaintext needs max_bytes of at least 1, not {max_bytes}")
        if self.state is not EngineState.OPEN:
            self._check_open()
        peer = self._peer
        if peer is PeerEnding.OPEN:
            if self._records.starved():  # see the note above _READ_CHUNK
                return NEED_INPUT
        elif peer is not PeerEnding.TRANSPORT_EOF:
            return b""
        try:
            data = self._records.read(min(max_bytes, RECORD_SIZE))
        except BaseException as exc:
            self._raise_failure(exc, "session")
        if isinstance(data, int):
            return self._read_ended(data, b"")
        return data

    def read_plaintext_into(self, buffer: bytearray | memoryview) -> int | NeedInput:
        """As :meth:`read_plaintext`, into ``buffer``; returns the count (0 at EOF).

        ``buffer`` is a flat view of bytes (``kit.check_writable_buffer``).
        """
        view = buffer if type(buffer) is memoryview else memoryview(buffer)
        size = len(view)
        if size > _READ_CHUNK:
            view = view[:_READ_CHUNK]
        elif not size:  # OpenSSL would answer 0, which reads as the peer's close_notify
            raise ValueError("read_plaintext_into needs a buffer with room for at least one byte")
        if self.state is not EngineState.OPEN:
            self._check_open()
        peer = self._peer
        if peer is PeerEnding.OPEN:
            if self._records.starved():
                return NEED_INPUT
        elif peer is not PeerEnding.TRANSPORT_EOF:
            return 0
        try:
            count = self._records.read_into(view)
        except BaseException as exc:
            self._raise_failure(exc, "session")
        if count > 0:
            return count
        return self._read_ended(count, 0)

    def _read_ended(self, answer: int, eof: _E) -> _E | NeedInput:
        """A read that returned no plaintext: wants input, or the peer ended."""
        if answer == WANT_INPUT:
            return NEED_INPUT if self._input_may_come() else eof
        self._peer = PeerEnding.CLOSE_NOTIFY_RECEIVED
        return eof

    def _input_may_come(self) -> bool:
        """After a read wanted input: True if it may come; False for a
        truncation that is allowed (EOF); raises for one that is not."""
        if self._peer is PeerEnding.OPEN:
            return True
        self._peer = PeerEnding.TRUNCATED
        if self.allow_truncation:
            return False
        raise self._fail(
            TLSTruncatedError(
                "the TLS stream was truncated: the transport reached EOF without the "
                "peer's close_notify, so data may be missing"
            )
        )

    def write_plaintext(self, data: bytes | bytearray | memoryview) -> int | NeedInput:
        """Encrypt ``data`` (at most :data:`WRITE_CHUNK` bytes, please).

        Returns how many bytes were taken (all of them, with memory BIOs), or
        ``NEED_INPUT`` when a renegotiation must hear from the peer first;
        then call again with the same bytes.

        Raises:
            TLSError: the session failed.
            ValueError: the handshake has not completed, or our close_notify
                was written already.
        """
        return self._write(self._records.write, data)

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes | NeedInput:
        """:meth:`write_plaintext` and :meth:`ciphertext_to_send` in one call.

        Returns the ciphertext waiting for the peer once ``data`` was taken
        (what was waiting before included), or ``NEED_INPUT`` as
        :meth:`write_plaintext` does; raises as it does.
        """
        return cast("bytes | NeedInput", self._write(self._records.seal, data))  # WANT_INPUT is filtered

    def _write(
        self, operation: Callable[[bytes | bytearray | memoryview], _W], data: bytes | bytearray | memoryview
    ) -> _W | NeedInput:
        """``operation(data)`` on the record layer: a write, or a write and its ciphertext."""
        if self.state is not EngineState.OPEN:
            self._check_open()
        if self._ours is not OurEnding.OPEN:
            raise ValueError("cannot send after close_notify")
        try:
            answer = operation(data)
        except BaseException as exc:
            self._raise_failure(exc, "session")
        if answer == WANT_INPUT:  # a TLS 1.2 renegotiation must hear from the peer first
            if self._peer is not PeerEnding.OPEN:
                raise self._fail(TLSError("TLS renegotiation failed: the peer closed the connection"))
            return NEED_INPUT
        return answer

    def write_close_notify(self) -> None:
        """End our side: write our close_notify to the outgoing BIO.

        Once; later calls, and calls in ``ERROR``, do nothing. During the
        handshake nothing was agreed, so nothing is written (``ABANDONED``).
        """
        if self._ours is not OurEnding.OPEN or self.state is EngineState.ERROR:
            return
        if self.state is EngineState.HANDSHAKING:
            self._ours = OurEnding.ABANDONED
            return
        self._ours = OurEnding.CLOSE_NOTIFY_SENT
        try:
            self._conn.shutdown()
        except BaseException as exc:
            self._raise_failure(exc, "shutdown")

    def renegotiate(self) -> None:
        """Start a renegotiation (TLS 1.2 only); it completes as data flows.

        Raises:
            ValueError: the session is not TLS 1.2, or is not open.
            TLSError: the session failed.
        """
        self._check_open()
        version = self._conn.get_protocol_version_name()
        if version != "TLSv1.2":
            raise ValueError(
                f"renegotiation exists only in TLS 1.2, and this session is {version} "
                "(pyOpenSSL does not expose TLS 1.3 key updates)"
            )
        try:
            self._conn.renegotiate()
            self._conn.do_handshake()
        except SSL.WantReadError:
            pass
        except BaseException as exc:
            self._raise_failure(exc, "renegotiation")

    def unread_ciphertext(self) -> bytes:
        """Take the bytes fed to the engine that OpenSSL has not consumed.

        After the peer's close_notify these are the bytes the peer sent after
        it, in the clear (STARTTLS-style protocols).
        """
        return self._records.take_unread(_DRAIN_SIZE)

    # -- information -------------------------------------------------------------------

    @property
    def our_ending(self) -> OurEnding:
        """How far our side has ended (see the module's theory of operation)."""
        return self._ours

    @property
    def peer_ending(self) -> PeerEnding:
        """How far the peer's side has ended."""
        return self._peer

    # -- the names of greenflow 0.1, kept for code written against them -------------

    #: Old name of :meth:`receive_ciphertext`.
    receive_data = receive_ciphertext
    #: Old name of :meth:`ciphertext_to_send`.
    data_to_send = ciphertext_to_send
    #: Old name of :meth:`read_plaintext`.
    recv = read_plaintext
    #: Old name of :meth:`read_plaintext_into`.
    recv_into = read_plaintext_into
    #: Old name of :meth:`write_plaintext`.
    send = write_plaintext
    #: Old name of :meth:`write_close_notify`.
    send_close_notify = write_close_notify

    @property
    def sent_close_notify(self) -> bool:
        """Whether our side has ended (old form of :attr:`our_ending`)."""
        return self._ours is not OurEnding.OPEN

    @property
    def received_close_notify(self) -> bool:
        """Whether the peer's close_notify arrived (old form of :attr:`peer_ending`)."""
        return self._peer is PeerEnding.CLOSE_NOTIFY_RECEIVED

    @property
    def transport_eof(self) -> bool:
        """Whether the transport ended without close_notify (old form of :attr:`peer_ending`)."""
        return self._peer is PeerEnding.TRANSPORT_EOF or self._peer is PeerEnding.TRUNCATED

    @property
    def connection(self) -> SSL.Connection:
        """The pyOpenSSL connection, for what the engine does not wrap."""
        return self._conn

    @property
    def error(self) -> TLSError | None:
        """The error that moved the engine to ``ERROR``, if any."""
        return self._error

    def epoch(self) -> TLSEpoch:
        """What the handshake agreed; only valid once it is complete."""
        return read_epoch(self._conn, self.server_side, self._server_hostname)

    # -- errors: every failure goes through _raise_failure ------------------------------

    def _check_open(self) -> None:
        self._check_error()
        if self.state is EngineState.HANDSHAKING:
            raise ValueError("the TLS handshake has not completed")

    def _check_error(self) -> None:
        error = self._error
        if error is not None:
            again = type(error)(str(error))  # the same kind, with a fresh traceback
            if isinstance(error, TLSCertificateError) and isinstance(again, TLSCertificateError):
                again.verify_code = error.verify_code
            raise again from error

    def _fail(self, error: TLSError) -> TLSError:
        """Move to ``ERROR``; the first error is the one kept."""
        self.state = EngineState.ERROR
        if self._error is None:
            self._error = error
        return error

    def _raise_failure(self, exc: BaseException, phase: str) -> NoReturn:
        """Move to ``ERROR`` because ``exc`` escaped an OpenSSL call, and raise.

        An OpenSSL error is translated; a :class:`TLSError` (raised by one of
        our context's callbacks) is raised as it is; any other ``Exception``
        (a user callback's, ``MemoryError``) becomes a :class:`TLSError`
        chained to it; a ``BaseException`` (a kill, a timeout inside a
        callback that waited) is re-raised after recording why the session
        cannot go on.
        """
        if isinstance(exc, SSL.Error):
            error = translate(
                exc,
                phase,
                self._conn,
                handshaking=self.state is EngineState.HANDSHAKING,
                server_side=self.server_side,
                expected_name=self._server_hostname,
            )
            raise self._fail(error) from exc
        if isinstance(exc, TLSError):
            raise self._fail(exc) from None
        if isinstance(exc, Exception):
            raise self._fail(TLSError(f"TLS {phase} failed: {type(exc).__name__}: {exc}")) from exc
        self._fail(TLSError(f"TLS {phase} failed: interrupted by {type(exc).__name__} inside OpenSSL"))
        raise exc
