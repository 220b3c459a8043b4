"""``expect.breaker`` in scenarios: the target reports its breaker's transitions to the
``BreakerObserver`` the runner passes as ``breaker``; the same verdict as
``expect_transitions`` judges them. Real sockets: an HTTP backend that fails, then works."""

from __future__ import annotations

import json
import textwrap

import pytest

pytestmark = pytest.mark.timeout(180)

TARGETS = '''
import httpx


class Breaker:
    """A small counting breaker (threshold configurable, to plant an off-by-one)."""

    def __init__(self, observer, fail_max):
        self.state, self.failures, self.fail_max = "closed", 0, fail_max
        self.observer = observer

    def move(self, new):
        self.observer.report(self.state, new, "test breaker")
        self.state = new

    def call(self, fn):
        if self.state == "open":
            raise RuntimeError("open")
        try:
            result = fn()
        except Exception:
            self.failures += 1
            if self.failures >= self.fail_max:
                self.move("open")
            raise
        self.failures = 0
        return result


def through_outage(api_url, breaker, fail_max=3):
    cb = Breaker(breaker, fail_max)
    fetch = breaker.backend(lambda: httpx.get(api_url + "/t", timeout=5)
                            .raise_for_status())
    for _ in range(6):
        try:
            breaker.call(lambda: cb.call(fetch))
        except Exception:
            pass


def no_observer(api_url):
    return 1


_BREAKERS = {}


def one_call(api_url, breaker):
    """One call through a breaker that lives as long as the scenario's observer."""
    cb = _BREAKERS.setdefault(id(breaker), Breaker(breaker, 3))
    fetch = breaker.backend(lambda: httpx.get(api_url + "/t", timeout=5).raise_for_status())
    try:
        breaker.call(lambda: cb.call(fetch))
    except Exception:
        return "failed"
    return "ok"
'''


def _run(pytester: pytest.Pytester, body: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(targets=TARGETS)
    scenarios = pytester.path / "scenarios"
    scenarios.mkdir(exist_ok=True)
    (scenarios / "b.yaml").write_text(textwrap.dedent(body))
    return pytester.runpytest_subprocess("-p", "pytest_resilience", "-p", "no:randomly",
                                         "-p", "no:cacheprovider", "scenarios", *args,
                                         timeout=120)


YAML = """
    name: the breaker opens after three failures
    services:
      api:
        routes:
          GET /t: ["503 x*"]
    target:
      call: targets:through_outage
      args: {{fail_max: {fail_max}}}
    expect:
      breaker: {{states: [closed, open], opens_after: 3}}
      attempts: {{service: api, exactly: 3}}
"""


def test_a_breaker_that_opens_as_claimed_passes(pytester: pytest.Pytester) -> None:
    result = _run(pytester, YAML.format(fail_max=3))
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*PASSED breaker: the target's breaker: closed -> open; "
                                 "opens after 3 failures*"])


def test_an_off_by_one_threshold_fails_in_the_claims_words(pytester: pytest.Pytester) -> None:
    result = _run(pytester, YAML.format(fail_max=4))
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "breaker verdict FAILED" in out
    assert "opens after 3 failures" in out
    assert "4 consecutive failures" in out, out


def test_a_target_without_a_breaker_parameter_is_told_how(pytester: pytest.Pytester) -> None:
    result = _run(pytester, """
        name: no observer
        services:
          api:
            routes:
              GET /t: ["503 x*"]
        target:
          call: targets:no_observer
        expect:
          breaker: {states: [closed, open]}
    """)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "give target.call a 'breaker' parameter" in out
    assert "Traceback" not in out


def test_a_step_triggered_when_the_breaker_opens(pytester: pytest.Pytester) -> None:
    """`after: breaker opened`: the API recovers as soon as the breaker opens; the calls
    it rejects while open never reach it (3 attempts, then fail-fast)."""
    report = pytester.path / "out"
    result = _run(pytester, """
        name: the API recovers once the breaker opened
        services:
          api:
            routes:
              GET /t: ["503 x*"]
        target:
          call: targets:one_call
        faults:
          - {on: api, script: ["200 x*"], after: breaker opened}
        drive: {calls: 6}
        expect:
          breaker: {states: [closed, open], opens_after: 3}
          attempts: {service: api, exactly: 3}
    """, f"--resilience-report={report}")
    result.assert_outcomes(passed=1)
    tests = json.loads((report / "results.json").read_text())["tests"]
    events = [what for a in tests[0]["attachments"] if a["kind"] == "fault-timeline"
              for _, what in a["events"]]
    assert any("triggered faults[0]" in e and "(after breaker opened)" in e
               for e in events), events


def test_a_breaker_trigger_needs_expect_breaker(pytester: pytest.Pytester) -> None:
    result = _run(pytester, """
        name: no breaker expectation
        services:
          api:
            routes:
              GET /t: ["503 x*"]
        target:
          call: targets:through_outage
        faults:
          - {on: api, fault: reset, after: breaker opened}
        expect:
          error_rate: 1
    """)
    result.assert_outcomes(failed=1)
    assert "watches the target's breaker: add expect.breaker" in result.stdout.str()
