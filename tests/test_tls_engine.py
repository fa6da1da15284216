"""The sans-IO engine alone: two engines joined by hand, no sockets, no gevent."""

from __future__ import annotations

import pytest

from greenflow.tls import TLSEngine, TLSError, TLSTruncatedError
from greenflow.tls._engine import NEED_INPUT, WRITE_CHUNK, EngineState, PeerEnding

from tls_helpers import contexts, shared_certs


def _pair(version: str = "TLSv1.3", **options: bool) -> tuple[TLSEngine, TLSEngine]:
    client_ctx, server_ctx = contexts(shared_certs(), version)
    client = TLSEngine(client_ctx, server_side=False, server_hostname="localhost", **options)
    server = TLSEngine(server_ctx, server_side=True, **options)
    for _ in range(10):
        done = [engine.do_handshake() is None for engine in (client, server)]
        _move(client, server)
        _move(server, client)
        if all(done):
            return client, server
    raise AssertionError("the handshake did not finish")


def _move(source: TLSEngine, target: TLSEngine) -> int:
    data = source.ciphertext_to_send()
    target.receive_ciphertext(data)
    return len(data)


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_data_both_ways_and_bounds(version: str) -> None:
    client, server = _pair(version)
    assert client.state is server.state is EngineState.OPEN
    assert client.read_plaintext(100) is NEED_INPUT  # nothing yet, and no error
    assert client.write_plaintext(b"x" * WRITE_CHUNK) == WRITE_CHUNK
    produced = client.ciphertext_to_send()
    assert WRITE_CHUNK < len(produced) < WRITE_CHUNK + 1024  # one chunk's ciphertext, drained in one go
    assert client.ciphertext_to_send() == b""
    server.receive_ciphertext(produced)
    got = b""
    while (chunk := server.read_plaintext(65536)) is not NEED_INPUT:
        assert isinstance(chunk, bytes) and 0 < len(chunk) <= 16384  # one record per call
        got += chunk
    assert got == b"x" * WRITE_CHUNK
    buffer = bytearray(10)
    server.write_plaintext(b"hello")
    _move(server, client)
    assert client.read_plaintext_into(buffer) == 5 and buffer[:5] == b"hello"


def test_close_notify_half_close_and_unread() -> None:
    client, server = _pair()
    client.write_close_notify()
    client.write_close_notify()  # idempotent
    _move(client, server)
    assert server.read_plaintext(10) == b"" and server.peer_ending is PeerEnding.CLOSE_NOTIFY_RECEIVED
    server.write_plaintext(b"still talking")
    _move(server, client)
    assert client.read_plaintext(100) == b"still talking"  # reading after our close_notify
    server.write_close_notify()
    data = server.ciphertext_to_send() + b"PLAINTEXT AFTER"
    client.receive_ciphertext(data)
    assert client.read_plaintext(100) == b""
    assert client.unread_ciphertext() == b"PLAINTEXT AFTER"


def test_truncation_and_lax_mode() -> None:
    client, _server = _pair()
    client.receive_eof()
    with pytest.raises(TLSTruncatedError, match="truncated"):
        client.read_plaintext(10)
    with pytest.raises(TLSTruncatedError):
        client.read_plaintext(10)  # sticky, same kind
    assert client.state is EngineState.ERROR
    lax, _peer = _pair(allow_truncation=True)
    lax.receive_eof()
    assert lax.read_plaintext(10) == b""
    assert lax.read_plaintext_into(bytearray(3)) == 0


def test_garbage_record_is_an_error_with_an_alert() -> None:
    client, _ = _pair()
    client.receive_ciphertext(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # a record that does not decrypt
    with pytest.raises(TLSError, match="session failed"):
        client.read_plaintext(10)
    assert client.ciphertext_to_send()  # the alert for the peer
    with pytest.raises(TLSError):
        client.write_plaintext(b"x")


def test_renegotiation_tls12_and_not_13() -> None:
    client, server = _pair("TLSv1.2")
    server.renegotiate()
    for _ in range(6):
        _move(server, client)
        client.read_plaintext(10)
        _move(client, server)
        server.read_plaintext(10)
    server.write_plaintext(b"after")
    _move(server, client)
    assert client.read_plaintext(10) == b"after"
    assert client.epoch().renegotiations == 1
    new_client, _ = _pair("TLSv1.3")
    with pytest.raises(ValueError, match=r"TLS 1\.2"):
        new_client.renegotiate()


def test_epoch() -> None:
    client, server = _pair()
    epoch = client.epoch()
    assert epoch.version == "TLSv1.3" and epoch.server_name == "localhost" and not epoch.resumed
    assert epoch.peer_certificate is not None and server.epoch().peer_certificate is None
    assert server.epoch().server_name == "localhost"
    assert "TLSEngine client open" in repr(client)


def test_operations_before_the_handshake() -> None:
    client_ctx, _ = contexts(shared_certs())
    engine = TLSEngine(client_ctx, server_side=False)
    with pytest.raises(ValueError, match="handshake"):
        engine.read_plaintext(1)
    assert engine.do_handshake() is NEED_INPUT
    assert engine.ciphertext_to_send()  # the ClientHello
    engine.receive_eof()
    with pytest.raises(TLSError, match="closed the connection during the handshake"):
        engine.do_handshake()
