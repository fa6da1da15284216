"""The harness: cases, interleaved runs, statistics, targets and the reports.

A *workload* (``tcp_bulk``, ``pingpong``, ...) is some fixed work, and its
*cases* are the same work done by greenflow and by each competitor. The
harness runs the cases of a workload one after the other, then again, for
``runs`` rounds (interleaved: a slow minute on the shared machine hits every
competitor alike), rotating the order each round so that no case always
runs first. Each row then reports the median, min and max over the rounds,
and its ratio to the workload's baseline (raw gevent sockets, or gevent
with the stdlib ``ssl`` for TLS): the median over rounds of the row's value
divided by the baseline's value *in the same round*.

A case that cannot run here raises :class:`~benchmarks._common.Skip` (a
missing package) and stays a skipped row; a case that fails or runs past its
time bound becomes an error row, and the suite goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import json
import os
import platform
import ssl
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gevent
import greenlet
import OpenSSL
from OpenSSL import SSL

import greenflow

from ._common import Measurement, Skip


@dataclass
class Case:
    """One competitor doing a workload's work."""

    name: str
    run: Callable[[], Measurement]
    baseline: bool = False
    #: A ceiling row (C, iperf3): shown for scale, not a competitor.
    ceiling: bool = False


@dataclass
class Workload:
    """Fixed work and the cases that do it."""

    name: str
    family: str
    title: str
    unit: str
    higher_is_better: bool
    size: str
    cases: list[Case]
    #: Names of extra numbers in each Measurement, with their units, to show.
    extras: Sequence[tuple[str, str]] = ()


@dataclass
class Row:
    """The results of one case over all rounds."""

    workload: str
    case: str
    unit: str
    higher_is_better: bool
    baseline: bool
    ceiling: bool
    values: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    extras: dict[str, list[float]] = field(default_factory=dict)
    skipped: str | None = None
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    def extra(self, name: str) -> float | None:
        values = self.extras.get(name)
        return statistics.median(values) if values else None


@dataclass(frozen=True)
class Target:
    """A goal from the issues: ``case`` against the baseline of ``workload``.

    With ``against`` (another case of the workload, a peer), the goal is the
    ratio of ``case`` to that peer instead; it is "not run" when the peer was
    skipped.
    """

    workload: str
    case: str
    minimum: float | None = None
    maximum: float | None = None
    note: str = ""
    against: str = ""

    @property
    def bound(self) -> str:
        return f">= {self.minimum}" if self.minimum is not None else f"<= {self.maximum}"

    @property
    def label(self) -> str:
        """The goal in words, as the reports show it."""
        of = self.against or "baseline"
        return f"{self.workload}: {self.case} {self.bound} of {of}" + (f" ({self.note})" if self.note else "")

    def check(self, rows: dict[tuple[str, str], Row]) -> tuple[float | None, bool | None]:
        row = rows.get((self.workload, self.case))
        ratio = row.ratio if row is not None else None
        if ratio is None:
            return None, None
        if self.against:
            peer = rows.get((self.workload, self.against))
            if peer is None or not peer.ratio:
                return None, None
            ratio /= peer.ratio
        if self.minimum is not None:
            return ratio, ratio >= self.minimum
        assert self.maximum is not None
        return ratio, ratio <= self.maximum


