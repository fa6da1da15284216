"""Handshake outcomes: certificates, host names, ALPN, SNI, garbage, stalls."""

from __future__ import annotations

import os
import pathlib

import gevent
import gevent.socket
import pytest
from OpenSSL import SSL

import greenflow
from greenflow import FlowTimeout, tls
from greenflow.tls import TLSCertificateError, TLSError

from tls_helpers import contexts, shared_certs, tls_over


def _both(client_ctx, server_ctx, hostname="localhost"):  # type: ignore[no-untyped-def]
    """Handshake both ends; return (client outcome, server outcome)."""
    a, b = greenflow.socketpair()
    side = gevent.spawn(lambda: _outcome(lambda: tls.server(b, server_ctx, handshake_timeout=5)))
    mine = _outcome(lambda: tls.client(a, client_ctx, server_hostname=hostname, handshake_timeout=5))
    theirs = side.get(timeout=10)
    for flow in (mine, theirs):
        if isinstance(flow, tls.TLSFlow):
            flow.close()
    return mine, theirs


def _outcome(call):  # type: ignore[no-untyped-def]
    try:
        return call()
    except Exception as exc:
        return exc


def test_wrong_hostname_names_both() -> None:
    client_ctx, server_ctx = contexts(shared_certs())
    mine, theirs = _both(client_ctx, server_ctx, hostname="wrong.example")
    assert isinstance(mine, TLSCertificateError)
    assert "'wrong.example'" in str(mine) and "DNS:localhost" in str(mine) and "IP:127.0.0.1" in str(mine)
    assert isinstance(mine, greenflow.BrokenError) and isinstance(mine, ConnectionError)
    assert isinstance(theirs, TLSError) and "bad certificate" in str(theirs)  # the alert reached it


def test_ip_address_hostname() -> None:
    client_ctx, server_ctx = contexts(shared_certs())
    mine, _ = _both(client_ctx, server_ctx, hostname="127.0.0.1")
    assert isinstance(mine, tls.TLSFlow)
    mine, _ = _both(client_ctx, server_ctx, hostname="10.9.9.9")
    assert isinstance(mine, TLSCertificateError) and "10.9.9.9" in str(mine)


@pytest.mark.parametrize(("which", "reason"), [("expired", "expired"), ("untrusted", "local issuer")])
def test_bad_server_certificates(which: str, reason: str) -> None:
    certs = shared_certs()
    client_ctx, _ = contexts(certs)
    mine, theirs = _both(client_ctx, tls.server_context(getattr(certs, which)))
    assert isinstance(mine, TLSCertificateError), mine
    assert reason in str(mine)
    assert isinstance(theirs, TLSError)


def test_client_certificate_required() -> None:
    certs = shared_certs()
    server_ctx = tls.server_context(certs.server, client_cafile=certs.ca, require_client_certificate=True)
    # Missing: the server refuses; in TLS 1.3 the client learns it on its first read.
    client_ctx = tls.client_context(cafile=certs.ca)
    a, b = greenflow.socketpair(timeout=5)
    side = gevent.spawn(_outcome, lambda: tls.server(b, server_ctx, handshake_timeout=5))
    flow = tls.client(a, client_ctx, server_hostname="localhost")
    refused = side.get(timeout=10)
    assert isinstance(refused, TLSError) and "certificate" in str(refused)
    with pytest.raises(TLSError, match="certificate required"):
        flow.read()
    flow.close()
    # Present: both sides see it.
    client_ctx = tls.client_context(cafile=certs.ca, certfile=certs.client)
    left, right = tls_over(greenflow.socketpair, client_ctx, server_ctx)
    cert = right.epoch.peer_certificate
    assert cert is not None and "client@example.org" in str(cert.extensions)
    left.close()
    right.close()


def test_alpn_agreed_and_refused() -> None:
    certs = shared_certs()
    server_ctx = tls.server_context(certs.server, alpn_protocols=["h2", "http/1.1"])
    agreed = tls.client_context(cafile=certs.ca, alpn_protocols=["http/1.1", "h2"])
    left, right = tls_over(greenflow.socketpair, agreed, server_ctx)
    assert left.epoch.alpn_protocol == right.epoch.alpn_protocol == "h2"  # the server's preference
    left.close()
    right.close()
    refused = tls.client_context(cafile=certs.ca, alpn_protocols=["imap"])
    mine, theirs = _both(refused, server_ctx)
    assert isinstance(mine, TLSError) and "no application protocol" in str(mine)
    assert isinstance(theirs, TLSError)


