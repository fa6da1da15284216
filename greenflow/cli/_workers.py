"""``greenflow serve --workers N``: the handler in N worker processes under a supervisor."""

from __future__ import annotations

import argparse
import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..addresses import Endpoint, Scheme
from ..handlers import BUILTIN_HANDLERS
from ..listener import Listener
from ..server import Handler
from ._common import USAGE, CommandError, positive_int, say, seconds

if TYPE_CHECKING:
    from OpenSSL import SSL

__all__ = ["add_worker_arguments", "check_worker_arguments", "serve_with_workers"]


def add_worker_arguments(serve: argparse.ArgumentParser) -> None:
    """Add ``--workers``, ``--worker-timeout``, ``--max-requests`` and its jitter."""
    from ..workers import DEFAULT_WORKER_TIMEOUT  # noqa: PLC0415 - kept out of the plain command's imports

    group = serve.add_argument_group(
        "worker processes (all cores; SIGHUP reloads, SIGTTIN or SIGTTOU adds or removes one)"
    )
    group.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="run the handler in N worker processes sharing the listeners, under a supervisor"
        " (default: one process, no supervisor)",
    )
    group.add_argument(
        "--worker-timeout",
        type=seconds,
        default=DEFAULT_WORKER_TIMEOUT,
        metavar="SECONDS",
        help="kill and replace a worker whose event loop has not run for this long"
        f" (SIGABRT with a traceback, then SIGKILL; default {DEFAULT_WORKER_TIMEOUT:g})",
    )
    group.add_argument(
        "--max-requests",
        dest="worker_max_requests",
        type=int,
        default=0,
        metavar="N",
        help="recycle a worker after it has served N connections (default 0: never)",
    )
    group.add_argument(
        "--max-requests-jitter",
        dest="worker_max_requests_jitter",
        type=int,
        default=0,
        metavar="N",
        help="add up to N to each worker's --max-requests, so that workers do not recycle at once",
    )


def check_worker_arguments(args: argparse.Namespace) -> None:
    """The worker options make sense together, or a usage error saying why."""
    if args.workers is None:
        for option, name in (
            ("--max-requests", "worker_max_requests"),
            ("--max-requests-jitter", "worker_max_requests_jitter"),
        ):
            if getattr(args, name):
                raise CommandError(f"{option} applies with --workers only", USAGE)
    elif getattr(args, "memtrace", None):
        raise CommandError("--memtrace traces one process: it does not apply with --workers", USAGE)
    if args.worker_max_requests < 0 or args.worker_max_requests_jitter < 0:
        raise CommandError("--max-requests and --max-requests-jitter must be at least 0", USAGE)
    if args.worker_timeout <= 0:
        raise CommandError("--worker-timeout must be more than 0 seconds", USAGE)


def serve_with_workers(
    args: argparse.Namespace,
    make_context: Callable[[contextlib.ExitStack], SSL.Context | None],
    make_listeners: Callable[[contextlib.ExitStack, SSL.Context | None], list[Listener]],
    server_options: dict[str, object],
    endpoints: list[Endpoint],
) -> int:
    """Run the supervisor; returns the exit status.

    The supervisor never imports the handler (each worker does, so that a
    reload loads the code afresh): here its name is only checked for form.
    """
    from ..workers import Supervisor  # noqa: PLC0415

    spec = args.handler
    loader = None
    if getattr(args, "wsgi", None) is not None:  # each worker loads the application afresh
        from ._wsgi import wsgi_handler  # noqa: PLC0415

        spec, loader = args.wsgi, functools.partial(_wsgi_loader, wsgi_handler, args)
    elif spec not in BUILTIN_HANDLERS and not _looks_like_a_handler(spec):
        raise CommandError(
            f"cannot load the handler {spec!r}: expected MODULE:FUNCTION, or echo or discard", USAGE
        )
    with contextlib.ExitStack() as cleanup:
        context = make_context(cleanup)  # here, once: every worker has the same certificate
        listeners: Sequence[Listener] | Callable[[], Sequence[Listener]]
        if args.reuse_port:
            _check_fixed_ports(endpoints)
            listeners = _PerWorker(make_listeners, cleanup, context)
            for endpoint in endpoints:
                say(f"listening on {_layered_url(str(endpoint), args)} (SO_REUSEPORT, a socket per worker)")
        else:
            listeners = make_listeners(cleanup, context)
            for listener in listeners:
                say(f"listening on {listener.url}")
        supervisor = Supervisor(
            spec,
            listeners,
            workers=args.workers,
            worker_timeout=args.worker_timeout,
            max_requests=args.worker_max_requests,
            max_requests_jitter=args.worker_max_requests_jitter,
            grace=args.grace,
            server_options=server_options,
            handler_loader=loader,
        )
        status = supervisor.run()
    say("stopped" if status == 0 else "no worker could start: stopped")
    return status


class _PerWorker:
    """Opens a worker's own listeners, in the worker (per-worker SO_REUSEPORT sockets)."""

    def __init__(
        self,
        make: Callable[[contextlib.ExitStack, SSL.Context | None], list[Listener]],
        cleanup: contextlib.ExitStack,
        context: SSL.Context | None,
    ) -> None:
        self._make = make
        self._cleanup = cleanup
        self._context = context

    def __call__(self) -> list[Listener]:
        return self._make(self._cleanup, self._context)


def _wsgi_loader(make: Callable[[argparse.Namespace], Handler | None], args: argparse.Namespace) -> Handler:
    handler = make(args)
    assert handler is not None  # with --wsgi, make() gives a handler or raises
    return handler


def _looks_like_a_handler(spec: str) -> bool:
    module, colon, attribute = spec.partition(":")
    return bool(colon and module and attribute)


def _check_fixed_ports(endpoints: list[Endpoint]) -> None:
    for endpoint in endpoints:
        if endpoint.scheme not in (Scheme.TCP, Scheme.TLS):
            raise CommandError(
                f"--reuse-port with --workers gives each worker a TCP socket; {endpoint} is not TCP",
                USAGE,
            )
        if endpoint.port == 0:
            raise CommandError(
                f"--reuse-port with --workers needs a fixed port: {endpoint} gives each worker its own",
                USAGE,
            )


def _layered_url(url: str, args: argparse.Namespace) -> str:
    if not args.proxy_protocol:
        return url
    scheme, colon, rest = url.partition(":")
    return ("tcp+proxy+tls" if scheme == "tls" else "tcp+proxy") + colon + rest
