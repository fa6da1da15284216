"""Where the records go: viewers, each fed by its own bounded queue and writer.

The sampler never writes to a flow. It *offers* each record to every
:class:`Sink`; a sink keeps at most :data:`QUEUE_RECORDS` records (each at
most 32 KiB encoded, so a viewer costs the traced process a bounded amount
of memory) and one writer greenlet per sink drains them to the viewer's
flow. A viewer that reads slowly, or not at all, blocks only its own writer;
the oldest queued records are dropped and counted, and the count goes out
in the next record that is written to it (the one right after the gap). A write error ends that viewer only.

Three kinds of output feed sinks:

- :class:`FlowOutput`: one flow given by the caller; when it fails, it is
  gone (the tracer goes on, with nobody to tell).
- :class:`CollectorOutput`: connects to a collector's URL (``greenflow
  memtrace listen``); when the connection fails or ends it connects again,
  with back-off, and records resume.
- :class:`ListenOutput`: listens on a URL; each viewer that connects
  (``greenflow memtrace connect``) gets a sink of its own, and viewers may
  come and go, several at once.

Fork safety: :meth:`Output.abandon` runs in a forked child (see
``_tracer``); it closes the child's copies of the descriptors, which leaves
the parent's connections as they were, and marks every sink so that no
writer in the child ever writes again.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import errno
import logging
import os
from collections.abc import Callable
from typing import Final

import gevent
from gevent.event import Event
from gevent.socket import wait_read

from ..addresses import Endpoint, Scheme, parse_url
from ..errors import FlowError
from ..flow import Flow
from ..listeners import Listener, listen_url
from ..sockets import connect_tcp, connect_unix
from ._format import Hello, Record, Sample, encode, preamble

__all__ = [
    "QUEUE_RECORDS",
    "CollectorOutput",
    "FlowOutput",
    "ListenOutput",
    "Output",
    "Sink",
    "connect_url",
]

log = logging.getLogger("greenflow.memtrace")

#: The most records a viewer's queue holds; more are dropped and counted.
QUEUE_RECORDS: Final = 16

#: Reconnecting to a collector waits this long first, doubling up to the cap.
MIN_BACKOFF: Final = 0.05
MAX_BACKOFF: Final = 5.0

#: How long connecting to a collector may take.
CONNECT_TIMEOUT: Final = 5.0


def check_dial_url(url: str) -> Endpoint:
    """Parse ``tcp://HOST:PORT`` or ``unix:/path`` (the URLs memtrace dials), or raise ValueError."""
    endpoint = parse_url(url, kind="a URL memtrace can connect to")
    if endpoint.scheme not in (Scheme.TCP, Scheme.UNIX):
        raise ValueError(f"{url!r} is not a URL memtrace can connect to (tcp://HOST:PORT or unix:/PATH)")
    return endpoint


def connect_url(url: str, *, timeout: float | None = CONNECT_TIMEOUT) -> Flow:
    """Connect to ``tcp://HOST:PORT`` or ``unix:/path``: the one place memtrace dials a URL.

    Raises:
        ValueError: the URL is neither.
        FlowError: the connection failed.
    """
    endpoint = check_dial_url(url)
    if endpoint.scheme is Scheme.UNIX:
        return connect_unix(endpoint.path, timeout=timeout)
    return connect_tcp(endpoint.host, endpoint.port, connect_timeout=timeout)


class SinkState(enum.Enum):
    OPEN = "open"
    ENDED = "ended"


class Sink:
    """One viewer: a bounded queue of records and the loop that writes them.

    ``run()`` is the writer; it runs in a greenlet of its own (the caller's,
    for outputs that already have one) and returns when the viewer is gone.
    """

    def __init__(self, flow: Flow, hello: Hello) -> None:
        self.flow = flow
        self.state = SinkState.OPEN
        self.dropped = 0
        self._hello = hello
        self._queue: collections.deque[Record] = collections.deque()
        self._ready = Event()
        self._idle = Event()  # set while the writer waits on an empty queue
        self._pid = os.getpid()

    def offer(self, record: Record) -> None:
        """Queue a record; if the queue is full, drop its oldest and count it. Never blocks.

        Dropping the oldest keeps what a viewer sees when it catches up fresh,
        and puts every gap right before the record that reports it.
        """
        if self.state is not SinkState.OPEN:
            return
        if len(self._queue) >= QUEUE_RECORDS:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(record)
        self._idle.clear()
        self._ready.set()

    def run(self) -> None:
        """Write the preamble, the HELLO and then every queued record, until the viewer goes."""
        try:
            self.flow.writev([preamble(), encode(self._hello)])
            while self.state is SinkState.OPEN:
                if not self._queue:
                    self._idle.set()
                    self._ready.clear()
                    self._ready.wait()
                    continue
                record = self._queue.popleft()
                if isinstance(record, Sample) and self.dropped:
                    record = dataclasses.replace(record, dropped=self.dropped)
                    self.dropped = 0
                if self.state is not SinkState.OPEN or os.getpid() != self._pid:
                    break  # ended meanwhile, or a forked child: never write to the parent's viewer
                self.flow.write(encode(record))
        except (FlowError, OSError) as exc:
            if self.state is SinkState.OPEN:
                log.info("memtrace viewer gone: %s", exc)
        finally:
            self.end()

    def end(self) -> None:
        """Stop writing and close the flow (idempotent); wakes the writer."""
        self.state = SinkState.ENDED
        self._queue.clear()
        self._ready.set()
        self.flow.close()

    def finish(self, timeout: float) -> None:
        """Let the writer send what is queued (within ``timeout``), then end."""
        if self.state is SinkState.OPEN and not self._idle.is_set():
            self._idle.wait(timeout)
        self.end()


