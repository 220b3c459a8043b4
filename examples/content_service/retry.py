"""Retry with exponential backoff and jitter (one helper; DB and API pass their own policy)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .config import RetryPolicy
from .defects import planted

T = TypeVar("T")

#: ``on_retry(retry_number, wait_seconds, error)``: called before each wait (logging, metrics)
OnRetry = Callable[[int, float, BaseException], None]


async def retry(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    transient: Callable[[BaseException], bool],
    on_retry: OnRetry | None = None,
    defect: str | None = None,
) -> T:
    """``await call()`` up to ``policy.attempts`` times while it fails transiently."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return await call()
        except Exception as exc:
            if attempt == policy.attempts or not transient(exc):
                raise
            ceiling = policy.ceiling(attempt)
            wait = ceiling / 2 + random.uniform(0, ceiling / 2)  # equal jitter
            if planted("no_jitter", defect):  # DEFECT no_jitter: every client waits the same
                wait = ceiling
            if on_retry is not None:
                on_retry(attempt, wait, exc)
            if planted("blocking_call", defect):  # DEFECT blocking_call: sync sleep in async code
                time.sleep(wait)
            else:
                await asyncio.sleep(wait)
    raise AssertionError("unreachable: policy.attempts must be >= 1")
