"""A script that ends with ``server.serve_forever()``, for test_server.

Prints the port, serves until SIGTERM or SIGINT, then checks that the
signal's earlier handler is back (a SIGINT raises KeyboardInterrupt again)
and prints what happened. Its handler answers "started" to a request, waits
until the stop has begun, says "stopping", and then reads the rest of the
request and answers it: a request in flight across the stop.
"""

from __future__ import annotations

import os
import signal

from greenflow import Flow, Server, idle


def handler(flow: Flow) -> None:
    while True:
        with idle():
            request = flow.read()
        if not request:
            return
        flow.write(b"started\n")
        server.stopping.wait()
        flow.write(b"stopping\n")
        flow.write(b"done:" + flow.read())


server = Server(handler, "tcp://127.0.0.1:0", timeout=20, grace=20)
server.start()
print(server.addresses[0][1], flush=True)  # type: ignore[index]
server.serve_forever()
print("serve_forever returned", flush=True)
try:
    os.kill(os.getpid(), signal.SIGINT)
    print("SIGINT ignored", flush=True)
except KeyboardInterrupt:
    print("SIGINT handler restored", flush=True)
