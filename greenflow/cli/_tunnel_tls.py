"""The TLS side of ``greenflow tunnel``: reloadable certificates, the client allow-list, SNI routes.

- :class:`Certificates` holds the tunnel's two contexts (the listener's
  server context and the client context for TLS targets) and rebuilds them
  from their files on SIGHUP or a timer. A reload that fails keeps the
  contexts in use and logs why; handshakes already done keep the context
  they started with, new ones take the new.
- :class:`ReloadingTLSListener` is :class:`greenflow.tls.TLSListener` with
  its context read from a :class:`Certificates` at each handshake.
- :class:`AllowList` admits a client certificate by subject, DNS or URI
  name, or public-key pin.
- :class:`Routes` picks a target by the SNI name a client asked for, with
  ``*.example.com`` wildcards.

This module imports pyOpenSSL: only TLS tunnels load it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from .. import tls
from ..addresses import Endpoint
from ..flow import Flow
from ..listener import Listener
from ._common import describe_error, openssl_reason

__all__ = ["AllowList", "Certificates", "ReloadingTLSListener", "Routes", "parse_pin"]

log = logging.getLogger("greenflow.tunnel")


class Certificates:
    """The tunnel's TLS contexts, and how to make them again from their files.

    Args:
        build_server: makes the listener's server context (``None``: the
            listener is not TLS).
        build_client: makes the client context for TLS targets (``None``:
            no target is TLS).
        files: the files the contexts are made from; a timed reload happens
            only when one of them changed.
    """

    def __init__(
        self,
        build_server: Callable[[], SSL.Context] | None,
        build_client: Callable[[], SSL.Context] | None,
        files: Sequence[Path],
    ) -> None:
        self._build_server = build_server
        self._build_client = build_client
        self._files = list(files)
        self._seen = self._fingerprint()
        self.server = build_server() if build_server is not None else None
        self.client = build_client() if build_client is not None else None

    def _fingerprint(self) -> bytes | None:
        digest = hashlib.sha256()
        for path in self._files:
            try:
                digest.update(path.read_bytes())
            except OSError:
                return None  # unreadable now: a reload will say why
            digest.update(b"\0")
        return digest.digest()

    def reload(self, why: str, *, only_if_changed: bool = False) -> bool:
        """Make the contexts again from the files; returns whether the new ones are in use.

        A failure is logged (with ``why``, the reason for the reload) and
        the contexts in use are kept.
        """
        seen = self._fingerprint()
        if only_if_changed and seen == self._seen:
            return False
        try:
            server = self._build_server() if self._build_server is not None else None
            client = self._build_client() if self._build_client is not None else None
        except SSL.Error as exc:
            log.warning(
                "%s: keeping the certificates in use, the reload failed: %s", why, openssl_reason(exc)
            )
            return False
        except (tls.TLSError, ValueError, OSError) as exc:
            log.warning(
                "%s: keeping the certificates in use, the reload failed: %s", why, describe_error(exc)
            )
            return False
        self.server, self.client, self._seen = server, client, seen
        log.info("%s: certificates reloaded from %s", why, ", ".join(str(path) for path in self._files))
        return True


class ReloadingTLSListener(tls.TLSListener):
    """A :class:`greenflow.tls.TLSListener` whose context is the newest of a :class:`Certificates`."""

    __slots__ = ("_certificates",)

    def __init__(
        self, listener: Listener, certificates: Certificates, *, handshake_timeout: float | None
    ) -> None:
        assert certificates.server is not None
        super().__init__(listener, certificates.server, handshake_timeout=handshake_timeout)
        self._certificates = certificates

    @property
    def tls_context(self) -> SSL.Context:
        context = self._certificates.server
        assert context is not None
        return context

    def upgrade(self, flow: Flow) -> Flow:
        """The TLS server handshake, with the context in use when it starts."""
        return tls.server(
            flow, self.tls_context, handshake_timeout=self.handshake_timeout, timeout=flow.timeout
        )


def parse_pin(text: str) -> bytes:
    """A public-key pin, ``sha256//BASE64`` (as curl's ``--pinnedpubkey``) or the bare base64.

    Raises:
        ValueError: not the base64 of a SHA-256 digest; the message quotes it.
    """
    encoded = text.removeprefix("sha256//")
    try:
        digest = base64.b64decode(encoded, validate=True)
    except ValueError:
        digest = b""
    if len(digest) != hashlib.sha256().digest_size:
        raise ValueError(f"{text!r} is not a public-key pin (sha256//BASE64 of the SubjectPublicKeyInfo)")
    return digest


def public_key_pin(certificate: x509.Certificate) -> bytes:
    """The SHA-256 of a certificate's SubjectPublicKeyInfo (what a pin names)."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


