"""TLS listeners: the handshake runs per connection, bounded, off the accept path."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
import trustme
from OpenSSL import SSL

import greenflow
from greenflow import Flow
from greenflow.handlers import echo
from greenflow.listeners import listen_tls, listen_unix
from greenflow.server import Server

tls = pytest.importorskip("greenflow.tls", reason="greenflow.tls cannot be imported")


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[SSL.Context, SSL.Context]:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(folder / "server.pem")
    )
    server_context = tls.server_context(folder / "server.pem")
    client_context = tls.client_context(cafile=folder / "ca.pem")
    return server_context, client_context


@pytest.fixture
def tls_server(contexts: tuple[SSL.Context, SSL.Context]) -> Iterator[Server]:
    server = Server(echo, listen_tls("127.0.0.1", 0, contexts[0], handshake_timeout=0.3), timeout=10)
    server.start()
    yield server
    server.stop(grace=0)


def tls_exchange(port: int, client_context: SSL.Context, payload: bytes) -> bytes:
    with tls.connect_tls("127.0.0.1", port, client_context, timeout=10) as flow:
        flow.write(payload)
        flow.shutdown("write")
        data = b""
        while chunk := flow.read():
            data += chunk
        return data


def port_of(server: Server) -> int:
    return int(server.addresses[0][1])  # type: ignore[index]


def test_tls_echo(tls_server: Server, contexts: tuple[SSL.Context, SSL.Context]) -> None:
    assert tls_server.urls[0].startswith("tls://127.0.0.1:")
    assert tls_exchange(port_of(tls_server), contexts[1], b"over tls") == b"over tls"


def test_tls_over_unix(tmp_path: Path, contexts: tuple[SSL.Context, SSL.Context]) -> None:
    path = str(tmp_path / "tls.sock")
    with Server(echo, listen_unix(path, tls_context=contexts[0])) as server:
        assert server.urls == [f"unix+tls:{path}"]
        flow = tls.client(greenflow.connect_unix(path, timeout=10), contexts[1], server_hostname="localhost")
        with flow:
            flow.write(b"unix tls")
            assert flow.read() == b"unix tls"


def test_stalled_and_failed_handshakes_do_not_disturb_others(
    tls_server: Server, contexts: tuple[SSL.Context, SSL.Context], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="greenflow.server")
    port = port_of(tls_server)
    stalled = [greenflow.connect_tcp("127.0.0.1", port, timeout=10) for _ in range(5)]
    garbage = greenflow.connect_tcp("127.0.0.1", port, timeout=10)
    try:
        garbage.write(b"GET / HTTP/1.0\r\n\r\n")
        started = time.monotonic()
        # Served while the stalled handshakes are pending.
        greenlets = [gevent.spawn(tls_exchange, port, contexts[1], b"c%d" % n) for n in range(10)]
        gevent.joinall(greenlets, timeout=10, raise_error=True)
        assert [g.value for g in greenlets] == [b"c%d" % n for n in range(10)]
        # The stalled ones are closed after the handshake timeout...
        for flow in stalled:
            assert flow.read() == b""
        assert time.monotonic() - started < 5
        # ...and the garbage one at once, with an alert or a plain close.
        data = b""
        while chunk := garbage.read():
            data += chunk
    finally:
        for flow in [*stalled, garbage]:
            flow.close()
    failures = [r for r in caplog.records if "failed to open" in r.getMessage()]
    assert len(failures) == 6
    assert tls_server.active_connections == 0


def test_graceful_stop_ends_idle_tls_connections_cleanly(
    tls_server: Server, contexts: tuple[SSL.Context, SSL.Context]
) -> None:
    flow: Flow = tls.connect_tls("127.0.0.1", port_of(tls_server), contexts[1], timeout=10)
    with flow:
        flow.write(b"ping")
        assert flow.read() == b"ping"
        stopper = gevent.spawn(tls_server.stop, 10)
        assert flow.read() == b""  # close_notify: a clean EOF, not truncation
        stopper.join(5)
        assert stopper.successful()


def test_a_stop_does_not_wait_for_a_handshake(contexts: tuple[SSL.Context, SSL.Context]) -> None:
    # One TCP connect that sends nothing to a tls:// listener used to hold
    # every graceful stop for the whole grace period: a connection in its
    # handshake has no request in progress, so the stop ends it at once.
    server = Server(echo, "tls://127.0.0.1:0", tls_context=contexts[0], grace=5, timeout=10)
    server.start()
    try:
        port = port_of(server)
        with greenflow.connect_tcp("127.0.0.1", port, timeout=10) as silent:
            # Accepted in order: once a later client is served, the silent one is in its handshake.
            assert tls_exchange(port, contexts[1], b"later") == b"later"
            assert server.active_connections == 1
            started = time.monotonic()
            server.stop()
            assert time.monotonic() - started < 1
            assert silent.read() == b""
    finally:
        server.stop(grace=0)


def test_tls_listener_is_a_layer_over_any_listener(
    tmp_path: Path, contexts: tuple[SSL.Context, SSL.Context]
) -> None:
    inner = listen_unix(str(tmp_path / "layer.sock"))
    listener = tls.TLSListener(inner, contexts[0], handshake_timeout=3)
    assert isinstance(listener, greenflow.Listener)
    assert isinstance(listener, greenflow.ListenerLayer)
    assert listener.inner is inner
    assert listener.url == f"unix+tls:{tmp_path / 'layer.sock'}"
    assert listener.address == inner.address and listener.socket is inner.socket
    assert listener.fileno() == inner.fileno()
    assert listener.tls_context is contexts[0] and listener.handshake_timeout == 3
    assert inner.tls_context is None and inner.handshake_timeout == tls.DEFAULT_HANDSHAKE_TIMEOUT
    made = listen_tls("127.0.0.1", 0, contexts[0])
    assert isinstance(made, tls.TLSListener) and made.url.startswith("tls://127.0.0.1:")
    assert made.handshake_timeout == tls.DEFAULT_HANDSHAKE_TIMEOUT == 10.0
    made.close()
    listener.close()
    assert inner.closed and listener.closed
    assert not (tmp_path / "layer.sock").exists()
    with pytest.raises(TypeError):
        tls.TLSListener(inner, "not a context")


def test_accept_on_a_tls_listener_returns_a_tls_flow(contexts: tuple[SSL.Context, SSL.Context]) -> None:
    listener = listen_tls("127.0.0.1", 0, contexts[0], handshake_timeout=5)
    port = int(listener.address[1])  # type: ignore[index]
    try:
        # Queued first, and not TLS: its handshake fails, and iterating skips it.
        garbage = greenflow.connect_tcp("127.0.0.1", port, timeout=10)
        garbage.write(b"GET / HTTP/1.0\r\n\r\n")
        good = gevent.spawn(tls_exchange, port, contexts[1], b"secret")
        with next(iter(listener)) as flow:
            assert isinstance(flow, tls.TLSFlow)
            flow.write(flow.read())
        assert good.get(timeout=10) == b"secret"
        assert garbage.read() == b"" or True  # closed by the listener (an alert, or nothing)
        garbage.close()
    finally:
        listener.close()


def test_a_tls_listener_has_a_repr() -> None:
    """Found in review: a listener layer's repr read a slot only the inner listener has."""
    import greenflow
    from greenflow import tls

    from tls_helpers import contexts, shared_certs

    _, server_ctx = contexts(shared_certs())
    listener = tls.TLSListener(greenflow.listen_tcp("127.0.0.1", 0), server_ctx)
    assert repr(listener).startswith("<TLSListener tls://127.0.0.1:")
    listener.close()
    assert repr(listener).endswith(" closed>")
