"""The PROXY protocol parser, sans-IO: bytes in, a :class:`ProxyHeader` out.

Theory of operation
-------------------

A :class:`HeaderParser` is fed what the connection's first reads return,
and says after each feed whether the header is complete. It never consumes
a byte past the header: what came after it in the same read is
:attr:`HeaderParser.rest`, for the handler. :attr:`HeaderParser.wanted`
bounds the next read so that a reader which honours it reads no byte past a
v2 header at all (its length is in its first 16 bytes) and at most the
107-byte bound of v1 in all (a v1 line's end is found only by reading it)::

    START --"PROXY "--> V1 --CRLF--> DONE
    START --signature--> V2 --16 + length bytes--> DONE
    START --anything else--> NO_HEADER     (optional header only; else FAILED)
    any --bad input--> FAILED              (ProxyHeaderError, and it stays)

The two signatures differ in their first byte, so a byte that matches
neither prefix decides at once. With ``optional=True`` (a trusted source
may connect without a header) a mismatch is no error: the parser ends in
``NO_HEADER`` and every byte fed is :attr:`~HeaderParser.rest`.

Every error is a :class:`ProxyHeaderError` whose sentence says what was
wrong, quoting the culprit (the line, the length, the TLV type).
"""

from __future__ import annotations

import enum
import ipaddress
import os
import struct
from typing import Final

from ..errors import BrokenError
from ._header import (
    TLV,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    Command,
    Family,
    ProxyHeader,
    SSLClient,
    SSLInfo,
    SSLSubtype,
    TLVType,
    Transport,
    crc32c,
)

__all__ = ["HeaderParser", "ParserState", "ProxyHeaderError"]

_V1_PREFIX: Final = b"PROXY "
_V2_FIXED: Final = 16  # signature, version and command, family, length
#: The address block's size for each family (UNSPEC: none).
_ADDRESS_SIZE: Final = {Family.UNSPEC: 0, Family.INET: 12, Family.INET6: 36, Family.UNIX: 216}
_UNIX_PATH: Final = 108
_MAX_UNIQUE_ID: Final = 128
_SSL_FIXED: Final = 5  # client (1 byte) and verify (4 bytes)
_SSL_STRINGS: Final = {
    SSLSubtype.VERSION: "version",
    SSLSubtype.CN: "cn",
    SSLSubtype.CIPHER: "cipher",
    SSLSubtype.SIG_ALG: "sig_alg",
    SSLSubtype.KEY_ALG: "key_alg",
}


class ProxyHeaderError(BrokenError):
    """The connection's PROXY protocol header is missing, malformed or cut short."""


class ParserState(enum.Enum):
    """Where a :class:`HeaderParser` stands; see the module's theory of operation."""

    START = "waiting for the signature"
    V1 = "reading a v1 line"
    V2 = "reading a v2 header"
    DONE = "done"
    NO_HEADER = "no header"
    FAILED = "failed"


_FINISHED: Final = frozenset({ParserState.DONE, ParserState.NO_HEADER})


