"""Charging traced memory to greenlets: a chained ``greenlet.settrace`` hook.

At every switch the hook reads tracemalloc's current traced size and charges
the change since the previous switch to the greenlet switched *out* (the
origin): that is what it allocated, net of what it freed, while it ran. The
hook then always calls the trace function that was installed before it, so
gevent's blocked-loop monitor (``max_blocking_time``, which counts switches
in its own trace function) keeps working while memtrace runs; a trace
function installed after ours chains to ours in the same way.

Removing the hook puts the previous function back only if ours is still the
one installed; otherwise someone chained after us, and unhooking would cut
them off, so ours stays in the chain but only passes the events on.

greenlet keeps the C stack of a greenlet that is switched out in a heap
copy (``_stack_saved`` bytes), which tracemalloc sees as an allocation made
at the switch; the hook takes it out of the delta, or a greenlet with a deep
stack would seem to leak a few hundred bytes per switch, refunded to the
one that switches back to it.

The charges are held per greenlet object for one interval at most
(:meth:`SwitchAccounting.take` hands them over and starts afresh), so a
greenlet that ended is kept alive only until the next sample. A greenlet is
labelled at its first switch in an interval, while it is alive (gevent
forgets a greenlet's function when it ends); the other switches cost two
attribute reads and two dictionary updates.
"""

from __future__ import annotations

import enum
import tracemalloc
from typing import Any

import greenlet

from ..server import Connection

__all__ = ["SwitchAccounting", "label_of"]

#: The events that switch greenlets ("throw" raises into the target; both switch).
_SWITCHES = frozenset({"switch", "throw"})


class _HookState(enum.Enum):
    IDLE = "not installed"
    CHARGING = "installed and charging"
    PAUSED = "installed, not charging while the tracer's own work runs"
    PASSING = "left in the chain, passing events on only"


class SwitchAccounting:
    """The trace function; call :meth:`install`, then :meth:`take` each interval."""

    def __init__(self) -> None:
        self.previous: Any = None  # what greenlet.settrace returned: a callable or None
        self.state = _HookState.IDLE
        self._charges: dict[Any, list[Any]] = {}  # greenlet -> [label, bytes]
        self._stacks: dict[int, int] = {}  # id(greenlet) -> bytes of its C stack saved on the heap
        self._last = 0

    def install(self) -> None:
        """Put the hook in front of the current trace function."""
        if self.state is _HookState.PASSING:
            self.state = _HookState.CHARGING  # still in the chain: charge again
        else:
            self.previous = greenlet.settrace(self)
            self.state = _HookState.CHARGING
        self._last = tracemalloc.get_traced_memory()[0]

    def pause(self) -> None:
        """Charge nobody until :meth:`resume`: the tracer's worker thread is allocating.

        tracemalloc's traced size is the whole process's; what a snapshot
        allocates in the worker thread would otherwise be charged to whichever
        greenlet switched next.
        """
        if self.state is _HookState.CHARGING:
            self.state = _HookState.PAUSED

    def resume(self) -> None:
        """Charge again, from the traced size now."""
        if self.state is _HookState.PAUSED:
            self._last = tracemalloc.get_traced_memory()[0]
            self.state = _HookState.CHARGING

    def uninstall(self) -> None:
        """Stop charging; take the hook out of the chain if nobody came after it."""
        if self.state is _HookState.PAUSED:
            self.state = _HookState.CHARGING
        if self.state is not _HookState.CHARGING:
            return
        self._charges = {}
        if _installed(self):
            greenlet.settrace(self.previous)
            self.previous = None
            self.state = _HookState.IDLE
        else:
            self.state = _HookState.PASSING

    def __call__(self, event: str, args: Any) -> None:
        state = self.state
        if event in _SWITCHES and (state is _HookState.CHARGING or state is _HookState.PAUSED):
            origin, target = args
            # The switch has happened: greenlet copied the origin's C stack to
            # the heap and gave the target's copy back. That memory is
            # greenlet's, not the origin's: take it out of the delta.
            saved = origin._stack_saved
            stacks = self._stacks
            stack_change = saved - stacks.pop(id(target), 0)
            if saved:
                stacks[id(origin)] = saved
            if state is _HookState.CHARGING:
                now = tracemalloc.get_traced_memory()[0]
                delta = now - self._last - stack_change
                self._last = now
                entry = self._charges.get(origin)
                if entry is None:  # labelled now, while it is alive and named
                    self._charges[origin] = [label_of(origin), delta]
                else:
                    entry[1] += delta
        previous = self.previous
        if previous is not None:
            previous(event, args)

    def take(self) -> dict[Any, tuple[str, int]]:
        """The charges since the last call: greenlet -> (label, bytes); the current one's included."""
        now = tracemalloc.get_traced_memory()[0]
        charges, self._charges = self._charges, {}
        current = greenlet.getcurrent()
        entry = charges.setdefault(current, [label_of(current), 0])
        entry[1] += now - self._last
        self._last = now
        return {glet: (label, amount) for glet, (label, amount) in charges.items()}


def _installed(hook: object) -> bool:
    return greenlet.gettrace() is hook


def label_of(glet: Any) -> str:
    """A readable name for a greenlet: its handler and peer for a server connection.

    A :class:`greenflow.Server` connection greenlet carries its ``peer`` and
    its server's settings; the label is the handler's qualified name and the
    peer's address. A gevent greenlet is named by the function it runs; the
    hub and the main greenlet by what they are.
    """
    if isinstance(glet, Connection):
        peer = glet.peer
        where = f" from {_peer_text(peer)}" if peer not in (None, "", b"") else ""
        return f"{_callable_name(glet.handler)}{where}"
    if glet.parent is None:
        return "main greenlet"
    kind = type(glet).__name__
    if kind == "Hub":
        return "gevent hub"
    run = getattr(glet, "_run", None) or getattr(glet, "run", None)
    if run is not None:
        return _callable_name(run)
    return kind


def _peer_text(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer)


def _callable_name(function: object) -> str:
    target = getattr(function, "__func__", function)
    module = getattr(target, "__module__", None)
    name = getattr(target, "__qualname__", None) or type(target).__name__
    return f"{module}.{name}" if module else str(name)
