"""Article store on Postgres: an asyncpg pool, a timeout on every query, DB retries.

A query that hits ``query_timeout`` raises ``TimeoutError`` and its connection is
terminated: asyncpg would otherwise wait up to another timeout for the server to
confirm the cancel (through the same stalled network) before the caller hears of it.
The pool opens a fresh connection for the next query.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from .config import TESTING, Settings
from .defects import planted
from .retry import OnRetry, retry

SCHEMA = "CREATE TABLE IF NOT EXISTS articles (id int PRIMARY KEY, title text NOT NULL)"


def transient(exc: BaseException) -> bool:
    """Worth retrying: the connection failed (never a timeout: that would pile up load)."""
    if isinstance(exc, TimeoutError):
        return False
    return isinstance(
        exc, ConnectionError | asyncpg.PostgresConnectionError | asyncpg.ConnectionDoesNotExistError
    )


class ArticleStore:
    def __init__(self, pool: Any, settings: Settings, defect: str | None,
                 on_retry: OnRetry | None, dsn: str = "") -> None:
        self.pool = pool
        self.settings = settings
        self.defect = defect
        self.on_retry = on_retry
        self.dsn = dsn
        self.lookups = 0
        self._side_connections: list[Any] = []

    @classmethod
    async def open(cls, dsn: str, settings: Settings = TESTING, *, defect: str | None = None,
                   on_retry: OnRetry | None = None) -> ArticleStore:
        pool = await asyncpg.create_pool(
            dsn, min_size=settings.pool_min, max_size=settings.pool_max
        )
        return cls(pool, settings, defect, on_retry, dsn)

    async def close(self) -> None:
        await self.pool.close()
        for conn in self._side_connections:  # only the planted defect opens these
            conn.terminate()

    async def __aenter__(self) -> ArticleStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _once(self, method: str, sql: str, *args: Any, timeout: float | None) -> Any:
        async with self.pool.acquire(timeout=timeout) as conn:
            try:
                return await getattr(conn, method)(sql, *args, timeout=timeout)
            except (TimeoutError, asyncio.CancelledError):
                conn.terminate()  # do not wait for the server to confirm the cancel
                raise

    async def _query(self, method: str, sql: str, *args: Any) -> Any:
        timeout: float | None = self.settings.query_timeout
        if planted("no_query_timeout", self.defect):  # DEFECT no_query_timeout
            timeout = None
        return await retry(
            lambda: self._once(method, sql, *args, timeout=timeout), self.settings.db_retry,
            transient=transient, on_retry=self.on_retry, defect=self.defect,
        )

    async def migrate(self) -> None:
        await self._query("execute", SCHEMA)

    async def add(self, article_id: int, title: str) -> None:
        await self._query("execute", "INSERT INTO articles (id, title) VALUES ($1, $2)",
                          article_id, title)

    async def title(self, article_id: int) -> str | None:
        self.lookups += 1
        if planted("slow_session_leak", self.defect) and self.lookups % 100 == 0:
            # DEFECT slow_session_leak: an audit connection opened beside the pool, never
            # closed (one session more every 100 lookups, until close())
            self._side_connections.append(await asyncpg.connect(self.dsn))
        value = await self._query("fetchval", "SELECT title FROM articles WHERE id = $1",
                                  article_id)
        return None if value is None else str(value)

    async def count(self) -> int:
        return int(await self._query("fetchval", "SELECT count(*) FROM articles"))

    async def ping(self, timeout: float) -> float | None:
        """Seconds for ``SELECT 1`` (no retry), or ``None`` if it failed or took > *timeout*."""
        started = time.monotonic()
        try:
            await self._once("fetchval", "SELECT 1", timeout=timeout)
        except (TimeoutError, ConnectionError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return None
        return time.monotonic() - started
