"""``environ``: what a request and the flow it came on tell the application.

Two parts. :func:`connection_environ` is made once per connection, from
the flow: the addresses, the scheme, and the TLS variables. :func:`request_environ`
copies it for each request and adds the request line and the header fields.

Addresses, by the kind of peer:

- TCP: ``REMOTE_ADDR`` / ``REMOTE_PORT`` are the peer's, ``SERVER_NAME`` /
  ``SERVER_PORT`` the local socket's.
- Unix sockets: ``REMOTE_ADDR`` and ``REMOTE_PORT`` are empty strings (the
  peer has no address that an application could log as one; the flow's
  ``peer_address`` still says what the socket says). ``SERVER_NAME`` and
  ``SERVER_PORT`` come from the ``Host`` field, else ``localhost`` and the
  scheme's port.
- vsock: ``REMOTE_ADDR`` is the peer's CID, ``REMOTE_PORT`` its port.

Over TLS, ``wsgi.url_scheme`` is ``https``, ``HTTPS`` is ``on``, and the
variables Apache's mod_ssl and nginx give applications are set from the
flow's :attr:`~greenflow.TLSFlow.epoch`: ``SSL_PROTOCOL``, ``SSL_CIPHER``,
``SSL_TLS_SNI``, and for a client certificate ``SSL_CLIENT_CERT`` (PEM),
``SSL_CLIENT_S_DN``, ``SSL_CLIENT_I_DN`` (RFC 4514 strings),
``SSL_CLIENT_M_SERIAL`` (hexadecimal) and ``SSL_CLIENT_VERIFY`` (``SUCCESS``;
a TLS listener verifies every certificate it accepts, or ``NONE`` when the
client sent none).

``wsgi.errors`` is a text stream whose lines go to the ``greenflow.wsgi.errors``
logger at ``ERROR``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote_to_bytes

import h11

from ..flow import Flow

if TYPE_CHECKING:
    from ..tls import TLSFlow

__all__ = ["ErrorStream", "connection_environ", "request_environ"]

errors_log = logging.getLogger("greenflow.wsgi.errors")

#: Header fields that become CGI variables of their own, without ``HTTP_``.
_UNPREFIXED: Final = {b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH"}


class ErrorStream:
    """``wsgi.errors``: a text stream whose lines are logged at ``ERROR``."""

    __slots__ = ("_partial",)

    def __init__(self) -> None:
        self._partial = ""

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"wsgi.errors takes str, not {type(text).__name__}")
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            errors_log.error("%s", line)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._partial:
            errors_log.error("%s", self._partial)
            self._partial = ""


def _tls_layer(flow: Flow) -> TLSFlow | None:
    """The TLS flow among ``flow``'s layers, if any (without loading the TLS module)."""
    tls = sys.modules.get("greenflow.tls")
    if tls is None:
        return None  # no TLS flow can exist yet
    layer: Flow | None = flow
    while layer is not None:
        if isinstance(layer, tls.TLSFlow):
            found: TLSFlow = layer
            return found
        layer = layer.underlying
    return None


def _host_port(address: object) -> tuple[str, str] | None:
    """``(host, port)`` of an IP or vsock address; None for a Unix one or none."""
    if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[1], int):
        return str(address[0]), str(address[1])
    return None


def connection_environ(flow: Flow) -> dict[str, Any]:
    """The part of ``environ`` that is the same for every request of one connection."""
    tls = _tls_layer(flow)
    scheme = "https" if tls is not None else "http"
    environ: dict[str, Any] = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SCRIPT_NAME": "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    remote = _host_port(flow.peer_address)
    environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = remote or ("", "")
    local = _host_port(flow.local_address)
    if local is not None:
        environ["SERVER_NAME"], environ["SERVER_PORT"] = local
    if tls is not None:
        environ.update(tls_environ(tls))
    return environ


def tls_environ(flow: TLSFlow) -> dict[str, str]:
    """The ``HTTPS`` and ``SSL_*`` variables of a TLS connection."""
    from cryptography.hazmat.primitives.serialization import Encoding  # noqa: PLC0415 - TLS only

    epoch = flow.epoch
    variables = {"HTTPS": "on", "SSL_PROTOCOL": epoch.version, "SSL_CIPHER": epoch.cipher}
    if epoch.server_name is not None:
        variables["SSL_TLS_SNI"] = epoch.server_name
    certificate = epoch.peer_certificate
    if certificate is None:
        variables["SSL_CLIENT_VERIFY"] = "NONE"
        return variables
    variables.update(
        SSL_CLIENT_VERIFY="SUCCESS",
        SSL_CLIENT_CERT=certificate.public_bytes(Encoding.PEM).decode("ascii"),
        SSL_CLIENT_S_DN=certificate.subject.rfc4514_string(),
        SSL_CLIENT_I_DN=certificate.issuer.rfc4514_string(),
        SSL_CLIENT_M_SERIAL=f"{certificate.serial_number:X}",
    )
    return variables


def request_environ(base: dict[str, Any], request: h11.Request, errors: ErrorStream) -> dict[str, Any]:
    """The ``environ`` of one request: ``base`` plus the request line and the header fields.

    ``wsgi.input`` is the caller's to add. Header field names with an
    underscore are dropped: as CGI variables they could not be told apart
    from the same name with a dash (``X_User`` would pass for ``X-User``).
    """
    environ = base.copy()
    target = request.target.decode("latin-1")
    path, _, query = target.partition("?")
    if path.startswith(("http://", "https://")):  # the absolute form: keep only the path
        path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
    environ["REQUEST_METHOD"] = request.method.decode("ascii")
    environ["PATH_INFO"] = unquote_to_bytes(path).decode("latin-1")
    environ["QUERY_STRING"] = query
    environ["RAW_URI"] = environ["REQUEST_URI"] = target
    environ["SERVER_PROTOCOL"] = "HTTP/" + request.http_version.decode("ascii")
    environ["wsgi.errors"] = errors
    for name, value in request.headers:
        key = _UNPREFIXED.get(name)
        if key is None:
            if b"_" in name:
                continue
            key = "HTTP_" + name.decode("ascii").upper().replace("-", "_")
        text = value.decode("latin-1")
        if key in environ and key.startswith("HTTP_"):
            text = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + text
        environ[key] = text
    if "SERVER_NAME" not in environ:
        _server_from_host(environ)
    return environ


def _server_from_host(environ: dict[str, Any]) -> None:
    """``SERVER_NAME`` and ``SERVER_PORT`` of a socket without an IP address, from ``Host``."""
    default_port = "443" if environ["wsgi.url_scheme"] == "https" else "80"
    host = environ.get("HTTP_HOST", "")
    name, port = host, default_port
    if host.startswith("["):
        bracket = host.find("]")
        name = host[: bracket + 1]
        port = host[bracket + 2 :] if host[bracket + 1 : bracket + 2] == ":" else default_port
    elif ":" in host:
        name, _, port = host.rpartition(":")
    environ["SERVER_NAME"] = name or "localhost"
    environ["SERVER_PORT"] = port if port.isdigit() else default_port
