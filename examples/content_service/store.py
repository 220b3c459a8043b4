"""Article store on Postgres: an asyncpg pool, every query with a timeout.

Claim checked by the demos: a query that stalls (slow network, slow server)
fails with ``TimeoutError`` after ``query_timeout`` seconds, the event loop keeps
serving meanwhile, and the pool serves the next query once the fault is gone.
"""

from __future__ import annotations

from typing import Any

import asyncpg

SCHEMA = """
CREATE TABLE IF NOT EXISTS articles (id int PRIMARY KEY, title text NOT NULL);
"""


class ArticleStore:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, query_timeout: float = 0.5) -> ArticleStore:
        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=4, command_timeout=query_timeout
        )
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    async def migrate(self) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(SCHEMA)

    async def add(self, article_id: int, title: str) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO articles (id, title) VALUES ($1, $2)", article_id, title
            )

    async def title(self, article_id: int) -> str | None:
        async with self._pool.acquire() as conn:
            value = await conn.fetchval("SELECT title FROM articles WHERE id = $1", article_id)
        return None if value is None else str(value)
