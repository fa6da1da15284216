"""Handshake outcomes: certificates, host names, ALPN, SNI, garbage, stalls."""

from __future__ import annotations

import gevent
import gevent.socket
import pytest

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
