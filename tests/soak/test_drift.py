"""Drift verdicts on synthetic soak records (pure math: no sleeps, no processes)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from pytest_resilience.soak.drift import (
    DriftFailed,
    expect_amplification,
    expect_no_growth,
    expect_rss_bounded,
    expect_stage_latency,
    expect_sustained,
    t_quantile,
    theil_sen,
)
from pytest_resilience.soak.record import SoakRecord, Stage
from pytest_resilience.verdicts.core import Verdict, VerdictFailed

MiB = 1 << 20


def make_record(
    seconds: float,
    values: dict[str, Callable[[float], Any]],
    *,
    interval: float = 1.0,
    warmup: float = 5.0,
    stages: list[Stage] | None = None,
) -> SoakRecord:
    """A record sampled every *interval* from t = 0 to *seconds*; each series a function
    of t."""
    record = SoakRecord(name="synthetic", started=0.0, interval=interval, warmup=warmup)
    for i in range(round(seconds / interval) + 1):
        t = round(i * interval, 9)
        record.add_sample({"t": t, **{name: f(t) for name, f in values.items()}})
    record.stages = list(stages or [])
    return record


# -- statistics helpers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [(0.975, 1, 12.7062), (0.95, 5, 2.0150), (0.975, 3, 3.1824), (0.975, 30, 2.0423),
     (0.95, 1000, 1.6464), (0.025, 10, -2.2281), (0.5, 7, 0.0)],
)
def test_t_quantile_matches_tables(p: float, df: int, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-4)


def test_theil_sen_ignores_outliers_and_subsamples_large_inputs() -> None:
    xs = [float(i) for i in range(50)]
    ys = [2.0 + 0.5 * x for x in xs]
    ys[10] = 1000.0
    ys[40] = -1000.0
    slope, intercept = theil_sen(xs, ys)
    assert slope == pytest.approx(0.5)
    assert intercept == pytest.approx(2.0)
    big = [float(i) for i in range(10_000)]
    started = time.perf_counter()
    slope, _ = theil_sen(big, [3.0 * x for x in big])
    assert slope == pytest.approx(3.0)
    assert time.perf_counter() - started < 0.5


# -- expect_no_growth ---------------------------------------------------------------------


def test_flat_noisy_series_never_false_alarms_over_200_seeds() -> None:
    for seed in range(200):
        rng = random.Random(seed)

        def fds(t: float, rng: random.Random = rng) -> int:
            return 40 + rng.randint(-3, 3)

        def sessions(t: float, rng: random.Random = rng) -> int | None:
            return None if rng.random() < 0.05 else 12 + rng.choice([0, 0, 0, 1, -1, 2])

        record = make_record(60.0, {"fds": fds, "pg_sessions": sessions})
        for series in ("fds", "pg_sessions"):
            verdict = expect_no_growth(record, series, raise_=False)
            assert verdict.passed, (seed, series, verdict.text())


def test_one_step_jump_passes() -> None:
    record = make_record(60.0, {"pool_size": lambda t: 5 if t < 25 else 6})
    verdict = expect_no_growth(record, "pool_size")
    assert verdict.passed
    assert verdict.kind == "drift"
    assert verdict.outcome.startswith(("no lasting growth", "no significant growth"))


def test_one_step_jump_with_noise_passes_over_200_seeds() -> None:
    for seed in range(200):
        rng = random.Random(seed)
        step = rng.uniform(5, 60)

        def fds(t: float, step: float = step, rng: random.Random = rng) -> int:
            return 20 + (t > step) + rng.randint(-2, 2)

        record = make_record(60.0, {"fds": fds})
        verdict = expect_no_growth(record, "fds", raise_=False)
        assert verdict.passed, (seed, verdict.text())


def test_steady_leak_fails_in_the_claims_words() -> None:
    record = make_record(65.0, {"pg_sessions": lambda t: 12 + max(0.0, t - 5)})
    with pytest.raises(DriftFailed) as info:
        expect_no_growth(record, "pg_sessions")
    assert isinstance(info.value, AssertionError)
    verdict = info.value.verdict
    assert not verdict.passed
    assert verdict.claim == "Postgres sessions do not grow after the 5 s warm-up"
    assert verdict.outcome.startswith("grew from 12 to 72 (+1/s, 95 % CI")
    assert verdict.outcome.endswith("about 60 per minute")
    assert verdict.data["series"] == "pg_sessions"
    assert verdict.data["slope"] == pytest.approx(1.0)
    assert verdict.data["window"] == [5.0, 65.0]
    assert verdict.blamed_rows == [3, 5, 6]
    assert [row[0] for row in verdict.rows][:2] == ["window", "samples"]
    assert "Postgres sessions" in str(info.value)


def test_noisy_leak_fails_and_reports_ci() -> None:
    rng = random.Random(7)
    record = make_record(60.0, {"fds": lambda t: 30 + round(0.98 * t) + rng.randint(-2, 2)},
                         warmup=0.0)
    verdict = expect_no_growth(record, "fds", raise_=False)
    assert not verdict.passed
    assert "open file descriptors" in verdict.claim
    assert "over the whole run" in verdict.claim
    lo, hi = verdict.observed["ci"]
    assert 0.9 < lo < 0.98 < hi < 1.06
    assert "per minute" in verdict.outcome


def test_leak_per_call_is_reported_per_hundred_calls() -> None:
    # 100 calls/s, one session leaked every 100 calls
    record = make_record(60.0, {"calls": lambda t: int(100 * t),
                                "tasks": lambda t: 3 + int(100 * t) // 100})
    verdict = expect_no_growth(record, "tasks", per="call", raise_=False)
    assert not verdict.passed
    assert "asyncio tasks" in verdict.claim
    assert verdict.outcome.endswith("about 1 per 100 calls")
    assert verdict.data["x"] == "calls"
    per_second = expect_no_growth(record, "tasks", raise_=False)
    assert not per_second.passed
    assert "about 60 per minute" in per_second.outcome


def test_ramp_during_warmup_only_passes() -> None:
    rng = random.Random(3)
    record = make_record(
        60.0, {"threads": lambda t: (4 + 4 * t if t < 5 else 24) + rng.randint(-1, 1)})
    assert expect_no_growth(record, "threads").passed


def test_memory_growth_uses_bytes_threshold() -> None:
    record = make_record(60.0, {"rss_bytes": lambda t: 100 * MiB + int(t * 512 * 1024)})
    verdict = expect_no_growth(record, "rss_bytes", per="min", raise_=False)
    assert not verdict.passed
    assert verdict.claim.startswith("memory (RSS) does not grow")
    assert "MiB/min" in verdict.outcome
    # 100 KiB over the run is below 1 MiB: not a leak
    small = make_record(60.0, {"rss_bytes": lambda t: 100 * MiB + int(t * 1700)})
    assert expect_no_growth(small, "rss_bytes").passed


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({}, "was not sampled"),
        ({"fds": lambda t: None}, "never read"),
        ({"fds": lambda t: 10 if t < 5 else None}, "no fds sample after the 5 s warm-up"),
        ({"fds": lambda t: 10 if t < 8 else None}, "only 3 fds samples"),
    ],
)
def test_not_measured_fails(values: dict[str, Callable[[float], Any]], reason: str) -> None:
    record = make_record(30.0, values)
    with pytest.raises(DriftFailed) as info:
        expect_no_growth(record, "fds")
    verdict = info.value.verdict
    assert verdict.outcome.startswith("not measured: ")
    assert reason in verdict.outcome


def test_short_run_not_measured() -> None:
    record = make_record(3.0, {"fds": lambda t: 10})
    verdict = expect_no_growth(record, "fds", raise_=False)
    assert not verdict.passed
    assert "not measured" in verdict.outcome


def test_raise_false_returns_failed_verdict_without_collecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collected: list[Verdict] = []
    monkeypatch.setattr("pytest_resilience.verdicts.core.collect", collected.append)
    record = make_record(60.0, {"fds": lambda t: 10 + t})
    verdict = expect_no_growth(record, "fds", raise_=False)
    assert not verdict.passed
    assert collected == []
    with pytest.raises(DriftFailed):
        expect_no_growth(record, "fds")
    assert len(collected) == 1


def test_verdict_round_trips_through_json() -> None:
    record = make_record(60.0, {"fds": lambda t: 10 + t})
    verdict = expect_no_growth(record, "fds", raise_=False)
    again = Verdict.from_dict(verdict.as_dict())
    assert again.outcome == verdict.outcome
    assert again.data["slope"] == pytest.approx(1.0)


def test_bad_arguments_raise() -> None:
    record = make_record(10.0, {"fds": lambda t: 1})
    with pytest.raises(ValueError, match="confidence"):
        expect_no_growth(record, "fds", confidence=1.0)
    with pytest.raises(ValueError, match="per"):
        expect_no_growth(record, "fds", per="week")  # type: ignore[arg-type]


def test_large_record_is_fast() -> None:
    rng = random.Random(11)
    record = make_record(600.0, {"fds": lambda t: 50 + rng.randint(-2, 2)}, interval=0.1)
    started = time.perf_counter()
    assert expect_no_growth(record, "fds").passed
    assert time.perf_counter() - started < 1.0


# -- expect_rss_bounded -------------------------------------------------------------------


def test_rss_bounded_both_ways() -> None:
    rng = random.Random(5)
    steady = make_record(
        60.0, {"rss_bytes": lambda t: (300 if t < 5 else 100) * MiB + rng.randint(0, MiB)})
    assert expect_rss_bounded(steady).passed
    growing = make_record(60.0, {"rss_bytes": lambda t: int((100 + t) * MiB)})
    with pytest.raises(DriftFailed) as info:
        expect_rss_bounded(growing, ratio=1.3)
    verdict = info.value.verdict
    assert verdict.kind == "drift"
    assert verdict.outcome.startswith("grew 1.47x: 107.5 MiB -> 157.5 MiB")
    assert "MiB" in verdict.outcome
    assert expect_rss_bounded(growing, ratio=1.6).passed


def test_rss_not_measured() -> None:
    record = make_record(60.0, {"fds": lambda t: 3})
    verdict = expect_rss_bounded(record, raise_=False)
    assert not verdict.passed
    assert verdict.outcome.startswith("not measured: rss_bytes was not sampled")


# -- expect_sustained ---------------------------------------------------------------------


def test_single_spike_passes_sustained_breach_fails() -> None:
    spike = make_record(30.0, {"p95_s": lambda t: 0.2 if t == 12 else 0.02})
    verdict = expect_sustained(spike, "p95_s", at_most=0.05)
    assert verdict.passed
    assert verdict.kind == "sustained-breach"
    assert "1 short excursion" in verdict.outcome
    breach = make_record(30.0, {"p95_s": lambda t: 0.2 if 12 <= t <= 18 else 0.02})
    with pytest.raises(DriftFailed) as info:
        expect_sustained(breach, "p95_s", at_most=0.05)
    assert info.value.verdict.outcome == (
        "p95_s above 50 ms for 7 consecutive samples from +12.0 s to +18.0 s")
    assert info.value.verdict.blamed_rows == [0]


def test_sustained_none_breaks_a_run_and_error_rate_in_percent() -> None:
    def rate(t: float) -> float | None:
        if t in (13, 16):
            return None
        return 0.2 if 12 <= t <= 18 else 0.0

    record = make_record(30.0, {"error_rate": rate})
    verdict = expect_sustained(record, "error_rate", at_most=0.05)
    assert verdict.passed  # runs of 1, 2 and 2 samples
    assert "5 %" in verdict.claim
    assert not expect_sustained(record, "error_rate", at_most=0.05, consecutive=2,
                                raise_=False).passed


def test_sustained_ignores_warmup_and_fails_unmeasured() -> None:
    record = make_record(30.0, {"p99_s": lambda t: 1.0 if t < 5 else 0.01})
    assert expect_sustained(record, "p99_s", at_most=0.1).passed
    assert not expect_sustained(record, "p99_s", at_most=0.1, warmup=0, raise_=False).passed
    empty = expect_sustained(record, "p95_s", at_most=0.1, raise_=False)
    assert not empty.passed
    assert empty.outcome.startswith("not measured")


# -- expect_stage_latency -----------------------------------------------------------------


def stage_record(recovered_at: float) -> SoakRecord:
    def p95(t: float) -> float:
        if 10 < t <= 20:
            return 0.250
        if 20 < t < recovered_at:
            return 0.120
        return 0.020

    return make_record(40.0, {"p95_s": p95}, stages=[Stage(10.0, 20.0, "latency 200ms")])


def test_stage_latency_and_recovery_pass() -> None:
    verdict = expect_stage_latency(stage_record(23.0), at_most_during=0.3,
                                   at_most_outside=0.05, recover_within=5.0)
    assert verdict.passed, verdict.text()
    assert verdict.kind == "stage-latency"
    assert len(verdict.rows) == 1
    assert verdict.observed["stages"][0]["recovery_s"] == pytest.approx(3.0)
    assert "recovered within 3.000 s" in verdict.outcome


def test_stage_latency_fails_on_slow_fault_and_slow_recovery() -> None:
    with pytest.raises(DriftFailed) as info:
        expect_stage_latency(stage_record(30.0), at_most_during=0.2, recover_within=5.0)
    verdict = info.value.verdict
    assert "during 'latency 200ms' p95_s reached 250 ms (limit 200 ms)" in verdict.outcome
    assert "recovery after 'latency 200ms' took 10.000 s (limit 5.000 s)" in verdict.outcome
    assert verdict.blamed_rows == [0]


def test_stage_latency_without_recovery_and_without_stages() -> None:
    never = make_record(40.0, {"p95_s": lambda t: 0.02 if t <= 25 else 0.3},
                        stages=[Stage(25.0, 30.0, "blackhole")])
    verdict = expect_stage_latency(never, recover_within=5.0, raise_=False)
    assert not verdict.passed
    assert "did not recover" in verdict.outcome
    bare = make_record(40.0, {"p95_s": lambda t: 0.02})
    missing = expect_stage_latency(bare, at_most_during=0.2, raise_=False)
    assert not missing.passed
    assert missing.outcome.startswith("not measured: the record has no stages")
    assert expect_stage_latency(bare, at_most_outside=0.05).passed
    with pytest.raises(ValueError, match="needs"):
        expect_stage_latency(bare)


def test_a_late_sample_still_counts_for_the_stage_it_covers() -> None:
    """Samples at 2.4, 2.5 and a late 2.603 (not 2.6); the stage ends at 2.502. The last
    sample covers (2.5, 2.603], which overlaps the stage, and it holds the slow calls."""
    record = SoakRecord(name="late", started=0.0, interval=0.1, warmup=0.0)
    ts = [round(0.1 * i, 6) for i in range(1, 26)] + [2.603, 2.7, 2.8, 2.9, 3.0]
    for t in ts:
        record.add_sample({"t": t, "max_s": 1.4 if t == 2.603 else 0.01})
    record.stages = [Stage(1.021, 2.502, "latency on postgres")]
    verdict = expect_stage_latency(record, series="max_s", at_most_during=0.8,
                                   raise_=False)
    assert not verdict.passed
    assert "max_s reached 1.400 s (limit 800 ms)" in verdict.outcome, verdict.outcome
    # the sample before it, at 2.5, ends before the stage does: it counts too - and a
    # sample wholly after the stage does not
    assert verdict.observed["stages"][0]["samples"] == 16


# -- expect_amplification -----------------------------------------------------------------


def amplification_record() -> SoakRecord:
    # 100 calls/s; 1 attempt per call outside the fault, 3 per call during 10..20 s
    def attempts(t: float) -> int:
        return int(100 * min(t, 10) + 300 * max(0.0, min(t, 20) - 10) + 100 * max(0.0, t - 20))

    return make_record(60.0, {"calls": lambda t: int(100 * t), "attempts": attempts},
                       stages=[Stage(10.0, 20.0, "reset postgres")])


def test_amplification_pass_and_fail() -> None:
    record = amplification_record()
    whole = expect_amplification(record, at_most=1.5)
    assert whole.passed
    assert whole.observed["amplification"] == pytest.approx(8000 / 6000)
    with pytest.raises(DriftFailed) as info:
        expect_amplification(record, at_most=2.0, during_stages=True)
    verdict = info.value.verdict
    assert verdict.kind == "amplification"
    assert verdict.outcome == "request explosion: 3.00 attempts per call during faults (limit 2)"
    assert verdict.rows[0][0] == "reset postgres"
    assert expect_amplification(record, at_most=3.0, during_stages=True).passed


def test_amplification_not_measured() -> None:
    record = make_record(60.0, {"calls": lambda t: int(100 * t)})
    verdict = expect_amplification(record, at_most=2.0, raise_=False)
    assert not verdict.passed
    assert verdict.outcome == "not measured: no attempts series in the record"
    no_stages = make_record(60.0, {"calls": lambda t: t, "attempts": lambda t: t})
    assert "no stages" in expect_amplification(no_stages, at_most=2.0, during_stages=True,
                                               raise_=False).outcome


def test_drift_failed_is_an_assertion_error() -> None:
    assert issubclass(DriftFailed, VerdictFailed)
    assert issubclass(DriftFailed, AssertionError)
    assert math.isfinite(t_quantile(0.99, 2))
