"""The verdicts' own logic: models, bands, fitting, timelines, tables (no real time)."""

from __future__ import annotations

import contextlib
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_resilience.observe.attempts import (
    Timeline,
    from_requests,
    from_timestamps,
    from_toxiproxy_events,
    from_waits,
    track,
)
from pytest_resilience.verdicts import backoff as models
from pytest_resilience.verdicts.backoff import (
    BackoffMismatch,
    BackoffModel,
    amplification,
    expect_amplification,
    expect_backoff,
    fit_simple_model,
)
from pytest_resilience.verdicts.core import Tolerance, VerdictFailed

seconds = st.floats(min_value=0.001, max_value=2.0, allow_nan=False, allow_infinity=False)


@st.composite
def backoff_models(draw: st.DrawFn) -> BackoffModel:
    kind = draw(st.sampled_from(["constant", "linear", "exponential", "decorrelated"]))
    initial = draw(seconds)
    if kind == "constant":
        return models.constant(initial)
    if kind == "linear":
        return models.linear(initial, draw(seconds))
    if kind == "decorrelated":
        return models.decorrelated(initial, cap=draw(st.floats(initial, 60.0)))
    jitter: models.Jitter = draw(st.sampled_from(["none", "full", "equal", "additive"]))
    return models.exponential(
        initial,
        draw(st.floats(1.1, 4.0)),
        cap=draw(st.sampled_from([math.inf, initial * 8])),
        floor=draw(st.sampled_from([0.0, initial / 2])),
        jitter=jitter,
        jitter_max=draw(seconds) if jitter == "additive" else 0.0,
        cap_after_jitter=draw(st.booleans()),
    )


