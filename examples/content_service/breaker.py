"""A circuit breaker: closed -> open after N consecutive failures -> half-open after the
recovery timeout (one trial call) -> closed on success, open again on failure."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from .config import BreakerPolicy
from .defects import planted

T = TypeVar("T")
State = Literal["closed", "open", "half_open"]


class BreakerOpen(Exception):
    """The breaker is open: the call failed fast without reaching the dependency."""


class CircuitBreaker:
    def __init__(
        self,
        policy: BreakerPolicy,
        *,
        name: str = "breaker",
        on_change: Callable[[State, State], None] | None = None,
        defect: str | None = None,
    ) -> None:
        self.policy = policy
        self.name = name
        self.on_change = on_change
        self.defect = defect
        self.state: State = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self._trial_running = False

    def _move(self, new: State) -> None:
        old, self.state = self.state, new
        if self.on_change is not None and old != new:
            self.on_change(old, new)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()`` through the breaker; raises :class:`BreakerOpen` while open."""
        if self.state == "open" and time.monotonic() - self.opened_at >= self.policy.reset_timeout:
            self._move("half_open")
        if self.state == "open" or (self.state == "half_open" and self._trial_running):
            raise BreakerOpen(f"{self.name}: circuit open, failing fast")
        trial = self.state == "half_open"
        self._trial_running = trial
        try:
            result = await fn()
        except Exception:
            self._failed(trial)
            raise
        finally:
            if trial:
                self._trial_running = False
        self.failures = 0
        self._move("closed")
        return result

    def _failed(self, trial: bool) -> None:
        self.failures += 1
        threshold = self.policy.fail_max
        if planted("wrong_breaker_threshold", self.defect):  # DEFECT: off by one
            threshold += 1
        if trial or self.failures >= threshold:
            self.opened_at = time.monotonic()
            self._move("open")
