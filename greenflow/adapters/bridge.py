"""A socket bridge: a real connected socket whose other end is pumped to and from a flow.

Some code needs a real descriptor, not a socket-like object: ``selectors``,
``subprocess`` stdio, ``ssl.SSLContext.wrap_socket``, C extensions.
:func:`socket_bridge` gives it one. It makes a connected pair of loopback
TCP sockets, returns one end (a plain ``socket.socket``, blocking, which
the caller owns), and runs greenlets that copy between the other end and
the flow.

Theory of operation
-------------------

Two pumps, one per direction, each a greenlet that reads at most 64 KiB
from one side and writes all of it to the other before reading again: the
bytes in flight are bounded by one chunk per direction plus the kernel's
socket buffers, and a slow reader on either side slows the writer on the
other (backpressure), as a direct connection would.

- **Half-close passes on, both ways**: EOF from the flow becomes
  ``shutdown(SHUT_WR)`` on the socket (the socket's user reads EOF), and
  EOF from the socket becomes the flow's ``shutdown("write")``.
- **Errors pass on as resets**: when either pump fails (the flow broke, or
  the socket's user reset or closed its end while data was still coming),
  the bridge resets its end of the socket (``SO_LINGER`` 0, so the user's
  next call fails with ``ECONNRESET``) and closes the flow.
- **When both directions have ended** cleanly the bridge closes its end
  and the flow.

TCP on 127.0.0.1 is used, not ``socketpair()``, because only TCP can pass a
reset on; the accepted connection is checked to be the one just made.

The pumps run on the gevent hub. The socket is a real blocking one, so the
code that uses it must not block the hub's thread: run it in a child
process, in a thread (``gevent.get_hub().threadpool``), in C code that
releases the GIL in a thread, or wait cooperatively (``gevent.select``,
``gevent.socket.wait_read``) before each call.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct

import gevent

from ..errors import FlowError
from ..flow import Flow, Shutdown
from ..sockets import SocketFlow, from_socket

__all__ = ["socket_bridge"]

log = logging.getLogger("greenflow")

_CHUNK = 65536
_ATTEMPTS = 8  # connections to the loopback listener that are not ours, before giving up


def socket_bridge(flow: Flow) -> socket.socket:
    """Return a connected ``socket.socket`` whose peer is ``flow``, pumped by greenlets.

    The bridge owns ``flow`` from now on: it closes it when both directions
    have ended, or at once after an error (passed on as a reset). Close the
    returned socket when done; that ends the bridge.

    Raises:
        TypeError: ``flow`` is not a flow.
        OSError: the loopback socket pair could not be made.
    """
    if not isinstance(flow, Flow):
        raise TypeError(f"socket_bridge needs a Flow, not {type(flow).__name__}")
    user, ours = _loopback_pair()
    gevent.spawn(_run, flow, from_socket(ours))
    return user


def _loopback_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected TCP sockets on 127.0.0.1 (blocking; loopback connects at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(_ATTEMPTS)
        user = socket.create_connection(listener.getsockname())
        try:
            user.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            expected = user.getsockname()
            for _ in range(_ATTEMPTS):
                ours, peer = listener.accept()
                if peer == expected:
                    ours.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    return user, ours
                ours.close()  # someone else's connection to our listener: not ours to serve
        except BaseException:
            user.close()
            raise
    user.close()
    raise OSError(f"socket_bridge: {_ATTEMPTS} strangers connected to its loopback listener first")


def _pump(source: Flow, sink: Flow) -> None:
    """Copy ``source`` to ``sink`` until EOF, then pass the EOF on."""
    while data := source.read(_CHUNK):
        sink.write(data)
    sink.shutdown(Shutdown.WRITE)


def _run(flow: Flow, ours: SocketFlow) -> None:
    """Run both pumps; on the first failure reset the socket and close the flow."""
    pumps = [gevent.spawn(_pump, flow, ours), gevent.spawn(_pump, ours, flow)]
    try:
        for finished in gevent.iwait(pumps):
            if not finished.successful():
                log.debug("socket_bridge: %r ended with %r; resetting the socket", flow, finished.exception)
                _reset(ours)
                break
    finally:
        gevent.killall(pumps)
        ours.close()
        flow.close()


def _reset(ours: SocketFlow) -> None:
    """Close our end so that the peer gets a reset, not an EOF."""
    with contextlib.suppress(OSError, FlowError):  # already closed: nothing to reset
        ours.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ours.close()
