"""``greenflow memtrace report``: replay a saved trace into a PNG chart (matplotlib)."""

from __future__ import annotations

import os
from pathlib import Path

from ._format import Decoder, Sample
from ._model import TraceModel, short_path

__all__ = ["load_trace", "write_report"]

_MIB = 1024 * 1024


def load_trace(path: Path) -> TraceModel:
    """Every record of a saved trace, folded into a model with its whole history.

    Raises:
        OSError: the file cannot be read.
        TraceFormatError: the file is not a whole memtrace stream.
    """
    decoder = Decoder()
    model = TraceModel(history=10**7)
    with path.open("rb") as file:
        while chunk := file.read(65536):
            for record in decoder.feed(chunk):
                model.add(record)
    decoder.end()
    return model


def write_report(source: Path, png: Path, *, top: int = 10) -> None:
    """Chart memory over time (RSS, traced, peak) and the largest sites into ``png``.

    Raises:
        ValueError: the trace holds no sample.
    """
    model = load_trace(source)
    if model.latest is None:
        raise ValueError(f"{source} holds no sample to chart")
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib  # noqa: PLC0415 - only the report needs it

    matplotlib.use("Agg")
    from matplotlib import pyplot  # noqa: PLC0415

    figure, (memory, sites) = pyplot.subplots(
        2, 1, figsize=(10, 8), gridspec_kw={"height_ratios": [3, 2]}, layout="constrained"
    )
    times = [point.elapsed for point in model.history]
    memory.plot(
        times, [point.current / _MIB for point in model.history], "-", color="tab:green", label="traced"
    )
    memory.plot(
        times, [point.peak / _MIB for point in model.history], "--", color="tab:olive", label="traced peak"
    )
    # RSS on its own axis: it is often many times the traced size, which would look flat beside it.
    rss = memory.twinx()
    rss.plot(times, [point.rss / _MIB for point in model.history], "-", color="tab:blue", label="RSS")
    rss.set_ylabel("RSS, MiB", color="tab:blue")
    memory.set_xlabel("seconds since tracing started")
    memory.set_ylabel("traced by tracemalloc, MiB")
    lines = memory.get_lines() + rss.get_lines()
    memory.legend(lines, [line.get_label() for line in lines], loc="upper left")
    memory.grid(alpha=0.3)
    hello = model.hello
    title = "memory over time"
    if hello is not None:
        title += f": {hello.program} (pid {hello.pid}), {model.samples} samples"
    if model.dropped:
        title += f", {model.dropped} dropped on the way"
    memory.set_title(title)

    largest = model.largest_sites(top)
    labels = [f"{short_path(filename, 2)}:{lineno}" for (filename, lineno), _ in largest]
    sizes = [size / _MIB for _, size in largest]
    sites.barh(range(len(largest)), sizes, color="tab:red")
    sites.set_yticks(range(len(largest)), labels)
    sites.invert_yaxis()
    sites.set_xlabel("MiB held at the last sample that listed the site")
    sites.set_title(f"largest growing allocation sites (top {len(largest)})")
    _annotate_last(sites, model.latest)
    figure.savefig(png, dpi=100)
    pyplot.close(figure)


def _annotate_last(axes: object, sample: Sample) -> None:
    if not sample.greenlets:
        return
    usage = sample.greenlets[0]
    text = f"top greenlet at the end: {usage.label} ({usage.total / _MIB:.2f} MiB since start)"
    axes.text(0.99, 0.02, text, transform=axes.transAxes, ha="right", va="bottom", fontsize=8)  # type: ignore[attr-defined]
