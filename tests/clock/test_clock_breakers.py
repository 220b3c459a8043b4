"""Real circuit-breaker libraries under virtual time: a 60 s recovery in milliseconds.

Each library reads a different clock (pybreaker ``datetime.now(UTC)``,
circuitbreaker ``monotonic`` bound at import, purgatory ``time.time()``,
aiobreaker ``utcnow()``/``now()``); the virtual clock must move all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import pytest

from pytest_resilience.clock import VirtualClock

START = "2030-01-01T00:00:00+00:00"  # a whole second: wall-clock floats stay exact


class Backend:
    """A dependency that is down until told otherwise, counting the calls that reach it."""

    def __init__(self) -> None:
        self.up = False
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if not self.up:
            raise ConnectionError("backend down")
        return "ok"


def _trip(call: Callable[[], object], times: int, errors: tuple[type[BaseException], ...]) -> None:
    for _ in range(times):
        with pytest.raises(errors):
            call()


@pytest.mark.virtual_time(start=START)
def test_pybreaker_half_opens_after_exactly_60_virtual_seconds(virtual_clock: VirtualClock) -> None:
    import pybreaker

    backend = Backend()
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    _trip(lambda: breaker.call(backend), 5, (ConnectionError, pybreaker.CircuitBreakerError))
    assert breaker.current_state == "open"
    assert backend.calls == 5

    virtual_clock.advance(59.9)  # fail fast: the call never reaches the backend
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(backend)
    assert backend.calls == 5

    virtual_clock.advance(0.1)  # exactly 60 s after the trip: the trial call goes through
    backend.up = True
    assert breaker.call(backend) == "ok"
    assert backend.calls == 6
    assert breaker.current_state == "closed"


@pytest.mark.virtual_time(start=START)
def test_circuitbreaker_half_opens_after_exactly_60_virtual_seconds(
    virtual_clock: VirtualClock,
) -> None:
    import circuitbreaker

    backend = Backend()
    breaker = circuitbreaker.CircuitBreaker(
        failure_threshold=5, recovery_timeout=60, name="clock-test-circuitbreaker"
    )
    guarded = breaker.decorate(backend)
    _trip(guarded, 5, (ConnectionError,))
    assert breaker.state == circuitbreaker.STATE_OPEN

    virtual_clock.advance(59.9)
    assert breaker.state == circuitbreaker.STATE_OPEN
    with pytest.raises(circuitbreaker.CircuitBreakerError):
        guarded()
    assert backend.calls == 5

    virtual_clock.advance(0.1)
    assert breaker.open_remaining == 0
    assert breaker.state == circuitbreaker.STATE_HALF_OPEN
    backend.up = True
    assert guarded() == "ok"
    assert breaker.state == circuitbreaker.STATE_CLOSED
    assert backend.calls == 6


@pytest.mark.virtual_time(start=START)
def test_purgatory_half_opens_once_60_virtual_seconds_have_passed(
    virtual_clock: VirtualClock,
) -> None:
    from purgatory import SyncCircuitBreakerFactory
    from purgatory.domain.model import OpenedState

    backend = Backend()
    factory = SyncCircuitBreakerFactory(default_threshold=5, default_ttl=60)

    def call() -> str:
        with factory.get_breaker("clock-test-purgatory"):
            return backend()

    _trip(call, 5, (ConnectionError,))
    assert factory.get_breaker("clock-test-purgatory").context.state == "opened"

    virtual_clock.advance(59.9)
    with pytest.raises(OpenedState):
        call()
    # purgatory compares `time.time() > opened_at + ttl` strictly: at exactly 60 s it
    # is still open; the first instant after 60 s lets the trial through.
    virtual_clock.advance(0.1)
    with pytest.raises(OpenedState):
        call()
    assert backend.calls == 5

    virtual_clock.advance(0.001)
    backend.up = True
    assert call() == "ok"
    assert backend.calls == 6
    assert factory.get_breaker("clock-test-purgatory").context.state == "closed"


@pytest.mark.asyncio
@pytest.mark.virtual_time(start=START)
async def test_pybreaker_recovers_while_the_loop_sleeps_60_virtual_seconds(
    virtual_clock: VirtualClock,
) -> None:
    import pybreaker

    backend = Backend()
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    _trip(lambda: breaker.call(backend), 5, (ConnectionError, pybreaker.CircuitBreakerError))
    loop = asyncio.get_running_loop()
    opened = loop.time()

    await asyncio.sleep(59.9)  # auto-advance: no wall time passes
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(backend)
    await asyncio.sleep(0.1)
    assert loop.time() - opened == pytest.approx(60, abs=1e-9)
    backend.up = True
    assert breaker.call(backend) == "ok"
    assert breaker.current_state == "closed"
    assert virtual_clock.real_io_wait == 0


@pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")
@pytest.mark.asyncio
@pytest.mark.virtual_time(start=START)
async def test_aiobreaker_half_opens_after_60_virtual_seconds(virtual_clock: VirtualClock) -> None:
    import aiobreaker

    backend = Backend()

    async def fetch() -> str:
        return backend()

    breaker = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(seconds=60))
    for _ in range(5):
        with pytest.raises((ConnectionError, aiobreaker.CircuitBreakerError)):
            await breaker.call_async(fetch)
    assert breaker.current_state == aiobreaker.CircuitBreakerState.OPEN

    await asyncio.sleep(59.9)
    with pytest.raises(aiobreaker.CircuitBreakerError):
        await breaker.call_async(fetch)
    await asyncio.sleep(0.1)
    backend.up = True
    assert await breaker.call_async(fetch) == "ok"
    assert breaker.current_state == aiobreaker.CircuitBreakerState.CLOSED
    assert backend.calls == 6
