"""Attempt timelines on the virtual clock: exact delays, ``clock="virtual"``."""

from __future__ import annotations

import pytest

from pytest_resilience.clock import VirtualClock, current_clock_kind


@pytest.mark.virtual_time
def test_tracked_attempts_read_virtual_time(virtual_clock: VirtualClock) -> None:
    attempts = pytest.importorskip("pytest_resilience.observe.attempts")
    import tenacity

    failures = iter([True, True, True, False])

    def dependency() -> str:
        if next(failures):
            raise ConnectionError("down")
        return "ok"

    # `now` defaults to the time.monotonic bound at import: the clock patched the default
    tracked = attempts.track(dependency, clock=current_clock_kind())
    retrying = tenacity.Retrying(
        wait=tenacity.wait_exponential(multiplier=0.1, max=10), reraise=True
    )
    assert retrying(tracked) == "ok"
    assert tracked.timeline.clock == "virtual"
    # "exact" on a float clock means to the nanosecond: 0.1 s is not a binary fraction
    assert tracked.timeline.delays() == pytest.approx([0.1, 0.2, 0.4], rel=0, abs=1e-9)
