"""TLS as a listener layer: the handshake in each connection's own greenlet.

:class:`TLSListener` wraps any listener (TCP, Unix, adopted, or another
layer) the way :func:`greenflow.tls.server` wraps any flow. The accept path
never waits on a handshake: the server accepts raw sockets, and the
handshake is this layer's :meth:`~greenflow.listener.ListenerLayer.upgrade`
step, which runs in the connection's greenlet, bounded by
``handshake_timeout``.
"""

from __future__ import annotations

from typing import Final

from OpenSSL import SSL

from ..flow import Flow
from ..kit import check_timeout
from ..listener import Listener, ListenerLayer

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "TLSListener"]

#: Seconds a TLS handshake may take, client or server side. A handshake is a
#: few round trips: 10 s covers a slow link many times over, and it is short
#: enough that a peer that stalls mid-handshake (a slowloris against a TLS
#: listener) cannot hold a connection's greenlet and descriptor for long.
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0


class TLSListener(ListenerLayer):
    """A listener whose flows are TLS server flows over the inner listener's.

    Args:
        listener: the listener to wrap; the TLS listener owns it from now on.
        context: the server context, usually from
            :func:`greenflow.tls.server_context`.
        handshake_timeout: seconds each handshake may take (``None``: no
            limit); a client that stalls past it is closed.

    Its URL is the inner one's with ``tls`` added: ``tls://host:port`` over
    TCP, ``unix+tls:/path`` over a Unix socket. The flows it makes keep the
    timeout :meth:`open_flow` gave the plain flow.
    """

    __slots__ = ("_context", "_handshake_timeout")

    scheme = "tls"

    def __init__(
        self,
        listener: Listener,
        context: SSL.Context,
        *,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        if not isinstance(context, SSL.Context):
            raise TypeError(f"a TLS listener needs an OpenSSL.SSL.Context, not {type(context).__name__}")
        super().__init__(listener)
        self._context = context
        self._handshake_timeout = check_timeout(handshake_timeout)

    @property
    def tls_context(self) -> SSL.Context:
        """The server TLS context."""
        return self._context

    @property
    def handshake_timeout(self) -> float | None:
        """Seconds a handshake may take (``None``: no limit)."""
        return self._handshake_timeout

    def upgrade(self, flow: Flow) -> Flow:
        """Run the TLS server handshake over ``flow``; raises what :func:`greenflow.tls.server` raises."""
        from . import server  # noqa: PLC0415 - this package imports this module before defining server

        return server(flow, self._context, handshake_timeout=self._handshake_timeout, timeout=flow.timeout)