@dataclass(frozen=True)
class AllowList:
    """Which client certificates may use the tunnel: any match of any kind admits.

    An empty list admits every client the TLS layer verified.
    """

    subjects: frozenset[x509.Name] = frozenset()
    dns_names: frozenset[str] = frozenset()
    uris: frozenset[str] = frozenset()
    pins: frozenset[bytes] = frozenset()

    @classmethod
    def parse(
        cls, subjects: Sequence[str], dns_names: Sequence[str], uris: Sequence[str], pins: Sequence[str]
    ) -> AllowList:
        """From the options' texts. Raises ValueError naming a malformed subject or pin."""
        names = set()
        for subject in subjects:
            try:
                names.add(x509.Name.from_rfc4514_string(subject))
            except ValueError as exc:
                raise ValueError(
                    f"{subject!r} is not a certificate subject (e.g. CN=client,O=Example)"
                ) from exc
        return cls(
            frozenset(names),
            frozenset(name.lower() for name in dns_names),
            frozenset(uris),
            frozenset(parse_pin(pin) for pin in pins),
        )

    def __bool__(self) -> bool:
        return bool(self.subjects or self.dns_names or self.uris or self.pins)

    def refusal(self, certificate: x509.Certificate | None) -> str | None:
        """Why ``certificate`` is not admitted, or ``None`` if it is."""
        if not self:
            return None
        if certificate is None:
            return "the client sent no certificate"
        if certificate.subject in self.subjects or public_key_pin(certificate) in self.pins:
            return None
        try:
            names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            names = x509.SubjectAlternativeName([])
        dns = {name.lower() for name in names.get_values_for_type(x509.DNSName)}
        uris = set(names.get_values_for_type(x509.UniformResourceIdentifier))
        if dns & self.dns_names or uris & self.uris:
            return None
        shown = certificate.subject.rfc4514_string() or "an empty subject"
        return f"the client certificate ({shown}) is not on the allow-list"


@dataclass(frozen=True)
class Route:
    """One ``--route NAME=URL``: a server name or ``*.suffix`` pattern, and its target."""

    pattern: str
    target: Endpoint

    def matches(self, name: str) -> bool:
        if self.pattern == "*":
            return True
        if self.pattern.startswith("*."):
            label, dot, rest = name.partition(".")
            return bool(label) and bool(dot) and rest == self.pattern[2:]
        return name == self.pattern


@dataclass(frozen=True)
class Routes:
    """The SNI routes, in the order given: an exact name wins over a wildcard, then the first match."""

    routes: tuple[Route, ...] = field(default=())

    def target_for(self, server_name: str | None) -> Endpoint | None:
        """The target for a client that asked for ``server_name`` (``None``: it sent no SNI)."""
        if server_name is None:
            return None
        name = server_name.lower().rstrip(".")
        for route in self.routes:
            if route.pattern == name:
                return route.target
        for route in self.routes:
            if route.matches(name):
                return route.target
        return None

    def __bool__(self) -> bool:
        return bool(self.routes)
