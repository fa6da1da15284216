"""Certificates made on the spot, for trying TLS out locally and for tests.

``greenflow serve --bind tls://...`` without ``--certfile`` uses
:func:`write_self_signed_certificate`; the benchmarks make a throwaway CA
and a ``localhost`` certificate with :func:`certificate_authority` and
:meth:`Issued.issue`. Keys are ECDSA P-256, signatures SHA-256.

Nothing here is for production: the keys live in memory and in files the
caller removes, and a self-signed certificate is trusted only by clients
told to (``--cafile``).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "LOCAL_NAMES",
    "Issued",
    "certificate_authority",
    "self_signed",
    "write_self_signed_certificate",
]

#: The names a certificate for this machine answers to.
LOCAL_NAMES: Final = ("localhost", "127.0.0.1", "::1")

#: How far back a certificate's validity starts, for clocks a little apart.
_BACKDATE: Final = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def certificate_pem(self) -> bytes:
        """The certificate, PEM-encoded."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The private key, PEM-encoded (PKCS #8, not encrypted)."""
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def fingerprint(self) -> str:
        """The SHA-256 fingerprint of the certificate, in hex."""
        return hashlib.sha256(self.certificate.public_bytes(serialization.Encoding.DER)).hexdigest()

    def write(self, path: str | os.PathLike[str], *, with_key: bool = True) -> Path:
        """Write the certificate (then the key, with ``with_key``) to ``path``.

        The file is made readable by its owner only, before anything is
        written to it. Returns the path.
        """
        path = Path(path)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(self.certificate_pem + (self.key_pem if with_key else b""))
        return path

    def issue(
        self, names: Sequence[str] = LOCAL_NAMES, *, common_name: str | None = None, days: int = 30
    ) -> Issued:
        """A server certificate for ``names`` (host names or IP addresses), signed by this one."""
        return _build(common_name or names[0], issuer=self, days=days, extensions=_for_names(names, ca=False))


def self_signed(
    names: Sequence[str] = LOCAL_NAMES,
    *,
    common_name: str = "greenflow self-signed localhost",
    days: int = 30,
) -> Issued:
    """A certificate for ``names`` that signs itself: its own trust anchor.

    A client trusts it by loading the certificate as its CA file.
    """
    return _build(common_name, issuer=None, days=days, extensions=_for_names(names, ca=True))


def certificate_authority(common_name: str = "greenflow test CA", *, days: int = 30) -> Issued:
    """A CA certificate that can sign others (with :meth:`Issued.issue`), and nothing else."""
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    extensions = [(x509.BasicConstraints(ca=True, path_length=None), True), (usage, True)]
    return _build(common_name, issuer=None, days=days, extensions=extensions)


def write_self_signed_certificate(folder: str | os.PathLike[str], days: int = 30) -> tuple[Path, str]:
    """Make a self-signed certificate for localhost, 127.0.0.1 and ::1.

    Writes ``cert.pem`` (the certificate, then the key) into ``folder``, the
    key readable by the owner only, and returns its path and the SHA-256
    fingerprint of the certificate. Good for trying TLS out locally; clients
    trust it with ``--cafile`` pointing at the same file.
    """
    issued = self_signed(days=days)
    return issued.write(Path(folder) / "cert.pem"), issued.fingerprint


def _build(
    common_name: str,
    *,
    issuer: Issued | None,
    days: int,
    extensions: Iterable[tuple[x509.ExtensionType, bool]],
) -> Issued:
    """A new key and its certificate, signed by ``issuer`` (``None``: by itself)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(common_name)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return Issued(builder.sign(key if issuer is None else issuer.key, hashes.SHA256()), key)


def _for_names(names: Iterable[str], *, ca: bool) -> list[tuple[x509.ExtensionType, bool]]:
    """The extensions of a server certificate: its names, and whether it may sign others."""
    return [
        (x509.SubjectAlternativeName(_general_names(names)), False),
        (x509.BasicConstraints(ca=ca, path_length=None), True),
    ]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _general_names(names: Iterable[str]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result
