"""``greenflow connect``: join stdin and stdout to a flow, like netcat.

The signal handlers are installed before anything else is done (before the
connection, before stdin is made non-blocking), and the session runs in a
greenlet that a signal kills: so a signal at any moment ends the command
with status 128 + N, and always after the descriptors' flags are put back.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import gevent
import gevent.os

from ..addresses import Endpoint, Scheme, parse_url
from ..errors import FlowError
from ..flow import Flow
from ..framed import FramedFlow
from ..sockets import connect_tcp, connect_unix, connect_vsock
from ..vsock import connect_vsock_uds
from ._common import FAILED, USAGE, CommandError, describe_error, load_tls_context, say
from ._progress import Progress

if TYPE_CHECKING:
    from OpenSSL import SSL

_READ_SIZE = 65536

#: The signals that end a session: Ctrl-C, ``kill``, a closed terminal.
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: What a TLS client session takes from the command line, for the check.
_TLS_OPTIONS = (
    ("--cafile", "cafile"),
    ("--certfile", "certfile"),
    ("--keyfile", "keyfile"),
    ("--server-name", "server_name"),
    ("--alpn", "alpn"),
)


def connect(args: argparse.Namespace) -> int:
    """Run ``greenflow connect``; returns the exit status."""
    return until_signalled(lambda: _session(args))


def until_signalled(work: Callable[[], int], signals: Sequence[int] = _SIGNALS) -> int:
    """Run ``work`` in a greenlet; a signal of ``signals`` kills it.

    Returns what ``work`` returns, or 128 + N when signal N ended it (the
    greenlet has unwound by then: its ``finally`` blocks and context
    managers have run). The handlers are installed before ``work`` starts.
    """
    interrupted: list[int] = []
    failed: list[Exception] = []

    def run() -> int:
        try:
            return work()
        except Exception as exc:  # raised again below, in the caller: gevent would print it here
            failed.append(exc)
            return FAILED

    session = gevent.spawn(run)

    def on_signal(signum: int) -> None:
        if not interrupted:
            interrupted.append(signum)
            session.kill(block=False)

    installed = [gevent.signal_handler(signum, on_signal, signum) for signum in signals]
    try:
        session.join()
    finally:
        for handler in installed:
            handler.cancel()
    if interrupted:
        return 128 + interrupted[0]
    if failed:
        raise failed[0]
    status: int = session.get()
    return status


def _session(args: argparse.Namespace) -> int:
    try:
        endpoint = parse_url(args.url, kind="a URL to connect to")
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    _check_tls_options(args, endpoint)
    timeout = 30.0 if args.timeout is None else args.timeout
    flow = open_url(
        args.url,
        timeout=timeout,
        cafile=args.cafile,
        server_hostname=args.server_name,
        insecure=args.insecure,
        certfile=args.certfile,
        keyfile=args.keyfile,
        alpn=_alpn(args.alpn),
    )
    with flow:
        if not _show_progress(args.progress):
            return join_stdio(flow)
        with Progress(sys.stderr) as progress:
            return join_stdio(flow, progress=progress)


def _show_progress(choice: str) -> bool:
    """``--progress``: always, never, or (auto) when stderr is a terminal and stdin or stdout is not."""
    if choice != "auto":
        return choice == "always"
    return os.isatty(2) and not (os.isatty(0) and os.isatty(1))


def _check_tls_options(args: argparse.Namespace, endpoint: Endpoint) -> None:
    if endpoint.tls:
        if args.keyfile is not None and args.certfile is None:
            raise CommandError("--keyfile needs --certfile, the certificate it goes with", USAGE)
        return
    for option, name in (*_TLS_OPTIONS, ("--insecure", "insecure")):
        if getattr(args, name):
            raise CommandError(f"{option} applies to tls:// and unix+tls: URLs only, not {args.url}", USAGE)


def _alpn(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [name for value in values for name in value.split(",") if name]


@dataclass(frozen=True)
class ClientTLS:
    """The TLS options of ``greenflow connect`` (see its ``--help``)."""

    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    server_name: str | None = None
    alpn: list[str] | None = None
    insecure: bool = False


def open_url(
    url: str,
    *,
    timeout: float | None = None,
    cafile: Path | None = None,
    server_hostname: str | None = None,
    insecure: bool = False,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    alpn: list[str] | None = None,
) -> Flow:
    """Connect to a URL of :mod:`greenflow.addresses`: TCP, TLS, Unix or vsock.

    ``timeout`` bounds the connection and the handshake; the flow itself has
    no timeout (an interactive session may be quiet for long). A
    ``unix+tls:`` connection checks the name ``server_hostname``, by default
    ``localhost``.

    Raises:
        CommandError: the URL cannot be connected to (malformed, refused, a
            TLS failure); its message is the one line to print.
    """
    try:
        endpoint = parse_url(url, kind="a URL to connect to")
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    options = ClientTLS(cafile, certfile, keyfile, server_hostname, alpn, insecure)
    context = _client_context(options) if endpoint.tls else None  # a bad file fails before connecting
    try:
        flow = _open_transport(endpoint, timeout)
    except (OSError, FlowError) as exc:  # the library's message names the address
        raise CommandError(describe_error(exc)) from exc
    flow.timeout = None
    if context is None:
        return flow
    with contextlib.ExitStack() as on_failure:
        on_failure.callback(flow.close)
        secured = _handshake(flow, endpoint, timeout, context, options)
        on_failure.pop_all()
    return secured


def _open_transport(endpoint: Endpoint, timeout: float | None) -> Flow:
    scheme = endpoint.scheme
    if scheme in (Scheme.TCP, Scheme.TLS):
        return connect_tcp(endpoint.host, endpoint.port, connect_timeout=timeout)
    if scheme in (Scheme.UNIX, Scheme.UNIX_TLS):
        return connect_unix(endpoint.path, timeout=timeout)
    if endpoint.vsock:
        flow: Flow = connect_vsock(endpoint.cid, endpoint.port, timeout=timeout)
        return FramedFlow(flow) if endpoint.framed else flow
    if scheme in (Scheme.VSOCK_UDS, Scheme.VSOCK_UDS_FRAMED):
        return connect_vsock_uds(
            endpoint.path, endpoint.port, connect_timeout=timeout, framed=endpoint.framed
        )
    raise CommandError(f"cannot connect to {endpoint.url}: a {scheme.value}: URL names no peer to connect to")


def _client_context(options: ClientTLS) -> SSL.Context:
    from .. import tls  # noqa: PLC0415 - only TLS connections load pyOpenSSL

    context = load_tls_context(
        lambda: tls.client_context(
            cafile=options.cafile,
            certfile=options.certfile,
            keyfile=options.keyfile,
            alpn_protocols=options.alpn,
        ),
        {"--cafile": options.cafile, "--certfile": options.certfile, "--keyfile": options.keyfile},
    )
    if options.insecure:
        from OpenSSL import SSL  # noqa: PLC0415

        context.set_verify(SSL.VERIFY_NONE)
    return context


def _handshake(
    flow: Flow, endpoint: Endpoint, timeout: float | None, context: SSL.Context, options: ClientTLS
) -> Flow:
    from .. import tls  # noqa: PLC0415 - loaded already by _client_context

    server_name = options.server_name
    if server_name is None:
        server_name = endpoint.host if endpoint.scheme is Scheme.TLS else "localhost"
    try:
        return tls.client(
            flow,
            context,
            server_hostname=server_name,
            check_hostname=not options.insecure,
            handshake_timeout=timeout,
        )
    except tls.TLSCertificateError as exc:
        hint = (
            ""
            if options.cafile is not None
            else " (a self-signed server? trust its certificate with --cafile FILE)"
        )
        raise CommandError(f"cannot connect to {endpoint.url}: {exc}{hint}") from exc
    except FlowError as exc:
        raise CommandError(f"cannot connect to {endpoint.url}: {exc}") from exc


def join_stdio(flow: Flow, stdin: int = 0, stdout: int = 1, *, progress: Progress | None = None) -> int:
    """Copy ``stdin`` to ``flow`` and ``flow`` to ``stdout`` until both are done.

    At the end of ``stdin`` the flow's writing side is shut down; the copy to
    ``stdout`` goes on until the peer's EOF. The descriptors are made
    non-blocking (and put back as they were, however this ends: run it
    under :func:`until_signalled` so that a signal unwinds it too) so that
    waiting on them yields to the hub. Returns 0, or 1 if the connection
    failed. ``progress`` counts the bytes each way (and shows them, when it
    was made with a stream).
    """
    with _nonblocking(stdin), _nonblocking(stdout):
        counts = progress or Progress(None)
        upstream = gevent.spawn(_quietly, _copy_stdin, flow, stdin, counts)
        downstream = gevent.spawn(_quietly, _copy_to_stdout, flow, stdout, counts)
        try:
            printed = downstream.get()
            if isinstance(printed, Exception):
                upstream.kill()
                say(f"connection failed: {describe_error(printed)}")
                return 1
            if printed is False:  # stdout went away: nothing more to do
                upstream.kill()
                return 0
            sent = upstream.get()
            if isinstance(sent, Exception):
                say(f"connection failed: {describe_error(sent)}")
                return 1
            return 0
        finally:
            gevent.killall([upstream, downstream])


def _quietly(copy: Callable[[Flow, int, Progress], bool], *args: object) -> bool | Exception:
    """Run one direction's copy; a failure is returned (gevent would print it as a crash)."""
    try:
        return copy(*args)  # type: ignore[arg-type]
    except (FlowError, OSError) as exc:
        return exc


def _copy_stdin(flow: Flow, stdin: int, progress: Progress) -> bool:
    while data := gevent.os.nb_read(stdin, _READ_SIZE):
        flow.write(data)
        progress.sent += len(data)
    flow.shutdown("write")
    return True


def _copy_to_stdout(flow: Flow, stdout: int, progress: Progress) -> bool:
    while data := flow.read(_READ_SIZE):
        progress.received += len(data)
        view = memoryview(data)
        while view:
            try:
                written = gevent.os.nb_write(stdout, view)
            except BrokenPipeError:
                return False
            view = view[written:]
    return True


@contextlib.contextmanager
def _nonblocking(fd: int) -> Iterator[None]:
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise CommandError(f"descriptor {fd} is not open") from exc
        raise
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
