"""The memtrace tracer in this process: back-pressure, viewers coming and going, collectors, the hook.

Every test traces with a short interval and stops tracing at its end (the
``tracing`` fixture), so that tracemalloc never stays on for the rest of the
suite.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import gevent
import greenlet
import pytest
from gevent.event import Event

import greenflow
from greenflow import memtrace
from greenflow.memtrace import End, Hello, Sample
from greenflow.memtrace._hook import SwitchAccounting, label_of
from greenflow.memtrace._sinks import QUEUE_RECORDS, connect_url

INTERVAL = 0.05
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tracing() -> Iterator[None]:
    assert not memtrace.is_tracing()
    yield
    memtrace.stop()
    assert not tracemalloc.is_tracing()


def _samples(flow: greenflow.Flow, count: int) -> list[Sample]:
    found: list[Sample] = []
    for record in memtrace.read_trace(flow):
        if isinstance(record, Sample):
            found.append(record)
            if len(found) == count:
                break
    return found


def test_viewers_come_and_go_several_at_once(tracing: None) -> None:
    tracer = memtrace.start("listen:tcp://127.0.0.1:0", interval=INTERVAL)
    [url] = tracer.urls
    with connect_url(url) as first, connect_url(url) as second:
        a = gevent.spawn(_samples, first, 4)
        b = gevent.spawn(_samples, second, 4)
        gevent.joinall([a, b], raise_error=True)
        seen_a = {sample.seq for sample in a.value}
        seen_b = {sample.seq for sample in b.value}
        assert seen_a & seen_b  # both were served the same samples at the same time
    # The first viewers left; a new one gets a sample within one interval of arriving.
    arrived = time.monotonic()
    with connect_url(url) as third:
        [sample] = _samples(third, 1)
        assert time.monotonic() - arrived <= INTERVAL + 0.1
        assert sample.seq > max(seen_a | seen_b)
    memtrace.stop()
    assert tracer.output is not None and not tracer.output.sinks


def test_a_viewer_that_stops_reading_costs_bounded_memory_and_no_hub_time(tracing: None) -> None:
    ours, viewer = greenflow.socketpair()
    ours.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    viewer.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    interval = 0.01
    tracer = memtrace.start(ours, interval=interval, top=50)
    assert tracer.output is not None
    # Something to report: a ring of allocations, replaced all the time, so
    # that every sample differs while the live memory stays the same.
    ring: list[object] = [None] * 500
    worst = [0.0]

    def busy() -> None:
        turn = 0
        while True:
            before = time.monotonic()
            gevent.sleep(0.001)
            worst[0] = max(worst[0], time.monotonic() - before - 0.001)
            turn += 1
            ring[turn % len(ring)] = bytearray(turn % 997 + 1)

    worker = gevent.spawn(busy)
    try:
        deadline = time.monotonic() + 20
        while not tracer.output.sinks or tracer.output.sinks[0].dropped < 3:
            assert time.monotonic() < deadline, "no records were dropped"
            gevent.sleep(interval)
        [sink] = tracer.output.sinks
        assert len(sink._queue) <= QUEUE_RECORDS
        before = tracemalloc.get_traced_memory()[0]
        more = sink.dropped + 12
        while sink.dropped < more:  # many more records, none kept
            assert time.monotonic() < deadline, "the tracer stopped sampling"
            gevent.sleep(interval)
        grown = tracemalloc.get_traced_memory()[0] - before
        assert len(sink._queue) <= QUEUE_RECORDS
        assert grown < 2**20, f"the traced process grew {grown} bytes while its viewer was stalled"
        assert worst[0] < 0.25, f"the hub was held up {worst[0]:.3f} s"
        # The viewer resumes: the gaps in the sequence are exactly the drops reported.
        samples = _samples(viewer, QUEUE_RECORDS + 10)
    finally:
        worker.kill()
        viewer.close()
    reported = [sample.dropped for sample in samples]
    assert sum(reported) >= 15
    for earlier, later in itertools.pairwise(samples):
        assert later.seq - earlier.seq - 1 == later.dropped


def test_a_write_error_ends_that_viewer_not_the_tracing(tracing: None) -> None:
    tracer = memtrace.start("listen:tcp://127.0.0.1:0", interval=INTERVAL)
    [url] = tracer.urls
    assert tracer.output is not None
    quitter = connect_url(url)
    with connect_url(url) as stayer:
        _samples(quitter, 1)
        quitter.close()  # the writer's next write fails
        _samples(stayer, 5)
        assert len(tracer.output.sinks) == 1
    assert memtrace.is_tracing()


def test_a_collector_is_reconnected_with_back_off(tracing: None, tmp_path: Path) -> None:
    path = str(tmp_path / "collector.sock")
    sessions: list[list[object]] = []
    enough = Event()

    def collect(flow: greenflow.Flow) -> None:
        records: list[object] = []
        sessions.append(records)
        for record in memtrace.read_trace(flow):
            records.append(record)
            if sum(isinstance(r, Sample) for r in records) == 2:
                enough.set()
                return  # the collector hangs up

    with greenflow.Server(collect, f"unix:{path}") as server:
        tracer = memtrace.start(f"unix:{path}", interval=INTERVAL)
        enough.wait(10)
        enough.clear()
        enough.wait(10)  # a second session: the tracer reconnected
        assert len(sessions) >= 2
        server.stop(0)
    # Nobody listens for a while; then a collector comes back at the same path.
    gevent.sleep(4 * INTERVAL)
    with greenflow.Server(collect, f"unix:{path}"):
        enough.clear()
        assert enough.wait(10), "records did not resume"
    assert isinstance(tracer.output, memtrace._sinks.CollectorOutput)
    assert tracer.output.connections >= 3
    for records in sessions:
        assert isinstance(records[0], Hello)


def test_a_flow_target_gets_hello_samples_and_end(tracing: None) -> None:
    ours, viewer = greenflow.socketpair()
    memtrace.start(ours, interval=INTERVAL, top=3)
    reader = gevent.spawn(lambda: list(memtrace.read_trace(viewer)))
    gevent.sleep(3 * INTERVAL)
    memtrace.stop()
    records = reader.get(timeout=10)
    viewer.close()
    assert isinstance(records[0], Hello) and records[0].pid == os.getpid()
    assert records[0].interval == INTERVAL and records[0].top == 3
    assert isinstance(records[-1], End) and records[-1].reason == "tracing stopped"
    assert all(isinstance(record, Sample) for record in records[1:-1]) and len(records) > 2


def test_start_checks_its_arguments(tracing: None) -> None:
    with pytest.raises(ValueError, match="interval must be more than 0"):
        memtrace.start("listen:tcp://127.0.0.1:0", interval=0)
    with pytest.raises(ValueError, match="frames must be 1 to 64"):
        memtrace.start("listen:tcp://127.0.0.1:0", frames=0)
    with pytest.raises(ValueError, match="top must be 1 to 1000"):
        memtrace.start("listen:tcp://127.0.0.1:0", top=0)
    with pytest.raises(ValueError, match="not a URL memtrace can connect to"):
        memtrace.start("http://example.com/")
    with pytest.raises(TypeError, match="not int"):
        memtrace.start(42)  # type: ignore[arg-type]
    assert not tracemalloc.is_tracing()  # a failed start leaves nothing behind
    memtrace.start("listen:tcp://127.0.0.1:0")
    with pytest.raises(RuntimeError, match="already tracing"):
        memtrace.start("listen:tcp://127.0.0.1:0")


def test_toggle_and_a_tracemalloc_that_was_already_on(tracing: None) -> None:
    tracemalloc.start()
    try:
        assert memtrace.toggle("listen:tcp://127.0.0.1:0", interval=INTERVAL) is True
        assert memtrace.is_tracing()
        assert memtrace.toggle("listen:tcp://127.0.0.1:0") is False
        assert tracemalloc.is_tracing()  # not ours to stop
    finally:
        tracemalloc.stop()


def test_frames_deeper_than_one_send_tracebacks(tracing: None) -> None:
    ours, viewer = greenflow.socketpair()
    keep = []
    memtrace.start(ours, interval=INTERVAL, frames=4)

    def nested() -> None:
        keep.append(bytearray(100_000))  # the nested line

    with viewer:
        records = memtrace.read_trace(viewer)
        next(record for record in records if isinstance(record, Sample))  # the baseline is taken
        nested()  # the calling line
        samples = [record for record, _ in zip(records, range(3), strict=False) if isinstance(record, Sample)]
    lines = Path(__file__).read_text().splitlines()
    inner = next(n for n, line in enumerate(lines, 1) if line.endswith("# the nested line"))
    outer = next(n for n, line in enumerate(lines, 1) if line.endswith("# the calling line"))
    sites = [site for sample in samples for site in sample.sites if site.frames[0] == (__file__, inner)]
    assert sites and sites[0].size >= 100_000
    assert sites[0].frames[1] == (__file__, outer)


# -- the switch hook ---------------------------------------------------------------------


def test_the_hook_chains_to_the_previous_trace_function_and_unhooks_in_turn() -> None:
    calls: list[str] = []

    def previous(event: str, args: object) -> None:
        calls.append(event)

    old = greenlet.settrace(previous)
    try:
        hook = SwitchAccounting()
        tracemalloc.start()
        hook.install()
        gevent.sleep(0)
        assert calls.count("switch") >= 2  # the previous function saw every switch
        assert greenlet.gettrace() is hook
        hook.uninstall()
        assert greenlet.gettrace() is previous
        # Someone chains after us: unhooking would cut them off, so we stay, passing events on.
        hook.install()
        later = SwitchAccounting()
        later.install()
        hook.uninstall()
        assert greenlet.gettrace() is later and later.previous is hook
        calls.clear()
        gevent.sleep(0)
        assert "switch" in calls
        hook.install()  # charging again, without installing twice
        assert later.previous is hook and hook.previous is previous
        hook.uninstall()
        later.uninstall()
        assert greenlet.gettrace() is hook
    finally:
        tracemalloc.stop()
        greenlet.settrace(old)


def test_greenlets_are_labelled_by_handler_and_peer() -> None:
    labels: list[str] = []

    def handler(flow: greenflow.Flow) -> None:
        labels.append(label_of(greenlet.getcurrent()))

    with greenflow.Server(handler, "tcp://127.0.0.1:0") as server:
        host, port = server.addresses[0][:2]  # type: ignore[index]
        with greenflow.connect_tcp(host, port) as client:
            client.read()
            local = client.socket.getsockname()
    here = f"{__name__}.test_greenlets_are_labelled_by_handler_and_peer.<locals>"
    assert labels == [f"{here}.handler from 127.0.0.1:{local[1]}"]

    def worker() -> str:
        return label_of(greenlet.getcurrent())

    assert gevent.spawn(worker).get() == f"{here}.worker"
    assert label_of(gevent.get_hub()) == "gevent hub"
    main = greenlet.getcurrent()
    while main.parent is not None:
        main = main.parent
    assert label_of(main) == "main greenlet"
    assert label_of(greenlet.greenlet(run=print, parent=main)) == "builtins.print"
    assert label_of(greenlet.greenlet(parent=main)) == "greenlet"


# -- gevent's blocked-loop monitor keeps working ---------------------------------------------

MONITORED = textwrap.dedent(
    """
    import sys, time
    import gevent, gevent.events, greenlet
    from greenflow import memtrace

    blocked = []
    gevent.events.subscribers.append(
        lambda event: blocked.append(event) if isinstance(event, gevent.events.EventLoopBlocked) else None
    )
    if sys.argv[1] == "gevent-first":
        gevent.sleep(0.01)  # the hub runs: gevent's monitor installs its trace function
        memtrace.start("listen:tcp://127.0.0.1:0", interval=0.02)
        assert type(greenlet.gettrace().previous).__name__ == "GreenletTracer"
    else:
        memtrace.start("listen:tcp://127.0.0.1:0", interval=0.02)
        gevent.sleep(0.01)
        assert greenlet.gettrace().previous_trace_function is memtrace._active._hook
    # A healthy loop, switching all the time: no report (a hook that did not
    # chain would leave gevent's switch counter still, and gevent would cry wolf).
    for _ in range(100):
        gevent.sleep(0.003)
    healthy = len(blocked)
    time.sleep(0.5)  # block the hub
    for _ in range(50):
        gevent.sleep(0.01)
    memtrace.stop()
    print(healthy, len(blocked))
    """
)


@pytest.mark.parametrize("order", ["gevent-first", "memtrace-first"])
def test_gevent_max_blocking_time_reports_still_fire(order: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GEVENT_MONITOR_THREAD_ENABLE": "true",
        "GEVENT_MAX_BLOCKING_TIME": "0.1",
    }
    result = subprocess.run(
        [sys.executable, "-c", MONITORED, order], capture_output=True, text=True, timeout=30, env=env
    )
    assert result.returncode == 0, result.stderr
    healthy, blocked = map(int, result.stdout.split())
    assert healthy == 0, result.stderr
    assert blocked >= 1, result.stderr


def test_a_greenlet_is_not_charged_for_greenlets_copy_of_its_stack() -> None:
    def deep(depth: int, other: greenlet.greenlet) -> None:
        if depth:
            return deep(depth - 1, other)
        for _ in range(1000):
            other.switch()
        return None

    def idle() -> None:
        while True:
            deep_one.switch()

    tracemalloc.start()
    hook = SwitchAccounting()
    try:
        hook.install()
        partner = greenlet.greenlet(idle)
        deep_one = greenlet.greenlet(deep)
        deep_one.switch(30, partner)
        charges = hook.take()
    finally:
        hook.uninstall()
        tracemalloc.stop()
    assert deep_one.dead
    # 1000 switches out of a deep stack: uncorrected, each would charge the copy (kilobytes).
    assert abs(charges[deep_one][1]) < 20_000, charges[deep_one]
    assert abs(charges[partner][1]) < 20_000, charges[partner]


def test_the_public_names_and_that_import_greenflow_loads_none_of_it() -> None:
    assert set(memtrace.__all__) == {
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
    }
    for name in memtrace.__all__:
        assert getattr(memtrace, name) is not None
    code = (
        "import sys, greenflow; "
        "assert 'greenflow.memtrace' not in sys.modules and 'rich' not in sys.modules; "
        "import greenflow.memtrace; "
        "assert 'rich' not in sys.modules and 'matplotlib' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_a_tls_listener_serves_its_viewers_over_tls(tracing: None) -> None:
    """Found in review: the viewers' accept loop skipped the listener's layers (TLS went out in clear)."""
    from greenflow import tls

    from tls_helpers import contexts, shared_certs

    client_ctx, server_ctx = contexts(shared_certs())
    listener = tls.TLSListener(greenflow.listen_tcp("127.0.0.1", 0), server_ctx, handshake_timeout=5)
    host, port = listener.address[:2]
    tracer = memtrace.start(listener, interval=INTERVAL)
    with greenflow.connect_tcp(host, port, timeout=5) as plain:
        plain.write(b"not a ClientHello\r\n\r\n")
        first = b""
        with contextlib.suppress(greenflow.BrokenError):  # an alert, an EOF or a reset: all fine
            first = plain.read()
        assert not first.startswith(b"GFMTRACE"), "a plain client was sent the trace in clear"
    with tls.connect_tls("localhost", port, client_ctx, timeout=5) as secured:
        [sample] = _samples(secured, 1)
        assert sample.seq >= 0
    memtrace.stop()
    assert tracer.output is not None
