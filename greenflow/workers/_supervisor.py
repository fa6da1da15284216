"""The supervisor: forks the workers, watches their heartbeats, turns signals into actions.

Theory of operation
-------------------

The supervisor is a plain blocking loop in the parent process, with no
gevent hub of its own at work: a forked child inherits everything its
parent's hub was doing, so the parent keeps nothing there. Each turn of the
loop waits in ``select()`` on the workers' pipes and on the signal wake-up
descriptor (``signal.set_wakeup_fd``), until the nearest deadline, then:

1. handles the signals that came (queued by tiny Python handlers);
2. reads what the workers wrote (``R`` ready, ``.`` heartbeat, ``M``
   recycling, ``F`` + traceback: failed to start; see ``_child``);
3. reaps the workers that exited (``waitpid`` with ``WNOHANG``);
4. kills the workers whose hub has not beaten for ``worker_timeout``
   seconds: SIGABRT first (``faulthandler`` prints their traceback), SIGKILL
   :data:`KILL_AFTER` seconds later if one is still there;
5. starts workers until the serving generation has its number again
   (unless it backs off after start failures), or, when stopping, returns
   once every worker has exited.

A worker moves one way through :class:`WorkerState`::

    STARTING --R--> READY --SIGTERM or M--> RETIRING --exit--> (reaped)
    any --heartbeat missed--> KILLED --exit--> (reaped)

A reload (SIGHUP) starts a whole new generation next to the serving one.
When all its workers are ``READY``, the old ones retire (each drains as
:meth:`greenflow.Server.stop` does); if one of them fails to start, the new
generation is stopped instead and the old one goes on serving.

A worker that fails before it is ready is reported with its traceback once:
the same failure again is one short line. The next start waits, doubling
from :data:`MIN_BACKOFF` to :data:`MAX_BACKOFF` seconds; if no worker has
ever started and :data:`GIVE_UP_AFTER` starts in a row failed, the handler
will not load: the supervisor stops and :meth:`Supervisor.run` returns 1.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import random
import select
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from ..server import DEFAULT_GRACE, Handler
from ..server._stop import KILL_WAIT
from ._child import FAILED, READY, RECYCLING, SUPERVISOR_SIGNALS, ListenerSource, WorkerSpec, run_worker

__all__ = [
    "DEFAULT_WORKER_TIMEOUT",
    "GIVE_UP_AFTER",
    "KILL_AFTER",
    "MAX_BACKOFF",
    "MIN_BACKOFF",
    "Supervisor",
    "WorkerState",
]

log = logging.getLogger("greenflow.workers")

#: Seconds a worker's hub may go without a heartbeat before it is killed.
DEFAULT_WORKER_TIMEOUT: Final = 30.0
#: Seconds between SIGABRT and SIGKILL for a worker that stopped answering.
KILL_AFTER: Final = 0.5
#: The first and the longest wait before starting a worker after start failures.
MIN_BACKOFF: Final = 0.1
MAX_BACKOFF: Final = 10.0
#: Start failures in a row, with no worker ever started, after which the supervisor gives up.
GIVE_UP_AFTER: Final = 3
#: Extra seconds a stopping worker gets past its grace period before SIGKILL.
STOP_MARGIN: Final = KILL_WAIT + 4.0


class WorkerState(enum.Enum):
    """Where a worker process stands; see the module's theory of operation."""

    STARTING = "starting"
    READY = "ready"
    RETIRING = "retiring"
    KILLED = "killed"


