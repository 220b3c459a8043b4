"""Demo (main job): the article store's query timeout, checked against a stalled network.

Claims: "every query has a 0.5 s timeout; a stalled query fails on time, the event loop
keeps serving, and the pool recovers once the network is back"; "no connection leaks".
"""

from __future__ import annotations

import asyncio

import pytest
from content_service.store import ArticleStore

from pytest_resilience import expect_timeout

pytestmark = [pytest.mark.asyncio, pytest.mark.no_leaks]


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
            # asyncpg raises at command_timeout, but leaving pool.acquire() waits up to
            # another timeout for the server-side cancel: the caller sees 0.5-1.0 s.
            async with expect_timeout(within=0.5, tolerance=(0.005, 0.6), max_loop_lag=0.1,
                                      what="article query"):
                await store.title(1)
        assert await asyncio.wait_for(store.title(1), 5) == "hello"  # pool recovered
    finally:
        await store.close()
