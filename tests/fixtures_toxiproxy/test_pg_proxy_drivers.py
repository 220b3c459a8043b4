"""asyncpg and psycopg 3 through ``pg_proxy`` see each toxic's effect.

Tolerances are generous on purpose (2-core machine, other suites running): a
latency toxic may never make a round trip *shorter* than its delay, and the
upper bounds only catch "the toxic did nothing" or "it hung".
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from pytest_resilience.services.toxiproxy import PgProxy

asyncpg = pytest.importorskip("asyncpg")
psycopg = pytest.importorskip("psycopg")

CONNECT_TIMEOUT = 5
# What asyncpg raises for a connection the proxy closed: in the middle of the
# operation, or (when it noticed first) before it.
CLOSED = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    OSError,
)


# --------------------------------------------------------------------------- psycopg


def test_psycopg_connects_through_the_proxy(pg_proxy: PgProxy) -> None:
    assert f"port={pg_proxy.port}" in pg_proxy.dsn or f":{pg_proxy.port}/" in pg_proxy.dsn
    with psycopg.connect(pg_proxy.dsn, connect_timeout=CONNECT_TIMEOUT) as conn:
        row = conn.execute("SELECT current_database(), current_user").fetchone()
    assert row == (pg_proxy.dbname, pg_proxy.user)
    with psycopg.connect(pg_proxy.direct_dsn, connect_timeout=CONNECT_TIMEOUT) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (pg_proxy.dbname,)


def test_psycopg_latency(pg_proxy: PgProxy) -> None:
    with psycopg.connect(pg_proxy.dsn, connect_timeout=CONNECT_TIMEOUT,
                         autocommit=True) as conn:
        conn.execute("SELECT 1")
        with pg_proxy.latency(200):
            start = time.perf_counter()
            conn.execute("SELECT 1")
            slow = time.perf_counter() - start
        start = time.perf_counter()
        conn.execute("SELECT 1")
        fast = time.perf_counter() - start
    assert 0.199 <= slow < 3.0, f"SELECT 1 under latency(200) took {slow * 1000:.1f} ms"
    assert fast < 0.15, f"SELECT 1 after the toxic was removed took {fast * 1000:.1f} ms"


def test_psycopg_down(pg_proxy: PgProxy) -> None:
    conn = psycopg.connect(pg_proxy.dsn, connect_timeout=CONNECT_TIMEOUT, autocommit=True)
    try:
        with pg_proxy.down():
            with pytest.raises(psycopg.OperationalError, match=r"(?i)refused"):
                psycopg.connect(pg_proxy.dsn, connect_timeout=CONNECT_TIMEOUT)
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")  # the live connection was closed
    finally:
        conn.close()
    with psycopg.connect(pg_proxy.dsn, connect_timeout=CONNECT_TIMEOUT) as again:
        assert again.execute("SELECT 1").fetchone() == (1,)


def test_psycopg_timeout_stalls_then_closes(pg_proxy: PgProxy) -> None:
    conn = psycopg.connect(pg_proxy.dsn, connect_timeout=CONNECT_TIMEOUT, autocommit=True)
    try:
        with pg_proxy.timeout(500):
            start = time.perf_counter()
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
            elapsed = time.perf_counter() - start
    finally:
        conn.close()
    assert 0.45 <= elapsed < 5.0, f"timeout(500) ended the query after {elapsed * 1000:.1f} ms"


def test_psycopg_reset_peer(pg_proxy: PgProxy) -> None:
    # libpq words a reset (ECONNRESET) like an EOF, so the engine's event log
    # tells which one it was; the raw-socket tests check the RST itself.
    since = max((e.seq for e in pg_proxy.events()), default=0)
    with pg_proxy.reset_peer(0), pytest.raises(
        psycopg.OperationalError, match="server closed the connection unexpectedly"
    ):
        psycopg.connect(pg_proxy.dsn, connect_timeout=CONNECT_TIMEOUT)
    fired = [e for e in pg_proxy.events(since=since) if e.kind == "toxic_fired"]
    assert [e.data["type"] for e in fired] == ["reset_peer"]


# --------------------------------------------------------------------------- asyncpg


async def _connect(dsn: str) -> Any:
    return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)


@pytest.mark.asyncio
async def test_asyncpg_latency(pg_proxy: PgProxy) -> None:
    conn = await _connect(pg_proxy.dsn)
    try:
        await conn.execute("SELECT 1")
        with pg_proxy.latency(200):
            start = time.perf_counter()
            await conn.execute("SELECT 1")  # simple protocol: one round trip
            slow = time.perf_counter() - start
        start = time.perf_counter()
        await conn.execute("SELECT 1")
        fast = time.perf_counter() - start
    finally:
        await conn.close()
    assert 0.199 <= slow < 3.0, f"SELECT 1 under latency(200) took {slow * 1000:.1f} ms"
    assert fast < 0.15, f"SELECT 1 after the toxic was removed took {fast * 1000:.1f} ms"


@pytest.mark.asyncio
async def test_asyncpg_down(pg_proxy: PgProxy) -> None:
    conn = await _connect(pg_proxy.dsn)
    try:
        with pg_proxy.down():
            with pytest.raises(ConnectionRefusedError):
                await _connect(pg_proxy.dsn)
            with pytest.raises(CLOSED):  # the live connection was closed
                await conn.execute("SELECT 1")
    finally:
        conn.terminate()
    again = await _connect(pg_proxy.dsn)
    try:
        assert await again.fetchval("SELECT 1") == 1
    finally:
        await again.close()


@pytest.mark.asyncio
async def test_asyncpg_timeout_stalls_then_closes(pg_proxy: PgProxy) -> None:
    conn = await _connect(pg_proxy.dsn)
    try:
        with pg_proxy.timeout(500):
            start = time.perf_counter()
            with pytest.raises(CLOSED):
                await conn.execute("SELECT 1")
            elapsed = time.perf_counter() - start
    finally:
        conn.terminate()
    assert 0.45 <= elapsed < 5.0, f"timeout(500) ended the query after {elapsed * 1000:.1f} ms"


@pytest.mark.asyncio
async def test_asyncpg_reset_peer(pg_proxy: PgProxy) -> None:
    with pg_proxy.reset_peer(0), pytest.raises(ConnectionResetError):
        await _connect(pg_proxy.dsn)


@pytest.mark.asyncio
async def test_asyncpg_limit_data_cuts_the_reply(pg_proxy: PgProxy) -> None:
    conn = await _connect(pg_proxy.dsn)
    try:
        with pg_proxy.limit_data(100), pytest.raises(CLOSED):
            await conn.fetchval("SELECT repeat('x', 10000)")
    finally:
        conn.terminate()
