"""Connections checked out of a pool and never returned (leak kind ``pool-checkout``).

Real pools against the real Postgres of the ``postgres`` fixture (the inner runs
start their own server): asyncpg ``Pool``, psycopg_pool ``ConnectionPool`` /
``AsyncConnectionPool`` and SQLAlchemy's pool. For each library: a correct test
passes, a planted checkout without return fails naming the acquiring line, a
checkout leaked from a pool that predates the test is caught, and a checkout a
wider fixture took before the test and the test returns is not a false alarm.
Each library's tests skip, with the reason, when the library is not installed.
"""

from __future__ import annotations

import importlib.util

import pytest
from leak_helpers import InnerRun, run_inner

NO_PG = ("no Postgres server binaries", "binaries not found")


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install {module.replace('_', '-')})")


def _run(tmp_path_factory: pytest.TempPathFactory, name: str, source: str) -> InnerRun:
    result = run_inner(tmp_path_factory.mktemp(name), {f"test_{name}.py": source},
                       "-v", "-p", "no:randomly")
    if any(text in result.text for text in NO_PG):
        pytest.skip("no PostgreSQL binaries on this machine")
    return result


def _line(source: str, marker: str) -> int:
    return next(i for i, line in enumerate(source.splitlines(), 1) if f"# {marker}" in line)


def _passed(result: InnerRun, test: str) -> None:
    result.fnmatch_lines([f"*::{test} PASSED*"])
    assert f"ERROR at teardown of {test} " not in result.text, result.text


def _leaked(result: InnerRun, test: str, source: str, marker: str, pool: str) -> None:
    line = _line(source, marker)
    pytest.LineMatcher(result.section(test)).fnmatch_lines([
        "*resource leak check failed: * (*1 pool-checkout*)*",
        f"*[[]pool-checkout] 1 pool connection checked out and never returned ({pool}): "
        f"acquired at test_*.py:{line} in {test}",
        f"*created at test_*.py:{line} in {test}  (via stack)",
    ])


# ---------------------------------------------------------------------------
# asyncpg

ASYNCPG = '''
import asyncpg
import pytest
import pytest_asyncio

pytestmark = pytest.mark.no_leaks
KEEP = []


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(postgres):
    pool = await asyncpg.create_pool(postgres.dsn, min_size=4, max_size=4)
    yield pool
    pool.terminate()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def held(pool):
    # taken before any test (a wider fixture), returned by a test
    return await pool.acquire()


@pytest.mark.asyncio(loop_scope="module")
async def test_async_with_and_release(pool):
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1
    conn = await pool.acquire()
    try:
        assert await conn.fetchval("SELECT 2") == 2
    finally:
        await pool.release(conn)
    assert await pool.fetchval("SELECT 3") == 3


@pytest.mark.asyncio(loop_scope="module")
async def test_returns_what_a_fixture_took(pool, held):
    await pool.release(held)


@pytest.mark.asyncio(loop_scope="module")
async def test_checkout_never_returned(pool):
    conn = await pool.acquire()  # LEAK-ASYNCPG
    await conn.fetchval("SELECT 1")
    KEEP.append(conn)


@pytest.mark.asyncio(loop_scope="module")
async def test_async_with_never_exited(pool):
    cm = pool.acquire()
    KEEP.append(await cm.__aenter__())  # LEAK-ASYNCPG-CM


@pytest.mark.asyncio
async def test_own_pool_created_and_closed(postgres):
    own = await asyncpg.create_pool(postgres.dsn, min_size=1, max_size=2)
    async with own.acquire() as conn:
        await conn.fetchval("SELECT 1")
    await own.close()


@pytest.mark.asyncio
async def test_own_pool_terminated_with_a_checkout_out(postgres):
    own = await asyncpg.create_pool(postgres.dsn, min_size=1, max_size=2)
    conn = await own.acquire()
    await conn.fetchval("SELECT 1")
    own.terminate()


@pytest.mark.no_leaks(allow={"pool-checkout": 1})
@pytest.mark.asyncio(loop_scope="module")
async def test_allowed(pool):
    KEEP.append(await pool.acquire())


@pytest.mark.no_leaks(kinds=["task"])
@pytest.mark.asyncio(loop_scope="module")
async def test_kind_not_checked(pool):
    KEEP.append(await pool.acquire())
'''


@pytest.fixture(scope="module")
def asyncpg_run(tmp_path_factory: pytest.TempPathFactory) -> InnerRun:
    _need("asyncpg")
    return _run(tmp_path_factory, "asyncpg", ASYNCPG + "\n")


def test_asyncpg_outcomes(asyncpg_run: InnerRun) -> None:
    asyncpg_run.fnmatch_lines(["*8 passed, 2 errors*"])


@pytest.mark.parametrize("test", [
    "test_async_with_and_release", "test_returns_what_a_fixture_took",
    "test_own_pool_created_and_closed", "test_own_pool_terminated_with_a_checkout_out",
    "test_allowed", "test_kind_not_checked",
])
def test_asyncpg_no_false_alarm(asyncpg_run: InnerRun, test: str) -> None:
    _passed(asyncpg_run, test)


