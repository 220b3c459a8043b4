"""Hypothesis-generated fault schedules against a real HTTP backend: a planted bug that
needs two faults together is found and shrunk to at most two faults; the correct client
survives every schedule; a flaky bug is reported with its reproduction rate; schedules
read as scenario YAML and replay the same way."""

from __future__ import annotations

import itertools
import random
from typing import Any

import httpx
import pytest

from pytest_resilience.errors import ConfigError
from pytest_resilience.explore import Schedule, Step, explore, fault_schedules

pytestmark = pytest.mark.timeout(300)

CALLS = 4
RETRYABLE = (429, 500, 502, 503)


class RetryingClient:
    """Retries 429/5xx answers with exponential backoff (50, 100 ms); gives up after 3
    attempts. The planted bug: after a timeout it drops the backoff for good ("fast
    mode"), so a later outage of 503s is hammered without a pause. Under timeouts alone,
    or 503s alone, it behaves."""

    def __init__(self, url: str, *, buggy: bool) -> None:
        self.url = url
        self.buggy = buggy
        self.fast = False
        self.http = httpx.Client(timeout=0.1)

    def fetch(self, call: int) -> None:
        import time

        delay = 0.05
        for _ in range(3):
            try:
                answer = self.http.get(self.url, headers={"x-call": str(call)})
                if answer.status_code not in RETRYABLE:
                    return
            except httpx.TimeoutException:
                if self.buggy:
                    self.fast = True  # BUG: the backoff is never restored
                continue
            except httpx.TransportError:
                continue
            time.sleep(0 if self.fast else delay)
            delay *= 2

    def close(self) -> None:
        self.http.close()


def make_run_once(backend: Any, *, buggy: bool) -> Any:
    def run_once(schedule: Schedule) -> None:
        backend.reset()
        client = RetryingClient(backend.url + "/x", buggy=buggy)
        done = 0
        faults = schedule.fault_schedule(backends={"api": backend}, calls=lambda: done)
        try:
            for call in range(CALLS):
                faults.tick(0.0)
                client.fetch(call)
                done += 1
        finally:
            faults.heal_all(0.0)
            client.close()
        log = backend.requests
        # a retry of an error answer must wait 50 ms: the next request within 30 ms is
        # hammering (a loaded machine delays a request by milliseconds, never by 30)
        hammered = [b for a, b in itertools.pairwise(log)
                    if a.headers.get("x-call") == b.headers.get("x-call")  # a retry
                    and a.answer[:3] in {str(s) for s in RETRYABLE}
                    and b.arrived - a.arrived < 0.03]
        assert not hammered, (
            f"the backend was hammered: {len(hammered)} retries of an error answer came "
            f"less than 30 ms after it ({len(log)} requests in all)")

    return run_once


def strategy() -> Any:
    return fault_schedules(backends=["api"], faults=["status", "hang"], max_faults=3,
                           max_calls=CALLS, clock=False)


@pytest.mark.parametrize("seed", [1])  # 20 seeds: tests/explore/campaigns.py
def test_a_bug_that_needs_two_faults_shrinks_to_two(http_backend: Any, seed: int) -> None:
    http_backend.assert_all_used = False  # every example starts the script over
    http_backend.route("GET", "/x", "200 x*")
    result = explore(make_run_once(http_backend, buggy=True), strategy(), max_examples=60,
                     max_time=90, seed=seed, rate_runs=3)
    assert result.found, result.report()
    assert result.schedule is not None
    kinds = {s.fault for s in result.schedule.steps}
    assert len(result.schedule) <= 2, result.report()
    assert kinds == {"hang", "status"}, result.report()
    assert result.reproduced == result.replayed == 3, result.report()
    text = result.report()
    assert "the backend was hammered" in text
    assert "faults:\n  - {on: api, fault: hang" in text or "  - {on: api, fault: status" in text


def test_the_correct_client_survives_every_schedule(http_backend: Any) -> None:
    http_backend.assert_all_used = False  # every example starts the script over
    http_backend.route("GET", "/x", "200 x*")
    result = explore(make_run_once(http_backend, buggy=False), strategy(), max_examples=25,
                     max_time=90, seed=11)
    assert not result.found, result.report()
    assert result.examples == 25
    assert "no schedule broke the claims" in result.report()


def test_a_flaky_bug_is_reported_with_its_rate(http_backend: Any) -> None:
    http_backend.assert_all_used = False  # every example starts the script over
    http_backend.route("GET", "/x", "200 x*")
    rng = random.Random(5)

    def run_once(schedule: Schedule) -> None:
        backend_down = any(s.fault == "status" for s in schedule.steps)
        if backend_down and rng.random() < 0.5:
            raise AssertionError("fails half of the time under a 503 outage")

    result = explore(run_once, strategy(), max_examples=30, seed=4, replays=(1, 3),
                     rate_runs=40)
    assert result.found, result.report()
    assert result.schedule is not None
    assert [s.fault for s in result.schedule.steps] == ["status"], result.report()
    assert 0.35 <= result.rate <= 0.65, result.report()
    assert f"failed {result.reproduced} of 40 replays" in result.report()


def test_schedules_read_as_scenario_yaml_and_describe_themselves() -> None:
    schedule = Schedule((
        Step("api", "hang", (), 0, 1, 10),
        Step("api", "status", (("status", 503),), 0, 2, None),
        Step("db", "latency", (("latency", 250),), 1500, None, 2000),
    ))
    assert schedule.to_yaml() == (
        "faults:\n"
        "  - {on: api, fault: hang, after: 1 calls, for: 10ms}\n"
        "  - {on: api, fault: status, status: 503, after: 2 calls}\n"
        "  - {on: db, fault: latency, latency: 250, at: 1500ms, for: 2000ms}\n")
    assert schedule.describe().startswith("[0] hang on api after 1 calls, for 10 ms; ")


def test_misuse_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="needs at least one of proxies= or backends="):
        fault_schedules()
    with pytest.raises(ConfigError, match="cannot generate"):
        fault_schedules(backends=["a"], faults=["lightning"])
    with pytest.raises(ConfigError, match=r"clock=False.*needs max_calls"):
        fault_schedules(backends=["a"], clock=False)
    with pytest.raises(ConfigError, match="m <= k"):
        explore(lambda s: None, strategy(), replays=(3, 2))
