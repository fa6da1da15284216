"""Small responders, written on BufferedFlow, for the tests of stdlib clients over flows.

They speak just enough of HTTP/1.1 and POP3 for ``http.client`` and
``poplib`` to run their real code paths (chunked bodies both ways,
keep-alive, multi-line replies with dot-stuffing).
"""

from __future__ import annotations

import greenflow
from greenflow import BufferedFlow, Flow


def _chunked_body(reader: BufferedFlow) -> bytes:
    body = bytearray()
    while True:
        size = int(reader.readline().split(b";")[0], 16)
        body += reader.read_exactly(size)
        reader.read_exactly(2)  # the CRLF after the chunk (after the last one: the end)
        if not size:
            return bytes(body)


def _send_chunked(flow: Flow, reply: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    pieces = [reply[i : i + 7] for i in range(0, len(reply), 7)]
    flow.writev([head, *(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces), b"0\r\n\r\n"])


def http_echo(flow: Flow) -> None:
    """Answer each request with its method, path and body, in a chunked body; keep-alive."""
    reader = BufferedFlow(flow, limit=8192)
    while True:
        with greenflow.idle():
            request_line = reader.readline()
        if not request_line:
            return
        headers: dict[str, str] = {}
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            body = _chunked_body(reader)
        else:
            body = reader.read_exactly(int(headers.get("content-length", "0")))
        method, path, _version = request_line.split()
        _send_chunked(reader, b"%s %s %s" % (method, path, body))


MAILBOX = [b"Subject: one\r\n\r\nfirst\r\n.dotted line\r\n", b"Subject: two\r\n\r\nsecond\r\n"]


def pop3(flow: Flow) -> None:
    """A POP3 server with one user (alice, secret) and MAILBOX."""
    reader = BufferedFlow(flow, limit=1024)
    reader.write(b"+OK greenflow test POP3 ready\r\n")
    for line in reader:
        command, _, argument = line.strip().partition(b" ")
        command = command.upper()
        if command == b"USER":
            reply = b"+OK" if argument == b"alice" else b"-ERR unknown"
        elif command == b"PASS":
            reply = b"+OK logged in" if argument == b"secret" else b"-ERR denied"
        elif command == b"STAT":
            reply = b"+OK %d %d" % (len(MAILBOX), sum(map(len, MAILBOX)))
        elif command == b"RETR":
            message = MAILBOX[int(argument) - 1]
            lines = message.split(b"\r\n")
            stuffed = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
            reply = b"+OK %d octets\r\n%s." % (len(message), stuffed)
        elif command == b"QUIT":
            reader.write(b"+OK bye\r\n")
            return
        else:
            reply = b"-ERR unknown command"
        reader.write(reply + b"\r\n")
