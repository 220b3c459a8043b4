"""Verdicts on the plugin's virtual clock: detected automatically, compared exactly."""

from __future__ import annotations

import asyncio

import pytest

from pytest_resilience.clock import VirtualClock
from pytest_resilience.observe.attempts import track
from pytest_resilience.verdicts import backoff as models
from pytest_resilience.verdicts.backoff import BackoffMismatch, expect_backoff
from pytest_resilience.verdicts.timeout import TimeoutMismatch, expect_timeout


@pytest.mark.asyncio
@pytest.mark.virtual_time
async def test_a_long_curve_in_virtual_time(virtual_clock: VirtualClock) -> None:
    import tenacity

    async def down() -> None:
        raise ConnectionError("down")

    dependency = track(down)  # clock detected: "virtual"
    retrying = tenacity.AsyncRetrying(
        wait=tenacity.wait_exponential(multiplier=10, max=120),
        stop=tenacity.stop_after_attempt(6), reraise=True,
    )
    with pytest.raises(ConnectionError):
        await retrying(dependency)
    assert dependency.timeline.clock == "virtual"
    verdict = expect_backoff(
        dependency.timeline, models.tenacity_wait_exponential(multiplier=10, max=120), attempts=6
    )
    assert verdict.tolerance == "exact"
    # 10, 20, 40, 80, 120 s; a claim 1 ms off fails: no scheduling tolerance
    with pytest.raises(BackoffMismatch):
        expect_backoff(dependency.timeline, models.exponential(10.001, 2, cap=120), attempts=6)


@pytest.mark.asyncio
@pytest.mark.virtual_time
async def test_a_15_minute_timeout_in_virtual_time(virtual_clock: VirtualClock) -> None:
    async with expect_timeout(within=900, give_up_after=3600) as result:
        await asyncio.wait_for(asyncio.Event().wait(), 900)
    assert result.verdict is not None
    assert result.verdict.tolerance == "exact"
    with pytest.raises(TimeoutMismatch, match=r"gave up 1.000 s after its timeout"):
        async with expect_timeout(within=899, give_up_after=3600):
            await asyncio.wait_for(asyncio.Event().wait(), 900)
