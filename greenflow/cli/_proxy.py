"""``greenflow serve --proxy-protocol``: the PROXY protocol layer on every listener."""

from __future__ import annotations

import argparse

from ..listener import Listener
from ._common import USAGE, CommandError, seconds

__all__ = ["add_proxy_arguments", "check_proxy_arguments", "with_proxy_protocol"]


def add_proxy_arguments(serve: argparse.ArgumentParser) -> None:
    """Add ``--proxy-protocol``, ``--proxy-protocol-trust`` and ``--proxy-header-timeout``."""
    group = serve.add_argument_group("PROXY protocol (behind HAProxy, nginx or a cloud load balancer)")
    group.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="every connection starts with a PROXY protocol header (v1 or v2), required;"
        " handlers see the client's address from it",
    )
    group.add_argument(
        "--proxy-protocol-trust",
        action="append",
        default=[],
        metavar="CIDR",
        help="accept connections without a header from this network, e.g. 10.0.0.0/8"
        " (repeatable; default none)",
    )
    group.add_argument(
        "--proxy-header-timeout",
        type=seconds,
        metavar="SECONDS",
        help="how long a client may take to send its header (default 10)",
    )


def check_proxy_arguments(args: argparse.Namespace) -> None:
    """The PROXY options make sense together, or a usage error saying why."""
    if args.proxy_protocol:
        from ..proxy_protocol import parse_networks  # noqa: PLC0415 - loaded when asked for

        try:
            parse_networks(args.proxy_protocol_trust)
        except ValueError as exc:
            raise CommandError(f"--proxy-protocol-trust: {exc}", USAGE) from exc
        return
    for option, name in (
        ("--proxy-protocol-trust", "proxy_protocol_trust"),
        ("--proxy-header-timeout", "proxy_header_timeout"),
    ):
        if getattr(args, name) not in (None, []):
            raise CommandError(f"{option} applies with --proxy-protocol only", USAGE)


def with_proxy_protocol(args: argparse.Namespace, listener: Listener) -> Listener:
    """``listener`` with the PROXY layer put under any TLS layer, if ``--proxy-protocol`` asks.

    A load balancer that passes TLS through sends the header before the
    client's ClientHello, so the header is read first and TLS runs over
    what follows.
    """
    if not args.proxy_protocol:
        return listener
    from ..proxy_protocol import DEFAULT_HEADER_TIMEOUT, ProxyProtocolListener  # noqa: PLC0415

    timeout = DEFAULT_HEADER_TIMEOUT if args.proxy_header_timeout is None else args.proxy_header_timeout
    if listener.tls_context is not None:
        from ..tls import TLSListener  # noqa: PLC0415 - a TLS bind has loaded it already

        if isinstance(listener, TLSListener):
            layer = ProxyProtocolListener(
                listener.inner, trusted=args.proxy_protocol_trust, header_timeout=timeout
            )
            return TLSListener(layer, listener.tls_context, handshake_timeout=listener.handshake_timeout)
    return ProxyProtocolListener(listener, trusted=args.proxy_protocol_trust, header_timeout=timeout)
