"""Settings: production values, and the same service scaled down for tests.

Timeouts that tests wait out in real time (query timeout, retry waits, API
timeout) are scaled down in :data:`TESTING`; the long ones (breaker recovery
60 s, task limit 15 min) keep their production values, because tests run them on
the virtual clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with equal jitter: retry *n* waits ``t/2 + U(0, t/2)``,
    ``t = min(cap, initial * multiplier ** (n - 1))``."""

    attempts: int
    initial: float
    multiplier: float = 2.0
    cap: float = 10.0

    def ceiling(self, retry: int) -> float:
        """The un-jittered wait before retry *retry* (1 = the first retry)."""
        return min(self.cap, self.initial * self.multiplier ** (retry - 1))


@dataclass(frozen=True)
class BreakerPolicy:
    """Open after ``fail_max`` consecutive failed calls; one trial after ``reset_timeout``."""

    fail_max: int = 5
    reset_timeout: float = 60.0


@dataclass(frozen=True)
class Settings:
    query_timeout: float = 10.0  # per query, the 5-30 s class
    pool_min: int = 1
    pool_max: int = 10
    db_retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(3, initial=0.2, cap=2.0))
    api_retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(4, initial=0.5, cap=8.0))
    api_timeout: float = 5.0
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    task_timeout: float = 15 * 60.0
    health_slow_ping: float = 1.0  # a ping slower than this: degraded
    health_busy_share: float = 0.75  # this share of the pool in use: degraded
    health_ping_timeout: float = 2.0


PRODUCTION = Settings()

TESTING = replace(
    PRODUCTION,
    query_timeout=0.3,
    pool_max=4,
    db_retry=RetryPolicy(3, initial=0.025, cap=1.0),
    api_retry=RetryPolicy(4, initial=0.02, cap=1.0),
    api_timeout=1.0,
    health_slow_ping=0.25,
    health_ping_timeout=0.5,
)
