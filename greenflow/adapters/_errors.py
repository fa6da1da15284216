"""How the adapters turn a flow's errors into the ones socket and file code expects.

Code written for sockets catches ``OSError``: :class:`~greenflow.BrokenError`
is already a ``ConnectionError`` and :class:`~greenflow.FlowTimeout` a
``TimeoutError`` (``socket.timeout``), so both pass through unchanged. Two
need translating, here and only here:

- :class:`~greenflow.ClosedError` becomes :class:`AdapterClosedError`, which
  is both a ``ClosedError`` and an ``OSError`` (``EBADF`` once the adapter or
  its flow is closed, ``EPIPE`` for a send after ``shutdown(SHUT_WR)``, as a
  socket gives).
- A timeout of a non-blocking adapter (timeout 0) becomes
  ``BlockingIOError`` with ``EAGAIN``, which is what redis-py's ``can_read``
  and the ``io`` classes look for.
"""

from __future__ import annotations

import errno
from typing import NoReturn

from ..errors import ClosedError, FlowError, FlowTimeout
from ..flow import Flow

__all__ = ["AdapterClosedError", "closed", "reraise", "translate", "would_block"]


class AdapterClosedError(ClosedError, OSError):
    """A socket-like or file-like adapter was used after it, or its flow, was closed.

    Also an ``OSError`` (``errno`` is ``EBADF``, or ``EPIPE`` for a send after
    this side shut down writing), as the socket it stands in for would raise.
    """

    def __init__(self, code: int, message: str) -> None:
        OSError.__init__(self, code, message)

    def __str__(self) -> str:
        return str(self.strerror)


def translate(exc: FlowError, what: str, flow: Flow, adapter: str) -> BaseException:
    """The error an adapter's call ``what`` raises for the flow error ``exc``.

    Returns ``exc`` itself when it is already what socket code expects; the
    caller raises the result ``from exc``.
    """
    if isinstance(exc, ClosedError):
        if flow.closed:
            return AdapterClosedError(errno.EBADF, f"cannot {what}: the {adapter} is closed")
        return AdapterClosedError(errno.EPIPE, f"cannot {what}: {exc}")
    if would_block(exc, flow):
        return BlockingIOError(errno.EAGAIN, f"{what} would block: the {adapter} is non-blocking")
    return exc


def closed(what: str, adapter: str) -> AdapterClosedError:
    """The error for a call on an adapter that was closed."""
    return AdapterClosedError(errno.EBADF, f"cannot {what}: the {adapter} is closed")


def reraise(exc: FlowError, what: str, flow: Flow, adapter: str) -> NoReturn:
    """Raise what :func:`translate` says, chained to ``exc`` (or ``exc`` itself, unchained)."""
    error = translate(exc, what, flow, adapter)
    if error is exc:
        raise exc
    raise error from exc


def would_block(exc: FlowError, flow: Flow) -> bool:
    """Whether ``exc`` is a non-blocking call's "nothing there yet"."""
    return isinstance(exc, FlowTimeout) and flow.timeout == 0
