"""Adapters for code written for sockets and files, over any flow.

- :class:`FlowSocket`: a socket-like object (``recv``, ``sendall``,
  ``makefile``, timeouts, ...) for ``http.client``, ``smtplib``, ``poplib``,
  ``imaplib``, redis-py and their like.
- :class:`FlowIO`: an ``io.RawIOBase``, for ``io.BufferedReader``,
  ``io.TextIOWrapper`` and code that takes a binary file.
- :func:`socket_bridge`: a real connected socket, pumped to and from the flow,
  for code that needs a descriptor.
- :class:`AdapterClosedError`: what an adapter raises once it, or its flow,
  is closed (a :class:`~greenflow.ClosedError` and an ``OSError``).
"""

from __future__ import annotations

from ._errors import AdapterClosedError
from .bridge import socket_bridge
from .fileio import FlowIO
from .flowsocket import FlowSocket

__all__ = ["AdapterClosedError", "FlowIO", "FlowSocket", "socket_bridge"]
