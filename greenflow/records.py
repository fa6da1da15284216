"""The sans-IO core of buffered reading: received bytes, and records found in them.

:class:`RecordBuffer` holds the bytes a :class:`~greenflow.BufferedFlow`
has received and not yet handed out, and answers one question about them:
does a record that ends with a given delimiter, and is at most ``max_size``
bytes long, start at the front? It does no I/O and knows nothing of flows
or gevent, so that every case can be tested byte by byte.

Theory of operation
-------------------

The answer must never depend on how the bytes were chunked on their way in
(anyio#1340 is a live bug of that kind), and finding a record must cost time
proportional to its length, however small the pieces it came in. Both follow
from two rules:

1. The search looks only at the first ``max_size`` bytes
   (``bytearray.find`` with an end), so a delimiter that ends past the limit
   is never found, whether or not its bytes happened to arrive already.
   Once ``max_size`` bytes are held without a match, no record can fit, and
   the answer is :attr:`Search.OVERRUN`; with fewer, more bytes could still
   bring a delimiter, and the answer is :attr:`Search.NEED_MORE`.
2. The buffer remembers how far a fruitless search for a delimiter went
   (``scanned``), and the next search for the same delimiter starts
   ``len(delimiter) - 1`` bytes before that point, in case the delimiter
   straddles the old end. Taking bytes from the front moves the mark back
   with them; pushing bytes back in front, or searching for another
   delimiter, forgets it.

Consumed bytes are deleted from the front of a ``bytearray``, which CPython
does without moving the rest, and new bytes are appended, so a long record
in tiny pieces is linear overall (``benchmarks/buffered.py`` shows it).
"""

from __future__ import annotations

import enum

__all__ = ["RecordBuffer", "Search"]


class Search(enum.Enum):
    """What a search for a record found, when it did not find the record."""

    NEED_MORE = "need more bytes"
    OVERRUN = "no record within the limit"


class RecordBuffer:
    """Received bytes not yet consumed, searched for delimited records.

    ``len(buffer)`` is how many bytes it holds.
    """

    __slots__ = ("_data", "_scanned", "_scanned_for")

    def __init__(self) -> None:
        self._data = bytearray()
        self._scanned = 0  # the first ``_scanned`` bytes hold no ``_scanned_for``
        self._scanned_for = b""

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"<RecordBuffer {len(self._data)} bytes>"

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from below."""
        self._data += data

    def unread(self, data: bytes | bytearray | memoryview) -> None:
        """Push bytes back in front, to be taken before anything held."""
        self._data[:0] = data
        self._scanned = 0

    def peek(self, size: int) -> bytes:
        """Up to ``size`` bytes from the front, not consumed."""
        return bytes(self._data[:size])

    def take(self, size: int) -> bytes:
        """Consume and return up to ``size`` bytes from the front."""
        data = self._data
        if size >= len(data):
            chunk = bytes(data)  # one copy, not a slice and then a copy
            data.clear()
            self._scanned = 0
            return chunk
        with memoryview(data) as view:  # released before the delete below
            chunk = bytes(view[:size])
        del data[:size]
        self._scanned = max(0, self._scanned - size)
        return chunk

    def take_into(self, view: memoryview) -> int:
        """Consume as many bytes as fit into ``view``; return the count."""
        count = min(len(view), len(self._data))
        view[:count] = self._data[:count]
        del self._data[:count]
        self._scanned = max(0, self._scanned - count)
        return count

    def take_all(self) -> bytes:
        """Consume and return everything held."""
        chunk = bytes(self._data)
        self.clear()
        return chunk

    def clear(self) -> None:
        """Drop everything held."""
        self._data.clear()
        self._scanned = 0

    def find(self, delimiter: bytes, max_size: int) -> int | Search:
        """The length of the record at the front, delimiter included, if there is one.

        A record ends with the first ``delimiter``, and counts only if it is
        at most ``max_size`` bytes long. Returns its length (nothing is
        consumed: :meth:`take` it), or :attr:`Search.NEED_MORE` when more
        bytes could still bring one, or :attr:`Search.OVERRUN` when no record
        can fit any more. ``delimiter`` must not be empty and ``max_size``
        must be at least as long as it (the caller checks).
        """
        data = self._data
        if delimiter != self._scanned_for:
            self._scanned_for = delimiter
            self._scanned = 0
        start = max(0, self._scanned - len(delimiter) + 1)
        index = data.find(delimiter, start, max_size)
        if index >= 0:
            self._scanned = index
            return index + len(delimiter)
        held = len(data)
        if held >= max_size:
            self._scanned = max_size
            return Search.OVERRUN
        self._scanned = held
        return Search.NEED_MORE
