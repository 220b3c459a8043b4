"""The Postgres fault stage with asyncpg (statement cache on)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from pytest_resilience.pgwire import PgFaultProxy

pytestmark = [pytest.mark.asyncio, pytest.mark.usefixtures("accounts")]


async def test_nth_fires_once_with_the_statement_cache(stage: PgFaultProxy, dsn: str) -> None:
    conn = await asyncpg.connect(dsn, statement_cache_size=100)
    try:
        with stage.sqlstate("40001", match=r"UPDATE accounts", nth=3) as rule:
            outcomes = []
            for i in range(6):
                try:
                    async with conn.transaction():
                        await conn.execute(
                            "UPDATE accounts SET balance = balance + $1 WHERE id = 1", i)
                    outcomes.append("ok")
                except asyncpg.exceptions.SerializationError as exc:
                    outcomes.append(exc.sqlstate)
        assert outcomes == ["ok", "ok", "40001", "ok", "ok", "ok"]
        assert (rule.seen, rule.fired) == (6, 1)
        balance = await conn.fetchval("SELECT balance FROM accounts WHERE id = 1")
        assert balance == 100 + 15 - 2  # every increment but i=2
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await asyncio.wait_for(conn.close(), 10)


@pytest.mark.parametrize(("code", "error"), [
    ("40001", asyncpg.exceptions.SerializationError),
    ("40P01", asyncpg.exceptions.DeadlockDetectedError),
    ("23505", asyncpg.exceptions.UniqueViolationError),
    ("57014", asyncpg.exceptions.QueryCanceledError),
])
async def test_each_sqlstate(stage: PgFaultProxy, dsn: str, code: str,
                             error: type[Exception]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        with stage.sqlstate(code, match="FROM accounts"):
            with pytest.raises(error):  # extended protocol, prepared statement
                await conn.fetchval("SELECT balance FROM accounts WHERE id = $1", 1)
            with pytest.raises(error):  # simple protocol
                await conn.execute("SELECT balance FROM accounts")
        assert await conn.fetchval("SELECT balance FROM accounts WHERE id = $1", 1) == 100
    finally:
        await asyncio.wait_for(conn.close(), 10)


async def test_commit_time_failure(stage: PgFaultProxy, dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        with stage.sqlstate("40001", match=r"^COMMIT;?$"), \
                pytest.raises(asyncpg.exceptions.SerializationError):
            async with conn.transaction():
                await conn.execute("UPDATE accounts SET balance = 0 WHERE id = 1")
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT balance FROM accounts WHERE id = 1") == 100
    finally:
        await asyncio.wait_for(conn.close(), 10)


async def test_error_inside_a_transaction_then_rollback(stage: PgFaultProxy, dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        tx = conn.transaction()
        await tx.start()
        with stage.sqlstate("40001", match="UPDATE"), \
                pytest.raises(asyncpg.exceptions.SerializationError):
            await conn.execute("UPDATE accounts SET balance = $1 WHERE id = 1", 0)
        await tx.rollback()
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await asyncio.wait_for(conn.close(), 10)


async def test_fatal_and_refused_startup(stage: PgFaultProxy, dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        with stage.fatal("57P01", match="pg_sleep"), \
                pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError) as info:
            await conn.fetchval("SELECT pg_sleep(0)")
        # asyncpg reports a FATAL in the middle of a query as the connection lost,
        # caused by the server's error
        assert isinstance(info.value.__cause__, asyncpg.exceptions.AdminShutdownError)
        assert conn.is_closed()
    finally:
        conn.terminate()
    with stage.refuse_startup(n=1), pytest.raises(asyncpg.exceptions.TooManyConnectionsError):
        await asyncpg.connect(dsn)


async def test_cut_mid_response(stage: PgFaultProxy, dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        with stage.cut_mid_response(match="generate_series"), \
                pytest.raises((asyncpg.exceptions.ConnectionDoesNotExistError, ConnectionError)):
            await conn.fetch("SELECT g FROM generate_series(1, 1000) g")
    finally:
        conn.terminate()


async def test_cancel_reaches_the_right_backend(stage: PgFaultProxy, dsn: str) -> None:
    other = await asyncpg.connect(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        pid = conn.get_server_pid()
        task = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(30)"))
        while await other.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
                pid) == 0:
            pass
        task.cancel()  # asyncpg sends a CancelRequest on a new connection
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await conn.fetchval("SELECT 1") == 1  # the backend stopped sleeping
        assert [c.pid for c in stage.cancels][-1:] == [pid]
        assert stage.cancels[-1].connection is not None
    finally:
        await asyncio.wait_for(conn.close(), 10)
        await asyncio.wait_for(other.close(), 10)
