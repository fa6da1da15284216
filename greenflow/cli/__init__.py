"""The ``greenflow`` command: ``serve`` a handler, or ``connect`` a terminal to a flow.

``greenflow serve`` runs :class:`greenflow.Server` in the spirit of gunicorn::

    greenflow serve                                  # the echo server, tcp://127.0.0.1:8000
    greenflow serve myapp.handlers:chat --bind tcp://[::1]:9000 --bind unix:/run/chat.sock
    greenflow serve echo --bind tls://127.0.0.1:8443  # a self-signed certificate, made at start

It prints one ``greenflow: listening on URL`` line on stderr per listener
(with the real port when port 0 was asked), and SIGTERM or SIGINT stop it
gracefully (a second one is reported and ignored while the stop runs; the
grace period bounds it).

``greenflow connect URL`` joins stdin and stdout to a flow, like netcat:
what is typed goes to the server, what the server sends is printed. At the
end of stdin it shuts down writing (a half-close) and goes on printing until
the server's EOF; it exits when both directions are done.

The URLs are those of :mod:`greenflow.addresses`. Every failure is one
``greenflow: ...`` line on stderr and a non-zero exit status: 2 for a usage
error (a bad option, a handler that cannot be loaded, a TLS option with no
TLS to apply to), 1 for anything else (a URL that cannot be bound or
connected to, a bad certificate file); 128 + N when signal N ended
``connect``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..listeners import DEFAULT_BACKLOG
from ..selfsigned import write_self_signed_certificate
from ..server import DEFAULT_GRACE, default_max_connections
from ._common import CommandError, octal, positive_int, say, seconds
from ._connect import connect, join_stdio, open_url, until_signalled
from ._proxy import add_proxy_arguments
from ._serve import DEFAULT_FIRST_DATA_TIMEOUT, load_handler, serve
from ._tunnel import add_tunnel, tunnel
from ._workers import add_worker_arguments
from ._wsgi import DEFAULT_HANDLER, add_wsgi_arguments

__all__ = ["DEFAULT_BIND", "build_parser", "main"]

# Kept importable from here, where they used to live.
_COMPATIBLE = (join_stdio, load_handler, open_url, until_signalled, write_self_signed_certificate)

#: Where ``greenflow serve`` listens when no ``--bind`` is given: loopback
#: only, so that trying it out exposes nothing.
DEFAULT_BIND = "tcp://127.0.0.1:8000"


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (``main`` uses it; tests and docs may too)."""
    parser = argparse.ArgumentParser(prog="greenflow", description="Blocking-style network flows on gevent.")
    parser.add_argument("--version", action="version", version=f"greenflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_connect(commands)
    _add_memtrace(commands)
    add_tunnel(commands)
    return parser


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="run a handler for every connection",
        description="Serve HANDLER (MODULE:FUNCTION, or the built-in echo or discard) on the --bind URLs.",
    )
    serve.add_argument(
        "handler",
        nargs="?",
        default=DEFAULT_HANDLER,
        metavar="HANDLER",
        help="MODULE:FUNCTION called as function(flow) per connection, or echo or discard (default: echo)",
    )
    serve.add_argument(
        "-b",
        "--bind",
        action="append",
        metavar="URL",
        help="tcp://HOST:PORT, HOST:PORT, tls://HOST:PORT, unix:/PATH, unix:@NAME, unix+tls:/PATH, "
        "fd://N, systemd: or systemd:NAME, vsock://CID:PORT, vsock+framed://CID:PORT (hvsock's framing),"
        " vsock+tls:// or vsock+framed+tls://, tcp+proxy://HOST:PORT or unix+proxy:/PATH (a PROXY"
        f" protocol header first; +proxy+tls for TLS after it) (repeatable; default {DEFAULT_BIND})",
    )
    _add_serve_limits(serve)
    _add_serve_tls(serve)
    add_proxy_arguments(serve)
    add_worker_arguments(serve)
    add_wsgi_arguments(serve)
    serve.add_argument(
        "--memtrace",
        metavar="URL",
        help="trace memory from the start: listen:tcp://HOST:PORT (or listen:unix:PATH) for viewers,"
        " or a collector's tcp:// or unix: URL; SIGUSR2 then stops and starts tracing",
    )
    serve.add_argument("--backlog", type=positive_int, default=DEFAULT_BACKLOG, help="listen() backlog")
    serve.add_argument(
        "--reuse-port",
        action="store_true",
        help="set SO_REUSEPORT on TCP listeners (with --workers: a socket per worker, see the docs)",
    )
    serve.add_argument("--unix-mode", type=octal, metavar="MODE", help="file mode of Unix sockets, e.g. 660")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error", "critical"],
        help="logging level (default info)",
    )


