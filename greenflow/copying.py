"""Moving bytes between flows: :func:`copy` one way, :func:`proxy` both ways.

:func:`copy` reads one flow into one reused buffer with ``read_into`` and
writes each chunk to the other, until EOF; then it passes the EOF on
(``shutdown("write")``) unless asked not to. :func:`proxy` runs two copies at
once, one per direction, so that each half-close travels end to end: the
EOF from ``a`` becomes ``shutdown("write")`` on ``b`` while ``b`` may go on
sending to ``a``, and the other way. Both return their counts as stats
objects that print as one line, for a log.

The loop is the whole hot path: one ``read_into`` and one ``write`` per
chunk, a slice of a memoryview made once, and a clock read for the idle
timeout. Nothing is joined, copied or allocated per chunk beyond the slice.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import gevent
from gevent.event import Event

from .errors import FlowTimeout
from .flow import DEFAULT_READ_SIZE, Flow, Shutdown

__all__ = ["CopyStats", "ProxyEnd", "ProxyStats", "copy", "proxy"]


@dataclass(slots=True)
class CopyStats:
    """What one copy moved: ``bytes`` in ``reads`` reads and ``writes`` writes, in ``seconds``.

    ``reads`` counts the read that found the EOF too, so a copy of nothing
    made one read and no write. ``last_active`` is the ``time.monotonic()``
    of the last read that returned data (or of the start).
    """

    bytes: int = 0
    reads: int = 0
    writes: int = 0
    seconds: float = 0.0
    last_active: float = field(default=0.0, repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.bytes} bytes in {self.reads} reads and {self.writes} writes, {self.seconds:.3f} s"


def copy(src: Flow, dst: Flow, *, shutdown: bool = True, buffer_size: int = DEFAULT_READ_SIZE) -> CopyStats:
    """Copy everything ``src`` sends to ``dst``, until ``src``'s EOF.

    Reads into one buffer of ``buffer_size`` bytes, reused for every chunk,
    and writes each chunk as it comes (so ``dst``'s backpressure slows the
    reading). At ``src``'s EOF, ``dst``'s writing side is shut down (the EOF
    is passed on) unless ``shutdown=False``. Neither flow is closed.

    Returns:
        The :class:`CopyStats` of the copy.

    Raises:
        FlowError: from either flow (a read of ``src``, a write or the
            shutdown of ``dst``), as the flow raised it; the copy stops there.
        ValueError: ``buffer_size`` is less than 1.
    """
    stats = CopyStats()
    _pump(src, dst, stats, shutdown, buffer_size)
    return stats


def _pump(src: Flow, dst: Flow, stats: CopyStats, shutdown: bool, buffer_size: int) -> None:
    """The copy loop, counting into ``stats`` as it goes (a caller sees the counts of a failed copy)."""
    if buffer_size < 1:
        raise ValueError(f"buffer_size must be at least 1, not {buffer_size}")
    buffer = bytearray(buffer_size)
    view = memoryview(buffer)
    read_into = src.read_into
    write = dst.write
    clock = time.monotonic
    started = stats.last_active = clock()
    try:
        while count := read_into(buffer):
            stats.reads += 1
            stats.last_active = clock()
            write(view[:count])
            stats.writes += 1
            stats.bytes += count
        stats.reads += 1
        if shutdown:
            dst.shutdown(Shutdown.WRITE)
    finally:
        stats.seconds = clock() - started
        view.release()


class ProxyEnd(enum.Enum):
    """How a :func:`proxy` ended."""

    #: Both directions reached their EOF and passed it on.
    CLEAN = "clean"
    #: A read, write or shutdown failed in one direction.
    FAILED = "failed"
    #: No data moved either way for ``idle_timeout`` seconds.
    IDLE = "idle"


@dataclass(slots=True)
class ProxyStats:
    """What a :func:`proxy` moved each way, how long it ran, and how it ended.

    Attributes:
        a_to_b, b_to_a: each direction's :class:`CopyStats`.
        seconds: how long the proxy ran.
        end: a :class:`ProxyEnd`.
        error: the exception that ended the proxy (a :class:`FlowError`,
            :class:`FlowTimeout` for the idle timeout), or ``None`` on a clean
            end.

    ``str(stats)`` is one line for a log.
    """

    a_to_b: CopyStats = field(default_factory=CopyStats)
    b_to_a: CopyStats = field(default_factory=CopyStats)
    seconds: float = 0.0
    end: ProxyEnd = ProxyEnd.CLEAN
    error: BaseException | None = None

    def __str__(self) -> str:
        how = self.end.value if self.error is None else f"{self.end.value}: {self.error}"
        return (
            f"a->b {self.a_to_b.bytes} bytes ({self.a_to_b.reads} reads, {self.a_to_b.writes} writes), "
            f"b->a {self.b_to_a.bytes} bytes ({self.b_to_a.reads} reads, {self.b_to_a.writes} writes), "
            f"{self.seconds:.3f} s, {how}"
        )


def proxy(
    a: Flow, b: Flow, idle_timeout: float | None = None, *, buffer_size: int = DEFAULT_READ_SIZE
) -> ProxyStats:
    """Copy ``a`` to ``b`` and ``b`` to ``a`` at once, until both are done or one fails.

    Each direction is a :func:`copy` in its own greenlet, which passes its
    EOF on: when ``a`` ends its sending, ``b``'s writing side is shut down,
    and ``b`` may go on sending to ``a`` (a half-close kept end to end). The
    proxy ends when both directions have ended this way, or at once when one
    fails (a reset, a broken pipe, a TLS error: the other direction is
    stopped), or when no data came from either side for ``idle_timeout``
    seconds (``None``: no limit).

    Both flows are closed when it returns, however it ended; it never raises
    a flow's error (a ``gevent.Timeout`` or a kill of the calling greenlet
    goes through, after the flows are closed).

    Returns:
        A :class:`ProxyStats`; its ``error`` is ``None`` on a clean end.

    Raises:
        ValueError: ``idle_timeout`` is not a positive number, or
            ``buffer_size`` is less than 1.
    """
    if idle_timeout is not None and not idle_timeout > 0:
        raise ValueError(f"idle_timeout must be a positive number of seconds or None, not {idle_timeout!r}")
    if buffer_size < 1:
        raise ValueError(f"buffer_size must be at least 1, not {buffer_size}")
    stats = ProxyStats()
    run = _Run(stats)
    clock = time.monotonic
    started = stats.a_to_b.last_active = stats.b_to_a.last_active = clock()
    directions = [
        gevent.spawn(run.direction, a, b, stats.a_to_b, buffer_size),
        gevent.spawn(run.direction, b, a, stats.b_to_a, buffer_size),
    ]
    try:
        run.wait(idle_timeout)
    finally:
        gevent.killall(directions)
        a.close()
        b.close()
        stats.seconds = clock() - started
    return stats


class _Run:
    """The shared state of one proxy: which directions are done, and the first failure."""

    __slots__ = ("_done", "_ended", "_stats")

    def __init__(self, stats: ProxyStats) -> None:
        self._stats = stats
        self._done = 0
        self._ended = Event()

    def direction(self, src: Flow, dst: Flow, stats: CopyStats, buffer_size: int) -> None:
        try:
            _pump(src, dst, stats, True, buffer_size)
        except Exception as exc:  # a FlowError; anything else from a flow of one's own ends it too
            self._fail(ProxyEnd.FAILED, exc)
            return
        self._done += 1
        if self._done == 2:
            self._ended.set()

    def _fail(self, end: ProxyEnd, error: BaseException) -> None:
        if self._stats.error is None:  # the first failure is the one that ended it
            self._stats.end = end
            self._stats.error = error
        self._ended.set()

    def wait(self, idle_timeout: float | None) -> None:
        """Wait for the end: both directions done, a failure, or ``idle_timeout`` without data."""
        if idle_timeout is None:
            self._ended.wait()
            return
        stats = self._stats
        while True:
            last = max(stats.a_to_b.last_active, stats.b_to_a.last_active)
            remaining = last + idle_timeout - time.monotonic()
            if remaining <= 0:
                message = f"the proxy moved no data either way for {idle_timeout:g} s"
                self._fail(ProxyEnd.IDLE, FlowTimeout(message))
                return
            if self._ended.wait(remaining):
                return
