"""The bounds a WSGI connection is served within, with their defaults."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Final

from ..errors import FlowError

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_KEEPALIVE_TIMEOUT",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_MAX_REQUESTS",
    "Limits",
    "RequestTooLarge",
]

#: The most bytes a request head (request line and header fields) may take;
#: a longer one is answered ``431``. As h11's own default, nginx's and most
#: browsers' largest.
DEFAULT_MAX_HEADER_SIZE: Final = 16 * 1024

#: The most bytes a request body may have; a larger one is answered ``413``.
#: The body is streamed to the application, never held, so the bound is
#: about what an application expects to receive, not about memory.
DEFAULT_MAX_BODY_SIZE: Final = 1024**3

#: Seconds from the first byte of a request head to its end: a client that
#: trickles its head (slowloris) is closed after this.
DEFAULT_HEADER_TIMEOUT: Final = 10.0

#: Seconds a keep-alive connection may wait for its next request.
DEFAULT_KEEPALIVE_TIMEOUT: Final = 15.0

#: Requests served on one connection before it is closed (nginx's default):
#: long-lived connections then move between worker processes now and then.
DEFAULT_MAX_REQUESTS: Final = 1000


class RequestTooLarge(FlowError):
    """A request body is larger than the server's ``max_body_size``.

    Raised by ``wsgi.input`` when reading would pass the limit (a chunked
    body announces no size, so this is found while reading). If the
    application lets it escape before its response started, the client
    gets ``413 Content Too Large``.
    """


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of :func:`greenflow.wsgi.handler`; ``None`` turns a bound off.

    Attributes:
        max_header_size: bytes of a request head (``431`` past it).
        max_body_size: bytes of a request body (``413`` past it), or ``None``.
        header_timeout: seconds to receive a request head, from its first byte.
        keepalive_timeout: seconds to wait for the next request (the first
            one included).
        max_requests: requests per connection, or ``None``.
    """

    max_header_size: int = DEFAULT_MAX_HEADER_SIZE
    max_body_size: int | None = DEFAULT_MAX_BODY_SIZE
    header_timeout: float | None = DEFAULT_HEADER_TIMEOUT
    keepalive_timeout: float | None = DEFAULT_KEEPALIVE_TIMEOUT
    max_requests: int | None = DEFAULT_MAX_REQUESTS

    def __post_init__(self) -> None:
        _count(self.max_header_size, "max_header_size", 64)
        if self.max_body_size is not None:
            _count(self.max_body_size, "max_body_size", 0)
        if self.max_requests is not None:
            _count(self.max_requests, "max_requests", 1)
        for name in ("header_timeout", "keepalive_timeout"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
            if not value > 0 or math.isnan(value):
                raise ValueError(f"{name} must be more than 0 seconds, not {value!r}")


def _count(value: int, name: str, least: int) -> None:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not bool")
    if operator.index(value) < least:
        raise ValueError(f"{name} must be at least {least}, not {value}")
