"""The flow contract: the :class:`Flow` base class and the :class:`Shutdown` enum.

This module is where the contract lives. Every flow type in greenflow, and any
flow a user writes, is a subclass of :class:`Flow` and behaves as its
docstrings say; implementations document only what they add. The contract
page of the documentation (``docs/contract.md``) is the longer form.

The helpers every implementation needs in the same way (direction state,
argument checks, refusals, the per-call timer) are in :mod:`greenflow.kit`.
"""

from __future__ import annotations

import abc
import enum
import logging
import operator
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Final

import gevent

from .errors import FlowError

if TYPE_CHECKING:
    from .proxy_protocol import ProxyInfo

__all__ = ["DEFAULT_READ_SIZE", "Buffer", "Flow", "Shutdown"]

log = logging.getLogger("greenflow")

#: The most one ``read()`` asks the kernel for, whatever ``max_bytes`` says:
#: ``read`` allocates what it asks for before it knows how much will come, so
#: ``read(2**40)`` must not mean a terabyte (or a fault per page of a huge
#: block for two bytes). Returning less than ``max_bytes`` is always allowed.
MAX_READ_SIZE: Final = 262144

#: What ``read()`` returns at most when no ``max_bytes`` is given: large
#: enough to move bulk data in few calls, small enough that glibc serves it
#: without trimming and regrowing the heap (performance notes, point 3).
DEFAULT_READ_SIZE: Final = 65536

#: Anything the buffer protocol accepts: bytes, bytearray, memoryview, ...
Buffer = bytes | bytearray | memoryview


class Shutdown(enum.StrEnum):
    """Which direction :meth:`Flow.shutdown` ends.

    The plain strings ``"read"``, ``"write"`` and ``"read_write"`` are accepted
    wherever a ``Shutdown`` is.
    """

    READ = "read"
    WRITE = "write"
    READ_WRITE = "read_write"

    @property
    def reads(self) -> bool:
        """Whether this shutdown ends the reading direction."""
        return self is not Shutdown.WRITE

    @property
    def writes(self) -> bool:
        """Whether this shutdown ends the writing direction."""
        return self is not Shutdown.READ


