"""A transfer's progress on one terminal line: bytes each way and the rate, redrawn twice a second.

``greenflow connect`` shows it on stderr when stderr is a terminal and the
session is not an interactive one (stdin and stdout both terminals: there
the line would get in the way of what is typed and printed). No library is
needed for one line rewritten with a carriage return.
"""

from __future__ import annotations

import time
from typing import TextIO

import gevent

__all__ = ["Progress", "human_bytes"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(count: float) -> str:
    """``1536`` as ``1.5 KiB``: the largest unit that leaves at least 1."""
    for unit in _UNITS[:-1]:
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} {_UNITS[-1]}"


class Progress:
    """Counts bytes sent and received; while running, redraws its line on ``stream``.

    ``with progress:`` starts the redrawing and, at the end, draws the final
    line and ends it with a newline. With ``stream=None`` it only counts.
    """

    def __init__(self, stream: TextIO | None, interval: float = 0.5) -> None:
        self.sent = 0
        self.received = 0
        self._stream = stream
        self._interval = interval
        self._started = time.monotonic()
        self._drawer: gevent.Greenlet[[], None] | None = None

    def line(self) -> str:
        """The line as it would be drawn now."""
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = (self.sent + self.received) / elapsed
        return (
            f"sent {human_bytes(self.sent)}, received {human_bytes(self.received)}, "
            f"{human_bytes(rate)}/s, {elapsed:.1f} s"
        )

    def _draw(self, end: str = "") -> None:
        if self._stream is None:
            return
        self._stream.write(f"\r\x1b[K{self.line()}{end}")
        self._stream.flush()

    def _redraw_forever(self) -> None:
        while True:
            gevent.sleep(self._interval)
            self._draw()

    def __enter__(self) -> Progress:
        self._started = time.monotonic()
        self._drawer = gevent.spawn(self._redraw_forever)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._drawer is not None:
            self._drawer.kill()
        self._draw("\n")
