"""Lifetime scopes: resources that end together, exactly once, in reverse order.

A :class:`Scope` is the ``Lwt_switch`` of the capnp and Mirage libraries:
flows, listeners, greenlets and cleanup hooks join it, and when the scope
ends (its ``with`` block is left, or :meth:`Scope.close` is called: the
switch is turned off) every one of them is closed once, the last joined
first. A cleanup that fails does not stop the others: every error is
collected, and the errors are raised together at the end.

The flow constructors take ``scope=``: the flow joins the scope as it is
made, so that no code path between making it and joining it can leak it::

    with greenflow.Scope() as scope:
        upstream = greenflow.connect_tcp("127.0.0.1", 8080, scope=scope)
        downstream = greenflow.connect_unix("/run/app.sock", scope=scope)
        ...
    # both are closed here: downstream first, then upstream
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, TypeVar

import gevent

__all__ = ["Closeable", "Scope", "ScopeState", "joined", "joined_pair"]


class Closeable(Protocol):
    """Anything with a ``close()``: flows, listeners, sockets, files."""

    def close(self) -> object: ...


C = TypeVar("C", bound=Closeable)


class ScopeState(enum.Enum):
    """Where a scope is in its life."""

    OPEN = "open"
    #: Its cleanups are running.
    CLOSING = "closing"
    CLOSED = "closed"


class _Entry:
    """One thing to end: a resource's close, a hook, or a greenlet's kill."""

    __slots__ = ("action", "what")

    def __init__(self, action: Callable[[], object], what: object) -> None:
        self.action = action
        self.what = what


class Scope:
    """Resources and cleanups that end together.

    Join resources with :meth:`add` (anything with a ``close()``), cleanups
    with :meth:`add_hook`, greenlets with :meth:`spawn`. When the scope ends,
    with :meth:`close` or at the end of ``with Scope() as scope:``, each
    joined entry is ended exactly once, the last joined first; then the
    scope is closed for good.

    **Errors.** A cleanup that raises does not stop the others. Every error
    is kept in :attr:`errors`, and :meth:`close` raises them after all the
    cleanups have run: the one error itself, or a ``BaseExceptionGroup`` of
    them all when there are several (an ``ExceptionGroup`` when all are
    ``Exception``). Leaving a ``with`` block on an exception raises the
    cleanup errors with that exception as their ``__context__``, so none is
    lost.

    **After the end.** Joining an ended (or ending) scope ends the new entry
    at once, as ``Lwt_switch.add_hook_or_exec`` does, and raises
    ``ValueError``: whatever was being made with ``scope=`` is not left open.
    """

    __slots__ = ("_entries", "_errors", "_state")

    def __init__(self) -> None:
        self._entries: list[_Entry] = []
        self._errors: list[BaseException] = []
        self._state = ScopeState.OPEN

    def __repr__(self) -> str:
        return f"<Scope {self._state.value}, {len(self._entries)} entries>"

    # -- joining ---------------------------------------------------------------

    def add(self, resource: C) -> C:
        """Join ``resource``: its ``close()`` is called when the scope ends. Returns it.

        Raises:
            TypeError: ``resource`` has no ``close()``.
            ValueError: the scope has ended (``resource`` was closed at once).
        """
        close = getattr(resource, "close", None)
        if not callable(close):
            raise TypeError(f"a scope holds things with a close() method, not {type(resource).__name__}")
        self._join(_Entry(close, resource))
        return resource

    def add_hook(self, hook: Callable[[], object]) -> Callable[[], object]:
        """Call ``hook()`` when the scope ends (in reverse order with the rest). Returns it.

        Raises:
            TypeError: ``hook`` is not callable.
            ValueError: the scope has ended (``hook`` was called at once).
        """
        if not callable(hook):
            raise TypeError(f"a scope hook must be callable, not {type(hook).__name__}")
        self._join(_Entry(hook, hook))
        return hook

    def spawn(
        self, function: Callable[..., object], *args: object, **kwargs: object
    ) -> gevent.Greenlet[..., object]:
        """Start ``function(*args, **kwargs)`` in a greenlet that the scope kills when it ends.

        The kill waits for the greenlet to unwind (its ``finally`` blocks run).

        Raises:
            ValueError: the scope has ended (nothing was started).
        """
        self._check_open()
        greenlet = gevent.spawn(function, *args, **kwargs)
        self._entries.append(_Entry(greenlet.kill, greenlet))
        return greenlet

    def remove(self, item: object) -> bool:
        """Take ``item`` (a resource, hook or greenlet joined earlier) out without ending it.

        Returns whether it was in the scope (the latest joining, if it
        joined more than once).
        """
        for index in range(len(self._entries) - 1, -1, -1):
            if self._entries[index].what is item:
                del self._entries[index]
                return True
        return False

    def _join(self, entry: _Entry) -> None:
        if self._state is ScopeState.OPEN:
            self._entries.append(entry)
            return
        errors = _run([entry])
        problem = f"the scope is {self._state.value}; {entry.what!r} was ended at once instead of joining it"
        raise ValueError(problem) from (errors[0] if errors else None)

    def _check_open(self) -> None:
        if self._state is not ScopeState.OPEN:
            raise ValueError(f"the scope is {self._state.value}; nothing can join it")

    # -- ending ----------------------------------------------------------------

    def close(self) -> None:
        """End the scope: end every entry once, the last joined first, then raise their errors.

        Idempotent: a second call does nothing (and raises nothing). A call
        from a cleanup of this same scope does nothing either.

        Raises:
            BaseException: the error of the one cleanup that failed, or a
                ``BaseExceptionGroup`` of the errors of several.
        """
        if self._state is not ScopeState.OPEN:
            return
        self._state = ScopeState.CLOSING
        try:
            # Entries joined by a cleanup while the scope closes are ended at
            # once by _join, so this list no longer grows.
            entries, self._entries = self._entries, []
            entries.reverse()
            self._errors.extend(_run(entries))
        finally:
            self._state = ScopeState.CLOSED
        if len(self._errors) == 1:
            raise self._errors[0]
        if self._errors:
            raise BaseExceptionGroup(f"{len(self._errors)} cleanups of the scope failed", self._errors)

    @property
    def state(self) -> ScopeState:
        """A :class:`ScopeState`."""
        return self._state

    @property
    def closed(self) -> bool:
        """Whether the scope has ended (its cleanups have all run)."""
        return self._state is ScopeState.CLOSED

    @property
    def errors(self) -> tuple[BaseException, ...]:
        """The errors the cleanups raised, in the order they ran."""
        return tuple(self._errors)

    def __len__(self) -> int:
        return len(self._entries)

    def __enter__(self) -> Scope:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _run(entries: list[_Entry]) -> list[BaseException]:
    """End each entry in order; every one runs whatever the others raise."""
    errors: list[BaseException] = []
    for entry in entries:
        try:
            entry.action()
        except BaseException as exc:  # collected, raised by Scope.close after the rest have run
            errors.append(exc)
    return errors


def joined(flow: C, scope: Scope | None) -> C:
    """``flow``, joined to ``scope`` if one is given: what the flow constructors return through.

    When ``scope`` has ended, ``flow`` is closed and ``ValueError`` raised.
    """
    if scope is not None:
        scope.add(flow)
    return flow


def joined_pair(pair: tuple[C, C], scope: Scope | None) -> tuple[C, C]:
    """As :func:`joined`, for the two flows of a pair: both join, or (scope ended) both are closed."""
    if scope is not None:
        try:
            scope.add(pair[0])
        finally:
            scope.add(pair[1])  # an ended scope closes this one too, and raises as for the first
    return pair
