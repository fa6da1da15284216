"""The tracer: tracemalloc snapshots at an interval, turned into records for the outputs.

Theory of operation. :meth:`Tracer.start` starts ``tracemalloc`` (unless it
was already running: then it is left as it was found), installs the
greenlet switch hook and spawns the *sampler* greenlet. Every ``interval``
seconds the sampler has a worker thread of gevent's thread pool take a
snapshot and total it by site (by line, or by traceback when ``frames`` >
1), compares the totals with the previous ones (only the totals are kept,
never a whole snapshot), and builds one :class:`~._format.Sample`: the
process's RSS, tracemalloc's current and peak traced size, the ``top``
sites that grew most, and the ``top`` greenlets that were charged most
traced memory while they ran. The sample is *offered* to the output, which
never blocks (``_sinks``).

What the hub pays: a dictionary update per greenlet switch, and, once per
interval, the time ``take_snapshot`` holds the GIL to copy the traces
(C code: roughly a microsecond per live traced block). The Python work of
totalling runs in the worker thread, which hands the GIL back to the hub
every switch interval (5 ms). When snapshots get slow (millions of live
blocks) the sampler stretches its interval so that they take at most
:data:`MAX_DUTY` of the time. ``benchmarks/memtrace.py`` measures it all.

The totals leave out the tracer's own allocations (this package's files,
``tracemalloc`` itself, the import machinery); the greenlets that work for
the tracer (the sampler, the writers, the accept loops) are not charged,
and while the worker thread allocates the hook charges nobody.

States: ``RUNNING`` until :meth:`stop` (``STOPPED``), or until the process
forks: the child's copy becomes ``FORKED`` at once, in an
``os.register_at_fork`` hook, before any greenlet of the child runs. A
forked copy closes its descriptors (its copies only; the parent's
connections are untouched), takes its switch hook out and stops tracemalloc
if it started it, and never writes a byte: a child never talks to its
parent's viewers.
"""

from __future__ import annotations

import enum
import os
import sys
import time
import tracemalloc
from typing import Final

import gevent
from gevent.event import Event
from gevent.threadpool import ThreadPool

from ..flow import Flow
from ..listeners import Listener
from ._format import End, GreenletUsage, Hello, Sample, Site
from ._hook import SwitchAccounting
from ._sinks import CollectorOutput, FlowOutput, ListenOutput, Output

__all__ = ["DEFAULT_FRAMES", "DEFAULT_INTERVAL", "DEFAULT_TOP", "Target", "Tracer", "TracerState"]

#: Seconds between samples.
DEFAULT_INTERVAL: Final = 1.0

#: Frames tracemalloc keeps per allocation: one (the line) is cheapest.
DEFAULT_FRAMES: Final = 1

#: Sites and greenlets per sample.
DEFAULT_TOP: Final = 10

#: How long :meth:`Tracer.stop` lets each viewer take to receive the END record.
STOP_TIMEOUT: Final = 1.0

#: The sampler keeps the time spent on snapshots under this share of the time.
MAX_DUTY: Final = 0.2

_PACKAGE_DIRECTORY = os.path.dirname(os.path.abspath(__file__)) + os.sep
_OWN_FILES: Final = frozenset(
    {
        tracemalloc.__file__,
        "<frozen importlib._bootstrap>",
        "<frozen importlib._bootstrap_external>",
        "<unknown>",
    }
)

#: Sizes and counts by traceback, from one snapshot.
SiteTotals = dict[tracemalloc.Traceback, tuple[int, int]]


def _is_own(traceback: tracemalloc.Traceback) -> bool:
    filename = traceback[-1].filename if len(traceback) else "<unknown>"  # the innermost frame
    return filename in _OWN_FILES or filename.startswith(_PACKAGE_DIRECTORY)


def _growth(item: tuple[tracemalloc.Traceback, tuple[int, int, int, int]]) -> tuple[int, int]:
    _, (size, growth, _count, _count_growth) = item
    return growth, size


