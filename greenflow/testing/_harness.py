"""The conformance suite's harness: a check's context, its greenlets, its bound, its report.

:func:`~greenflow.testing.check_flow_pair` hands each check to
:func:`run_check`, with the bound that check may take. The check runs in a
greenlet of its own, and the harness joins that greenlet for the bound; it
never relies on the flow under test to give control back.

A check still running at its bound is hung. The harness throws :class:`Hung`
into it, so that the helper it is blocked in can say how far it got (how
many bytes came, what it was waiting for), and the report names the line of
the check and the flow call that never returned. A flow that swallows even
that cannot hold up the run: the harness waits a short grace and goes on,
and the report says so. Cleaning up (closing the check's flows, killing its
greenlets) has a grace of its own.

The helpers at the end are the checks' vocabulary: reading exactly so many
bytes, expecting an error, joining a greenlet. None of them has a timeout
of its own: whatever a check waits for, it waits within the check's bound,
and a wait that never ends is reported with what it waited for.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import gevent
from gevent import GreenletExit
from gevent.greenlet import Greenlet

from ..flow import Flow
from ._idle import wait_all_blocked

#: A function that returns two flows connected to each other.
MakePair = Callable[[], tuple[Flow, Flow]]
Check = Callable[["Context"], None]

_T = TypeVar("_T")
if TYPE_CHECKING:
    #: A greenlet of a check, whose value is ``(ok, result or error)``.
    Task = Greenlet[..., tuple[bool, object]]

BIG_WRITE = 32 * 1024 * 1024  # more than any sane flow buffers: such a write blocks
_GRACE = 0.5  # seconds a killed check, or a check's clean-up, may take
_SETTLE_MARGIN = 0.1  # a settle gives up this long before the bound, to say so itself
_KIT = {Path(__file__).with_name(name) for name in ("_harness.py", "_checks_data.py", "_checks_ending.py")}

#: Every check, in the order they run: (name, function).
CHECKS: list[tuple[str, Check]] = []


def check(name: str) -> Callable[[Check], Check]:
    """Register the decorated function as the check called ``name``."""

    def register(function: Check) -> Check:
        CHECKS.append((name, function))
        return function

    return register


class Hung(BaseException):
    """A check ran out of time. BaseException, so no flow code swallows it by accident."""


@dataclass(frozen=True)
class Failure:
    """What a failed check saw: the report line's text, and the error behind it."""

    text: str
    cause: BaseException | None
    hung: bool


class Context:
    """What one check works with: pair factories, its bound, and clean-up of what it made."""

    def __init__(self, make_pair: MakePair, make_clogged_pair: MakePair | None, bound: float) -> None:
        self._make_pair = make_pair
        self._make_clogged_pair = make_clogged_pair
        self._deadline = time.monotonic() + bound
        self._flows: list[Flow] = []
        self._greenlets: list[Task] = []

    def pair(self) -> tuple[Flow, Flow]:
        a, b = self._make_pair()
        self._flows += [a, b]
        return a, b

    def clogged_pair(self) -> tuple[Flow, Flow, int]:
        """A pair and the size of a write that blocks on it."""
        if self._make_clogged_pair is None:
            a, b = self.pair()
            return a, b, BIG_WRITE
        a, b = self._make_clogged_pair()
        self._flows += [a, b]
        return a, b, 1024 * 1024

    def spawn(self, function: Callable[..., _T], *args: object) -> Task:
        """Run ``function`` in a greenlet whose value is ``(ok, result or error)``.

        Errors are caught and returned, not raised, so that gevent does not
        print the tracebacks of errors a check expects.
        """
        greenlet = gevent.spawn(_capture, function, *args)
        self._greenlets.append(greenlet)
        return greenlet

    def time_left(self) -> float:
        """Seconds until this check's bound."""
        return max(0.0, self._deadline - time.monotonic())

    def settle(self) -> None:
        """Let every other greenlet run until it blocks (or ends)."""
        left = self.time_left() - _SETTLE_MARGIN  # too little left: the bound ends it
        try:
            with waiting_for("every other greenlet to block"):
                wait_all_blocked(left if left > 0 else None)
        except TimeoutError as exc:
            raise AssertionError(f"the flow's greenlets never all blocked: {exc}") from exc

    def clean_up(self) -> None:
        for flow in self._flows:
            flow.close()
        gevent.killall([g for g in self._greenlets if not g.dead], timeout=_GRACE)


