"""Database connections: leaks seen at the server (``pg_stat_activity``) and on the
client (asyncpg / psycopg objects), with where they were created.

Needs the ``postgres`` fixture's real server; the inner runs start their own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from leak_helpers import InnerRun, run_inner

PG = '''
import asyncpg
import psycopg
import pytest

pytestmark = pytest.mark.no_leaks
KEEP = []


@pytest.mark.asyncio
async def test_pool_connection_acquired_never_released(postgres):
    # min_size=1: the pool opens its connection here, acquire() hands it out
    pool = await asyncpg.create_pool(postgres.dsn, min_size=1, max_size=2)  # LEAK-POOL
    conn = await pool.acquire()
    await conn.fetchval("SELECT 1")


@pytest.mark.asyncio
async def test_connection_never_closed(postgres):
    conn = await asyncpg.connect(postgres.dsn)  # LEAK-CONN
    await conn.fetchval("SELECT 2")
    KEEP.append(conn)


def test_psycopg_connection_never_closed(postgres):
    conn = psycopg.connect(postgres.dsn)  # LEAK-PSYCOPG
    conn.execute("SELECT 3")
    KEEP.append(conn)


@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.asyncio
async def test_asyncpg_clean(run, postgres):
    pool = await asyncpg.create_pool(postgres.dsn, min_size=1, max_size=2)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1
    await pool.close()
    conn = await asyncpg.connect(postgres.dsn)
    await conn.close()


@pytest.mark.parametrize("run", range(RUNS))
def test_psycopg_clean(run, postgres):
    with psycopg.connect(postgres.dsn) as conn:
        conn.execute("SELECT 1")
    with postgres.connect() as conn:
        conn.execute("SELECT 1")
'''.replace("RUNS", "20")


@pytest.fixture(scope="module")
def pg_run(tmp_path_factory: pytest.TempPathFactory) -> InnerRun:
    return run_inner(tmp_path_factory.mktemp("pg"), {"test_pg.py": PG})


def _line(marker: str) -> int:
    return next(i for i, line in enumerate(PG.splitlines(), 1) if f"# {marker}" in line)


def test_outcomes(pg_run: InnerRun) -> None:
    if "no Postgres server binaries" in pg_run.text or "binaries not found" in pg_run.text:
        pytest.skip("no PostgreSQL binaries on this machine")
    pg_run.fnmatch_lines(["*43 passed, 3 errors*"])


def test_pool_connection_is_seen_at_the_server(pg_run: InnerRun) -> None:
    pytest.LineMatcher(pg_run.section("test_pool_connection_acquired_never_released")
                       ).fnmatch_lines([
        "*[[]db] Postgres server session still open at the end of the test",
        "*server session pid * (db postgres, client 127.0.0.1:*, idle since *, "
        "last query 'SELECT 1')",
        "*client side: asyncpg.Connection",
        f"*created at test_pg.py:{_line('LEAK-POOL')} in "
        "test_pool_connection_acquired_never_released*",
    ])


def test_connection_is_named_with_its_server_session(pg_run: InnerRun) -> None:
    pytest.LineMatcher(pg_run.section("test_connection_never_closed")).fnmatch_lines([
        "*[[]db] asyncpg.Connection never closed",
        "*server session pid * (db postgres, client 127.0.0.1:*, idle since *, "
        "last query 'SELECT 2')",
        f"*created at test_pg.py:{_line('LEAK-CONN')} in test_connection_never_closed*",
    ])


def test_psycopg_connection(pg_run: InnerRun) -> None:
    pytest.LineMatcher(pg_run.section("test_psycopg_connection_never_closed")).fnmatch_lines([
        "*[[]db] psycopg.Connection never closed",
        "*server session pid * last query 'SELECT 3')",
        f"*created at test_pg.py:{_line('LEAK-PSYCOPG')} in "
        "test_psycopg_connection_never_closed*",
    ])


def test_terminated_by_postgres_db_is_reported(tmp_path: Path) -> None:
    result = run_inner(tmp_path, {"test_db.py": '''
import asyncpg
import pytest

KEEP = []

@pytest.mark.no_leaks
@pytest.mark.asyncio
async def test_leaks_into_postgres_db(postgres_db):
    KEEP.append(await asyncpg.connect(postgres_db.dsn))
'''})
    if "no Postgres server binaries" in result.text or "binaries not found" in result.text:
        pytest.skip("no PostgreSQL binaries on this machine")
    result.fnmatch_lines([
        "*ERROR at teardown of test_leaks_into_postgres_db*",
        "*[[]db] asyncpg.Connection never closed",
        "*created at test_db.py:10 in test_leaks_into_postgres_db*",
    ])
