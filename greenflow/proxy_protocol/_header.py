"""What a PROXY protocol header says: the values, the TLV types, and CRC32C.

The values here are plain frozen data, made by the parser
(:mod:`greenflow.proxy_protocol._parser`) and taken by the sender
(:func:`greenflow.proxy_protocol.encode`). Nothing here does I/O.

Addresses are socket addresses, as ``getpeername()`` gives them, so that a
handler cannot tell a proxied client's address from a direct one: IPv4
``(host, port)``, IPv6 ``(host, port, 0, 0)``, a Unix path as ``str``
(starting with NUL in the abstract namespace), and ``None`` where the header
has no address (``LOCAL``, ``UNSPEC``, v1 ``UNKNOWN``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "Command",
    "Family",
    "ProxyHeader",
    "ProxyInfo",
    "SSLClient",
    "SSLInfo",
    "SSLSubtype",
    "TLV",
    "TLVType",
    "Transport",
    "crc32c",
]

#: The longest v1 line, its CRLF included (``PROXY UNKNOWN`` with two full
#: IPv6 addresses and two five-digit ports).
V1_MAX_LENGTH: Final = 107

#: The twelve bytes a v2 header starts with.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"


class Command(enum.Enum):
    """A v2 header's command (a v1 header is always ``PROXY``)."""

    #: The proxy's own connection (a health check): use the real endpoints.
    LOCAL = 0
    #: A relayed connection: the header's addresses are the client's.
    PROXY = 1


class Family(enum.Enum):
    """The address family of the relayed connection."""

    UNSPEC = 0
    INET = 1
    INET6 = 2
    UNIX = 3


class Transport(enum.Enum):
    """The transport of the relayed connection."""

    UNSPEC = 0
    STREAM = 1
    DGRAM = 2


class TLVType(enum.IntEnum):
    """The TLV types the specification registers (others are kept as they come)."""

    ALPN = 0x01
    AUTHORITY = 0x02
    CRC32C = 0x03
    NOOP = 0x04
    UNIQUE_ID = 0x05
    SSL = 0x20
    NETNS = 0x30


class SSLSubtype(enum.IntEnum):
    """The TLVs inside a ``PP2_TYPE_SSL`` TLV."""

    VERSION = 0x21
    CN = 0x22
    CIPHER = 0x23
    SIG_ALG = 0x24
    KEY_ALG = 0x25


class SSLClient(enum.IntFlag):
    """The ``client`` bits of a ``PP2_TYPE_SSL`` TLV."""

    SSL = 0x01
    CERT_CONN = 0x02
    CERT_SESS = 0x04


@dataclass(frozen=True, slots=True)
class TLV:
    """One type-length-value item, as it was on the wire."""

    type: int
    value: bytes


@dataclass(frozen=True, slots=True)
class SSLInfo:
    """What the proxy says about the client's TLS connection to it (``PP2_TYPE_SSL``).

    ``verify`` is 0 when the client's certificate was verified. The strings
    are ``None`` when their sub-TLV is absent; ``tlvs`` holds every sub-TLV.
    """

    client: SSLClient
    verify: int
    version: str | None = None
    cn: str | None = None
    cipher: str | None = None
    sig_alg: str | None = None
    key_alg: str | None = None
    tlvs: tuple[TLV, ...] = ()

    @property
    def verified(self) -> bool:
        """Whether the client sent a certificate (on this connection) and it was verified."""
        return bool(self.client & SSLClient.CERT_CONN) and self.verify == 0


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One PROXY protocol header (v1 or v2), parsed.

    ``tlvs`` holds every TLV in order, unknown ones included (v2 only); the
    registered ones are also decoded into the fields after it. A CRC32C TLV,
    when present, was checked (``checksummed``).
    """

    version: int
    command: Command
    family: Family
    transport: Transport
    source: object = None
    destination: object = None
    tlvs: tuple[TLV, ...] = ()
    alpn: bytes | None = None
    authority: str | None = None
    unique_id: bytes | None = None
    netns: str | None = None
    ssl: SSLInfo | None = None
    checksummed: bool = False

    @property
    def relayed(self) -> bool:
        """Whether the header names the client: a ``PROXY`` command with addresses."""
        return self.command is Command.PROXY and self.source is not None

    def tlv(self, type: int) -> bytes | None:
        """The value of the first TLV of ``type``, or ``None``."""
        for item in self.tlvs:
            if item.type == type:
                return item.value
        return None


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """A proxied connection, as its flow's ``proxy_info`` gives it.

    Attributes:
        header: what the PROXY header said.
        proxy_address: the connection's real peer: the load balancer.
        peer_address: the address the flow reports as its ``peer_address``:
            the header's source for a relayed connection, the real peer's
            otherwise (``LOCAL``, ``UNKNOWN``, ``UNSPEC``).
    """

    header: ProxyHeader
    proxy_address: object
    peer_address: object = field(default=None)

    @property
    def tlvs(self) -> tuple[TLV, ...]:
        """The header's TLVs (see :attr:`ProxyHeader.tlvs`)."""
        return self.header.tlvs


# -- CRC32C (Castagnoli), as RFC 4960 appendix B computes it ----------------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE: Final = _crc_table()


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """The CRC32C checksum of ``data`` (pure Python: headers are small)."""
    table = _CRC_TABLE
    crc = 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
