"""The viewer's command line: ``greenflow memtrace connect|listen|report``.

::

    greenflow memtrace connect tcp://127.0.0.1:9100     # a process traced with start("listen:tcp://...")
    greenflow memtrace listen unix:/tmp/collector.sock  # processes traced with start("unix:/tmp/...")
    greenflow memtrace connect URL --save trace.gfmt    # also keep the stream
    greenflow memtrace report trace.gfmt --png trace.png

``connect`` and ``listen`` show a live table of the sites and greenlets that
grow most, with sparklines of memory over time, when stdout is a terminal,
and one line per sample otherwise (``--plain`` forces lines). ``listen``
takes one traced process at a time; the next waits its turn (a tracer that
reconnects after a restart is simply the next). ``--save FILE`` writes the
records to FILE as they come; ``report`` replays such a file into a PNG.

The command tree is built by :func:`add_arguments` on any parser, so that
the ``greenflow`` command mounts it as its ``memtrace`` subcommand, and
``python -m greenflow.memtrace`` runs it on its own.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from gevent.event import Event

from ..cli._common import positive_int
from ..errors import FlowError
from ..flow import Flow
from ..listeners import listen_url
from ..server import Server
from ._display import Display, choose_display
from ._format import Decoder, Hello, Record, TraceFormatError, encode, preamble
from ._model import TraceModel
from ._sinks import connect_url

__all__ = ["add_arguments", "build_parser", "main", "run"]

_READ_SIZE = 65536


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``connect``, ``listen`` and ``report`` subcommands to ``parser``."""
    commands = parser.add_subparsers(dest="memtrace_command", required=True, metavar="COMMAND")
    for name, help_text, url_help in (
        ("connect", "view a traced process that listens", "where the process listens (tcp://, unix:)"),
        ("listen", "collect from traced processes that connect", "where to listen (tcp://, unix:)"),
    ):
        viewer = commands.add_parser(name, help=help_text, description=help_text.capitalize() + ".")
        viewer.add_argument("url", metavar="URL", help=url_help)
        viewer.add_argument("--save", type=Path, metavar="FILE", help="also write the stream to FILE")
        viewer.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
        viewer.add_argument(
            "--samples", type=positive_int, metavar="N", help="exit after N samples (default: until the end)"
        )
    report = commands.add_parser(
        "report", help="chart a saved trace as a PNG", description="Replay a saved trace into a PNG chart."
    )
    report.add_argument("file", type=Path, metavar="FILE", help="a stream saved with --save")
    report.add_argument("--png", type=Path, required=True, metavar="OUT", help="the PNG to write")
    report.add_argument(
        "--top", type=positive_int, default=10, metavar="N", help="sites to chart (default 10)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m greenflow.memtrace``."""
    parser = argparse.ArgumentParser(
        prog="greenflow memtrace", description="View the memory trace of a greenflow process."
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run; returns the exit status."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``memtrace`` command line; returns the exit status."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        if args.memtrace_command == "report":
            from ._report import write_report  # noqa: PLC0415 - loads matplotlib

            write_report(args.file, args.png, top=args.top)
            _say(f"wrote {args.png}")
            return 0
        viewer = _Viewer(choose_display(args.plain), args.save, args.samples)
        with viewer:
            if args.memtrace_command == "connect":
                return viewer.connect(args.url)
            return viewer.listen(args.url)
    except ImportError as exc:
        _say(f"{exc.name or exc} is not installed (pip install 'greenflow-io[memtrace]')")
        return 1
    except (OSError, ValueError) as exc:
        _say(str(exc))
        return 1
    except TraceFormatError as exc:
        _say(f"bad trace: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130


class _Viewer:
    """Reads records from flows into the model, the display and the saved file."""

    def __init__(self, display: Display, save: Path | None, samples: int | None) -> None:
        self.model = TraceModel()
        self.display = display
        self.limit = samples
        self.done = Event()
        self._save: BinaryIO | None = save.open("wb") if save is not None else None

    def __enter__(self) -> _Viewer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.display.close()
        if self._save is not None:
            self._save.close()

    def connect(self, url: str) -> int:
        try:
            flow = connect_url(url)
        except FlowError as exc:
            _say(f"cannot connect to {url}: {exc}")
            return 1
        with flow:
            self.follow(flow)
        if self.model.hello is None:
            _say(f"{url} closed without sending a trace")
            return 1
        return 0

    def listen(self, url: str) -> int:
        failures: list[TraceFormatError] = []

        def collect(flow: Flow) -> None:
            try:
                self.follow(flow)
            except TraceFormatError as exc:
                failures.append(exc)
                self.done.set()
            except FlowError as exc:
                _say(f"a traced process went away: {exc}")

        with Server(collect, *listen_url(url), max_connections=1, grace=0) as server:
            for where in server.urls:
                _say(f"listening on {where}")
            self.done.wait()
            server.stop(0)
        if failures:
            raise failures[0]
        return 0

    def follow(self, flow: Flow) -> None:
        """Read one traced process's stream until its EOF (or the sample limit)."""
        decoder = Decoder()
        while not self.done.is_set() and (data := flow.read(_READ_SIZE)):
            for record in decoder.feed(data):
                self.add(record)
                if self.done.is_set():
                    return
        decoder.end()

    def add(self, record: Record) -> None:
        self.model.add(record)
        if self._save is not None:
            if isinstance(record, Hello):
                self._save.write(preamble())
            self._save.write(encode(record))
            self._save.flush()
        self.display.show(self.model, record)
        if self.limit is not None and self.model.samples >= self.limit:
            self.done.set()


def _say(message: str) -> None:
    print(f"greenflow memtrace: {message}", file=sys.stderr, flush=True)
