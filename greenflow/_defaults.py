"""Defaults shared by modules that must not import each other.

The TLS layer and the server's listeners both bound a TLS handshake; the
listeners may not import ``greenflow.tls`` eagerly (a plain server never
loads pyOpenSSL), so the value they share lives here.
"""

from __future__ import annotations

from typing import Final

#: Seconds a TLS handshake may take, client or server side. A handshake is a
#: few round trips: 10 s covers a slow link many times over, and it is short
#: enough that a peer that stalls mid-handshake (a slowloris against a TLS
#: listener) cannot hold a connection's greenlet and descriptor for long.
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
