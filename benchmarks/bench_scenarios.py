"""Scenario runner cost: the whole shipped scenario run (wall), and the per-scenario
overhead of the runner over the same checks written as Python tests, as a ratio of the
summed setup+call+teardown durations measured in the same pytest process.

Each round runs, in one pytest process after warm-up items, ``--repeat`` copies of each
scenario and of its Python twin, interleaved (scenario, twin, twin, scenario, ...), so
both sides are measured in steady state and neither pays the process's first-use costs;
the ratio is the median scenario time over the median twin time.

    .venv/bin/python benchmarks/bench_scenarios.py [--rounds 5] [--repeat 6]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = {  # scenario node id -> its Python twin
    "scenarios/pool_health.yaml::the_pool_health_monitor_grades_degraded_and_critical_pools":
        "benchmarks/scenario_equivalents/test_equivalents.py::test_pool_health",
    "scenarios/task_timeout.yaml::a_long_task_is_cut_off_after_15_minutes":
        "benchmarks/scenario_equivalents/test_equivalents.py::test_task_timeout",
    "scenarios/fallback.yaml::the_last_good_trends_answer_is_served_while_the_api_is_down":
        "benchmarks/scenario_equivalents/test_equivalents.py::test_fallback",
}


def _durations(args: list[str], env: dict[str, str] | None = None,
               ) -> tuple[dict[str, float], float]:
    """Per test name: setup + call + teardown seconds (from the JUnit report), and the
    wall."""
    import tempfile
    import xml.etree.ElementTree as ET

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p",
             "no:cacheprovider", f"--junitxml={report}", "-o", "junit_duration_report=total",
             *args],
            cwd=ROOT, capture_output=True, text=True, check=False,
            env={**os.environ, **(env or {})},
        )
        wall = time.perf_counter() - started
        if out.returncode != 0:
            raise SystemExit(f"pytest failed:\n{out.stdout[-3000:]}")
        totals = {str(case.get("name")): float(case.get("time", "0"))
                  for case in ET.parse(report).iter("testcase")}
    return totals, wall


def _copies(workdir: Path, repeat: int) -> dict[str, list[tuple[str, str, str, str]]]:
    """``repeat`` renamed copies of each scenario in ``workdir``; per scenario, a list of
    (scenario path, its test name, twin node id, twin test name)."""
    import re

    pairs: dict[str, list[tuple[str, str, str, str]]] = {}
    for scenario, twin in PAIRS.items():
        path = scenario.split("::")[0]
        text = (ROOT / path).read_text()
        stem = Path(path).stem
        for rep in range(repeat):
            copy = workdir / f"{stem}_{rep}.resilience.yaml"
            copy.write_text(re.sub(r"^name: .*$", f"name: {stem} copy {rep}", text,
                                   count=1, flags=re.M))
            func = twin.rsplit("::", 1)[1]
            pairs.setdefault(path, []).append(
                (str(copy.relative_to(ROOT)), f"{stem}_copy_{rep}", f"{twin}[{rep}]",
                 f"{func}[{rep}]"))
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=6,
                        help="copies of each scenario and twin per round (default 6)")
    args = parser.parse_args()
    walls = []
    for _ in range(args.rounds):
        walls.append(_durations(["scenarios"])[1])
    print(f"whole shipped scenario run (pytest scenarios, wall incl. start-up): "
          f"min {min(walls):.2f} s, median {statistics.median(walls):.2f} s, "
          f"max {max(walls):.2f} s over {args.rounds} rounds (goal < 30 s)")
    workdir = ROOT / ".bench-scenarios"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    try:
        pairs = _copies(workdir, args.repeat)
        ratios: dict[str, list[float]] = {k: [] for k in pairs}
        absolute: dict[str, list[tuple[float, float]]] = {k: [] for k in pairs}
        warm = ["benchmarks/scenario_equivalents/test_equivalents.py::test_warm_up",
                "benchmarks/scenario_equivalents/test_equivalents.py::test_warm_up_virtual",
                "benchmarks/scenario_equivalents/warm.resilience.yaml"]
        for round_no in range(args.rounds):
            order = list(warm)
            for reps in pairs.values():
                for rep, (copy, _, twin, _) in enumerate(reps):
                    first, second = (copy, twin) if (rep + round_no) % 2 == 0 else (twin, copy)
                    order += [first, second]
            totals, _ = _durations(order, env={"BENCH_REPEAT": str(args.repeat)})
            for path, reps in pairs.items():
                scen = statistics.median(totals[name] for _, name, _, _ in reps)
                twin_t = statistics.median(totals[name] for _, _, _, name in reps)
                ratios[path].append(scen / twin_t)
                absolute[path].append((scen, twin_t))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for path, values in ratios.items():
        scen_ms = statistics.median(a for a, _ in absolute[path]) * 1000
        twin_ms = statistics.median(b for _, b in absolute[path]) * 1000
        print(f"{path}: runner / Python test = median {statistics.median(values):.2f}x "
              f"(min {min(values):.2f}, max {max(values):.2f}; goal <= 1.1x); "
              f"median {scen_ms:.0f} ms vs {twin_ms:.0f} ms per test "
              f"({args.repeat} of each per round, interleaved)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
