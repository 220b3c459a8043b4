"""One result type, one report path: every check's Verdict reaches the report sections,
JUnit properties, the terminal summary (one line per verdict) and results.json - under
pytest-xdist too - and round-trips through JSON."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pytest_resilience.verdicts.core import Verdict

MIX = '''
import contextlib, datetime, time

import pybreaker
import pytest

from pytest_resilience import expect_backoff, expect_timeout, expect_transitions, \
    observe_pybreaker, track
from pytest_resilience.verdicts import backoff as models


def _attempts(delays):
    """Calls of a tracked dependency, the given (virtual) delays apart."""
    dependency = track(lambda: None)
    dependency()
    for delay in delays:
        time.sleep(delay)
        dependency()
    return dependency.timeline


@pytest.mark.virtual_time
def test_backoff_passes():
    expect_backoff(_attempts([0.1, 0.2, 0.4]), models.exponential(0.1, 2), attempts=4)


@pytest.mark.virtual_time
def test_backoff_fails():
    expect_backoff(_attempts([0.1, 0.1, 0.1]), models.exponential(0.1, 2), attempts=4)


def _breaker(fail_max):
    breaker = pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=60)
    observer = observe_pybreaker(breaker)
    guarded = observer.backend(lambda: (_ for _ in ()).throw(ConnectionError("down")))
    for _ in range(fail_max + 1):
        with contextlib.suppress(Exception):
            observer.call(breaker.call, guarded)
    return observer


def test_breaker_passes():
    expect_transitions(_breaker(3), ["closed", "open"], opens_after=3)


def test_breaker_fails():
    expect_transitions(_breaker(4), ["closed", "open"], opens_after=3)


@pytest.mark.virtual_time
def test_timeout_passes():
    with expect_timeout(within=5):
        time.sleep(5)
        raise TimeoutError


@pytest.mark.virtual_time
def test_timeout_fails():
    with expect_timeout(within=5):
        time.sleep(9)
        raise TimeoutError


@pytest.mark.no_leaks
def test_leaks_a_file(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    test_leaks_a_file.kept = open(tmp_path / "f.txt")


@pytest.mark.virtual_time
def test_clock_source_problem():
    datetime.datetime.utcnow()
    datetime.datetime.now()
'''


def _run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    pytester.makepyfile(test_mix=MIX)
    report_dir = pytester.path / "out"
    result = pytester.runpytest_subprocess(
        "-p", "pytest_resilience", f"--resilience-report={report_dir}",
        f"--junitxml={pytester.path / 'junit.xml'}", "-p", "no:randomly", *args, timeout=180,
    )
    return result, json.loads((report_dir / "results.json").read_text())


EXPECTED = {  # test -> (kind, status) of its verdict
    "test_backoff_passes": ("backoff", "PASSED"),
    "test_backoff_fails": ("backoff", "FAILED"),
    "test_breaker_passes": ("breaker", "PASSED"),
    "test_breaker_fails": ("breaker", "FAILED"),
    "test_timeout_passes": ("timeout", "PASSED"),
    "test_timeout_fails": ("timeout", "FAILED"),
    "test_leaks_a_file": ("leaks", "FAILED"),
    "test_clock_source_problem": ("clock-sources", "WARNING"),
}


@pytest.mark.parametrize("xdist", [False, True], ids=["plain", "xdist"])
def test_every_verdict_reaches_results_json_summary_and_junit(
    pytester: pytest.Pytester, xdist: bool
) -> None:
    result, record = _run(pytester, *(["-p", "xdist", "-n", "2"] if xdist else []))
    assert record["format"] == 1
    tests = {t["nodeid"].split("::")[-1]: t for t in record["tests"]}
    for name, (kind, status) in EXPECTED.items():
        verdicts = [v for v in tests[name]["verdicts"] if v["kind"] == kind]
        assert verdicts, f"{name}: no {kind} verdict in results.json: {tests[name]}"
        verdict = verdicts[0]
        assert verdict["status"] == status, (name, verdict)
        # figures and rows, and the rows to blame when it failed
        assert "expected" in verdict
        assert "observed" in verdict
        if status == "FAILED":
            assert verdict["table"], (name, verdict)
            assert verdict["blame"], (name, verdict)
        # round trip through JSON
        assert Verdict.from_dict(json.loads(json.dumps(verdict))).as_dict() == verdict
    assert tests["test_leaks_a_file"]["outcome"] == "error"  # failed at teardown
    assert tests["test_backoff_passes"]["outcome"] == "passed"

    # the terminal summary: one line per verdict, from the verdicts' data
    out = result.stdout.lines
    start = next(i for i, line in enumerate(out) if "= resilience =" in line)
    lines = [line for line in out[start + 1:] if line.startswith("test_mix.py::")]
    for name, (kind, status) in EXPECTED.items():
        matching = [line for line in lines if f"::{name} {status} {kind}:" in line]
        assert len(matching) == 1, (name, lines)

    # JUnit: leak and clock findings are properties like the others
    root = ET.parse(pytester.path / "junit.xml").getroot()
    kinds = {}
    for case in root.iter("testcase"):
        for prop in case.iter("property"):
            if prop.get("name") == "resilience_verdict":
                kinds.setdefault(case.get("name"), set()).add(
                    json.loads(prop.get("value") or "{}")["kind"])
    for name, (kind, _) in EXPECTED.items():
        assert kind in kinds.get(name, set()), (name, kinds)


def test_report_dir_that_is_a_file_is_a_usage_error(pytester: pytest.Pytester) -> None:
    (pytester.path / "taken").write_text("")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("-p", "pytest_resilience", "--resilience-report=taken")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--resilience-report='taken' is a file; give a directory*"])
    assert "INTERNALERROR" not in result.stderr.str()


def test_one_makereport_and_one_terminal_summary_in_the_package() -> None:
    root = Path(__file__).resolve().parents[2] / "pytest_resilience"
    text = "\n".join(p.read_text() for p in root.rglob("*.py"))
    assert text.count("def pytest_runtest_makereport(") == 1
    assert text.count("def pytest_terminal_summary(") == 1
    assert "_report_sections" not in text
