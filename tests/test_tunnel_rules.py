"""The tunnel's pure rules: SNI routes, the client allow-list, pins, and which targets are local."""

from __future__ import annotations

import datetime

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from greenflow.addresses import parse_url
from greenflow.cli._common import CommandError
from greenflow.cli._tunnel import _check_target
from greenflow.cli._tunnel_tls import AllowList, Route, Routes, parse_pin, public_key_pin


def _routes(*pairs: tuple[str, str]) -> Routes:
    return Routes(tuple(Route(name, parse_url(url)) for name, url in pairs))


def test_routes_exact_before_wildcard_then_order() -> None:
    routes = _routes(
        ("*.example.com", "tcp://127.0.0.1:1"),
        ("api.example.com", "tcp://127.0.0.1:2"),
        ("*", "tcp://127.0.0.1:3"),
    )
    assert routes.target_for("api.example.com").port == 2  # type: ignore[union-attr]
    assert routes.target_for("API.Example.com.").port == 2  # type: ignore[union-attr]
    assert routes.target_for("www.example.com").port == 1  # type: ignore[union-attr]
    assert routes.target_for("a.b.example.com").port == 3  # type: ignore[union-attr]
    assert routes.target_for("example.com").port == 3  # type: ignore[union-attr]
    assert routes.target_for(None) is None
    assert _routes(("*.example.com", "tcp://127.0.0.1:1")).target_for(".example.com") is None
    assert not Routes() and routes


def _certificate(dns: str, uri: str, common_name: str) -> x509.Certificate:
    """A self-signed certificate with a DNS and a URI name (trustme makes no URI names)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(dns), x509.UniformResourceIdentifier(uri)]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def test_the_allow_list_admits_by_any_kind() -> None:
    cert = _certificate("svc.example.org", "spiffe://example.org/app", "svc")
    subject = cert.subject.rfc4514_string()
    assert AllowList().refusal(None) is None  # no list: everyone the TLS layer verified
    assert AllowList.parse([], ["SVC.example.org"], [], []).refusal(cert) is None
    assert AllowList.parse([], [], ["spiffe://example.org/app"], []).refusal(cert) is None
    assert AllowList.parse([subject], [], [], []).refusal(cert) is None
    import base64

    pin = "sha256//" + base64.b64encode(public_key_pin(cert)).decode()
    assert AllowList.parse([], [], [], [pin]).refusal(cert) is None
    strict = AllowList.parse(["CN=other"], ["other.example"], ["spiffe://x/y"], [])
    assert "is not on the allow-list" in (strict.refusal(cert) or "")
    assert strict.refusal(None) == "the client sent no certificate"


def test_a_certificate_without_names_is_refused_by_names() -> None:
    ca = trustme.CA()
    cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())  # a CA certificate has no SAN
    assert "not on the allow-list" in (AllowList.parse([], ["x.example"], [], []).refusal(cert) or "")


def test_pins_and_subjects_are_checked() -> None:
    digest = bytes(32)
    import base64

    assert parse_pin(base64.b64encode(digest).decode()) == digest
    for bad in ("sha256//nope!", "sha256//" + base64.b64encode(b"short").decode(), ""):
        with pytest.raises(ValueError, match="public-key pin"):
            parse_pin(bad)
    with pytest.raises(ValueError, match="certificate subject"):
        AllowList.parse(["not a subject"], [], [], [])


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("tcp://127.0.0.1:80", True),
        ("tcp://127.9.9.9:80", True),
        ("tls://[::1]:443", True),
        ("tcp://localhost:80", True),
        ("unix:/run/x.sock", True),
        ("fd://3", True),
        ("vsock://1:80", True),
        ("tcp://10.0.0.1:80", False),
        ("tcp://[2001:db8::1]:80", False),
        ("tcp://db.internal:5432", False),
        ("vsock://2:80", False),
        ("vsock+framed://1:80", True),
        ("vsock+tls://3:80", False),
        ("vsock+uds:/run/vm.sock:80", False),
    ],
)
def test_targets_are_local_unless_allowed(url: str, local: bool) -> None:
    endpoint = parse_url(url)
    _check_target(endpoint, allow_remote=True)
    if local:
        _check_target(endpoint, allow_remote=False)
    else:
        with pytest.raises(CommandError, match="allow-remote-targets"):
            _check_target(endpoint, allow_remote=False)