def run_check(
    check: Check, make_pair: MakePair, make_clogged_pair: MakePair | None, bound: float
) -> Failure | None:
    """Run one check within ``bound`` seconds; what it saw if it failed."""
    context = Context(make_pair, make_clogged_pair, bound)
    runner = gevent.spawn(_guarded, check, context)
    runner.join(bound)
    failure: Failure | None
    if runner.ready():
        # What _guarded does not catch (a flow's own BaseException, a kill)
        # ended the runner: that fails the check too, it is no pass.
        error = runner.value if runner.successful() else runner.exception
        failure = None if error is None else Failure(_describe(error), error, hung=False)
    else:
        runner.kill(Hung(), block=True, timeout=_GRACE)
        failure = _hung(runner, bound)
        runner.kill(block=False)  # a check that swallowed Hung: no more waiting for it
    try:
        with gevent.Timeout(2 * _GRACE, Hung):  # closing, then killing for _GRACE
            context.clean_up()
    except (Exception, Hung) as exc:
        what = "did not return" if isinstance(exc, Hung) else f"raised {type(exc).__name__}: {exc}"
        failure = failure or Failure(f"cleaning up (closing the check's flows) {what}", exc, hung=False)
    return failure


def _guarded(check: Check, context: Context) -> BaseException | None:
    try:
        check(context)
    except (Exception, Hung, gevent.Timeout) as exc:  # whatever a flow raises fails that check only
        return exc
    return None


def _hung(runner: Greenlet[..., BaseException | None], bound: float) -> Failure:
    text = f"did not finish within {bound:.3g} s"
    error = runner.value if runner.ready() else None
    if error is None and not runner.ready():  # the flow caught Hung and went on waiting
        stack = traceback.extract_stack(runner.gr_frame) if runner.gr_frame is not None else []
        return Failure(f"{text}, and went on when killed{_where(stack)}", None, hung=True)
    if error is None:
        return Failure(f"{text}; killed, it finished instead: the flow swallowed the kill", None, hung=True)
    notes = "".join(f"; {note}" for note in getattr(error, "__notes__", ()))
    if not isinstance(error, Hung):  # it failed as it was killed: that is what it saw
        return Failure(f"{text}{notes}; then, killed: {_describe(error)}", error, hung=True)
    return Failure(f"{text}{notes}{_where(traceback.extract_tb(error.__traceback__))}", error, hung=True)


def _where(stack: traceback.StackSummary | list[traceback.FrameSummary]) -> str:
    """Where a check was blocked: its innermost line, and the call into the flow."""
    ours = [i for i, frame in enumerate(stack) if Path(frame.filename) in _KIT]
    if not ours:
        return ""
    inner = stack[ours[-1]]
    text = f" (blocked at {inner.name}: `{inner.line}`"
    if ours[-1] + 1 < len(stack):
        call = stack[ours[-1] + 1]
        if "gevent" not in Path(call.filename).parts:  # a wait inside gevent (a join) says so itself
            text += f", in {call.name} at {Path(call.filename).name}:{call.lineno}"
    return text + ")"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, AssertionError):
        return str(exc) or "assertion failed"
    where = traceback.extract_tb(exc.__traceback__)[-1]
    return f"unexpected {type(exc).__name__}: {exc} (at {where.filename}:{where.lineno})"


# -- the checks' helpers -----------------------------------------------------------