def test_sni_callback_switches_certificate() -> None:
    certs = shared_certs()
    other = tls.server_context(certs.server)
    seen = []

    def choose(name: str | None) -> object:
        seen.append(name)
        return other if name == "localhost" else None

    server_ctx = tls.server_context(certs.untrusted, sni_callback=choose)  # type: ignore[arg-type]
    client_ctx = tls.client_context(cafile=certs.ca)
    left, right = tls_over(greenflow.socketpair, client_ctx, server_ctx)
    assert seen == ["localhost"] and right.epoch.server_name == "localhost"
    left.close()
    right.close()


def test_garbage_instead_of_handshake() -> None:
    client_ctx, _ = contexts(shared_certs())
    a, b = greenflow.socketpair()
    b.write(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"x" * 100)
    with pytest.raises(TLSError, match="handshake failed"):
        tls.client(a, client_ctx, server_hostname="localhost")
    assert a.closed
    b.close()


def test_garbage_to_a_server() -> None:
    _, server_ctx = contexts(shared_certs())
    a, b = greenflow.socketpair()
    a.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(TLSError, match=r"does not seem to speak TLS|http request"):
        tls.server(b, server_ctx)
    a.close()


def test_stalled_peer_times_out() -> None:
    client_ctx, _ = contexts(shared_certs())
    a, b = greenflow.socketpair()
    with pytest.raises(FlowTimeout, match="handshake"):
        tls.client(a, client_ctx, server_hostname="localhost", handshake_timeout=0.2)
    assert a.closed
    b.close()


def test_peer_closes_during_handshake() -> None:
    client_ctx, _ = contexts(shared_certs())
    a, b = greenflow.socketpair()
    b.close()
    with pytest.raises(greenflow.BrokenError):
        tls.client(a, client_ctx, server_hostname="localhost")


def test_context_that_does_not_verify_refuses_hostname_check() -> None:
    from OpenSSL import SSL

    a, b = greenflow.socketpair()
    with pytest.raises(ValueError, match="does not verify"):
        tls.client(a, SSL.Context(SSL.TLS_METHOD), server_hostname="localhost")
    assert a.closed
    b.close()


def test_context_option_errors() -> None:
    certs = shared_certs()
    with pytest.raises(ValueError, match="TLS version"):
        tls.client_context(minimum_version="SSLv3")
    with pytest.raises(ValueError, match="client_cafile"):
        tls.server_context(certs.server, require_client_certificate=True)
    with pytest.raises(ValueError, match="ALPN"):
        tls.client_context(cafile=certs.ca, alpn_protocols=[""])
    assert tls.default_client_context() is tls.default_client_context()
    with open(certs.ca, "rb") as file:
        tls.client_context(cadata=file.read())


# -- certificates OpenSSL holds and cryptography cannot parse (issue 9) ----------------


def test_a_certificate_that_does_not_parse_still_fails_as_a_certificate_error() -> None:
    # One flipped byte in notBefore: the signature no longer verifies, and
    # cryptography refuses the certificate, so the message cannot use it.
    certs = shared_certs()
    client_ctx, _ = contexts(certs)
    mine, theirs = _both(client_ctx, tls.server_context(certs.bad_validity))
    assert isinstance(mine, TLSCertificateError), mine
    assert "did not verify" in str(mine) and "server's certificate" in str(mine)
    assert mine.verify_code != 0
    assert isinstance(theirs, TLSError) and "alert" in str(theirs)  # the alert was sent


def test_a_hostname_mismatch_on_a_san_that_does_not_parse() -> None:
    # CA-signed, so the chain verifies, but the SAN's DNS name holds a
    # non-ASCII byte: the host name check fails, and the names cannot be read.
    certs = shared_certs()
    client_ctx, _ = contexts(certs)
    mine, theirs = _both(client_ctx, tls.server_context(certs.bad_san))
    assert isinstance(mine, TLSCertificateError), mine
    assert "does not match the expected name 'localhost'" in str(mine)
    assert "could not be read" in str(mine)
    assert isinstance(theirs, TLSError) and "bad certificate" in str(theirs)