class Flow(abc.ABC):
    """One endpoint of a reliable, ordered, bidirectional byte stream.

    Every method that may wait is a *blocking call*: it waits by yielding to
    the gevent hub, never by blocking the OS thread, so other greenlets keep
    running. No monkey-patching is needed. Every blocking call is a
    cooperative point where ``gevent.Timeout`` and ``Greenlet.kill()`` are
    delivered.

    **Concurrency.** One greenlet may read while another writes (full
    duplex). A second reader, or a second writer, gets :class:`BusyError` at
    once, even if the first has not started waiting yet.

    **Timeouts.** :attr:`timeout` bounds each blocking call; past it the call
    raises :class:`FlowTimeout`. A read interrupted by a timeout, a
    ``gevent.Timeout`` or a kill loses no data: the next read returns what
    arrived. A write interrupted the same way may have sent part of its data,
    so the writing direction is broken from then on (later writes raise
    :class:`BrokenError`, even if nothing had been sent: one simple rule). A
    ``gevent.Timeout`` or ``GreenletExit`` raised into a call comes out of it
    unchanged.

    **Errors** are sticky per direction: after a read failed, later reads
    raise; after a write failed, later writes raise. :class:`ClosedError` (this
    side's doing) wins over :class:`BrokenError` (the peer's).

    ``with flow:`` closes the flow when the block ends.
    """

    __slots__ = ("__weakref__",)

    #: The flow this one is layered on, or ``None`` for a base flow.
    underlying: Flow | None = None

    # -- reading ---------------------------------------------------------------

    def read(self, max_bytes: int | None = None) -> bytes:
        """Wait for data and return some of it.

        Waits until at least one byte is available, the flow is at EOF, or an
        error happens, then returns at once: it never waits to fill
        ``max_bytes``.

        Args:
            max_bytes: the most bytes to return, an ``int >= 1``. ``None``
                means a size convenient to the flow (64 KiB for sockets).

        Returns:
            A fresh ``bytes`` object that the caller owns, of 1 to
            ``max_bytes`` bytes; or ``b""`` if and only if the flow is at
            EOF: the peer shut down its writing side (or closed) and every
            byte it sent before has been returned, or this side called
            ``shutdown("read")``. EOF is sticky: later reads return ``b""``.
            A greenlet blocked in ``read`` when another calls
            ``shutdown("read")`` returns ``b""``.

        Raises:
            ValueError: ``max_bytes`` is 0 or negative.
            TypeError: ``max_bytes`` is not an integer.
            ClosedError: the flow was closed, before or during the call.
            BrokenError: the peer or the transport failed (a reset is an
                error, not EOF: it may have cut data).
            BusyError: another greenlet is reading.
            FlowTimeout: nothing arrived within :attr:`timeout`.
        """
        size = min(check_max_bytes(max_bytes), MAX_READ_SIZE)
        buffer = bytearray(size)
        count = self.read_into(buffer)
        del buffer[count:]
        return bytes(buffer)

    @abc.abstractmethod
    def read_into(self, buffer: bytearray | memoryview) -> int:
        """As :meth:`read`, into a writable buffer that the caller owns.

        Args:
            buffer: a writable bytes-like object with room for at least one
                byte (a ``bytearray``, or a ``memoryview`` of one).

        Returns:
            How many bytes were written at the start of ``buffer``: at least 1,
            or ``0`` if and only if the flow is at EOF.

        Raises:
            ValueError: ``buffer`` has no room.
            ClosedError, BrokenError, BusyError, FlowTimeout: as :meth:`read`.
        """

    # -- writing ---------------------------------------------------------------

    @abc.abstractmethod
    def write(self, data: Buffer) -> None:
        """Send all of ``data``.

        Waits until the whole buffer has been accepted by the layer below (the
        kernel's send buffer, or the underlying flow). This is the
        backpressure: a slow peer slows the writer, and no buffer grows
        without bound. After ``write`` returns the flow holds no reference to
        ``data``, so the caller may reuse it.

        ``write(b"")`` sends nothing and does not mean EOF (use
        :meth:`shutdown` for that), but it still raises on a closed flow.

        Raises:
            ClosedError: the flow was closed, or this side shut down writing.
            BrokenError: the peer or the transport failed, or an earlier write
                failed or was interrupted.
            BusyError: another greenlet is writing.
            FlowTimeout: the data was not accepted within :attr:`timeout`;
                part of it may have been sent, and the writing direction is
                broken from then on.
        """

    @abc.abstractmethod
    def writev(self, buffers: Iterable[Buffer]) -> None:
        """Send the concatenation of ``buffers``, in order, as one write.

        The same as ``write(b"".join(buffers))`` (no other writer's bytes come
        between them, and errors are as :meth:`write`), but without the join
        where the flow can avoid it: socket flows use gather I/O and TLS feeds
        record-sized slices.
        """

    # -- ending ----------------------------------------------------------------

    @abc.abstractmethod
    def shutdown(self, how: Shutdown | str = Shutdown.WRITE) -> None:
        """End one or both directions of the flow, leaving the flow open.

        - ``"write"``: flush what was already accepted, then tell the peer no
          more data will come (TCP FIN, TLS close_notify, ...). Later writes
          raise :class:`ClosedError`; reading goes on (a half-close).
        - ``"read"``: later reads return ``b""`` and data in flight is
          discarded; a greenlet blocked in a read returns ``b""``.
        - ``"read_write"``: both.

        Idempotent. A layered flow whose two directions are both shut down
        closes its underlying flow.

        Raises:
            ValueError: ``how`` is not one of the three.
            ClosedError: the flow is closed.
            BusyError: ``"write"`` while another greenlet is blocked writing.
            BrokenError: the transport failed while the end was signalled.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close the flow at once. Idempotent, never raises, never waits.

        Frees the flow's resources and closes the underlying flow of a layered
        flow, exactly once. Every greenlet blocked in a call on this flow is
        woken and its call raises :class:`ClosedError`; every later call
        raises :class:`ClosedError` too, reads included. A failure of the
        graceful part of closing (such as a TLS close_notify that cannot be
        sent) is logged at debug level.

        To wait for the peer to finish as well, use :meth:`close_gracefully`.
        """

    def close_gracefully(self, timeout: float | None = 10.0) -> bool:
        """Shut down writing, wait for the peer's EOF, then close.

        This is the old Mirage ``close``, which waits until the remote end has
        closed too. Data that arrives meanwhile is read and discarded. The
        flow's own :attr:`timeout` does not apply: ``timeout`` bounds the
        whole call (``None``: no limit).

        Returns:
            ``True`` if the peer's EOF arrived in time, ``False`` if not (the
            time ran out, or the flow broke, or another greenlet was using
            it). The flow is closed either way. After this side's own
            ``shutdown("read")`` reads return ``b""`` at once, so the answer
            is ``True`` without news from the peer: do not shut down reading
            first if the answer matters.
        """
        expired = _GracefulTimeout()
        timer = gevent.Timeout(timeout, expired) if timeout is not None else None
        try:
            if timer is not None:
                timer.start()
            self.timeout = None
            self.shutdown(Shutdown.WRITE)
            while self.read(DEFAULT_READ_SIZE):
                pass
            return True
        except _GracefulTimeout as exc:
            if exc is not expired:
                raise
            log.debug("close_gracefully: no EOF from %r within %s s", self, timeout)
            return False
        except FlowError as exc:
            log.debug("close_gracefully: %r ended without a clean EOF: %s", self, exc)
            return False
        finally:
            if timer is not None:
                timer.close()
            self.close()

    def __enter__(self) -> Flow:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- attributes ------------------------------------------------------------

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """Whether :meth:`close` has been called on this flow."""

    @property
    @abc.abstractmethod
    def timeout(self) -> float | None:
        """Seconds each blocking call may take, or ``None`` for no limit.

        Settable; a new value applies to calls that start afterwards.
        """

    @timeout.setter
    @abc.abstractmethod
    def timeout(self, value: float | None) -> None: ...

    @property
    def local_address(self) -> object:
        """This end's address (a socket address), or ``None`` if it has none."""
        return None

    @property
    def peer_address(self) -> object:
        """The other end's address (a socket address), or ``None``."""
        return None

    @property
    def proxy_info(self) -> ProxyInfo | None:
        """What a PROXY protocol header said about this connection, or ``None``.

        Set by :class:`greenflow.proxy_protocol.ProxyFlow`; a layer reports
        its ``underlying`` flow's, so a TLS flow over a proxied connection
        has it too. With a header, ``peer_address`` is the client's from it.
        """
        underlying = self.underlying
        return None if underlying is None else underlying.proxy_info


class _GracefulTimeout(BaseException):
    """close_gracefully's own deadline, told apart from any other timeout."""


# -- the one argument rule the base class itself needs --------------------------


def check_max_bytes(max_bytes: int | None, default: int = DEFAULT_READ_SIZE) -> int:
    """Validate ``read``'s ``max_bytes`` and return the size to read."""
    if max_bytes is None:
        return default
    size = operator.index(max_bytes)  # TypeError for floats and strings
    if size < 1:
        raise ValueError(f"max_bytes must be at least 1, not {size}")
    return size
