"""The kit for writing a flow: direction state, argument checks, refusals, timers.

:mod:`greenflow.flow` holds the contract; this module holds what every
implementation of it needs in the same way, so that the rules are written
once and a new flow is a small class. greenflow's own flows (descriptors,
pipes, memory pairs, TLS) are built on it, and so can a user's: the
documentation's "Writing a flow of your own" shows a complete flow in about
a hundred lines that passes :func:`greenflow.testing.check_flow_pair`.

Theory of operation
-------------------

A flow has two directions, reading and writing, and each is one
:class:`Direction`: a :class:`DirectionState`, the sticky error that broke
it, and a busy guard that also owns the timer bounding the current call.
A blocking call on a direction follows one pattern::

    if reader.enter("read"):      # refuses with the contract's error, or
        return b""                # says "at EOF": return EOF now
    try:
        while nothing_yet():
            reader.arm(self.timeout, "read")   # the per-call timer, once
            wait()
        return data
    finally:
        reader.leave()            # not busy any more; the timer stops

The states move one way, with two exceptions that the contract asks for::

    OPEN --end()--> EOF            (reading: the peer's EOF arrived)
    OPEN --fail()--> BROKEN        (a call failed; ``error`` says how)
    OPEN, BROKEN --shut()--> SHUT  (this side's shutdown of the direction)
    any --close()--> CLOSED

A local shutdown beats an earlier failure (after ``shutdown("read")`` reads
return ``b""`` even on a broken flow; after ``shutdown("write")`` writes say
"shut down"), and nothing leaves CLOSED. When a call is refused, the order
is the contract's: closed beats busy, busy beats EOF or shut down, which beat
an earlier failure.

A flow whose every call counts (a socket's ``read`` and ``write``) may do
what :meth:`~Direction.enter` and :meth:`~Direction.leave` do inline: take the
direction when it is idle and open (``busy`` false, ``state`` OPEN), else
ask :meth:`~Direction.refuse`; and at the end clear ``busy`` and, only if
``timer`` is set, call ``leave``. The rules stay the kit's.

A direction knows nothing of how its flow waits: waking a greenlet parked in
a call when the state changes under it is the flow's job, and after the wake
the flow asks the state (``reader.state is CLOSED``), never the wake-up.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from typing import Final, NoReturn

import gevent

from .errors import BrokenError, BusyError, ClosedError, FlowError, FlowTimeout
from .flow import DEFAULT_READ_SIZE, MAX_READ_SIZE, Buffer, Flow, Shutdown, check_max_bytes

__all__ = [
    "MAX_READ_SIZE",
    "Direction",
    "DirectionState",
    "FlowBase",
    "check_buffers",
    "check_bytes_like",
    "check_max_bytes",
    "check_read_size",
    "check_timeout",
    "check_writable_buffer",
    "closed_error",
    "parse_shutdown",
    "reraise",
    "start_timer",
]

#: The longest timeout a flow takes, in seconds (about 31 years): past it a
#: number is a mistake, and some would overflow the event loop's timers.
MAX_TIMEOUT: Final = 1e9


class DirectionState(enum.Enum):
    """Where one direction of a flow stands; see the module's theory of operation."""

    OPEN = "open"
    EOF = "at EOF"
    SHUT = "shut down"
    BROKEN = "broken"
    CLOSED = "closed"


_OPEN: Final = DirectionState.OPEN
_EOF: Final = DirectionState.EOF
_SHUT: Final = DirectionState.SHUT
_BROKEN: Final = DirectionState.BROKEN
_CLOSED: Final = DirectionState.CLOSED


