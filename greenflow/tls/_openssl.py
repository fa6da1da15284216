"""The private bindings: every use of pyOpenSSL's internals, in one module.

pyOpenSSL's public API is complete for setting TLS up and slow for moving
records: each ``Connection`` method runs Python wrapper code, and every
"wants more input" is a raised ``WantReadError`` (about 1.2 us each, more
than the stdlib's whole 64-byte send and receive). So the record layer here
(:class:`RecordLayer`) calls the same OpenSSL functions through the cffi
bindings pyOpenSSL has already loaded (``OpenSSL._util.lib``), answers "wants
input" with a number instead of an exception, and leaves every other
outcome to pyOpenSSL's own error handling, so that errors are raised, and
read, exactly as pyOpenSSL raises them. Everything else (contexts,
certificates, verification, the handshake's setup, shutdown) stays
pyOpenSSL's public API.

The other things here are what pyOpenSSL does not expose at all: whole
writes (``SSL_clear_mode``), whether a session was resumed, the host-name
check inside the handshake, the reason a certificate did not verify, a
subject ``cryptography`` cannot parse, and the bytes left unread in the
incoming BIO (what follows the peer's close_notify, for ``unwrap``).

These are not public APIs of pyOpenSSL and may change with it:
:data:`LIB_NAMES` and :func:`missing_bindings` say what this module needs,
``tests/test_tls_openssl.py`` fails loudly when an upgrade removes any of
it, and importing this module fails with a sentence naming what is missing.
"""

from __future__ import annotations

import ipaddress
from typing import Final

import OpenSSL
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

__all__ = [
    "LIB_NAMES",
    "WANT_INPUT",
    "RecordLayer",
    "missing_bindings",
    "session_reused",
    "set_expected_host",
    "subject_oneline",
    "verify_result",
]

#: The functions and constants of ``OpenSSL._util.lib`` used here.
LIB_NAMES: Final = (
    "BIO_get_mem_data",
    "BIO_read",
    "BIO_write",
    "OPENSSL_free",
    "SSL_ERROR_WANT_READ",
    "SSL_ERROR_ZERO_RETURN",
    "SSL_MODE_ENABLE_PARTIAL_WRITE",
    "SSL_clear_mode",
    "SSL_do_handshake",
    "SSL_get0_param",
    "SSL_get_error",
    "SSL_get_verify_result",
    "SSL_pending",
    "SSL_read",
    "SSL_session_reused",
    "SSL_write",
    "X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS",
    "X509_NAME_oneline",
    "X509_VERIFY_PARAM_set1_host",
    "X509_VERIFY_PARAM_set1_ip",
    "X509_VERIFY_PARAM_set_hostflags",
    "X509_get_subject_name",
    "X509_verify_cert_error_string",
)
#: The private attributes of pyOpenSSL objects used here.
CONNECTION_NAMES: Final = ("_ssl", "_into_ssl", "_from_ssl", "_context", "_raise_ssl_error")
CONTEXT_NAMES: Final = ("_verify_helper", "_alpn_select_helper", "_ocsp_helper")
X509_NAMES: Final = ("_x509",)

#: What a record-layer call answers when OpenSSL needs more ciphertext.
WANT_INPUT: Final = -1


def missing_bindings() -> list[str]:
    """What this module needs that the installed pyOpenSSL lacks (``[]``: all there)."""
    missing = [f"OpenSSL._util.lib.{name}" for name in LIB_NAMES if not hasattr(_lib, name)]
    context = SSL.Context(SSL.TLS_METHOD)
    connection = SSL.Connection(context, None)
    missing += [f"SSL.Connection.{name}" for name in CONNECTION_NAMES if not hasattr(connection, name)]
    missing += [f"SSL.Context.{name}" for name in CONTEXT_NAMES if not hasattr(context, name)]
    certificate = crypto.X509()
    missing += [f"crypto.X509.{name}" for name in X509_NAMES if not hasattr(certificate, name)]
    return missing


_absent = [name for name in LIB_NAMES if not hasattr(_lib, name)]
if _absent or not hasattr(SSL.Connection, "_raise_ssl_error"):  # pragma: no cover - a pyOpenSSL upgrade
    raise ImportError(
        f"greenflow.tls needs pyOpenSSL internals that pyOpenSSL {OpenSSL.__version__} lacks: "
        + ", ".join(_absent or ["SSL.Connection._raise_ssl_error"])
    )

