"""``expect.backoff`` over several retry timelines: one per call of the drive (calls one
after another), one per client connection (clients that fail together), and the spread
check that catches clients retrying in lock-step (no jitter). Real clients, a real
scripted backend, the real clock."""

from __future__ import annotations

import textwrap

import pytest

pytestmark = pytest.mark.timeout(180)

TARGETS = '''
import asyncio
import random
import time

import httpx


def retrying(trends_api_url, waits=(0.1, 0.1), skip_wait_on_call=0):
    """Up to 3 attempts, a fixed wait before each retry; call number N (1-based) given as
    skip_wait_on_call does not wait at all (a planted defect)."""
    retrying.calls = getattr(retrying, "calls", 0) + 1
    for attempt, wait in enumerate([*waits, None]):
        status = httpx.get(trends_api_url + "/trends", timeout=5).status_code
        if status < 500 or wait is None:
            return status
        if retrying.calls != skip_wait_on_call:
            time.sleep(wait)


async def herd(trends_api_url, clients=8, jitter=True):
    """Clients that fail together, each on its own connection: one retry after a full-
    jitter wait of up to 400 ms (or exactly 400 ms without jitter)."""
    async def one():
        async with httpx.AsyncClient(base_url=trends_api_url, timeout=5) as http:
            for attempt in range(2):
                response = await http.get("/trends")
                if response.status_code < 500:
                    return response.status_code
                await asyncio.sleep(random.uniform(0, 0.4) if jitter else 0.4)
            return response.status_code

    return sorted(await asyncio.gather(*(one() for _ in range(clients))))
'''

PER_CALL = """
    name: each call retries on its own curve
    services:
      trends_api:
        routes:
          GET /trends: ["503 x2", "200", "503 x2", "200", "503 x2", "200 x*"]
    target:
      call: targets:retrying
      args: {ARGS}
    drive: {calls: 3}
    expect:
      returns: 200
      backoff:
        service: trends_api
        model: constant
        initial: 100ms
        attempts: 3
        tolerance: [5ms, 300ms]
"""

HERD = """
    name: clients that fail together
    services:
      trends_api:
        routes:
          GET /trends: ["503 x8", "200 x*"]
    target:
      call: targets:herd
      args: {ARGS}
    expect:
      returns: [200, 200, 200, 200, 200, 200, 200, 200]
      backoff:
        service: trends_api
        per: connection
        model: constant
        initial: 400ms
        jitter: full
        attempts: 2
        tolerance: [5ms, 400ms]
"""


def _run(pytester: pytest.Pytester, yaml: str, args: str = "{}") -> pytest.RunResult:
    pytester.makepyfile(targets=TARGETS)
    scenarios = pytester.path / "scenarios"
    scenarios.mkdir(exist_ok=True)
    (scenarios / "backoff.yaml").write_text(textwrap.dedent(yaml).replace("{ARGS}", args))
    return pytester.runpytest_subprocess("-p", "pytest_resilience", "-p", "no:randomly",
                                         "-p", "no:cacheprovider", "scenarios", "-rA",
                                         timeout=120)


def test_each_call_of_the_drive_is_judged_on_its_own_timeline(
        pytester: pytest.Pytester) -> None:
    # one timeline for the whole run would count 9 attempts and the gaps between calls
    result = _run(pytester, PER_CALL)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "*PASSED backoff: constant 100 ms; 3 attempts (each of 3 calls)*3 of 3 calls follow "
        "the curve*"])


def test_a_call_that_does_not_wait_is_named(pytester: pytest.Pytester) -> None:
    result = _run(pytester, PER_CALL, "{skip_wait_on_call: 2}")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "2 of 3 calls follow the curve" in out, out
    assert "call 2:\nbackoff verdict FAILED: constant 100 ms; 3 attempts" in out, out
    assert "jitter" not in out.split("fault timeline")[0].lower(), out  # none claimed


def test_jittered_clients_spread_their_retries(pytester: pytest.Pytester) -> None:
    result = _run(pytester, HERD)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "*PASSED backoff: constant 400 ms, full jitter; 2 attempts (each of 8 client "
        "connections)*",
        "*PASSED jitter: constant 400 ms, full jitter: clients do not retry in lock-step "
        "(8 timelines)*"])


def test_clients_without_jitter_are_caught_retrying_in_lock_step(
        pytester: pytest.Pytester) -> None:
    result = _run(pytester, HERD, "{jitter: false}")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    # every wait is 400 ms: inside the full-jitter band, so the curve passes ...
    assert "PASSED backoff: constant 400 ms, full jitter; 2 attempts (each of 8" in out, out
    # ... and the spread check names the defect
    assert "retries are in lock-step: every client waited about 4" in out, out
    assert "(no jitter)" in out


def test_a_claimed_spread_over_one_timeline_is_not_measured_and_fails(
        pytester: pytest.Pytester) -> None:
    result = _run(pytester, HERD.replace("per: connection", "per: run\n        spread: true"),
                  "{clients: 1}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*jitter not measured: 1 timeline; give at least 2*"])


@pytest.mark.parametrize(("change", "message"), [
    ("per: connection\n        curve: false\n        spread: false",
     "*curve: false and spread: false judge nothing*"),
    ("per: connection\n        curve: false\n        jitter: none",
     "*curve: false leaves only the spread, which needs a jittered curve*"),
])
def test_a_backoff_that_judges_nothing_is_a_validation_error(
        pytester: pytest.Pytester, change: str, message: str) -> None:
    yaml = HERD.replace("per: connection", change).replace("        jitter: full\n", "")
    result = _run(pytester, yaml)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([message])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
