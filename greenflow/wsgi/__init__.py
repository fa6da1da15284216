"""WSGI over any flow: a PEP 3333 server for :class:`greenflow.Server`, on h11.

:func:`handler` turns a WSGI application into a handler for
:class:`greenflow.Server`, so every listener serves it: TCP, TLS, Unix
sockets (TLS on them too), ``fd://``, ``systemd:``, vsock::

    server = greenflow.Server(greenflow.wsgi.handler(app), "unix+tls:/run/app.sock", ...)

The HTTP parsing is h11's (a sans-IO library; 0.16 or later, which fixed
the chunked-encoding smuggling flaw CVE-2025-43859). greenflow adds what
a deployed server needs around it; the parts:

- ``_input``: cutting request heads out of the stream, refusing what h11
  lets through (a bare LF in a head or in chunked framing), and
  ``wsgi.input``, the body streamed on demand with ``100 Continue`` sent
  on the first read.
- ``_response``: ``start_response`` (validation, ``exc_info``), ``write()``,
  the body's framing, ``HEAD``, ``wsgi.file_wrapper`` with ``sendfile``.
- ``_environ``: ``environ`` from the flow (addresses, TLS variables) and
  the request; ``wsgi.errors`` to :mod:`logging`.
- ``_connection``: keep-alive (the wait for the next request is
  :func:`greenflow.idle`, so a graceful stop ends idle connections at once
  and lets responses in flight finish), pipelining, the limits, errors,
  the access log.
- ``_limits``: the limits and their defaults.

What goes to :mod:`logging`: ``greenflow.wsgi`` (application failures at
``ERROR``, refused requests at ``INFO``), ``greenflow.wsgi.errors`` (what the
application writes to ``wsgi.errors``), ``greenflow.wsgi.access`` (one line
per request in the common log format, when ``access_log`` is on).
"""

from __future__ import annotations

from ._connection import Application, WSGIHandler
from ._limits import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_REQUESTS,
    Limits,
    RequestTooLarge,
)
from ._response import FileWrapper

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_KEEPALIVE_TIMEOUT",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_MAX_REQUESTS",
    "Application",
    "FileWrapper",
    "Limits",
    "RequestTooLarge",
    "WSGIHandler",
    "handler",
]


def handler(
    app: Application,
    *,
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    max_body_size: int | None = DEFAULT_MAX_BODY_SIZE,
    header_timeout: float | None = DEFAULT_HEADER_TIMEOUT,
    keepalive_timeout: float | None = DEFAULT_KEEPALIVE_TIMEOUT,
    max_requests: int | None = DEFAULT_MAX_REQUESTS,
    access_log: bool = False,
) -> WSGIHandler:
    """A handler for :class:`greenflow.Server` that serves the WSGI application ``app``.

    Args:
        app: the WSGI application, ``app(environ, start_response)``.
        max_header_size: the most bytes of a request head; past it ``431``.
        max_body_size: the most bytes of a request body (``None``: no
            limit); past it ``413``, before the application runs when
            ``Content-Length`` says so, else from ``wsgi.input``
            (:class:`RequestTooLarge`).
        header_timeout: seconds from the first byte of a request head to
            its end (``None``: no limit); then the connection is closed.
        keepalive_timeout: seconds a connection may wait for its next
            request, the first one included (``None``: no limit).
        max_requests: requests per connection (``None``: no limit); the
            last response says ``Connection: close``.
        access_log: log one line per request, in the common log format, on
            the ``greenflow.wsgi.access`` logger at ``INFO``.

    Raises:
        TypeError, ValueError: a limit of the wrong type or out of range,
            or an ``app`` that is not callable.
    """
    limits = Limits(
        max_header_size=max_header_size,
        max_body_size=max_body_size,
        header_timeout=header_timeout,
        keepalive_timeout=keepalive_timeout,
        max_requests=max_requests,
    )
    return WSGIHandler(app, limits, access_log=access_log)