_SSL_read = _lib.SSL_read
_SSL_write = _lib.SSL_write
_SSL_get_error = _lib.SSL_get_error
_SSL_pending = _lib.SSL_pending
_SSL_do_handshake = _lib.SSL_do_handshake
_BIO_read = _lib.BIO_read
_BIO_write = _lib.BIO_write
_BIO_get_mem_data = _lib.BIO_get_mem_data
_WANT_READ: Final = _lib.SSL_ERROR_WANT_READ
_ZERO_RETURN: Final = _lib.SSL_ERROR_ZERO_RETURN
_NULL: Final = _ffi.NULL
_from_buffer = _ffi.from_buffer
_buffer = _ffi.buffer
_unpack = _ffi.unpack
#: Uninitialised C buffers: each is filled by OpenSSL before it is read.
_allocate = _ffi.new_allocator(should_clear_after_alloc=False)


class RecordLayer:
    """OpenSSL's record layer of one ``SSL.Connection``, called directly.

    Every call answers a count, ``0`` for the peer's close_notify where that
    applies, or :data:`WANT_INPUT`; any other outcome is raised by
    pyOpenSSL's own error handling (``SSL.Error`` and its subclasses), after
    the checks it makes for exceptions raised inside the context's Python
    callbacks. A memory BIO never refuses bytes, so nothing here ever wants
    to *write* first.
    """

    __slots__ = ("_conn", "_from", "_into", "_ssl")

    def __init__(self, conn: SSL.Connection) -> None:
        self._conn = conn
        self._ssl = conn._ssl
        self._into = conn._into_ssl
        self._from = conn._from_ssl
        # pyOpenSSL turns on partial writes, which make SSL_write stop after
        # each record. A memory BIO never refuses bytes, so whole writes are
        # safe here, and one call then encrypts a whole chunk.
        _lib.SSL_clear_mode(self._ssl, _lib.SSL_MODE_ENABLE_PARTIAL_WRITE)

    # -- ciphertext ------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append ciphertext from the peer to the incoming BIO."""
        size = len(data)
        if _BIO_write(self._into, data if type(data) is bytes else _from_buffer(data), size) != size:
            raise MemoryError("OpenSSL's memory BIO refused ciphertext")  # pragma: no cover - out of memory

    def outgoing(self) -> int:
        """How many bytes of ciphertext wait in the outgoing BIO."""
        return int(_BIO_get_mem_data(self._from, _NULL))

    def take(self, size: int) -> bytes:
        """Take up to ``size`` bytes of ciphertext from the outgoing BIO."""
        buffer = _allocate("char[]", size)
        count = _BIO_read(self._from, buffer, size)
        data: bytes = _unpack(buffer, count) if count > 0 else b""
        return data

    def take_all(self) -> bytes:
        """Take all the ciphertext waiting in the outgoing BIO (``b""`` if none)."""
        size = _BIO_get_mem_data(self._from, _NULL)
        if not size:
            return b""
        buffer = _allocate("char[]", size)
        data: bytes = _unpack(buffer, _BIO_read(self._from, buffer, size))
        return data

    def take_unread(self, block: int) -> bytes:
        """Take every byte fed that OpenSSL has not consumed."""
        parts = []
        buffer = _allocate("char[]", block)
        while (count := _BIO_read(self._into, buffer, block)) > 0:
            parts.append(_buffer(buffer, count)[:])
        return b"".join(parts)

    def starved(self) -> bool:
        """Nothing decrypted and not taken, and no ciphertext fed and not consumed."""
        return not _SSL_pending(self._ssl) and not _BIO_get_mem_data(self._into, _NULL)

    # -- the operations ----------------------------------------------------------------

    def handshake(self) -> int:
        """Advance the handshake: 1 when complete, or :data:`WANT_INPUT`."""
        result: int = _SSL_do_handshake(self._ssl)
        if result == 1 and self._quiet():
            return 1
        return self._settle(result)

    def read(self, size: int) -> bytes | int:
        """Decrypt up to ``size`` bytes: the plaintext, ``0`` at close_notify, or :data:`WANT_INPUT`."""
        buffer = _allocate("char[]", size)
        result: int = _SSL_read(self._ssl, buffer, size)
        if result <= 0 or not self._quiet():
            result = self._settle(result)
            if result <= 0:
                return result
        data: bytes = _buffer(buffer, result)[:]
        return data

    def read_into(self, view: memoryview) -> int:
        """Decrypt into ``view`` (bytes, flat): the count, ``0`` at close_notify, or :data:`WANT_INPUT`."""
        size = len(view)
        if not view.c_contiguous:
            data = self.read(size)
            if isinstance(data, int):
                return data
            count = len(data)
            view[:count] = data
            return count
        result: int = _SSL_read(self._ssl, _from_buffer(view), size)
        if result > 0 and self._quiet():
            return result
        return self._settle(result)

    def seal(self, data: bytes | bytearray | memoryview) -> bytes | int:
        """Encrypt ``data`` whole and take the ciphertext waiting, or :data:`WANT_INPUT`."""
        size = len(data)
        result: int = _SSL_write(self._ssl, data if type(data) is bytes else _from_buffer(data), size)
        if result <= 0 or not self._quiet():
            result = self._settle(result)
            if result <= 0:
                return result
        size = _BIO_get_mem_data(self._from, _NULL)
        buffer = _allocate("char[]", size)
        sealed: bytes = _unpack(buffer, _BIO_read(self._from, buffer, size))
        return sealed

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt ``data`` whole (at most 2 GiB): its length, or :data:`WANT_INPUT`."""
        size = len(data)
        result: int = _SSL_write(self._ssl, data if type(data) is bytes else _from_buffer(data), size)
        if result > 0 and self._quiet():
            return result
        return self._settle(result)

    # -- outcomes ----------------------------------------------------------------------

    def _quiet(self) -> bool:
        """No Python callback of the context may have left an exception to raise."""
        context = self._conn._context
        return (
            context._verify_helper is None
            and context._alpn_select_helper is None
            and context._ocsp_helper is None
        )

    def _settle(self, result: int) -> int:
        """The answer for ``result``, through pyOpenSSL's error handling."""
        if result <= 0 and self._quiet():
            error = _SSL_get_error(self._ssl, result)
            if error == _WANT_READ:
                return WANT_INPUT
            if error == _ZERO_RETURN:
                return 0
        try:
            self._conn._raise_ssl_error(self._ssl, result)
        except SSL.WantReadError:
            return WANT_INPUT
        except SSL.ZeroReturnError:
            return 0
        return result


