"""One connection: the request loop, keep-alive, errors, and the access log.

:class:`WSGIHandler` is what :func:`greenflow.wsgi.handler` returns; the
server calls it once per connection, and it serves requests one after the
other (:class:`_Connection`) until one of them ends the connection:

1. Wait for the first bytes of the next request, inside
   :func:`greenflow.idle` and within ``keepalive_timeout``: a graceful stop
   ends the connection here at once. When bytes of the next request are
   already buffered (pipelining), there is no wait and no idle mark: that
   request is in progress.
2. Read the rest of the head within ``header_timeout``, cut it out
   (:class:`~greenflow.wsgi._input.HeadScanner`), and let a fresh
   ``h11.Connection`` parse it. Refused heads get their status (``400``,
   ``431``, ``413``, ``501``) and the connection is closed.
3. Run the application, send its response, close its iterable.
4. Keep the connection if h11 says HTTP allows it, the whole request body
   was read (what the application left is read and dropped, up to
   :data:`DRAIN_LIMIT` bytes), and the requests-per-connection limit is not
   reached; the response that reaches the limit says ``Connection: close``.

Each request gets its own ``h11.Connection``: bytes that h11 was given past
the end of a request are put back in the :class:`~greenflow.BufferedFlow`,
so the wait in step 1 can tell an idle connection (nothing buffered) from a
pipelined request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import gevent
import h11

from ..buffered import BufferedFlow
from ..errors import FlowError
from ..flow import Flow
from ..server import idle
from ._environ import ErrorStream, connection_environ, request_environ
from ._input import HeadScanner, MalformedBody, Refusal, RequestBody
from ._limits import Limits, RequestTooLarge
from ._response import REASONS, FileWrapper, Response, ResponseState

__all__ = ["DRAIN_LIMIT", "DRAIN_TIMEOUT", "Application", "WSGIHandler"]

log = logging.getLogger("greenflow.wsgi")
access_log = logging.getLogger("greenflow.wsgi.access")

#: A WSGI application: ``app(environ, start_response) -> iterable of bytes``.
Application = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: How much of a body the application did not read the server reads and
#: drops to keep the connection; past this it closes the connection instead.
DRAIN_LIMIT: Final = 64 * 1024
#: ... and how long it waits for that rest.
DRAIN_TIMEOUT: Final = 1.0


class WSGIHandler:
    """A handler for :class:`greenflow.Server` that serves a WSGI application.

    Made by :func:`greenflow.wsgi.handler`; calling it with a flow serves
    that connection until it ends.
    """

    __slots__ = ("access_log", "app", "limits")

    def __init__(self, app: Application, limits: Limits, access_log: bool = False) -> None:
        if not callable(app):
            raise TypeError(f"a WSGI application must be callable, not {type(app).__name__}")
        self.app = app
        self.limits = limits
        self.access_log = access_log

    def __repr__(self) -> str:
        return f"<greenflow.wsgi handler for {self.app!r}>"

    def __call__(self, flow: Flow) -> None:
        _Connection(self, flow).run()


class _Connection:
    """The requests of one connection, one at a time."""

    __slots__ = ("base", "errors", "flow", "handler", "keepalive", "limits", "reader")

    def __init__(self, handler: WSGIHandler, flow: Flow) -> None:
        self.handler = handler
        self.limits = handler.limits
        self.flow = flow
        self.reader = BufferedFlow(flow, limit=handler.limits.max_header_size)
        self.base = connection_environ(flow)
        self.errors = ErrorStream()
        seconds = handler.limits.keepalive_timeout
        self.keepalive = None if seconds is None else gevent.Timeout(seconds)  # one timer, restarted

    def run(self) -> None:
        most = self.limits.max_requests
        served = 0
        try:
            while True:
                head = self._next_head()
                if head is None:
                    return
                served += 1
                if not self._serve(head, last=served == most):
                    return
        except Refusal as exc:
            log.info("refused a request from %s: %s", self.base["REMOTE_ADDR"] or "a local peer", exc)
            self.flow.write(error_bytes(exc.status, str(exc)))
        finally:
            self.errors.flush()

    # -- the head ----------------------------------------------------------------

    def _next_head(self) -> bytes | None:
        """The next request head, or None when the connection ends quietly."""
        reader = self.reader
        if reader.buffered:
            data = reader.read()
        else:
            # Let the other connections run first: one whose client always
            # has its next request ready would otherwise never wait, and
            # hold the hub while the others starve (wrk's p99 showed it).
            gevent.sleep(0)
            with idle():
                data = _within(self.keepalive, reader.read)
        if not data:
            return None
        scanner = HeadScanner(self.limits.max_header_size)
        head = scanner.feed(data)
        if head is None:
            seconds = self.limits.header_timeout
            timer = None if seconds is None else gevent.Timeout(seconds)
            head = _within(timer, self._rest_of_head, scanner)
            if head is None:
                log.debug("closed a connection whose request head did not come in time")
                return None
        if scanner.rest:
            reader.unread(scanner.rest)
        return head

    def _rest_of_head(self, scanner: HeadScanner) -> bytes | None:
        while True:
            data = self.reader.read()
            if not data:
                return None  # the client closed in its head: nothing to answer
            head = scanner.feed(data)
            if head is not None:
                return head

    # -- one request ---------------------------------------------------------------

    def _serve(self, head: bytes, *, last: bool) -> bool:
        """Serve the request whose head is ``head``; True if the connection goes on."""
        limits = self.limits
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_size)
        conn.receive_data(head)
        try:
            request = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise Refusal(exc.error_status_hint, f"malformed request head: {exc}") from exc
        if type(request) is not h11.Request:  # pragma: no cover - a whole head is a request
            raise Refusal(400, "malformed request head")
        chunked = _check_framing(request, limits.max_body_size)
        flow = self.flow

        def send_continue() -> None:
            flow.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")

        waiting = conn.they_are_waiting_for_100_continue
        body = RequestBody(
            conn, self.reader, limits.max_body_size, send_continue if waiting else None, chunked
        )
        response = Response(conn, flow, body, request.method, closing=last)
        environ = request_environ(self.base, request, self.errors)
        environ["wsgi.input"] = body
        environ["wsgi.file_wrapper"] = FileWrapper
        started = time.time()
        try:
            keep = self._run_app(environ, response, body)
        finally:
            if self.handler.access_log:
                _log_access(environ, response, started)
        return keep and _finish_request(conn, body)

    def _run_app(self, environ: dict[str, Any], response: Response, body: RequestBody) -> bool:
        """Run the application and send its response; True if the response went out whole."""
        try:
            iterable = self.handler.app(environ, response.start_response)
            try:
                response.send(iterable)
            finally:
                close = getattr(iterable, "close", None)
                if close is not None:
                    close()
        except Exception as exc:
            return self._failed(exc, response, body)
        return True

    def _failed(self, exc: Exception, response: Response, body: RequestBody) -> bool:
        """The application or the client failed the request: answer it if possible; False."""
        app = self.handler.app
        if response.state is ResponseState.SENT or response.state is ResponseState.ENDED:
            if isinstance(exc, FlowError):
                log.debug("the connection of a response from %r failed: %s", app, exc)
            else:
                log.error("%r failed after its response started; the connection is closed", app, exc_info=exc)
            return False
        if isinstance(exc, RequestTooLarge) and exc is body.failure:
            status, message = 413, str(exc)
        elif isinstance(exc, MalformedBody) and exc is body.failure:
            status, message = 400, str(exc)
        else:
            status, message = 500, "the application failed"
            log.error("%r failed before its response started", app, exc_info=exc)
        try:
            response.send_error(status, message)
        except (FlowError, h11.LocalProtocolError):
            log.debug("could not send the error response %d", status, exc_info=True)
        return False


def _within(timer: gevent.Timeout | None, call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)``, or None when ``timer`` (started here, stopped after) expires first."""
    if timer is None:
        return call(*args)
    timer.start()
    try:
        return call(*args)
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        return None
    finally:
        timer.cancel()