def run_workload(workload: Workload, runs: int, log: Callable[[str], None]) -> list[Row]:
    """Run every case of ``workload`` ``runs`` times, interleaved; return the rows."""
    rows = {
        case.name: Row(
            workload.name,
            case.name,
            workload.unit,
            workload.higher_is_better,
            case.baseline,
            case.ceiling,
        )
        for case in workload.cases
    }
    cases = list(workload.cases)
    for round_number in range(runs):
        shift = round_number % len(cases)
        order = cases[shift:] + cases[:shift]
        got: dict[str, float] = {}
        for case in order:
            row = rows[case.name]
            if row.skipped or row.error:
                continue
            gc.collect()
            started = time.perf_counter()
            try:
                measurement = case.run()
            except Skip as exc:
                row.skipped = str(exc)
                log(f"  {workload.name:<14} {case.name:<28} {row.skipped}")
                continue
            except Exception as exc:
                row.error = f"{type(exc).__name__}: {exc}"
                log(f"  {workload.name:<14} {case.name:<28} ERROR {row.error}")
                log("".join(traceback.format_exception(exc)).rstrip())
                continue
            row.values.append(measurement.value)
            for name, value in measurement.extra.items():
                row.extras.setdefault(name, []).append(value)
            got[case.name] = measurement.value
            log(
                f"  {workload.name:<14} {case.name:<28} round {round_number + 1}/{runs}: "
                f"{format_value(measurement.value)} {workload.unit} ({time.perf_counter() - started:.2f} s)"
            )
        baseline = next((c.name for c in cases if c.baseline), None)
        if baseline is not None and baseline in got and got[baseline] > 0:
            for name, value in got.items():
                rows[name].ratios.append(value / got[baseline])
    return [rows[case.name] for case in workload.cases]


# -- formatting --------------------------------------------------------------------------


def format_value(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cells(row: Row, extras: Sequence[tuple[str, str]]) -> list[str]:
    if row.skipped or row.error:
        status = row.skipped or f"ERROR {row.error}"
        return [row.case, status] + [""] * (4 + len(extras))
    ratio = "baseline" if row.baseline else (f"{row.ratio:.2f}" if row.ratio is not None else "-")
    cells = [
        row.case + (" (ceiling)" if row.ceiling else ""),
        format_value(row.median),
        format_value(min(row.values)),
        format_value(max(row.values)),
        ratio,
        str(len(row.values)),
    ]
    for name, _unit in extras:
        cells.append(format_value(row.extra(name)))
    return cells


def _better(workload: Workload) -> str:
    return "higher" if workload.higher_is_better else "lower"


def _headers(workload: Workload) -> list[str]:
    return [
        "case",
        f"median ({workload.unit})",
        "min",
        "max",
        "ratio to baseline",
        "runs",
        *(f"median {name} ({unit})" for name, unit in workload.extras),
    ]


def text_table(workload: Workload, rows: list[Row]) -> str:
    """The rows of one workload as an aligned plain-text table."""
    table = [_headers(workload)] + [_cells(row, workload.extras) for row in rows]
    widths = [max(len(line[i]) for line in table if i < len(line)) for i in range(len(table[0]))]
    better = "higher is better" if workload.higher_is_better else "lower is better"
    lines = [f"{workload.title} ({workload.unit}, {better}) [{workload.size}]"]
    for index, line in enumerate(table):
        if line[1].startswith(("skipped", "ERROR")):
            lines.append(f"  {line[0]:<{widths[0]}}  {line[1]}")
            continue
        lines.append(
            "  "
            + "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=False))
            )
        )
        if index == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(workload: Workload, rows: list[Row]) -> str:
    """The rows of one workload as a Markdown table."""
    headers = _headers(workload)
    lines = [
        f"### {workload.title}",
        "",
        f"Work: {workload.size}. {workload.unit}, {_better(workload)} is better.",
        "",
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(headers) - 1)) + " |",
    ]
    for row in rows:
        cells = _cells(row, workload.extras)
        if row.baseline:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- versions ----------------------------------------------------------------------------


def versions() -> dict[str, str]:
    """The versions of everything that decides the numbers, as strings."""
    found = {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "greenflow": _greenflow_version(),
        "gevent": f"{gevent.__version__} (loop: {type(gevent.get_hub().loop).__module__})",
        "greenlet": greenlet.__version__,
        "pyOpenSSL": OpenSSL.__version__,
        "OpenSSL (pyOpenSSL)": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
        "OpenSSL (stdlib ssl)": ssl.OPENSSL_VERSION,
    }
    for name in ("uvloop", "trio", "matplotlib"):
        try:
            module = importlib.import_module(name)
            found[name] = str(getattr(module, "__version__", "?"))
        except ImportError:
            found[name] = "not installed"
    found["machine"] = _machine()
    return found


