"""The jitter verdict: several clients retrying the same outage must not retry in lock-step.

Real libraries, requested waits (exact, no real sleeping): tenacity gets a no-op
``sleep``, backoff gets 0.1 ms waits. The jittered strategies pass 50 times in a row
(no false alarm), their non-jittered twins fail naming the lock-step. One case runs
on the real clock against the ``http_backend`` fixture.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest

from pytest_resilience import JitterMismatch, expect_jitter
from pytest_resilience.observe.attempts import (
    BackoffWaits,
    TenacityWaits,
    Timeline,
    from_requests,
    from_waits,
)
from pytest_resilience.verdicts import backoff as models
from pytest_resilience.verdicts.backoff import jitter_threshold

CLIENTS = 8
REPETITIONS = 50


class Down(ConnectionError):
    pass


def always_down() -> None:
    raise Down("dependency is down")


def no_sleep(seconds: float) -> None:
    """tenacity's ``sleep=`` hook: the waits are recorded, not slept."""


def tenacity_clients(wait: Any, attempts: int = 5) -> list[Timeline]:
    """CLIENTS logical calls through one tenacity policy: one requested-wait timeline each."""
    import tenacity

    rec = TenacityWaits()
    retrying = tenacity.Retrying(
        wait=wait, stop=tenacity.stop_after_attempt(attempts), sleep=no_sleep, reraise=True,
        retry=tenacity.retry_if_exception_type(Down),
    )
    rec.attach(retrying)
    for _ in range(CLIENTS):
        with pytest.raises(Down):
            retrying(always_down)
    assert len(rec.timelines) == CLIENTS
    return rec.timelines


def backoff_clients(jitter: Callable[[float], float] | None, tries: int = 5) -> list[Timeline]:
    import backoff

    rec = BackoffWaits()

    @backoff.on_exception(
        backoff.expo, Down, factor=0.0001, max_tries=tries, jitter=jitter,
        on_backoff=rec.on_backoff, on_giveup=rec.on_giveup,
    )
    def call() -> None:
        always_down()

    for _ in range(CLIENTS):
        with pytest.raises(Down):
            call()
    assert len(rec.timelines) == CLIENTS
    return rec.timelines


# -- the threshold ---------------------------------------------------------------------------


def test_threshold_false_alarm_for_five_uniform_draws() -> None:
    r = jitter_threshold(5)  # default false alarm 1e-6
    exact = 5 * r**4 - 4 * r**5  # P(spread of 5 U(0, 1) draws < r)
    assert r == pytest.approx(0.02115, abs=1e-4)
    assert exact < 1e-6 < 1e-4
    # the bound N r^(N-1) the verdict relies on is never below the exact value
    for n in (2, 3, 5, 8, 20):
        r = jitter_threshold(n, 1e-4)
        assert n * r ** (n - 1) - (n - 1) * r**n <= 1e-4 + 1e-15
    with pytest.raises(ValueError, match="at least 2 samples"):
        jitter_threshold(1)


def test_threshold_by_simulation_on_equal_jitter() -> None:
    """A looser threshold (false alarm 1e-2) is exceeded as often as it promises."""
    rng = random.Random(1234)
    r = jitter_threshold(5, 1e-2)
    misses = sum(
        max(d) - min(d) < r for d in ([rng.random() for _ in range(5)] for _ in range(20_000))
    )
    assert misses / 20_000 < 1e-2


# -- tenacity ----------------------------------------------------------------------------------


def test_tenacity_wait_random_exponential_passes_50_times(seeded_random: int) -> None:
    import tenacity

    model = models.tenacity_wait_random_exponential(multiplier=0.1, max=1.0)
    for _ in range(REPETITIONS):
        timelines = tenacity_clients(tenacity.wait_random_exponential(multiplier=0.1, max=1.0))
        verdict = expect_jitter(timelines, model)
        assert verdict.passed
        assert verdict.kind == "jitter"
        assert expect_jitter(timelines).passed  # no model: the waits merely differ


def test_tenacity_wait_exponential_jitter_passes_50_times(seeded_random: int) -> None:
    import tenacity

    # max=0.5: the 4th wait (0.8 s + jitter) is clipped to the cap in every client;
    # that retry is legitimately in lock-step and is not judged
    model = models.tenacity_wait_exponential_jitter(multiplier=0.1, max=0.5, jitter=0.05)
    for _ in range(REPETITIONS):
        timelines = tenacity_clients(
            tenacity.wait_exponential_jitter(multiplier=0.1, max=0.5, jitter=0.05)
        )
        verdict = expect_jitter(timelines, model)
        assert verdict.passed
    assert verdict.rows[3][6] == "not judged: cap/floor clips the jitter"
    assert verdict.rows[0][6] == "ok"


def test_tenacity_wait_exponential_is_lock_step() -> None:
    import tenacity

    timelines = tenacity_clients(tenacity.wait_exponential(multiplier=0.02))
    # the claim: equal jitter; exact 20/40/80/160 ms lie inside its bands, so the
    # one-timeline curve verdict passes - only the spread across clients tells
    claim = models.exponential(0.02, 2, jitter="equal")
    assert models.expect_backoff(timelines[0], claim).passed
    with pytest.raises(JitterMismatch) as info:
        expect_jitter(timelines, claim)
    text = str(info.value)
    assert "retries are in lock-step: every client waited 20 ms before retry 1, " in text
    assert "40 ms before retry 2" in text
    assert "(no jitter)" in text
    assert "2      8        40 ms   40 ms   0 ms    1.69 ms   lock-step  <--" in text
    verdict = info.value.verdict
    assert verdict.data["lock_step"] == [1, 2, 3, 4]
    assert verdict.blamed_rows == [0, 1, 2, 3]
    with pytest.raises(JitterMismatch, match="lock-step"):
        expect_jitter(timelines)  # no model


