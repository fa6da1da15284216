"""The conformance suite: does a pair of flows keep the whole flow contract?

:func:`check_flow_pair` runs every check (in :mod:`._checks_data` and
:mod:`._checks_ending`) against fresh pairs from the caller's factory, in
blocking style, with no pytest needed. All checks run even when one fails,
and the ``AssertionError`` at the end lists every failing check with what it
saw, so a third party whose flow is wrong learns all that is wrong in one run.

Each check has a bound (``check_timeout``, a few seconds: on a correct flow
every check takes a small fraction of it), and the harness
(:mod:`._harness`) ends a check at its bound whatever the flow does. A flow
that hangs in many checks would still take the bound times the number of
checks, so hung checks also share a budget (``hang_budget``): the bound of
each check is cut so that the checks still to come keep a share of what is
left. Time spent in checks that finish is not counted, so a correct flow,
however slow, is never cut short; a flow that hangs in every check is
reported in about ``hang_budget`` seconds.

Every check is written for the harshest flow control (the lockstep pair, where
a write returns only once the peer has read all of it): a write, and a
``shutdown("write")`` (which writes in a layer such as TLS), always has a
reader running at the same time, so the suite never deadlocks a correct flow.
Waiting for other greenlets to get as far as they can is
:func:`~greenflow.testing.wait_all_blocked`, never a sleep.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from . import _checks_data, _checks_ending  # noqa: F401  (they register the checks)
from ._harness import CHECKS, Check, MakePair, run_check

__all__ = ["MakePair", "check_flow_pair"]

DEFAULT_CHECK_TIMEOUT = 5.0


def check_flow_pair(
    make_pair: MakePair,
    make_clogged_pair: MakePair | None = None,
    *,
    check_timeout: float = DEFAULT_CHECK_TIMEOUT,
    only: Iterable[str] | None = None,
    hang_budget: float | None = None,
) -> None:
    """Check that the flows ``make_pair`` returns keep the flow contract.

    Args:
        make_pair: returns two fresh flows connected to each other. It is
            called once per check; the suite closes both flows afterwards.
        make_clogged_pair: like ``make_pair``, but the first write on either
            flow blocks until the other end reads (for example a socket pair
            whose buffers were filled first). The checks that need a blocked
            writer use it; without it they write 32 MiB in one call instead.
            Data sent over a clogged pair is never checked.
        check_timeout: seconds each check may take before it counts as hung
            (5 by default; each check of a correct flow takes far less).
        only: run just the checks whose names contain one of these strings
            (for debugging one failure; a conformance run runs them all).
        hang_budget: seconds that hung checks may take in all (by default 4
            times ``check_timeout``). Once hung checks have used most of it,
            each check still to come gets a bound of about ``hang_budget``
            divided by twice the number of checks, so a flow that hangs in
            every check is reported in about ``hang_budget`` seconds.

    Raises:
        AssertionError: one or more checks failed; the message names each
            failing check and what it saw.
        ValueError: ``only`` matches no check, or a timeout is not positive.
    """
    checks = _select(only)
    budget = _Budget(check_timeout, hang_budget, len(checks))
    failures: list[str] = []
    first: BaseException | None = None
    for name, check in checks:
        bound = budget.next_bound()
        started = time.monotonic()
        failure = run_check(check, make_pair, make_clogged_pair, bound)
        if failure is None:
            continue
        if failure.hung:
            budget.spend(time.monotonic() - started)
        cut = (
            f" (cut from {check_timeout:.3g} s: earlier checks hung)"
            if failure.hung and budget.cut(bound)
            else ""
        )
        failures.append(f"- {name}: {failure.text}{cut}")
        first = first or failure.cause
    if failures:
        summary = f"{len(failures)} of {len(checks)} flow contract checks failed:\n" + "\n".join(failures)
        raise AssertionError(summary) from first


def _select(only: Iterable[str] | None) -> list[tuple[str, Check]]:
    if only is None:
        return list(CHECKS)
    wanted = list(only)
    checks = [(name, check) for name, check in CHECKS if any(part in name for part in wanted)]
    if not checks:
        raise ValueError(f"no check matches {wanted!r}")
    return checks


class _Budget:
    """The bound of each check: ``check_timeout``, cut once hung checks used up the budget.

    Every check still to run keeps back a floor (half the budget shared among
    all checks), so the hung checks of one run take at most about the budget.
    """

    def __init__(self, check_timeout: float, hang_budget: float | None, count: int) -> None:
        if not check_timeout > 0:
            raise ValueError(f"check_timeout must be a positive number of seconds, not {check_timeout!r}")
        total = 4 * check_timeout if hang_budget is None else hang_budget
        if not total > 0:
            raise ValueError(f"hang_budget must be a positive number of seconds, not {hang_budget!r}")
        self._check_timeout = check_timeout
        self._left = total
        self._to_run = count
        self._floor = min(check_timeout, total / (2 * count))

    def next_bound(self) -> float:
        self._to_run -= 1
        share = self._left - self._floor * self._to_run
        return min(self._check_timeout, max(self._floor, share))

    def spend(self, seconds: float) -> None:
        self._left -= seconds

    def cut(self, bound: float) -> bool:
        return bound < self._check_timeout
