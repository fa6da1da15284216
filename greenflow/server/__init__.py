"""The server: accept connections and run a handler on each, in its own greenlet.

The package is in parts: the accept loop and its back-off (``_accept``),
one connection and its phases (``_connection``), the stop's drain and the
stop signals (``_stop``), and the :class:`Server` that puts them together
(``_server``).

Theory of operation
===================

Accepting
---------
Each listener has a libev I/O watcher whose callback runs in the hub and
accepts up to :data:`ACCEPT_BATCH` connections per wake-up. For each socket
it makes a connection greenlet and starts it; everything slow happens there,
never on the accept path: ``TCP_NODELAY``, making the flow, the listener's
:meth:`~greenflow.listener.Listener.establish` step (a TLS handshake,
bounded by the listener's ``handshake_timeout``), the handler.

The server accepts only while it is serving, has fewer than
``max_connections`` connections, and is not backing off after an accept
error (``EMFILE`` and the like: a pause from :data:`MIN_BACKOFF` doubling
up to :data:`MAX_BACKOFF`). Otherwise the kernel's backlog holds the next
clients, which are accepted as soon as the condition clears.

Per connection
--------------
The flow is closed when the handler returns or raises. An exception from a
handler is logged with its traceback on the ``greenflow.server`` logger and
never reaches the server: at ``ERROR`` for a bug (any exception that is not a
:class:`~greenflow.FlowError`), at ``DEBUG`` for a :class:`FlowError` (a
client that reset, a flow ``timeout`` that expired: the everyday life of a
server, and a log line per slowloris client would be a denial of service of
its own). A TLS handshake that fails is logged at ``INFO`` and closed.

Two bounds are opt-in: ``first_data_timeout`` closes a connection that has
sent nothing in that time (until its first bytes come, such a connection
waits on the hub with no greenlet: an I/O watcher and a timer), and ``connection_deadline`` ends one that has
lived that long, whatever it is doing (a client that trickles a byte at a
time defeats the per-call ``timeout``).

Graceful stop
=============
:meth:`Server.stop` (grace seconds):

1. Stops accepting at once and closes the listeners, so new connections are
   refused (a Unix socket's file is removed).
2. Ends the connections that have no request in progress at once: those
   waiting for their first bytes or still in their TLS handshake (no
   handler has seen them; one stalled TLS client must not hold up every
   stop for the grace period), and *idle* ones: their handler's pending
   read returns ``b""``, exactly as if the client had closed, so a plain
   request loop returns by its usual path. After the handler returns, the server shuts
   down writing (the client sees EOF after the last response) and reads
   and discards for a moment before closing (a "lingering close"), so that
   a request that crossed the stop on the wire does not make the kernel
   answer with a reset that could destroy the last response in flight.
3. Lets handlers that are *mid-request* run: they finish their request,
   write the response, and when they next wait for a request their read
   returns ``b""`` at once.
4. When the grace period ends, closes every flow that remains (a greenlet
   blocked in it gets :class:`~greenflow.ClosedError`) and kills the
   handlers still running.

``stop`` returns when every connection has ended, which is within the grace
period plus the short moment killed greenlets get to unwind.

How the server tells idle from mid-request: the handler says so. Only the
protocol knows where one request ends, so the handler wraps the read that
waits for the *next* request in :func:`idle`::

    def handler(flow):
        while True:
            with greenflow.idle():   # the server may end the connection here
                request = flow.read()
            if not request:
                return               # the client closed, or the server is stopping
            flow.write(answer(request))

Guessing from the traffic ("blocked in a read, and no byte read since the
last write completed") is wrong for every protocol that reads after writing
inside one request (an SMTP ``354`` before the message body, HTTP's
``100 Continue``, a multi-step authentication): stopping would cut those
requests off. Guessing would also need a wrapper around every flow call;
the marker costs two attribute writes per request and nothing per call, and
the handler gets the real flow. A handler that never uses :func:`idle` is
treated as always mid-request: it keeps its connection until it returns or
the grace period ends, which is safe, only slower. Handlers that would
rather watch for the stop themselves can wait on :attr:`Server.stopping`,
an event set when the stop begins.

:meth:`Server.serve_forever` turns SIGTERM and SIGINT into a graceful stop,
so a script that ends with it stops cleanly on ``kill`` and on Ctrl-C.
"""

from __future__ import annotations

from ._accept import ACCEPT_BATCH, MAX_BACKOFF, MIN_BACKOFF
from ._connection import Connection, Handler, Phase, idle
from ._server import DEFAULT_GRACE, DEFAULT_STOP_SIGNALS, Server, default_max_connections

__all__ = [
    "ACCEPT_BATCH",
    "DEFAULT_GRACE",
    "DEFAULT_STOP_SIGNALS",
    "MAX_BACKOFF",
    "MIN_BACKOFF",
    "Connection",
    "Handler",
    "Phase",
    "Server",
    "default_max_connections",
    "idle",
]
