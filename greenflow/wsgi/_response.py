"""The response side: ``start_response``, ``write()``, the body, and ``wsgi.file_wrapper``.

A :class:`Response` goes through :class:`ResponseState`, forward only:

- ``NOT_STARTED``: the application has not called ``start_response``.
- ``READY``: status and headers are set but not sent; PEP 3333 sends them
  with the first non-empty body bytes (or at the end of an empty body), so
  that an application may still replace them with ``exc_info``.
- ``SENT``: the head is on the wire; an error now can only close the
  connection (the client sees a short body).
- ``ENDED``: the whole response was sent.

h11 frames the body: with the application's ``Content-Length`` (and h11
refuses a body of another size), chunked for an HTTP/1.1 client otherwise,
close-delimited for HTTP/1.0. A body that is one bytes object (a list of
one, the usual case) gets a ``Content-Length`` of its own and goes out in
one write with the head. For ``HEAD``, ``204`` and ``304`` nothing of the
body is sent, whatever the application returns.

``wsgi.file_wrapper`` (:class:`FileWrapper`) sends a regular file with
``sendfile(2)`` when the flow is a plain socket (the kernel copies, the
bytes never enter Python); over TLS or any other layer it reads the file in
blocks of ``block_size`` and writes them as they come.
"""

from __future__ import annotations

import enum
import os
import re
import stat
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import IO, Any, Final

import h11
from gevent.socket import wait_write

from ..descriptors import broken_error
from ..errors import FlowTimeout
from ..flow import Flow
from ..sockets import SocketFlow
from ._input import RequestBody

__all__ = ["REASONS", "FileWrapper", "Response", "ResponseState"]

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
Write = Callable[[bytes], None]

#: The block size of :class:`FileWrapper` when the application names none.
FILE_BLOCK_SIZE: Final = 256 * 1024

