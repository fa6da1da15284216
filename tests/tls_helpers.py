"""Shared set-up for the TLS tests: certificates, contexts and TLS pairs.

Certificates come from trustme (a throwaway CA made per test session); the
files live in a temporary folder that the session fixture removes.
"""

from __future__ import annotations

import datetime
import functools
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import gevent
import trustme
from OpenSSL import SSL

from greenflow import Flow
from greenflow.tls import TLSFlow, client, client_context, server, server_context

Pair = tuple[Flow, Flow]


@dataclass(frozen=True)
class Certs:
    """Paths of the PEM files of one test session's PKI."""

    folder: str
    ca: str  # the CA certificate that clients trust
    server: str  # chain and key for localhost, 127.0.0.1 and ::1
    client: str  # a client certificate and key from the same CA
    expired: str  # a server certificate that expired yesterday
    other_ca: str  # a CA nobody trusts
    untrusted: str  # a localhost certificate from other_ca


def make_certs(folder: str) -> Certs:
    ca = trustme.CA()
    other = trustme.CA()
    paths = {
        name: os.path.join(folder, f"{name}.pem") for name in Certs.__dataclass_fields__ if name != "folder"
    }
    ca.cert_pem.write_to_path(paths["ca"])
    other.cert_pem.write_to_path(paths["other_ca"])
    ca.issue_cert("localhost", "127.0.0.1", "::1").private_key_and_cert_chain_pem.write_to_path(
        paths["server"]
    )
    ca.issue_cert("client@example.org").private_key_and_cert_chain_pem.write_to_path(paths["client"])
    yesterday = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    expired = ca.issue_cert("localhost", not_after=yesterday)
    expired.private_key_and_cert_chain_pem.write_to_path(paths["expired"])
    other.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(paths["untrusted"])
    return Certs(folder=folder, **paths)


_folder: tempfile.TemporaryDirectory[str] | None = None


@functools.cache
def shared_certs() -> Certs:
    """The test session's certificates, made on first use.

    The folder is removed when the interpreter exits (TemporaryDirectory's
    finalizer).
    """
    global _folder
    _folder = tempfile.TemporaryDirectory(prefix="greenflow-tls-")
    return make_certs(_folder.name)


def contexts(
    certs: Certs, version: str | None = None, **server_options: object
) -> tuple[SSL.Context, SSL.Context]:
    """A (client, server) context pair, optionally pinned to one TLS version."""
    limits = {} if version is None else {"minimum_version": version, "maximum_version": version}
    client_ctx = client_context(cafile=certs.ca, **limits)  # type: ignore[arg-type]
    server_ctx = server_context(certs.server, **limits, **server_options)  # type: ignore[arg-type]
    return client_ctx, server_ctx


def tls_over(
    make_pair: Callable[[], Pair],
    client_ctx: SSL.Context,
    server_ctx: SSL.Context,
    *,
    hostname: str | None = "localhost",
    **options: object,
) -> tuple[TLSFlow, TLSFlow]:
    """Handshake over a fresh pair, both ends at once in two greenlets."""
    a, b = make_pair()
    side = gevent.spawn(server, b, server_ctx, handshake_timeout=10, **options)  # type: ignore[arg-type]
    try:
        left = client(a, client_ctx, server_hostname=hostname, handshake_timeout=10, **options)  # type: ignore[arg-type]
    except BaseException:
        side.kill()
        b.close()
        raise
    return left, side.get(timeout=10)
