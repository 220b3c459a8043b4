"""``expect.breaker`` in scenarios: the target reports its breaker's transitions to the
``BreakerObserver`` the runner passes as ``breaker``; the same verdict as
``expect_transitions`` judges them. Real sockets: an HTTP backend that fails, then works."""

from __future__ import annotations

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
'''


def _run(pytester: pytest.Pytester, body: str) -> pytest.RunResult:
    pytester.makepyfile(targets=TARGETS)
    scenarios = pytester.path / "scenarios"
    scenarios.mkdir(exist_ok=True)
    (scenarios / "b.yaml").write_text(textwrap.dedent(body))
    return pytester.runpytest_subprocess("-p", "pytest_resilience", "-p", "no:randomly",
                                         "-p", "no:cacheprovider", "scenarios", timeout=120)


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
