"""What the backoff tests share: an always-down dependency, and a tenacity run whose
waits are recorded, not slept."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_resilience.observe.attempts import TenacityWaits


class Down(ConnectionError):
    pass


def always_down() -> None:
    raise Down("dependency is down")


def no_sleep(seconds: float) -> None:
    """tenacity's ``sleep=`` hook: the waits are recorded, not slept."""


def run_tenacity(wait: Any, attempts: int) -> TenacityWaits:
    """Retry :func:`always_down` ``attempts`` times with ``wait``; the requested waits."""
    import tenacity

    rec = TenacityWaits()
    retrying = tenacity.Retrying(
        wait=wait, stop=tenacity.stop_after_attempt(attempts), sleep=no_sleep, reraise=True,
        retry=tenacity.retry_if_exception_type(Down),
    )
    rec.attach(retrying)
    with pytest.raises(Down):
        retrying(always_down)
    return rec
