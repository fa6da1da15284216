"""The errors of the TLS layer.

Every TLS failure is a :class:`TLSError`, which is a
:class:`~greenflow.BrokenError`: the peer or the transport broke the
connection (an alert, a certificate that does not verify, garbage, a cut
stream). The subclasses say which kind, so callers can tell a certificate
problem from a transport problem without parsing messages.
"""

from __future__ import annotations

from ..errors import BrokenError

__all__ = ["TLSCertificateError", "TLSError", "TLSTruncatedError"]


class TLSError(BrokenError):
    """The TLS session failed: a handshake failure, an alert, or garbage.

    The message names the cause (the alert, OpenSSL's reason); the OpenSSL
    error, where there is one, is chained as ``__cause__``.
    """


class TLSCertificateError(TLSError):
    """The peer's certificate did not verify.

    The message says why: the host name that was expected against the names
    the certificate holds, an expired certificate, an unknown issuer.
    ``verify_code`` is OpenSSL's ``X509_V_ERR_*`` number (0 if unknown).
    """

    verify_code: int = 0


class TLSTruncatedError(TLSError):
    """The transport reached EOF without the peer's close_notify.

    Someone may have cut the stream, so the data read so far may be
    incomplete. Flows made with ``allow_truncation=True`` report such an EOF
    as a plain EOF instead.
    """
