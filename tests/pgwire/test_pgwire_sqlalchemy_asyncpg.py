"""The Postgres fault stage through SQLAlchemy's asyncpg dialect (a few trials each): the
SQLSTATE reaches the caller as the dialect's exception wrapping asyncpg's own class, the
connection goes on after a rollback, a FATAL invalidates it and the pool replaces it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from pytest_resilience.pgwire import PgFaultProxy

sqlalchemy = pytest.importorskip("sqlalchemy")
from sqlalchemy import exc, text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine  # noqa: E402

pytestmark = [pytest.mark.asyncio, pytest.mark.usefixtures("accounts")]
TRIALS = 3


@pytest_asyncio.fixture
async def engine(dsn: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://"),
                                 pool_size=1, max_overflow=0, pool_pre_ping=True)
    try:
        yield engine
    finally:
        await engine.dispose()


def _asyncpg_error(error: BaseException) -> BaseException | None:
    """asyncpg's exception behind SQLAlchemy's (``.orig`` is the adapter's, caused by it)."""
    orig = getattr(error, "orig", None)
    return orig.__cause__ if orig is not None else None


@pytest.mark.parametrize(("code", "wrapper", "cls"), [
    ("40001", exc.DBAPIError, asyncpg.exceptions.SerializationError),
    ("40P01", exc.DBAPIError, asyncpg.exceptions.DeadlockDetectedError),
    ("57014", exc.DBAPIError, asyncpg.exceptions.QueryCanceledError),
    ("23505", exc.IntegrityError, asyncpg.exceptions.UniqueViolationError),
])
async def test_sqlstate_then_rollback_then_select_1(
    stage: PgFaultProxy, engine: AsyncEngine, code: str, wrapper: type[Exception],
    cls: type[Exception],
) -> None:
    async with engine.connect() as conn:
        for _ in range(TRIALS):
            with stage.sqlstate(code, match="UPDATE accounts", times=1), \
                    pytest.raises(wrapper) as info:
                await conn.execute(text("UPDATE accounts SET balance = 0 WHERE id = 1"))
            assert isinstance(_asyncpg_error(info.value), cls)
            assert getattr(getattr(info.value, "orig", None), "sqlstate", None) == code
            await conn.rollback()
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
            await conn.commit()
    async with engine.connect() as conn:
        balance = (await conn.execute(text("SELECT balance FROM accounts WHERE id = 1")))
        assert balance.scalar() == 100
    assert [i.sqlstate for i in stage.injections] == [code] * TRIALS


async def test_commit_time_serialization_failure(stage: PgFaultProxy,
                                                 engine: AsyncEngine) -> None:
    for _ in range(TRIALS):
        with stage.sqlstate("40001", match=r"^COMMIT;?$", times=1), \
                pytest.raises(exc.DBAPIError) as info:
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE accounts SET balance = 0 WHERE id = 1"))
        assert isinstance(_asyncpg_error(info.value),
                          asyncpg.exceptions.SerializationError)
    async with engine.connect() as conn:
        balance = await conn.execute(text("SELECT balance FROM accounts WHERE id = 1"))
        assert balance.scalar() == 100


async def test_fatal_invalidates_and_the_pool_reconnects(stage: PgFaultProxy,
                                                         engine: AsyncEngine) -> None:
    for _ in range(TRIALS):
        async with engine.connect() as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
            with stage.fatal("57P01", match="pg_sleep", times=1), \
                    pytest.raises(exc.DBAPIError) as info:
                await conn.execute(text("SELECT pg_sleep(0)"))
            assert info.value.connection_invalidated
            cause = _asyncpg_error(info.value)
            assert isinstance(cause, asyncpg.exceptions.ConnectionDoesNotExistError)
            assert isinstance(cause.__cause__, asyncpg.exceptions.AdminShutdownError)
        async with engine.connect() as conn:  # a new connection from the pool
            assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar() != pid


async def test_refused_startup(stage: PgFaultProxy, engine: AsyncEngine) -> None:
    with stage.refuse_startup(n=1), pytest.raises(exc.DBAPIError) as info:
        async with engine.connect():
            pass
    assert isinstance(_asyncpg_error(info.value), asyncpg.exceptions.TooManyConnectionsError)
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1
