"""The tracer: tracemalloc snapshots at an interval, turned into records for the outputs.

Theory of operation. :meth:`Tracer.start` starts ``tracemalloc`` (unless it
was already running: then it is left as it was found), takes a baseline
snapshot, installs the greenlet switch hook and spawns the *sampler*
greenlet. Every ``interval`` seconds the sampler takes a snapshot, compares
it with the previous one (by line, or by traceback when ``frames`` > 1),
and builds one :class:`~._format.Sample`: the process's RSS, tracemalloc's
current and peak traced size, the ``top`` sites that grew most, and the
``top`` greenlets that were charged most traced memory while they ran. The
sample is *offered* to the output, which never blocks (``_sinks``): the only
time the hub spends on tracing is the snapshot and the comparison, about a
millisecond per 10,000 live allocations with the default single frame (see
``benchmarks/memtrace.py``), plus a dictionary update per greenlet switch.

The snapshot leaves out the tracer's own allocations (this package's files,
``tracemalloc`` itself, the import machinery); the greenlets that work for
the tracer (the sampler, the writers, the accept loops) are not charged.

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

from ..flow import Flow
from ..listeners import Listener
from ._format import End, GreenletUsage, Hello, Sample, Site
from ._hook import SwitchAccounting, label_of
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

_PACKAGE_FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "*")
_FILTERS: Final = (
    tracemalloc.Filter(False, _PACKAGE_FILES),
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
)

#: What ``start`` takes as a target.
Target = Flow | Listener | str


def _growth(diff: tracemalloc.StatisticDiff) -> tuple[int, int]:
    return diff.size_diff, diff.size


def _amount(item: tuple[str, int]) -> int:
    return item[1]


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
        self._totals: dict[str, int] = {}

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
        baseline = self._snapshot()
        self._sampler = gevent.spawn(self._run, baseline, time.monotonic())

    def stop(self, reason: str = "tracing stopped") -> None:
        """Stop sampling; send END to the viewers (briefly waiting for them); undo start."""
        if self.state is not TracerState.RUNNING:
            return
        self.state = TracerState.STOPPED
        if self._sampler is not None and self._sampler is not gevent.getcurrent():
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

    def _snapshot(self) -> tracemalloc.Snapshot:
        return tracemalloc.take_snapshot().filter_traces(_FILTERS)

    def _run(self, previous: tracemalloc.Snapshot, started: float) -> None:
        seq = 0
        deadline = started
        while self.state is TracerState.RUNNING:
            deadline += self.interval
            gevent.sleep(max(0.0, deadline - time.monotonic()))
            if self.state is not TracerState.RUNNING:
                return
            seq += 1
            snapshot = self._snapshot()
            sample = self.sample(seq, time.monotonic() - started, snapshot, previous)
            previous = snapshot
            assert self.output is not None
            self.output.offer(sample)
            deadline = max(deadline, time.monotonic() - self.interval)  # no burst after a stall

    def sample(
        self, seq: int, elapsed: float, snapshot: tracemalloc.Snapshot, previous: tracemalloc.Snapshot
    ) -> Sample:
        """Build one sample from two snapshots and the greenlets' charges since the last one."""
        key = "lineno" if self.frames == 1 else "traceback"
        diffs = snapshot.compare_to(previous, key)
        # sorted, not heapq: heapq is Python code, and its allocations would show as a site.
        grown = sorted(diffs, key=_growth, reverse=True)[: self.top]
        sites = tuple(
            Site(
                tuple((frame.filename, frame.lineno) for frame in diff.traceback),
                diff.size,
                diff.size_diff,
                diff.count,
                diff.count_diff,
            )
            for diff in grown
        )
        current, peak = tracemalloc.get_traced_memory()
        return Sample(seq, elapsed, _rss(), current, peak, 0, sites, self._greenlet_usage())

    def _greenlet_usage(self) -> tuple[GreenletUsage, ...]:
        charges = self._hook.take()
        own = {self._sampler, *(self.output.greenlets if self.output is not None else ())}
        by_label: dict[str, int] = {}
        for glet, amount in charges.items():
            if glet in own:
                continue
            label = label_of(glet)
            by_label[label] = by_label.get(label, 0) + amount
        totals = self._totals
        for label, amount in by_label.items():
            totals[label] = totals.get(label, 0) + amount
        top = sorted(by_label.items(), key=_amount, reverse=True)[: self.top]
        if len(totals) > 8 * self.top + 256:  # bounded: keep the largest
            self._totals = dict(sorted(totals.items(), key=_amount, reverse=True)[: 4 * self.top])
        return tuple(GreenletUsage(label, amount, totals[label]) for label, amount in top)