class HeaderParser:
    """Parses one PROXY protocol header, v1 or v2, from the bytes fed to it.

    Args:
        optional: a stream that does not start with either signature has no
            header (``NO_HEADER``) instead of a malformed one.

    Attributes:
        state: the :class:`ParserState`.
        header: the :class:`ProxyHeader` once ``DONE``, else ``None``.
        rest: the bytes fed past the header (all of them for ``NO_HEADER``).
    """

    __slots__ = ("_buffer", "_optional", "header", "rest", "state")

    def __init__(self, *, optional: bool = False) -> None:
        self._optional = optional
        self._buffer = bytearray()
        self.state = ParserState.START
        self.header: ProxyHeader | None = None
        self.rest = b""

    @property
    def finished(self) -> bool:
        """Whether the parser is done: a header (``DONE``), or none (``NO_HEADER``)."""
        return self.state in _FINISHED

    @property
    def wanted(self) -> int:
        """The most the next read should ask for; 0 once finished or failed."""
        state, have = self.state, len(self._buffer)
        if state is ParserState.START:
            return _V2_FIXED - have
        if state is ParserState.V1:
            return V1_MAX_LENGTH - have
        if state is ParserState.V2:
            if have < _V2_FIXED:
                return _V2_FIXED - have
            return _V2_FIXED + int.from_bytes(self._buffer[14:16], "big") - have
        return 0

    def feed(self, data: bytes | bytearray | memoryview) -> bool:
        """Take the next bytes of the stream; True once :attr:`finished`.

        Raises:
            ProxyHeaderError: the header is malformed; the parser is
                ``FAILED`` from then on.
            ValueError: the parser is finished or failed already.
        """
        if self.state in _FINISHED or self.state is ParserState.FAILED:
            raise ValueError(f"the PROXY header parser is {self.state.value}: it takes no more bytes")
        self._buffer += data
        try:
            if self.state is ParserState.START:
                self._start()
            if self.state is ParserState.V1:
                self._v1()
            elif self.state is ParserState.V2:
                self._v2()
        except ProxyHeaderError:
            self.state = ParserState.FAILED
            raise
        return self.state in _FINISHED

    def feed_eof(self) -> None:
        """The stream ended: fine before any byte of an optional header, else an error."""
        if self.state in _FINISHED:
            return
        if self._optional and self.state is ParserState.START:
            self._finish(ParserState.NO_HEADER, 0)
            return
        self.state = ParserState.FAILED
        if not self._buffer:
            raise ProxyHeaderError("the connection ended before its PROXY protocol header")
        raise ProxyHeaderError(
            f"the connection ended {len(self._buffer)} bytes into its PROXY protocol header"
        )

    # -- the steps ---------------------------------------------------------------------

    def _finish(self, state: ParserState, length: int) -> None:
        self.state = state
        self.rest = bytes(self._buffer[length:])
        self._buffer.clear()

    def _start(self) -> None:
        buffer = self._buffer
        for signature, state in ((_V1_PREFIX, ParserState.V1), (V2_SIGNATURE, ParserState.V2)):
            size = min(len(buffer), len(signature))
            if buffer[:size] == signature[:size]:
                if size == len(signature):
                    self.state = state
                return
        if self._optional:
            self._finish(ParserState.NO_HEADER, 0)
            return
        raise ProxyHeaderError(
            f"the connection did not start with a PROXY protocol header: it sent {bytes(buffer[:16])!r}"
        )

    def _v1(self) -> None:
        buffer = self._buffer
        end = _line_end(buffer)
        if end < 0:
            if len(buffer) >= V1_MAX_LENGTH:
                raise ProxyHeaderError(
                    f"the PROXY v1 line has no CRLF within {V1_MAX_LENGTH} bytes: {bytes(buffer[:40])!r}..."
                )
            return
        self.header = parse_v1_line(bytes(buffer[:end]))
        self._finish(ParserState.DONE, end + 2)

    def _v2(self) -> None:
        buffer = self._buffer
        if len(buffer) < _V2_FIXED:
            return
        version, command_bits = buffer[12] >> 4, buffer[12] & 0x0F
        if version != 2:
            raise ProxyHeaderError(f"the PROXY v2 header says version {version}, not 2")
        if command_bits > 1:
            raise ProxyHeaderError(f"the PROXY v2 header has the unknown command {command_bits:#x}")
        family_bits, transport_bits = buffer[13] >> 4, buffer[13] & 0x0F
        if family_bits > 3:
            raise ProxyHeaderError(f"the PROXY v2 header has the unknown address family {family_bits:#x}")
        if transport_bits > 2:
            raise ProxyHeaderError(f"the PROXY v2 header has the unknown transport {transport_bits:#x}")
        total = _V2_FIXED + int.from_bytes(buffer[14:16], "big")
        if len(buffer) < total:
            return
        self.header = _parse_v2(
            bytes(buffer[:total]), Command(command_bits), Family(family_bits), Transport(transport_bits)
        )
        self._finish(ParserState.DONE, total)