class Direction:
    """One direction of a flow: its state, its sticky error, its busy guard.

    Attributes:
        state: the :class:`DirectionState`.
        error: the error that broke the direction (kept after a later
            ``shut()``, for messages), or ``None``.
        busy: whether a greenlet is inside a call on this direction.
        timer: the timer bounding the current call (:meth:`arm`), or ``None``.
        reading: whether this is the reading direction (EOF is an answer
            there, and an error on the writing side).
    """

    __slots__ = ("busy", "error", "reading", "state", "timer")

    def __init__(self, *, reading: bool) -> None:
        self.reading = reading
        self.state = _OPEN
        self.error: BrokenError | None = None
        self.busy = False
        self.timer: gevent.Timeout | None = None

    def __repr__(self) -> str:
        name = "reading" if self.reading else "writing"
        busy = " busy" if self.busy else ""
        return f"<Direction {name} {self.state.value}{busy}>"

    # -- a call ------------------------------------------------------------------

    def enter(self, what: str) -> bool:
        """Begin the call ``what`` on this direction, or refuse it.

        Returns False when the call may go ahead: the direction is now busy,
        and the caller must call :meth:`leave` when the call ends. Returns
        True when a read must return EOF at once (the direction is not taken
        then). Raises the contract's error otherwise.
        """
        if self.busy or self.state is not _OPEN:
            return self.refuse(what)
        self.busy = True
        return False

    def refuse(self, what: str) -> bool:
        """The error for a call that cannot go ahead, in the contract's order.

        Returns True ("return EOF now") for a reading direction at EOF or
        shut down; a writing direction that is open and idle is taken as for
        :meth:`enter`. Raises in every other case.
        """
        state = self.state
        if state is _CLOSED:
            raise closed_error(what)
        if self.busy:
            name = "reading" if self.reading else "writing"
            raise BusyError(f"cannot {what}: another greenlet is already {name} this flow")
        if state is _OPEN:
            self.busy = True
            return False
        if self.reading and state is not _BROKEN:
            return True
        if state is _SHUT:
            raise ClosedError(f"cannot {what}: this side has shut down writing")
        if state is _EOF:  # pragma: no cover - a writing direction never reaches EOF
            raise ClosedError(f"cannot {what}: the flow is at EOF")
        raise BrokenError(f"cannot {what}: an earlier {self._verb} failed ({self.error})") from self.error

    def arm(self, timeout: float | None, what: str) -> None:
        """Start the timer that bounds this call by ``timeout``, once per call.

        Call it just before the call's first wait: a call that needs no wait
        never pays for a timer.
        """
        if self.timer is None and timeout is not None:
            self.timer = start_timer(timeout, what)

    def leave(self) -> None:
        """End the current call: the direction is free, its timer stopped."""
        self.busy = False
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.close()

    # -- state changes -----------------------------------------------------------

    def end(self) -> None:
        """The peer's EOF arrived (reading): later reads return EOF."""
        if self.state is _OPEN:
            self.state = _EOF

    def fail(self, error: BrokenError) -> BrokenError:
        """Break the direction with ``error`` (kept sticky) and return it.

        A direction this side shut down or closed keeps that state, which
        wins for later calls; the first error is kept.
        """
        if self.error is None:
            self.error = error
        if self.state is _OPEN:
            self.state = _BROKEN
        return error

    def shut(self) -> bool:
        """This side shut the direction down; True the first time.

        A broken direction becomes shut down too (a local shutdown beats an
        earlier failure); a closed one, or one at EOF, stays as it is.
        """
        if self.state is _OPEN or self.state is _BROKEN:
            self.state = _SHUT
            return True
        return False

    def close(self) -> bool:
        """The flow was closed; True the first time."""
        if self.state is _CLOSED:
            return False
        self.state = _CLOSED
        return True

    def interrupted(self, exc: BaseException, what: str) -> BaseException:
        """What a call that did not finish raises, and the state it leaves.

        For a write: an interruption (a timeout, a ``gevent.Timeout``, a
        kill) may have sent part of the data, so the direction breaks; the
        call raises ``exc`` itself. On a closed flow the call raises
        :class:`ClosedError`. A reading direction only checks for the close:
        an interrupted read loses nothing.
        """
        if self.state is _CLOSED:
            return exc if isinstance(exc, ClosedError) else closed_error(what)
        if not self.reading and (not isinstance(exc, FlowError) or isinstance(exc, FlowTimeout)):
            kind = "timed out" if isinstance(exc, FlowTimeout) else f"was interrupted ({type(exc).__name__})"
            self.fail(BrokenError(f"a {what} {kind} and may have sent part of its data"))
        return exc

    @property
    def _verb(self) -> str:
        return "read" if self.reading else "write"


class FlowBase(Flow):
    """A :class:`~greenflow.Flow` with one :class:`Direction` each way and a timeout.

    Provides ``closed``, ``timeout`` (validated), and :meth:`begin_shutdown`;
    a subclass implements the data calls with the pattern of the module's
    theory of operation, and ``shutdown`` and ``close``.
    """

    __slots__ = ("_reader", "_timeout", "_writer")

    def __init__(self, *, timeout: float | None = None) -> None:
        self._timeout = check_timeout(timeout)
        self._reader = Direction(reading=True)
        self._writer = Direction(reading=False)

    @property
    def closed(self) -> bool:
        """Whether :meth:`~greenflow.Flow.close` has been called on this flow."""
        return self._reader.state is _CLOSED

    @property
    def timeout(self) -> float | None:
        """Seconds each blocking call may take, or ``None`` for no limit."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._timeout = check_timeout(value)

    def begin_shutdown(self, how: Shutdown | str) -> Shutdown:
        """The checks every ``shutdown`` makes first; returns ``how`` parsed.

        Raises ValueError for a bad ``how``, ClosedError on a closed flow, and
        BusyError when writing is to end while another greenlet writes.
        """
        how = parse_shutdown(how)
        if self._reader.state is _CLOSED:
            raise closed_error("shut down")
        writer = self._writer
        if how.writes and writer.busy and writer.state is not _SHUT:
            raise BusyError("cannot shut down writing: another greenlet is writing")
        return how

    def mark_closed(self) -> bool:
        """Close both directions; True the first time (``close`` goes on then)."""
        self._writer.close()
        return self._reader.close()


# -- argument checks ---------------------------------------------------------------


def check_read_size(max_bytes: int | None) -> int:
    """``read``'s ``max_bytes`` validated and capped at :data:`MAX_READ_SIZE`.

    The size a flow should allocate for one read: ``read(2**40)`` may
    return less than asked, and must not allocate a terabyte first.
    """
    if max_bytes is None:
        return DEFAULT_READ_SIZE
    return min(check_max_bytes(max_bytes), MAX_READ_SIZE)


def parse_shutdown(how: Shutdown | str) -> Shutdown:
    """Turn ``shutdown``'s argument into a :class:`Shutdown`, or raise ValueError."""
    if isinstance(how, Shutdown):
        return how
    if isinstance(how, str):
        try:
            return Shutdown(how)
        except ValueError:
            pass
    raise ValueError(f'how must be "read", "write" or "read_write", not {how!r}')


