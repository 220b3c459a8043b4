"""Timeout verdicts: synthetic operations, then asyncpg / psycopg against a real Postgres."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_resilience.verdicts.timeout import (
    TimeoutMismatch,
    aexpect_query_cancelled,
    aexpect_recovers,
    expect_query_cancelled,
    expect_timeout,
    expect_timeout_call,
)

SLOW_QUERY = "SELECT pg_sleep(5)"
#: Postgres round trips and cancellation on a machine with both cores busy: up to
#: 50 ms late was seen; the misconfigured cases below are off by 300 ms or more.
PG_TOLERANCE = (0.005, 0.15)


def block_the_loop(seconds: float) -> None:
    """A CPU-bound stretch in async code: the fault the loop-lag probe must see."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def join_abandoned(name: str) -> None:
    """Wait (bounded) for the worker thread expect_timeout_call left behind."""
    for thread in threading.enumerate():
        if thread.name == name:
            thread.join(5.0)
            assert not thread.is_alive(), f"{name} still running"


@pytest.fixture
def silent_peer() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback pair whose server end never says anything."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    try:
        yield client, server
    finally:
        client.close()
        server.close()


# -- synthetic, async ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_wait_for_times_out_on_time() -> None:
    async with expect_timeout(within=0.1, max_loop_lag=0.1) as result:
        await asyncio.wait_for(asyncio.Event().wait(), 0.1)
    assert result.verdict is not None
    assert result.verdict.passed
    assert result.loop_lag is not None
    assert result.loop_lag <= 0.1


@pytest.mark.asyncio
async def test_a_shorter_timeout_than_claimed_fails() -> None:
    with pytest.raises(TimeoutMismatch, match=r"gave up \d+(\.\d+)? ms before its timeout"):
        async with expect_timeout(within=1.0):
            await asyncio.wait_for(asyncio.Event().wait(), 0.1)


@pytest.mark.asyncio
async def test_no_timeout_at_all_is_reported_not_hung() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutMismatch) as info:
        async with expect_timeout(within=0.1, give_up_after=0.3, what="fetch"):
            await asyncio.Event().wait()
    assert time.monotonic() - started < 2.0
    text = str(info.value)
    assert "nothing: still running after 300 ms" in text
    assert "the fetch has no effective timeout" in text
    assert info.value.verdict.observed["gave_up"] is True


@pytest.mark.asyncio
async def test_wrong_exception_fails() -> None:
    with pytest.raises(TimeoutMismatch, match=r"raised\s+TimeoutError\s+ConnectionResetError"):
        async with expect_timeout(within=0.0, tolerance=0.05):
            raise ConnectionResetError("peer reset")


@pytest.mark.asyncio
async def test_blocked_event_loop_fails() -> None:
    async def blocks_then_times_out() -> None:
        block_the_loop(0.2)
        raise TimeoutError

    blocked = r"loop lag \(max\)\s+<= 50 ms\s+\S+ ms\s+<-- loop blocked"
    checker = expect_timeout(within=0.2, max_loop_lag=0.05)
    with pytest.raises(TimeoutMismatch, match=blocked):
        async with checker:
            await blocks_then_times_out()


# -- synthetic, sync --------------------------------------------------------------------------


def test_socket_timeout_sync(silent_peer: tuple[socket.socket, socket.socket]) -> None:
    client, _ = silent_peer
    client.settimeout(0.1)
    with expect_timeout(within=0.1) as result:
        client.recv(1)
    assert result.elapsed is not None


def test_socket_timeout_longer_than_claimed(
    silent_peer: tuple[socket.socket, socket.socket],
) -> None:
    client, _ = silent_peer
    client.settimeout(0.3)
    with pytest.raises(TimeoutMismatch, match=r"after\s+100 ms .*<-- off by \+"), \
            expect_timeout(within=0.1):
        client.recv(1)


