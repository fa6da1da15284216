"""The errors of the TLS layer.

Every TLS failure is a :class:`TLSError`, which is a
:class:`~greenflow.BrokenError`: the peer or the transport broke the
connection (an alert, a certificate that does not verify, garbage, a cut
stream). The subclasses say which kind, so callers can tell a certificate
problem from a transport problem without parsing messages.

The messages are composed here too, from OpenSSL's errors (see
:func:`translate`), so that every TLS failure is worded in one place.
"""

from __future__ import annotations

from typing import Final

from cryptography import x509
from OpenSSL import SSL, crypto

from ..errors import BrokenError
from ._openssl import subject_oneline, verify_result

__all__ = ["TLSCertificateError", "TLSError", "TLSTruncatedError", "certificate_error", "translate"]


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


# -- composing the messages -------------------------------------------------------------
#
# The engine hands every OpenSSL failure to :func:`translate`, the one place
# that turns OpenSSL's error queue and verify result into a sentence. These
# functions run while a session fails, on whatever the peer sent, so they must
# never raise: a certificate that OpenSSL holds but ``cryptography`` cannot
# parse (a flipped byte in its validity, a SAN entry that is not ASCII) is
# described with what can still be said, and the verification error stays
# the error.

#: OpenSSL's verify results for a host name or IP address that the
#: certificate does not hold.
_X509_V_ERR_HOSTNAME_MISMATCH: Final = 62
_X509_V_ERR_IP_ADDRESS_MISMATCH: Final = 64
#: Words in OpenSSL's reasons that mean the bytes were not TLS at all.
_GARBAGE: Final = ("wrong version number", "record layer", "packet length", "http")


def translate(
    exc: SSL.Error,
    phase: str,
    conn: SSL.Connection,
    *,
    handshaking: bool,
    server_side: bool,
    expected_name: str | None,
) -> TLSError:
    """Turn an OpenSSL error into a TLSError whose message names the cause.

    ``phase`` names the operation for the message (``"handshake"``,
    ``"session"``, ``"shutdown"``, ``"renegotiation"``).
    """
    found = reasons(exc)
    if "certificate verify failed" in found:
        return certificate_error(conn, phase, server_side=server_side, expected_name=expected_name)
    alerts = [reason.split("alert ", 1)[1] for reason in found if "alert " in reason]
    if alerts:
        cause = f"the peer sent the alert {alerts[0]!r}"
    elif "no renegotiation" in found:
        cause = "the peer refused to renegotiate (servers refuse client-initiated renegotiation by default)"
    elif found:
        cause = "; ".join(dict.fromkeys(found))
        if handshaking and any(key in cause for key in _GARBAGE):
            cause += " (the peer does not seem to speak TLS)"
    elif isinstance(exc, SSL.SysCallError):
        cause = "the transport ended unexpectedly"
    else:
        cause = type(exc).__name__
    return TLSError(f"TLS {phase} failed: {cause}")


def certificate_error(
    conn: SSL.Connection, phase: str, *, server_side: bool, expected_name: str | None
) -> TLSCertificateError:
    """The error for a peer certificate that did not verify, saying why."""
    code, reason = verify_result(conn)
    chain = conn.get_peer_cert_chain() or []
    whose = "client" if server_side else "server"
    if code in (_X509_V_ERR_HOSTNAME_MISMATCH, _X509_V_ERR_IP_ADDRESS_MISMATCH):
        held = certificate_names(chain[0]) if chain else "no names we could read"
        message = (
            f"TLS {phase} failed: the {whose}'s certificate does not match the expected "
            f"name {expected_name!r}; the certificate is for {held}"
        )
    else:
        subject = certificate_subject(chain[0]) if chain else "an unknown subject"
        message = f"TLS {phase} failed: the {whose}'s certificate ({subject}) did not verify: {reason}"
    error = TLSCertificateError(message)
    error.verify_code = code
    return error


def reasons(exc: SSL.Error) -> list[str]:
    """The reason strings of a pyOpenSSL error (its args hold OpenSSL's queue)."""
    found: list[str] = []
    for arg in exc.args:
        if isinstance(arg, list):
            found.extend(str(item[2]) for item in arg if isinstance(item, tuple) and len(item) == 3)
    return [reason for reason in found if reason]


def certificate_subject(cert: crypto.X509) -> str:
    """A certificate's subject, for an error message; never raises.

    ``cryptography`` gives the RFC 4514 form but refuses a certificate with
    any field it cannot parse; OpenSSL, which already parsed the certificate
    to verify it, still has the subject then.
    """
    try:
        return cert.to_cryptography().subject.rfc4514_string()
    except Exception:  # any parse failure: say what OpenSSL can
        pass
    # pyOpenSSL's own X509Name is deprecated; OpenSSL's one-line form is
    # the same information ("/O=.../CN=...").
    text = subject_oneline(cert)
    if text is None:  # pragma: no cover - only when OpenSSL is out of memory
        return "a subject that could not be read"
    return text or "an empty subject"


def certificate_names(cert: crypto.X509) -> str:
    """The names a certificate holds, for an error message; never raises."""
    try:
        parsed = cert.to_cryptography()
        try:
            san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = None
        names: list[str] = []
        if san is not None:
            names += [f"DNS:{value}" for value in san.get_values_for_type(x509.DNSName)]
            names += [f"IP:{value}" for value in san.get_values_for_type(x509.IPAddress)]
        if not names:
            common = parsed.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
            names += [f"CN:{attribute.value!r}" for attribute in common]
    except Exception as exc:  # a field that does not parse: say so
        return f"names that could not be read ({exc}), subject {certificate_subject(cert)}"
    return ", ".join(names) if names else "no names at all"
