"""Relative and decorrelated jitter as models, a diagnosis robust to one late point,
and count verdicts worded like their claim (issue 13, section 5).

Correct timelines come from the real libraries' wait strategies (tenacity's wait
objects, backoff's wait generators and its ``jitter=`` hook), 200 seeds each, with
requested waits (exact, nothing slept).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest
from tenacity_helpers import run_tenacity

from pytest_resilience.observe.attempts import TenacityWaits, from_timestamps, from_waits
from pytest_resilience.verdicts import backoff as models
from pytest_resilience.verdicts.backoff import (
    BackoffMismatch,
    JitterMismatch,
    expect_amplification,
    expect_backoff,
    expect_jitter,
    fit_simple_model,
)
from pytest_resilience.verdicts.core import VerdictFailed

SEEDS = range(200)
RETRIES = 6


@pytest.fixture
def global_random() -> Iterator[random.Random]:
    """backoff and the jitter hooks draw from the global ``random``: restore it afterwards."""
    state = random.getstate()
    try:
        yield random  # type: ignore[misc]
    finally:
        random.setstate(state)


def relative_jitter(ratio: float) -> Callable[[float], float]:
    """A backoff ``jitter=`` function: ``value x U(1 - ratio, 1 + ratio)``."""

    def jitter(value: float) -> float:
        return value * random.uniform(1.0 - ratio, 1.0 + ratio)

    return jitter


def backoff_waits(
    wait_gen: Callable[..., Generator[float, Any, None]],
    jitter: Callable[[float], float] | None,
    retries: int = RETRIES,
    **kwargs: Any,
) -> list[float]:
    """The waits backoff would sleep: its own generator init and ``_next_wait`` (jitter)."""
    from backoff._common import _init_wait_gen, _next_wait

    gen = _init_wait_gen(wait_gen, kwargs)
    return [_next_wait(gen, None, jitter, 0.0, None) for _ in range(retries)]


def tenacity_waits(wait: Any, attempts: int = RETRIES + 1) -> TenacityWaits:
    return run_tenacity(wait, attempts)


def tenacity_relative(base: Any, ratio: float) -> Callable[[Any], float]:
    """A tenacity wait: the library's strategy, then ``x U(1 - ratio, 1 + ratio)``."""

    def wait(retry_state: Any) -> float:
        return float(base(retry_state)) * random.uniform(1.0 - ratio, 1.0 + ratio)

    return wait


def aws_decorrelated(base: float, cap: float) -> Generator[float, Any, None]:
    """A backoff wait generator: AWS decorrelated jitter ``min(cap, U(base, 3 x prev))``."""
    yield 0.0  # backoff primes its generators with send(None)
    sleep = base
    while True:
        sleep = min(cap, random.uniform(base, sleep * 3.0))
        yield sleep


# -- correct timelines pass, 200 of 200 seeds --------------------------------------------------


def test_backoff_expo_with_relative_jitter_passes_every_seed(
    global_random: random.Random, quiet_backoff_logger: None
) -> None:
    import backoff

    model = models.exponential(0.1, 2.0, cap=1.0, jitter="relative", jitter_ratio=0.1)
    for seed in SEEDS:
        random.seed(seed)
        waits = backoff_waits(backoff.expo, relative_jitter(0.1), factor=0.1, max_value=1.0)
        assert expect_backoff(from_waits(waits), model, attempts=RETRIES + 1).passed, seed


def test_backoff_constant_with_relative_jitter_passes_every_seed(
    global_random: random.Random, quiet_backoff_logger: None
) -> None:
    import backoff

    model = models.constant(0.2, jitter="relative", jitter_ratio=0.1)
    assert model.band(3) == pytest.approx((0.18, 0.22))
    assert "constant 200 ms, +-10 % jitter" in model.describe()
    for seed in SEEDS:
        random.seed(seed)
        waits = backoff_waits(backoff.constant, relative_jitter(0.1), interval=0.2)
        assert expect_backoff(from_waits(waits), model, attempts=RETRIES + 1).passed, seed


def test_tenacity_exponential_and_incrementing_with_relative_jitter_pass_every_seed(
    global_random: random.Random,
) -> None:
    import tenacity

    expo = models.exponential(0.05, 2.0, cap=0.8, jitter="relative", jitter_ratio=0.2)
    lin = models.linear(0.1, 0.05, jitter="relative", jitter_ratio=0.1)
    for seed in SEEDS:
        random.seed(seed)
        rec = tenacity_waits(
            tenacity_relative(tenacity.wait_exponential(multiplier=0.05, max=0.8), 0.2)
        )
        assert expect_backoff(rec.timeline, expo, attempts=RETRIES + 1).passed, seed
        rec = tenacity_waits(
            tenacity_relative(tenacity.wait_incrementing(start=0.1, increment=0.05), 0.1)
        )
        assert expect_backoff(rec.timeline, lin, attempts=RETRIES + 1).passed, seed


