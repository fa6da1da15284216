"""The request side: finding a request head, and ``wsgi.input``, the body as a stream.

h11 parses; this module decides what h11 is given and refuses what h11
would let through:

- A head is cut out of the stream here, at its ``CRLF CRLF``, before h11
  sees it (:class:`HeadScanner`, sans-IO). A bare LF anywhere in it is
  refused (``400``): h11 accepts LF-only line endings, and a proxy in front
  that reads them differently is how requests are smuggled. A head longer
  than the limit is refused (``431``) as soon as that many bytes came
  without its end.
- The body (:class:`RequestBody`) streams through h11, one read of the flow
  at a time: nothing is read before the application asks, and no more than
  one read is ever held. The last chunk of a chunked body and its trailer
  section are checked for bare LFs too (h11 accepts ``0\\r\\n\\n``), from
  a short window of the raw bytes (:func:`check_chunked_end`).
- ``Expect: 100-continue`` is answered when the application first reads the
  body, not before: an application that answers without reading (a
  ``401``, a ``413``) never makes the client send its body.

Bytes read past the end of a request (a pipelined next request) go back
into the connection's :class:`~greenflow.BufferedFlow`, so each request
starts from a buffer that holds exactly the bytes not yet parsed.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator
from typing import Final

import gevent
import h11

from ..buffered import BufferedFlow
from ..errors import BrokenError, FlowError
from ._limits import RequestTooLarge

__all__ = ["BodyState", "HeadScanner", "MalformedBody", "Refusal", "RequestBody", "check_chunked_end"]

#: How many raw bytes of a chunked body are kept to check its end: the last
#: chunk line and the trailer section must fit (a trailer section longer
#: than this is refused, as a head longer than its limit is).
CHUNKED_END_WINDOW: Final = 8192

_LAST_CHUNK: Final = re.compile(rb"0+[ \t]*(;[^\r\n]*)?\r")


class Refusal(Exception):
    """A request the server answers with an error status, then closes the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class MalformedBody(BrokenError):
    """The request body breaks HTTP's framing, or the client closed before its end."""


class HeadScanner:
    """Cuts request heads out of received bytes (sans-IO).

    :meth:`feed` takes bytes as they come and returns the head (request
    line, header fields and the empty line) once it is complete; the bytes
    after it are then :attr:`rest`. Empty lines before a request line are
    skipped, as RFC 9112 allows.
    """

    __slots__ = ("_checked", "_data", "limit", "rest")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data = bytearray()
        self._checked = 0  # the first _checked bytes hold no bare LF
        self.rest = b""

    def feed(self, data: bytes) -> bytes | None:
        """Add ``data``; the head if it is complete now, else ``None``.

        Raises:
            Refusal: a bare LF (400), or no end within the limit (431).
        """
        buffer = self._data
        buffer += data
        if not self._checked:
            while buffer[:2] == b"\r\n":
                del buffer[:2]
        end = buffer.find(b"\r\n\r\n", max(0, self._checked - 3))
        if end >= 0:
            head = bytes(buffer[: end + 4])
            if len(head) > self.limit:
                raise _too_long(self.limit)
            if head.count(b"\n") != head.count(b"\r\n"):
                raise _bare_lf("request head")
            self.rest = bytes(buffer[end + 4 :])
            return head
        start = self._checked
        if start and buffer[start - 1] == 0x0D:
            start -= 1  # a CR at the old end pairs with an LF that just came
        if buffer.count(b"\n", start) != buffer.count(b"\r\n", start):
            raise _bare_lf("request head")
        self._checked = len(buffer)
        if len(buffer) > self.limit:
            raise _too_long(self.limit)
        return None


def _too_long(limit: int) -> Refusal:
    return Refusal(431, f"the request head is longer than the limit of {limit} bytes")


def _bare_lf(where: str) -> Refusal:
    return Refusal(400, f"a bare LF (a line ending without CR) in the {where}")


def check_chunked_end(raw: bytes | bytearray) -> None:
    """Refuse a bare LF in the end of a chunked body: its last chunk line and trailers.

    ``raw`` ends where h11 found the end of the body and holds at least the
    last chunk line (``0``, optional extensions, CRLF).

    Raises:
        Refusal: 400 if a line there ends in a bare LF, or the last chunk
            line is not in the window.
    """
    lines = bytes(raw).split(b"\n")
    lines.pop()  # what follows the final LF: nothing
    for line in reversed(lines):
        if not line.endswith(b"\r"):
            raise _bare_lf("chunked body's trailer section")
        if _LAST_CHUNK.fullmatch(line):
            return
    raise Refusal(400, f"the trailer section of the chunked body is longer than {CHUNKED_END_WINDOW} bytes")


class BodyState(enum.Enum):
    """Where ``wsgi.input`` is in the request body."""

    UNREAD = "nothing read yet"
    READING = "reading"
    ENDED = "at its end"
    FAILED = "failed"