@pytest.mark.parametrize(("test", "marker"), [
    ("test_checkout_never_returned", "LEAK-ASYNCPG"),
    ("test_async_with_never_exited", "LEAK-ASYNCPG-CM"),
])
def test_asyncpg_checkout_from_an_older_pool_is_caught(
    asyncpg_run: InnerRun, test: str, marker: str
) -> None:
    # the module pool has 4 connections: 1 taken by this test (the fixture's `held`
    # went back in an earlier test, or is still out)
    _leaked(asyncpg_run, test, ASYNCPG, marker, "asyncpg pool of 4, * idle")


# ---------------------------------------------------------------------------
# psycopg_pool

PSYCOPG_POOL = '''
import pytest
import pytest_asyncio
from psycopg_pool import AsyncConnectionPool, ConnectionPool

pytestmark = pytest.mark.no_leaks
KEEP = []


@pytest.fixture(scope="module")
def pool(postgres):
    with ConnectionPool(postgres.dsn, min_size=3, max_size=3, open=True) as pool:
        pool.wait()
        yield pool


@pytest.fixture(scope="module")
def held(pool):
    return pool.getconn()


def test_connection_and_putconn(pool):
    with pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    conn = pool.getconn()
    try:
        conn.execute("SELECT 2")
    finally:
        pool.putconn(conn)


def test_returns_what_a_fixture_took(pool, held):
    pool.putconn(held)


def test_getconn_never_returned(pool):
    conn = pool.getconn()  # LEAK-PSYCOPG
    conn.execute("SELECT 1")
    KEEP.append(conn)


def test_own_pool_closed_with_a_checkout_out(postgres):
    own = ConnectionPool(postgres.dsn, min_size=1, max_size=1, open=True)
    conn = own.getconn()
    own.close()  # the pool is gone: its checkout cannot deplete it any more
    conn.close()


@pytest.mark.asyncio
async def test_async_pool_clean(postgres):
    async with AsyncConnectionPool(postgres.dsn, min_size=1, max_size=2, open=False) as own:
        async with own.connection() as conn:
            await conn.execute("SELECT 1")
        conn = await own.getconn()
        await own.putconn(conn)


@pytest.mark.asyncio
async def test_async_getconn_never_returned(postgres):
    own = AsyncConnectionPool(postgres.dsn, min_size=1, max_size=2, open=False)
    await own.open(wait=True)
    KEEP.append(own)
    KEEP.append(await own.getconn())  # LEAK-PSYCOPG-ASYNC
'''


@pytest.fixture(scope="module")
def psycopg_pool_run(tmp_path_factory: pytest.TempPathFactory) -> InnerRun:
    _need("psycopg_pool")
    return _run(tmp_path_factory, "psycopg_pool", PSYCOPG_POOL)


@pytest.mark.parametrize("test", [
    "test_connection_and_putconn", "test_returns_what_a_fixture_took",
    "test_own_pool_closed_with_a_checkout_out", "test_async_pool_clean",
])
def test_psycopg_pool_no_false_alarm(psycopg_pool_run: InnerRun, test: str) -> None:
    _passed(psycopg_pool_run, test)


def test_psycopg_pool_checkout_from_an_older_pool_is_caught(psycopg_pool_run: InnerRun) -> None:
    _leaked(psycopg_pool_run, "test_getconn_never_returned", PSYCOPG_POOL, "LEAK-PSYCOPG",
            "psycopg_pool ConnectionPool of 3, * idle")


def test_psycopg_async_pool_checkout_is_caught(psycopg_pool_run: InnerRun) -> None:
    _leaked(psycopg_pool_run, "test_async_getconn_never_returned", PSYCOPG_POOL,
            "LEAK-PSYCOPG-ASYNC", "psycopg_pool AsyncConnectionPool of *, * idle")


# ---------------------------------------------------------------------------
# SQLAlchemy (pool events), over psycopg

SQLALCHEMY = '''
import pytest
import sqlalchemy

pytestmark = pytest.mark.no_leaks
KEEP = []


@pytest.fixture(scope="module")
def engine(postgres):
    url = postgres.dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sqlalchemy.create_engine(url, pool_size=3, max_overflow=0)
    # open the pool's connections up front: a pool growing lazily inside a test
    # opens a server session the test keeps (the 'db' kind would see it)
    conns = [engine.connect() for _ in range(3)]
    for conn in conns:
        conn.close()
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def held(engine):
    return engine.connect()


def test_connect_and_close(engine):
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
    conn = engine.connect()
    conn.close()


def test_returns_what_a_fixture_took(engine, held):
    held.close()


def test_connection_never_closed(engine):
    conn = engine.connect()  # LEAK-SQLALCHEMY
    conn.execute(sqlalchemy.text("SELECT 1"))
    KEEP.append(conn)
'''


@pytest.fixture(scope="module")
def sqlalchemy_run(tmp_path_factory: pytest.TempPathFactory) -> InnerRun:
    _need("sqlalchemy")
    _need("psycopg")
    return _run(tmp_path_factory, "sqlalchemy", SQLALCHEMY)


@pytest.mark.parametrize("test", ["test_connect_and_close", "test_returns_what_a_fixture_took"])
def test_sqlalchemy_no_false_alarm(sqlalchemy_run: InnerRun, test: str) -> None:
    _passed(sqlalchemy_run, test)


def test_sqlalchemy_checkout_from_an_older_pool_is_caught(sqlalchemy_run: InnerRun) -> None:
    _leaked(sqlalchemy_run, "test_connection_never_closed", SQLALCHEMY, "LEAK-SQLALCHEMY",
            "sqlalchemy QueuePool of 3, * idle")
