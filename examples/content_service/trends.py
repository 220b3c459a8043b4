"""Trends API client (httpx): retries with backoff and jitter, a circuit breaker, and a
fallback to the last good answer while the API is failing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from .breaker import BreakerOpen, CircuitBreaker, State
from .config import TESTING, Settings
from .defects import planted
from .retry import OnRetry, retry


class TrendsUnavailable(Exception):
    """The trends API failed and there is no earlier good answer to fall back on."""


@dataclass(frozen=True)
class Trends:
    items: list[str]
    stale: bool  # True: the last good answer, served because the API is failing


def transient(exc: BaseException) -> bool:
    """Worth retrying: transport errors, 5xx and 429."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return isinstance(exc, httpx.TransportError)


class TrendsClient:
    """``get_trends()`` = breaker(retry(one GET /trends)), or the last good answer."""

    def __init__(
        self,
        api_url: str,
        settings: Settings = TESTING,
        *,
        defect: str | None = None,
        on_retry: OnRetry | None = None,
        on_state_change: Callable[[State, State], None] | None = None,
    ) -> None:
        self.settings = settings
        self.defect = defect
        self.on_retry = on_retry
        self.http = httpx.AsyncClient(base_url=api_url, timeout=settings.api_timeout)
        self.breaker = CircuitBreaker(
            settings.breaker, name="trends-api", on_change=on_state_change, defect=defect
        )
        self.last_good: list[str] | None = None

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> TrendsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def fetch_once(self) -> list[str]:
        """One request, no retry, no breaker."""
        response = await self.http.get("/trends")
        response.raise_for_status()
        body: Any = response.json()
        return [str(item) for item in body["items"]]

    async def fetch_live(self) -> list[str]:
        """Through the breaker, with retries; raises when the API (or the breaker) says no."""
        return await self.breaker.call(
            lambda: retry(
                lambda: self.fetch_once(), self.settings.api_retry, transient=transient,
                on_retry=self.on_retry, defect=self.defect,
            )
        )

    async def get_trends(self) -> Trends:
        """Live trends, or the last good answer while the API is failing."""
        try:
            items = await self.fetch_live()
        except (BreakerOpen, httpx.HTTPError) as exc:
            if self.last_good is None:
                raise TrendsUnavailable(f"trends API failed: {exc!r}") from exc
            if planted("no_fallback", self.defect):  # DEFECT no_fallback: the error reaches callers
                raise TrendsUnavailable(f"trends API failed: {exc!r}") from exc
            return Trends(self.last_good, stale=True)
        self.last_good = items
        return Trends(items, stale=False)