def test_decorrelated_jitter_passes_every_seed(
    global_random: random.Random, quiet_backoff_logger: None
) -> None:
    model = models.decorrelated(0.01, cap=0.5)
    for seed in SEEDS:
        random.seed(seed)
        waits = backoff_waits(aws_decorrelated, None, retries=8, base=0.01, cap=0.5)
        assert expect_backoff(from_waits(waits), model, attempts=9).passed, seed


def test_decorrelated_band_follows_the_previous_measured_delay() -> None:
    model = models.decorrelated(0.01, cap=0.5)
    assert model.band(1) == pytest.approx((0.01, 0.03))
    assert model.band(4, previous=0.1) == pytest.approx((0.01, 0.3))
    assert model.band(4, previous=0.4) == pytest.approx((0.01, 0.5))
    # 70 ms after a 20 ms wait is beyond 3 x 20 ms, although 70 ms is a plausible wait
    with pytest.raises(BackoffMismatch) as info:
        expect_backoff(from_waits([0.02, 0.07, 0.1]), model)
    text = str(info.value)
    assert "10 ms .. 60 ms" in text
    assert "+10 ms" in text
    assert "a single point is off: retry 2 (attempt 3) came 10 ms late" in text


def test_decorrelated_on_the_real_clock_tolerates_an_early_previous_wake_up() -> None:
    # the first wait was asked as 30 ms but measured 1 ms early; the second asked 90 ms
    timeline = from_timestamps([0.0, 0.029, 0.029 + 0.09])
    assert expect_backoff(timeline, models.decorrelated(0.01)).passed


# -- planted defects fail with a message naming them ------------------------------------------


def test_no_jitter_where_relative_jitter_is_claimed_is_lock_step(
    quiet_backoff_logger: None,
) -> None:
    import backoff

    model = models.exponential(0.1, 2.0, jitter="relative", jitter_ratio=0.1)
    lines = [from_waits(backoff_waits(backoff.expo, None, factor=0.1)) for _ in range(5)]
    for line in lines:  # every curve lies inside the band ...
        assert expect_backoff(line, model).passed
    with pytest.raises(JitterMismatch) as info:  # ... but the clients are in lock-step
        expect_jitter(lines, model)
    assert "retries are in lock-step: every client waited 100 ms before retry 1" in str(
        info.value
    )


def test_wrong_multiplier_under_relative_jitter(
    global_random: random.Random, quiet_backoff_logger: None
) -> None:
    import backoff

    random.seed(7)
    waits = backoff_waits(backoff.expo, relative_jitter(0.1), base=3, factor=0.1)
    claimed = models.exponential(0.1, 2.0, jitter="relative", jitter_ratio=0.1)
    with pytest.raises(BackoffMismatch) as info:
        expect_backoff(from_waits(waits), claimed)
    text = str(info.value)
    fitted = r"look like exponential \S+ ms x (2\.9\d|3|3\.0\d)\^\(n-1\), \+-10 % jitter"
    assert re.search(fitted, text)
    assert "not exponential 100 ms x 2^(n-1), +-10 % jitter" in text
    assert "single point" not in text


def test_wrong_base_under_relative_jitter(
    global_random: random.Random, quiet_backoff_logger: None
) -> None:
    import backoff

    random.seed(11)
    waits = backoff_waits(backoff.constant, relative_jitter(0.1), interval=0.3)
    claimed = models.constant(0.2, jitter="relative", jitter_ratio=0.1)
    with pytest.raises(BackoffMismatch) as info:
        expect_backoff(from_waits(waits), claimed)
    text = str(info.value)
    assert "look like constant 3" in text
    assert "+-10 % jitter, not constant 200 ms" in text


def test_relative_jitter_wider_than_claimed_fails(global_random: random.Random) -> None:
    random.seed(3)
    model = models.constant(0.2, jitter="relative", jitter_ratio=0.1)
    waits = [0.2 * random.uniform(0.6, 1.4) for _ in range(12)]
    with pytest.raises(BackoffMismatch):
        expect_backoff(from_waits(waits), model)


def test_relative_jitter_ratio_is_validated() -> None:
    with pytest.raises(ValueError, match="jitter_ratio"):
        models.constant(0.1, jitter="relative")
    with pytest.raises(ValueError, match="jitter_ratio"):
        models.exponential(0.1, jitter="relative", jitter_ratio=1.5)


# -- one late point is one late point ---------------------------------------------------------


def test_one_late_wake_up_is_a_single_point() -> None:
    # 20/40/80/160/320 ms on the real clock, retry 3 came 200 ms late (a scheduling stall)
    delays = [0.0205, 0.041, 0.08 + 0.2, 0.1605, 0.321]
    stamps = [0.0]
    for d in delays:
        stamps.append(stamps[-1] + d)
    with pytest.raises(BackoffMismatch) as info:
        expect_backoff(from_timestamps(stamps), models.exponential(0.02, 2.0), attempts=6)
    text = str(info.value)
    assert (
        "a single point is off: retry 3 (attempt 4) came 200 ms late "
        "(a late wake-up on a busy machine?)"
        in text
    )
    assert "look like" not in text


