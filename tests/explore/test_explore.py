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
from pytest_resilience.explore import (
    ExploreResult,
    Schedule,
    Step,
    explore,
    fault_schedules,
    replay,
)

pytestmark = pytest.mark.timeout(300)

CALLS = 4
RETRYABLE = (429, 500, 502, 503)


class RetryingClient:
    """Retries 429/5xx answers with exponential backoff (50, 100 ms); gives up after 3
    attempts. The planted bug: after a timeout it drops the backoff for good ("fast
    mode"), so a later outage of 503s is hammered without a pause. Under timeouts alone,
    or 503s alone, it behaves."""

    def __init__(self, url: str, *, buggy: bool, timeout: float = 0.1) -> None:
        self.url = url
        self.buggy = buggy
        self.fast = False
        self.http = httpx.Client(timeout=timeout)

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


def make_run_once(backend: Any, *, buggy: bool, flaky: float = 1.0,
                  rng: random.Random | None = None, timeout: float = 0.1) -> Any:
    """``flaky``: the bug strikes in that share of runs only, drawn from ``rng`` (the
    environment's luck: neither Hypothesis nor a replay's seed decides it)."""
    luck = rng or random.Random()

    def run_once(schedule: Schedule) -> None:
        backend.reset()
        strikes = buggy and (flaky >= 1 or luck.random() < flaky)
        client = RetryingClient(backend.url + "/x", buggy=strikes, timeout=timeout)
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


#: the smallest schedule that breaks the buggy client: a hang, then a 503 outage
MINIMAL = Schedule((Step("api", "hang", (), 0, 0, 10),
                    Step("api", "status", (("status", 500),), 0, 1, 10)))


def _needs_a_hang_then_an_outage(schedule: Schedule) -> None:
    """A pure model of the planted bug (no network): at call c the fault applied last
    answers; a hang at one call and a 5xx outage at a later one break it."""
    def on_top(call: int) -> str | None:
        due = [(s.after_calls, i, s.fault) for i, s in enumerate(schedule.steps)
               if s.after_calls is not None and s.after_calls <= call]
        return max(due)[2] if due else None

    seen = [on_top(c) for c in range(CALLS)]
    assert not any(seen[a] == "hang" and "status" in seen[a + 1:] for a in range(CALLS)), (
        "hammered")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_deterministic_pass_finishes_the_shrink(seed: int) -> None:
    # Hypothesis gets no time to shrink: the pass alone reaches the smallest schedule
    result = explore(_needs_a_hang_then_an_outage, strategy(), max_examples=200, seed=seed,
                     shrink_time=0, rate_runs=2)
    assert result.schedule == MINIMAL, result.report()
    assert result.searched is not None
    assert result.reproduced == result.replayed == 2


def test_the_pass_confirms_each_candidate_in_m_of_k_runs() -> None:
    runs: list[Schedule] = []

    def run_once(schedule: Schedule) -> None:
        runs.append(schedule)
        _needs_a_hang_then_an_outage(schedule)

    result = explore(run_once, strategy(), max_examples=200, seed=4, replays=(2, 3),
                     shrink_time=0, rate_runs=0)
    assert result.schedule == MINIMAL, result.report()
    assert runs.count(MINIMAL) == 2  # failed twice: confirmed, no third run
    assert result.replayed == 0


def test_a_replay_logs_byte_identical_injections(http_backend: Any,
                                                 tmp_path: Any) -> None:
    http_backend.assert_all_used = False  # every run starts the script over
    http_backend.route("GET", "/x", "200 x*")
    # a 0.4 s timeout: a loaded machine does not turn an answer into a timeout
    run_once = make_run_once(http_backend, buggy=True, timeout=0.4)
    replayed = replay(run_once, MINIMAL, seed=3, runs=10)
    assert replayed.reproduced == 10, replayed.report()
    assert replayed.identical, [log.to_json() for log in replayed.logs]
    entries = replayed.logs[0].entries
    # which fault fired when, on which request and connection
    assert entries[0] == {"event": "applied", "step": 0, "calls": 0,
                          "fault": "faults[0] hang on api after 0 calls, for 10 ms"}
    hangs = [e for e in entries if e["event"] == "request" and e["step"] == 0]
    assert [(e["request"], e["connection"], e["answer"]) for e in hangs] == [
        (0, 1, "hang forever"), (1, 2, "hang forever"), (2, 3, "hang forever")]
    assert "request #3 (connection 4) GET /x -> 500 forever  [faults[1]]" in (
        replayed.logs[0].text())
    # the JSON record of a search replays the same way, with its seed
    record = ExploreResult(schedule=MINIMAL, seed=3, detail="hammered")
    again = replay(run_once, record.save(tmp_path / "found.json"), runs=2)
    assert again.seed == 3
    assert again.identical
    assert again.logs[0].to_json() == replayed.logs[0].to_json()


def test_a_replay_reads_the_reported_yaml(http_backend: Any) -> None:
    http_backend.assert_all_used = False
    http_backend.route("GET", "/x", "200 x*")
    assert Schedule.from_faults(MINIMAL.as_faults()) == MINIMAL
    correct = replay(make_run_once(http_backend, buggy=False), MINIMAL.to_yaml(), seed=1)
    assert correct.reproduced == 0, correct.report()
    correct.check()
    assert "replayed 2 fault(s) 1 times (seed 1): failed 0, byte-identical" in (
        correct.report())
    with pytest.raises(ConfigError, match="holds no 'faults:' list"):
        replay(lambda s: None, "name: x\nfaults: 3\n")
    with pytest.raises(ConfigError, match="'N calls' triggers"):
        Schedule.from_faults([{"on": "api", "fault": "hang", "after": "breaker opened"}])


def test_the_report_carries_the_injections_and_the_replay(http_backend: Any) -> None:
    http_backend.assert_all_used = False
    http_backend.route("GET", "/x", "200 x*")
    result = explore(make_run_once(http_backend, buggy=True), strategy(), max_examples=60,
                     max_time=90, seed=2, rate_runs=1)
    text = result.report()
    assert "injections (a failing replay):\n  at call 0: applied faults[0] hang on api" in (
        text), text
    assert "replay it: replay(run_once, <this schedule or its JSON record>, seed=2)" in text
    record = result.record()
    assert record["faults"] == MINIMAL.as_faults(), text
    assert record["injections"][0]["event"] == "applied"


@pytest.mark.parametrize("luck", [1, 2, 3])
def test_a_half_flaky_two_fault_bug_still_shrinks_and_states_its_rate(luck: int) -> None:
    rng = random.Random(luck)  # the environment's luck, apart from the search's seed

    def run_once(schedule: Schedule) -> None:
        if rng.random() < 0.5:
            _needs_a_hang_then_an_outage(schedule)

    result = explore(run_once, strategy(), max_examples=200, seed=luck, replays=(1, 4),
                     shrink_time=0, rate_runs=200)
    assert result.schedule is not None, result.report()
    assert sorted(s.fault for s in result.schedule.steps) == ["hang", "status"]
    assert abs(result.rate - 0.5) <= 0.15, result.report()
    assert f"failed {result.reproduced} of 200 replays" in result.report()
