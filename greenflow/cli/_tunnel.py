"""``greenflow tunnel --listen URL --to URL``: a port forwarder, TLS terminator or originator.

Every connection accepted on the listener (any ``--bind`` URL: TCP, TLS,
Unix, vsock, an inherited descriptor, systemd) is joined to a new connection to the
target (TCP, TLS, Unix, vsock, or a connected descriptor) with
:func:`greenflow.proxy`, so each half-close travels end to end. On a TLS
listener ``--route NAME=URL`` picks the target by the name the client asked
for (SNI). It runs on :class:`greenflow.Server`: SIGTERM and SIGINT stop it
gracefully (status 0), SIGHUP reloads the certificates for new handshakes.

Targets are limited to this machine (loopback addresses, ``localhost``, Unix
sockets, descriptors, vsock CID 1) unless ``--allow-remote-targets`` is
given: a tunnel started for local use cannot be turned into an open relay
by a typo.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import logging
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import gevent

from ..addresses import Endpoint, Scheme, format_address, parse_url
from ..copying import proxy
from ..errors import FlowError
from ..flow import Flow
from ..listeners import Listener, listen_url
from ..proxy_protocol import header_for
from ..server import DEFAULT_GRACE, Server, default_max_connections
from ..sockets import from_fd
from ._common import USAGE, CommandError, describe_error, load_tls_context, positive_int, say, seconds
from ._connect import _open_transport
from ._serve import configure_logging

if TYPE_CHECKING:
    from OpenSSL import SSL

    from ._tunnel_tls import AllowList, Certificates, Routes

__all__ = ["add_tunnel", "tunnel"]

log = logging.getLogger("greenflow.tunnel")

#: Seconds to reach a target, and to finish a TLS handshake on either side.
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0

#: The options that only a TLS listener uses, and those only TLS targets use.
_LISTENER_TLS = (
    ("--certfile", "certfile"),
    ("--keyfile", "keyfile"),
    ("--client-cafile", "client_cafile"),
    ("--route", "route"),
    ("--allow-subject", "allow_subject"),
    ("--allow-dns", "allow_dns"),
    ("--allow-uri", "allow_uri"),
    ("--allow-pin", "allow_pin"),
)
_TARGET_TLS = (
    ("--cafile", "cafile"),
    ("--client-certfile", "client_certfile"),
    ("--client-keyfile", "client_keyfile"),
    ("--server-name", "server_name"),
)


def add_tunnel(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``greenflow tunnel`` and its options to the command line."""
    parser = commands.add_parser(
        "tunnel",
        help="forward connections to a target, adding or removing TLS",
        description="Accept connections on --listen and join each to a new connection to --to "
        "(or to the --route its TLS server name picks), half-closes kept end to end.",
    )
    parser.add_argument(
        "--listen",
        required=True,
        metavar="URL",
        help="tcp://, tls://, unix:, unix+tls:, vsock:// (and +tls, +framed), fd://N, systemd:",
    )
    parser.add_argument(
        "--to",
        metavar="URL",
        help="the target: tcp://, tls://, unix:, unix+tls:, vsock:// (and +tls, +framed, +uds), fd://N",
    )
    parser.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="on a TLS listener, send clients that ask for NAME (SNI; *.example.com matches one label) "
        "to URL; others go to --to (repeatable)",
    )
    parser.add_argument(
        "--allow-remote-targets",
        action="store_true",
        help="allow targets other than loopback, localhost, Unix sockets, descriptors and vsock CID 1",
    )
    _add_limits(parser)
    _add_listener_tls(parser)
    _add_target_tls(parser)
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error", "critical"],
        help="logging level (default info; every connection's stats are logged at info)",
    )