def test_sync_call_without_timeout_is_reported(
    silent_peer: tuple[socket.socket, socket.socket],
) -> None:
    client, server = silent_peer
    with pytest.raises(TimeoutMismatch, match="left running in its thread"):
        expect_timeout_call(lambda: client.recv(1), within=0.1, give_up_after=0.3, what="recv")
    server.shutdown(socket.SHUT_RDWR)  # lets the abandoned recv return
    join_abandoned("expect_timeout_call(recv)")


def test_sync_call_helper_passes(silent_peer: tuple[socket.socket, socket.socket]) -> None:
    client, _ = silent_peer
    client.settimeout(0.1)
    assert expect_timeout_call(lambda: client.recv(1), within=0.1).passed


# -- Postgres ----------------------------------------------------------------------------------


@pytest.fixture
def dsn(postgres_db: Any) -> str:
    return str(postgres_db.dsn)


@pytest.mark.asyncio
async def test_asyncpg_command_timeout(dsn: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, command_timeout=0.3)
    try:
        checker = expect_timeout(
            within=0.3, tolerance=PG_TOLERANCE, max_loop_lag=0.1, what="asyncpg query"
        )
        async with checker:
            await conn.fetch(SLOW_QUERY)
        await aexpect_query_cancelled(dsn, within=2.0)
        await aexpect_recovers(lambda: conn.fetchval("SELECT 1"))
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_asyncpg_command_timeout_longer_than_claimed(dsn: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, command_timeout=0.6)
    try:
        checker = expect_timeout(within=0.3, tolerance=PG_TOLERANCE, what="asyncpg query")
        with pytest.raises(TimeoutMismatch, match=r"gave up \d+(\.\d+)? ms after its timeout"):
            async with checker:
                await conn.fetch(SLOW_QUERY)
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_asyncio_wait_for_around_asyncpg(dsn: str) -> None:
    import asyncpg

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        within = expect_timeout(
            within=0.3, tolerance=PG_TOLERANCE, max_loop_lag=0.1, what="wait_for(fetch)"
        )
        async with within:
            await asyncio.wait_for(pool.fetch(SLOW_QUERY), 0.3)
        await aexpect_query_cancelled(dsn, within=2.0)
        await aexpect_recovers(lambda: pool.fetchval("SELECT 1"), what="the pool's next query")
    finally:
        await pool.close()


def test_psycopg_statement_timeout(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, options="-c statement_timeout=300", autocommit=True) as conn:
        with expect_timeout(within=0.3, tolerance=PG_TOLERANCE, exc=psycopg.errors.QueryCanceled):
            conn.execute(SLOW_QUERY)
        expect_query_cancelled(dsn, within=2.0)
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_psycopg_without_statement_timeout(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(TimeoutMismatch, match="no effective timeout"):
            expect_timeout_call(
                lambda: conn.execute(SLOW_QUERY), within=0.3, exc=psycopg.errors.QueryCanceled,
                give_up_after=0.8, what="psycopg query",
            )
        # the client stopped waiting, the server did not: that is what the check reports
        still_running = r"(?s)pid\s+state\s+running for\s+query.*pg_sleep"
        with pytest.raises(TimeoutMismatch, match=still_running):
            expect_query_cancelled(dsn, within=0.1)
        conn.cancel_safe()
        join_abandoned("expect_timeout_call(psycopg query)")


@pytest.mark.asyncio
async def test_cancellation_from_outside_propagates() -> None:
    entered = asyncio.Event()

    async def victim() -> None:
        async with expect_timeout(within=1.0):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(victim())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_virtual_clock_compares_exactly() -> None:
    now = [100.0]
    with expect_timeout(within=900.0, clock="virtual", now=lambda: now[0]):
        now[0] += 900.0
        raise TimeoutError

    def a_millisecond_late() -> None:
        now[0] += 900.001
        raise TimeoutError

    checker = expect_timeout(within=900.0, clock="virtual", now=lambda: now[0])
    with pytest.raises(TimeoutMismatch, match=r"tolerance: exact"), checker:
        a_millisecond_late()
