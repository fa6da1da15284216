"""Shared set-up for the TLS tests: certificates, contexts and TLS pairs.

Certificates come from trustme (a throwaway CA made per test session); the
files live in a temporary folder that the session fixture removes.
"""

from __future__ import annotations

import datetime
import functools
import os
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import gevent
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from greenflow import Flow
from greenflow.tls import TLSFlow, client, client_context, server, server_context

Pair = tuple[Flow, Flow]


@dataclass(frozen=True)
class Certs:
    """Paths of the PEM files of one test session's PKI."""

    folder: str
    ca: str  # the CA certificate that clients trust
    server: str  # chain and key for localhost, 127.0.0.1 and ::1
    client: str  # a client certificate and key from the same CA
    expired: str  # a server certificate that expired yesterday
    other_ca: str  # a CA nobody trusts
    untrusted: str  # a localhost certificate from other_ca
    bad_validity: str  # a localhost certificate with a flipped byte in its notBefore
    bad_san: str  # a CA-signed certificate whose SAN DNS name holds a non-ASCII byte


def make_certs(folder: str) -> Certs:
    ca = trustme.CA()
    other = trustme.CA()
    paths = {
        name: os.path.join(folder, f"{name}.pem") for name in Certs.__dataclass_fields__ if name != "folder"
    }
    ca.cert_pem.write_to_path(paths["ca"])
    other.cert_pem.write_to_path(paths["other_ca"])
    ca.issue_cert("localhost", "127.0.0.1", "::1").private_key_and_cert_chain_pem.write_to_path(
        paths["server"]
    )
    ca.issue_cert("client@example.org").private_key_and_cert_chain_pem.write_to_path(paths["client"])
    yesterday = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    expired = ca.issue_cert("localhost", not_after=yesterday)
    expired.private_key_and_cert_chain_pem.write_to_path(paths["expired"])
    other.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(paths["untrusted"])
    _write_mutated(ca, "localhost", _flip_not_before, paths["bad_validity"], resign=False)
    _write_mutated(ca, "xocalhost", _non_ascii_san, paths["bad_san"], resign=True)
    return Certs(folder=folder, **paths)


# -- certificates that OpenSSL takes and cryptography cannot parse -------------------
#
# A certificate is SEQUENCE { tbsCertificate, signatureAlgorithm, signature };
# these mutate bytes inside tbsCertificate and, where asked, sign it again
# with the CA's key, so that only the mutated field is wrong.


def _der_header(tag: int, length: int) -> bytes:
    if length < 0x80:
        return bytes([tag, length])
    size = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + length.to_bytes(size, "big")


def _der_elements(data: bytes) -> list[bytes]:
    """The whole TLVs inside one DER SEQUENCE's contents."""
    elements = []
    at = 0
    while at < len(data):
        first = data[at + 1]
        if first < 0x80:
            start, length = at + 2, first
        else:
            size = first & 0x7F
            start, length = at + 2 + size, int.from_bytes(data[at + 2 : at + 2 + size], "big")
        elements.append(data[at : start + length])
        at = start + length
    return elements


def _sequence_contents(tlv: bytes) -> bytes:
    first = tlv[1]
    return tlv[2 + (first & 0x7F if first >= 0x80 else 0) :]


def _flip_not_before(tbs: bytes) -> bytes:
    # trustme's notBefore is 2000-01-01: UTCTime "000101000000Z".
    at = tbs.index(b"000101000000Z")
    return tbs[: at + 2] + b"x" + tbs[at + 3 :]  # month "x1": not a time


def _non_ascii_san(tbs: bytes) -> bytes:
    assert tbs.count(b"xocalhost") == 1  # the SAN only: trustme sets no CN
    return tbs.replace(b"xocalhost", b"\xe9ocalhost")


def _write_mutated(
    ca: trustme.CA, name: str, mutate: Callable[[bytes], bytes], path: str, *, resign: bool
) -> None:
    issued = ca.issue_cert(name)
    leaf = x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes())
    der = leaf.public_bytes(serialization.Encoding.DER)
    tbs, algorithm, signature = _der_elements(_sequence_contents(der))
    tbs = mutate(tbs)
    if resign:
        key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        raw = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
        signature = _der_header(0x03, len(raw) + 1) + b"\0" + raw
    body = tbs + algorithm + signature
    mutated = _der_header(0x30, len(body)) + body
    pem = ssl.DER_cert_to_PEM_cert(mutated).encode("ascii")
    with open(path, "wb") as file:
        file.write(issued.private_key_pem.bytes() + pem)


_folder: tempfile.TemporaryDirectory[str] | None = None


@functools.cache
def shared_certs() -> Certs:
    """The test session's certificates, made on first use.

    The folder is removed when the interpreter exits (TemporaryDirectory's
    finalizer).
    """
    global _folder
    _folder = tempfile.TemporaryDirectory(prefix="greenflow-tls-")
    return make_certs(_folder.name)


def contexts(
    certs: Certs, version: str | None = None, **server_options: object
) -> tuple[SSL.Context, SSL.Context]:
    """A (client, server) context pair, optionally pinned to one TLS version."""
    limits = {} if version is None else {"minimum_version": version, "maximum_version": version}
    client_ctx = client_context(cafile=certs.ca, **limits)  # type: ignore[arg-type]
    server_ctx = server_context(certs.server, **limits, **server_options)  # type: ignore[arg-type]
    return client_ctx, server_ctx


def tls_over(
    make_pair: Callable[[], Pair],
    client_ctx: SSL.Context,
    server_ctx: SSL.Context,
    *,
    hostname: str | None = "localhost",
    **options: object,
) -> tuple[TLSFlow, TLSFlow]:
    """Handshake over a fresh pair, both ends at once in two greenlets."""
    a, b = make_pair()
    side = gevent.spawn(server, b, server_ctx, handshake_timeout=10, **options)  # type: ignore[arg-type]
    try:
        left = client(a, client_ctx, server_hostname=hostname, handshake_timeout=10, **options)  # type: ignore[arg-type]
    except BaseException:
        side.kill()
        b.close()
        raise
    return left, side.get(timeout=10)