def _add_limits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--connect-timeout",
        type=seconds,
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long reaching the target may take (default {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=seconds,
        default=DEFAULT_HANDSHAKE_TIMEOUT,
        metavar="SECONDS",
        help=f"how long a TLS handshake may take, on either side (default {DEFAULT_HANDSHAKE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--idle-timeout",
        type=seconds,
        metavar="SECONDS",
        help="end a connection when no data moved either way for this long (default none)",
    )
    parser.add_argument(
        "--send-proxy",
        choices=["v1", "v2"],
        metavar="VERSION",
        help="send the target a PROXY protocol header (v1 or v2) with the client's address first,"
        " as HAProxy's send-proxy does (default: none)",
    )
    parser.add_argument("--max-connections", type=positive_int, metavar="N", help="connections open at once")
    parser.add_argument(
        "--grace",
        type=seconds,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help=f"how long a stop lets open connections run on (default {DEFAULT_GRACE:g})",
    )


def _add_listener_tls(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS on the listening side (tls:// and unix+tls: --listen)")
    group.add_argument("--certfile", type=Path, help="certificate chain (PEM); default: a self-signed one")
    group.add_argument("--keyfile", type=Path, help="private key (PEM), if not in --certfile")
    group.add_argument(
        "--client-cafile",
        type=Path,
        metavar="CAFILE",
        help="require a client certificate, verified against these CA certificates (PEM)",
    )
    for option, what in (
        ("--allow-subject", "a subject, e.g. CN=client,O=Example"),
        ("--allow-dns", "a DNS name in the certificate"),
        ("--allow-uri", "a URI name in the certificate, e.g. spiffe://example.org/app"),
        ("--allow-pin", "a public-key pin, sha256//BASE64"),
    ):
        group.add_argument(
            option,
            action="append",
            default=[],
            metavar="VALUE",
            help=f"admit client certificates with {what}",
        )
    group.add_argument(
        "--reload-interval",
        type=seconds,
        metavar="SECONDS",
        help="also reload the certificates this often when their files changed (SIGHUP always reloads)",
    )


def _add_target_tls(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS to the target (tls:// and unix+tls: --to and --route URLs)")
    group.add_argument(
        "--cafile", type=Path, help="trust these CA certificates (PEM) instead of the system's"
    )
    group.add_argument(
        "--client-certfile", type=Path, metavar="CERTFILE", help="a client certificate to present"
    )
    group.add_argument(
        "--client-keyfile", type=Path, metavar="KEYFILE", help="its key, if not in the certificate file"
    )
    group.add_argument(
        "--server-name",
        metavar="NAME",
        help="the name to ask for (SNI) and check the target's certificate against (default: its host)",
    )


@dataclass(frozen=True)
class Plan:
    """What the command line asked for, checked."""

    listen: Endpoint
    default: Endpoint | None
    routes: Routes
    allow: AllowList


def tunnel(args: argparse.Namespace) -> int:
    """Run ``greenflow tunnel``; returns the exit status."""
    configure_logging(args.log_level)
    plan = _plan(args)
    with contextlib.ExitStack() as cleanup:
        certificates = _certificates(args, plan, cleanup)
        relay = Relay(args, plan, certificates)
        server = Server(
            relay,
            *_listeners(args, plan, certificates),
            max_connections=args.max_connections or default_max_connections(),
            grace=args.grace,
        )
        server.start()
        return _run(args, server, certificates)
    raise AssertionError("unreachable")  # pragma: no cover - the with block returns


def _run(args: argparse.Namespace, server: Server, certificates: Certificates | None) -> int:
    def on_stop(signum: int) -> None:
        if server.serving:
            say(f"{signal.Signals(signum).name}: stopping (grace period {args.grace:g} s)")
            server.stop()

    def on_reload(signum: int) -> None:
        if certificates is not None:
            certificates.reload(signal.Signals(signum).name)

    installed = [gevent.signal_handler(signum, on_stop, signum) for signum in (signal.SIGTERM, signal.SIGINT)]
    installed.append(gevent.signal_handler(signal.SIGHUP, on_reload, signal.SIGHUP))
    timer = None
    if certificates is not None and args.reload_interval:
        timer = gevent.spawn(_reload_every, certificates, args.reload_interval)
    try:
        for url in server.urls:
            say(f"listening on {url}")
        server.serve_forever(stop_signals=())
    finally:
        for handler in installed:
            handler.cancel()
        if timer is not None:
            timer.kill()
    say("stopped")
    return 0


def _reload_every(certificates: Certificates, interval: float) -> None:
    while True:
        gevent.sleep(interval)
        certificates.reload("timer", only_if_changed=True)


# -- checking the command line ------------------------------------------------------


def _plan(args: argparse.Namespace) -> Plan:
    from ._tunnel_tls import AllowList, Route, Routes  # noqa: PLC0415 - pure parsing, no TLS loaded yet

    listen = _parse(args.listen, "--listen", "a listener URL")
    default = _parse(args.to, "--to", "a target URL") if args.to is not None else None
    routes: list[Route] = []
    for text in args.route:
        name, equals, url = text.partition("=")
        if not equals or not name:
            raise CommandError(
                f"--route {text!r}: expected NAME=URL, e.g. api.example.com=tcp://127.0.0.1:8080", USAGE
            )
        routes.append(Route(name.lower().rstrip("."), _parse(url, "--route", "a target URL")))
    if default is None and not routes:
        raise CommandError("give a target: --to URL (or --route NAME=URL on a TLS listener)", USAGE)
    _check_tls_options(args, listen, [*([] if default is None else [default]), *(r.target for r in routes)])
    for target in (default, *(route.target for route in routes)):
        if target is not None:
            _check_target(target, args.allow_remote_targets)
    try:
        allow = AllowList.parse(args.allow_subject, args.allow_dns, args.allow_uri, args.allow_pin)
    except ValueError as exc:
        raise CommandError(str(exc), USAGE) from exc
    if allow and args.client_cafile is None:
        raise CommandError("an allow-list needs --client-cafile, to verify the client certificates", USAGE)
    return Plan(listen, default, Routes(tuple(routes)), allow)


def _parse(url: str, option: str, kind: str) -> Endpoint:
    try:
        return parse_url(url, kind=kind)
    except ValueError as exc:
        raise CommandError(f"{option}: {exc}", USAGE) from exc


def _check_tls_options(args: argparse.Namespace, listen: Endpoint, targets: list[Endpoint]) -> None:
    checks = (
        (_LISTENER_TLS, listen.tls, "a TLS --listen URL"),
        (_TARGET_TLS, any(t.tls for t in targets), "a TLS target"),
    )
    for options, applies, what in checks:
        for option, name in options:
            if getattr(args, name) and not applies:
                raise CommandError(f"{option} needs {what} (tls:// or unix+tls:), and there is none", USAGE)
    if args.keyfile is not None and args.certfile is None:
        raise CommandError("--keyfile needs --certfile, the certificate it goes with", USAGE)
    if args.client_keyfile is not None and args.client_certfile is None:
        raise CommandError("--client-keyfile needs --client-certfile, the certificate it goes with", USAGE)


def _check_target(target: Endpoint, allow_remote: bool) -> None:
    scheme = target.scheme
    if scheme is Scheme.SYSTEMD:
        raise CommandError(f"{target.url} is a listener, not a target to connect to", USAGE)
    if allow_remote or scheme in (Scheme.UNIX, Scheme.UNIX_TLS, Scheme.FD):
        return
    if target.vsock:
        if target.cid != 1:
            raise CommandError(
                f"the target {target.url} is another machine (vsock CID {target.cid}); "
                "--allow-remote-targets allows it",
                USAGE,
            )
        return
    if scheme in (Scheme.VSOCK_UDS, Scheme.VSOCK_UDS_FRAMED):
        raise CommandError(
            f"the target {target.url} is a virtual machine (through its VMM's socket); "
            "--allow-remote-targets allows it",
            USAGE,
        )
    if target.host.lower() == "localhost":
        return
    try:
        local = ipaddress.ip_address(target.host.partition("%")[0]).is_loopback
    except ValueError:
        local = False  # a name: it could resolve to anything
    if not local:
        raise CommandError(
            f"the target {target.url} is not on this machine (loopback or Unix); "
            "--allow-remote-targets allows it",
            USAGE,
        )


# -- TLS and listeners ---------------------------------------------------------------


def _certificates(args: argparse.Namespace, plan: Plan, cleanup: contextlib.ExitStack) -> Certificates | None:
    targets = [t for t in (plan.default, *(r.target for r in plan.routes.routes)) if t is not None]
    serving, originating = plan.listen.tls, any(t.tls for t in targets)
    if not (serving or originating):
        return None
    from .. import tls  # noqa: PLC0415 - only TLS tunnels load pyOpenSSL
    from ..selfsigned import write_self_signed_certificate  # noqa: PLC0415
    from ._tunnel_tls import Certificates  # noqa: PLC0415

    certfile, keyfile = args.certfile, args.keyfile
    if serving and certfile is None:
        folder = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="greenflow-")))
        certfile, fingerprint = write_self_signed_certificate(folder)
        say(f"self-signed certificate for local use: {certfile} (SHA-256 {fingerprint})")
    client_cafile = args.client_cafile

    def server() -> SSL.Context:
        return tls.server_context(
            certfile,
            keyfile,
            client_cafile=client_cafile,
            require_client_certificate=client_cafile is not None,
        )

    def client() -> SSL.Context:
        return tls.client_context(
            cafile=args.cafile, certfile=args.client_certfile, keyfile=args.client_keyfile
        )

    files = {
        "--certfile": args.certfile,
        "--keyfile": keyfile,
        "--client-cafile": client_cafile,
        "--cafile": args.cafile,
        "--client-certfile": args.client_certfile,
        "--client-keyfile": args.client_keyfile,
    }
    given = [path for path in files.values() if path is not None]
    return load_tls_context(
        lambda: Certificates(server if serving else None, client if originating else None, given), files
    )


def _listeners(args: argparse.Namespace, plan: Plan, certificates: Certificates | None) -> list[Listener]:
    endpoint = plan.listen
    plain = endpoint
    if endpoint.tls:  # the plain listener (tls:// is tcp://, X+tls: is X:), then the reloading TLS layer
        name = "tcp" if endpoint.scheme is Scheme.TLS else endpoint.scheme.value.replace("+tls", "")
        plain = dataclasses.replace(endpoint, scheme=Scheme(name), url="")
    try:
        made = listen_url(str(plain))
    except (OSError, ValueError) as exc:
        raise CommandError(describe_error(exc).replace(str(plain), endpoint.url)) from exc
    if not made:
        raise CommandError(f"cannot listen on {endpoint.url}: it found no socket to listen on")
    if not endpoint.tls:
        return made
    from ._tunnel_tls import ReloadingTLSListener  # noqa: PLC0415

    assert certificates is not None
    timeout = args.handshake_timeout or None
    return [ReloadingTLSListener(listener, certificates, handshake_timeout=timeout) for listener in made]


# -- one connection -----------------------------------------------------------------


class Relay:
    """The server's handler: route, check, connect to the target, proxy, log the stats."""

    def __init__(self, args: argparse.Namespace, plan: Plan, certificates: Certificates | None) -> None:
        self._plan = plan
        self._certificates = certificates
        self._connect_timeout = args.connect_timeout or None
        self._handshake_timeout = args.handshake_timeout or None
        self._idle_timeout = args.idle_timeout or None
        self._server_name: str | None = args.server_name
        self._proxy_version = {"v1": 1, "v2": 2}.get(args.send_proxy or "")
        self._used_fds: set[int] = set()

    def __call__(self, client: Flow) -> None:
        peer = format_address(client.peer_address) if client.peer_address is not None else "a client"
        epoch = getattr(client, "epoch", None)
        refusal = self._plan.allow.refusal(epoch.peer_certificate) if epoch is not None else None
        if refusal is not None:
            log.warning("%s: refused: %s", peer, refusal)
            return
        target = self._target(epoch.server_name if epoch is not None else None)
        if target is None:
            log.warning(
                "%s: refused: no route for the server name %r, and no --to", peer, epoch and epoch.server_name
            )
            return
        try:
            upstream = self._open(target)
        except (FlowError, OSError, CommandError) as exc:
            log.warning("%s: cannot reach %s: %s", peer, target.url, describe_error(exc))
            return
        if self._proxy_version is not None:
            try:  # who the client is, before any of its bytes
                upstream.write(header_for(client, version=self._proxy_version))
            except FlowError as exc:
                upstream.close()
                log.warning("%s: cannot send the PROXY header to %s: %s", peer, target.url, exc)
                return
        stats = proxy(client, upstream, self._idle_timeout)
        log.info(
            "%s -> %s: sent %d bytes, received %d bytes, %.3f s, %s",
            peer,
            target.url,
            stats.a_to_b.bytes,
            stats.b_to_a.bytes,
            stats.seconds,
            stats.end.value if stats.error is None else f"{stats.end.value}: {stats.error}",
        )

    def _target(self, server_name: str | None) -> Endpoint | None:
        routed = self._plan.routes.target_for(server_name)
        return routed if routed is not None else self._plan.default

    def _open(self, target: Endpoint) -> Flow:
        if target.scheme is Scheme.FD:
            if target.fd in self._used_fds:
                raise CommandError(f"descriptor {target.fd} was the target of an earlier connection")
            self._used_fds.add(target.fd)
            return from_fd(target.fd)
        flow = _open_transport(target, self._connect_timeout)
        flow.timeout = None
        if not target.tls:
            return flow
        from .. import tls  # noqa: PLC0415 - loaded already: the target is TLS

        assert self._certificates is not None and self._certificates.client is not None
        name = self._server_name or (target.host if target.scheme is Scheme.TLS else "localhost")
        return tls.client(
            flow, self._certificates.client, server_hostname=name, handshake_timeout=self._handshake_timeout
        )