def test_connect_tls_to_a_certificate_that_does_not_parse() -> None:
    certs = shared_certs()
    client_ctx, _ = contexts(certs)
    server_ctx = tls.server_context(certs.bad_validity)
    listener = gevent.socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> object:
        sock, _ = listener.accept()
        return _outcome(lambda: tls.server(greenflow.from_socket(sock), server_ctx, handshake_timeout=5))

    side = gevent.spawn(serve)
    try:
        port = listener.getsockname()[1]
        with pytest.raises(TLSCertificateError, match="did not verify"):
            tls.connect_tls("127.0.0.1", port, client_ctx, server_hostname="localhost", handshake_timeout=5)
        assert isinstance(side.get(timeout=10), TLSError)
    finally:
        side.kill()
        listener.close()


# -- files that are missing or hold the wrong thing (issue 9) ---------------------------


def _pem_parts(path: str) -> tuple[str, str]:
    """(key, certificates) of a trustme key-and-chain file."""
    with open(path) as file:
        text = file.read()
    at = text.index("-----BEGIN CERTIFICATE")
    return text[:at], text[at:]


@pytest.fixture
def bad_files(tmp_path: pathlib.Path) -> dict[str, str]:
    certs = shared_certs()
    key, chain = _pem_parts(certs.server)
    other_key, _ = _pem_parts(certs.client)
    files = {"junk": "hello, not PEM\n", "cert_only": chain, "key": key, "other_key": other_key}
    paths = {}
    for name, text in files.items():
        path = tmp_path / f"{name}.pem"
        path.write_text(text)
        paths[name] = str(path)
    paths["missing"] = str(tmp_path / "missing.pem")
    return paths


def test_a_missing_certificate_file_is_named(bad_files: dict[str, str]) -> None:
    with pytest.raises(FileNotFoundError, match="cannot read the TLS server certificate file") as caught:
        tls.server_context(bad_files["missing"])
    assert caught.value.filename == bad_files["missing"] and bad_files["missing"] in str(caught.value)
    with pytest.raises(FileNotFoundError, match="server key file"):
        tls.server_context(bad_files["cert_only"], bad_files["missing"])


def test_a_file_that_is_not_pem_is_named(bad_files: dict[str, str]) -> None:
    junk = bad_files["junk"]
    with pytest.raises(ValueError, match=r"server certificate file .* holds no PEM certificate") as caught:
        tls.server_context(junk)
    assert repr(junk) in str(caught.value)
    with pytest.raises(ValueError, match=r"server key file .* holds no PEM private key"):
        tls.server_context(bad_files["cert_only"], junk)


def test_a_certificate_without_its_key(bad_files: dict[str, str]) -> None:
    cert_only = bad_files["cert_only"]
    with pytest.raises(ValueError, match=r"holds no PEM private key.*pass keyfile") as caught:
        tls.server_context(cert_only)
    assert repr(cert_only) in str(caught.value)
    assert isinstance(tls.server_context(cert_only, bad_files["key"]), SSL.Context)  # with its key: fine


def test_a_key_that_does_not_belong_to_the_certificate(bad_files: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="does not belong to the certificate") as caught:
        tls.server_context(bad_files["cert_only"], bad_files["other_key"])
    assert bad_files["other_key"] in str(caught.value) and bad_files["cert_only"] in str(caught.value)
    with pytest.raises(ValueError, match="does not belong"):
        tls.client_context(
            cafile=shared_certs().ca, certfile=bad_files["cert_only"], keyfile=bad_files["other_key"]
        )


def test_bad_ca_files_are_named(bad_files: dict[str, str]) -> None:
    with pytest.raises(FileNotFoundError, match="cannot read the TLS CA file") as caught:
        tls.client_context(cafile=bad_files["missing"])
    assert caught.value.filename == bad_files["missing"]
    with pytest.raises(ValueError, match=r"CA file .* holds no PEM certificate"):
        tls.client_context(cafile=bad_files["junk"])
    with pytest.raises(ValueError, match=r"client CA file .* holds no PEM certificate"):
        tls.server_context(shared_certs().server, client_cafile=bad_files["key"])
    with pytest.raises(IsADirectoryError, match="CA file"):
        tls.client_context(cafile=os.path.dirname(bad_files["junk"]))
