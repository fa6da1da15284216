"""A server that runs out of descriptors on purpose, for test_server.

Usage: emfile_server.py SPARE. Starts an echo server on 127.0.0.1 port 0,
prints the port, then lowers RLIMIT_NOFILE to the descriptors already open
plus SPARE, so that accept() soon fails with EMFILE. Runs until SIGTERM.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import sys

import gevent

from greenflow.handlers import echo
from greenflow.server import Server


def main() -> None:
    spare = int(sys.argv[1])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    server = Server(echo, "tcp://127.0.0.1:0", timeout=20)
    server.start()
    gevent.signal_handler(signal.SIGTERM, server.stop, 0)
    open_now = len(os.listdir("/proc/self/fd"))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + spare, hard))
    print(server.addresses[0][1], flush=True)  # type: ignore[index]
    server.serve_forever()


if __name__ == "__main__":
    main()
