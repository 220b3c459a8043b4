"""Real retry libraries under virtual time: exponential backoff with a 10 s cap, exact delays."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator

import pytest

from pytest_resilience.clock import VirtualClock

# 1, 2, 4, 8, then capped at 10 s
EXPECTED = [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


class Flaky:
    """Fails ``failures`` times, then answers; records the virtual time of every attempt."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: list[float] = []

    def __call__(self) -> str:
        self.attempts.append(time.monotonic())
        if len(self.attempts) <= self.failures:
            raise ConnectionError(f"attempt {len(self.attempts)} failed")
        return "ok"

    async def acall(self) -> str:
        return self()

    @property
    def delays(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.attempts)]


@pytest.fixture
def stamina_waits() -> Iterator[None]:
    """stamina really waits (its testing mode would zero the waits)."""
    import stamina

    was_testing = stamina.is_testing()
    stamina.set_testing(False)
    try:
        yield
    finally:
        stamina.set_testing(was_testing)


@pytest.mark.virtual_time
def test_tenacity_sync_backoff_is_exact(virtual_clock: VirtualClock) -> None:
    import tenacity

    flaky = Flaky(failures=6)
    retrying = tenacity.Retrying(
        wait=tenacity.wait_exponential(multiplier=1, max=10),
        stop=tenacity.stop_after_attempt(7),
        retry=tenacity.retry_if_exception_type(ConnectionError),
        reraise=True,
    )
    assert retrying(flaky) == "ok"
    assert flaky.delays == EXPECTED
    assert virtual_clock.elapsed == sum(EXPECTED)


@pytest.mark.asyncio
@pytest.mark.virtual_time
async def test_tenacity_async_backoff_is_exact(virtual_clock: VirtualClock) -> None:
    import tenacity

    flaky = Flaky(failures=6)
    retrying = tenacity.AsyncRetrying(
        wait=tenacity.wait_exponential(multiplier=1, max=10),
        stop=tenacity.stop_after_attempt(7),
        reraise=True,
    )
    assert await retrying(flaky.acall) == "ok"
    assert flaky.delays == EXPECTED
    assert virtual_clock.real_io_wait == 0


@pytest.mark.asyncio
@pytest.mark.virtual_time
async def test_tenacity_stop_after_delay_counts_virtual_seconds(
    virtual_clock: VirtualClock,
) -> None:
    import tenacity

    flaky = Flaky(failures=100)
    retrying = tenacity.AsyncRetrying(
        wait=tenacity.wait_exponential(multiplier=1, max=10),
        stop=tenacity.stop_after_delay(30),
        reraise=True,
    )
    with pytest.raises(ConnectionError):
        await retrying(flaky.acall)
    # stop_after_delay checks after each attempt: the attempt at 25 s is still inside
    # 30 s, so tenacity waits 10 s more; the attempt at 35 s is the last one.
    assert flaky.delays == EXPECTED
    assert flaky.attempts[-1] - flaky.attempts[0] == 35.0


@pytest.mark.usefixtures("stamina_waits")
@pytest.mark.virtual_time
def test_stamina_sync_backoff_is_exact(virtual_clock: VirtualClock) -> None:
    import stamina

    flaky = Flaky(failures=6)
    call = stamina.retry(
        on=ConnectionError, attempts=7, timeout=None,
        wait_initial=1, wait_max=10, wait_jitter=0, wait_exp_base=2,
    )(flaky)
    assert call() == "ok"
    assert flaky.delays == EXPECTED
    assert virtual_clock.elapsed == sum(EXPECTED)


@pytest.mark.usefixtures("stamina_waits")
@pytest.mark.asyncio
@pytest.mark.virtual_time
async def test_stamina_async_backoff_is_exact(virtual_clock: VirtualClock) -> None:
    import stamina

    flaky = Flaky(failures=6)

    @stamina.retry(
        on=ConnectionError, attempts=7, timeout=None,
        wait_initial=1, wait_max=10, wait_jitter=0, wait_exp_base=2,
    )
    async def call() -> str:
        return await flaky.acall()

    loop = asyncio.get_running_loop()
    begin = loop.time()
    assert await call() == "ok"
    assert flaky.delays == EXPECTED
    assert loop.time() - begin == sum(EXPECTED)
