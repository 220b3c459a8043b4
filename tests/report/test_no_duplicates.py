"""A failed verdict is printed once: its failure message (the ``E`` lines of a
``VerdictFailed``, a failed scenario's text) shows the table, so the report section
``resilience verdicts (call)`` leaves it out; verdicts the failure does not show keep
their section. The marker column (``<--``) has a heading."""

from __future__ import annotations

import textwrap

import pytest

pytestmark = pytest.mark.timeout(180)

TESTS = """
import pytest
from pytest_resilience.observe.attempts import from_waits
from pytest_resilience.verdicts import backoff as models
from pytest_resilience.verdicts.backoff import BackoffMismatch, expect_backoff

def test_fails():
    expect_backoff(from_waits([0.1, 0.1, 0.1]), models.exponential(0.1), attempts=4)

def test_caught_then_fails_otherwise():
    with pytest.raises(BackoffMismatch):
        expect_backoff(from_waits([0.1, 0.1, 0.1]), models.exponential(0.1), attempts=4)
    assert 1 == 2

def test_passes():
    expect_backoff(from_waits([0.1, 0.2]), models.exponential(0.1), attempts=3)
"""

#: the row at fault of the failed backoff verdict (the same in E lines and sections)
ROW = "4        400 ms          100 ms    -300 ms  <--"
HEADER = "attempt  expected delay  measured  off by   at fault"


def _count(text: str, needle: str) -> int:
    return sum(needle in line for line in text.splitlines())


def _sections(text: str, title: str) -> int:
    return sum(line.startswith("-") and f" {title} " in line for line in text.splitlines())


@pytest.mark.parametrize("tb", ["auto", "short", "native"])
def test_failed_verdict_table_printed_once(pytester: pytest.Pytester, tb: str) -> None:
    pytester.makepyfile(test_claims=TESTS)
    result = pytester.runpytest("-p", "no:randomly", "-k", "test_fails", f"--tb={tb}")
    result.assert_outcomes(failed=1, deselected=2)
    out = result.stdout.str()
    assert _count(out, "backoff verdict FAILED: exponential 100 ms") == 1, out
    assert _count(out, ROW) == 1, out
    assert _count(out, HEADER) == 1, out
    assert _sections(out, "resilience verdicts (call)") == 0, out
    # the one-line summary still names the failed verdict
    result.stdout.fnmatch_lines(["*::test_fails FAILED backoff: exponential 100 ms*"])


def test_marker_column_has_a_heading(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_claims=TESTS)
    result = pytester.runpytest("-p", "no:randomly", "-k", "test_fails")
    result.stdout.fnmatch_lines([
        f"E * {HEADER}",
        "E * -------  --------------  --------  -------  --------",
        "E * 2        100 ms          100 ms    ok",
        "E * 3        200 ms          100 ms    -100 ms  <--",
        f"E * {ROW}",
    ], consecutive=True)


def test_verdicts_the_failure_does_not_show_keep_their_section(
    pytester: pytest.Pytester,
) -> None:
    """A failed verdict the test caught (it failed for another reason) and a passing
    verdict (-rA) are in no failure message: their sections stay."""
    pytester.makepyfile(test_claims=TESTS)
    result = pytester.runpytest("-p", "no:randomly", "-rA")
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    assert _sections(out, "resilience verdicts (call)") == 2, out
    # test_fails (E lines) + test_caught_then_fails_otherwise (its section): once each
    assert _count(out, ROW) == 2, out
    result.stdout.fnmatch_lines([
        "*test_caught_then_fails_otherwise*",
        "E       assert 1 == 2",
        "*- resilience verdicts (call) -*",
        "backoff verdict FAILED: exponential 100 ms x 2^(n-1); 4 attempts",
        "tolerance: exact",
        HEADER,
    ])
    # a passing verdict's table: no empty marker column, no heading for it
    result.stdout.fnmatch_lines([
        "backoff verdict PASSED: exponential 100 ms x 2^(n-1); 3 attempts",
        "tolerance: exact",
        "attempt  expected delay  measured  off by",
        "-------  --------------  --------  ------",
    ], consecutive=True)


def test_failed_verdict_printed_once_under_xdist(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(test_claims=TESTS)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-n", "2", timeout=120)
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    assert _count(out, ROW) == 2, out  # test_fails's E lines, the caught one's section
    assert _sections(out, "resilience verdicts (call)") == 1, out


TARGETS = """
def answer(value=1):
    return value
"""

SCENARIOS = """
name: wrong answer
target: {call: "targets:answer", args: {value: 2}}
drive: {calls: 2}
expect: {returns: 1, error_rate: 0.5}
"""


def test_failed_scenario_prints_each_table_once(pytester: pytest.Pytester) -> None:
    """A failed scenario's message holds its failed verdicts and its fault timeline:
    neither is repeated in a section; the passing verdict keeps its section."""
    pytester.makepyfile(targets=TARGETS)
    (pytester.path / "scenarios").mkdir()
    (pytester.path / "scenarios" / "claims.yaml").write_text(textwrap.dedent(SCENARIOS))
    result = pytester.runpytest_subprocess("-p", "pytest_resilience", "-p", "no:randomly",
                                           "-p", "no:cacheprovider", "scenarios",
                                           timeout=120)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert _count(out, "returns verdict FAILED: every call returns 1") == 1, out
    assert _count(out, "call  at") == 1, out
    assert _count(out, "fault timeline: (no faults)") == 1, out
    assert _sections(out, "Captured fault timeline call") == 0, out
    result.stdout.fnmatch_lines([
        "scenario 'wrong answer': 1 of 2 expectations failed",
        "",
        "returns verdict FAILED: every call returns 1",
        "call  at * result  at fault",
    ], consecutive=True)
    result.stdout.fnmatch_lines([
        "*- resilience verdicts (call) -*",
        "error-rate verdict PASSED: at most 50% of calls fail",
    ], consecutive=True)
    assert _sections(out, "resilience verdicts (call)") == 1, out
