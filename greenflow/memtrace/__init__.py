"""memtrace: watch a running process's memory from outside, over a flow, without slowing it.

::

    from greenflow import memtrace

    memtrace.start("listen:tcp://127.0.0.1:9100")   # viewers connect: greenflow memtrace connect URL
    memtrace.start("tcp://127.0.0.1:9100")          # or connect to a collector: greenflow memtrace listen URL
    memtrace.start(flow)                            # or write to a flow of your own
    ...
    memtrace.stop()

Every ``interval`` seconds the tracer takes a ``tracemalloc`` snapshot and
sends what changed: the process's RSS, the traced current and peak size, the
allocation sites that grew most (size, count, growth) and the greenlets that
allocated most while they ran (a server connection is labelled with its
handler and peer). Sending never blocks the hub: each viewer has a small
bounded queue and its own writer greenlet; when a viewer is slow, records
are dropped, counted, and the count travels in the next record it gets.
Viewers come and go (several at once on a listener); a collector is
reconnected with back-off. A forked child never writes to its parent's
viewers. The stream format is documented and versioned in
:mod:`greenflow.memtrace._format`; :func:`read_trace` reads it from a flow.

At run time, :func:`toggle` (or SIGUSR2, after :func:`install`) starts and
stops tracing. ``greenflow serve --memtrace URL`` calls :func:`install`.

This subpackage is not imported by ``import greenflow``: it loads
tracemalloc machinery, and its viewer loads rich.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

import gevent

from ..flow import Flow
from ._format import (
    FORMAT_VERSION,
    MAX_FRAME,
    Decoder,
    End,
    GreenletUsage,
    Hello,
    Record,
    Sample,
    Site,
    TraceFormatError,
    TraceVersionError,
    encode,
    preamble,
)
from ._tracer import DEFAULT_FRAMES, DEFAULT_INTERVAL, DEFAULT_TOP, Target, Tracer

__all__ = [
    "DEFAULT_FRAMES",
    "DEFAULT_INTERVAL",
    "DEFAULT_TOP",
    "FORMAT_VERSION",
    "MAX_FRAME",
    "Decoder",
    "End",
    "GreenletUsage",
    "Hello",
    "Record",
    "Sample",
    "Site",
    "Target",
    "TraceFormatError",
    "TraceVersionError",
    "Tracer",
    "encode",
    "install",
    "is_tracing",
    "preamble",
    "read_trace",
    "start",
    "stop",
    "toggle",
]

_active: Tracer | None = None

_READ_SIZE = 65536


def start(
    target: Target,
    *,
    interval: float = DEFAULT_INTERVAL,
    frames: int = DEFAULT_FRAMES,
    top: int = DEFAULT_TOP,
) -> Tracer:
    """Start tracing this process's memory to ``target``; returns the running :class:`Tracer`.

    Args:
        target: a :class:`~greenflow.Flow` to write records to; a collector's
            URL to connect to (``tcp://HOST:PORT``, ``unix:/path``;
            reconnected with back-off when it goes away); or ``listen:`` and a
            listener URL (``listen:tcp://127.0.0.1:9100``,
            ``listen:unix:/run/app.memtrace``) or a
            :class:`~greenflow.Listener`, where viewers connect.
        interval: seconds between records.
        frames: traceback depth tracemalloc keeps (1, the line, is cheapest).
        top: how many sites and greenlets each record lists.

    Raises:
        RuntimeError: tracing is already on (one tracer per process).
        ValueError: a bad URL or option.
        OSError: the listener could not be bound.
    """
    global _active
    if _active is not None and _active.state.name == "RUNNING":
        raise RuntimeError("memtrace is already tracing this process; stop() it first")
    tracer = Tracer(target, interval=interval, frames=frames, top=top)
    tracer.start()
    _active = tracer
    return tracer


def stop() -> None:
    """Stop tracing (the viewers get an END record); does nothing if tracing is off."""
    global _active
    tracer, _active = _active, None
    if tracer is not None:
        tracer.stop()


def is_tracing() -> bool:
    """Whether this process is being traced."""
    return _active is not None and _active.state.name == "RUNNING"


def toggle(target: Target, **options: float) -> bool:
    """Start tracing to ``target`` if it is off, else stop; returns whether it is on now."""
    if is_tracing():
        stop()
        return False
    start(target, **options)  # type: ignore[arg-type]
    return True


def install(
    target: Target,
    *,
    start_now: bool = True,
    signum: int | None = signal.SIGUSR2,
    interval: float = DEFAULT_INTERVAL,
    frames: int = DEFAULT_FRAMES,
    top: int = DEFAULT_TOP,
) -> Callable[[], None]:
    """Trace to ``target`` now (unless ``start_now`` is false) and let ``signum`` toggle it.

    What ``greenflow serve --memtrace URL`` does. Returns a function that
    removes the signal handler and stops tracing.
    """
    options = {"interval": interval, "frames": frames, "top": top}
    if start_now:
        start(target, interval=interval, frames=frames, top=top)
    handler = None
    if signum is not None:
        # gevent runs the callback in the hub, which must not block: toggle in a greenlet.
        handler = gevent.signal_handler(signum, lambda: gevent.spawn(toggle, target, **options))

    def undo() -> None:
        if handler is not None:
            handler.cancel()
        stop()

    return undo


def read_trace(flow: Flow) -> Iterator[Record]:
    """The records a flow carries, as they arrive, until its EOF.

    Raises:
        TraceFormatError: the stream is corrupt or ends inside a frame.
        TraceVersionError: the stream is of a format version this reader does not know.
        FlowError: reading the flow failed.
    """
    decoder = Decoder()
    while data := flow.read(_READ_SIZE):
        yield from decoder.feed(data)
    decoder.end()


def _after_fork_in_child() -> None:
    global _active
    tracer, _active = _active, None
    if tracer is not None:
        tracer.abandon()


os.register_at_fork(after_in_child=_after_fork_in_child)
