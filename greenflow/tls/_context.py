"""pyOpenSSL contexts with secure defaults, for clients and for servers.

Both helpers return a plain ``OpenSSL.SSL.Context``; anything they do not
cover can be set on it before its first use, and a context built by hand is
accepted wherever these are. The defaults: TLS 1.2 at least, certificates
verified (a client always checks the server; a server checks clients when
asked to), no TLS compression, forward-secret AEAD cipher suites only for
TLS 1.2 (TLS 1.3 suites are all fine), and the server's order of preference.

The files they load are checked here, so that a wrong file gives a sentence
instead of OpenSSL's error queue: a file that cannot be read raises the
``OSError`` of opening it (``FileNotFoundError``, ``PermissionError``,
``IsADirectoryError``), reworded to say which file it was meant to be; a
file that does not hold what it should (no PEM certificate, no PEM key, a
key that does not belong to the certificate) raises ``ValueError`` naming
the file and what is wrong with it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence

from cryptography import x509
from OpenSSL import SSL, crypto

from ._errors import TLSError, reasons
from ._openssl import set_expected_host

__all__ = ["client_context", "default_client_context", "server_context"]

#: TLS 1.2 suites we allow: ECDHE or DHE key exchange, AES-GCM or ChaCha20.
_TLS12_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!DSS:!SHA1"

_VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}

Path = str | os.PathLike[str]

_default_client: SSL.Context | None = None


def _base_context(minimum_version: str, maximum_version: str | None) -> SSL.Context:
    try:
        low = _VERSIONS[minimum_version]
        high = _VERSIONS[maximum_version] if maximum_version is not None else None
    except KeyError as exc:
        raise ValueError(f"TLS version must be one of {sorted(_VERSIONS)}, not {exc.args[0]!r}") from None
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(low)
    if high is not None:
        context.set_max_proto_version(high)
    context.set_options(SSL.OP_NO_COMPRESSION)
    context.set_cipher_list(_TLS12_CIPHERS)
    return context


def client_context(
    *,
    cafile: Path | None = None,
    cadata: bytes | None = None,
    use_system_store: bool | None = None,
    alpn_protocols: Sequence[str] | None = None,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    minimum_version: str = "TLSv1.2",
    maximum_version: str | None = None,
) -> SSL.Context:
    """A context for TLS clients that verifies the server.

    Args:
        cafile: a PEM file of trusted CA certificates.
        cadata: PEM bytes of trusted CA certificates.
        use_system_store: trust the system's CA store too. By default it is
            used only when neither ``cafile`` nor ``cadata`` is given.
        alpn_protocols: application protocols to offer, most wanted first.
        certfile, keyfile: a client certificate chain and its key (PEM; the
            key may be in ``certfile``), for servers that ask for one.
        minimum_version, maximum_version: ``"TLSv1.2"`` or ``"TLSv1.3"``.

    Host names are checked per connection, by :func:`greenflow.tls.client`.

    Raises:
        OSError: a file cannot be read; the message names it.
        ValueError: a file does not hold PEM certificates (or a key that
            belongs to the certificate); the message names it and says what
            is wrong. Also for a bad version or ALPN name.
    """
    context = _base_context(minimum_version, maximum_version)
    context.set_verify(SSL.VERIFY_PEER)
    if cafile is not None:
        _load_cas(context, cafile, "CA file")
    if cadata is not None:
        store = context.get_cert_store()
        assert store is not None
        for certificate in x509.load_pem_x509_certificates(cadata):
            store.add_cert(crypto.X509.from_cryptography(certificate))
    if use_system_store or (use_system_store is None and cafile is None and cadata is None):
        context.set_default_verify_paths()
    if alpn_protocols:
        context.set_alpn_protos([_protocol(name) for name in alpn_protocols])
    if certfile is not None:
        _load_identity(context, certfile, keyfile, "client")
    return context


def default_client_context() -> SSL.Context:
    """The shared client context: the system's CA store, verification on.

    Built once, on first use (loading the system store takes a while).
    """
    global _default_client
    if _default_client is None:
        _default_client = client_context()
    return _default_client


def server_context(
    certfile: Path,
    keyfile: Path | None = None,
    *,
    client_cafile: Path | None = None,
    require_client_certificate: bool = False,
    alpn_protocols: Sequence[str] | None = None,
    sni_callback: Callable[[str | None], SSL.Context | None] | None = None,
    minimum_version: str = "TLSv1.2",
    maximum_version: str | None = None,
) -> SSL.Context:
    """A context for TLS servers.

    Args:
        certfile: the server's certificate chain (PEM, leaf first); it may
            hold the key too.
        keyfile: the private key (PEM), if not in ``certfile``.
        client_cafile: CA certificates that client certificates must chain
            to; giving it makes the server ask clients for a certificate and
            verify any that is sent.
        require_client_certificate: fail the handshake of a client that sends
            no certificate (needs ``client_cafile``).
        alpn_protocols: application protocols the server speaks, most wanted
            first. A client that offers ALPN but none of these is refused
            with a ``no_application_protocol`` alert (and the server's
            handshake raises :class:`TLSError` saying what was offered); a
            client that offers no ALPN at all is served.
        sni_callback: called with the name the client asked for (``None`` if
            it sent none); it may return another context (with another
            certificate) to use for this connection, or ``None`` to keep
            this one.
        minimum_version, maximum_version: ``"TLSv1.2"`` or ``"TLSv1.3"``.

    Raises:
        OSError: a file cannot be read; the message names it.
        ValueError: ``certfile`` holds no PEM certificate, the key file no
            PEM private key, the key does not belong to the certificate, or
            ``client_cafile`` holds no PEM certificate; the message names
            the file. Also for bad options.
    """
    if require_client_certificate and client_cafile is None:
        raise ValueError("require_client_certificate needs client_cafile, to verify the certificates")
    context = _base_context(minimum_version, maximum_version)
    context.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE)
    _load_identity(context, certfile, keyfile, "server")
    # A session id context lets sessions be resumed when clients are verified.
    context.set_session_id(b"greenflow")
    if client_cafile is not None:
        _load_cas(context, client_cafile, "client CA file")
        context.load_client_ca(os.fsencode(client_cafile))
        mode = SSL.VERIFY_PEER
        if require_client_certificate:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        context.set_verify(mode)
    if alpn_protocols:
        offered = [_protocol(name) for name in alpn_protocols]

        def select(_conn: SSL.Connection, client_protocols: list[bytes]) -> bytes:
            for protocol in offered:
                if protocol in client_protocols:
                    return protocol
            # Raising makes pyOpenSSL answer with a fatal
            # no_application_protocol alert, and re-raise this error from
            # the handshake (RFC 7301: refuse rather than guess).
            theirs = [name.decode("ascii", "replace") for name in client_protocols]
            raise TLSError(
                "TLS handshake failed: no application protocol in common "
                f"(the client offered {theirs}, this server speaks {list(alpn_protocols)})"
            )

        context.set_alpn_select_callback(select)
    if sni_callback is not None:
        callback = sni_callback

        def on_server_name(conn: SSL.Connection) -> None:
            name = conn.get_servername()
            chosen = callback(name.decode("ascii", "replace") if name else None)
            if chosen is not None:
                conn.set_context(chosen)

        context.set_tlsext_servername_callback(on_server_name)
    return context


def _readable(path: Path, what: str) -> str:
    """The path as a string, once it is known to open; else its OSError, reworded."""
    name = os.fsdecode(path)
    try:
        with open(name, "rb"):
            pass
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot read the TLS {what} ({exc.strerror})", name) from exc
    return name


def _openssl_says(exc: SSL.Error) -> str:
    return f"OpenSSL: {'; '.join(dict.fromkeys(reasons(exc))) or type(exc).__name__}"


def _load_identity(context: SSL.Context, certfile: Path, keyfile: Path | None, whose: str) -> None:
    """Load a certificate chain and its key, saying which file is wrong."""
    cert_name = _readable(certfile, f"{whose} certificate file")
    key_name = cert_name if keyfile is None else _readable(keyfile, f"{whose} key file")
    try:
        context.use_certificate_chain_file(os.fsencode(cert_name))
    except SSL.Error as exc:
        raise ValueError(
            f"the TLS {whose} certificate file {cert_name!r} holds no PEM certificate ({_openssl_says(exc)})"
        ) from exc
    try:
        context.use_privatekey_file(os.fsencode(key_name))
        context.check_privatekey()
    except SSL.Error as exc:
        if "key values mismatch" in reasons(exc):
            raise ValueError(
                f"the private key in {key_name!r} does not belong to the certificate in {cert_name!r}"
            ) from exc
        if keyfile is None:
            what, alone = "certificate file", "; if the key is in a file of its own, pass keyfile"
        else:
            what, alone = "key file", ""
        raise ValueError(
            f"the TLS {whose} {what} {key_name!r} holds no PEM private key ({_openssl_says(exc)}){alone}"
        ) from exc


def _load_cas(context: SSL.Context, cafile: Path, what: str) -> None:
    name = _readable(cafile, what)
    try:
        context.load_verify_locations(name)
    except SSL.Error as exc:
        raise ValueError(f"the TLS {what} {name!r} holds no PEM certificate ({_openssl_says(exc)})") from exc


def _protocol(name: str) -> bytes:
    encoded = name.encode("ascii")
    if not 0 < len(encoded) < 256:
        raise ValueError(f"an ALPN protocol name must be 1 to 255 bytes, not {name!r}")
    return encoded


# -- the server's name, per connection ------------------------------------------


def expect_server(
    conn: SSL.Connection, context: SSL.Context, server_hostname: str, *, check_hostname: bool
) -> None:
    """Set a client connection up for the server ``server_hostname``.

    Sends it as SNI (a DNS name; not an IP address), and with
    ``check_hostname`` makes OpenSSL check it against the certificate inside
    the handshake, so that a wrong server fails *before* it is sent
    anything, with an alert.

    Raises:
        ValueError: the name is empty or holds a NUL byte, or a check was
            asked for on a context that does not verify certificates at all,
            where it would silently do nothing.
    """
    if not server_hostname.strip():
        # OpenSSL takes an empty expected name as "check no name", which
        # would accept any certificate the CA signed: refuse it.
        raise ValueError("server_hostname is empty; give the name to check, or None for no name")
    if "\0" in server_hostname:
        raise ValueError(f"server_hostname {server_hostname!r} contains a NUL byte")
    address = _parse_ip(server_hostname)
    if address is None:
        # SNI carries DNS names only (RFC 6066), in their ASCII form.
        conn.set_tlsext_host_name(_ascii_name(server_hostname))
    if check_hostname:
        if context.get_verify_mode() & SSL.VERIFY_PEER == 0:
            raise ValueError(
                "the context does not verify certificates, so the host name "
                f"{server_hostname!r} cannot be checked; use a context that verifies "
                "(greenflow.tls.client_context) or pass check_hostname=False"
            )
        _set_expected_host(conn, server_hostname, address)


def _parse_ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None


def _ascii_name(name: str) -> bytes:
    try:
        return name.encode("ascii")
    except UnicodeEncodeError:
        return name.encode("idna")


def _set_expected_host(
    conn: SSL.Connection, name: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
) -> None:
    """Make OpenSSL check the peer's name inside the handshake."""
    ok = set_expected_host(conn, address if address is not None else _ascii_name(name))
    if not ok:  # pragma: no cover - OpenSSL refuses only NUL bytes (refused above) or lacks memory
        raise ValueError(f"{name!r} is not a host name OpenSSL can check a certificate against")