def _line_end(buffer: bytearray) -> int:
    """Where the v1 line's CRLF starts; -1 if not yet seen. A bare CR or LF is an error."""
    for index, byte in enumerate(buffer):
        if byte == 0x0A:
            raise ProxyHeaderError(f"the PROXY v1 line ends in a bare LF: {bytes(buffer[: index + 1])!r}")
        if byte == 0x0D:
            if index + 1 == len(buffer):
                return -1
            if buffer[index + 1] != 0x0A:
                raise ProxyHeaderError(
                    f"the PROXY v1 line has a CR without LF: {bytes(buffer[: index + 2])!r}"
                )
            return index
    return -1


# -- version 1 ---------------------------------------------------------------------------


def parse_v1_line(line: bytes) -> ProxyHeader:
    """Parse a v1 line, ``PROXY TCP4 ...`` without its CRLF."""
    parts = line.split(b" ")
    protocol = parts[1] if len(parts) > 1 else b""
    if protocol == b"UNKNOWN":
        return ProxyHeader(1, Command.PROXY, Family.UNSPEC, Transport.UNSPEC)
    if protocol not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError(f"the PROXY v1 line names no known protocol (TCP4, TCP6, UNKNOWN): {line!r}")
    if len(parts) != 6:
        raise ProxyHeaderError(
            f"the PROXY v1 line has {len(parts)} fields, not 6"
            f" (PROXY, protocol, 2 addresses, 2 ports): {line!r}"
        )
    v6 = protocol == b"TCP6"
    family = Family.INET6 if v6 else Family.INET
    source = _v1_address(parts[2], parts[4], v6, line)
    destination = _v1_address(parts[3], parts[5], v6, line)
    return ProxyHeader(1, Command.PROXY, family, Transport.STREAM, source, destination)


def _v1_address(
    host: bytes, port: bytes, v6: bool, line: bytes
) -> tuple[str, int] | tuple[str, int, int, int]:
    kind = "IPv6" if v6 else "IPv4"
    try:
        text = host.decode("ascii")
        address = ipaddress.IPv6Address(text) if v6 else ipaddress.IPv4Address(text)
    except ValueError:
        raise ProxyHeaderError(
            f"the PROXY v1 line has {host!r} where an {kind} address belongs: {line!r}"
        ) from None
    if "%" in text:
        raise ProxyHeaderError(f"the PROXY v1 line has an IPv6 address with a scope, {host!r}: {line!r}")
    if (
        not port.isdigit()
        or not port.isascii()
        or (port.startswith(b"0") and port != b"0")
        or int(port) > 65535
    ):
        raise ProxyHeaderError(f"the PROXY v1 line has {port!r} where a port (0 to 65535) belongs: {line!r}")
    if v6:
        return (str(address), int(port), 0, 0)
    return (str(address), int(port))


# -- version 2 ---------------------------------------------------------------------------


def _parse_v2(header: bytes, command: Command, family: Family, transport: Transport) -> ProxyHeader:
    body = memoryview(header)[_V2_FIXED:]
    size = _ADDRESS_SIZE[family]
    if len(body) < size:
        raise ProxyHeaderError(
            f"the PROXY v2 header's length {len(body)} is too short"
            f" for its {family.name} addresses ({size} bytes)"
        )
    source = destination = None
    if command is Command.PROXY and transport is not Transport.UNSPEC and family is not Family.UNSPEC:
        source, destination = _v2_addresses(family, body[:size])
    tlvs = _parse_tlvs(body[size:], "the PROXY v2 header")
    fields = _decode_tlvs(tlvs, header, _V2_FIXED + size)
    return ProxyHeader(2, command, family, transport, source, destination, tlvs, **fields)  # type: ignore[arg-type]


def _v2_addresses(family: Family, block: memoryview) -> tuple[object, object]:
    if family is Family.INET:
        a, b, sport, dport = struct.unpack("!4s4sHH", block)
        return (str(ipaddress.IPv4Address(a)), sport), (str(ipaddress.IPv4Address(b)), dport)
    if family is Family.INET6:
        a, b, sport, dport = struct.unpack("!16s16sHH", block)
        return (str(ipaddress.IPv6Address(a)), sport, 0, 0), (str(ipaddress.IPv6Address(b)), dport, 0, 0)
    return _unix_path(block[:_UNIX_PATH]), _unix_path(block[_UNIX_PATH:])


