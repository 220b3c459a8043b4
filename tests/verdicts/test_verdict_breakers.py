"""Circuit-breaker verdicts against pybreaker, purgatory, aiobreaker and circuitbreaker.

Recovery timeouts are 0.2 s of real time: the observer knocks every 10 ms
until the breaker lets a trial through (the breaker decides, not a sleep).
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from pytest_resilience.observe.breaker import (
    BreakerObserver,
    CallRecord,
    Transition,
    normalize_state,
    observe_aiobreaker,
    observe_circuitbreaker,
    observe_purgatory,
    observe_pybreaker,
)
from pytest_resilience.verdicts.breaker import (
    BreakerMismatch,
    acheck_breaker_conformance,
    check_breaker_conformance,
    expect_transitions,
)

RECOVERY = 0.2
FULL_CYCLE = ["closed", "open", "half_open", "open", "half_open", "closed"]
_names = itertools.count()


class Backend:
    """A dependency that is down until told otherwise."""

    def __init__(self) -> None:
        self.down = True

    def sync(self) -> str:
        if self.down:
            raise ConnectionError("backend down")
        return "ok"

    async def aio(self) -> str:
        return self.sync()


def drive_sync(observer: BreakerObserver, through: Callable[[], Any], backend: Backend,
               failures: int) -> None:
    """Outage: `failures` failing calls, 3 fail-fast calls, a failed trial, then recovery."""
    for _ in range(failures + 3):
        with contextlib.suppress(Exception):  # upstream error or the breaker's: recorded
            observer.call(through)
    assert observer.call_until_reached(through) is not None  # failed trial -> open again
    backend.down = False
    assert observer.call_until_reached(through) is not None  # successful trial -> closed
    observer.call(through)


async def drive_async(observer: BreakerObserver, through: Callable[[], Awaitable[Any]],
                      backend: Backend, failures: int) -> None:
    for _ in range(failures + 3):
        with contextlib.suppress(Exception):  # upstream error or the breaker's: recorded
            await observer.acall(through)
    assert await observer.acall_until_reached(through) is not None
    backend.down = False
    assert await observer.acall_until_reached(through) is not None
    await observer.acall(through)


@pytest.fixture
def circuitbreaker_registry() -> Iterator[None]:
    """circuitbreaker registers every decorated breaker globally by name: clean up."""
    from circuitbreaker import CircuitBreakerMonitor

    before = dict(CircuitBreakerMonitor.circuit_breakers)
    try:
        yield
    finally:
        CircuitBreakerMonitor.circuit_breakers.clear()
        CircuitBreakerMonitor.circuit_breakers.update(before)


def test_normalize_state() -> None:
    from aiobreaker import CircuitBreakerState

    assert normalize_state("half-opened") == "half_open"
    assert normalize_state(CircuitBreakerState.HALF_OPEN) == "half_open"
    assert normalize_state("OPEN") == "open"
    with pytest.raises(ValueError, match="not a circuit-breaker state"):
        normalize_state("ajar")


# -- pybreaker (listeners) ---------------------------------------------------------------------


def pybreaker_setup(fail_max: int) -> tuple[BreakerObserver, Callable[[], Any], Backend]:
    import pybreaker

    breaker = pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=RECOVERY)
    observer = observe_pybreaker(breaker)
    backend = Backend()
    guarded = observer.backend(backend.sync)
    return observer, lambda: breaker.call(guarded), backend


def test_pybreaker_transitions() -> None:
    observer, through, backend = pybreaker_setup(fail_max=3)
    drive_sync(observer, through, backend, failures=3)
    verdict = expect_transitions(observer, FULL_CYCLE, opens_after=3, recovery_timeout=RECOVERY)
    assert verdict.rows[0][3] == "3 consecutive failures"
    assert all(t.source == "pybreaker listener" for t in observer.transitions)
    assert observer.rejected >= 3  # the fail-fast calls, then the knocks while open


def test_pybreaker_claim_of_fewer_failures_fails() -> None:
    observer, through, backend = pybreaker_setup(fail_max=5)
    drive_sync(observer, through, backend, failures=5)
    with pytest.raises(BreakerMismatch) as info:
        expect_transitions(observer, FULL_CYCLE, opens_after=3, recovery_timeout=RECOVERY)
    text = str(info.value)
    assert "closed -> open" in text
    assert re.search(r"5 consecutive failures\s+3 consecutive failures\s+<--", text)


def test_pybreaker_claim_of_longer_recovery_fails() -> None:
    observer, through, backend = pybreaker_setup(fail_max=2)
    drive_sync(observer, through, backend, failures=2)
    with pytest.raises(BreakerMismatch, match=r"after opening\s+>= 500 ms after opening\s+<--"):
        expect_transitions(observer, FULL_CYCLE, opens_after=2, recovery_timeout=0.5)


def test_wrong_state_sequence_is_named() -> None:
    observer, through, backend = pybreaker_setup(fail_max=2)
    drive_sync(observer, through, backend, failures=2)
    with pytest.raises(BreakerMismatch) as info:
        expect_transitions(observer, ["closed", "open", "half_open", "closed"])
    text = str(info.value)
    assert "expected states closed -> open -> half_open -> closed" in text
    assert "observed states closed -> open -> half_open -> open -> half_open -> closed" in text


def test_pybreaker_conformance_passes() -> None:
    import pybreaker

    breaker = pybreaker.CircuitBreaker(fail_max=3, reset_timeout=RECOVERY)
    report = check_breaker_conformance(
        lambda backend: breaker.call(backend), failures_to_open=3, recovery_timeout=RECOVERY,
        name="pybreaker",
    )
    report.check()
    assert report["half_open_trials"].value == 1
    assert "CircuitBreakerError" in report["opens_after_failures"].detail
    assert report["half_open_trials"].detail.endswith("9 waited and then reached the backend")


def test_conformance_catches_a_wrong_threshold() -> None:
    import pybreaker

    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=RECOVERY)
    report = check_breaker_conformance(
        lambda backend: breaker.call(backend), failures_to_open=3, recovery_timeout=RECOVERY,
        name="pybreaker",
    )
    assert report.failed == ["opens_after_failures"]
    with pytest.raises(BreakerMismatch, match=r"opens_after_failures\s+3 failures\s+5 failures"):
        report.check()


# -- purgatory (event hooks) -------------------------------------------------------------------


def test_purgatory_transitions() -> None:
    import purgatory

    factory = purgatory.SyncCircuitBreakerFactory(default_threshold=3, default_ttl=RECOVERY)
    observer = observe_purgatory(factory, "svc")
    backend = Backend()
    guarded = observer.backend(backend.sync)

    def through() -> str:
        with factory.get_breaker("svc"):
            return guarded()

    drive_sync(observer, through, backend, failures=3)
    expect_transitions(observer, FULL_CYCLE, opens_after=3, recovery_timeout=RECOVERY)
    assert {t.source for t in observer.transitions} == {"purgatory event"}
    with pytest.raises(BreakerMismatch, match=r"4 consecutive failures\s+<--"):
        expect_transitions(observer, FULL_CYCLE, opens_after=4)


def test_purgatory_half_open_stampede_is_reported() -> None:
    import purgatory

    factory = purgatory.SyncCircuitBreakerFactory(default_threshold=3, default_ttl=RECOVERY)

    def through(backend: Callable[[], str]) -> str:
        with factory.get_breaker("svc"):
            return backend()

    report = check_breaker_conformance(
        through, failures_to_open=3, recovery_timeout=RECOVERY, name="purgatory"
    )
    assert report.failed == ["half_open_trials"]
    assert report["half_open_trials"].value == 10
    assert "10 of 10 reached the backend" in report["half_open_trials"].observed
    assert "stampede" in report.text()
    report.check(allow=["half_open_trials"])


# -- aiobreaker (listeners, asyncio) -------------------------------------------------------------


def aiobreaker_setup(fail_max: int) -> tuple[Any, BreakerObserver, Backend]:
    import aiobreaker

    breaker = aiobreaker.CircuitBreaker(
        fail_max=fail_max, timeout_duration=datetime.timedelta(seconds=RECOVERY)
    )
    return breaker, observe_aiobreaker(breaker), Backend()


@pytest.mark.asyncio
async def test_aiobreaker_transitions() -> None:
    breaker, observer, backend = aiobreaker_setup(fail_max=3)
    guarded = observer.backend(backend.aio)
    await drive_async(observer, lambda: breaker.call_async(guarded), backend, failures=3)
    expect_transitions(observer, FULL_CYCLE, opens_after=3, recovery_timeout=RECOVERY)
    assert {t.source for t in observer.transitions} == {"aiobreaker listener"}


@pytest.mark.asyncio
async def test_aiobreaker_half_open_stampede_is_reported() -> None:
    breaker, _, _ = aiobreaker_setup(fail_max=3)
    report = await acheck_breaker_conformance(
        lambda backend: breaker.call_async(backend), failures_to_open=3,
        recovery_timeout=RECOVERY, name="aiobreaker",
    )
    assert report.failed == ["half_open_trials"]
    assert report["half_open_trials"].value == 10


# -- circuitbreaker (state polling) ---------------------------------------------------------------


@pytest.mark.usefixtures("circuitbreaker_registry")
def test_circuitbreaker_transitions_by_polling() -> None:
    import circuitbreaker

    breaker = circuitbreaker.CircuitBreaker(
        failure_threshold=3, recovery_timeout=RECOVERY, name=f"cb-{next(_names)}"
    )
    observer = observe_circuitbreaker(breaker)
    backend = Backend()
    through = breaker(observer.backend(backend.sync))
    drive_sync(observer, through, backend, failures=3)
    expect_transitions(observer, FULL_CYCLE, opens_after=3, recovery_timeout=RECOVERY)
    assert {t.source for t in observer.transitions} == {"poll"}


@pytest.mark.asyncio
@pytest.mark.usefixtures("circuitbreaker_registry")
async def test_circuitbreaker_async_half_open_stampede_is_reported() -> None:
    import circuitbreaker

    breaker = circuitbreaker.CircuitBreaker(
        failure_threshold=3, recovery_timeout=RECOVERY, name=f"cb-{next(_names)}"
    )
    report = await acheck_breaker_conformance(
        lambda backend: breaker(backend)(), failures_to_open=3, recovery_timeout=RECOVERY,
        name="circuitbreaker",
    )
    assert report.failed == ["half_open_trials"]
    assert report["half_open_trials"].value == 10


@pytest.mark.usefixtures("circuitbreaker_registry")
def test_circuitbreaker_call_method_never_fails_fast() -> None:
    """``CircuitBreaker.call()`` skips the open check (only the decorator has it)."""
    import circuitbreaker

    breaker = circuitbreaker.CircuitBreaker(
        failure_threshold=3, recovery_timeout=RECOVERY, name=f"cb-{next(_names)}"
    )
    report = check_breaker_conformance(
        lambda backend: breaker.call(backend), failures_to_open=3, recovery_timeout=RECOVERY,
        name="circuitbreaker .call()",
    )
    # it never opens: fail-fast fails too, and nothing after the opening can be measured
    assert report.failed[:2] == ["opens_after_failures", "fail_fast_while_open"]
    assert report.not_measured == report.failed[2:]
    assert len(report.properties) == 6
    assert report["opens_after_failures"].observed == "never opened in 6 calls"


# -- black box ------------------------------------------------------------------------------------


def test_black_box_inference_without_adapters() -> None:
    import pybreaker

    breaker = pybreaker.CircuitBreaker(fail_max=2, reset_timeout=RECOVERY)
    observer = BreakerObserver(name="black box")
    backend = Backend()
    guarded = observer.backend(backend.sync)
    drive_sync(observer, lambda: breaker.call(guarded), backend, failures=2)
    assert {t.source for t in observer.transitions} == {"inferred"}
    expect_transitions(observer, FULL_CYCLE, opens_after=2, recovery_timeout=RECOVERY)


def test_a_breaker_that_never_opens() -> None:
    observer = BreakerObserver(name="no breaker")
    backend = Backend()
    guarded = observer.backend(backend.sync)
    for _ in range(6):
        with pytest.raises(ConnectionError):
            observer.call(guarded)
    with pytest.raises(BreakerMismatch, match="observed states closed\n"):
        expect_transitions(observer, ["closed", "open"], opens_after=5)


def test_triggers_from_recorded_data() -> None:
    """No real time: a trial reported late (purgatory style) passes; a leak while open fails."""
    observer = BreakerObserver(name="synthetic", now=lambda: 0.0)
    observer.calls = [
        CallRecord(1, 0.00, 0.01, 0.00, "error"),
        CallRecord(2, 0.01, 0.02, 0.01, "error"),
        CallRecord(3, 0.05, 0.05, None, "rejected"),
        CallRecord(4, 0.25, 0.30, 0.25, "ok"),  # the trial takes 50 ms
    ]
    observer.reported = [
        Transition(0.02, "closed", "open", "event"),
        Transition(0.30, "open", "half_open", "event"),  # reported when the trial ended
        Transition(0.30, "half_open", "closed", "event"),
    ]
    states = ["closed", "open", "half_open", "closed"]
    verdict = expect_transitions(observer, states, opens_after=2, recovery_timeout=0.2)
    assert verdict.rows[1][3] == "230 ms after opening"

    observer.calls[2] = CallRecord(3, 0.05, 0.06, 0.05, "error")  # got through while open
    with pytest.raises(BreakerMismatch) as info:
        expect_transitions(observer, states, opens_after=2, recovery_timeout=0.2)
    assert "call 3 reached the backend 30 ms after the breaker opened" in str(info.value)