def test_one_late_point_under_relative_jitter(global_random: random.Random) -> None:
    random.seed(5)
    model = models.exponential(0.05, 2.0, jitter="relative", jitter_ratio=0.1)
    waits = [0.05 * 2**k * random.uniform(0.9, 1.1) for k in range(6)]
    waits[3] = 0.4 * 1.1 + 0.2
    with pytest.raises(BackoffMismatch) as info:
        expect_backoff(from_waits(waits), model)
    text = str(info.value)
    assert "a single point is off: retry 4 (attempt 5) came 200 ms late" in text
    assert "busy machine" not in text  # requested waits: not a wake-up
    assert "look like" not in text


def test_fit_ignores_one_outlier() -> None:
    fitted = fit_simple_model([0.1, 0.2, 0.6, 0.8, 1.6])
    assert fitted is not None
    assert fitted.growth == "exponential"
    assert fitted.multiplier == pytest.approx(2.0)


def test_a_real_curve_change_is_still_named() -> None:
    # every point but the first is off: a different curve, not a single point
    with pytest.raises(BackoffMismatch) as info:
        expect_backoff(from_waits([0.1, 0.1, 0.1, 0.1]), models.exponential(0.1))
    text = str(info.value)
    assert "look like constant 100 ms, not exponential 100 ms x 2^(n-1)" in text
    assert "single point" not in text


# -- jittered constant is not "linear" --------------------------------------------------------


def test_jittered_constant_is_never_linear(global_random: random.Random) -> None:
    for seed in SEEDS:
        random.seed(seed)
        waits = [0.1 * random.uniform(0.9, 1.1) for _ in range(6)]
        plain = fit_simple_model(waits)
        assert plain is not None, (seed, plain)
        assert plain.growth == "constant", (seed, plain)
        aware = fit_simple_model(waits, jitter_ratio=0.1)
        assert aware is not None, (seed, aware)
        assert aware.growth == "constant", (seed, aware)


def test_jittered_constant_claimed_as_exponential_is_diagnosed_as_constant(
    global_random: random.Random, quiet_backoff_logger: None
) -> None:
    import backoff

    random.seed(1)
    waits = backoff_waits(backoff.constant, relative_jitter(0.1), interval=0.1)
    with pytest.raises(BackoffMismatch) as info:
        expect_backoff(
            from_waits(waits), models.exponential(0.1, jitter="relative", jitter_ratio=0.1)
        )
    assert "look like constant" in str(info.value)
    assert "linear" not in str(info.value)


def test_fit_still_finds_real_lines_and_curves() -> None:
    line = fit_simple_model([0.1, 0.15, 0.2, 0.25, 0.3])
    assert line is not None
    assert line.growth == "linear"
    capped = fit_simple_model([0.001, 0.002, 0.004, 0.004, 0.004])
    assert capped is not None
    assert capped.cap == pytest.approx(0.004)


# -- counts in the claim's words --------------------------------------------------------------


def test_amplification_outcome_in_the_claims_words() -> None:
    # a 400 answer, retried: every call reached the backend 4 times
    timelines = [from_timestamps([0, 1, 2, 3]) for _ in range(3)]
    with pytest.raises(VerdictFailed) as info:
        expect_amplification(timelines, at_most=1)
    verdict = info.value.verdict
    assert verdict.outcome == "each of the 3 calls reached the dependency 4 times (3 retries)"
    text = str(info.value)
    assert "the claim allows at most 1 attempts per call (0 retries on average)" in text
    assert "worst single call: 4 attempts" in text  # the existing fields stay
    assert verdict.observed == {"amplification": 4.0, "attempts": 12, "calls": 3}


def test_amplification_outcome_for_uneven_calls() -> None:
    timelines = [from_timestamps([0, 1, 2]), from_timestamps([0]), from_timestamps([0, 1])]
    with pytest.raises(VerdictFailed) as info:
        expect_amplification(timelines, at_most=1.5)
    assert info.value.verdict.outcome == (
        "the 3 calls reached the dependency 2 times on average (1 retry); "
        "the worst call 3 times (2 retries)"
    )
    assert expect_amplification([from_timestamps([0])], at_most=1).outcome == (
        "the call reached the dependency once (0 retries)"
    )


def test_attempt_count_mismatch_in_the_claims_words() -> None:
    with pytest.raises(
        BackoffMismatch,
        match=r"expected 1 attempts, observed 4: the call reached the dependency 4 times "
        r"\(3 retries\), not once",
    ):
        expect_backoff(from_waits([0.1, 0.2, 0.4]), models.exponential(0.1), attempts=1)
