"""Waiting until every other greenlet is blocked: :func:`wait_all_blocked`.

Tests of blocking code often need "let everything else run until it cannot
go on": has the write returned yet, or is it waiting for a reader? A sleep
only guesses how long that takes, so a test that sleeps is slow when the
guess is long and flaky when it is short. This module answers the question
exactly, the way trio's ``wait_all_tasks_blocked`` does for trio tasks.

Theory of operation
-------------------

A greenlet is *blocked* when it waits for something outside the hub's
current turn: a socket that is not ready, a timer that is not due, an event
nobody has set. It is *runnable* when the hub would switch to it without
anything new happening: a callback is queued for it (``spawn``,
``sleep(0)``, ``Event.set``), its timer is due, or its socket is ready (on
loopback, data a peer wrote is readable at once).

gevent's idle watcher (``gevent.idle()``) fires in a turn of libev's loop in
which nothing else was pending: the queued callbacks ran (they run before
libev polls), the poll, made with a zero timeout because an idle watcher is
active, found no ready descriptor, and no timer was due. So one idle turn in
which no other greenlet ran shows that every other greenlet was blocked; and
since nothing ran, nothing changed, and they are blocked still.

"No other greenlet ran" is counted, not guessed: while anyone waits here, a
greenlet trace function (``greenlet.settrace``) counts every switch into a
greenlet that is neither the hub nor waiting here. A waiter starts a turn,
notes the count, waits for the idle watcher, and returns if the count did not
move and nothing else is pending in that turn; otherwise it tries again. The
pending count matters because several idle watchers fire in the same turn:
another greenlet waiting in ``gevent.idle()`` may be resumed just after this
one, so this one must not return yet. Counting switches covers what the
loop's counts miss: what the idle watchers resumed before this one did, and
loops (libuv) whose idle watchers do not wait for the other events.

Several greenlets may wait at once. Switches into waiters are not counted
(each would otherwise keep the others from ever returning), and a waiter
that returns moves the count: whatever it does next may wake someone, so the
other waiters need one more quiet turn. The first waiter the hub resumes
returns first; the others follow once things are quiet again.

A greenlet sleeping on a timer counts as blocked, however short the sleep;
what happens in another thread or process is not seen at all.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Literal

import gevent
import greenlet

__all__ = ["wait_all_blocked"]

_Event = Literal["switch", "throw"]
_Trace = Callable[[_Event, tuple[greenlet.greenlet, greenlet.greenlet]], object]


class _Watch:
    """The switch counter, shared by every greenlet waiting at the moment."""

    def __init__(self) -> None:
        self.moves = 0  # switches into a greenlet that is not the hub nor a waiter
        self.waiters: set[greenlet.greenlet] = set()
        self.last: weakref.ref[greenlet.greenlet] | None = None
        self._previous: _Trace | None = None
        self._installed = False  # in greenlet's trace chain (perhaps under a later one)

    def join(self, waiter: greenlet.greenlet) -> None:
        if not self._installed:
            self._previous = greenlet.settrace(self._trace)
            self._installed = True
        self.waiters.add(waiter)

    def leave(self, waiter: greenlet.greenlet) -> None:
        self.waiters.discard(waiter)
        self.moves += 1  # what the leaver does next may wake anyone
        if not self.waiters and greenlet.gettrace() == self._trace:
            greenlet.settrace(self._previous)
            self._previous = None
            self._installed = False
        # Otherwise a trace function was installed after ours and chains to
        # it: ours stays in its chain and keeps passing events on.

    def _trace(self, event: _Event, args: tuple[greenlet.greenlet, greenlet.greenlet]) -> None:
        if event in ("switch", "throw"):
            target = args[1]
            if target not in self.waiters and target is not gevent.get_hub():
                self.moves += 1
                self.last = weakref.ref(target)
        if self._previous is not None:
            self._previous(event, args)


_PER_THREAD = threading.local()  # each thread has its own hub, and its own trace function


def _watch() -> _Watch:
    watch: _Watch | None = getattr(_PER_THREAD, "watch", None)
    if watch is None:
        watch = _PER_THREAD.watch = _Watch()
    return watch


def wait_all_blocked(timeout: float | None = 5.0) -> None:
    """Return once every other greenlet of this thread is blocked.

    Blocked means waiting for something that has not happened yet: I/O that
    is not ready, a timer that is not due, an event not yet set. A greenlet
    that is runnable (just spawned, back from ``gevent.sleep(0)``, woken by a
    callback, a due timer or ready I/O such as data a loopback peer wrote)
    runs first, and so does everything it wakes in turn, until nothing is
    left to run. Use it in tests instead of a sleep, to let other greenlets
    get as far as they can::

        writing = gevent.spawn(flow.write, data)
        wait_all_blocked()
        assert not writing.ready(), "the write did not wait for a reader"

    A sleeping greenlet counts as blocked, however short its sleep; work in
    other threads or processes is not waited for. When several greenlets
    call this at once, each returns once all but the waiters are blocked.

    Args:
        timeout: seconds to wait at most, or ``None`` for no limit.

    Raises:
        TimeoutError: some greenlet was still running after ``timeout``
            seconds (for example one that loops around ``gevent.sleep(0)``);
            the message names the last greenlet that ran.
        ValueError: ``timeout`` is negative.
        RuntimeError: called from the hub, which can never wait for itself.
    """
    if timeout is not None and timeout < 0:
        raise ValueError(f"wait_all_blocked timeout must be >= 0 or None, not {timeout!r}")
    me = greenlet.getcurrent()
    if me is gevent.get_hub():
        raise RuntimeError("wait_all_blocked() cannot run in the hub: the hub is what it waits for")
    watch = _watch()
    timer = gevent.Timeout(timeout)
    watch.join(me)
    timer.start()
    try:
        loop = gevent.get_hub().loop
        while True:
            before = watch.moves
            gevent.idle()
            if watch.moves == before and not loop.pendingcnt:
                return
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        raise TimeoutError(_never_idle(watch, timeout)) from None
    finally:
        timer.close()
        watch.leave(me)


def _never_idle(watch: _Watch, timeout: float | None) -> str:
    last = watch.last() if watch.last is not None else None
    return (
        f"wait_all_blocked: other greenlets were still running after {timeout:g} s, the last one "
        f"to run being {last!r}; a greenlet that never blocks (a loop around gevent.sleep(0)?) "
        "keeps the hub from going idle"
    )
