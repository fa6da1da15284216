"""greenflow.testing.wait_all_blocked: it returns only once every other greenlet is blocked.

Each test starts greenlets that are runnable in a different way (just
spawned, woken by a callback, by a due timer, by loopback I/O, by one
another in a chain) and checks, right after the call returns, that each got
as far as it could. None of them would pass with a single ``gevent.sleep(0)``
in place of the call.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import gevent
import gevent.socket
import greenlet
import pytest
from gevent.event import Event

from greenflow.testing import lockstep_pair, wait_all_blocked


@pytest.fixture
def tcp() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair of gevent TCP sockets on 127.0.0.1."""
    with gevent.socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = gevent.socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    with client, server:
        yield client, server


def test_a_runnable_greenlet_runs_until_it_ends() -> None:
    steps: list[int] = []

    def busy_for_a_while() -> None:
        for step in range(1000):  # each sleep(0) makes it runnable again
            gevent.sleep(0)
            steps.append(step)

    worker = gevent.spawn(busy_for_a_while)
    wait_all_blocked()
    assert worker.dead
    assert len(steps) == 1000


def test_a_greenlet_woken_by_a_zero_delay_callback_or_timer_runs() -> None:
    by_callback, by_timer = Event(), Event()
    woken: list[str] = []
    waiters = [
        gevent.spawn(lambda: (by_callback.wait(), woken.append("callback"))),
        gevent.spawn(lambda: (by_timer.wait(), woken.append("timer"))),
    ]
    wait_all_blocked()
    assert woken == []  # both are blocked on their events
    gevent.get_hub().loop.run_callback(by_callback.set)
    gevent.spawn_later(0, by_timer.set)
    wait_all_blocked()
    assert sorted(woken) == ["callback", "timer"]
    assert all(waiter.dead for waiter in waiters)


def test_a_greenlet_woken_by_loopback_io_runs(tcp: tuple[socket.socket, socket.socket]) -> None:
    client, server = tcp
    received: list[bytes] = []
    reader = gevent.spawn(lambda: received.append(server.recv(100)))
    wait_all_blocked()
    assert not reader.ready(), "the reader did not wait for data"
    client.sendall(b"ping")  # readable at once on loopback: a zero-timeout poll sees it
    wait_all_blocked()
    assert received == [b"ping"]


def test_a_chain_of_wake_ups_runs_to_its_end(tcp: tuple[socket.socket, socket.socket]) -> None:
    client, server = tcp
    left, right = gevent.socket.socketpair()
    log: list[str] = []
    started, timed = Event(), Event()

    def first() -> None:  # a callback wakes it; it yields, then sets an event
        started.wait()
        gevent.sleep(0)
        log.append("first")
        timed_later = gevent.spawn_later(0, second)  # a due timer
        timed_later.join()

    def second() -> None:  # then writes to a TCP socket
        log.append("second")
        client.sendall(b"over tcp")

    def third() -> None:  # woken by TCP, writes to a Unix socket
        assert server.recv(100) == b"over tcp"
        log.append("third")
        left.sendall(b"over unix")

    def fourth() -> None:  # woken by the Unix socket, sets an event from a callback
        assert right.recv(100) == b"over unix"
        log.append("fourth")
        gevent.get_hub().loop.run_callback(timed.set)

    def fifth() -> None:
        timed.wait()
        log.append("fifth")

    with left, right:
        chain = [gevent.spawn(step) for step in (first, third, fourth, fifth)]
        wait_all_blocked()
        assert log == []
        gevent.get_hub().loop.run_callback(started.set)
        wait_all_blocked()
        assert log == ["first", "second", "third", "fourth", "fifth"]
        assert all(step.dead for step in chain)


def test_work_done_in_idle_turns_is_waited_for() -> None:
    # A greenlet that itself waits for the hub to go idle, again and again,
    # wakes in the same turn as the caller: one gevent.idle() is not enough.
    steps: list[int] = []

    def background() -> None:
        for step in range(5):
            gevent.idle()
            steps.append(step)

    worker = gevent.spawn(background)
    wait_all_blocked()
    assert worker.dead and steps == [0, 1, 2, 3, 4]


def test_blocked_greenlets_stay_blocked_and_it_returns_at_once() -> None:
    a, b = lockstep_pair()
    writing = gevent.spawn(a.write, b"waits for a reader")
    sleeping = gevent.spawn(gevent.sleep, 60)
    event_waiting = gevent.spawn(Event().wait)
    started = time.monotonic()
    wait_all_blocked()
    assert time.monotonic() - started < 1, "it waited for sleepers or for I/O that never comes"
    assert not (writing.ready() or sleeping.ready() or event_waiting.ready())
    assert b.read() == b"waits for a reader"
    wait_all_blocked()
    assert writing.dead
    gevent.killall([sleeping, event_waiting])


def test_a_greenlet_that_never_blocks_is_a_timeout_error_naming_it() -> None:
    def spinner() -> None:
        while True:
            gevent.sleep(0)

    spinning = gevent.spawn(spinner)
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError, match=r"still running after 0.2 s.*spinner"):
            wait_all_blocked(timeout=0.2)
    finally:
        spinning.kill()
    assert time.monotonic() - started < 2


def test_several_waiters_all_return() -> None:
    returned: list[int] = []
    worker = gevent.spawn(lambda: [gevent.sleep(0) for _ in range(100)])

    def waiter(number: int) -> None:
        wait_all_blocked()
        assert worker.dead, f"waiter {number} returned while the worker still ran"
        returned.append(number)

    waiters = [gevent.spawn(waiter, number) for number in range(3)]
    gevent.joinall(waiters, timeout=5, raise_error=True)
    assert sorted(returned) == [0, 1, 2]


def test_a_greenlet_trace_function_is_kept_and_restored() -> None:
    seen: list[str] = []

    def trace(event: str, args: object) -> None:
        seen.append(event)

    previous = greenlet.settrace(trace)
    try:
        gevent.spawn(gevent.sleep, 0)
        wait_all_blocked()
        assert "switch" in seen, "the trace function in place was not called while waiting"
        assert greenlet.gettrace() is trace, "the trace function in place was not put back"
    finally:
        greenlet.settrace(previous)


def test_misuse() -> None:
    with pytest.raises(ValueError, match="timeout must be >= 0 or None"):
        wait_all_blocked(timeout=-1)
    outcome: list[BaseException] = []

    def in_the_hub() -> None:
        try:
            wait_all_blocked()
        except RuntimeError as exc:
            outcome.append(exc)

    gevent.get_hub().loop.run_callback(in_the_hub)
    wait_all_blocked()
    assert len(outcome) == 1 and "cannot run in the hub" in str(outcome[0])


def test_a_trace_function_installed_while_it_waits_is_kept() -> None:
    """Found in review: the helper put back what it found, dropping a tracer set meanwhile."""
    seen: list[str] = []

    def mine(event: str, args: object) -> None:
        seen.append(event)
        if previous is not None:
            previous(event, args)  # type: ignore[operator]

    previous = None

    def install() -> None:
        nonlocal previous
        previous = greenlet.settrace(mine)

    before = greenlet.gettrace()
    try:
        gevent.spawn(install)
        wait_all_blocked()
        assert greenlet.gettrace() is mine, "the tracer installed meanwhile was dropped"
        gevent.spawn(gevent.sleep, 0)
        wait_all_blocked()  # again: no loop between the two trace functions
        assert seen
    finally:
        greenlet.settrace(before)
