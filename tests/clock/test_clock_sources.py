"""The clock-source check: which clocks were read, which the fixture does not control,
mixed clocks; early bindings of the real functions are patched and restored."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from datetime import timedelta

import pytest

from pytest_resilience.clock import VirtualClock, current_clock_kind

REAL_MONOTONIC = time.monotonic
# Bound while no clock runs, in places a plain `time.monotonic = fake` would miss:


class Timer:
    clock = time.monotonic  # class attribute


def elapsed_since(start: float, clock: Callable[[], float] = time.monotonic) -> float:
    return clock() - start  # default argument


def _make_closure() -> Callable[[], float]:
    clock = time.monotonic

    def read() -> float:
        return clock()

    return read


CLOSURE_CLOCK = _make_closure()


class Holder:
    def __init__(self) -> None:
        self.clock = time.monotonic  # instance attribute


HOLDER = Holder()


def reads_cpu_time() -> float:
    return time.process_time()  # a clock the virtual clock leaves real


def reads_clock_gettime_cpu() -> float:
    return time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID)


def test_early_bindings_follow_the_virtual_clock_and_are_restored() -> None:
    with VirtualClock() as clock:
        begin = time.monotonic()
        clock.advance(42)
        assert Timer.clock() - begin == 42
        assert Timer().clock() - begin == 42  # no method binding of the fake
        assert elapsed_since(begin) == 42
        assert CLOSURE_CLOCK() - begin == 42
        assert HOLDER.clock() - begin == 42
    assert time.monotonic is REAL_MONOTONIC
    assert Timer.clock is REAL_MONOTONIC
    assert elapsed_since.__defaults__ == (REAL_MONOTONIC,)
    assert CLOSURE_CLOCK.__closure__ is not None
    assert CLOSURE_CLOCK.__closure__[0].cell_contents is REAL_MONOTONIC
    assert HOLDER.clock is REAL_MONOTONIC
    assert current_clock_kind() == "real"


def test_uncontrolled_clocks_and_unpatchable_bindings_are_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    # cannot be patched (a partial's func is read-only): reported
    monkeypatch.setattr(
        sys.modules[__name__], "PARTIAL_CLOCK", functools.partial(time.monotonic), raising=False
    )
    with VirtualClock() as clock:
        reads_cpu_time()
        reads_clock_gettime_cpu()
        time.monotonic()
    findings = clock.findings()
    uncontrolled = {f.where.split(" ")[0] for f in findings if f.kind == "uncontrolled"}
    assert uncontrolled == {
        f"{__name__}.reads_cpu_time",
        f"{__name__}.reads_clock_gettime_cpu",
    }
    unpatched = [f for f in findings if f.kind == "unpatched_binding"]
    assert [f.where for f in unpatched] == [f"{__name__}:PARTIAL_CLOCK"]
    assert "time.monotonic" in unpatched[0].message
    reads = {(r.source, r.function) for r in clock.sources_read()}
    assert ("time.process_time", "reads_cpu_time") in reads
    this_test = "test_uncontrolled_clocks_and_unpatchable_bindings_are_reported"
    assert ("time.monotonic", this_test) in reads
    text = clock.report().format()
    assert "NOT controlled by the virtual clock" in text
    assert "[unpatched_binding]" in text
    with pytest.raises(AssertionError, match=r"reads time\.process_time"):
        clock.assert_sources_controlled()


@pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")
@pytest.mark.asyncio
@pytest.mark.virtual_time
async def test_aiobreaker_mixing_utcnow_and_now_is_flagged(virtual_clock: VirtualClock) -> None:
    import aiobreaker

    async def fail() -> None:
        raise ConnectionError("down")

    breaker = aiobreaker.CircuitBreaker(fail_max=1, timeout_duration=timedelta(seconds=60))
    with pytest.raises(aiobreaker.CircuitBreakerError):
        await breaker.call_async(fail)
    assert breaker.time_until_open > timedelta(0)  # reads now() against the utcnow() stamp
    await asyncio.sleep(1)
    with pytest.raises(aiobreaker.CircuitBreakerError):
        await breaker.call_async(fail)  # compares utcnow() with the stamp

    mixed = [f for f in virtual_clock.findings() if f.kind == "mixed"]
    assert [f.where for f in mixed] == ["aiobreaker"]
    expected = "datetime.utcnow() (naive UTC) with datetime.now() (naive local time)"
    assert expected in mixed[0].message
    sources = {r.source for r in virtual_clock.sources_read() if r.module.startswith("aiobreaker")}
    assert {"datetime.utcnow", "datetime.now"} <= sources


def test_one_aware_clock_is_not_flagged(virtual_clock: VirtualClock) -> None:
    import pybreaker

    breaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=60)
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(lambda: 1 / 0)
    assert virtual_clock.findings() == []
    sources = {r.source for r in virtual_clock.sources_read() if r.module == "pybreaker"}
    assert sources == {"datetime.now(tz)"}
