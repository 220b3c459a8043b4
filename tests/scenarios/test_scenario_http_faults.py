"""HTTP faults and re-scripted routes on a scenario's timeline: a backend's answers change
for a window (``fault: status``/``reset``/... or a new ``script``) and come back after it,
at call boundaries and, in load runs, in the middle of the run; clear errors for a step
on a service that is not an HTTP backend or a route that does not exist."""

from __future__ import annotations

import json
import re
import textwrap

import pytest

from pytest_resilience.soak.record import load

pytestmark = pytest.mark.timeout(180)

TARGETS = '''
import httpx


def status(trends_api_url):
    return httpx.get(trends_api_url + "/trends", timeout=5).status_code


async def astatus(trends_api_url):
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(trends_api_url + "/trends")
    response.raise_for_status()
'''


def _run(pytester: pytest.Pytester, yaml: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(targets=TARGETS)
    scenarios = pytester.path / "scenarios"
    scenarios.mkdir(exist_ok=True)
    (scenarios / "http.yaml").write_text(textwrap.dedent(yaml))
    return pytester.runpytest_subprocess("-p", "pytest_resilience", "-p", "no:randomly",
                                         "-p", "no:cacheprovider", "scenarios", *args,
                                         timeout=120)


def test_a_status_fault_for_the_first_calls_then_the_script_again(
        pytester: pytest.Pytester) -> None:
    result = _run(pytester, """
        name: the API answers 503 for two calls, then its script again
        services:
          trends_api:
            routes:
              GET /trends: ['200 x*']
        target:
          call: targets:status
        faults:
          - {on: trends_api, route: GET /trends, fault: status, status: 503, at: 0s,
             for: 150ms}
        drive: {calls: 4, every: 100ms}
        expect:
          returns: 200
          attempts: {service: trends_api, exactly: 4}
    """)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    # the calls inside the window saw the fault, the ones after it the script again
    rows = dict(re.findall(r"^(\d+)\s+\+\S+ \S*\s+(\d{3})\b", out, re.M))
    statuses = [rows[key] for key in sorted(rows, key=int)]
    assert statuses[0] == "503", out
    assert statuses[-1] == "200", out
    assert statuses == sorted(statuses, reverse=True), out  # 503s, then 200s
    assert "applied faults[0] status on trends_api GET /trends (status=503)" in out
    assert "removed faults[0] status on trends_api GET /trends" in out


def test_a_new_script_for_a_window_and_a_reset_fault(pytester: pytest.Pytester) -> None:
    result = _run(pytester, """
        name: re-scripted
        services:
          trends_api:
            routes:
              GET /trends: ['200 x*']
        target:
          call: targets:status
        faults:
          - {on: trends_api, script: ["429 x1", "418 forever"], at: 0s, for: 250ms}
        drive: {calls: 5, every: 100ms}
        expect:
          returns: 200
    """)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    rows = dict(re.findall(r"^(\d+)\s+\+\S+ \S*\s+(\d{3})\b", out, re.M))
    statuses = [rows[key] for key in sorted(rows, key=int)]
    assert statuses[:2] == ["429", "418"], out  # the window's script, in order
    assert statuses[-1] == "200", out  # the route's own script after the window


def test_an_outage_window_in_a_load_run_becomes_a_stage(pytester: pytest.Pytester) -> None:
    report = pytester.path / "out"
    result = _run(pytester, """
        name: API outage under load
        services:
          trends_api:
            routes:
              GET /trends: ['200 x*']
        target:
          call: targets:astatus
        faults:
          - {on: trends_api, fault: reset, at: 500ms, for: 500ms}
        drive: {rate: 40, concurrency: 4, duration: 2s, sample_every: 100ms}
        expect:
          error_rate: 0.5
    """, f"--resilience-report={report}")
    result.assert_outcomes(passed=1)
    results = json.loads((report / "results.json").read_text())
    soak = next(a for a in results["tests"][0]["attachments"] if a["kind"] == "soak")
    record = load(report / soak["file"])
    assert [s.label for s in record.stages] == ["faults[0] reset on trends_api"]
    assert 0 < record.totals["errors"] < record.totals["calls"]
    # httpx names a reset as a ReadError / RemoteProtocolError / ConnectError
    assert set(record.totals["error_types"]) <= {"ReadError", "RemoteProtocolError",
                                                 "ConnectError"}, record.totals


@pytest.mark.parametrize(("step", "services", "words"), [
    ("{on: db, fault: status, status: 503}", "db: {tcp: '127.0.0.1:9'}",
     "changes an HTTP backend's answers; 'db' is not an HTTP backend"),
    ("{on: api, route: GET /trend, fault: reset}",
     "api: {routes: {GET /trends: ['200 x*']}}", "has no route 'GET /trend'; did you mean"),
    ("{on: api, fault: status, statuz: 503}", "api: {routes: {GET /trends: ['200 x*']}}",
     "statuz"),
    ("{on: api, fault: latency, latency: 10, route: GET /trends}",
     "api: {routes: {GET /trends: ['200 x*']}}", "'route' goes with HTTP faults"),
    ("{on: api, fault: reset, script: ['200']}", "api: {routes: {GET /trends: ['200 x*']}}",
     "either 'fault'"),
])
def test_a_wrong_http_step_is_one_clear_message(pytester: pytest.Pytester, step: str,
                                                services: str, words: str) -> None:
    result = _run(pytester, f"""
        name: wrong
        services:
          {services}
        target:
          call: targets:status
        faults:
          - {step}
        expect:
          error_rate: 0
    """)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert words in out, out
    assert "Traceback" not in out
