"""Trends API client: retry with exponential backoff, a circuit breaker, a fallback.

The claims this module makes (and ``examples/test_demo_*.py`` checks):

* transient failures (5xx, connection errors) are retried up to 3 attempts,
  waiting 50 ms, then 100 ms (tenacity ``wait_exponential(multiplier=0.05)``);
* after 5 consecutive failed calls the breaker opens and calls fail fast,
  without reaching the API, for 60 s; then one trial call decides;
* while the API is down or the breaker is open, the last good answer is served.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import pybreaker
import tenacity

RETRY_ATTEMPTS = 3
RETRY_MULTIPLIER = 0.05
BREAKER_FAIL_MAX = 5
BREAKER_RESET_TIMEOUT = 60.0


class TrendsUnavailable(Exception):
    """The trends API failed and no cached answer exists."""


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return isinstance(exc, httpx.TransportError)


@dataclass
class TrendsClient:
    base_url: str
    timeout: float = 2.0
    retry_multiplier: float = RETRY_MULTIPLIER
    breaker: pybreaker.CircuitBreaker = field(
        default_factory=lambda: pybreaker.CircuitBreaker(
            fail_max=BREAKER_FAIL_MAX, reset_timeout=BREAKER_RESET_TIMEOUT
        )
    )
    _cache: list[Any] | None = None
    _client: httpx.Client | None = None

    def __post_init__(self) -> None:
        self._client = httpx.Client(base_url=self.base_url, timeout=self.timeout)
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_transient),
            wait=tenacity.wait_exponential(multiplier=self.retry_multiplier),
            stop=tenacity.stop_after_attempt(RETRY_ATTEMPTS),
            reraise=True,
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> TrendsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fetch_once(self) -> list[Any]:
        assert self._client is not None
        response = self._client.get("/trends")
        response.raise_for_status()
        items = response.json()["items"]
        assert isinstance(items, list)
        return items

    def _fetch_with_retries(self) -> list[Any]:
        return self._retrying(self._fetch_once)

    def get_trends(self) -> list[Any]:
        """Trends from the API, or the last good answer while it is failing."""
        try:
            items = self.breaker.call(self._fetch_with_retries)
        except (pybreaker.CircuitBreakerError, httpx.HTTPError) as exc:
            if self._cache is None:
                raise TrendsUnavailable(str(exc)) from exc
            return self._cache
        self._cache = items
        return items
