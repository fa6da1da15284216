"""The command line: choose workloads, run them interleaved, print and write the results.

``python -m benchmarks [--quick] [--runs N] [--output-dir DIR] [WORKLOAD ...]``;
see README.md in this folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import resource
import sys
import time
from pathlib import Path

from ._harness import (
    Row,
    Target,
    Workload,
    log_to_stderr,
    run_workload,
    text_table,
    versions,
    write_chart,
    write_json,
)
from ._harness import write_markdown as _write_markdown

#: Workload families, in the order they run; each module has workloads(quick).
MODULES = (
    "streams",
    "writev",
    "connections",
    "connection_processes",
    "tls",
    "idle_memory",
    "buffered",
    "framed",
    "memtrace",
    "wsgi",
    "copy",
)

#: The goals of the benchmark issue and the speed issue, as ratios to each
#: workload's baseline or to a peer in the same run.
TARGETS = [
    Target("tcp_bulk", "greenflow read_into", minimum=0.95),
    Target("unix_bulk", "greenflow read_into", minimum=0.95),
    Target("pingpong", "greenflow", minimum=1.0),
    Target("pingpong", "greenflow", minimum=1.0, against="uvloop streams"),
    Target("connections", "greenflow.Server", minimum=1.1, note="against the raw gevent accept loop"),
    Target("connections", "greenflow.Server", minimum=1.0, against="uvloop"),
    Target("tls_bulk", "greenflow.tls", minimum=1.33),
    Target("tls_pingpong", "greenflow.tls", minimum=1.0),
    Target("tls_pingpong", "greenflow.tls", minimum=1.0, against="uvloop ssl", note="an aim, not a target"),
    Target("tls_handshakes", "greenflow.tls", minimum=1.0),
    Target("idle_memory", "greenflow.Server", maximum=0.6, note="bytes per connection that sent nothing"),
    Target(
        "idle_memory_handler",
        "greenflow.Server",
        maximum=1.0,
        note="bytes per connection parked in a handler",
    ),
    Target("writev_256", "greenflow writev", minimum=2.3),
    Target("writev_256", "greenflow writev", minimum=1.0, against="gevent sendmsg"),
    Target("writev_4k", "greenflow writev", minimum=1.0, against="gevent sendmsg"),
    Target("writev_64k", "greenflow writev", minimum=1.0, against="gevent sendmsg"),
    Target("wsgi_hello", "greenflow.wsgi", minimum=1.0, note="against gevent.pywsgi"),
    Target(
        "framed_bulk", "greenflow FramedFlow read_into", minimum=0.8, note="against the plain flow under it"
    ),
    Target("copy_bulk", "greenflow.copy", minimum=0.95, note="against the raw gevent relay loop"),
]

HERE = Path(__file__).resolve().parent

#: Where a full run departs from the sizes of the benchmark issue, and why.
SIZE_NOTES = [
    "Sizes are those of the benchmark issue except: writev with 64 KiB bodies sends 20,000 messages"
    " (not 200,000: 13 GB per case would alone take minutes); the issue gives no count for the"
    " connection rate (10,000 connections here), TLS ping-pong (20,000 round trips) or TLS handshakes"
    " (500, one at a time).",
    "One process holds client and server (except idle memory), on a 2-CPU VM shared with other work:"
    " absolute numbers move between runs, the interleaved ratios much less.",
]


def all_workloads(quick: bool, modules: tuple[str, ...] = MODULES) -> list[Workload]:
    """Every workload of ``modules``, with the sizes of a quick or a full run."""
    found: list[Workload] = []
    for name in modules:
        module = importlib.import_module(f"benchmarks.{name}")
        found.extend(module.workloads(quick))
    return found


def select(workloads: list[Workload], names: list[str]) -> list[Workload]:
    """The workloads named (by name or family, e.g. ``writev`` for all three); all if none."""
    if not names:
        return workloads
    known = {w.name for w in workloads} | {w.family for w in workloads}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown workload(s): {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
    return [w for w in workloads if w.name in names or w.family in names]


def only_cases(workloads: list[Workload], prefixes: tuple[str, ...]) -> list[Workload]:
    """The workloads with only the cases named by ``prefixes`` (workloads left empty dropped)."""
    kept = []
    for workload in workloads:
        cases = [case for case in workload.cases if case.name.startswith(prefixes)]
        if cases:
            kept.append(dataclasses.replace(workload, cases=cases))
    return kept


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="greenflow against raw gevent, asyncio, uvloop and trio, interleaved, on loopback.",
    )
    parser.add_argument("workloads", nargs="*", metavar="WORKLOAD", help="workloads to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one round: a smoke test")
    parser.add_argument(
        "--runs", type=int, default=None, help="rounds per workload (default 5, or 1 with --quick)"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where to write RESULTS.md, results.png and results.json"
        " (default: this folder for a full run of every workload; nowhere otherwise)",
    )
    parser.add_argument("--no-output", action="store_true", help="write no files")
    parser.add_argument(
        "--cases",
        action="append",
        metavar="PREFIX",
        help="run only the cases whose name starts with PREFIX (repeatable; e.g. greenflow)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every row to FILE as JSON")
    parser.add_argument(
        "--modules",
        metavar="NAME,...",
        help="import only these workload modules (default: all of " + ",".join(MODULES) + ")",
    )
    parser.add_argument("--list", action="store_true", help="list the workloads and their cases, then exit")
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modules = tuple(args.modules.split(",")) if args.modules else MODULES
    unknown = [name for name in modules if name not in MODULES]
    if unknown:
        raise SystemExit(f"unknown module(s): {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    everything = all_workloads(args.quick, modules)
    if args.list:
        for workload in everything:
            print(f"{workload.name}: {', '.join(case.name for case in workload.cases)}")
        return 0
    chosen = select(everything, args.workloads)
    if args.cases:
        chosen = only_cases(chosen, tuple(args.cases))
    runs = args.runs if args.runs is not None else (1 if args.quick else 5)
    output = args.output_dir
    if output is None and not args.quick and not args.workloads and not args.no_output:
        output = HERE
    if args.no_output:
        output = None
    _raise_fd_limit()

    meta: dict[str, object] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]),
        "runs": runs,
        "mode": "quick" if args.quick else "full",
        "notes": [] if args.quick else SIZE_NOTES,
        "versions": versions(),
    }
    log_to_stderr("greenflow benchmarks: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))  # type: ignore[attr-defined]
    started = time.perf_counter()
    results: dict[str, list[Row]] = {}
    for workload in chosen:
        log_to_stderr(f"{workload.name}: {workload.size}")
        results[workload.name] = run_workload(workload, runs, log_to_stderr)
        print(text_table(workload, results[workload.name]) + "\n", flush=True)
    elapsed = time.perf_counter() - started
    meta["elapsed"] = f"{elapsed:.0f} s"

    rows_by_key = {(row.workload, row.case): row for rows in results.values() for row in rows}
    print("Targets (ratio to the workload's baseline):")
    for target in TARGETS:
        if target.workload not in results:
            continue
        ratio, met = target.check(rows_by_key)
        verdict = "not run" if met is None else ("met" if met else "NOT MET")
        shown = f"{ratio:.2f}" if ratio is not None else "-"
        print(f"  {target.label:<80} {shown:>6}  {verdict}")
    print(f"Total time: {elapsed:.1f} s")

    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        all_rows = [row for rows in results.values() for row in rows]
        write_json(output / "results.json", meta, all_rows)
        chart = write_chart(output / "results.png", chosen, results)
        if chart is None:
            log_to_stderr("no chart: matplotlib is not installed (pip install 'greenflow-io[bench]')")
        _write_markdown(
            output / "RESULTS.md", meta=meta, workloads=chosen, results=results, targets=TARGETS, chart=chart
        )
        log_to_stderr(f"wrote {output / 'RESULTS.md'}" + (f" and {output / chart}" if chart else ""))
    if args.json is not None:
        write_json(args.json, meta, [row for rows in results.values() for row in rows])
    errors = [row for rows in results.values() for row in rows if row.error]
    return 1 if errors else 0


def _raise_fd_limit() -> None:
    """The idle-memory and connection workloads hold thousands of sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
