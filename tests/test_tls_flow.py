"""TLSFlow against the flow contract, over every kind of flow below it."""

from __future__ import annotations

import functools

import pytest

import greenflow
from greenflow.testing import check_flow_pair, lockstep_pair, memory_pair

from pairs import tcp_pair, unix_pair
from tls_helpers import contexts, shared_certs, tls_over

UNDERLYING = {
    "memory": memory_pair,
    "lockstep": lockstep_pair,
    "tcp": tcp_pair,
    "unix": unix_pair,
    "socketpair": greenflow.socketpair,
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
@pytest.mark.parametrize("below", sorted(UNDERLYING))
def test_conformance(below: str, version: str) -> None:
    client_ctx, server_ctx = contexts(shared_certs(), version)
    make = functools.partial(tls_over, UNDERLYING[below], client_ctx, server_ctx)
    clogged = functools.partial(tls_over, lockstep_pair, client_ctx, server_ctx)
    check_flow_pair(make, clogged)
