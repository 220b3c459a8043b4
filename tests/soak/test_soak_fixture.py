"""The ``soak`` fixture seen from pytest runs (pytester): the plan from the marker and
``--resilience-soak``, usage errors, live progress, the record file, results.json, JUnit
properties, async tests and Ctrl-C. Inner soak runs last 1-3 s."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pytest_resilience.soak.record import load

pytestmark = pytest.mark.timeout(120)

PLAN = '''
import asyncio, json
from pathlib import Path

import pytest


async def fast():
    await asyncio.sleep(0)


@pytest.mark.soak(iterations=7, interval="100ms", concurrency=2)
def test_marked(soak):
    result = soak.run(fast)
    Path("seen.json").write_text(json.dumps({"plan": result.record.plan,
                                             "ended": result.record.ended,
                                             "totals": result.record.totals}))
'''


def _seen(pytester: pytest.Pytester, *args: str) -> dict[str, Any]:
    result = pytester.runpytest("-p", "no:randomly", "-q", *args)
    result.assert_outcomes(passed=1)
    seen: dict[str, Any] = json.loads((pytester.path / "seen.json").read_text())
    return seen


def test_marker_plan_and_the_soak_option_override(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plan=PLAN)
    marked = _seen(pytester)
    assert marked["plan"] == {"duration_s": None, "iterations": 7, "rate": None,
                              "concurrency": 2, "model": "closed"}
    assert (marked["ended"], marked["totals"]["calls"]) == ("iterations", 7)

    counted = _seen(pytester, "--resilience-soak=300")
    assert (counted["plan"]["iterations"], counted["plan"]["duration_s"]) == (300, None)
    assert (counted["ended"], counted["totals"]["calls"]) == ("iterations", 300)

    timed = _seen(pytester, "--resilience-soak=1s")
    assert (timed["plan"]["iterations"], timed["plan"]["duration_s"]) == (None, 1.0)
    assert timed["ended"] == "duration"
    assert 0.9 <= timed["totals"]["elapsed_s"] < 10


def test_a_bad_soak_option_is_a_one_line_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plan=PLAN)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "--resilience-soak=abc",
                                           timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "--resilience-soak" in err, err
    assert "abc" in err, err
    assert "Traceback" not in err + result.stdout.str()
    assert len([line for line in result.stderr.lines if line.strip()]) <= 2, err
    assert not (pytester.path / "seen.json").exists()


def test_an_unknown_marker_keyword_fails_the_test_naming_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.soak(duraton="1s")
        def test_typo(soak):
            soak.run(lambda: None)
        """
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*test_typo: @pytest.mark.soak: unknown keyword(s) [[]'duraton'[]]; known: duration*"])
    assert "Traceback" not in result.stdout.str()