_STATUS: Final = re.compile(r"([1-9][0-9][0-9]) ([^\x00-\x1f\x7f]*)")
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: Header fields that are the server's business (PEP 3333), not the application's.
_HOP_BY_HOP: Final = frozenset(
    {
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NO_BODY_STATUS: Final = frozenset({204, 304})


class ResponseState(enum.Enum):
    """Where a response is; see the module docstring."""

    NOT_STARTED = "not started"
    READY = "ready"
    SENT = "sent"
    ENDED = "ended"


class FileWrapper:
    """``wsgi.file_wrapper``: an iterable over a file, sent efficiently by the server.

    Iterating yields blocks of ``block_size`` bytes (for a server or
    middleware that iterates it); :class:`Response` sends it with
    ``sendfile(2)`` where it can. ``close()`` closes the file.
    """

    __slots__ = ("block_size", "file")

    def __init__(self, file: IO[bytes], block_size: int = FILE_BLOCK_SIZE) -> None:
        self.file = file
        self.block_size = block_size

    def __iter__(self) -> FileWrapper:
        return self

    def __next__(self) -> bytes:
        block = self.file.read(self.block_size)
        if not block:
            raise StopIteration
        return block

    def close(self) -> None:
        close = getattr(self.file, "close", None)
        if close is not None:
            close()


class _Placeholder:
    """Stands for bytes that ``sendfile`` sends: h11 only counts its length."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


class Response:
    """One response: PEP 3333's ``start_response`` and ``write``, and sending the body."""

    __slots__ = (
        "_body",
        "_closing",
        "_conn",
        "_flow",
        "_headers",
        "_length",
        "_no_body",
        "_reason",
        "_request_has_no_body",
        "sent",
        "state",
        "status_code",
    )

    def __init__(
        self, conn: h11.Connection, flow: Flow, body: RequestBody, method: bytes, *, closing: bool = False
    ) -> None:
        self._conn = conn
        self._closing = closing  # the last response of the connection: it says Connection: close
        self._flow = flow
        self._body = body
        self._request_has_no_body = method == b"HEAD"
        self._no_body = True
        self._headers: list[tuple[bytes, bytes]] = []
        self._length: int | None = None  # the application's Content-Length
        self._reason = b""
        self.status_code = 0
        self.state = ResponseState.NOT_STARTED
        self.sent = 0  # body bytes sent, for the access log

    # -- PEP 3333 --------------------------------------------------------------

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Write:
        """PEP 3333's ``start_response``: set the status and headers; returns ``write``.

        Raises:
            TypeError, ValueError: a malformed status or header field, or a
                hop-by-hop one (``Transfer-Encoding``, ``Keep-Alive``, ...;
                ``Connection: close`` is allowed and honoured).
            RuntimeError: called again without ``exc_info``.
            the error of ``exc_info``: called with it after the head was sent.
        """
        if exc_info is not None:
            try:
                if self.state is not ResponseState.NOT_STARTED and self.state is not ResponseState.READY:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.state is not ResponseState.NOT_STARTED:
            raise RuntimeError("start_response was called again without exc_info")
        self.status_code, self._reason = _check_status(status)
        self._headers = _check_headers(headers)
        self._length = _content_length(self._headers)
        self._no_body = self._request_has_no_body or self.status_code in _NO_BODY_STATUS
        self.state = ResponseState.READY
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333's ``write``: send ``data`` now (the head first, if it is not sent)."""
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        if self.state is ResponseState.NOT_STARTED:
            raise RuntimeError("write() was called before start_response")
        if self.state is ResponseState.READY:
            self._send_head([data] if data else [], None)
        elif data:
            self._send_data(data)

    # -- the body the application returned ---------------------------------------------

    def send(self, iterable: Iterable[bytes]) -> None:
        """Send the application's body and end the response (the caller closes ``iterable``)."""
        if type(iterable) is FileWrapper and self._send_file(iterable):
            return
        if type(iterable) in (list, tuple) and len(iterable) == 1:  # type: ignore[arg-type]
            only = iterable[0]  # type: ignore[index]
            if type(only) is bytes and self.state is ResponseState.READY:
                self._send_head([only], len(only))
                self.end()
                return
        for chunk in iterable:
            if not isinstance(chunk, (bytes, bytearray)):
                raise TypeError(f"the application's body yielded {type(chunk).__name__}, not bytes")
            if chunk:
                self.write(chunk)
            elif self.state is ResponseState.NOT_STARTED:
                raise RuntimeError("the application's body yielded before start_response was called")
        self.end()

    def end(self) -> None:
        """Send what is left: the head if it is not sent yet, then the end of the body."""
        if self.state is ResponseState.NOT_STARTED:
            raise RuntimeError("the application returned without calling start_response")
        if self.state is ResponseState.READY:
            self._send_head([], 0)
        end = self._conn.send(h11.EndOfMessage())
        if end:  # the last chunk; nothing after a Content-Length body
            self._flow.write(end)
        self.state = ResponseState.ENDED

    def send_error(self, status: int, message: str, close: bool = True) -> None:
        """Send a short plain-text error response (the head must not be sent yet)."""
        body = message.encode("utf-8", "replace") + b"\n"
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))]
        if close:
            headers.append((b"connection", b"close"))
        self.status_code, self._reason = status, REASONS.get(status, b"Error")
        self._headers = headers
        self._length = len(body)
        self._no_body = self._request_has_no_body
        self.state = ResponseState.READY
        self._send_head([body], None)
        self.end()

    # -- sending -------------------------------------------------------------------

    def _send_head(self, data: list[bytes], length: int | None) -> None:
        headers = self._headers
        if length is not None and self._length is None:
            headers.append((b"content-length", b"%d" % length))
        if self._closing:
            headers.append((b"connection", b"close"))
        self._body.cancel_continue()
        head = self._conn.send(
            h11.Response(status_code=self.status_code, headers=headers, reason=self._reason)
        )
        self.state = ResponseState.SENT
        if data and not self._no_body:
            pieces = self._conn.send_with_data_passthrough(h11.Data(data=data[0])) or []
            self.sent += len(data[0])
            self._flow.writev([head or b"", *pieces])
        else:
            self._flow.write(head or b"")

    def _send_data(self, data: bytes | bytearray) -> None:
        if self._no_body:
            return
        pieces = self._conn.send_with_data_passthrough(h11.Data(data=bytes(data))) or []
        self.sent += len(data)
        self._flow.writev(pieces)

    def _send_file(self, wrapper: FileWrapper) -> bool:
        """Send a regular file with ``sendfile``; False when it cannot be (iterate it instead)."""
        flow = self._flow
        if not isinstance(flow, SocketFlow) or self.state is not ResponseState.READY:
            return False
        try:
            source = wrapper.file.fileno()
            info = os.fstat(source)
            offset = wrapper.file.tell()
        except (AttributeError, OSError, ValueError):
            return False
        if not stat.S_ISREG(info.st_mode):
            return False
        size = max(0, info.st_size - offset)
        if self._length is not None:
            size = min(size, self._length)
        self._send_head([], size)
        if not self._no_body and size:
            self._conn.send_with_data_passthrough(h11.Data(data=_Placeholder(size)))  # type: ignore[arg-type]
            _sendfile(flow, source, offset, size)
            self.sent += size
        self.end()
        return True


