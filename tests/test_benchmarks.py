"""The benchmark suite's quick mode runs, every case does its work, and the reports are written.

The quick mode (tiny sizes, one round) runs once, in a subprocess, for the
whole module; each case then gets its own test. A case skips only when a
competitor's package or binary is missing here (uvloop, trio, iperf3, a C
compiler: the test environment has only the ``test`` extra), and says why;
any other failure of a case fails its test.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.suite import all_workloads  # noqa: E402

#: A skip for any other reason than these is a failure.
ALLOWED_SKIPS = (
    "is not installed",
    "no iperf3 binary",
    "no C compiler",
    "greenflow.tls not available",
    "no wrk binary",
)

CASES = [(workload.name, case.name) for workload in all_workloads(quick=True) for case in workload.cases]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    output = tmp_path_factory.mktemp("bench")
    scratch = tmp_path_factory.mktemp("scratch")  # the run's TMPDIR: what it leaves there is a leak
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output-dir", str(output)],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(scratch)},
    )
    data: dict[str, Any] = (
        json.loads((output / "results.json").read_text()) if (output / "results.json").exists() else {}
    )
    return {
        "returncode": result.returncode,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "data": data,
        "output": output,
        "left_behind": sorted(path.name for path in scratch.iterdir()),
    }


@pytest.mark.timeout(120)
def test_quick_mode_runs(quick_run: dict[str, Any]) -> None:
    assert quick_run["data"], f"no results.json; stderr:\n{quick_run['stderr'][-3000:]}"
    assert quick_run["returncode"] == 0, quick_run["stdout"][-3000:] + quick_run["stderr"][-3000:]
    assert "Targets" in quick_run["stdout"]
    markdown = (quick_run["output"] / "RESULTS.md").read_text()
    assert "## How this was run" in markdown
    assert "OpenSSL (stdlib ssl)" in markdown


@pytest.mark.timeout(120)
def test_quick_mode_leaves_no_temporary_files(quick_run: dict[str, Any]) -> None:
    assert quick_run["returncode"] == 0, quick_run["stderr"][-3000:]
    assert quick_run["left_behind"] == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("workload", "case"), CASES, ids=[f"{w}-{c}" for w, c in CASES])
def test_case(quick_run: dict[str, Any], workload: str, case: str) -> None:
    rows = {(row["workload"], row["case"]): row for row in quick_run["data"].get("rows", [])}
    row = rows.get((workload, case))
    assert row is not None, f"{workload}/{case} did not run; stderr:\n{quick_run['stderr'][-3000:]}"
    assert row["error"] is None, f"{workload}/{case} failed: {row['error']}"
    if row["skipped"]:
        assert any(reason in row["skipped"] for reason in ALLOWED_SKIPS), row["skipped"]
        pytest.skip(row["skipped"])
    assert row["values"] and all(value > 0 for value in row["values"])


def test_selection_by_name() -> None:
    from benchmarks.suite import select

    chosen = select(all_workloads(quick=True), ["tcp_bulk", "pingpong"])
    assert [w.name for w in chosen] == ["tcp_bulk", "pingpong"]
    with pytest.raises(SystemExit):
        select(all_workloads(quick=True), ["no_such_workload"])


def test_only_cases_keeps_the_named_cases() -> None:
    from benchmarks.suite import only_cases

    chosen = only_cases(all_workloads(quick=True), ("greenflow",))
    assert chosen and all(case.name.startswith("greenflow") for w in chosen for case in w.cases)
    assert "writev_256" in {w.name for w in chosen}


@pytest.mark.timeout(120)
def test_compare_runs_both_sides_interleaved() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", "HEAD", "pingpong", "--quick", "--runs", "2"],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "round 2/2 done" in result.stderr
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("pingpong"))
    before, after, ratio = line.split()[2:5]
    assert float(before.replace(",", "")) > 0 and float(after.replace(",", "")) > 0
    assert float(ratio) > 0