# -- what pyOpenSSL does not expose ----------------------------------------------------------


def session_reused(conn: SSL.Connection) -> bool:
    """Whether the handshake resumed an earlier session."""
    return bool(_lib.SSL_session_reused(conn._ssl))


def set_expected_host(
    conn: SSL.Connection, name: bytes | ipaddress.IPv4Address | ipaddress.IPv6Address
) -> bool:
    """Make OpenSSL check the peer's certificate for ``name`` inside the handshake.

    ``name`` is an ASCII host name or an IP address; False if OpenSSL refused it.
    """
    param = _lib.SSL_get0_param(conn._ssl)
    if isinstance(name, bytes):
        _lib.X509_VERIFY_PARAM_set_hostflags(param, _lib.X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS)
        return bool(_lib.X509_VERIFY_PARAM_set1_host(param, name, len(name)) == 1)
    packed = name.packed
    return bool(_lib.X509_VERIFY_PARAM_set1_ip(param, packed, len(packed)) == 1)


def verify_result(conn: SSL.Connection) -> tuple[int, str]:
    """OpenSSL's verification result of the peer's certificate: code and reason."""
    code = int(_lib.SSL_get_verify_result(conn._ssl))
    reason = _ffi.string(_lib.X509_verify_cert_error_string(code)).decode("ascii", "replace")
    return code, reason


def subject_oneline(cert: crypto.X509) -> str | None:
    """OpenSSL's one-line form of a certificate's subject ("/O=.../CN=...")."""
    text = _lib.X509_NAME_oneline(_lib.X509_get_subject_name(cert._x509), _NULL, 0)
    if text == _NULL:  # pragma: no cover - only when OpenSSL is out of memory
        return None
    try:
        return str(_ffi.string(text).decode("utf-8", "replace"))
    finally:
        _lib.OPENSSL_free(text)