def test_an_unknown_marker_keyword_is_reported_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.soak(duraton="1s")
        def test_typo(soak):
            soak.run(lambda: None)
        """
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(failed=1)
    assert "During handling of the above exception" not in result.stdout.str()


PROGRESS = '''
import asyncio

import pytest


async def tick():
    await asyncio.sleep(0.01)


@pytest.mark.soak(duration="2s", interval="250ms")
def test_progress(soak):
    soak.run(tick)
'''


def test_progress_lines_without_a_terminal_and_none_under_quiet(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_progress=PROGRESS)
    result = pytester.runpytest_subprocess("-p", "no:randomly", timeout=60)
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "\r" not in out
    lines = [line for line in result.stdout.lines if line.startswith("soak test_progress: ")]
    # periodic lines (every 250 ms, however slow the machine) and the final one
    assert len(lines) >= 3, out
    assert any("/2 s, " in line and " calls (" in line for line in lines), lines
    assert "soak test_progress: duration after " in lines[-1], lines

    quiet = pytester.runpytest_subprocess("-p", "no:randomly", "-q", "--resilience-soak=20",
                                          timeout=60)
    quiet.assert_outcomes(passed=1)
    assert "soak test_progress" not in quiet.stdout.str()


RECORDED = '''
import asyncio

import pytest


async def fast():
    await asyncio.sleep(0)


async def refused():
    await asyncio.sleep(0)
    raise ConnectionRefusedError("backend down")


@pytest.mark.soak(iterations=20, interval="100ms")
def test_recorded(soak):
    result = soak.run(fast)
    assert result.summary["calls"] == 20


@pytest.mark.soak(iterations=10, interval="100ms")
def test_errors(soak):
    soak.run(refused).expect_error_rate(0)


@pytest.mark.asyncio
@pytest.mark.soak(iterations=12, interval="100ms")
async def test_async(soak):
    result = await soak.arun(fast)
    assert result.record.totals["calls"] == 12
    result.expect_error_rate(0)


def test_run_inside_a_loop_says_arun(soak):
    async def main():
        soak.run(fast, iterations=1)
    with pytest.raises(RuntimeError, match="use `await soak.arun"):
        asyncio.run(main())
'''


def test_record_file_results_json_junit_and_failures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_rec=RECORDED)
    out = pytester.path / "out"
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess("-p", "no:randomly", f"--resilience-report={out}",
                                           f"--junitxml={junit}", timeout=90)
    result.assert_outcomes(passed=3, failed=1)
    text = result.stdout.str()
    result.stdout.fnmatch_lines(["*at most 0.0% of calls fail*",
                                 "*10 of 10 failed (100.00%): 10 ConnectionRefusedError*"])
    assert "Traceback" not in text

    files = {p.name: load(p) for p in (out / "soak").glob("*.json")}
    assert set(files) == {"test_rec.py_test_recorded.json", "test_rec.py_test_errors.json",
                          "test_rec.py_test_async.json",
                          "test_rec.py_test_run_inside_a_loop_says_arun.json"}, files
    assert files["test_rec.py_test_recorded.json"].totals["calls"] == 20
    assert files["test_rec.py_test_async.json"].totals["calls"] == 12
    errors = files["test_rec.py_test_errors.json"]
    assert errors.totals["error_types"] == {"ConnectionRefusedError": 10}
    assert errors.name == "test_rec.py::test_errors"

    results = json.loads((out / "results.json").read_text())
    tests = {t["nodeid"].split("::")[-1]: t for t in results["tests"]}
    soak = [a for a in tests["test_recorded"]["attachments"] if a["kind"] == "soak"]
    assert len(soak) == 1, tests["test_recorded"]
    assert soak[0]["file"] == "soak/test_rec.py_test_recorded.json"
    assert soak[0]["summary"]["calls"] == 20
    assert tests["test_errors"]["outcome"] == "failed"

    props = {case.get("name"): {p.get("name"): p.get("value")
                                for p in case.iter("property")}
             for case in ET.parse(junit).getroot().iter("testcase")}
    assert props["test_recorded"]["resilience_soak_calls"] == "20"
    assert props["test_async"]["resilience_soak_calls"] == "12"
    assert props["test_errors"]["resilience_soak_errors"] == "10"


LONG = '''
import asyncio

import pytest


async def tick():
    await asyncio.sleep(0.01)


@pytest.mark.soak(duration="30s", interval="100ms")
def test_long(soak):
    soak.run(tick)
'''


def _lines(stream: Any, into: queue.Queue[str | None]) -> None:
    for line in iter(stream.readline, ""):
        into.put(line)
    into.put(None)


def test_ctrl_c_ends_the_soak_run_and_keeps_the_partial_record(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_long=LONG)
    out = pytester.path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider",
         f"--resilience-report={out}", "test_long.py"],
        cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, env=dict(os.environ),
    )
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "".join(seen)
            seen.append(line)
            if line.startswith("soak test_long: "):
                break
        assert time.monotonic() < deadline, "".join(seen)
        interrupted = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        assert time.monotonic() - interrupted < 10
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    reader.join(timeout=10)
    assert proc.stdout is not None
    proc.stdout.close()
    while (line := lines.get_nowait() if not lines.empty() else None) is not None:
        seen.append(line)
    text = "".join(seen)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, text
    assert "KeyboardInterrupt" in text
    assert "Traceback" not in text, text
    assert "pytest_resilience" not in text.split("KeyboardInterrupt", 1)[1], text

    record = json.loads((out / "soak" / "test_long.py_test_long.json").read_text())
    assert record["ended"] == "interrupted"
    assert 0 < record["totals"]["elapsed_s"] < 30
    assert len(record["series"]["t"]) >= 2
    results = json.loads(Path(out / "results.json").read_text())
    test = next(t for t in results["tests"] if t["nodeid"] == "test_long.py::test_long")
    assert any(a["kind"] == "soak" and a["summary"]["ended"] == "interrupted"
               for a in test["attachments"]), test


# -- retry amplification against a real HTTP backend ----------------------------------------


def _client(url: str, retries: int) -> Any:
    import httpx

    client = httpx.Client(base_url=url, timeout=5)

    def call() -> int:
        for _ in range(retries + 1):  # no backoff at all
            status = client.get("/trends").status_code
            if status < 500:
                return status
        raise ConnectionError(f"gave up after {retries + 1} attempts: HTTP {status}")

    call.close = client.close  # type: ignore[attr-defined]
    return call


# 5 good answers, an outage of 60 answers, then healthy again
OUTAGE = ["200 x5", "503 x60", "200 forever"]


@pytest.mark.parametrize(("retries", "amplified"), [(5, True), (0, False)],
                         ids=["retries-5-times", "no-retries"])
def test_retry_amplification_with_a_real_client(soak: Any, http_backends: Any,
                                                retries: int, amplified: bool) -> None:
    from pytest_resilience.soak.drift import DriftFailed

    backend = http_backends({"GET /trends": OUTAGE}, assert_all_used=False)
    call = _client(backend.url, retries)
    try:
        result = soak.run(call, watch=[backend], iterations=30, interval=0.05,
                          pg_sessions=False)
    finally:
        call.close()
    totals = result.record.totals
    assert totals["calls"] == 30
    assert totals["attempts"] == len(backend.requests)
    if amplified:
        # 5 + 60 (10 calls x 6 attempts, all failed) + 15 = 80 attempts for 30 calls
        assert (totals["attempts"], totals["errors"]) == (80, 10), totals
        with pytest.raises(DriftFailed) as info:
            result.expect_amplification(at_most=1.5)
        assert "2.67" in str(info.value), str(info.value)
    else:
        assert (totals["attempts"], totals["errors"]) == (30, 25), totals
        verdict = result.expect_amplification(at_most=1.5)
        assert verdict.passed


def test_progress_is_one_updating_line_on_a_terminal(pytester: pytest.Pytester) -> None:
    """Under a pseudo-terminal the progress rewrites one line (carriage returns), ending
    with a newline after the final figures."""
    import os
    import pty
    import select
    import subprocess
    import sys
    import time

    pytester.makepyfile(test_progress=PROGRESS)
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["COLUMNS"] = "120"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider",
         "test_progress.py"], cwd=pytester.path, stdin=subprocess.DEVNULL, stdout=follower,
        stderr=follower, env=env)
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(leader)
        proc.wait(timeout=30)
    out = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, out
    updates = [part for part in out.split("\r") if part.startswith("soak test_progress: ")]
    assert len(updates) >= 3, out  # the same line rewritten, sample after sample
    assert any("duration after" in part for part in updates), out