def _amount(item: tuple[object, int]) -> int:
    return item[1]


def site_totals(key: str, previous: SiteTotals, top: int) -> tuple[SiteTotals, tuple[Site, ...], float]:
    """Snapshot, total by site (the tracer's own allocations left out), pick the top sites.

    Runs in a worker thread; returns the totals, the top sites, and the CPU
    seconds the thread spent.
    """
    began = time.thread_time()
    snapshot = tracemalloc.take_snapshot()
    totals = {
        stat.traceback: (stat.size, stat.count)
        for stat in snapshot.statistics(key)
        if not _is_own(stat.traceback)
    }
    del snapshot
    return totals, top_sites(totals, previous, top), time.thread_time() - began


def top_sites(totals: SiteTotals, previous: SiteTotals, top: int) -> tuple[Site, ...]:
    """The ``top`` sites that grew most since ``previous`` (then the largest, among equals)."""
    changes = {}
    for traceback, (size, count) in totals.items():
        old_size, old_count = previous.get(traceback, (0, 0))
        changes[traceback] = (size, size - old_size, count, count - old_count)
    grown = sorted(changes.items(), key=_growth, reverse=True)[:top]
    return tuple(
        # A Traceback lists the oldest frame first; a Site, the innermost.
        Site(
            tuple((frame.filename, frame.lineno) for frame in reversed(traceback)),
            size,
            growth,
            count,
            count_growth,
        )
        for traceback, (size, growth, count, count_growth) in grown
    )


#: What ``start`` takes as a target.
Target = Flow | Listener | str


class TracerState(enum.Enum):
    RUNNING = "running"
    STOPPED = "stopped"
    FORKED = "left behind in a forked child"


def _rss() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        import resource  # noqa: PLC0415

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _make_output(target: Target, hello: Hello) -> Output:
    if isinstance(target, Flow):
        return FlowOutput(hello, target)
    if isinstance(target, Listener):
        return ListenOutput(hello, target)
    if not isinstance(target, str):
        raise TypeError(f"memtrace traces to a flow, a Listener or a URL, not {type(target).__name__}")
    if target.lower().startswith("listen:"):
        return ListenOutput(hello, target[len("listen:") :])
    return CollectorOutput(hello, target)


