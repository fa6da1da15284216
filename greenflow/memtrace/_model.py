"""What a viewer knows about a trace: the latest sample and the memory history (sans-IO).

The terminal UI, the plain lines and the PNG report all read this model;
none of it touches a flow or a terminal, so it is tested on records alone.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from typing import Final

from ._format import End, Hello, Record, Sample, Site

__all__ = ["HISTORY", "Point", "TraceModel", "describe_site", "human_bytes", "plain_line", "sparkline"]

#: Samples of memory history a viewer keeps (ten minutes at the default interval).
HISTORY: Final = 600

_BARS: Final = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class Point:
    """Memory at one moment of the trace."""

    elapsed: float
    rss: int
    current: int
    peak: int


class TraceModel:
    """Folds records into what a viewer shows."""

    def __init__(self, history: int = HISTORY) -> None:
        self.hello: Hello | None = None
        self.latest: Sample | None = None
        self.history: collections.deque[Point] = collections.deque(maxlen=history)
        self.samples = 0
        self.dropped = 0
        self.sessions = 0
        self.ended: str | None = None
        #: The latest size of every site seen, by its innermost frame.
        self.site_sizes: dict[tuple[str, int], int] = {}

    def add(self, record: Record) -> None:
        """Take one record into account."""
        if isinstance(record, Hello):
            if self.hello is None or record.pid != self.hello.pid or record.started != self.hello.started:
                self.history.clear()
                self.site_sizes.clear()
                self.latest = None
            self.hello = record
            self.sessions += 1
            self.ended = None
        elif isinstance(record, End):
            self.ended = record.reason
        else:
            self.latest = record
            self.samples += 1
            self.dropped += record.dropped
            self.history.append(Point(record.elapsed, record.rss, record.current, record.peak))
            for site in record.sites:
                if site.frames:
                    self.site_sizes[site.frames[0]] = site.size

    def largest_sites(self, count: int) -> list[tuple[tuple[str, int], int]]:
        """The sites with the largest latest size, largest first."""
        return sorted(self.site_sizes.items(), key=lambda item: item[1], reverse=True)[:count]


def human_bytes(value: int) -> str:
    """``1.5 MiB``, ``-12 KiB``, ``512 B``."""
    size = float(abs(value))
    sign = "-" if value < 0 else ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{sign}{size:.0f} {unit}" if unit == "B" else f"{sign}{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def sparkline(values: list[int], width: int) -> str:
    """The last ``width`` values as a line of block characters, lowest to highest."""
    shown = values[-width:] if width > 0 else []
    if not shown:
        return ""
    low, high = min(shown), max(shown)
    span = high - low
    if span == 0:
        return _BARS[0] * len(shown)
    return "".join(_BARS[(value - low) * (len(_BARS) - 1) // span] for value in shown)


def describe_site(site: Site) -> str:
    """``path/file.py:12`` for the innermost frame (``<no traceback>`` if none)."""
    if not site.frames:
        return "<no traceback>"
    filename, lineno = site.frames[0]
    return f"{filename}:{lineno}"


def short_path(filename: str, keep: int = 2) -> str:
    """The last ``keep`` parts of a path, for narrow columns."""
    parts = filename.split(os.sep)
    return os.sep.join(parts[-keep:]) if len(parts) > keep else filename


def plain_line(sample: Sample) -> str:
    """One sample as a line of ``key=value`` words (for logs and pipes)."""
    words = [
        f"#{sample.seq}",
        f"t={sample.elapsed:.2f}",
        f"rss={sample.rss}",
        f"traced={sample.current}",
        f"peak={sample.peak}",
        f"dropped={sample.dropped}",
    ]
    if sample.sites:
        site = sample.sites[0]
        words.append(f"top-site={describe_site(site)} size={site.size} growth={site.growth}")
    if sample.greenlets:
        usage = sample.greenlets[0]
        words.append(f"top-greenlet={usage.label.replace(' ', '_')} allocated={usage.allocated}")
    return " ".join(words)
