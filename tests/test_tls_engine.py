"""The sans-IO engine alone: two engines joined by hand, no sockets, no gevent."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL, crypto

from greenflow.tls import TLSCertificateError, TLSEngine, TLSError, TLSTruncatedError, server_context
from greenflow.tls._engine import NEED_INPUT, WRITE_CHUNK, EngineState, OurEnding, PeerEnding
from greenflow.tls._errors import certificate_names, certificate_subject, reasons, translate

from tls_helpers import contexts, shared_certs


def _pair(
    version: str = "TLSv1.3",
    *,
    pair: tuple[SSL.Context, SSL.Context] | None = None,
    hostname: str = "localhost",
    session: SSL.Session | None = None,
    **options: bool,
) -> tuple[TLSEngine, TLSEngine]:
    client_ctx, server_ctx = pair if pair is not None else contexts(shared_certs(), version)
    client = TLSEngine(client_ctx, server_side=False, server_hostname=hostname, session=session, **options)
    server = TLSEngine(server_ctx, server_side=True, **options)
    _handshake(client, server)
    return client, server


def _handshake(client: TLSEngine, server: TLSEngine) -> None:
    for _ in range(10):
        done = [engine.do_handshake() is None for engine in (client, server)]
        _move(client, server)
        _move(server, client)
        if all(done):
            return
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
    assert client.read_plaintext_into(bytearray(100)) is NEED_INPUT
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
    client, server = _pair()
    client.receive_ciphertext(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # a record that does not decrypt
    with pytest.raises(TLSError, match="session failed"):
        client.read_plaintext(10)
    alert = client.ciphertext_to_send()  # the alert for the peer
    assert alert
    with pytest.raises(TLSError):
        client.write_plaintext(b"x")
    server.receive_ciphertext(alert)
    with pytest.raises(TLSError, match="the peer sent the alert 'bad record mac'"):
        server.read_plaintext_into(bytearray(10))


def test_garbage_instead_of_a_handshake_is_called_so() -> None:
    _, server_ctx = contexts(shared_certs())
    server = TLSEngine(server_ctx, server_side=True)
    server.receive_ciphertext(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(TLSError, match="does not seem to speak TLS"):
        server.do_handshake()


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


# -- every state rule, one by one ----------------------------------------------------


def test_each_side_ends_on_its_own() -> None:
    client, server = _pair()
    assert client.our_ending is OurEnding.OPEN and client.peer_ending is PeerEnding.OPEN
    client.write_close_notify()
    assert client.our_ending is OurEnding.CLOSE_NOTIFY_SENT
    with pytest.raises(ValueError, match="after close_notify"):
        client.write_plaintext(b"x")
    assert client.state is EngineState.OPEN  # a refused misuse changes nothing
    _move(client, server)
    assert server.read_plaintext_into(bytearray(4)) == 0
    assert server.peer_ending is PeerEnding.CLOSE_NOTIFY_RECEIVED
    assert server.read_plaintext(4) == b"" and server.read_plaintext_into(bytearray(4)) == 0  # stays at EOF
    server.receive_eof()
    assert server.peer_ending is PeerEnding.CLOSE_NOTIFY_RECEIVED  # an EOF after it changes nothing


def test_data_fed_before_the_transport_eof_is_still_read() -> None:
    client, server = _pair()
    server.write_plaintext(b"last words")
    _move(server, client)
    client.receive_eof()
    assert client.peer_ending is PeerEnding.TRANSPORT_EOF
    assert client.read_plaintext(100) == b"last words"
    with pytest.raises(TLSTruncatedError):
        client.read_plaintext_into(bytearray(10))
    assert client.peer_ending is PeerEnding.TRUNCATED and client.state is EngineState.ERROR
    assert isinstance(client.error, TLSTruncatedError)
    lax, _peer = _pair(allow_truncation=True)
    lax.receive_eof()
    lax.receive_eof()
    assert lax.read_plaintext_into(bytearray(3)) == 0 and lax.peer_ending is PeerEnding.TRUNCATED
    assert lax.state is EngineState.OPEN


def test_close_notify_during_the_handshake_sends_nothing() -> None:
    client_ctx, _ = contexts(shared_certs())
    engine = TLSEngine(client_ctx, server_side=False)
    engine.write_close_notify()
    assert engine.our_ending is OurEnding.ABANDONED and engine.ciphertext_to_send() == b""
    with pytest.raises(ValueError, match="handshake"):
        engine.read_plaintext_into(bytearray(1))
    with pytest.raises(ValueError, match="handshake"):
        engine.write_plaintext(b"x")


def test_ciphertext_drained_in_small_pieces_is_whole() -> None:
    client, server = _pair()
    client.write_plaintext(b"y" * 5000)
    server.receive_ciphertext(client.ciphertext_to_send(100))  # many reads, joined
    got = b""
    while (chunk := server.read_plaintext(65536)) is not NEED_INPUT:
        assert isinstance(chunk, bytes)
        got += chunk
    assert got == b"y" * 5000
    server.receive_ciphertext(b"")  # nothing to feed: a no-op


def test_an_exception_in_ciphertext_calls_moves_to_error() -> None:
    client, _ = _pair()
    with pytest.raises(TLSError, match="TypeError"):
        client.receive_ciphertext(12345)  # type: ignore[arg-type]
    assert client.state is EngineState.ERROR
    first = client.error
    with pytest.raises(TLSError):
        client.read_plaintext(1)  # sticky
    other, _ = _pair()
    other.write_plaintext(b"z")
    with pytest.raises(TLSError, match="TypeError"):
        other.write_plaintext(12345)  # type: ignore[arg-type]
    assert other.state is EngineState.ERROR
    with pytest.raises(TLSError, match="TypeError"):
        client.receive_ciphertext(12345)  # type: ignore[arg-type]
    assert client.error is first  # the first error is the one kept
    with pytest.raises(TLSError):
        client.do_handshake()
    client.write_close_notify()  # nothing to do in ERROR
    assert client.our_ending is OurEnding.OPEN


def test_a_certificate_error_is_sticky_with_its_code() -> None:
    certs = shared_certs()
    client_ctx, server_ctx = contexts(certs)
    client = TLSEngine(client_ctx, server_side=False, server_hostname="wrong.example")
    server = TLSEngine(server_ctx, server_side=True)
    with pytest.raises(TLSCertificateError) as first:
        _handshake(client, server)
    assert first.value.verify_code == 62 and client.state is EngineState.ERROR
    with pytest.raises(TLSCertificateError) as again:
        client.read_plaintext(1)
    assert again.value.verify_code == 62 and again.value is not first.value
    assert client.ciphertext_to_send()  # the alert is still there to send
    expired = TLSEngine(client_ctx, server_side=False, server_hostname="localhost")
    with pytest.raises(TLSCertificateError, match=r"server's certificate \(.*\) did not verify: .*expired"):
        _handshake(expired, TLSEngine(server_context(certs.expired), server_side=True))


def test_callback_failures_move_to_error() -> None:
    certs = shared_certs()
    client_ctx, _ = contexts(certs)
    client_ctx.set_alpn_protos([b"h2"])
    server_ctx = server_context(certs.server)
    error = KeyError("no such protocol")

    def select(_conn: SSL.Connection, _offered: list[bytes]) -> bytes:
        raise error

    server_ctx.set_alpn_select_callback(select)
    client = TLSEngine(client_ctx, server_side=False, server_hostname="localhost")
    server = TLSEngine(server_ctx, server_side=True)
    assert client.do_handshake() is NEED_INPUT
    _move(client, server)
    with pytest.raises(TLSError, match="KeyError") as caught:
        server.do_handshake()
    assert caught.value.__cause__ is error and server.state is EngineState.ERROR


def test_a_base_exception_inside_an_engine_call_moves_to_error_and_goes_on() -> None:
    class Stop(BaseException):
        pass

    class Data(bytes):
        # Measured inside the engine's call into OpenSSL's record layer.
        def __len__(self) -> int:
            raise Stop

    client, _ = _pair()
    with pytest.raises(Stop):
        client.write_plaintext(Data(b"x"))
    assert client.state is EngineState.ERROR
    assert "interrupted by Stop" in str(client.error)


def test_a_callback_that_raises_tls_error_keeps_it() -> None:
    certs = shared_certs()
    client_ctx, _ = contexts(certs)
    client_ctx.set_alpn_protos([b"http/1.1"])
    server_ctx = server_context(certs.server, alpn_protocols=["h2"])
    client = TLSEngine(client_ctx, server_side=False, server_hostname="localhost")
    server = TLSEngine(server_ctx, server_side=True)
    with pytest.raises(TLSError, match="no application protocol in common"):
        _handshake(client, server)
    assert server.state is EngineState.ERROR


def test_renegotiation_refused_and_cut() -> None:
    client, server = _pair("TLSv1.2")
    client.renegotiate()  # a client-initiated one, which servers refuse
    assert client.write_plaintext(b"x") is NEED_INPUT  # it must hear from the server first
    _move(client, server)
    assert server.read_plaintext(10) is NEED_INPUT  # it answers with a no_renegotiation alert
    _move(server, client)
    with pytest.raises(TLSError, match="refused to renegotiate"):
        client.write_plaintext(b"x")
    cut, _ = _pair("TLSv1.2")
    cut.renegotiate()
    cut.receive_eof()
    with pytest.raises(TLSError, match="renegotiation failed: the peer closed"):
        cut.write_plaintext(b"x")
    busy, _ = _pair("TLSv1.2")
    busy.renegotiate()
    with pytest.raises(TLSError, match="shutdown failed"):
        busy.write_close_notify()  # OpenSSL cannot shut down in the middle of a handshake
    garbled, _ = _pair("TLSv1.2")
    garbled.receive_ciphertext(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
    with pytest.raises(TLSError, match="renegotiation failed"):
        garbled.renegotiate()


def test_resumption() -> None:
    pair = contexts(shared_certs(), "TLSv1.2")
    first, _ = _pair(pair=pair)
    session = first.connection.get_session()
    again, _ = _pair(pair=pair, session=session)
    assert again.epoch().resumed


def test_host_names_and_addresses() -> None:
    client_ctx, server_ctx = contexts(shared_certs())
    client, _ = _pair(pair=(client_ctx, server_ctx), hostname="127.0.0.1")
    assert client.epoch().server_name == "127.0.0.1"
    with pytest.raises(TLSCertificateError, match="'::2'"):
        _pair(pair=(client_ctx, server_ctx), hostname="::2")
    with pytest.raises(TLSCertificateError, match=r"bücher\.example"):
        _pair(pair=(client_ctx, server_ctx), hostname="bücher.example")
    unchecked, _ = _pair(pair=(client_ctx, server_ctx), hostname="other.example", check_hostname=False)
    assert unchecked.state is EngineState.OPEN
    with pytest.raises(ValueError, match="empty"):
        TLSEngine(client_ctx, server_side=False, server_hostname=" ")
    with pytest.raises(ValueError, match="NUL"):
        TLSEngine(client_ctx, server_side=False, server_hostname="bad\0name")
    lax = SSL.Context(SSL.TLS_METHOD)
    with pytest.raises(ValueError, match="does not verify"):
        TLSEngine(lax, server_side=False, server_hostname="localhost")
    assert TLSEngine(lax, server_side=False, server_hostname="localhost", check_hostname=False)


# -- composing messages ----------------------------------------------------------------


def _self_signed(name: x509.Name, extensions: list[x509.ExtensionType]) -> crypto.X509:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return crypto.X509.from_cryptography(builder.sign(key, hashes.SHA256()))


def test_certificate_names_without_a_san() -> None:
    common = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "old.example")])
    assert certificate_names(_self_signed(common, [])) == "CN:'old.example'"
    assert certificate_names(_self_signed(x509.Name([]), [])) == "no names at all"
    uri = x509.SubjectAlternativeName([x509.UniformResourceIdentifier("https://x.example")])
    assert certificate_names(_self_signed(common, [uri])) == "CN:'old.example'"  # no DNS or IP names


def test_reasons_skip_what_is_not_openssl_queue() -> None:
    assert reasons(SSL.Error("plain text", [("lib", "func", "why"), ("short",), ("lib", "f", "")])) == ["why"]


def test_translate_without_reasons() -> None:
    client, _ = _pair()
    options = {"handshaking": False, "server_side": False, "expected_name": None}
    eof = translate(SSL.SysCallError(-1, "Unexpected EOF"), "session", client.connection, **options)  # type: ignore[arg-type]
    assert str(eof) == "TLS session failed: the transport ended unexpectedly"
    bare = translate(SSL.WantWriteError(), "session", client.connection, **options)  # type: ignore[arg-type]
    assert str(bare) == "TLS session failed: WantWriteError"


def test_describing_a_certificate_cryptography_cannot_parse() -> None:
    with open(shared_certs().bad_validity, "rb") as file:
        broken = crypto.load_certificate(crypto.FILETYPE_PEM, file.read())  # OpenSSL parses it
    with pytest.raises(ValueError):
        broken.to_cryptography()
    subject = certificate_subject(broken)
    assert "O=trustme" in subject
    names = certificate_names(broken)
    assert names.startswith("names that could not be read") and subject in names


def test_the_old_method_names_still_work() -> None:
    """greenflow 0.1's TLSEngine names are kept as aliases of the new ones."""
    from greenflow.tls import TLSEngine

    for old, new in [
        ("receive_data", "receive_ciphertext"),
        ("data_to_send", "ciphertext_to_send"),
        ("recv", "read_plaintext"),
        ("recv_into", "read_plaintext_into"),
        ("send", "write_plaintext"),
        ("send_close_notify", "write_close_notify"),
    ]:
        assert getattr(TLSEngine, old) is getattr(TLSEngine, new), old
    for name in ("sent_close_notify", "received_close_notify", "transport_eof"):
        assert isinstance(getattr(TLSEngine, name), property), name


def test_the_old_ending_flags_follow_the_endings() -> None:
    client, server = _pair()
    assert not (client.sent_close_notify or server.received_close_notify or client.transport_eof)
    client.send_close_notify()
    _move(client, server)
    assert server.recv(10) == b""
    assert client.sent_close_notify and server.received_close_notify
    lax, _peer = _pair(allow_truncation=True)
    lax.receive_eof()
    assert lax.recv(10) == b""
    assert lax.transport_eof


def test_a_read_with_no_room_is_refused_and_changes_nothing() -> None:
    client, server = _pair()
    with pytest.raises(ValueError, match="room for at least one byte"):
        server.read_plaintext_into(bytearray(0))  # refused first, even with nothing fed
    client.write_plaintext(b"kept")
    _move(client, server)
    with pytest.raises(ValueError, match="room for at least one byte"):
        server.read_plaintext_into(bytearray(0))
    with pytest.raises(ValueError, match="at least 1"):
        server.read_plaintext(0)
    assert server.peer_ending is PeerEnding.OPEN
    assert server.read_plaintext(100) == b"kept"