def _add_memtrace(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ..memtrace import command as memtrace_command  # noqa: PLC0415 - the viewer's own tree

    memtrace_command.add_arguments(
        commands.add_parser(
            "memtrace",
            help="watch a traced process's memory: connect, listen, report",
            description="View the memory trace of a process traced with greenflow.memtrace"
            " (or greenflow serve --memtrace).",
        )
    )


def _add_serve_limits(serve: argparse.ArgumentParser) -> None:
    """The bounds on connections: how many, how silent, how long, how slow."""
    serve.add_argument(
        "--max-connections",
        type=positive_int,
        metavar="N",
        help="connections open at once, at most (default: the descriptor limit less a reserve,"
        f" here {default_max_connections()}); at the limit the kernel's backlog holds the next clients",
    )
    serve.add_argument(
        "--first-data-timeout",
        type=seconds,
        default=DEFAULT_FIRST_DATA_TIMEOUT,
        metavar="SECONDS",
        help="close a connection that sends nothing for this long after connecting (default"
        f" {DEFAULT_FIRST_DATA_TIMEOUT:g}; 0 turns it off, as protocols where the server speaks first need)",
    )
    serve.add_argument(
        "--deadline",
        type=seconds,
        metavar="SECONDS",
        help="the most a connection may live in all, to end clients that trickle (default none)",
    )
    serve.add_argument(
        "--grace",
        type=seconds,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help=f"how long a stop waits for handlers to finish (default {DEFAULT_GRACE:g})",
    )
    serve.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        help="each flow's timeout for every blocking call (default none)",
    )


def _add_serve_tls(serve: argparse.ArgumentParser) -> None:
    """The TLS options of ``serve``."""
    tls = serve.add_argument_group("TLS (for tls:// and unix+tls: binds)")
    tls.add_argument(
        "--certfile", type=Path, help="certificate chain (PEM); default: a self-signed one, made at start"
    )
    tls.add_argument("--keyfile", type=Path, help="private key (PEM), if not in --certfile")
    tls.add_argument(
        "--client-cafile",
        type=Path,
        metavar="CAFILE",
        help="require a client certificate, verified against these CA certificates (PEM)",
    )
    tls.add_argument(
        "--handshake-timeout",
        type=seconds,
        metavar="SECONDS",
        help="how long a TLS handshake may take (default: greenflow.tls.DEFAULT_HANDSHAKE_TIMEOUT, 10)",
    )


def _add_connect(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    connect = commands.add_parser(
        "connect",
        help="join stdin and stdout to a connection, like netcat",
        description="Connect to URL (tcp://HOST:PORT, HOST:PORT, tls://HOST:PORT, unix:/PATH, "
        "unix:@NAME, unix+tls:/PATH, vsock://CID:PORT, vsock+framed://CID:PORT, or a guest's vsock PORT"
        " through its VMM's Unix socket: vsock+uds:/PATH:PORT); join it to stdin/stdout.",
    )
    connect.add_argument("url", metavar="URL")
    connect.add_argument("--timeout", type=seconds, metavar="SECONDS", help="connect timeout (default 30)")
    connect.add_argument(
        "--progress",
        choices=["auto", "always", "never"],
        default="auto",
        help="show bytes and rate on stderr (auto: if stderr is a terminal, unless stdin and stdout are)",
    )
    tls = connect.add_argument_group("TLS (for tls:// and unix+tls: URLs)")
    tls.add_argument("--cafile", type=Path, help="trust these CA certificates (PEM) instead of the system's")
    tls.add_argument("--certfile", type=Path, help="a client certificate chain (PEM) to present")
    tls.add_argument(
        "--keyfile", type=Path, help="the client certificate's private key, if not in --certfile"
    )
    tls.add_argument(
        "--server-name",
        "--server-hostname",
        dest="server_name",
        metavar="NAME",
        help="the name to ask for (SNI) and check the certificate against (default: the URL's host)",
    )
    tls.add_argument(
        "--alpn",
        action="append",
        metavar="PROTOCOL",
        help="offer these application protocols (repeatable, or comma-separated: h2,http/1.1)",
    )
    tls.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the server's certificate (testing only)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args, args.bind or [DEFAULT_BIND])
        if args.command == "memtrace":
            from ..memtrace import command as memtrace_command  # noqa: PLC0415

            return memtrace_command.run(args)
        if args.command == "tunnel":
            return tunnel(args)
        return connect(args)
    except CommandError as exc:
        say(str(exc))
        return exc.status