class Tracer:
    """One tracing session; made and started by :func:`greenflow.memtrace.start`."""

    def __init__(
        self,
        target: Target,
        *,
        interval: float = DEFAULT_INTERVAL,
        frames: int = DEFAULT_FRAMES,
        top: int = DEFAULT_TOP,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be more than 0 seconds, not {interval!r}")
        if not 1 <= frames <= 64:
            raise ValueError(f"frames must be 1 to 64, not {frames!r}")
        if not 1 <= top <= 1000:
            raise ValueError(f"top must be 1 to 1000, not {top!r}")
        self.target = target
        self.interval = interval
        self.frames = frames
        self.top = top
        self.state = TracerState.STOPPED
        self.output: Output | None = None
        self._hook = SwitchAccounting()
        self._owns_tracemalloc = False
        self._sampler: gevent.Greenlet | None = None  # type: ignore[type-arg]
        self._stopping = Event()  # wakes the sampler from its sleep
        self._totals: dict[tuple[int, str], int] = {}  # (id, label) of a greenlet -> bytes since start

    @property
    def urls(self) -> list[str]:
        """Where viewers connect, when the target was a listener (real ports filled in)."""
        return self.output.urls if isinstance(self.output, ListenOutput) else []

    def start(self) -> None:
        """Start tracemalloc (if needed), the switch hook, the output and the sampler."""
        if not tracemalloc.is_tracing():
            tracemalloc.start(self.frames)
            self._owns_tracemalloc = True
        try:
            program = " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])
            hello = Hello(os.getpid(), time.time(), self.interval, self.frames, self.top, program)
            self.output = _make_output(self.target, hello)
        except BaseException:
            self._release_tracemalloc()
            raise
        self._hook.install()
        self.state = TracerState.RUNNING
        self._sampler = gevent.spawn(self._run, time.monotonic())

    def stop(self, reason: str = "tracing stopped") -> None:
        """Stop sampling; send END to the viewers (briefly waiting for them); undo start."""
        if self.state is not TracerState.RUNNING:
            return
        self.state = TracerState.STOPPED
        self._stopping.set()
        if self._sampler is not None:
            # Not killed in the middle of a snapshot: the worker thread would
            # go on, and find tracemalloc stopped under it.
            self._sampler.join(STOP_TIMEOUT * 5)
            self._sampler.kill()
        self._hook.uninstall()
        if self.output is not None:
            self.output.offer(End(reason))
            self.output.close(STOP_TIMEOUT)
        self._release_tracemalloc()

    def abandon(self) -> None:
        """In a forked child: drop everything without writing a byte."""
        if self.state is not TracerState.RUNNING:
            return
        self.state = TracerState.FORKED
        if self.output is not None:
            self.output.abandon()
        if self._sampler is not None:
            self._sampler.kill(block=False)
        self._hook.uninstall()
        self._release_tracemalloc()

    def _release_tracemalloc(self) -> None:
        if self._owns_tracemalloc:
            self._owns_tracemalloc = False
            tracemalloc.stop()

    # -- sampling -----------------------------------------------------------------------

    def _run(self, started: float) -> None:
        key = "lineno" if self.frames == 1 else "traceback"
        pool = gevent.get_hub().threadpool
        previous, _, _ = self._analyse(pool, key, {})
        seq = 0
        deadline = started
        while self.state is TracerState.RUNNING:
            deadline += self.interval
            if self._stopping.wait(max(0.0, deadline - time.monotonic())):
                return
            seq += 1
            previous, sites, spent = self._analyse(pool, key, previous)
            now = time.monotonic()
            current, peak = tracemalloc.get_traced_memory()
            sample = Sample(seq, now - started, _rss(), current, peak, 0, sites, self._greenlet_usage())
            assert self.output is not None
            self.output.offer(sample)
            # No burst after a stall, and snapshots take at most MAX_DUTY of the time.
            deadline = max(deadline, now - self.interval, now + spent / MAX_DUTY - self.interval)

    def _analyse(
        self, pool: ThreadPool, key: str, previous: SiteTotals
    ) -> tuple[SiteTotals, tuple[Site, ...], float]:
        """A snapshot's totals and top sites, worked out in a worker thread, and its CPU time.

        The hub goes on running between the Python steps of the work; it
        waits only while ``take_snapshot`` itself copies the traces (C code
        holding the GIL).
        """
        self._hook.pause()
        try:
            result: tuple[SiteTotals, tuple[Site, ...], float] = pool.apply(
                site_totals, (key, previous, self.top)
            )
            return result
        finally:
            self._hook.resume()

    def _greenlet_usage(self) -> tuple[GreenletUsage, ...]:
        charges = self._hook.take()
        own = {self._sampler, *(self.output.greenlets if self.output is not None else ())}
        # One row per greenlet, not per label: twenty clients with the same
        # function must not add up to one big row above the real culprit.
        this_interval: dict[tuple[int, str], int] = {}
        for glet, (label, amount) in charges.items():
            if glet not in own:
                this_interval[id(glet), label] = amount
        totals = self._totals
        for key, amount in this_interval.items():
            totals[key] = totals.get(key, 0) + amount
        top = sorted(this_interval.items(), key=_amount, reverse=True)[: self.top]
        if len(totals) > 8 * self.top + 256:  # bounded: keep the largest
            self._totals = dict(sorted(totals.items(), key=_amount, reverse=True)[: 4 * self.top])
        return tuple(GreenletUsage(key[1], amount, totals[key]) for key, amount in top)
