"""Built-in handlers for :class:`greenflow.Server` and ``greenflow serve``.

They double as the smallest examples of a well-behaved handler: each waits
for data inside :func:`greenflow.server.idle`, so a graceful stop ends them
at once when they have nothing to do.
"""

from __future__ import annotations

from .flow import Flow
from .server import idle

__all__ = ["BUILTIN_HANDLERS", "discard", "echo"]


def echo(flow: Flow) -> None:
    """Send back every byte received, until the client's EOF (RFC 862 over a flow).

    The reply to the client's EOF is ours: the server closes the flow when
    the handler returns, which the client reads as EOF.
    """
    while True:
        with idle():
            data = flow.read()
        if not data:
            return
        flow.write(data)


def discard(flow: Flow) -> None:
    """Read and throw away everything until the client's EOF (RFC 863 over a flow)."""
    while True:
        with idle():
            data = flow.read()
        if not data:
            return


#: The handlers ``greenflow serve`` knows by name.
BUILTIN_HANDLERS = {"echo": echo, "discard": discard}