class RequestBody:
    """``wsgi.input``: the request body, read from the flow as the application asks.

    ``read(size)``, ``readline(size)``, ``readlines(hint)`` and iteration,
    as PEP 3333 has them; at the end of the body every read returns ``b""``
    (``wsgi.input_terminated`` is true, chunked bodies included). A client
    that closes before the end of its body makes a read raise
    :class:`~greenflow.BrokenError`; a body past ``max_body_size`` makes it
    raise :class:`~greenflow.wsgi.RequestTooLarge`.
    """

    __slots__ = (
        "_conn",
        "_continue",
        "_drain_seconds",
        "_drain_timer",
        "_limit",
        "_pending",
        "_raw",
        "_reader",
        "expects_continue",
        "failure",
        "received",
        "state",
    )

    def __init__(
        self,
        conn: h11.Connection,
        reader: BufferedFlow,
        limit: int | None,
        send_continue: Callable[[], None] | None,
        chunked: bool,
    ) -> None:
        self._conn = conn
        self._reader = reader
        self._limit = limit
        self._continue = send_continue  # None: no 100 Continue to send (any more)
        self.expects_continue = send_continue is not None
        self._drain_seconds: float | None = None  # set while discarding: the bound of its reads
        self._drain_timer: gevent.Timeout | None = None
        self._pending = bytearray()  # decoded body bytes not yet handed out
        self._raw: bytearray | None = bytearray() if chunked else None
        self.received = 0
        self.state = BodyState.UNREAD
        self.failure: FlowError | None = None  # what made the state FAILED

    @property
    def continue_withheld(self) -> bool:
        """The client waits for ``100 Continue`` that was never sent (its body may never come)."""
        return self.expects_continue and self.state is BodyState.UNREAD

    def cancel_continue(self) -> None:
        """The response started first: no ``100 Continue`` can be sent any more."""
        self._continue = None

    # -- PEP 3333's calls --------------------------------------------------------

    def read(self, size: int | None = -1) -> bytes:
        pending = self._pending
        if size is None or size < 0:
            while self._pull():
                pass
            data = bytes(pending)
            pending.clear()
            return data
        if not pending and size and not self._pull():
            return b""
        data = bytes(pending[:size])
        del pending[:size]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        pending = self._pending
        limit = None if size is None or size < 0 else size
        searched = 0
        while True:
            end = pending.find(b"\n", searched, limit)
            if end >= 0:
                cut = end + 1
                break
            if limit is not None and len(pending) >= limit:
                cut = limit
                break
            searched = len(pending)
            if not self._pull():
                cut = len(pending)
                break
        line = bytes(pending[:cut])
        del pending[:cut]
        return line

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    # -- for the connection ------------------------------------------------------

    def discard(self, most: int, seconds: float) -> bool:
        """Read and drop the rest of the body; True if it ended within ``most`` bytes and ``seconds``.

        The time counts from the first read of the flow: a body already
        received (a GET's empty one) ends without a timer.
        """
        self._pending.clear()
        self._continue = None
        try:
            while self.state is not BodyState.ENDED:
                if self.received > most:
                    return False
                self._drain_seconds = seconds  # a timer starts with the first read of the flow
                if not self._pull():
                    break
                self._pending.clear()
        except gevent.Timeout as exc:
            if exc is not self._drain_timer:
                raise
            return False
        finally:
            self._drain_seconds = None
            if self._drain_timer is not None:
                self._drain_timer.close()
                self._drain_timer = None
        return True

    def _pull(self) -> bool:
        """Add the next piece of the body to the pending bytes; False at its end."""
        state = self.state
        if state is BodyState.ENDED:
            return False
        if state is not BodyState.READING:
            if state is BodyState.FAILED:
                assert self.failure is not None  # set with the state
                raise self.failure  # sticky: the same error again
            self.state = BodyState.READING
            if self._continue is not None:
                self._continue()
                self._continue = None
        try:
            return self._next_piece()
        except (h11.RemoteProtocolError, Refusal) as exc:
            failure: FlowError = MalformedBody(f"the request body is malformed: {exc}")
            self._fail(failure)
            raise failure from exc
        except (BrokenError, RequestTooLarge) as exc:
            self._fail(exc)  # a timeout or a kill leaves the body readable
            raise

    def _fail(self, failure: FlowError) -> None:
        self.state = BodyState.FAILED
        self.failure = failure

    def _next_piece(self) -> bool:
        conn = self._conn
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                self._receive()
                continue
            if type(event) is h11.Data:
                self.received += len(event.data)
                if self._limit is not None and self.received > self._limit:
                    raise RequestTooLarge(f"the request body is larger than the limit of {self._limit} bytes")
                self._pending += event.data
                return True
            if type(event) is h11.EndOfMessage:
                self._ended()
                return False
            raise BrokenError(f"unexpected {type(event).__name__} in a request body")  # pragma: no cover

    def _receive(self) -> None:
        if self._drain_seconds is not None and self._drain_timer is None:
            self._drain_timer = gevent.Timeout(self._drain_seconds)
            self._drain_timer.start()
        data = self._reader.read()
        raw = self._raw
        if raw is not None:
            raw += data
            if len(raw) > 2 * CHUNKED_END_WINDOW:
                del raw[:-CHUNKED_END_WINDOW]
        self._conn.receive_data(data)  # b"" at EOF: h11 then says the body is incomplete

    def _ended(self) -> None:
        self.state = BodyState.ENDED
        leftover, _ = self._conn.trailing_data
        raw = self._raw
        if raw is not None:
            check_chunked_end(raw[: len(raw) - len(leftover)] if leftover else raw)
            self._raw = None
        if leftover:
            self._reader.unread(leftover)