class _Phase(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"


@dataclass(eq=False)
class _Worker:
    pid: int
    pipe: int
    generation: int
    last_beat: float
    state: WorkerState = WorkerState.STARTING
    deadline: float | None = None  # SIGKILL at this time (KILLED, or RETIRING past its grace)
    failure: bytearray | None = None
    inbox: bytearray = field(default_factory=bytearray)


class Supervisor:
    """Runs a handler in worker processes that share listening sockets.

    Args:
        handler: ``MODULE:FUNCTION`` (or ``echo``/``discard``), imported in
            each worker and never in the supervisor, so that a reload's
            workers load the code afresh; or a callable (inherited by the
            fork as it is: a reload then reloads nothing).
        listeners: the listeners, bound here and shared by every worker
            (the default: a worker's exit loses no queued connection); or a
            function each worker calls to open its own (for per-worker
            ``SO_REUSEPORT`` sockets: the kernel spreads connections evenly,
            but those queued on a worker that exits are reset).
        workers: how many worker processes to run.
        worker_timeout: seconds a worker's hub may go without a heartbeat
            before the worker is killed (SIGABRT, then SIGKILL) and replaced.
        max_requests: recycle a worker after it has served this many
            connections (0: never), plus up to ``max_requests_jitter`` more,
            drawn per worker, so that the workers do not all restart at once.
        grace: the grace period of each worker's graceful stop.
        server_options: more keyword arguments for each worker's
            :class:`~greenflow.Server` (``timeout``, ``max_connections``...).
        handler_loader: a function each worker calls to make its handler
            (a WSGI application's, say), instead of importing ``handler``,
            which then only names it in the logs.

    :meth:`run` serves until SIGTERM or SIGINT. SIGHUP reloads, SIGTTIN adds
    a worker and SIGTTOU removes one. The supervisor serves no connection.
    It owns shared listeners from now on and closes them when :meth:`run`
    returns. A worker's start counts against ``worker_timeout`` too (it
    beats only once it serves).
    """

    def __init__(
        self,
        handler: str | Handler,
        listeners: ListenerSource,
        *,
        workers: int = 1,
        worker_timeout: float = DEFAULT_WORKER_TIMEOUT,
        max_requests: int = 0,
        max_requests_jitter: int = 0,
        grace: float = DEFAULT_GRACE,
        server_options: Mapping[str, object] | None = None,
        handler_loader: Callable[[], Handler] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"a supervisor runs at least 1 worker, not {workers}")
        if not worker_timeout > 0:
            raise ValueError(f"worker_timeout must be more than 0 seconds, not {worker_timeout!r}")
        if max_requests < 0 or max_requests_jitter < 0:
            raise ValueError("max_requests and max_requests_jitter must be at least 0")
        if not callable(listeners) and not listeners:
            raise ValueError("a supervisor needs at least one listener")
        options = dict(server_options or {})
        options["grace"] = grace
        self._spec = WorkerSpec(handler, listeners, options, min(1.0, worker_timeout / 4), handler_loader)
        self._target = workers
        self._timeout = worker_timeout
        self._grace = grace
        self._max_requests = max_requests
        self._jitter = max_requests_jitter
        self._workers: dict[int, _Worker] = {}
        self._generation = 0  # the serving one
        self._reload: int | None = None  # the generation a reload is starting
        self._phase = _Phase.RUNNING
        self._signals: list[int] = []
        self._wake = (-1, -1)
        self._ever_ready = False
        self._failures_in_a_row = 0
        self._backoff = 0.0
        self._next_start = 0.0
        self._last_failure: bytes | None = None
        self._gave_up = False

    @property
    def handler_name(self) -> str:
        """The handler as the logs name it."""
        handler = self._spec.handler
        return handler if isinstance(handler, str) else getattr(handler, "__qualname__", repr(handler))

    @property
    def pids(self) -> list[int]:
        """The process ids of the workers now running."""
        return sorted(self._workers)

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; returns the exit status (0, or 1 if no worker ever started).

        Blocks the whole process (the supervisor is the process's main loop)
        and must run in the main thread, where signals are delivered.
        """
        previous = self._install_signals()
        try:
            log.info(
                "supervisor %d: starting %d worker(s) of %s", os.getpid(), self._target, self.handler_name
            )
            while self._phase is _Phase.RUNNING or self._workers:
                self._turn()
        finally:
            self._restore_signals(previous)
            self._end_all()
        if self._gave_up or not self._ever_ready:
            return 1
        log.info("supervisor %d: stopped", os.getpid())
        return 0

    def _turn(self) -> None:
        self._maintain()
        now = time.monotonic()
        wait = max(0.0, self._next_deadline() - now)
        pipes = [worker.pipe for worker in self._workers.values()]
        try:
            readable, _, _ = select.select([self._wake[0], *pipes], [], [], wait)
        except InterruptedError:  # pragma: no cover - PEP 475 retries select itself
            readable = []
        if self._wake[0] in readable:
            _drain(self._wake[0])
        self._handle_signals()
        by_pipe = {worker.pipe: worker for worker in self._workers.values()}
        for fd in readable:
            if fd in by_pipe:
                self._read(by_pipe[fd])
        self._reap()
        self._check_heartbeats()

    def _next_deadline(self) -> float:
        now = time.monotonic()
        deadlines = [now + 1.0]
        for worker in self._workers.values():
            if worker.deadline is not None:
                deadlines.append(worker.deadline)
            if worker.state is not WorkerState.KILLED:
                deadlines.append(worker.last_beat + self._timeout)
        if self._phase is _Phase.RUNNING and self._missing() > 0:
            deadlines.append(self._next_start)
        return min(deadlines)

    # -- signals -----------------------------------------------------------------------

    def _install_signals(self) -> dict[int, object]:
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        self._wake = (read_end, write_end)
        previous: dict[int, object] = {}
        for signum in SUPERVISOR_SIGNALS:
            previous[signum] = signal.signal(signum, self._queue_signal)
        previous[-1] = signal.set_wakeup_fd(write_end)
        return previous

    def _restore_signals(self, previous: dict[int, object]) -> None:
        signal.set_wakeup_fd(previous.pop(-1))  # type: ignore[arg-type]
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        for fd in self._wake:
            os.close(fd)
        self._wake = (-1, -1)

    def _queue_signal(self, signum: int, frame: object) -> None:
        if signum != signal.SIGCHLD:  # the reaping runs every turn anyway
            self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            name = signal.Signals(signum).name
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.stop(name)
            elif self._phase is _Phase.STOPPING:
                log.info("%s: ignored, stopping", name)
            elif signum == signal.SIGHUP:
                self.reload()
            elif signum == signal.SIGTTIN:
                self._target += 1
                log.info("SIGTTIN: %d worker(s) now", self._target)
            else:
                self._target = max(1, self._target - 1)
                log.info("SIGTTOU: %d worker(s) now", self._target)

    # -- actions -----------------------------------------------------------------------

    def stop(self, why: str = "stop") -> None:
        """Stop every worker gracefully; :meth:`run` returns once they have exited."""
        if self._phase is _Phase.STOPPING:
            log.info("%s: already stopping", why)
            return
        self._phase = _Phase.STOPPING
        log.info("%s: stopping %d worker(s) (grace period %g s)", why, len(self._workers), self._grace)
        for worker in list(self._workers.values()):
            self._retire(worker)

    def reload(self) -> None:
        """Start a new generation of workers; the serving one retires once it is ready."""
        if self._reload is not None:
            log.info("SIGHUP: a reload is already under way")
            return
        self._reload = self._generation + 1
        log.info("SIGHUP: reloading: starting %d new worker(s) of %s", self._target, self.handler_name)
        for _ in range(self._target):
            self._start(self._reload)

    def _maintain(self) -> None:
        """Start what is missing, retire what is too many, finish a reload that is ready."""
        if self._phase is not _Phase.RUNNING:
            return
        if self._reload is not None:
            self._check_reload()
        now = time.monotonic()
        while self._missing() > 0 and now >= self._next_start:
            self._start(self._generation)
            if self._backoff:
                self._next_start = now + self._backoff
                break
        serving = self._serving()
        for worker in serving[self._target :]:
            self._retire(worker)

    def _serving(self) -> list[_Worker]:
        """The serving generation's live workers, ready ones first, oldest first."""
        live = [
            w
            for w in self._workers.values()
            if w.generation == self._generation and w.state in (WorkerState.STARTING, WorkerState.READY)
        ]
        return sorted(live, key=lambda w: (w.state is not WorkerState.READY, w.pid))

    def _missing(self) -> int:
        if self._reload is not None:
            return 0  # a reload starts its own workers
        return self._target - len(self._serving())

    def _check_reload(self) -> None:
        new = [w for w in self._workers.values() if w.generation == self._reload]
        if all(w.state is WorkerState.READY for w in new) and len(new) >= self._target:
            old = [w for w in self._workers.values() if w.generation != self._reload]
            log.info("reload: %d new worker(s) ready; the old ones drain", len(new))
            self._generation, self._reload = self._reload, None  # type: ignore[assignment]
            for worker in old:
                self._retire(worker)

    def _reload_failed(self) -> None:
        log.error("reload failed: a new worker did not start; the old workers go on serving")
        for worker in [w for w in self._workers.values() if w.generation == self._reload]:
            self._retire(worker)
        self._reload = None

    def _start(self, generation: int) -> None:
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        limit = self._max_requests + random.randint(0, self._jitter) if self._max_requests else 0
        inherited = [read_end, *self._wake, *(w.pipe for w in self._workers.values())]
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; its coverage is its own process's
            run_worker(self._spec, write_end, limit, inherited)
        os.close(write_end)
        self._workers[pid] = _Worker(pid, read_end, generation, time.monotonic())
        log.debug("worker %d started (generation %d)", pid, generation)

    def _retire(self, worker: _Worker) -> None:
        if worker.state in (WorkerState.RETIRING, WorkerState.KILLED):
            return
        worker.state = WorkerState.RETIRING
        worker.deadline = time.monotonic() + self._grace + STOP_MARGIN
        _signal(worker.pid, signal.SIGTERM)

    # -- what the workers say and do ---------------------------------------------------

    def _read(self, worker: _Worker) -> None:
        try:
            data = os.read(worker.pipe, 65536)
        except BlockingIOError:
            return
        if not data:
            return  # the end; the exit is reaped
        # Any byte is a sign of life: heartbeats (BEAT) carry nothing else.
        worker.last_beat = time.monotonic()
        if worker.failure is not None:
            worker.failure += data
            return
        head, marker, tail = data.partition(FAILED)
        if marker:
            worker.failure = bytearray(tail)
        if READY in head and worker.state is WorkerState.STARTING:
            worker.state = WorkerState.READY
            self._ever_ready = True
            self._failures_in_a_row = 0
            self._backoff = 0.0
            log.info("worker %d ready", worker.pid)
        if RECYCLING in head:
            log.info("worker %d served its max_requests; it stops and a new one starts", worker.pid)
            self._retire(worker)

    def _reap(self) -> None:
        while self._workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._workers.pop(pid, None)
            if worker is None:
                continue
            self._exited(worker, status)

    def _exited(self, worker: _Worker, status: int) -> None:
        while True:  # what it wrote before it exited
            before = len(worker.failure or b"")
            self._read(worker)
            if len(worker.failure or b"") == before:
                break
        os.close(worker.pipe)
        code = os.waitstatus_to_exitcode(status)
        if worker.state is WorkerState.STARTING:
            self._start_failed(worker, code)
        elif worker.state is WorkerState.READY and self._phase is _Phase.RUNNING:
            log.warning("worker %d exited unexpectedly (%s); starting another", worker.pid, _describe(code))
        else:
            log.debug("worker %d exited (%s)", worker.pid, _describe(code))

    def _start_failed(self, worker: _Worker, code: int) -> None:
        failure = bytes(worker.failure or b"").strip() or f"it exited ({_describe(code)})".encode()
        self._failures_in_a_row += 1
        self._backoff = min(MAX_BACKOFF, max(MIN_BACKOFF, self._backoff * 2))
        self._next_start = time.monotonic() + self._backoff
        if failure != self._last_failure:
            self._last_failure = failure
            log.error("worker %d failed to start:\n%s", worker.pid, failure.decode("utf-8", "replace"))
        else:
            log.error("worker %d failed to start (the same error as before)", worker.pid)
        if worker.generation == self._reload:
            self._reload_failed()
        if not self._ever_ready and self._failures_in_a_row >= GIVE_UP_AFTER and not self._gave_up:
            self._gave_up = True
            log.error("no worker could start (%d tries); giving up", self._failures_in_a_row)
            self.stop("giving up")
        elif self._phase is _Phase.RUNNING:
            log.info("the next worker starts in %.1f s", self._backoff)

    def _check_heartbeats(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers.values()):
            if worker.deadline is not None and now >= worker.deadline:
                log.error("worker %d is still there %s; SIGKILL", worker.pid, _late(worker.state))
                _signal(worker.pid, signal.SIGKILL)
                worker.deadline = None
            elif worker.state is not WorkerState.KILLED and now - worker.last_beat >= self._timeout:
                log.error(
                    "worker %d (handler %s) did not answer for %.1f s, over the worker timeout of %g s;"
                    " SIGABRT (its traceback follows on stderr), then SIGKILL",
                    worker.pid,
                    self.handler_name,
                    now - worker.last_beat,
                    self._timeout,
                )
                worker.state = WorkerState.KILLED
                worker.deadline = now + KILL_AFTER
                _signal(worker.pid, signal.SIGABRT)

    def _end_all(self) -> None:
        """On the way out (normal or not): no worker is left behind; pipes closed."""
        for worker in self._workers.values():
            _signal(worker.pid, signal.SIGKILL)
            os.waitpid(worker.pid, 0)
            os.close(worker.pipe)
        self._workers.clear()
        if not callable(self._spec.listeners):
            for listener in self._spec.listeners:
                listener.close()


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
    except OSError as exc:  # pragma: no cover - our own child: EPERM cannot happen
        if exc.errno != errno.ESRCH:
            raise


def _describe(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"status {code}"


def _late(state: WorkerState) -> str:
    return "after its SIGABRT" if state is WorkerState.KILLED else "past its grace period"
