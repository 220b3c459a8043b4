"""Article store on Postgres: an asyncpg pool, a timeout on every query, DB retries.

A query that hits ``query_timeout`` raises ``TimeoutError`` at once. asyncpg sends the
server a CancelRequest, so the query stops there too; the connection goes back to the
pool in the background once the cancel is through (bounded by ``CANCEL_BUDGET``: after
that it is terminated), so the caller does not wait for a cancel crossing a stalled
network. Terminating the connection at once instead would drop the cancel and leave the
query running on the server (``scenarios/query_timeout.yaml`` checks this).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from .config import TESTING, Settings
from .defects import planted
from .retry import OnRetry, retry

#: how long a timed-out query's connection may wait for its cancel before it is terminated
CANCEL_BUDGET = 2.0

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
        self._releasing: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, dsn: str, settings: Settings = TESTING, *, defect: str | None = None,
                   on_retry: OnRetry | None = None) -> ArticleStore:
        pool = await asyncpg.create_pool(
            dsn, min_size=settings.pool_min, max_size=settings.pool_max
        )
        return cls(pool, settings, defect, on_retry, dsn)

    async def close(self) -> None:
        if self._releasing:  # timed-out queries' connections, still cancelling
            await asyncio.wait(self._releasing, timeout=CANCEL_BUDGET + 1.0)
        await self.pool.close()
        for conn in self._side_connections:  # only the planted defect opens these
            conn.terminate()

    async def __aenter__(self) -> ArticleStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _once(self, method: str, sql: str, *args: Any, timeout: float | None) -> Any:
        conn = await self.pool.acquire(timeout=timeout)
        try:
            return await getattr(conn, method)(sql, *args, timeout=timeout)
        except (TimeoutError, asyncio.CancelledError):
            if planted("no_server_cancel", self.defect):  # DEFECT: drops the cancel
                conn.terminate()  # "do not wait for the server": the query runs on there
                raise
            # asyncpg is cancelling the query on the server: let the cancel go through,
            # and hand the connection back once it has, without making the caller wait
            task = asyncio.ensure_future(self.pool.release(conn, timeout=CANCEL_BUDGET))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)
            conn = None
            raise
        finally:
            if conn is not None:
                await self.pool.release(conn)

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