def _sendfile(flow: SocketFlow, source: int, offset: int, size: int) -> None:
    """Copy ``size`` bytes of file ``source`` from ``offset`` to the socket, in the kernel."""
    target = flow.socket.fileno()
    end = offset + size
    while offset < end:
        try:
            sent = os.sendfile(target, source, offset, end - offset)
        except BlockingIOError:
            try:
                wait_write(target, timeout=flow.timeout, timeout_exc=_SENDFILE_TIMEOUT)
            except _SendfileTimeout as exc:
                raise FlowTimeout(f"sendfile: no room to write for {flow.timeout} s") from exc
            continue
        except OSError as exc:
            raise broken_error(exc, "sendfile") from exc
        if not sent:
            raise broken_error(OSError(0, "the file ended early"), "sendfile")
        offset += sent


class _SendfileTimeout(Exception):
    pass


_SENDFILE_TIMEOUT: Final = _SendfileTimeout()


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            if not value.isdigit():
                raise ValueError(f"the Content-Length {value.decode('latin-1')!r} is not a number")
            return int(value)
    return None


def _check_status(status: Any) -> tuple[int, bytes]:
    if not isinstance(status, str):
        raise TypeError(f"the status must be a str, not {type(status).__name__}")
    match = _STATUS.fullmatch(status)
    if match is None:
        raise ValueError(f"malformed status {status!r}: expected a 3-digit code, a space and a reason")
    code = int(match[1])
    if code < 200:
        raise ValueError(f"the status {status!r} is informational: the server sends those")
    return code, match[2].encode("latin-1")


def _check_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    if type(headers) is not list:
        raise TypeError(f"the headers must be a list of (name, value) tuples, not {type(headers).__name__}")
    encoded = []
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise TypeError(f"a header must be a (name, value) tuple, not {item!r}")
        name, value = item
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"a header's name and value must be str: {item!r}")
        if _TOKEN.fullmatch(name) is None:
            raise ValueError(f"malformed header name {name!r}")
        if _BAD_VALUE.search(value) is not None:
            raise ValueError(f"the value of header {name!r} has a control character: {value!r}")
        lower = name.lower()
        if lower in _HOP_BY_HOP or (lower == "connection" and value.strip().lower() != "close"):
            raise ValueError(f"{name!r} is a hop-by-hop header: the server's business (PEP 3333)")
        try:
            encoded.append((name.encode("ascii"), value.encode("latin-1")))
        except UnicodeEncodeError as exc:
            raise ValueError(f"the value of header {name!r} is not latin-1: {value!r}") from exc
    return encoded


REASONS: Final = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    505: b"HTTP Version Not Supported",
}
