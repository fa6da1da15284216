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
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import fcntl
import hashlib
import importlib
import ipaddress
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import gevent
import gevent.os

from .errors import FlowError
from .flow import Flow
from .handlers import BUILTIN_HANDLERS
from .listeners import DEFAULT_BACKLOG, DEFAULT_HANDSHAKE_TIMEOUT, Listener, listen_url
from .server import DEFAULT_GRACE, Handler, Server
from .sockets import connect_tcp, connect_unix

if TYPE_CHECKING:
    from OpenSSL import SSL

__all__ = ["DEFAULT_BIND", "build_parser", "main"]

#: Where ``greenflow serve`` listens when no ``--bind`` is given: loopback
#: only, so that trying it out exposes nothing.
DEFAULT_BIND = "tcp://127.0.0.1:8000"

_READ_SIZE = 65536

log = logging.getLogger("greenflow.cli")


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (``main`` uses it; tests and docs may too)."""
    parser = argparse.ArgumentParser(prog="greenflow", description="Blocking-style network flows on gevent.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run a handler for every connection",
        description="Serve HANDLER (MODULE:FUNCTION, or the built-in echo or discard) on the --bind URLs.",
    )
    serve.add_argument(
        "handler",
        nargs="?",
        default="echo",
        metavar="HANDLER",
        help="MODULE:FUNCTION called as function(flow) per connection, or echo or discard (default: echo)",
    )
    serve.add_argument(
        "-b",
        "--bind",
        action="append",
        metavar="URL",
        help=f"tcp://HOST:PORT, tls://HOST:PORT, unix:/PATH, fd://N or systemd: (repeatable; {DEFAULT_BIND})",
    )
    serve.add_argument(
        "--max-connections", type=_positive_int, metavar="N", help="connections open at once, at most"
    )
    serve.add_argument(
        "--grace",
        type=_seconds,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help=f"how long a stop waits for handlers to finish (default {DEFAULT_GRACE:g})",
    )
    serve.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="each flow's timeout for every blocking call (default none)",
    )
    serve.add_argument("--certfile", type=Path, help="TLS certificate chain (PEM) for tls:// binds")
    serve.add_argument("--keyfile", type=Path, help="TLS private key (PEM), if not in --certfile")
    serve.add_argument(
        "--handshake-timeout",
        type=_seconds,
        default=DEFAULT_HANDSHAKE_TIMEOUT,
        metavar="SECONDS",
        help=f"how long a TLS handshake may take (default {DEFAULT_HANDSHAKE_TIMEOUT:g})",
    )
    serve.add_argument("--backlog", type=_positive_int, default=DEFAULT_BACKLOG, help="listen() backlog")
    serve.add_argument("--reuse-port", action="store_true", help="set SO_REUSEPORT on TCP listeners")
    serve.add_argument("--unix-mode", type=_octal, metavar="MODE", help="file mode of Unix sockets, e.g. 660")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error", "critical"],
        help="logging level (default info)",
    )

    connect = commands.add_parser(
        "connect",
        help="join stdin and stdout to a connection, like netcat",
        description="Connect to URL (tcp://HOST:PORT, tls://HOST:PORT, unix:/PATH); join it to stdin/stdout.",
    )
    connect.add_argument("url", metavar="URL")
    connect.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="connect timeout (default 30)")
    connect.add_argument("--cafile", type=Path, help="trust these CA certificates (PEM) for tls://")
    connect.add_argument("--server-hostname", help="the name to check the certificate against")
    connect.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the server's certificate (testing only)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return _connect(args)


# -- serve -------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        handler = load_handler(args.handler)
    except (ImportError, AttributeError, ValueError) as exc:
        _say(f"cannot load the handler {args.handler!r}: {exc}")
        return 2
    binds = args.bind or [DEFAULT_BIND]
    with contextlib.ExitStack() as cleanup:
        try:
            listeners = _make_listeners(args, binds, cleanup)
        except (OSError, ValueError, FlowError) as exc:
            _say(f"cannot listen: {exc}")
            return 1
        server = Server(
            handler,
            *listeners,
            max_connections=args.max_connections,
            timeout=args.timeout,
            grace=args.grace,
        )
        server.start()
        for url in server.urls:
            _say(f"listening on {url}")

        def on_signal(signum: int) -> None:
            if server.serving:
                _say(f"{signal.Signals(signum).name}: stopping (grace period {args.grace:g} s)")
                server.stop()
            else:
                _say(f"{signal.Signals(signum).name}: already stopping")

        handlers = [
            gevent.signal_handler(signum, on_signal, signum) for signum in (signal.SIGTERM, signal.SIGINT)
        ]
        try:
            server.serve_forever()
        finally:
            for installed in handlers:
                installed.cancel()
        _say("stopped")
    return 0


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


def _make_listeners(
    args: argparse.Namespace, binds: list[str], cleanup: contextlib.ExitStack
) -> list[Listener]:
    context = None
    if any(url.lower().startswith(("tls:", "unix+tls:")) for url in binds):
        context = _server_tls_context(args, cleanup)
    listeners: list[Listener] = []
    try:
        for url in binds:
            made = listen_url(
                url,
                backlog=args.backlog,
                reuse_port=args.reuse_port,
                mode=args.unix_mode,
                tls_context=context,
                handshake_timeout=args.handshake_timeout,
            )
            if not made:
                raise ValueError(f"{url} found no socket to listen on")
            listeners.extend(made)
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def _server_tls_context(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> SSL.Context:
    from . import tls  # noqa: PLC0415 - only TLS binds load pyOpenSSL

    if args.certfile is not None:
        return tls.server_context(args.certfile, args.keyfile)
    folder = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="greenflow-")))
    certfile, fingerprint = write_self_signed_certificate(folder)
    _say(f"self-signed certificate for local use: {certfile} (SHA-256 {fingerprint})")
    return tls.server_context(certfile)


def write_self_signed_certificate(folder: Path, days: int = 30) -> tuple[Path, str]:
    """Make a self-signed certificate for localhost, 127.0.0.1 and ::1.

    Writes ``cert.pem`` (the certificate, then the key) into ``folder``, the
    key readable by the owner only, and returns its path and the SHA-256
    fingerprint of the certificate. Good for trying TLS out locally; clients
    trust it with ``--cafile`` pointing at the same file.
    """
    from cryptography import x509  # noqa: PLC0415 - only when TLS is asked for
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "greenflow self-signed localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = folder / "cert.pem"
    pem = certificate.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    fingerprint = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    return path, fingerprint


def _octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal file mode (e.g. 660)") from None


# -- connect -------------------------------------------------------------------------


def _connect(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    timeout = 30.0 if args.timeout is None else args.timeout
    try:
        flow = open_url(
            args.url,
            timeout=timeout,
            cafile=args.cafile,
            server_hostname=args.server_hostname,
            insecure=args.insecure,
        )
    except (OSError, ValueError, FlowError) as exc:
        _say(f"cannot connect to {args.url}: {exc}")
        return 1
    with flow:
        return join_stdio(flow)


def open_url(
    url: str,
    *,
    timeout: float | None = None,
    cafile: Path | None = None,
    server_hostname: str | None = None,
    insecure: bool = False,
) -> Flow:
    """Connect to ``tcp://HOST:PORT``, ``tls://HOST:PORT`` or ``unix:/PATH``.

    ``timeout`` bounds the connection and the handshake; the flow itself has
    no timeout (an interactive session may be quiet for long).
    """
    scheme, _, rest = url.partition(":")
    scheme = scheme.lower()
    if scheme == "unix":
        path = rest[2:] if rest.startswith("///") else rest
        if path.startswith("@"):
            path = "\0" + path[1:]
        flow: Flow = connect_unix(path, timeout=timeout)
        flow.timeout = None
        return flow
    if scheme not in ("tcp", "tls") or not rest.startswith("//"):
        raise ValueError(
            f"{url!r} is not a URL to connect to (tcp://HOST:PORT, tls://HOST:PORT or unix:/PATH)"
        )
    from .listeners import _host_port  # noqa: PLC0415 - one parser for both ends

    host, port = _host_port(rest[2:], url)
    flow = connect_tcp(host, port, connect_timeout=timeout)
    if scheme == "tcp":
        return flow
    from . import tls  # noqa: PLC0415 - only TLS connections load pyOpenSSL

    context = tls.client_context(cafile=cafile)
    if insecure:
        from OpenSSL import SSL  # noqa: PLC0415

        context.set_verify(SSL.VERIFY_NONE)
    return tls.client(
        flow,
        context,
        server_hostname=host if server_hostname is None else server_hostname,
        check_hostname=not insecure,
        handshake_timeout=timeout,
    )


def join_stdio(flow: Flow, stdin: int = 0, stdout: int = 1) -> int:
    """Copy ``stdin`` to ``flow`` and ``flow`` to ``stdout`` until both are done.

    At the end of ``stdin`` the flow's writing side is shut down; the copy to
    ``stdout`` goes on until the peer's EOF. The descriptors are made
    non-blocking (and put back as they were) so that waiting on them yields
    to the hub. Returns 0, 1 if the connection failed, or 128 + N when signal N
    (SIGINT, SIGTERM, SIGHUP) ended it.
    """
    with _nonblocking(stdin), _nonblocking(stdout):
        upstream = gevent.spawn(_copy_stdin, stdin, flow)
        downstream = gevent.spawn(_copy_to_stdout, flow, stdout)
        interrupted: list[int] = []

        def on_signal(signum: int) -> None:
            # Without this, SIGTERM or SIGHUP (a closed terminal) would end
            # the process before the descriptors' flags are put back, and
            # leave the shell's stdin non-blocking.
            interrupted.append(signum)
            gevent.killall([upstream, downstream], block=False)

        installed = [
            gevent.signal_handler(signum, on_signal, signum)
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        ]
        try:
            downstream.join()
            if interrupted:
                return 128 + interrupted[0]
            if not downstream.successful():
                upstream.kill()
                _say(f"connection failed: {downstream.exception}")
                return 1
            if downstream.value is False:  # stdout went away: nothing more to do
                upstream.kill()
                return 0
            upstream.join()
            if interrupted:
                return 128 + interrupted[0]
            if not upstream.successful():
                _say(f"connection failed: {upstream.exception}")
                return 1
            return 0
        finally:
            for handler in installed:
                handler.cancel()
            gevent.killall([upstream, downstream])


def _copy_stdin(stdin: int, flow: Flow) -> None:
    while data := gevent.os.nb_read(stdin, _READ_SIZE):
        flow.write(data)
    flow.shutdown("write")


def _copy_to_stdout(flow: Flow, stdout: int) -> bool:
    while data := flow.read(_READ_SIZE):
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
            raise OSError(errno.EBADF, f"descriptor {fd} is not open") from exc
        raise
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 seconds or more, not {text}")
    return value


def _say(message: str) -> None:
    print(f"greenflow: {message}", file=sys.stderr, flush=True)
