"""Showing a trace: a live terminal UI (rich) on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Protocol, TextIO

from ._format import End, Hello, Record, Sample
from ._model import TraceModel, describe_site, human_bytes, plain_line, short_path, sparkline

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

__all__ = ["Display", "PlainDisplay", "RichDisplay", "choose_display", "render"]


class Display(Protocol):
    """Shows the model after each record."""

    def show(self, model: TraceModel, record: Record) -> None: ...

    def close(self) -> None: ...


class PlainDisplay:
    """One line per record, for pipes, files and logs."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def show(self, model: TraceModel, record: Record) -> None:
        if isinstance(record, Hello):
            line = (
                f"greenflow memtrace: tracing {record.program} (pid {record.pid})"
                f" every {record.interval:g} s, {record.frames} frame(s), top {record.top}"
            )
        elif isinstance(record, End):
            line = f"greenflow memtrace: the tracer says: {record.reason}"
        else:
            line = plain_line(record)
        print(line, file=self._out, flush=True)

    def close(self) -> None:
        self._out.flush()


def render(model: TraceModel, width: int = 100) -> RenderableType:
    """The whole screen for the model: a header, sparklines, the two tables."""
    from rich import box  # noqa: PLC0415 - rich loads only for the terminal UI
    from rich.console import Group  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    hello, sample = model.hello, model.latest
    title = Text("greenflow memtrace", style="bold")
    if hello is not None:
        title.append(f"  {hello.program}  pid {hello.pid}  every {hello.interval:g} s", style="dim")
    parts: list[RenderableType] = [title]
    if sample is None:
        parts.append(Text("waiting for the first sample..."))
        return Group(*parts)
    parts.append(_summary(model, sample))
    spark_width = max(10, width - 24)
    currents = [point.current for point in model.history]
    rss = [point.rss for point in model.history]
    line = Text()
    line.append("traced ", style="bold")
    line.append(sparkline(currents, spark_width), style="green")
    line.append(f" {human_bytes(currents[-1])}\n")
    line.append("rss    ", style="bold")
    line.append(sparkline(rss, spark_width), style="cyan")
    line.append(f" {human_bytes(rss[-1])}")
    parts.append(line)

    sites = Table(title="top growing allocation sites", title_justify="left", expand=True, box=box.SIMPLE)
    sites.add_column("site", overflow="fold", ratio=3)
    for heading in ("size", "growth", "count", "Δcount"):
        sites.add_column(heading, justify="right", ratio=1)
    for site in sample.sites:
        filename, _, lineno = describe_site(site).rpartition(":")
        sites.add_row(
            f"{short_path(filename, 2)}:{lineno}",
            human_bytes(site.size),
            Text(human_bytes(site.growth), style="red" if site.growth > 0 else "green"),
            str(site.count),
            f"{site.count_growth:+d}",
        )
    greenlets = Table(
        title="top greenlets (memory allocated while they ran)",
        title_justify="left",
        expand=True,
        box=box.SIMPLE,
    )
    greenlets.add_column("greenlet", overflow="fold", ratio=3)
    greenlets.add_column("this interval", justify="right", ratio=1)
    greenlets.add_column("since start", justify="right", ratio=1)
    for usage in sample.greenlets:
        greenlets.add_row(usage.label, human_bytes(usage.allocated), human_bytes(usage.total))
    parts += [sites, greenlets]
    if model.ended is not None:
        parts.append(Text(f"the tracer says: {model.ended}", style="yellow"))
    return Group(*parts)


def _summary(model: TraceModel, sample: Sample) -> RenderableType:
    from rich.text import Text  # noqa: PLC0415

    text = Text()
    for name, value in (
        ("sample", f"#{sample.seq}"),
        ("t", f"{sample.elapsed:.1f} s"),
        ("rss", human_bytes(sample.rss)),
        ("traced", human_bytes(sample.current)),
        ("peak", human_bytes(sample.peak)),
    ):
        text.append(f"{name} ", style="dim")
        text.append(f"{value}   ")
    text.append("dropped ", style="dim")
    text.append(str(model.dropped), style="red" if model.dropped else "")
    return text


class RichDisplay:
    """The live terminal UI: the screen is redrawn after every record."""

    def __init__(self, console: Console | None = None) -> None:
        from rich.console import Console  # noqa: PLC0415
        from rich.live import Live  # noqa: PLC0415

        self.console = console if console is not None else Console()
        self._live: Live = Live(console=self.console, auto_refresh=False, redirect_stderr=False)
        self._live.start()

    def show(self, model: TraceModel, record: Record) -> None:
        self._live.update(render(model, self.console.width), refresh=True)

    def close(self) -> None:
        self._live.stop()


def choose_display(plain: bool) -> Display:
    """The terminal UI when stdout is a terminal (and rich is installed), else plain lines."""
    if not plain and sys.stdout.isatty():
        try:
            return RichDisplay()
        except ImportError:
            print(
                "greenflow memtrace: rich is not installed (pip install 'greenflow-io[memtrace]');"
                " showing plain lines",
                file=sys.stderr,
            )
    return PlainDisplay(sys.stdout)