# -- backoff -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("quiet_backoff_logger")
def test_backoff_expo_full_jitter_passes_50_times(seeded_random: int) -> None:
    import backoff

    model = models.backoff_expo(factor=0.0001)
    for _ in range(REPETITIONS):
        assert expect_jitter(backoff_clients(backoff.full_jitter), model).passed


@pytest.mark.usefixtures("quiet_backoff_logger")
def test_backoff_expo_without_jitter_is_lock_step() -> None:
    timelines = backoff_clients(None)
    with pytest.raises(JitterMismatch, match=r"every client waited 0\.10 ms before retry 1"):
        expect_jitter(timelines, models.backoff_expo(factor=0.0001))


# -- not measured, misuse, too little --------------------------------------------------------


def test_one_timeline_is_not_measured() -> None:
    model = models.exponential(0.02, 2, jitter="equal")
    with pytest.raises(JitterMismatch, match="jitter not measured: 1 timeline;") as info:
        expect_jitter([from_waits([0.015, 0.03])], model)
    assert info.value.verdict.outcome == "not measured"
    with pytest.raises(JitterMismatch, match="jitter not measured: 0 timelines"):
        expect_jitter([])
    # two clients that never retried: nothing to compare
    with pytest.raises(JitterMismatch, match="no retry could be judged"):
        expect_jitter([from_waits([]), from_waits([])], model)


def test_a_model_without_jitter_is_misuse() -> None:
    with pytest.raises(ValueError, match="needs a jittered model"):
        expect_jitter([from_waits([0.1]), from_waits([0.1])], models.exponential(0.1))


def test_jitter_much_narrower_than_claimed_fails() -> None:
    """Claimed full jitter over [0, 1 s]; the clients differ by 1 ms only."""
    model = models.constant(1.0, jitter="full")
    timelines = [from_waits([1.0 - 0.001 * i / CLIENTS]) for i in range(CLIENTS)]
    with pytest.raises(JitterMismatch, match="too little jitter"):
        expect_jitter(timelines, model)


# -- real clock ------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("jittered", [True, False], ids=["correct-full-jitter", "defect-no-jitter"])
async def test_real_clock_clients_against_http_backend(http_backend: Any, jittered: bool) -> None:
    """Concurrent clients retry a 3x503 outage; the backend's log is the evidence.

    On a loaded machine the arrival gaps carry 50-400 ms of noise (a burst of requests
    through one loop and the backend's thread), enough to spread lock-step clients past
    a 17 ms floor's requirement. Noise only makes a gap longer, though: lock-step clients
    all wait at least the top of the band, which the verdict checks. 24 clients and a
    300 ms base make every retry judged and a false alarm negligible.
    """
    import httpx

    clients = 24
    base = 0.3
    rng = random.Random(42)
    for i in range(clients):
        http_backend.route("GET", f"/c{i}", "503 x3", "200")

    async def client(i: int, http: httpx.AsyncClient) -> None:
        for retry in range(1, 5):
            response = await http.get(f"/c{i}")
            if response.status_code < 500:
                return
            ceiling = base * 2 ** (retry - 1)
            await asyncio.sleep(rng.uniform(0, ceiling) if jittered else ceiling)

    async with httpx.AsyncClient(base_url=http_backend.url) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    timelines = [from_requests(http_backend.requests_for("GET", f"/c{i}")) for i in range(clients)]
    assert all(t.count == 4 and not t.exact for t in timelines)
    model = models.exponential(base, 2, jitter="full")
    if jittered:
        verdict = expect_jitter(timelines, model)
        assert [r[6] for r in verdict.rows] == ["ok", "ok", "ok"]
    else:
        with pytest.raises(JitterMismatch) as info:
            expect_jitter(timelines, model)
        assert info.value.verdict.outcome == "lock-step", str(info.value)
        assert "retries are in lock-step: every client waited about" in str(info.value)
        assert "real clock, noise floor" in str(info.value)


def test_noise_past_the_band_is_not_taken_for_jitter() -> None:
    """Regression (real clock, loaded machine): lock-step clients whose gaps carry 0-250 ms
    of noise spread far past a 17 ms floor's requirement - the verdict used to call that
    "jittered". Noise only lengthens a gap: no client waited less than the top of its band,
    which names the lock-step whatever the load."""
    from pytest_resilience.observe.attempts import Timeline

    rng = random.Random(7)
    timelines = []
    for _ in range(10):
        line = Timeline(clock="real", source="backend request log")
        at = 0.0
        line.add(at)
        for ceiling in (0.15, 0.3, 0.6):  # no jitter: every client waits the ceiling
            at += ceiling + rng.uniform(0.0, 0.25)
            line.add(at)
        timelines.append(line)
    with pytest.raises(JitterMismatch) as info:
        expect_jitter(timelines, models.exponential(0.15, 2, jitter="full"))
    verdict = info.value.verdict
    assert verdict.outcome == "lock-step", str(info.value)
    assert "no client waited less than the top of its band" in str(info.value)
