"""Thin adapters from the claims to plain values, for the scenario files in
``scenarios/`` (a scenario's ``expect`` compares values; the claims return rich
objects for the Python tests). Each takes the services by parameter name, as the
scenario runner binds them: ``trends_api_url``, ``postgres_dsn``."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from typing import Any

from . import claims
from .store import ArticleStore
from .tasks import TaskExecutor
from .trends import Trends


def _plain(served: object) -> Any:
    if isinstance(served, Trends):
        return {"items": served.items, "stale": served.stale}
    if isinstance(served, claims.Failed):
        return {"failed": served.error.split(":", 1)[0]}
    return served


async def fetch_with_retries(trends_api_url: str) -> Any:
    """One ``get_trends()`` through the retry policy (the API is scripted to fail first)."""
    run = await claims.api_retry_backoff(trends_api_url=trends_api_url, calls=1)
    return _plain(run.served[0])


async def clients_fail_together(trends_api_url: str, clients: int = 8) -> dict[str, int]:
    """*clients* service instances (each its own HTTP connection, production retry policy:
    waits 0.25-0.5 s, then 0.5-1 s) hit the same outage at the same moment; how many
    served live and stale answers. Without jitter they all retry at the same instant (a
    thundering herd)."""
    import asyncio

    from .config import PRODUCTION
    from .trends import TrendsClient

    async def one() -> Any:
        async with TrendsClient(trends_api_url, PRODUCTION) as client:
            return _plain(await client.get_trends())

    served = await asyncio.gather(*(one() for _ in range(clients)))
    return {"live": sum(1 for s in served if s.get("stale") is False),
            "stale": sum(1 for s in served if s.get("stale") is True)}


async def served_while_api_down(trends_api_url: str, calls: int = 8) -> list[Any]:
    """What each call served while the API went down after one good answer."""
    served = await claims.fallback_while_api_down(trends_api_url=trends_api_url, calls=calls)
    return [_plain(s) for s in served]


async def breaker_through_an_outage(trends_api_url: str, breaker: Any) -> None:
    """Calls through the breaker during an outage and after it (on the virtual clock); the
    breaker reports its transitions and calls to ``breaker`` (the scenario's observer)."""
    await claims.breaker_opens_and_recovers(trends_api_url=trends_api_url, observer=breaker)


async def health_grades(postgres_dsn: str) -> dict[str, str]:
    """The pool-health monitor's grade for an idle, busy, exhausted and released pool."""
    report = await claims.pool_health_grades(postgres_dsn=postgres_dsn)
    return {phase: health.grade for phase, health in report.items()}


async def hour_long_task(work_minutes: int = 60) -> str:
    """A one-hour job through the task executor (raises when it is cut off)."""
    import asyncio

    from .config import TESTING

    executor = TaskExecutor(TESTING.task_timeout)

    async def reindex() -> str:
        for _ in range(work_minutes):
            await asyncio.sleep(60)
        return "done"

    return await executor.run("reindex", reindex)


async def serve_then_stop(postgres_dsn: str, trends_api_url: str) -> dict[str, int]:
    """Start the ASGI app, serve each endpoint once, shut down; the status per path."""
    with tempfile.TemporaryDirectory(prefix="content-service-") as workdir:
        run = await claims.serve_and_shut_down(postgres_dsn=postgres_dsn,
                                               trends_api_url=trends_api_url, workdir=workdir)
    return {path: status for path, (status, _) in run.responses.items()}


async def trends_during_retries(trends_api_url: str) -> Any:
    """One ``get_trends()`` whose retries wait 100-400 ms (a blocked loop stands out)."""
    return _plain(await claims.trends_while_retrying(trends_api_url=trends_api_url))


async def article_store(postgres_dsn: str) -> AsyncIterator[ArticleStore]:
    """The store of a running service (scenario ``target.setup``): opened once with a fixed
    pool (its size does not follow the load), one article, closed after the load run."""
    from dataclasses import replace

    from .config import TESTING

    fixed = replace(TESTING, pool_min=TESTING.pool_max)
    store = await ArticleStore.open(postgres_dsn, fixed)
    try:
        await store.migrate()
        await store.add(1, "resilience")
        yield store
    finally:
        await store.close()


async def lookup_article(context: ArticleStore) -> str | None:
    """One article lookup (a load run's call): a pooled query with its timeout."""
    return await context.title(1)


async def articles_after_connection_resets(postgres_dsn: str) -> int:
    """Create the table and count the articles through a lazy pool (every attempt opens
    its own connection): the DB retry policy rides out the connections the scenario
    resets."""
    from dataclasses import replace

    from .config import TESTING

    lazy = replace(TESTING, pool_min=0)
    async with await ArticleStore.open(postgres_dsn, lazy) as store:
        await store.migrate()
        return await store.count()
