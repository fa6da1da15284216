"""The one error hierarchy of greenflow.

Every failure a flow reports is a :class:`FlowError`, and the subclass says
whose doing it was:

- :class:`ClosedError`: this side's doing. The flow was closed here, or its
  writing side was shut down here, and the call can never succeed.
- :class:`BrokenError`: the peer's or the transport's doing (a reset, a broken
  pipe, a TLS alert, a protocol violation). The original error is chained as
  ``__cause__``. It is also a :class:`ConnectionError`, so legacy code that
  catches ``OSError`` keeps working.
- :class:`BusyError`: two greenlets tried to read at once, or to write at once.
- :class:`FlowTimeout`: a call ran past the flow's own ``timeout``. It is also
  a :class:`TimeoutError`.

When a call could be both Closed and Broken, Closed wins: what this side did
is the more useful thing to be told.

Every message is a sentence that names what went wrong, so that ``str(error)``
is what the Mirage seeds call ``pp_error``.
"""

from __future__ import annotations

__all__ = [
    "BrokenError",
    "BusyError",
    "ClosedError",
    "FlowError",
    "FlowTimeout",
    "IncompleteReadError",
    "LimitOverrunError",
]


class FlowError(Exception):
    """Base class of every error a flow raises."""


class ClosedError(FlowError):
    """The call cannot succeed because this side closed the flow.

    Raised by any call on a flow that this side has closed (including a
    greenlet that was blocked in the flow when another greenlet closed it),
    and by a write after this side shut down its writing direction.
    """


class BrokenError(FlowError, ConnectionError):
    """The peer or the transport failed: reset, broken pipe, TLS alert, garbage.

    ``__cause__`` holds the original error where there is one. Errors are
    sticky per direction: after a read raised ``BrokenError`` every later read
    raises it too, and likewise for writes.
    """


class BusyError(FlowError):
    """Another greenlet is already reading (or writing) this flow.

    A flow allows one reader and one writer at a time, which may run at once
    in two greenlets. A second reader, or a second writer, gets this error at
    once, whether or not the first one has started waiting.
    """


class FlowTimeout(FlowError, TimeoutError):
    """A blocking call ran past the flow's ``timeout``.

    A read that timed out lost nothing: the next read returns what arrived. A
    write that timed out may have sent part of its data, so the flow's writing
    direction is broken afterwards.
    """


class IncompleteReadError(FlowError, EOFError):
    """EOF came in the middle of a record that a buffered read was waiting for.

    Raised by :meth:`~greenflow.BufferedFlow.read_exactly` and
    :meth:`~greenflow.BufferedFlow.read_until`. The bytes that did arrive
    are consumed and carried in the error.

    Attributes:
        partial: the bytes read before EOF (possibly ``b""``).
        expected: the byte count ``read_exactly`` asked for, or ``None`` when
            a delimiter was expected.
    """

    def __init__(self, partial: bytes, expected: int | None, what: str | None = None) -> None:
        self.partial = partial
        self.expected = expected
        if what is None:
            what = f"{expected} bytes" if expected is not None else "the end of the record"
        super().__init__(f"the flow reached EOF after {len(partial)} bytes, before {what}")

    def __reduce__(self) -> tuple[type[IncompleteReadError], tuple[bytes, int | None]]:
        return type(self), (self.partial, self.expected)


class LimitOverrunError(FlowError):
    """A delimited record did not end within its size limit.

    The bytes read so far stay buffered, so the caller can decide what to do:
    read them with ``read``, search again with a larger ``max_size``, or give
    up and close. The flow itself is not broken.

    Attributes:
        delimiter: the delimiter that was searched for.
        limit: the largest record allowed, the delimiter included.
    """

    def __init__(self, delimiter: bytes, limit: int) -> None:
        self.delimiter = delimiter
        self.limit = limit
        super().__init__(
            f"no {delimiter!r} within the first {limit} bytes (the record size limit); "
            "the bytes read stay buffered"
        )

    def __reduce__(self) -> tuple[type[LimitOverrunError], tuple[bytes, int]]:
        return type(self), (self.delimiter, self.limit)
