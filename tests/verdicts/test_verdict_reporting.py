"""Verdicts ride on the test report: user_properties (JUnit, xdist) and a report section."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

TEST_FILE = """
import pytest
from pytest_resilience.observe.attempts import from_waits
from pytest_resilience.verdicts import backoff as models
from pytest_resilience.verdicts.backoff import expect_backoff

def test_passes(resilience_verdicts):
    expect_backoff(from_waits([0.1, 0.2]), models.exponential(0.1), attempts=3)
    assert len(resilience_verdicts) == 1
    assert resilience_verdicts[0].passed

def test_fails():
    expect_backoff(from_waits([0.1, 0.1, 0.1]), models.exponential(0.1), attempts=4)
"""


def test_verdicts_in_report_sections_and_junit(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_claims=TEST_FILE)
    result = pytester.runpytest("-rA", "--junitxml=out.xml")
    result.assert_outcomes(passed=1, failed=1)
    # a failed verdict's table is shown once: in the failure (E lines), not again in the
    # report section; its marker column is headed "at fault"
    result.stdout.fnmatch_lines(
        [
            "E * backoff verdict FAILED: exponential 100 ms x 2^(n-1); 4 attempts",
            "E * tolerance: exact",
            "E * attempt  expected delay  measured  off by   at fault",
            "E * -------  --------------  --------  -------  --------",
            "E * 2        100 ms          100 ms    ok",
            "E * 3        200 ms          100 ms    -100 ms  <--",
            "E * 4        400 ms          100 ms    -300 ms  <--",
        ],
        consecutive=True,
    )
    assert result.stdout.str().count("backoff verdict FAILED") == 1
    result.stdout.fnmatch_lines(["*- resilience verdicts (call) -*",
                                 "backoff verdict PASSED*"])
    result.stdout.fnmatch_lines(["*look like constant 100 ms, not exponential 100 ms x 2^(n-1)"])
    tree = ET.parse(pytester.path / "out.xml")
    props = {
        case.get("name"): [
            json.loads(p.get("value") or "{}")
            for p in case.iter("property")
            if p.get("name") == "resilience_verdict"
        ]
        for case in tree.iter("testcase")
    }
    assert [v["passed"] for v in props["test_passes"]] == [True]
    assert [v["passed"] for v in props["test_fails"]] == [False]
    assert props["test_fails"][0]["observed"]["delays"] == [0.1, 0.1, 0.1]


def test_verdicts_survive_xdist(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(test_claims=TEST_FILE)
    result = pytester.runpytest_subprocess(
        "-n", "2", "--junitxml=out.xml", timeout=120
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["E * 3        200 ms*<--"])
    assert "resilience verdicts (call)" not in result.stdout.str()
    xml = (pytester.path / "out.xml").read_text()
    assert xml.count('name="resilience_verdict"') == 2
