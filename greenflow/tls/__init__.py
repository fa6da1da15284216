"""TLS over any flow: TCP, Unix sockets, in-memory pairs, or another TLS flow.

:func:`client` and :func:`server` run a TLS handshake over a flow and return
a :class:`TLSFlow`; :func:`connect_tls` connects over TCP and does the rest.
All the TLS I/O goes through the flow below, on pyOpenSSL memory BIOs. The
protocol engine (``_engine``) is sans-IO; the pump (``_flow``) is the only
part that waits.

Secure by default: certificates are verified, the server's name is checked
whenever one is given, TLS 1.2 is the minimum, and an EOF without
close_notify is an error (:class:`TLSTruncatedError`) unless a flow is made
with ``allow_truncation=True``.
"""

from __future__ import annotations

from OpenSSL import SSL

from ..flow import Flow
from ..scope import Scope, joined
from ..sockets import connect_tcp
from ._context import client_context, default_client_context, server_context
from ._engine import TLSEngine, TLSEpoch
from ._errors import TLSCertificateError, TLSError, TLSTruncatedError
from ._flow import CLOSE_NOTIFY_TIMEOUT, TLSFlow
from ._listener import DEFAULT_HANDSHAKE_TIMEOUT, TLSListener

__all__ = [
    "CLOSE_NOTIFY_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "TLSCertificateError",
    "TLSEngine",
    "TLSEpoch",
    "TLSError",
    "TLSFlow",
    "TLSListener",
    "TLSTruncatedError",
    "client",
    "client_context",
    "connect_tls",
    "default_client_context",
    "server",
    "server_context",
]


def client(
    flow: Flow,
    context: SSL.Context | None = None,
    *,
    server_hostname: str | None = None,
    check_hostname: bool = True,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    timeout: float | None = None,
    allow_truncation: bool = False,
    session: SSL.Session | None = None,
    scope: Scope | None = None,
) -> TLSFlow:
    """Run a TLS client handshake over ``flow`` and return the TLS flow.

    Args:
        flow: the flow to run TLS over; the TLS flow owns it from now on.
        context: a pyOpenSSL context; ``None`` means
            :func:`default_client_context` (the system's CA store).
        server_hostname: the server's name (or IP address): sent as SNI (for
            names), and checked against its certificate inside the handshake
            unless ``check_hostname`` is false.
        check_hostname: see ``server_hostname``.
        handshake_timeout: seconds the whole handshake may take (``None``: no
            limit); past it, :class:`~greenflow.FlowTimeout`.
        timeout: the TLS flow's :attr:`~greenflow.Flow.timeout`.
        allow_truncation: report an EOF without close_notify as a plain EOF
            (lax mode, for peers known to end that way).
        session: an earlier connection's :attr:`TLSFlow.tls_session`, to
            resume.
        scope: a :class:`greenflow.Scope` the TLS flow joins once made.

    Raises:
        TLSError: the handshake failed; :class:`TLSCertificateError` when the
            server's certificate did not verify or did not match
            ``server_hostname``. The alert is sent to the server first.
        FlowTimeout: the handshake took longer than ``handshake_timeout``.
        ValueError: a host name check on a context that does not verify.

    On any failure ``flow`` is closed. In TLS 1.3 a server's refusal of our
    certificate can only arrive after the handshake: the first read raises it.
    """
    if context is None:
        context = default_client_context()
    try:
        engine = TLSEngine(
            context,
            server_side=False,
            server_hostname=server_hostname,
            check_hostname=check_hostname,
            allow_truncation=allow_truncation,
            session=session,
        )
    except BaseException:
        flow.close()
        raise
    return joined(_handshake(flow, engine, handshake_timeout, timeout), scope)


def server(
    flow: Flow,
    context: SSL.Context,
    *,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    timeout: float | None = None,
    allow_truncation: bool = False,
    scope: Scope | None = None,
) -> TLSFlow:
    """Run a TLS server handshake over ``flow`` and return the TLS flow.

    ``context`` is usually made by :func:`server_context`. The other
    arguments and the errors are as :func:`client`'s; on failure ``flow`` is
    closed.
    """
    try:
        engine = TLSEngine(context, server_side=True, allow_truncation=allow_truncation)
    except BaseException:
        flow.close()
        raise
    return joined(_handshake(flow, engine, handshake_timeout, timeout), scope)


def connect_tls(
    host: str,
    port: int,
    context: SSL.Context | None = None,
    *,
    server_hostname: str | None = None,
    check_hostname: bool = True,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    allow_truncation: bool = False,
    session: SSL.Session | None = None,
    scope: Scope | None = None,
) -> TLSFlow:
    """Connect to ``host:port`` over TCP and run a TLS client handshake.

    ``server_hostname`` defaults to ``host``, so the certificate is checked
    against the name that was dialled. ``connect_timeout`` is as for
    :func:`greenflow.connect_tcp`; the rest as for :func:`client`.
    """
    flow = connect_tcp(host, port, timeout=timeout, connect_timeout=connect_timeout)
    return client(
        flow,
        context,
        server_hostname=host if server_hostname is None else server_hostname,
        check_hostname=check_hostname,
        handshake_timeout=handshake_timeout,
        timeout=timeout,
        allow_truncation=allow_truncation,
        session=session,
        scope=scope,
    )


def _handshake(
    flow: Flow, engine: TLSEngine, handshake_timeout: float | None, timeout: float | None
) -> TLSFlow:
    tls = TLSFlow(flow, engine, timeout=timeout)
    try:
        tls._handshake(handshake_timeout)
    except BaseException:
        flow.close()
        raise
    return tls
