"""The TLS engine: one TLS session as a state machine, with no I/O (sans-IO).

Theory of operation
===================

The engine wraps a pyOpenSSL ``SSL.Connection`` made with no socket, which
gives it two memory BIOs: an *incoming* one that we fill with ciphertext from
the peer (``bio_write``) and an *outgoing* one that OpenSSL fills with
ciphertext for the peer (``bio_read``). Everything else is the four OpenSSL
operations: ``do_handshake``, ``recv`` (decrypt), ``send`` (encrypt) and
``shutdown`` (send close_notify). The engine never blocks, never sleeps and
imports neither gevent nor sockets: bytes go in, bytes and answers come out.
That keeps the protocol testable with no sockets at all, and lets the pump in
``_flow.py`` be the only place that waits.

What an operation answers
-------------------------

Each operation either finishes, or says it needs more ciphertext from the
peer (``NEED_INPUT``, OpenSSL's ``WantReadError``), or fails. It can never
need to *write* first: the outgoing BIO grows on demand, so OpenSSL never
answers ``WantWriteError`` here. Any operation may leave ciphertext in the
outgoing BIO (a handshake reply, a renegotiation message, an alert), and the
caller must send it to the peer *before* it waits for input, or both sides
may wait for each other forever. That is the pump's first rule: send before
you receive.

The states
----------

``HANDSHAKING`` until ``do_handshake`` succeeds, then ``OPEN``. Any failure
moves the engine to ``ERROR`` for good and every later operation raises the
same :class:`TLSError` again (sticky), but ``data_to_send`` keeps working so
that the alert OpenSSL wrote for the peer can still be sent: a peer that is
told why it failed does not hang. Two flags sit beside the state, because
TLS ends each direction on its own: ``sent_close_notify`` (our writing side
is finished) and ``received_close_notify`` (the peer's is). Reading after we
sent close_notify still works; that is the TLS 1.3 half-close. A transport
EOF (``receive_eof``) without the peer's close_notify is a truncation and an
error, unless the engine was made with ``allow_truncation``.

Bounds
------

The engine holds no buffers of its own. OpenSSL holds at most one record of
plaintext (16 KiB) and the incoming BIO holds what the caller fed it; the
pump feeds only when an operation answered ``NEED_INPUT`` (which means less
than a whole record is left), one read of the underlying flow at a time, so
the incoming BIO stays under a record plus one read. The outgoing BIO is
drained after every operation that writes, and ``write`` is given at most
:data:`WRITE_CHUNK` bytes at a time, so it stays under one chunk's
ciphertext.

Cost
----

pyOpenSSL calls are not free (a few microseconds of wrapper code and cffi
each) and every Want* exception costs about a microsecond more, so the engine
makes as few as it can: ``send`` takes up to four records' worth of
plaintext in one call, ``data_to_send`` drains with a buffer larger than one
chunk's ciphertext and knows it has drained everything when the answer is
shorter than the buffer (no extra call ending in ``WantReadError``), and
``recv`` reads one whole record per call.

What pyOpenSSL does not expose
------------------------------

A few things need OpenSSL functions that pyOpenSSL's public API lacks, and
are done through its cffi bindings (``OpenSSL._util``), all in this module:
whole (not partial) writes (``SSL_clear_mode``); the host name check
inside the handshake (``X509_VERIFY_PARAM_set1_host``,
so a wrong server fails *before* we send it anything, with an alert);
whether a session was resumed (``SSL_session_reused``); the reason a
certificate did not verify (``SSL_get_verify_result``); and taking back the
ciphertext that follows the peer's close_notify out of the incoming BIO
(``BIO_read`` on it), which is what ``unwrap`` returns for STARTTLS-style
protocols.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Final, cast

from cryptography import x509
from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from ._errors import TLSCertificateError, TLSError, TLSTruncatedError

__all__ = ["NEED_INPUT", "WRITE_CHUNK", "EngineState", "NeedInput", "TLSEngine", "TLSEpoch"]

#: The largest TLS record's plaintext.
RECORD_SIZE: Final = 16384
#: Plaintext handed to OpenSSL per ``send`` call: four records, so that each
#: call and each underlying write moves about 64 KiB (performance notes).
WRITE_CHUNK: Final = 4 * RECORD_SIZE
#: Worst-case bytes a record adds (TLS 1.2 CBC with SHA-384 and padding; TLS
#: 1.3 and GCM add 22 to 29), with room to spare.
_RECORD_OVERHEAD: Final = 512
#: The buffer ``data_to_send`` drains the outgoing BIO with when it has no
#: better idea: more than one chunk's ciphertext, so one call drains it.
_DRAIN_SIZE: Final = WRITE_CHUNK + 4 * _RECORD_OVERHEAD
#: Most plaintext one ``recv`` call asks for: OpenSSL returns at most one
#: record per call anyway, so a larger request only costs a larger malloc.
_READ_CHUNK: Final = 65536
#: OpenSSL's verify result for a host name that the certificate does not hold.
_X509_V_ERR_HOSTNAME_MISMATCH: Final = 62
_X509_V_ERR_IP_ADDRESS_MISMATCH: Final = 64


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


@dataclass(frozen=True, slots=True)
class TLSEpoch:
    """What was agreed for a TLS session (the Mirage TLS ``epoch``).

    Attributes:
        version: the protocol version, such as ``"TLSv1.3"``.
        cipher: the cipher suite's OpenSSL name, such as
            ``"TLS_AES_256_GCM_SHA384"``.
        alpn_protocol: the application protocol both sides agreed on with
            ALPN, or ``None``.
        server_name: the SNI name the client asked for (on a client, the name
            it sent), or ``None``.
        peer_certificate: the peer's certificate, or ``None`` if it sent none.
        resumed: whether the session was resumed from an earlier one.
        renegotiations: how many renegotiations (TLS 1.2) this side has
            started or answered, finished or not (OpenSSL's count).
    """

    version: str
    cipher: str
    alpn_protocol: str | None
    server_name: str | None
    peer_certificate: x509.Certificate | None
    resumed: bool
    renegotiations: int


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
        "_server_hostname",
        "allow_truncation",
        "received_close_notify",
        "sent_close_notify",
        "server_side",
        "state",
        "transport_eof",
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
        # pyOpenSSL turns on partial writes, which make SSL_write stop after
        # each record. A memory BIO never refuses bytes, so whole writes are
        # safe here, and one call then encrypts a whole chunk.
        _lib.SSL_clear_mode(conn._ssl, _lib.SSL_MODE_ENABLE_PARTIAL_WRITE)
        self._conn = conn
        self.server_side = server_side
        self.allow_truncation = allow_truncation
        self.state = EngineState.HANDSHAKING
        self.sent_close_notify = False
        self.received_close_notify = False
        self.transport_eof = False
        self._error: TLSError | None = None
        self._server_hostname = server_hostname
        if server_side:
            conn.set_accept_state()
            return
        conn.set_connect_state()
        if session is not None:
            conn.set_session(session)
        if server_hostname is None:
            return
        if not server_hostname.strip():
            # OpenSSL takes an empty expected name as "check no name", which
            # would accept any certificate the CA signed: refuse it.
            raise ValueError("server_hostname is empty; give the name to check, or None for no name")
        address = _parse_ip(server_hostname)
        if address is None:
            # SNI carries DNS names only (RFC 6066), in their ASCII form.
            conn.set_tlsext_host_name(_ascii_name(server_hostname))
        if check_hostname:
            if context.get_verify_mode() & SSL.VERIFY_PEER == 0:
                raise ValueError(
                    "the context does not verify certificates, so the host name "
                    f"{server_hostname!r} cannot be checked; use a context that verifies "
                    "(greenflow.tls.client_context) or pass check_hostname=False"
                )
            _set_expected_host(conn, server_hostname, address)

    def __repr__(self) -> str:
        side = "server" if self.server_side else "client"
        return f"<TLSEngine {side} {self.state.value}>"

    # -- moving ciphertext -------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed ciphertext that arrived from the peer."""
        if data:
            self._conn.bio_write(data)

    def receive_eof(self) -> None:
        """Tell the engine that the transport reached EOF."""
        self.transport_eof = True

    def data_to_send(self, size_hint: int = _DRAIN_SIZE) -> bytes:
        """Take all the ciphertext waiting for the peer (``b""`` if none).

        ``size_hint`` is the expected amount: asking for more than is there
        lets one call drain the BIO, since a short answer means it is empty.
        """
        conn = self._conn
        if not _lib.BIO_get_mem_data(conn._from_ssl, _ffi.NULL):
            return b""  # empty: a bio_read would only raise WantReadError (costly)
        try:
            data = conn.bio_read(size_hint)
        except SSL.WantReadError:
            return b""
        if len(data) < size_hint:
            return data
        parts = [data]
        while True:
            try:
                data = conn.bio_read(_DRAIN_SIZE)
            except SSL.WantReadError:
                break
            parts.append(data)
            if len(data) < _DRAIN_SIZE:
                break
        return b"".join(parts)

    # -- the operations -----------------------------------------------------------

    def do_handshake(self) -> NeedInput | None:
        """Advance the handshake; ``None`` when it is complete.

        Raises:
            TLSError: the handshake failed (alert, garbage, certificate).
        """
        if self.state is not EngineState.HANDSHAKING:
            self._check_error()
            return None
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            if self.transport_eof:
                raise self._fail(
                    TLSError("TLS handshake failed: the peer closed the connection during the handshake")
                ) from None
            return NEED_INPUT
        except SSL.Error as exc:
            raise self._fail(self._translate(exc, "handshake")) from exc
        except TLSError as exc:  # raised by one of our context's callbacks
            raise self._fail(exc) from None
        self.state = EngineState.OPEN
        return None

    def recv(self, max_bytes: int) -> bytes | NeedInput:
        """Decrypt and return up to ``max_bytes`` of plaintext (one record).

        Returns ``b""`` at EOF: the peer's close_notify arrived (or, with
        ``allow_truncation``, the transport ended).

        Raises:
            TLSTruncatedError: the transport ended without close_notify.
            TLSError: an alert, garbage, or a failed renegotiation.
        """
        if self.state is not EngineState.OPEN:
            self._check_open()
        if self.received_close_notify:
            return b""
        if self._starved():
            return NEED_INPUT
        try:
            return self._conn.recv(min(max_bytes, _READ_CHUNK))
        except SSL.WantReadError:
            return self._need_input()
        except SSL.ZeroReturnError:
            self.received_close_notify = True
            return b""
        except SSL.Error as exc:
            raise self._fail(self._translate(exc, "session")) from exc

    def recv_into(self, buffer: bytearray | memoryview) -> int | NeedInput:
        """As :meth:`recv`, into ``buffer``; returns the count (0 at EOF)."""
        if self.state is not EngineState.OPEN:
            self._check_open()
        if self.received_close_notify:
            return 0
        if self._starved():
            return NEED_INPUT
        try:
            return self._conn.recv_into(cast(bytearray, buffer), min(len(buffer), _READ_CHUNK))
        except SSL.WantReadError:
            if self._need_input() is NEED_INPUT:
                return NEED_INPUT
            return 0
        except SSL.ZeroReturnError:
            self.received_close_notify = True
            return 0
        except SSL.Error as exc:
            raise self._fail(self._translate(exc, "session")) from exc

    def _starved(self) -> bool:
        """Whether a read can only want input: no plaintext decrypted and not
        taken, no ciphertext fed and not processed, no EOF to report.

        Checked first because asking OpenSSL anyway costs a ``WantReadError``
        (about 1.2 us in pyOpenSSL), on every read that finds nothing there,
        which is every read of a request/response exchange.
        """
        conn = self._conn
        return (
            not self.transport_eof
            and not _lib.SSL_pending(conn._ssl)
            and not _lib.BIO_get_mem_data(conn._into_ssl, _ffi.NULL)
        )

    def _need_input(self) -> bytes | NeedInput:
        if not self.transport_eof:
            return NEED_INPUT
        if self.allow_truncation:
            self.received_close_notify = True
            return b""
        raise self._fail(
            TLSTruncatedError(
                "the TLS stream was truncated: the transport reached EOF without the "
                "peer's close_notify, so data may be missing"
            )
        )

    def send(self, data: bytes | bytearray | memoryview) -> int | NeedInput:
        """Encrypt ``data`` (at most :data:`WRITE_CHUNK` bytes, please).

        Returns how many bytes were taken (all of them, with memory BIOs), or
        ``NEED_INPUT`` when a renegotiation must hear from the peer first;
        then call again with the same bytes.

        Raises:
            TLSError: the session failed.
        """
        if self.state is not EngineState.OPEN:
            self._check_open()
        if self.sent_close_notify:
            raise ValueError("cannot send after close_notify")
        try:
            sent: int = self._conn.send(data)
        except SSL.WantReadError:
            if self.transport_eof:
                raise self._fail(
                    TLSError("TLS renegotiation failed: the peer closed the connection")
                ) from None
            return NEED_INPUT
        except SSL.Error as exc:
            raise self._fail(self._translate(exc, "session")) from exc
        return sent

    def send_close_notify(self) -> None:
        """Write our close_notify to the outgoing BIO (once; idempotent)."""
        if self.sent_close_notify or self.state is EngineState.ERROR:
            return
        self.sent_close_notify = True
        if self.state is EngineState.HANDSHAKING:
            return  # nothing was agreed, so there is nothing to close
        try:
            self._conn.shutdown()
        except SSL.Error as exc:
            raise self._fail(self._translate(exc, "shutdown")) from exc

    def renegotiate(self) -> None:
        """Start a renegotiation (TLS 1.2 only); it completes as data flows.

        Raises:
            ValueError: the session is not TLS 1.2, or is not open.
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
        except SSL.Error as exc:
            raise self._fail(self._translate(exc, "renegotiation")) from exc

    def unread_ciphertext(self) -> bytes:
        """Take the bytes fed to the engine that OpenSSL has not consumed.

        After the peer's close_notify these are the bytes the peer sent after
        it, in the clear (STARTTLS-style protocols).
        """
        into = self._conn._into_ssl
        parts = []
        buf = _ffi.new("char[]", _DRAIN_SIZE)
        while True:
            count = _lib.BIO_read(into, buf, _DRAIN_SIZE)
            if count <= 0:
                break
            parts.append(_ffi.buffer(buf, count)[:])
        return b"".join(parts)

    # -- information -------------------------------------------------------------------

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
        conn = self._conn
        alpn = conn.get_alpn_proto_negotiated()
        if self.server_side:
            name = conn.get_servername()
            server_name = name.decode("ascii", "replace") if name else None
        else:
            server_name = self._server_hostname
        peer = conn.get_peer_certificate()
        return TLSEpoch(
            version=conn.get_protocol_version_name(),
            cipher=conn.get_cipher_name() or "",
            alpn_protocol=alpn.decode("ascii", "replace") if alpn else None,
            server_name=server_name,
            peer_certificate=peer.to_cryptography() if peer is not None else None,
            resumed=bool(_lib.SSL_session_reused(conn._ssl)),
            renegotiations=conn.total_renegotiations(),
        )

    # -- errors: translated in one place ------------------------------------------------

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
        self.state = EngineState.ERROR
        self._error = error
        return error

    def _translate(self, exc: SSL.Error, phase: str) -> TLSError:
        """Turn an OpenSSL error into a TLSError whose message names the cause."""
        reasons = _reasons(exc)
        if "certificate verify failed" in reasons:
            return self._certificate_error(phase)
        alerts = [reason.split("alert ", 1)[1] for reason in reasons if "alert " in reason]
        if alerts:
            cause = f"the peer sent the alert {alerts[0]!r}"
        elif "no renegotiation" in reasons:
            cause = (
                "the peer refused to renegotiate (servers refuse client-initiated renegotiation by default)"
            )
        elif reasons:
            cause = "; ".join(dict.fromkeys(reasons))
            garbage = ("wrong version number", "record layer", "packet length", "http")
            if self.state is EngineState.HANDSHAKING and any(key in cause for key in garbage):
                cause += " (the peer does not seem to speak TLS)"
        elif isinstance(exc, SSL.SysCallError):
            cause = "the transport ended unexpectedly"
        else:
            cause = type(exc).__name__
        return TLSError(f"TLS {phase} failed: {cause}")

    def _certificate_error(self, phase: str) -> TLSCertificateError:
        conn = self._conn
        code = int(_lib.SSL_get_verify_result(conn._ssl))
        reason = _ffi.string(_lib.X509_verify_cert_error_string(code)).decode("ascii", "replace")
        chain = [cert.to_cryptography() for cert in conn.get_peer_cert_chain() or []]
        whose = "client" if self.server_side else "server"
        if code in (_X509_V_ERR_HOSTNAME_MISMATCH, _X509_V_ERR_IP_ADDRESS_MISMATCH):
            held = _certificate_names(chain[0]) if chain else "no names we could read"
            message = (
                f"TLS {phase} failed: the {whose}'s certificate does not match the expected "
                f"name {self._server_hostname!r}; the certificate is for {held}"
            )
        else:
            subject = chain[0].subject.rfc4514_string() if chain else "an unknown subject"
            message = f"TLS {phase} failed: the {whose}'s certificate ({subject}) did not verify: {reason}"
        error = TLSCertificateError(message)
        error.verify_code = code
        return error


# -- helpers -----------------------------------------------------------------------------


def _reasons(exc: SSL.Error) -> list[str]:
    """The reason strings of a pyOpenSSL error (its args hold OpenSSL's queue)."""
    reasons: list[str] = []
    for arg in exc.args:
        if isinstance(arg, list):
            reasons.extend(str(item[2]) for item in arg if isinstance(item, tuple) and len(item) == 3)
    return [reason for reason in reasons if reason]


def _parse_ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None


def _ascii_name(name: str) -> bytes:
    try:
        return name.encode("ascii")
    except UnicodeEncodeError:
        return name.encode("idna")


def _set_expected_host(
    conn: SSL.Connection, name: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
) -> None:
    """Make OpenSSL check the peer's name inside the handshake."""
    param = _lib.SSL_get0_param(conn._ssl)
    if address is not None:
        packed = address.packed
        ok = _lib.X509_VERIFY_PARAM_set1_ip(param, packed, len(packed))
    else:
        _lib.X509_VERIFY_PARAM_set_hostflags(param, _lib.X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS)
        encoded = _ascii_name(name)
        ok = _lib.X509_VERIFY_PARAM_set1_host(param, encoded, len(encoded))
    if ok != 1:
        raise ValueError(f"{name!r} is not a host name OpenSSL can check a certificate against")


def _certificate_names(cert: x509.Certificate) -> str:
    """The names a certificate holds, for an error message."""
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        names += [f"DNS:{value}" for value in san.get_values_for_type(x509.DNSName)]
        names += [f"IP:{value}" for value in san.get_values_for_type(x509.IPAddress)]
    if not names:
        common = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        names += [f"CN:{attribute.value!r}" for attribute in common]
    return ", ".join(names) if names else "no names at all"
