"""A handler for the PROXY protocol tests: says, per line, whom the connection is from."""

from __future__ import annotations

import json

import greenflow


def whom(flow: greenflow.Flow) -> None:
    """Answer each line with a JSON line: the peer address, the balancer's, the header's version."""
    reader = greenflow.BufferedFlow(flow)
    while True:
        with greenflow.idle():
            line = reader.readline()
        if not line:
            return
        info = flow.proxy_info
        answer = {
            "peer": flow.peer_address,
            "proxy": None if info is None else info.proxy_address,
            "version": None if info is None else info.header.version,
            "line": line.decode().strip(),
        }
        reader.write(json.dumps(answer).encode() + b"\n")