class OutputState(enum.Enum):
    RUNNING = "running"
    CLOSED = "closed"


class Output:
    """What the tracer hands records to; subclasses say where sinks come from."""

    def __init__(self, hello: Hello) -> None:
        self.hello = hello
        self.sinks: list[Sink] = []
        self.state = OutputState.RUNNING
        self._greenlets: list[gevent.Greenlet] = []  # type: ignore[type-arg]

    @property
    def greenlets(self) -> list[gevent.Greenlet]:  # type: ignore[type-arg]
        """The greenlets working for this output (the tracer does not charge them)."""
        return self._greenlets

    def offer(self, record: Record) -> None:
        for sink in list(self.sinks):
            sink.offer(record)

    def _spawn(self, function: Callable[..., object], *args: object) -> gevent.Greenlet:  # type: ignore[type-arg]
        glet = gevent.spawn(function, *args)
        self._greenlets.append(glet)
        glet.link(self._greenlets.remove)
        return glet

    def _serve(self, sink: Sink) -> None:
        self.sinks.append(sink)
        try:
            sink.run()
        finally:
            self.sinks.remove(sink)

    def close(self, timeout: float = 1.0) -> None:
        """Send what is queued (an END record, typically), then close everything."""
        self.state = OutputState.CLOSED
        for sink in list(self.sinks):
            sink.finish(timeout)
        gevent.killall(list(self._greenlets), timeout=timeout)

    def abandon(self) -> None:
        """In a forked child: close the child's descriptors, write nothing ever again."""
        self.state = OutputState.CLOSED
        for sink in list(self.sinks):
            sink.end()


class FlowOutput(Output):
    """Records to one flow, until it fails."""

    def __init__(self, hello: Hello, flow: Flow) -> None:
        super().__init__(hello)
        self._spawn(self._serve, Sink(flow, hello))


class CollectorOutput(Output):
    """Records to a collector's URL, reconnecting with back-off."""

    def __init__(self, hello: Hello, url: str) -> None:
        check_dial_url(url)  # now, so that start() fails on a bad URL
        super().__init__(hello)
        self.url = url
        self.connections = 0
        self._spawn(self._run)

    def _run(self) -> None:
        backoff = MIN_BACKOFF
        while self.state is OutputState.RUNNING:
            try:
                flow = connect_url(self.url)
            except (FlowError, OSError) as exc:
                log.debug("memtrace: cannot reach the collector at %s: %s", self.url, exc)
                gevent.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            if self.state is not OutputState.RUNNING:  # closed (or forked) while connecting
                flow.close()
                return
            backoff = MIN_BACKOFF
            self.connections += 1
            self._serve(Sink(flow, self.hello))


class ListenOutput(Output):
    """Viewers connect to the traced process; each gets its own sink."""

    def __init__(self, hello: Hello, where: str | Listener) -> None:
        super().__init__(hello)
        self.listeners: list[Listener] = [where] if isinstance(where, Listener) else listen_url(where)
        if not self.listeners:
            raise ValueError(f"{where} found no socket to listen on")
        self._acceptors = [self._spawn(self._accept, listener) for listener in self.listeners]

    @property
    def urls(self) -> list[str]:
        """Where viewers connect (with the real port when port 0 was asked)."""
        return [listener.url for listener in self.listeners]

    def _accept(self, listener: Listener) -> None:
        while self.state is OutputState.RUNNING:
            try:
                sock, _ = listener.socket.accept()
            except BlockingIOError:
                wait_read(listener.fileno())
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("memtrace: cannot accept a viewer on %s: %s", listener.url, exc)
                    gevent.sleep(MAX_BACKOFF / 10)
                    continue
                if self.state is not OutputState.RUNNING:
                    return
                log.debug("memtrace: a viewer's connection failed on %s: %s", listener.url, exc)
                continue
            self._spawn(self._welcome, listener, listener.open_flow(sock, None))

    def _welcome(self, listener: Listener, flow: Flow) -> None:
        """A viewer's own greenlet: the listener's layers first (a TLS handshake), then the trace."""
        try:
            established = listener.establish(flow)
        except FlowError as exc:
            flow.close()
            log.info("memtrace: a viewer on %s could not connect: %s", listener.url, exc)
            return
        self._serve(Sink(established, self.hello))

    def close(self, timeout: float = 1.0) -> None:
        super().close(timeout)
        for listener in self.listeners:
            listener.close()

    def abandon(self) -> None:
        super().abandon()
        # The accept loops wait on watchers of the listening descriptors: they
        # end first (at the child's next loop turn), and then the descriptors
        # are closed, the child's copies only: the parent keeps listening, and
        # the socket file stays (Listener.close would remove it).
        gevent.killall(self._acceptors, block=False)
        gevent.spawn(self._forget_listeners)

    def _forget_listeners(self) -> None:
        gevent.joinall(self._acceptors)
        for listener in self.listeners:
            if listener.fileno() >= 0:
                os.close(listener.socket.detach())
