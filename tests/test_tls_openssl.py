"""The private bindings (``greenflow/tls/_openssl.py``): what they need, and what they answer.

If a pyOpenSSL or cryptography upgrade removes anything greenflow's TLS
calls directly, the first test here fails and names it.
"""

from __future__ import annotations

import OpenSSL
import pytest
from OpenSSL import SSL

from greenflow.tls import _openssl
from greenflow.tls._openssl import WANT_INPUT, RecordLayer, missing_bindings

from tls_helpers import contexts, shared_certs


def test_everything_the_private_bindings_use_is_there() -> None:
    missing = missing_bindings()
    assert not missing, (
        f"pyOpenSSL {OpenSSL.__version__} lacks what greenflow/tls/_openssl.py calls: {', '.join(missing)}"
    )


def test_only_the_bindings_module_reaches_into_pyopenssl() -> None:
    import pathlib

    package = pathlib.Path(_openssl.__file__).parent.parent
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "_openssl.py" and "OpenSSL._util" in path.read_text()
    ]
    assert offenders == []


def _layers(version: str = "TLSv1.3") -> tuple[RecordLayer, RecordLayer]:
    client_ctx, server_ctx = contexts(shared_certs(), version)
    client_conn = SSL.Connection(client_ctx, None)
    client_conn.set_connect_state()
    client_conn.set_tlsext_host_name(b"localhost")
    server_conn = SSL.Connection(server_ctx, None)
    server_conn.set_accept_state()
    client, server = RecordLayer(client_conn), RecordLayer(server_conn)
    for _ in range(10):
        answers = (client.handshake(), server.handshake())
        _move(client, server)
        _move(server, client)
        if answers == (1, 1):
            return client, server
        assert all(answer in (1, WANT_INPUT) for answer in answers)
    raise AssertionError("the handshake did not complete")


def _move(source: RecordLayer, target: RecordLayer) -> None:
    size = source.outgoing()
    if size:
        target.feed(source.take(size))


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_the_record_layer_answers_without_exceptions(version: str) -> None:
    client, server = _layers(version)
    assert server.starved()
    assert server.read(100) == WANT_INPUT  # nothing there: a number, not WantReadError
    assert server.read_into(memoryview(bytearray(10))) == WANT_INPUT
    assert client.write(b"hello") == 5
    assert client.write(memoryview(b"-world")) == 6
    _move(client, server)
    assert not server.starved()
    buffer = bytearray(3)
    assert server.read_into(memoryview(buffer)) == 3 and buffer == b"hel"
    assert server.read(100) == b"lo"  # the rest of the first record
    strided = bytearray(12)
    assert server.read_into(memoryview(strided)[::2]) == 6  # filled through a copy
    assert bytes(strided[::2]) == b"-world"
    assert server.read(100) == WANT_INPUT


def test_close_notify_reads_as_zero_and_unread_bytes_come_back() -> None:
    client, server = _layers()
    client._conn.shutdown()
    _move(client, server)
    server.feed(b"after the close_notify")
    assert server.read(100) == 0
    assert server.read_into(memoryview(bytearray(5))) == 0
    assert server.take_unread(8) == b"after the close_notify"
    assert server.take_unread(8) == b""


def test_garbage_raises_what_pyopenssl_raises() -> None:
    _, server = _layers()
    server.feed(b"\x17\x03\x03\x00\x05" + b"nonsense" * 4)
    with pytest.raises(SSL.Error) as caught:
        server.read(100)
    assert not isinstance(caught.value, (SSL.WantReadError, SSL.ZeroReturnError))


def test_a_callback_exception_is_raised_on_the_record_layer() -> None:
    client_ctx, server_ctx = contexts(shared_certs(), "TLSv1.3")

    class Refused(Exception):
        pass

    def verify(*_: object) -> bool:
        raise Refused("from the verify callback")

    client_ctx.set_verify(SSL.VERIFY_PEER, verify)
    client_conn = SSL.Connection(client_ctx, None)
    client_conn.set_connect_state()
    server_conn = SSL.Connection(server_ctx, None)
    server_conn.set_accept_state()
    client, server = RecordLayer(client_conn), RecordLayer(server_conn)
    with pytest.raises(Refused):
        for _ in range(4):
            client.handshake()
            _move(client, server)
            server.handshake()
            _move(server, client)