def _greenflow_version() -> str:
    commit = ""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        commit = result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{greenflow.__version__}" + (f" (git {commit})" if commit else "")


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ""
    with contextlib.suppress(OSError):
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    system = f"{platform.system()} {platform.release()}"
    return f"{system}, {os.cpu_count()} CPUs ({cpu}), load average at start {load}"


# -- results files -----------------------------------------------------------------------


def write_json(path: Path, meta: dict[str, object], rows: list[Row]) -> None:
    data = {
        "meta": meta,
        "rows": [dataclasses.asdict(row) | {"median": row.median, "ratio": row.ratio} for row in rows],
    }
    path.write_text(json.dumps(data, indent=1) + "\n")


def write_markdown(
    path: Path,
    *,
    meta: dict[str, object],
    workloads: list[Workload],
    results: dict[str, list[Row]],
    targets: list[Target],
    chart: str | None,
) -> None:
    rows = {(row.workload, row.case): row for rs in results.values() for row in rs}
    out = [
        "# greenflow benchmark results",
        "",
        "Written by `python -m benchmarks` (see README.md in this folder);"
        " regenerate it rather than editing it.",
        "",
        "## How this was run",
        "",
        f"- Date: {meta['date']}",
        f"- Command: `{meta['command']}`",
        f"- Rounds: {meta['runs']} per workload, competitors interleaved, order rotated each round;"
        f" {meta['mode']} sizes; the whole run took {meta['elapsed']}.",
        "- Values are medians over the rounds, with min and max; the ratio is the median over rounds of"
        " the row's value divided by the baseline's value in the same round.",
        *(f"- {note}" for note in meta.get("notes", [])),  # type: ignore[attr-defined]
        "",
        "| component | version |",
        "| --- | --- |",
    ]
    versions_found = meta["versions"]
    assert isinstance(versions_found, dict)
    out += [f"| {name} | {value} |" for name, value in versions_found.items()]
    out += ["", "## Targets", "", "| target | ratio | met |", "| --- | ---: | --- |"]
    for target in targets:
        ratio, met = target.check(rows)
        verdict = "not run" if met is None else ("yes" if met else "**no**")
        shown = format_value(ratio) if ratio is not None else "-"
        out.append(f"| {target.label} | {shown} | {verdict} |")
    if chart:
        out += ["", "## Chart", "", f"![ratios to the baseline of each workload]({chart})"]
    out += ["", "## Results"]
    for workload in workloads:
        if workload.name in results:
            out += ["", markdown_table(workload, results[workload.name])]
    path.write_text("\n".join(out) + "\n")


def write_chart(path: Path, workloads: list[Workload], results: dict[str, list[Row]]) -> str | None:
    """A PNG of every row's ratio to its baseline (min to max as whiskers); None without matplotlib."""
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return None
    shown = [w for w in workloads if any(r.ratios for r in results.get(w.name, []))]
    if not shown:
        return None
    columns = 2
    lines = (len(shown) + columns - 1) // columns
    figure, axes = plt.subplots(lines, columns, figsize=(14, 3.2 * lines), squeeze=False)
    for axis in axes.flat[len(shown) :]:
        axis.set_visible(False)
    for axis, workload in zip(axes.flat, shown, strict=False):
        rows = [r for r in results[workload.name] if r.ratios]
        names = [r.case for r in rows]
        medians = [statistics.median(r.ratios) for r in rows]
        low = [m - min(r.ratios) for m, r in zip(medians, rows, strict=False)]
        high = [max(r.ratios) - m for m, r in zip(medians, rows, strict=False)]
        colours = [
            "tab:green" if n.startswith("greenflow") else ("tab:gray" if r.ceiling else "tab:blue")
            for n, r in zip(names, rows, strict=False)
        ]
        positions = range(len(rows))
        axis.barh(positions, medians, xerr=[low, high], color=colours, capsize=3)
        axis.set_yticks(list(positions), names, fontsize=8)
        axis.invert_yaxis()
        axis.axvline(1.0, color="black", linewidth=0.8)
        better = "higher" if workload.higher_is_better else "lower"
        axis.set_title(f"{workload.title} (ratio to baseline, {better} is better)", fontsize=9)
        axis.tick_params(axis="x", labelsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path.name


def log_to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
