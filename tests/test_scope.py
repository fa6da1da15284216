"""Scope: resources end exactly once, in reverse order, and no cleanup error is lost."""

from __future__ import annotations

import os
import tempfile

import gevent
import pytest

import greenflow
from greenflow import Scope
from greenflow.scope import ScopeState
from greenflow.testing import wait_all_blocked

from tls_helpers import contexts, shared_certs


class Resource:
    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    def close(self) -> None:
        self.log.append(self.name)
        if self.fail:
            raise RuntimeError(f"{self.name} failed to close")


def test_reverse_order_exactly_once() -> None:
    log: list[str] = []
    with Scope() as scope:
        for name in "abc":
            assert scope.add(Resource(name, log)).name == name
        scope.add_hook(lambda: log.append("hook"))
        assert len(scope) == 4
        assert scope.state is ScopeState.OPEN and "open" in repr(scope)
    assert log == ["hook", "c", "b", "a"]
    scope.close()  # idempotent
    assert log == ["hook", "c", "b", "a"]
    assert scope.closed and scope.errors == ()


def test_an_error_does_not_skip_the_others_and_none_is_lost() -> None:
    log: list[str] = []
    scope = Scope()
    scope.add(Resource("a", log, fail=True))
    scope.add(Resource("b", log))
    scope.add(Resource("c", log, fail=True))
    with pytest.raises(ExceptionGroup) as caught:
        scope.close()
    assert log == ["c", "b", "a"]
    assert [str(e) for e in caught.value.exceptions] == ["c failed to close", "a failed to close"]
    assert [str(e) for e in scope.errors] == ["c failed to close", "a failed to close"]


def test_one_error_is_raised_as_itself_with_the_body_error_as_context() -> None:
    log: list[str] = []
    with pytest.raises(RuntimeError, match="a failed") as caught, Scope() as scope:
        scope.add(Resource("a", log, fail=True))
        scope.add(Resource("b", log))
        raise KeyError("the body's own error")
    assert log == ["b", "a"]
    assert isinstance(caught.value.__context__, KeyError)


def test_joining_an_ended_scope_ends_the_newcomer_at_once() -> None:
    log: list[str] = []
    scope = Scope()
    scope.close()
    with pytest.raises(ValueError, match="closed"):
        scope.add(Resource("late", log))
    with pytest.raises(ValueError, match="closed"):
        scope.add_hook(lambda: log.append("late hook"))
    with pytest.raises(ValueError, match="closed"):
        scope.spawn(log.append, "never")
    assert log == ["late", "late hook"]


def test_a_cleanup_that_joins_while_closing_is_ended_too() -> None:
    log: list[str] = []
    scope = Scope()

    def late_joiner() -> None:
        with pytest.raises(ValueError, match="closing"):
            scope.add(Resource("joined while closing", log))

    scope.add_hook(late_joiner)
    scope.close()
    assert log == ["joined while closing"]


def test_remove_and_misuse() -> None:
    log: list[str] = []
    scope = Scope()
    kept = scope.add(Resource("kept", log))
    taken = scope.add(Resource("taken", log))
    assert scope.remove(taken) and not scope.remove(taken)
    with pytest.raises(TypeError, match="close"):
        scope.add(42)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="callable"):
        scope.add_hook("not callable")  # type: ignore[arg-type]
    scope.close()
    assert log == [kept.name]


def test_spawned_greenlets_are_killed_and_unwind() -> None:
    log: list[str] = []

    def worker() -> None:
        try:
            gevent.sleep(60)
        finally:
            log.append("unwound")

    with Scope() as scope:
        greenlet = scope.spawn(worker)
        wait_all_blocked()
    assert greenlet.dead and log == ["unwound"]


def test_every_flow_constructor_joins_at_creation() -> None:
    client_ctx, server_ctx = contexts(shared_certs())
    with Scope() as scope:
        listener = scope.add(greenflow.listen_tcp("127.0.0.1", 0))
        port = listener.address[1]
        accepted = scope.spawn(listener.accept)
        tcp = greenflow.connect_tcp("127.0.0.1", port, scope=scope)
        pair = greenflow.socketpair(scope=scope)
        pipes = greenflow.pipe_pair(scope=scope)
        read_fd, write_fd = os.pipe()
        from_pipes = greenflow.from_pipes(read_fd, write_fd, scope=scope)
        import socket

        left, right = socket.socketpair()
        from_socket = greenflow.from_socket(left, scope=scope)
        from_fd = greenflow.from_fd(right.detach(), scope=scope)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "s")
            unix_listener = scope.add(greenflow.listen_unix(path))
            unix_accepted = scope.spawn(unix_listener.accept)
            unix = greenflow.connect_unix(path, scope=scope)
            unix_accepted.join()
            scope.add(unix_accepted.value)
        server_flow = accepted.get(timeout=5)
        scope.add(server_flow)
        flows = [tcp, *pair, *pipes, from_pipes, from_socket, from_fd, unix]
        # TLS: both ends made with scope=, over a socketpair of their own.
        raw_client, raw_server = greenflow.socketpair()
        tls_server = gevent.spawn(greenflow.tls.server, raw_server, server_ctx, scope=scope)
        tls_client = greenflow.tls.client(raw_client, client_ctx, server_hostname="localhost", scope=scope)
        flows += [tls_client, tls_server.get(timeout=5)]
        assert not any(flow.closed for flow in flows)
    assert all(flow.closed for flow in flows)


def test_connect_tls_and_vsock_join_too() -> None:
    from greenflow.tls import TLSListener

    client_ctx, server_ctx = contexts(shared_certs())
    with Scope() as scope:
        listener = scope.add(TLSListener(greenflow.listen_tcp("127.0.0.1", 0), server_ctx))
        accepted = scope.spawn(listener.accept)
        flow = greenflow.connect_tls("127.0.0.1", listener.address[1], client_ctx, scope=scope)
        scope.add(accepted.get(timeout=5))
        assert scope.remove(flow) and scope.add(flow) is flow
    assert flow.closed
    if hasattr(__import__("socket"), "AF_VSOCK"):
        scope = Scope()
        with pytest.raises(OSError):  # nobody listens on vsock here: nothing may join
            greenflow.connect_vsock(1, 1, timeout=2, scope=scope)
        assert len(scope) == 0


def test_a_flow_made_for_an_ended_scope_is_closed() -> None:
    scope = Scope()
    scope.close()
    with pytest.raises(ValueError, match="ended at once"):
        greenflow.socketpair(scope=scope)
    with pytest.raises(ValueError, match="ended at once"):
        greenflow.pipe_pair(scope=scope)
