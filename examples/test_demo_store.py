"""Demo (main job): the article store's query timeout, checked against a stalled network.

Claim: "every query has a 0.5 s timeout; a stalled query fails on time, the event loop
keeps serving, and the pool recovers once the network is back."
"""

from __future__ import annotations

import asyncio
import time

import pytest
from content_service.store import ArticleStore

pytestmark = pytest.mark.asyncio


async def test_queries_work_through_the_proxy(pg_proxy):
    store = await ArticleStore.open(pg_proxy.dsn)
    try:
        await store.migrate()
        await store.add(1, "hello")
        assert await store.title(1) == "hello"
    finally:
        await store.close()


async def test_stalled_query_times_out_and_pool_recovers(pg_proxy):
    store = await ArticleStore.open(pg_proxy.dsn, query_timeout=0.5)
    try:
        await store.migrate()
        await store.add(1, "hello")
        with pg_proxy.latency(2000):  # every reply from Postgres 2 s late
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await store.title(1)
            elapsed = time.monotonic() - started
        # asyncpg raises at command_timeout; leaving the pool can add up to another
        # timeout while it cancels server-side (see reference/libraries.md).
        assert 0.5 <= elapsed < 0.5 * 2 + 0.5, elapsed
        assert await asyncio.wait_for(store.title(1), 5) == "hello"  # pool recovered
    finally:
        await store.close()