@contextmanager
def waiting_for(what: str) -> Iterator[None]:
    """If the check hangs in this block, its report says it was waiting for ``what``."""
    try:
        yield
    except Hung as hung:
        hung.add_note(f"it was waiting for {what}")
        raise


def read_exactly(flow: Flow, size: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    try:
        while got < size:
            chunk = flow.read(size - got)
            assert isinstance(chunk, bytes), f"read returned {type(chunk).__name__}, not bytes"
            assert chunk, f"read returned EOF after {got} of the {size} bytes that were sent"
            assert len(chunk) <= size - got, f"read({size - got}) returned {len(chunk)} bytes"
            chunks.append(chunk)
            got += len(chunk)
    except Hung as hung:
        hung.add_note(f"{got} of the {size} bytes written had come, and no more came")
        raise
    return b"".join(chunks)


def read_to_eof(flow: Flow, limit: int = 64 * 1024 * 1024) -> bytes:
    chunks: list[bytes] = []
    got = 0
    try:
        while chunk := flow.read():
            got += len(chunk)
            assert got <= limit, f"read more than the {limit} bytes that were sent, and no EOF"
            chunks.append(chunk)
    except Hung as hung:
        hung.add_note(f"{got} bytes had come, then neither more data nor EOF")
        raise
    return b"".join(chunks)


def expect(error: type[BaseException], call: Callable[[], object], what: str) -> BaseException:
    try:
        with waiting_for(f"{what} to return"):
            result = call()
    except error as exc:
        return exc
    except Hung:
        raise
    except BaseException as exc:
        raise AssertionError(f"{what} raised {type(exc).__name__}({exc}), expected {error.__name__}") from exc
    raise AssertionError(f"{what} returned {result!r}, expected {error.__name__}")


def _capture(function: Callable[..., object], *args: object) -> tuple[bool, object]:
    try:
        return True, function(*args)
    except (GreenletExit, Hung):
        raise
    except BaseException as exc:  # a flow's own BaseException is an outcome to report, by name
        return False, exc


def _outcome(greenlet: Task, what: str) -> tuple[bool, object]:
    with waiting_for(f"{what} to return"):
        greenlet.join()
    assert greenlet.successful(), f"{what} was killed by {greenlet.exception!r}"
    assert greenlet.value is not None
    return greenlet.value


def join(greenlet: Task, what: str) -> object:
    """What ``greenlet`` returned; an ``AssertionError`` saying ``what`` failed if it raised."""
    ok, result = _outcome(greenlet, what)
    if not ok:
        raise AssertionError(f"{what} raised {type(result).__name__}: {result}") from result  # type: ignore[misc]
    return result


def join_error(greenlet: Task, error: type[BaseException], what: str) -> None:
    ok, result = _outcome(greenlet, what)
    if ok:
        raise AssertionError(f"{what} returned {result!r}, expected {error.__name__}")
    assert isinstance(result, error), (
        f"{what} raised {type(result).__name__}({result}), expected {error.__name__}"
    )


def kill(greenlet: Task, what: str) -> None:
    with waiting_for(f"{what} to end when killed"):
        greenlet.kill(block=True)


def pattern(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def send_and_receive(ctx: Context, writer: Flow, reader: Flow, data: bytes) -> None:
    sending = ctx.spawn(writer.write, data)
    got = read_exactly(reader, len(data))
    join(sending, "write")
    assert got == data, "the bytes read differ from the bytes written"


@contextmanager
def blocked(ctx: Context, function: Callable[..., object], *args: object) -> Iterator[Task]:
    """Start ``function`` in a greenlet, and check that it blocks."""
    greenlet = ctx.spawn(function, *args)
    ctx.settle()
    assert not greenlet.ready(), (
        f"expected {getattr(function, '__name__', function)} to block, but it ended with {greenlet.value!r}"
    )
    yield greenlet