def _unix_path(raw: memoryview) -> str:
    """A 108-byte path field: up to its first NUL, or an abstract name (leading NUL)."""
    data = bytes(raw)
    if data.startswith(b"\0"):
        return os.fsdecode(b"\0" + data[1:].rstrip(b"\0"))
    return os.fsdecode(data.split(b"\0", 1)[0])


def _parse_tlvs(data: memoryview, where: str) -> tuple[TLV, ...]:
    tlvs = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyHeaderError(
                f"{where} ends in a cut-short TLV ({len(data) - offset} bytes of its 3-byte head)"
            )
        kind = data[offset]
        length = int.from_bytes(data[offset + 1 : offset + 3], "big")
        start = offset + 3
        if start + length > len(data):
            raise ProxyHeaderError(
                f"{where} has a TLV of type {kind:#04x} whose length {length} runs"
                f" {start + length - len(data)} bytes past its end"
            )
        tlvs.append(TLV(kind, bytes(data[start : start + length])))
        offset = start + length
    return tuple(tlvs)


def _decode_tlvs(tlvs: tuple[TLV, ...], header: bytes, tlv_start: int) -> dict[str, object]:
    """The registered TLVs decoded (the first of each type), and the CRC checked."""
    fields: dict[str, object] = {}
    offset = tlv_start
    for item in tlvs:
        kind, value = item.type, item.value
        if kind == TLVType.CRC32C:
            if "checksummed" in fields:
                raise ProxyHeaderError("the PROXY v2 header has two CRC32C TLVs")
            _check_crc(header, offset + 3, value)
            fields["checksummed"] = True
        elif kind == TLVType.ALPN:
            fields.setdefault("alpn", value)
        elif kind == TLVType.AUTHORITY:
            fields.setdefault("authority", _text(value, "utf-8", "authority"))
        elif kind == TLVType.UNIQUE_ID:
            if len(value) > _MAX_UNIQUE_ID:
                raise ProxyHeaderError(
                    f"the PROXY v2 header's unique id is {len(value)} bytes long,"
                    f" over the {_MAX_UNIQUE_ID} allowed"
                )
            fields.setdefault("unique_id", value)
        elif kind == TLVType.NETNS:
            fields.setdefault("netns", _text(value, "ascii", "network namespace"))
        elif kind == TLVType.SSL:
            fields.setdefault("ssl", _parse_ssl(value))
        offset += 3 + len(value)
    return fields


def _check_crc(header: bytes, at: int, value: bytes) -> None:
    if len(value) != 4:
        raise ProxyHeaderError(f"the PROXY v2 header's CRC32C TLV is {len(value)} bytes long, not 4")
    expected = int.from_bytes(value, "big")
    actual = crc32c(header[:at] + b"\0\0\0\0" + header[at + 4 :])
    if actual != expected:
        raise ProxyHeaderError(
            f"the PROXY v2 header's CRC32C is {expected:#010x}, but its bytes give {actual:#010x}"
        )


def _parse_ssl(value: bytes) -> SSLInfo:
    if len(value) < _SSL_FIXED:
        raise ProxyHeaderError(
            f"the PROXY v2 header's SSL TLV is {len(value)} bytes long, under the 5 it needs"
        )
    client, verify = struct.unpack("!BI", value[:_SSL_FIXED])
    subtlvs = _parse_tlvs(memoryview(value)[_SSL_FIXED:], "the PROXY v2 header's SSL TLV")
    strings: dict[str, str] = {}
    for item in subtlvs:
        name = _SSL_STRINGS.get(item.type)  # type: ignore[call-overload]
        if name is not None and name not in strings:
            encoding = "utf-8" if item.type == SSLSubtype.CN else "ascii"
            strings[name] = _text(item.value, encoding, f"SSL {name.replace('_', ' ')}")
    return SSLInfo(SSLClient(client), verify, tlvs=subtlvs, **strings)


def _text(value: bytes, encoding: str, what: str) -> str:
    try:
        return value.decode(encoding)
    except UnicodeDecodeError:
        raise ProxyHeaderError(
            f"the PROXY v2 header's {what} TLV is not {encoding.upper()}: {value[:40]!r}"
        ) from None