def check_timeout(value: float | None) -> float | None:
    """Validate a ``timeout`` setting: ``None`` or a number of seconds >= 0.

    Raises TypeError for what is not a number, and ValueError for a negative
    number, NaN, or more than :data:`MAX_TIMEOUT` seconds (infinity included:
    ``None`` is how to say "no limit").
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"timeout must be a number of seconds or None, not {value!r}")
    if value < 0 or (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f"timeout must be at least 0 seconds, not {value!r}")
    if value > MAX_TIMEOUT:
        shown = f"{value:g}" if isinstance(value, float) else f"an integer of {len(str(value))} digits"
        raise ValueError(f"timeout must be at most {MAX_TIMEOUT:g} seconds (None for no limit), not {shown}")
    return float(value)


def check_bytes_like(data: object) -> memoryview:
    """Return ``data`` as a flat, contiguous memoryview of bytes, or raise TypeError.

    A strided view (``memoryview(b)[::2]``) is bytes-like too: it is copied,
    since no system call can send it as it is.
    """
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"expected a bytes-like object, not {type(data).__name__}") from None
    if not view.c_contiguous:
        return memoryview(view.tobytes())
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def check_buffers(buffers: Iterable[Buffer]) -> list[memoryview]:
    """``writev``'s argument as a list of flat byte views, or raise TypeError.

    A single bytes-like object is refused rather than taken as an iterable
    of integers: ``writev(b"abc")`` is a mistake for ``write(b"abc")``.
    """
    if isinstance(buffers, bytes | bytearray | memoryview | str):
        raise TypeError(f"writev takes an iterable of bytes-like objects, not {type(buffers).__name__}")
    try:
        items = iter(buffers)
    except TypeError:
        raise TypeError(
            f"writev takes an iterable of bytes-like objects, not {type(buffers).__name__}"
        ) from None
    return [check_bytes_like(b) for b in items]


def check_writable_buffer(buffer: object) -> memoryview:
    """Return ``read_into``'s buffer as a flat, writable view of bytes.

    A flow that takes data from somewhere it cannot put back (a TLS engine,
    a memory pipe) calls this before taking any, so that a buffer it cannot
    fill raises at once instead of losing what was taken. The view may be
    strided (``memoryview(b)[::2]``): slice assignment fills it correctly,
    but a system call cannot, so a descriptor flow reads into a contiguous
    buffer and copies.

    Raises:
        TypeError: the buffer is not a writable bytes-like object.
        ValueError: it has no room for a byte.
    """
    try:
        view = memoryview(buffer)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"read_into needs a writable buffer, not {type(buffer).__name__}") from None
    if view.readonly:
        raise TypeError(f"read_into needs a writable buffer; this {type(buffer).__name__} is read-only")
    if not view.nbytes:
        raise ValueError("read_into needs a buffer with room for at least one byte")
    if view.c_contiguous and (view.format != "B" or view.ndim != 1):
        view = view.cast("B")
    elif not view.c_contiguous and view.format != "B":
        raise TypeError(f"read_into needs a buffer of bytes, not a strided view of {view.format!r} items")
    return view


# -- errors and timers -------------------------------------------------------------


def reraise(exc: BaseException, error: BaseException) -> NoReturn:
    """Raise ``error`` in place of ``exc``, chained to it; or ``exc`` itself if they are one.

    For the ``except`` block of a call that did not finish::

        except BaseException as exc:
            reraise(exc, writer.interrupted(exc, "write"))
    """
    if error is exc:
        raise exc
    raise error from exc


def closed_error(what: str) -> ClosedError:
    """The error for a call on a flow that this side closed."""
    return ClosedError(f"cannot {what}: the flow is closed")


def start_timer(seconds: float, what: str, *, setting: str = "the flow's timeout") -> gevent.Timeout:
    """Start the timer that bounds one blocking call by the flow's timeout.

    When it expires it raises a :class:`~greenflow.FlowTimeout` whose message
    says what did not finish and which ``setting`` bounded it; any other
    ``gevent.Timeout`` stays distinct from it.
    """
    message = f"{what} did not complete within {setting} of {seconds:g} seconds"
    return gevent.Timeout.start_new(seconds, FlowTimeout(message))
