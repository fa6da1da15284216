"""TLSEpoch: what a TLS session agreed, read off a finished handshake."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from OpenSSL import SSL

from ._openssl import session_reused

__all__ = ["TLSEpoch", "read_epoch"]


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


def read_epoch(conn: SSL.Connection, server_side: bool, server_hostname: str | None) -> TLSEpoch:
    """The :class:`TLSEpoch` of ``conn``, whose handshake is complete.

    ``server_hostname`` is the name a client sent (a server reads the name
    it was asked for from the connection).
    """
    alpn = conn.get_alpn_proto_negotiated()
    if server_side:
        name = conn.get_servername()
        server_name = name.decode("ascii", "replace") if name else None
    else:
        server_name = server_hostname
    peer = conn.get_peer_certificate()
    return TLSEpoch(
        version=conn.get_protocol_version_name(),
        cipher=conn.get_cipher_name() or "",
        alpn_protocol=alpn.decode("ascii", "replace") if alpn else None,
        server_name=server_name,
        peer_certificate=peer.to_cryptography() if peer is not None else None,
        resumed=session_reused(conn),
        renegotiations=conn.total_renegotiations(),
    )
