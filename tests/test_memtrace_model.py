"""What the memtrace viewer shows, from records alone: the model, the lines, the screen."""

from __future__ import annotations

import io

from rich.console import Console

from greenflow.memtrace import End, GreenletUsage, Hello, Sample, Site
from greenflow.memtrace._display import PlainDisplay, render
from greenflow.memtrace._model import TraceModel, describe_site, human_bytes, plain_line, sparkline

HELLO = Hello(10, 1.0, 0.5, 1, 5, "app.py")
LEAK = Site((("/srv/app/chat.py", 6),), 4096, 1024, 4, 1)


def _sample(seq: int, current: int, *, dropped: int = 0) -> Sample:
    usage = GreenletUsage("chat.handler from 127.0.0.1:5000", 1024, 4096)
    return Sample(seq, seq * 0.5, 10 * current, current, current + 1, dropped, (LEAK,), (usage,))


def test_the_model_keeps_the_latest_sample_and_the_history() -> None:
    model = TraceModel(history=3)
    model.add(HELLO)
    for seq in range(1, 6):
        model.add(_sample(seq, seq * 100, dropped=seq % 2))
    assert model.samples == 5 and model.dropped == 3 and model.sessions == 1
    assert [point.current for point in model.history] == [300, 400, 500]
    assert model.latest is not None and model.latest.seq == 5
    assert model.largest_sites(1) == [(("/srv/app/chat.py", 6), 4096)]
    model.add(
        Sample(6, 3.0, 0, 0, 0, 0, (Site((), 99, 99, 1, 1),))
    )  # a site without a traceback: not charted
    assert model.largest_sites(5) == [(("/srv/app/chat.py", 6), 4096)]
    model.add(End("tracing stopped"))
    assert model.ended == "tracing stopped"


def test_a_new_process_starts_afresh_and_the_same_one_goes_on() -> None:
    model = TraceModel()
    model.add(HELLO)
    model.add(_sample(1, 100))
    model.add(End("stopped"))
    model.add(HELLO)  # the same process again (a reconnection): the history goes on
    assert len(model.history) == 1 and model.ended is None and model.sessions == 2
    model.add(Hello(11, 2.0, 0.5, 1, 5, "other.py"))
    assert not model.history and model.latest is None and not model.site_sizes


def test_sparklines_bytes_sites_and_lines() -> None:
    assert sparkline([], 10) == ""
    assert sparkline([5, 5, 5], 10) == "▁▁▁"
    assert sparkline([0, 7, 14], 2) == "▁█"
    assert sparkline([0, 1], 0) == ""
    assert human_bytes(512) == "512 B"
    assert human_bytes(-1536) == "-1.5 KiB"
    assert human_bytes(3 * 2**30) == "3.0 GiB"
    assert human_bytes(5 * 2**40) == "5120.0 GiB"
    assert describe_site(LEAK) == "/srv/app/chat.py:6"
    assert describe_site(Site((), 0, 0, 0, 0)) == "<no traceback>"
    line = plain_line(_sample(3, 100, dropped=2))
    assert line.startswith("#3 t=1.50 rss=1000 traced=100 peak=101 dropped=2 ")
    assert "top-site=/srv/app/chat.py:6 size=4096 growth=1024" in line
    assert "top-greenlet=chat.handler_from_127.0.0.1:5000 allocated=1024" in line
    assert plain_line(Sample(1, 0.0, 0, 0, 0)) == "#1 t=0.00 rss=0 traced=0 peak=0 dropped=0"


def test_the_screen_shows_the_tables() -> None:
    model = TraceModel()
    console = Console(record=True, width=100, force_terminal=False)
    console.print(render(model, 100))
    assert "greenflow memtrace" in console.export_text()
    model.add(HELLO)
    console.print(render(model, 100))
    assert "waiting for the first sample" in console.export_text()
    model.add(_sample(1, 100, dropped=4))
    model.add(End("tracing stopped"))
    console.print(render(model, 100))
    text = console.export_text()
    for expected in (
        "app.py  pid 10",
        "sample #1",
        "dropped 4",
        "top growing allocation sites",
        "app/chat.py:6",
        "chat.handler from 127.0.0.1:5000",
        "the tracer says: tracing stopped",
    ):
        assert expected in text, expected


def test_plain_display_lines() -> None:
    out = io.StringIO()
    display = PlainDisplay(out)
    model = TraceModel()
    for record in (HELLO, _sample(1, 100), End("bye")):
        model.add(record)
        display.show(model, record)
    display.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "greenflow memtrace: tracing app.py (pid 10) every 0.5 s, 1 frame(s), top 5"
    assert lines[1].startswith("#1 ")
    assert lines[2] == "greenflow memtrace: the tracer says: bye"
