"""The PROXY protocol, v1 and v2: the client's address through a load balancer.

HAProxy, nginx's stream module and the cloud load balancers can start each
connection they relay with a short header saying whom it is from (the
specification is HAProxy's ``proxy-protocol.txt``). This package reads it
and writes it:

- :class:`ProxyProtocolListener`, a listener layer: its flows report the
  client's address as ``peer_address`` and the header's details as
  ``proxy_info``; ``TLSListener(ProxyProtocolListener(listen_tcp(...)))`` is
  TLS behind a load balancer that passes TLS through;
- :func:`accept` does the same for one flow;
- :class:`HeaderParser`, the sans-IO parser under both;
- :func:`encode` (and :func:`ssl_tlv`), the sender, for tunnels and tests.

``greenflow serve --proxy-protocol`` puts the layer on every listener.
"""

from __future__ import annotations

from ._encode import encode, header_for, ssl_tlv
from ._header import (
    TLV,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    Command,
    Family,
    ProxyHeader,
    ProxyInfo,
    SSLClient,
    SSLInfo,
    SSLSubtype,
    TLVType,
    Transport,
    crc32c,
)
from ._listener import DEFAULT_HEADER_TIMEOUT, ProxyFlow, ProxyProtocolListener, accept, parse_networks
from ._parser import HeaderParser, ParserState, ProxyHeaderError, parse_v1_line

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "TLV",
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "Command",
    "Family",
    "HeaderParser",
    "ParserState",
    "ProxyFlow",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyInfo",
    "ProxyProtocolListener",
    "SSLClient",
    "SSLInfo",
    "SSLSubtype",
    "TLVType",
    "Transport",
    "accept",
    "crc32c",
    "header_for",
    "encode",
    "parse_networks",
    "parse_v1_line",
    "ssl_tlv",
]
