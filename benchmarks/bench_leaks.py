"""Cost of the per-test leak check.

Two measurements:

1. in-process: ``LeakCheck.start()`` + ``finish()`` around an empty body,
   repeated, with aiohttp/httpx/asyncpg/psycopg imported (a realistic heap);
2. end to end: a generated suite of trivial sync and async tests run by pytest
   in a child process without the check and with ``--resilience-leaks=fail``;
   the difference divided by the number of tests is the cost per test.

Run: ``.venv/bin/python benchmarks/bench_leaks.py [--tests N] [--repeat R]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = '''
import asyncio
import pytest

@pytest.mark.parametrize("i", range({n}))
def test_sync(i):
    assert i >= 0

@pytest.mark.asyncio
@pytest.mark.parametrize("i", range({n}))
async def test_async(i):
    await asyncio.sleep(0)
'''

INI = """[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""


def _fmt(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[int(len(values) * 0.9) - 1] if len(values) >= 10 else values[-1]
    return (f"min {values[0]:.2f} / median {statistics.median(values):.2f} / "
            f"p90 {p90:.2f} / max {values[-1]:.2f} ms")


def in_process(repeat: int, tracemalloc_frames: int) -> list[float]:
    import tracemalloc

    import aiohttp  # noqa: F401  (a realistic heap for the GC passes)
    import asyncpg  # noqa: F401
    import httpx  # noqa: F401
    import psycopg  # noqa: F401

    from pytest_resilience.fixtures.leaks import LeakCheck
    from pytest_resilience.verdicts.leaks import LeakOptions

    if tracemalloc_frames:
        tracemalloc.start(tracemalloc_frames)
    options = LeakOptions()
    out: list[float] = []
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        check = LeakCheck(options)
        check.start()
        verdict = check.finish()
        elapsed = (time.perf_counter() - t0) * 1e3
        assert verdict.passed, verdict.message()
        if i:  # the first one runs the full collection of a not-yet-clean process
            out.append(elapsed)
    if tracemalloc_frames:
        tracemalloc.stop()
    return out


def end_to_end(tests: int, repeat: int) -> tuple[list[float], list[float]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    base: list[float] = []
    checked: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "pytest.ini").write_text(INI)
        (root / "test_suite.py").write_text(SUITE.format(n=tests // 2))
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-p", "no:postgresql"]
        for _ in range(repeat):
            for extra, bucket in (([], base), (["--resilience-leaks=fail"], checked)):
                t0 = time.perf_counter()
                proc = subprocess.run(cmd + extra, cwd=root, env=env, capture_output=True,
                                      text=True, check=False, timeout=600)
                bucket.append(time.perf_counter() - t0)
                if proc.returncode != 0:
                    raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    return base, checked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--checks", type=int, default=200)
    args = parser.parse_args()

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    plain = in_process(args.checks, 0)
    print(f"in-process check (start+finish, empty body), {args.checks} runs: {_fmt(plain)}")
    traced = in_process(args.checks // 4, 10)
    print(f"  same with tracemalloc tracing (10 frames): {_fmt(traced)}")

    base, checked = end_to_end(args.tests, args.repeat)
    b, c = min(base), min(checked)
    per_test = (c - b) / args.tests * 1e3
    print(f"end to end, {args.tests} trivial tests (half async), best of {args.repeat}:")
    print(f"  without the check: {b:.2f} s ({b / args.tests * 1e3:.2f} ms/test)")
    print(f"  --resilience-leaks=fail: {c:.2f} s ({c / args.tests * 1e3:.2f} ms/test)")
    print(f"  cost per test: {per_test:.2f} ms; ratio checked/unchecked: {c / b:.2f}")


if __name__ == "__main__":
    main()
