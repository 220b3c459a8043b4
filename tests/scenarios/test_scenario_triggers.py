"""Fault steps triggered by what happened rather than by the clock (``after:``): another
step's end, a number of completed calls, a number of requests reaching a backend; steps
that never trigger are named in the timeline; wrong triggers are one clear message."""

from __future__ import annotations

import re
import textwrap

import pytest

pytestmark = pytest.mark.timeout(180)

TARGETS = '''
import httpx


def status(trends_api_url):
    return httpx.get(trends_api_url + "/trends", timeout=5).status_code
'''

SERVICES = """
services:
  trends_api:
    routes:
      GET /trends: ['200 x*']
target:
  call: targets:status
"""


def _run(pytester: pytest.Pytester, body: str) -> str:
    pytester.makepyfile(targets=TARGETS)
    scenarios = pytester.path / "scenarios"
    scenarios.mkdir(exist_ok=True)
    (scenarios / "t.yaml").write_text("name: triggered\n" + SERVICES + textwrap.dedent(body))
    result = pytester.runpytest_subprocess("-p", "pytest_resilience", "-p", "no:randomly",
                                           "-p", "no:cacheprovider", "scenarios", timeout=120)
    return result.stdout.str()


def _statuses(out: str) -> list[int]:
    """The value of each call from the returns table (call, at, result)."""
    rows = dict(re.findall(r"^(\d+)\s+\+\S+ \S*\s+(\d{3})\b", out, re.M))  # shown twice
    return [int(rows[key]) for key in sorted(rows, key=int)]


def test_after_n_calls(pytester: pytest.Pytester) -> None:
    out = _run(pytester, """
        faults:
          - {on: trends_api, fault: status, status: 503, after: 2 calls, for: 150ms}
        drive: {calls: 6, every: 100ms}
        expect:
          returns: 200
    """)
    statuses = _statuses(out)
    assert statuses[:3] == [200, 200, 503], out
    assert statuses[-1] == 200, out
    assert "triggered faults[0] status on trends_api (status=503) (after 2 calls)" in out


def test_after_another_step_and_after_requests(pytester: pytest.Pytester) -> None:
    out = _run(pytester, """
        faults:
          - {on: trends_api, fault: status, status: 503, at: 0s, for: 150ms}
          - {on: trends_api, fault: status, status: 429, after: "faults[0]"}
          - {on: trends_api, fault: status, status: 418, after: 100 requests to trends_api}
        drive: {calls: 5, every: 100ms}
        expect:
          returns: 200
    """)
    statuses = _statuses(out)
    assert statuses[0] == 503, out
    assert statuses[-1] == 429, out
    first_429 = statuses.index(429)
    assert set(statuses[:first_429]) <= {503}, out  # no gap: 429 follows the 503 window
    assert "never triggered: faults[2] status on trends_api (status=418) " \
           "(after 100 requests to trends_api)" in out


def test_after_requests_to_a_route(pytester: pytest.Pytester) -> None:
    out = _run(pytester, """
        faults:
          - {on: trends_api, fault: status, status: 503,
             after: 3 requests to trends_api GET /trends}
        drive: {calls: 5}
        expect:
          returns: 200
    """)
    assert _statuses(out) == [200, 200, 200, 503, 503], out


@pytest.mark.parametrize(("step", "words"), [
    ('{on: trends_api, fault: reset, after: "faults[0]"}',
     "the first step cannot wait for a step"),
    ("{on: trends_api, fault: reset, after: 5 requests to nope}",
     "'nope' is not an HTTP backend of this scenario"),
    ("{on: trends_api, fault: reset, after: 5 requests to trends_api GET /trend}",
     "has no route 'GET /trend'"),
    ("{on: trends_api, fault: reset, after: lunch}", "'lunch' is not a trigger"),
])
def test_a_wrong_trigger_is_one_clear_message(pytester: pytest.Pytester, step: str,
                                              words: str) -> None:
    out = _run(pytester, f"""
        faults:
          - {step}
        expect:
          error_rate: 0
    """)
    assert words in out, out
    assert "Traceback" not in out
