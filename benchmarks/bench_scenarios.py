"""Scenario runner cost: the whole shipped scenario run (wall), and the per-scenario
overhead of the runner over the same checks written as Python tests, as a ratio of the
summed setup+call+teardown durations measured in the same pytest process.

    .venv/bin/python benchmarks/bench_scenarios.py [--rounds 5]
"""

from __future__ import annotations

import argparse
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


def _durations(args: list[str]) -> tuple[dict[str, float], float]:
    """Per test: setup + call + teardown seconds (from the JUnit report), and the wall."""
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
        )
        wall = time.perf_counter() - started
        if out.returncode != 0:
            raise SystemExit(f"pytest failed:\n{out.stdout[-3000:]}")
        totals: dict[str, float] = {}
        for case in ET.parse(report).iter("testcase"):
            classname = case.get("classname", "")
            name = case.get("name", "")
            if ".yaml" in classname or (classname.startswith(("scenarios", "benchmarks")) \
                    and not classname.endswith("test_equivalents")):
                nodeid = next((k for k in PAIRS if k.endswith("::" + name)), name)
            else:
                nodeid = classname.replace(".", "/") + ".py::" + name
            totals[nodeid] = float(case.get("time", "0"))
    return totals, wall


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    walls = []
    for _ in range(args.rounds):
        walls.append(_durations(["scenarios"])[1])
    print(f"whole shipped scenario run (pytest scenarios, wall incl. start-up): "
          f"min {min(walls):.2f} s, median {statistics.median(walls):.2f} s, "
          f"max {max(walls):.2f} s over {args.rounds} rounds (goal < 30 s)")
    ratios: dict[str, list[float]] = {k: [] for k in PAIRS}
    absolute: dict[str, list[tuple[float, float]]] = {k: [] for k in PAIRS}
    for round_no in range(args.rounds):
        # both in one process after a warm-up test that starts the session's services;
        # which side runs first alternates (the first pays lazy imports)
        warm = ["benchmarks/scenario_equivalents/test_equivalents.py::test_warm_up",
                "benchmarks/scenario_equivalents/test_equivalents.py::test_warm_up_virtual",
                "benchmarks/scenario_equivalents/warm.resilience.yaml"]
        order = [*warm, *PAIRS.values(), *PAIRS.keys()] if round_no % 2 == 0 else \
            [*warm, *PAIRS.keys(), *PAIRS.values()]
        totals, _ = _durations(order)
        for scenario, twin in PAIRS.items():
            ratios[scenario].append(totals[scenario] / totals[twin])
            absolute[scenario].append((totals[scenario], totals[twin]))
    for scenario, values in ratios.items():
        name = scenario.split("::")[0]
        scen = statistics.median(a for a, _ in absolute[scenario]) * 1000
        twin = statistics.median(b for _, b in absolute[scenario]) * 1000
        print(f"{name}: runner / Python test = median {statistics.median(values):.2f}x "
              f"(min {min(values):.2f}, max {max(values):.2f}; goal <= 1.1x); "
              f"median {scen:.0f} ms vs {twin:.0f} ms per test")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
