"""Repeat the verdict tests under load and count false alarms and misses.

Issue 13 asks: for each verdict, tests with a correct and a defective implementation
on the real library, run under ``-p xdist -n 2`` with a CPU hog on the other core,
20 runs for the correct ones without a false alarm. This script runs the chosen test
files N times that way (random order: pytest-randomly reseeds every run) and prints,
per test, how often it passed, separating the tests of correct code (a failure is a
false alarm) from the tests of planted defects (a failure is a miss, or a wrong
message).

Which is which: a test id with ``correct`` / ``defect`` in it says so (the fallback and
pool-health tests use that convention); otherwise a test whose body expects a verdict
failure (``pytest.raises(<...Mismatch|...Failed|LoopBlocked>)``, ``not verdict.passed``)
or whose name says ``caught`` / ``fails`` / ``defect`` tests a planted defect, and any
other test is counted with the correct ones.

Not part of the suite (it takes minutes)::

    .venv/bin/python benchmarks/verdict_repeats.py --repeats 20
    .venv/bin/python benchmarks/verdict_repeats.py --budget 900 tests/verdicts/*.py
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILES = [
    "tests/verdicts/test_verdict_backoff_libraries.py",
    "tests/verdicts/test_verdict_breakers.py",
    "tests/verdicts/test_verdict_breaker_conformance.py",
    "tests/verdicts/test_verdict_jitter.py",
    "tests/verdicts/test_verdict_timeouts.py",
    "tests/verdicts/test_verdict_no_blocking.py",
    "tests/verdicts/test_verdict_fallback.py",
    "tests/verdicts/test_verdict_pool_health.py",
    "tests/leaks/test_leak_pool.py",
]
EXPECTS_FAILURE = re.compile(r"(Mismatch|Failed|LoopBlocked|DriftFailed)$")
DEFECT_NAME = re.compile(r"(caught|_fails?\b|_fails_|defect|planted|is_lock_step|wrong_)")


def classify_functions(path: Path) -> dict[str, str]:
    """test function name -> ``defect`` / ``correct``, from the source."""
    tree = ast.parse(path.read_text())
    kinds: dict[str, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if not node.name.startswith("test"):
            continue
        kind = "correct"
        if DEFECT_NAME.search(node.name):
            kind = "defect"
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call) and ast.unparse(sub.func) == "pytest.raises" \
                    and sub.args and EXPECTS_FAILURE.search(ast.unparse(sub.args[0])):
                kind = "defect"
            if isinstance(sub, ast.UnaryOp) and isinstance(sub.op, ast.Not) \
                    and ast.unparse(sub.operand).endswith(".passed"):
                kind = "defect"
        kinds[node.name] = kind
    return kinds


def classify(test_id: str, functions: dict[str, dict[str, str]]) -> str:
    file, _, rest = test_id.partition("::")
    name, _, params = rest.partition("[")
    if "defect" in params:
        return "defect"
    if "correct" in params:
        return "correct"
    return functions.get(file, {}).get(name.split("::")[-1], "correct")


def start_hog() -> subprocess.Popen[bytes]:
    """One process spinning on a core: the "other core" the workers must share."""
    return subprocess.Popen([sys.executable, "-c", "while True:\n    pass"])


def run_once(files: list[str], junit: Path, workers: int, timeout: float) -> dict[str, str]:
    cmd = [sys.executable, "-m", "pytest", "-p", "xdist", "-n", str(workers), "-q",
           "-p", "no:cacheprovider", f"--junitxml={junit}", *files]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    try:
        subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"<run>": "timeout"}
    if not junit.exists():
        return {"<run>": "no report"}
    outcomes: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        classname = case.get("classname", "")
        parts = classname.split(".")
        # classname "tests.verdicts.test_x" (+ ".Class"): find the module part
        module_end = next((i for i, p in enumerate(parts) if p.startswith("test_")),
                          len(parts) - 1)
        file = "/".join(parts[: module_end + 1]) + ".py"
        inner = "::".join([*parts[module_end + 1:], case.get("name", "")])
        test_id = f"{file}::{inner}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                break
            if child.tag == "skipped":
                outcome = "skipped"
        # a teardown error is a second <testcase> with the same name: keep the worst
        if outcomes.get(test_id) in ("failed", "error"):
            continue
        outcomes[test_id] = outcome
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", default=DEFAULT_FILES)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds: start no new run after this long")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-hog", action="store_true", help="no CPU hog")
    parser.add_argument("--run-timeout", type=float, default=900.0)
    args = parser.parse_args(argv)

    functions = {f: classify_functions(ROOT / f) for f in args.files}
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    runs = 0
    started = time.monotonic()
    hog = None if args.no_hog else start_hog()
    try:
        with tempfile.TemporaryDirectory(prefix="verdict-repeats-") as tmp:
            for i in range(args.repeats):
                if args.budget is not None and time.monotonic() - started > args.budget:
                    break
                t0 = time.monotonic()
                outcomes = run_once(args.files, Path(tmp) / f"run{i}.xml", args.workers,
                                    args.run_timeout)
                runs += 1
                for test_id, outcome in outcomes.items():
                    counts[test_id][outcome] += 1
                bad = sum(1 for o in outcomes.values() if o in ("failed", "error", "timeout"))
                print(f"run {runs}: {len(outcomes)} tests, {bad} failed, "
                      f"{time.monotonic() - t0:.0f} s", flush=True)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()

    by_kind: dict[str, list[str]] = defaultdict(list)
    for test_id in sorted(counts):
        by_kind[classify(test_id, functions)].append(test_id)
    print(f"\n{runs} runs of {len(args.files)} files, -p xdist -n {args.workers}, "
          f"{'no CPU hog' if hog is None else 'a CPU hog spinning'}, "
          f"{time.monotonic() - started:.0f} s in all")
    totals: dict[str, Counter[str]] = defaultdict(Counter)
    for kind, title, bad_word in (("correct", "tests of correct code", "false alarms"),
                                  ("defect", "tests of planted defects", "misses")):
        print(f"\n== {title} (a failure is one of the {bad_word}) ==")
        for test_id in by_kind.get(kind, []):
            c = counts[test_id]
            totals[kind].update(c)
            failed = c["failed"] + c["error"] + c["timeout"]
            extra = f", {c['skipped']} skipped" if c["skipped"] else ""
            print(f"{c['passed']:3d} passed {failed:3d} failed{extra}  {test_id}"
                  + ("  <--" if failed else ""))
    print()
    for kind, bad_word in (("correct", "false alarms"), ("defect", "misses")):
        t = totals[kind]
        failed = t["failed"] + t["error"] + t["timeout"]
        print(f"{kind}: {len(by_kind.get(kind, []))} tests, up to {runs} runs each: "
              f"{t['passed']} passed, {failed} failed ({bad_word}), {t['skipped']} skipped")
    if "<run>" in counts:
        print(f"runs that produced no report: {dict(counts['<run>'])}")
    any_bad = any(c["failed"] + c["error"] + c["timeout"] for c in counts.values())
    return 1 if any_bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
