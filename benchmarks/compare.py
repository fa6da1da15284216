"""greenflow against an earlier greenflow: one interleaved run, two commits.

``python -m benchmarks.compare REV [WORKLOAD ...] [--runs N] [--quick]``

A change made for speed (or one that must not cost any) is judged against
the commit before it, in one run on the same machine: the two versions
take turns, round after round, with the order swapped each round, so that a
slow minute hits both. Each side runs in a fresh process
(``python -m benchmarks WORKLOAD ... --runs 1 --cases greenflow``) with its
own ``greenflow`` package and *this* tree's benchmark code, so that only the
library differs. The result per row is the median over rounds of
after / before in the same round (before / after for lower-is-better rows,
such as memory, so that above 1 always means better).

REV is anything ``git`` names (``HEAD~1``, a tag, a hash). Its ``greenflow``
folder is taken with ``git archive`` into a temporary folder, next to a copy
of this tree's ``benchmarks`` folder; nothing in the repository changes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: Modules of this tree's greenflow that the benchmark code uses to set up
#: (never inside a timed part): an older tree without them gets this tree's
#: copy. The certificate builder is pure ``cryptography``.
SET_UP_MODULES = ("selfsigned.py",)

#: What the issue of the day asks not to lose; the default workloads.
DEFAULT_WORKLOADS = ("tcp_bulk", "pingpong", "tls_bulk", "tls_pingpong", "connections", "idle_memory")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description="greenflow at REV against greenflow in this tree, interleaved (greenflow rows only).",
    )
    parser.add_argument("rev", metavar="REV", help="the commit to compare against (git rev, e.g. HEAD~1)")
    parser.add_argument(
        "workloads", nargs="*", metavar="WORKLOAD", help="default: " + " ".join(DEFAULT_WORKLOADS)
    )
    parser.add_argument("--runs", type=int, default=5, help="rounds, each running both sides (default 5)")
    parser.add_argument("--quick", action="store_true", help="the suite's tiny sizes: a smoke test")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one side's round may take")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def before_tree(rev: str, folder: Path) -> Path:
    """``greenflow`` as of ``rev`` beside this tree's ``benchmarks``, in ``folder``."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "greenflow"], cwd=ROOT, capture_output=True, timeout=60
    )
    if archive.returncode != 0:
        raise SystemExit(
            f"cannot take greenflow at {rev!r}: {archive.stderr.decode(errors='replace').strip()}"
        )
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True, timeout=60)
    shutil.copytree(HERE, folder / "benchmarks", ignore=shutil.ignore_patterns("__pycache__", "out"))
    for name in SET_UP_MODULES:
        if not (folder / "greenflow" / name).exists():
            shutil.copy2(ROOT / "greenflow" / name, folder / "greenflow" / name)
    return folder


def modules_for(workloads: list[str]) -> list[str]:
    """The benchmark modules that define ``workloads`` (found in this tree)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.suite import MODULES, all_workloads  # noqa: PLC0415 - this tree's, on demand

    needed = [
        name
        for name in MODULES
        if any(w.name in workloads or w.family in workloads for w in all_workloads(True, (name,)))
    ]
    if not needed:
        raise SystemExit(f"no benchmark module defines {', '.join(workloads)}")
    return needed


def run_side(
    tree: Path, workloads: list[str], modules: list[str], *, quick: bool, timeout: float, out: Path
) -> list[dict[str, object]]:
    """One round of the greenflow cases with ``tree``'s greenflow; the rows it wrote."""
    command = [sys.executable, "-m", "benchmarks", *workloads, "--runs", "1", "--no-output"]
    command += ["--modules", ",".join(modules)]
    command += ["--cases", "greenflow", "--json", str(out)] + (["--quick"] if quick else [])
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        command, cwd=tree, env=environment, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0 or not out.exists():
        raise SystemExit(f"the round in {tree} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    rows: list[dict[str, object]] = json.loads(out.read_text())["rows"]
    out.unlink()
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workloads = list(args.workloads or DEFAULT_WORKLOADS)
    modules = modules_for(workloads)
    values: dict[tuple[str, str], dict[str, list[float]]] = {}
    better: dict[tuple[str, str], bool] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="greenflow-compare-") as scratch:
        sides = {"before": before_tree(args.rev, Path(scratch)), "after": ROOT}
        for number in range(args.runs):
            order = ["before", "after"] if number % 2 == 0 else ["after", "before"]
            for side in order:
                rows = run_side(
                    sides[side],
                    workloads,
                    modules,
                    quick=args.quick,
                    timeout=args.timeout,
                    out=Path(scratch) / "rows.json",
                )
                for row in rows:
                    key = (str(row["workload"]), str(row["case"]))
                    measured = row["values"]
                    assert isinstance(measured, list)
                    if row.get("error") or not measured:
                        raise SystemExit(f"{side}: {key[0]} / {key[1]} gave no value: {row.get('error')}")
                    values.setdefault(key, {"before": [], "after": []})[side].append(float(measured[0]))
                    better[key] = bool(row["higher_is_better"])
            print(
                f"round {number + 1}/{args.runs} done ({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
            )
    print(report(args.rev, values, better))
    return 0


def report(
    rev: str, values: dict[tuple[str, str], dict[str, list[float]]], better: dict[tuple[str, str], bool]
) -> str:
    """The table: medians of both sides and the median per-round ratio (above 1: better now)."""
    lines = [
        f"greenflow in this tree against {rev} (ratio above 1: this tree is better; medians over rounds)",
        f"  {'workload':<14} {'case':<22} {'before':>12} {'after':>12} {'ratio':>6} {'min':>6} {'max':>6}",
    ]
    for (workload, case), sides in values.items():
        before, after = sides["before"], sides["after"]
        pairs = list(zip(before, after, strict=False))
        ratios = [a / b if better[(workload, case)] else b / a for b, a in pairs if a > 0 and b > 0]
        nan = float("nan")
        ratio, low, high = (statistics.median(ratios), min(ratios), max(ratios)) if ratios else (nan,) * 3
        medians = f"{statistics.median(before):>12,.1f} {statistics.median(after):>12,.1f}"
        lines.append(f"  {workload:<14} {case:<22} {medians} {ratio:>6.3f} {low:>6.3f} {high:>6.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
