"""``greenflow serve --wsgi MODULE:APP``: serve a WSGI application with :mod:`greenflow.wsgi`.

Every listener option of ``serve`` applies (TLS, Unix sockets, ``fd://``,
``systemd:``, ``--first-data-timeout``, ``--grace``); the options here are
the HTTP limits of :func:`greenflow.wsgi.handler`. ``--wsgi`` replaces the
positional handler, so the two together are a usage error, and so are the
HTTP options without ``--wsgi``.
"""

from __future__ import annotations

import argparse

from ..server import Handler
from ._common import USAGE, CommandError, positive_int, seconds

__all__ = ["DEFAULT_HANDLER", "add_wsgi_arguments", "wsgi_handler"]


class _Default(str):
    """The positional handler's default: equal to ``"echo"``, and known not to be typed."""

    __slots__ = ()


#: What ``serve`` runs when neither a handler nor ``--wsgi`` is given.
DEFAULT_HANDLER = _Default("echo")

#: The options that only mean something with ``--wsgi``: (option, attribute).
_HTTP_OPTIONS = (
    ("--max-body-size", "max_body_size"),
    ("--max-header-size", "max_header_size"),
    ("--keepalive-timeout", "keepalive_timeout"),
    ("--header-timeout", "header_timeout"),
    ("--keepalive-requests", "max_requests"),
    ("--access-log", "access_log"),
)


def add_wsgi_arguments(serve: argparse.ArgumentParser) -> None:
    """Add ``--wsgi`` and the HTTP limits to the ``serve`` parser.

    The defaults are named, not imported: building the parser must not load
    h11 for ``greenflow connect`` (a test keeps the numbers in step).
    """
    group = serve.add_argument_group("WSGI (with --wsgi, instead of HANDLER)")
    group.add_argument(
        "--wsgi",
        metavar="MODULE:APP",
        help="serve the WSGI application APP of MODULE over HTTP/1.1 (greenflow.wsgi)",
    )
    group.add_argument(
        "--max-body-size",
        type=positive_int,
        metavar="BYTES",
        help="largest request body; larger ones get 413"
        " (default: greenflow.wsgi.DEFAULT_MAX_BODY_SIZE, 1 GiB)",
    )
    group.add_argument(
        "--max-header-size",
        type=positive_int,
        metavar="BYTES",
        help="largest request head; larger ones get 431"
        " (default: greenflow.wsgi.DEFAULT_MAX_HEADER_SIZE, 16 KiB)",
    )
    group.add_argument(
        "--keepalive-timeout",
        type=seconds,
        metavar="SECONDS",
        help="how long a connection may wait for its next request"
        " (default: greenflow.wsgi.DEFAULT_KEEPALIVE_TIMEOUT, 15)",
    )
    group.add_argument(
        "--header-timeout",
        type=seconds,
        metavar="SECONDS",
        help="how long a request head may take to arrive, from its first byte"
        " (default: greenflow.wsgi.DEFAULT_HEADER_TIMEOUT, 10)",
    )
    group.add_argument(
        "--keepalive-requests",
        dest="max_requests",
        type=positive_int,
        metavar="N",
        help="requests per keep-alive connection before it is closed"
        " (default: greenflow.wsgi.DEFAULT_MAX_REQUESTS, 1000)",
    )
    group.add_argument(
        "--access-log",
        action="store_true",
        default=None,
        help="log each request in the common log format (logger greenflow.wsgi.access)",
    )


def wsgi_handler(args: argparse.Namespace) -> Handler | None:
    """The handler ``--wsgi`` asks for, or None without it.

    Raises:
        CommandError: a usage error (``--wsgi`` with a HANDLER, HTTP options
            without ``--wsgi``) or an application that cannot be loaded.
    """
    if args.wsgi is None:
        for option, name in _HTTP_OPTIONS:
            if getattr(args, name) is not None:
                raise CommandError(f"{option} applies to --wsgi only", USAGE)
        return None
    if not isinstance(args.handler, _Default):
        raise CommandError(f"give either HANDLER ({args.handler}) or --wsgi, not both", USAGE)
    from .. import wsgi  # noqa: PLC0415 - h11 is loaded only when asked for
    from ._serve import load_handler  # noqa: PLC0415 - _serve imports this module

    if ":" not in args.wsgi:
        raise CommandError(f"cannot load the WSGI application {args.wsgi!r}: expected MODULE:APP", USAGE)
    try:
        app = load_handler(args.wsgi)
    except (ImportError, AttributeError, ValueError) as exc:
        raise CommandError(f"cannot load the WSGI application {args.wsgi!r}: {exc}", USAGE) from exc
    limits = {name: getattr(args, name) for _, name in _HTTP_OPTIONS if getattr(args, name) is not None}
    try:
        return wsgi.handler(app, **limits)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise CommandError(f"--wsgi: {exc}", USAGE) from exc
