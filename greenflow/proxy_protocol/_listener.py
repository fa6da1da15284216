"""The PROXY protocol over flows and listeners: :func:`accept`, :class:`ProxyFlow`, the layer.

:func:`accept` reads one header from a flow with the sans-IO parser and
returns a :class:`ProxyFlow` over it: a thin layer whose ``peer_address`` is
the client's address from the header and whose ``proxy_info`` keeps the
rest (the load balancer's own address, the TLVs). The bytes the reads
brought past the header are buffered in that flow and read first: none is
lost, and a TLS ClientHello sent in the header's segment reaches the TLS
layer above whole.

:class:`ProxyProtocolListener` runs :func:`accept` as a listener layer, in
each connection's own greenlet, bounded by ``header_timeout``; it stacks
under TLS (``TLSListener(ProxyProtocolListener(listen_tcp(...)))``) since a
load balancer sends the header before the client's first byte.

A connection whose header is missing or malformed is closed, and the server
logs why. Only sources in the ``trusted`` networks may connect without a
header (health checks, an operator's own tools): the specification warns
that guessing whether a header is there lets any client pose as any other,
so the default trusts none.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final, TypeAlias

from ..buffered import BufferedFlow
from ..flow import Flow
from ..kit import check_timeout, start_timer
from ..listener import Listener, ListenerLayer
from ._header import ProxyHeader, ProxyInfo
from ._parser import HeaderParser

__all__ = ["DEFAULT_HEADER_TIMEOUT", "ProxyFlow", "ProxyProtocolListener", "accept", "parse_networks"]

#: Seconds a client may take to send its whole header. A load balancer
#: writes it at once with its first segment; 10 s, as for a TLS handshake,
#: covers a slow link and ends a silent client soon.
DEFAULT_HEADER_TIMEOUT: Final = 10.0

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyFlow(BufferedFlow):
    """A flow that arrived through a proxy: the client's address, the header's details.

    A :class:`~greenflow.BufferedFlow` over the connection's flow (record
    reads come with it), holding the bytes that came after the header.

    ``peer_address`` is the client's address from the header (the real
    peer's for a ``LOCAL`` or ``UNKNOWN`` header, or with no header from a
    trusted source); ``proxy_info`` is a :class:`ProxyInfo`, or ``None``
    when a trusted source sent no header.
    """

    __slots__ = ("_info",)

    def __init__(self, flow: Flow, info: ProxyInfo | None, rest: bytes = b"") -> None:
        super().__init__(flow)
        self._info = info
        if rest:
            self._buffer.feed(rest)

    def __repr__(self) -> str:
        peer = self.peer_address
        return f"<ProxyFlow from {peer!r} over {self._inner!r}>"

    @property
    def peer_address(self) -> object:
        info = self._info
        return self._inner.peer_address if info is None else info.peer_address

    @property
    def proxy_info(self) -> ProxyInfo | None:
        """What the PROXY header said, or ``None`` (a trusted source sent none)."""
        return self._info


def parse_networks(networks: Iterable[str | Network]) -> tuple[Network, ...]:
    """``trusted`` as networks: ``"10.0.0.0/8"``, ``"::1"`` (one host), or network objects.

    Raises:
        ValueError: an entry is not a network, quoting it.
    """
    if isinstance(networks, str):
        raise TypeError("trusted takes an iterable of networks; wrap a single one in a list")
    parsed = []
    for entry in networks:
        try:
            parsed.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ValueError(
                f"{entry!r} is not a network (CIDR such as 10.0.0.0/8 or fd00::/8): {exc}"
            ) from None
    return tuple(parsed)


def _trusted(address: object, networks: tuple[Network, ...]) -> bool:
    if not networks or not isinstance(address, tuple) or not isinstance(address[0], str):
        return False  # no network is trusted, or the peer is not an IP one (Unix, vsock)
    try:
        ip = ipaddress.ip_address(address[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def accept(
    flow: Flow,
    *,
    trusted: Iterable[str | Network] = (),
    timeout: float | None = DEFAULT_HEADER_TIMEOUT,
) -> ProxyFlow:
    """Read the PROXY protocol header (v1 or v2) that starts ``flow``; return the flow after it.

    Args:
        flow: a connection from a proxy; the returned flow owns it.
        trusted: networks whose connections may come without a header.
        timeout: seconds the whole header may take (``None``: no limit).

    Raises:
        ProxyHeaderError: the header is missing (from a source not
            trusted), malformed, or cut short by the peer's EOF.
        FlowTimeout: the header did not come within ``timeout``.
        FlowError: reading failed.

    ``flow`` is closed when this raises.
    """
    networks = parse_networks(trusted)
    timeout = check_timeout(timeout)
    try:
        real_peer = flow.peer_address
        parser = HeaderParser(optional=_trusted(real_peer, networks))
        timer = None
        if timeout is not None:
            timer = start_timer(timeout, "reading the PROXY protocol header", setting="the header timeout")
        try:
            while not parser.finished:
                data = flow.read(parser.wanted)
                if data:
                    parser.feed(data)
                else:
                    parser.feed_eof()
        finally:
            if timer is not None:
                timer.close()
    except BaseException:
        flow.close()
        raise
    return ProxyFlow(flow, _info(parser.header, real_peer), parser.rest)


def _info(header: ProxyHeader | None, real_peer: object) -> ProxyInfo | None:
    if header is None:
        return None
    return ProxyInfo(header, real_peer, header.source if header.relayed else real_peer)


class ProxyProtocolListener(ListenerLayer):
    """A listener whose flows begin with a PROXY protocol header, read and taken off.

    Args:
        listener: the listener to wrap; this layer owns it from now on.
        trusted: networks (CIDR strings or ``ipaddress`` networks) whose
            connections may come without a header; none by default.
        header_timeout: seconds each header may take (``None``: no limit).

    Its flows are :class:`ProxyFlow` objects. Its URL is the inner one's
    with ``+proxy`` after the scheme (``tcp+proxy://127.0.0.1:8000``).
    """

    __slots__ = ("_header_timeout", "_trusted")

    scheme = "proxy"

    def __init__(
        self,
        listener: Listener,
        *,
        trusted: Iterable[str | Network] = (),
        header_timeout: float | None = DEFAULT_HEADER_TIMEOUT,
    ) -> None:
        networks = parse_networks(trusted)
        header_timeout = check_timeout(header_timeout)
        super().__init__(listener)
        self._trusted = networks
        self._header_timeout = header_timeout

    @property
    def trusted(self) -> tuple[Network, ...]:
        """The networks whose connections may come without a header."""
        return self._trusted

    @property
    def header_timeout(self) -> float | None:
        """Seconds each header may take (``None``: no limit)."""
        return self._header_timeout

    @property
    def url(self) -> str:
        scheme, colon, rest = self._inner.url.partition(":")
        return f"{scheme}+{self.scheme}{colon}{rest}"

    def upgrade(self, flow: Flow) -> Flow:
        """Read the header off ``flow``; raises what :func:`accept` raises."""
        return accept(flow, trusted=self._trusted, timeout=self._header_timeout)
