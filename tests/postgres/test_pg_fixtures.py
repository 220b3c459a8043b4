"""The postgres / postgres_db fixtures against a real server, with two real drivers."""

from __future__ import annotations

import asyncio
import os
import stat

import psycopg
import pytest

from pytest_resilience.services.postgres import APPLICATION_NAME, PostgresDatabase, PostgresServer


def test_server_attributes(postgres: PostgresServer) -> None:
    assert postgres.host == "127.0.0.1"
    assert 0 < postgres.port < 65536
    assert postgres.user == "postgres"
    assert postgres.password  # the local cluster needs one on TCP
    assert postgres.dsn == (
        f"postgresql://postgres:{postgres.password}@127.0.0.1:{postgres.port}/postgres"
    )
    assert postgres.version.split(".")[0].isdigit()
    if postgres.mode == "local":
        assert postgres.unix_socket is not None
        mode = stat.S_IMODE(os.stat(postgres.unix_socket).st_mode)
        assert mode == 0o700, oct(mode)


def test_psycopg_over_tcp_and_settings(postgres: PostgresServer) -> None:
    with psycopg.connect(postgres.dsn) as conn:
        assert conn.execute("SELECT 1 + 1").fetchone() == (2,)
        if postgres.mode == "local":
            settings = dict(conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('fsync', 'synchronous_commit', 'full_page_writes')"
            ).fetchall())
            assert settings == {"fsync": "off", "synchronous_commit": "off",
                                "full_page_writes": "off"}


def test_connect_helper_is_tagged(postgres: PostgresServer) -> None:
    with postgres.connect() as conn:
        name = conn.execute("SHOW application_name").fetchone()
    assert name == (APPLICATION_NAME,)


@pytest.mark.asyncio
async def test_asyncpg_on_a_fresh_database(postgres_db: PostgresDatabase) -> None:
    import asyncpg

    conn = await asyncpg.connect(postgres_db.dsn)
    try:
        assert await conn.fetchval("SELECT current_database()") == postgres_db.dbname
        await conn.execute("CREATE TABLE t (x int)")
        await conn.executemany("INSERT INTO t VALUES ($1)", [(1,), (2,), (3,)])
        assert await conn.fetchval("SELECT sum(x) FROM t") == 6
    finally:
        await asyncio.wait_for(conn.close(), 10)


def test_psycopg_on_a_fresh_database(postgres_db: PostgresDatabase) -> None:
    with psycopg.connect(postgres_db.dsn, autocommit=True) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (postgres_db.dbname,)
        conn.execute("CREATE TABLE t (x int)")


# The two tests below run in order (pytest keeps file order) and prove isolation:
# the first leaves a table and a row behind, the second must see neither.
_first_db: list[str] = []


def test_isolation_first(postgres_db: PostgresDatabase) -> None:
    with postgres_db.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE leftover (x int)")
        conn.execute("INSERT INTO leftover VALUES (1)")
    _first_db.append(postgres_db.dbname)


def test_isolation_second(postgres_db: PostgresDatabase, postgres: PostgresServer) -> None:
    with postgres_db.connect() as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'leftover'"
        ).fetchone()
    assert tables == (0,)
    if _first_db:  # not when run alone with -k
        assert _first_db[0] != postgres_db.dbname
        postgres.pool.wait_for_drops(timeout=30)  # drops run on their own thread
        with postgres.connect() as conn:
            left = conn.execute(
                "SELECT count(*) FROM pg_database WHERE datname = %s", (_first_db[0],)
            ).fetchone()
        assert left == (0,), "the first test's database was not dropped"