def _check_framing(request: h11.Request, max_body_size: int | None) -> bool:
    """Refuse framing h11 lets through, or a body over the limit; True if the body is chunked."""
    chunked = False
    length = None
    for name, value in request.headers:
        if name == b"transfer-encoding":
            chunked = True
        elif name == b"content-length":
            length = int(value)
    if chunked and length is not None:
        raise Refusal(400, "the request has both Content-Length and Transfer-Encoding")
    if max_body_size is not None and length is not None and length > max_body_size:
        raise Refusal(413, f"the request body of {length} bytes is larger than the limit of {max_body_size}")
    return chunked


def _finish_request(conn: h11.Connection, body: RequestBody) -> bool:
    """After a whole response: True if the connection may serve another request."""
    if conn.our_state is not h11.DONE or body.continue_withheld:
        return False  # HTTP says close, or a body may or may not follow
    try:
        if body.discard(DRAIN_LIMIT, DRAIN_TIMEOUT):
            return conn.their_state is h11.DONE
    except FlowError as exc:
        log.debug("the rest of a request body could not be read: %s", exc)
    return False


def error_bytes(status: int, message: str) -> bytes:
    """A whole error response, for a request h11 could not take (it then closes)."""
    body = message.encode("utf-8", "replace") + b"\n"
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, REASONS.get(status, b"Error"), len(body), body)
    )


def _log_access(environ: dict[str, Any], response: Response, started: float) -> None:
    """One line in the common log format (NCSA), on ``greenflow.wsgi.access``."""
    when = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(started))
    line = f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}"
    access_log.info(
        '%s - %s [%s] "%s" %s %s',
        environ["REMOTE_ADDR"] or "-",
        environ.get("REMOTE_USER") or "-",
        when,
        line,
        response.status_code or "-",
        response.sent or "-",
    )
