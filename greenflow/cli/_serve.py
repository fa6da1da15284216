"""``greenflow serve``: load the handler, make the listeners, run the server until a signal."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Final

import gevent

from ..addresses import Endpoint, parse_url
from ..errors import FlowError
from ..handlers import BUILTIN_HANDLERS
from ..listeners import Listener, listen_url
from ..server import Handler, Server, default_max_connections
from ._common import USAGE, CommandError, describe_error, load_tls_context, say
from ._proxy import check_proxy_arguments, with_proxy_protocol
from ._workers import check_worker_arguments, serve_with_workers
from ._wsgi import wsgi_handler

if TYPE_CHECKING:
    from OpenSSL import SSL

#: The options that only TLS binds use.
_TLS_OPTIONS = (("--certfile", "certfile"), ("--keyfile", "keyfile"), ("--client-cafile", "client_cafile"))


#: How long ``greenflow serve`` lets a new connection stay silent by default:
#: silent clients must not fill the descriptor limit. Generous for a person
#: typing into ``greenflow connect``; 0 turns it off.
DEFAULT_FIRST_DATA_TIMEOUT: Final = 30.0


def serve(args: argparse.Namespace, binds: list[str]) -> int:
    """Run ``greenflow serve``; returns the exit status."""
    configure_logging(args.log_level)
    check_worker_arguments(args)
    if args.workers is not None:  # the supervisor: the workers load the handler, not this process
        endpoints = _parse_binds(binds)
        _check_tls_options(args, endpoints)
        check_proxy_arguments(args)
        return serve_with_workers(
            args,
            lambda cleanup: _tls_context(args, endpoints, cleanup),
            lambda cleanup, context: _make_listeners(args, endpoints, cleanup, context),
            _server_options(args),
            endpoints,
        )
    try:
        handler = wsgi_handler(args) or load_handler(args.handler)
    except (ImportError, AttributeError, ValueError) as exc:
        raise CommandError(f"cannot load the handler {args.handler!r}: {exc}", USAGE) from exc
    endpoints = _parse_binds(binds)
    _check_tls_options(args, endpoints)
    check_proxy_arguments(args)
    with contextlib.ExitStack() as cleanup:
        listeners = _make_listeners(args, endpoints, cleanup)
        server = Server(handler, *listeners, grace=args.grace, **_server_options(args))  # type: ignore[arg-type]
        server.start()
        if args.memtrace:
            from .. import memtrace  # noqa: PLC0415 - tracemalloc only when asked for

            cleanup.callback(memtrace.install(args.memtrace))

        def on_signal(signum: int) -> None:
            if server.serving:
                say(f"{signal.Signals(signum).name}: stopping (grace period {args.grace:g} s)")
                server.stop()
            else:
                say(f"{signal.Signals(signum).name}: already stopping")

        installed = [
            gevent.signal_handler(signum, on_signal, signum) for signum in (signal.SIGTERM, signal.SIGINT)
        ]
        try:
            for url in server.urls:  # once the signals are ours: a client may stop us from now on
                say(f"listening on {url}")
            server.serve_forever(stop_signals=())  # the signals above are the command's own
        finally:
            for signal_handler in installed:
                signal_handler.cancel()
        say("stopped")
    return 0


def _server_options(args: argparse.Namespace) -> dict[str, object]:
    """The Server's keyword arguments from the options (``grace`` apart)."""
    return {
        "max_connections": args.max_connections or default_max_connections(),
        "timeout": args.timeout,
        "first_data_timeout": args.first_data_timeout or None,
        "connection_deadline": args.deadline,
    }


def configure_logging(level: str) -> None:
    """Log to stderr at ``level``, without the lines the command says itself."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for log_handler in logging.getLogger().handlers:
        log_handler.addFilter(_said_already)


def _said_already(record: logging.LogRecord) -> bool:
    """Drop the server's own "listening on" and "stopped" lines: the command says them."""
    if record.name != "greenflow.server" or record.levelno != logging.INFO:
        return True
    return not str(record.msg).startswith(("listening on", "stopped"))


def load_handler(spec: str) -> Handler:
    """Find the handler named ``spec``: ``echo``, ``discard`` or ``MODULE:NAME``.

    The current directory is searched first, as ``python -m`` would.
    """
    if spec in BUILTIN_HANDLERS:
        return BUILTIN_HANDLERS[spec]
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError("expected MODULE:FUNCTION, or one of " + ", ".join(sorted(BUILTIN_HANDLERS)))
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    target: object = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{spec} is not callable")
    handler: Handler = target
    return handler


def _parse_binds(binds: list[str]) -> list[Endpoint]:
    try:
        return [parse_url(url, kind="a listener URL") for url in binds]
    except ValueError as exc:
        raise CommandError(f"cannot listen: {exc}") from exc


def _check_tls_options(args: argparse.Namespace, endpoints: list[Endpoint]) -> None:
    if any(endpoint.tls for endpoint in endpoints):
        if args.keyfile is not None and args.certfile is None:
            raise CommandError("--keyfile needs --certfile, the certificate it goes with", USAGE)
        return
    for option, name in _TLS_OPTIONS:
        if getattr(args, name) is not None:
            raise CommandError(
                f"{option} applies to TLS binds only (tls://HOST:PORT or unix+tls:PATH), and there is none",
                USAGE,
            )


def _tls_context(
    args: argparse.Namespace, endpoints: list[Endpoint], cleanup: contextlib.ExitStack
) -> SSL.Context | None:
    if any(endpoint.tls for endpoint in endpoints):
        return _server_tls_context(args, cleanup)
    return None


def _make_listeners(
    args: argparse.Namespace,
    endpoints: list[Endpoint],
    cleanup: contextlib.ExitStack,
    context: SSL.Context | None = None,
) -> list[Listener]:
    if context is None:
        context = _tls_context(args, endpoints, cleanup)
    listeners: list[Listener] = []
    try:
        for endpoint in endpoints:
            made = listen_url(
                endpoint.url,
                backlog=args.backlog,
                reuse_port=args.reuse_port,
                mode=args.unix_mode,
                tls_context=context,
                **({} if args.handshake_timeout is None else {"handshake_timeout": args.handshake_timeout}),
            )
            if not made:
                raise CommandError(f"cannot listen on {endpoint.url}: it found no socket to listen on")
            listeners.extend(with_proxy_protocol(args, listener) for listener in made)
    except (OSError, ValueError, FlowError) as exc:
        for listener in listeners:
            listener.close()
        raise CommandError(describe_error(exc)) from exc
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def _server_tls_context(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> SSL.Context:
    from .. import tls  # noqa: PLC0415 - only TLS binds load pyOpenSSL
    from ..selfsigned import write_self_signed_certificate  # noqa: PLC0415

    certfile, keyfile = args.certfile, args.keyfile
    if certfile is None:
        folder = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="greenflow-")))
        certfile, fingerprint = write_self_signed_certificate(folder)
        say(f"self-signed certificate for local use: {certfile} (SHA-256 {fingerprint})")
    client_cafile = args.client_cafile
    return load_tls_context(
        lambda: tls.server_context(
            certfile,
            keyfile,
            client_cafile=client_cafile,
            require_client_certificate=client_cafile is not None,
        ),
        {"--certfile": args.certfile, "--keyfile": keyfile, "--client-cafile": client_cafile},
    )