@given(model=backoff_models(), retries=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
def test_a_timeline_drawn_from_a_model_passes_it(
    model: BackoffModel, retries: int, seed: int
) -> None:
    waits = model.samples(retries, random.Random(seed))
    verdict = expect_backoff(from_waits(waits), model, attempts=retries + 1)
    assert verdict.passed


@given(model=backoff_models(), retries=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
def test_a_drawn_timeline_passes_on_the_real_clock_with_noise(
    model: BackoffModel, retries: int, seed: int
) -> None:
    rng = random.Random(seed)
    waits = model.samples(retries, rng)
    stamps = [0.0]
    for wait in waits:  # late wake-ups within the documented window
        stamps.append(stamps[-1] + wait + rng.uniform(0.0, 0.014))
    if model.jitter == "decorrelated":  # its band depends on the measured previous delay
        return
    assert expect_backoff(from_timestamps(stamps), model, attempts=retries + 1).passed


@given(
    initial=st.floats(0.01, 1.0),
    multiplier=st.floats(1.5, 3.0),
    retries=st.integers(2, 6),
    factor=st.sampled_from([0.5, 0.7, 1.4, 2.0]),
)
def test_scaled_timelines_fail(
    initial: float, multiplier: float, retries: int, factor: float
) -> None:
    model = models.exponential(initial, multiplier)
    waits = [w * factor for w in model.samples(retries)]
    with pytest.raises(BackoffMismatch):
        expect_backoff(from_waits(waits), model, attempts=retries + 1)


@given(
    initial=st.floats(0.05, 1.0),
    retries=st.integers(1, 6),
    shift=st.floats(0.003, 0.5),
    sign=st.sampled_from([-1, 1]),
)
def test_shifted_timelines_fail_even_on_the_real_clock(
    initial: float, retries: int, shift: float, sign: int
) -> None:
    model = models.exponential(initial, 2.0)
    shift = shift if sign < 0 else shift + 0.016  # beyond the +15 ms late window
    waits = [max(0.0, w + sign * shift) for w in model.samples(retries)]
    stamps = [0.0]
    for wait in waits:
        stamps.append(stamps[-1] + wait)
    with pytest.raises(BackoffMismatch):
        expect_backoff(from_timestamps(stamps), model, attempts=retries + 1)


@settings(max_examples=50)
@given(retries=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_jittered_draws_stay_in_their_band(retries: int, seed: int) -> None:
    rng = random.Random(seed)
    for model in (
        models.tenacity_wait_random_exponential(multiplier=0.1, max=1.0, min=0.05),
        models.tenacity_wait_exponential_jitter(multiplier=0.1, max=0.5, jitter=0.2),
        models.backoff_expo(factor=0.1, max_value=0.5),
        models.stamina_default(),
    ):
        waits = model.samples(retries, rng)
        for n, wait in enumerate(waits, start=1):
            lo, hi = model.band(n)
            assert lo <= wait <= hi


def test_library_formulas() -> None:
    tenacity = models.tenacity_wait_exponential(multiplier=0.1, max=0.5, min=0.15)
    assert [tenacity.band(n) for n in (1, 2, 3, 4)] == [
        (0.15, 0.15), (0.2, 0.2), (0.4, 0.4), (0.5, 0.5)
    ]
    full = models.tenacity_wait_random_exponential(multiplier=0.1, max=0.3, min=0.05)
    assert full.band(1) == (0.05, 0.1)
    assert full.band(4) == (0.05, 0.3)
    additive = models.tenacity_wait_exponential_jitter(multiplier=0.1, max=0.3, jitter=0.1)
    assert additive.band(2) == pytest.approx((0.2, 0.3))
    assert additive.band(3) == (0.3, 0.3)  # jitter before the cap: late waits are exactly max
    expo = models.backoff_expo(factor=0.1, max_value=0.3)
    assert [expo.band(n) for n in (1, 2, 3, 4)] == [(0, 0.1), (0, 0.2), (0, 0.3), (0, 0.3)]
    stamina = models.stamina_default()
    assert stamina.band(1) == (0.1, 1.1)
    assert stamina.band(6) == (3.2, 4.2)
    assert stamina.band(7) == (5.0, 5.0)
    equal = models.exponential(0.1, jitter="equal", cap=0.3)
    assert equal.band(3) == (0.15, 0.3)
    deco = models.decorrelated(0.1, cap=1.0)
    assert deco.band(1) == pytest.approx((0.1, 0.3))
    assert deco.band(2, previous=0.5) == (0.1, 1.0)


def test_failure_table_names_the_model_that_fits() -> None:
    timeline = from_timestamps([0.0, 0.1, 0.2, 0.3, 0.4])
    with pytest.raises(BackoffMismatch) as info:
        expect_backoff(timeline, models.exponential(0.1), attempts=5)
    text = str(info.value)
    assert "attempt  expected delay  measured  off by" in text
    assert "4        400 ms          100 ms    -300 ms  <--" in text
    assert "look like constant 100 ms, not exponential 100 ms x 2^(n-1)" in text
    verdict = info.value.verdict
    assert verdict.observed["delays"] == pytest.approx([0.1] * 4)
    assert verdict.data["off_by"][0] == 0.0


def test_attempt_count_is_checked_both_ways() -> None:
    with pytest.raises(BackoffMismatch, match=r"expected 5 attempts, observed 3"):
        expect_backoff(from_waits([0.1, 0.2]), models.exponential(0.1), attempts=5)
    with pytest.raises(BackoffMismatch, match=r"extra attempt"):
        expect_backoff(from_waits([0.1, 0.2, 0.4]), models.exponential(0.1), attempts=3)


def test_requested_waits_compare_exactly_but_real_time_has_a_window() -> None:
    model = models.constant(0.1)
    with pytest.raises(BackoffMismatch):
        expect_backoff(from_waits([0.1005]), model)
    assert expect_backoff(from_timestamps([0.0, 0.1005]), model).passed
    assert expect_backoff(from_timestamps([0.0, 0.0985]), model).passed  # 1.5 ms early
    with pytest.raises(BackoffMismatch):
        expect_backoff(from_timestamps([0.0, 0.097]), model)  # 3 ms early
    with pytest.raises(BackoffMismatch):
        expect_backoff(from_timestamps([0.0, 0.116]), model)  # 16 ms late
    assert expect_backoff(from_timestamps([0.0, 0.13]), model, tolerance=(0.0, 0.05)).passed
    virtual = from_timestamps([0.0, 0.1 + 1e-12], clock="virtual")
    assert expect_backoff(virtual, model).passed
    with pytest.raises(BackoffMismatch):
        expect_backoff(from_timestamps([0.0, 0.1001], clock="virtual"), model)


def test_fit_simple_model() -> None:
    assert fit_simple_model([0.1]) is None
    constant = fit_simple_model([0.1, 0.101, 0.099])
    assert constant is not None
    assert constant.growth == "constant"
    linear = fit_simple_model([0.1, 0.2, 0.3, 0.4])
    assert linear is not None
    assert linear.growth == "linear"
    expo = fit_simple_model([0.1, 0.2, 0.4, 0.8])
    assert expo is not None
    assert expo.growth == "exponential"
    assert expo.multiplier == pytest.approx(2.0)


def test_delays_use_attempt_ends_when_known() -> None:
    timeline = Timeline()
    timeline.add(0.0, ended=0.05, outcome="error")
    timeline.add(0.15, ended=0.16, outcome="ok")
    assert timeline.delays() == pytest.approx([0.1])
    assert from_timestamps([0.0, 0.15]).delays() == pytest.approx([0.15])


def test_timeline_rejects_unknown_clock() -> None:
    with pytest.raises(ValueError, match="clock must be one of"):
        Timeline(clock="wall")  # type: ignore[arg-type]


def test_track_records_sync_calls() -> None:
    outcomes = iter([ConnectionError("down"), ConnectionError("down"), None])

    def dependency() -> str:
        error = next(outcomes)
        if error is not None:
            raise error
        return "ok"

    tracked = track(dependency)
    for _ in range(3):
        with contextlib.suppress(ConnectionError):
            tracked()
    assert [a.outcome for a in tracked.timeline.attempts] == ["error", "error", "ok"]
    assert tracked.timeline.attempts[0].error == "ConnectionError: down"
    assert tracked.calls == 3
    assert tracked.__name__ == "dependency"  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_track_records_async_calls() -> None:
    async def dependency(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x

    tracked = track(dependency)
    assert await tracked(1) == 1
    with pytest.raises(ValueError, match="negative"):
        await tracked(-1)
    tracked.new_call()
    assert await tracked(2) == 2
    assert [t.count for t in tracked.timelines] == [2, 1]
    assert amplification(tracked) == 1.5


def test_from_requests_accepts_backend_records_and_dicts() -> None:
    class Record:
        def __init__(self, arrived: float, path: str, answer: str) -> None:
            self.arrived, self.path, self.answer = arrived, path, answer

    log = [Record(0.3, "/a", "200"), Record(0.0, "/a", "503 x2"), Record(0.1, "/a", "503 x2"),
           Record(0.2, "/b", "200")]
    timeline = from_requests(log, match=lambda r: r.path == "/a")
    assert [a.started for a in timeline.attempts] == [0.0, 0.1, 0.3]
    assert [a.outcome for a in timeline.attempts] == ["error", "error", "ok"]
    assert from_requests([{"time": 1.0, "status": 200}]).attempts[0].outcome == "ok"
    with pytest.raises(TypeError, match="no monotonic arrival time"):
        from_requests([object()])


def test_from_toxiproxy_events() -> None:
    events = [
        {"time": 1.0, "kind": "accepted", "proxy": "pg"},
        {"time": 1.1, "kind": "closed", "proxy": "pg"},
        {"time": 1.2, "type": "connection_accepted", "proxy": "pg"},
        {"time": 1.3, "kind": "accepted", "proxy": "other"},
    ]
    timeline = from_toxiproxy_events(events, proxy="pg")
    assert timeline.delays() == pytest.approx([0.2])


def test_amplification_verdict() -> None:
    timelines = [from_timestamps([0, 1, 2]), from_timestamps([0]), from_timestamps([0, 1])]
    assert amplification(timelines) == 2.0
    assert expect_amplification(timelines, at_most=2).passed
    with pytest.raises(VerdictFailed, match=r"at most 1.5x \(observed 2.00x\)") as info:
        expect_amplification(timelines, at_most=1.5)
    assert "worst single call: 3 attempts" in str(info.value)
    assert amplification(30, calls=10) == 3.0
    with pytest.raises(TypeError, match="needs the number of logical calls"):
        amplification(30)


def test_tolerance_coercion() -> None:
    default = Tolerance(0.001, 0.002)
    assert Tolerance.coerce(None, default) is default
    assert Tolerance.coerce(0.01, default) == Tolerance(0.01, 0.01)
    assert Tolerance.coerce((0.0, 0.05), default) == Tolerance(0.0, 0.05)
    with pytest.raises(ValueError, match="must not be negative"):
        Tolerance(-1.0, 0.0)
    assert str(Tolerance()) == "exact"
    assert str(Tolerance(0.002, 0.015)) == "-2 ms / +15 ms"


def test_verdict_to_dict_is_json_ready() -> None:
    import json

    with pytest.raises(BackoffMismatch) as info:
        expect_backoff(from_waits([0.1, 0.1]), models.exponential(0.1, cap=math.inf))
    data = info.value.verdict.to_dict()
    assert json.loads(json.dumps(data))["passed"] is False
    assert data["table"][0][:4] == ["attempt", "expected delay", "measured", "off by"]
