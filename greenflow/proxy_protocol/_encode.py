"""The PROXY protocol sender: the header for a given source and destination.

What a load balancer writes first on its connection to a server; greenflow's
tunnel and the tests write it with :func:`encode`. The parser reads back
exactly what this writes (the tests hold both to that).
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Iterable
from typing import Final

from ..flow import Flow
from ._header import TLV, V2_SIGNATURE, Command, Family, SSLClient, SSLSubtype, TLVType, Transport, crc32c

__all__ = ["encode", "ssl_tlv"]

_MAX_LENGTH: Final = 65535
_UNIX_PATH: Final = 108


def encode(
    source: object,
    destination: object,
    *,
    version: int = 2,
    tlvs: Iterable[TLV | tuple[int, bytes]] = (),
    local: bool = False,
    checksum: bool = False,
) -> bytes:
    """A PROXY protocol header saying that ``source`` connected to ``destination``.

    Args:
        source: the client's address: ``(host, port)`` with a numeric IPv4 or
            IPv6 host (an IPv6 4-tuple too), a Unix path (``str``, v2 only),
            or ``None`` with ``destination`` ``None`` for an unknown one
            (v1 ``UNKNOWN``, v2 ``UNSPEC``).
        destination: the address the client connected to, of the same kind.
        version: 1 (the text line) or 2 (binary).
        tlvs: v2 only: TLVs to add, as :class:`TLV` or ``(type, value)``.
        local: v2 only: the ``LOCAL`` command (a health check of the proxy's
            own); the addresses must be ``None`` then.
        checksum: v2 only: add a CRC32C TLV over the whole header.

    Raises:
        ValueError: the addresses are of different or unknown kinds, a port
            is out of range, an option does not apply to ``version``, or
            the header would pass the 64 KiB the length field allows.
    """
    if version == 1:
        items = list(tlvs)
        if items or local or checksum:
            raise ValueError("a PROXY v1 header has no TLVs, LOCAL command or checksum: use version=2")
        return _encode_v1(source, destination)
    if version != 2:
        raise ValueError(f"the PROXY protocol has versions 1 and 2, not {version!r}")
    if local and (source is not None or destination is not None):
        raise ValueError("a LOCAL PROXY header carries no addresses: give None for both")
    family, block = _v2_addresses(source, destination)
    body = block + b"".join(_tlv_bytes(item) for item in tlvs)
    command = Command.LOCAL if local else Command.PROXY
    transport = Transport.UNSPEC if family is Family.UNSPEC else Transport.STREAM
    if checksum:
        body += bytes([TLVType.CRC32C]) + b"\x00\x04" + b"\0\0\0\0"
    if len(body) > _MAX_LENGTH:
        raise ValueError(
            f"a PROXY v2 header holds at most {_MAX_LENGTH} bytes after its first 16, not {len(body)}"
        )
    head = V2_SIGNATURE + bytes([0x20 | command.value, family.value << 4 | transport.value])
    header = head + len(body).to_bytes(2, "big") + body
    if checksum:
        header = header[:-4] + crc32c(header).to_bytes(4, "big")
    return header


def header_for(flow: Flow, *, version: int = 2) -> bytes:
    """The header a proxy sends ahead of ``flow``'s bytes: who connected to whom.

    The source is the flow's ``peer_address``, the destination its
    ``local_address``. Addresses a header cannot carry (an unnamed Unix
    socket, vsock, mixed IPv4 and IPv6, a Unix path in a v1 header) make it
    say so in the protocol's own terms: v1 ``UNKNOWN``, v2 ``UNSPEC``.
    """
    source, destination = flow.peer_address, flow.local_address
    if isinstance(source, tuple) and isinstance(destination, tuple):
        if not (isinstance(source[0], str) and isinstance(destination[0], str)):  # vsock: (cid, port)
            source = destination = None
    elif not (
        isinstance(source, str | bytes) and source and isinstance(destination, str | bytes) and destination
    ):
        source = destination = None
    try:
        return encode(source, destination, version=version)
    except ValueError:
        return encode(None, None, version=version)


def ssl_tlv(
    client: SSLClient | int,
    verify: int = 0,
    *,
    version: str | None = None,
    cn: str | None = None,
    cipher: str | None = None,
    sig_alg: str | None = None,
    key_alg: str | None = None,
) -> TLV:
    """A ``PP2_TYPE_SSL`` TLV with the sub-TLVs given (``None``: left out)."""
    parts = [struct.pack("!BI", int(client), verify)]
    for subtype, text in (
        (SSLSubtype.VERSION, version),
        (SSLSubtype.CN, cn),
        (SSLSubtype.CIPHER, cipher),
        (SSLSubtype.SIG_ALG, sig_alg),
        (SSLSubtype.KEY_ALG, key_alg),
    ):
        if text is not None:
            parts.append(_tlv_bytes((subtype, text.encode("utf-8"))))
    return TLV(TLVType.SSL, b"".join(parts))


def _tlv_bytes(item: TLV | tuple[int, bytes]) -> bytes:
    kind, value = (item.type, item.value) if isinstance(item, TLV) else item
    if not 0 <= kind <= 0xFF:
        raise ValueError(f"a TLV type is one byte, not {kind!r}")
    value = bytes(value)
    if len(value) > _MAX_LENGTH:
        raise ValueError(f"a TLV value holds at most {_MAX_LENGTH} bytes, not {len(value)}")
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


def _ip(address: object, what: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    if not isinstance(address, tuple) or len(address) not in (2, 4):
        raise ValueError(f"the {what} must be (host, port), a Unix path or None, not {address!r}")
    host, port = address[0], address[1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"the {what}'s host must be a numeric IP address, not {host!r}") from None
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"the {what}'s port must be 0 to 65535, not {port!r}")
    return ip, port


def _encode_v1(source: object, destination: object) -> bytes:
    if source is None and destination is None:
        return b"PROXY UNKNOWN\r\n"
    (src, sport), (dst, dport) = _ip(source, "source"), _ip(destination, "destination")
    if src.version != dst.version:
        raise ValueError(
            f"the source {source!r} and the destination {destination!r} are of different families"
        )
    protocol = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {protocol} {src} {dst} {sport} {dport}\r\n".encode("ascii")


def _v2_addresses(source: object, destination: object) -> tuple[Family, bytes]:
    if source is None and destination is None:
        return Family.UNSPEC, b""
    if isinstance(source, str | bytes) and isinstance(destination, str | bytes):
        return Family.UNIX, _unix_field(source) + _unix_field(destination)
    (src, sport), (dst, dport) = _ip(source, "source"), _ip(destination, "destination")
    if src.version != dst.version:
        raise ValueError(
            f"the source {source!r} and the destination {destination!r} are of different families"
        )
    family = Family.INET if src.version == 4 else Family.INET6
    return family, src.packed + dst.packed + struct.pack("!HH", sport, dport)


def _unix_field(path: str | bytes) -> bytes:
    raw = os.fsencode(path)
    if len(raw) > _UNIX_PATH:
        raise ValueError(f"a Unix path in a PROXY header holds at most {_UNIX_PATH} bytes, not {len(raw)}")
    return raw.ljust(_UNIX_PATH, b"\0")
