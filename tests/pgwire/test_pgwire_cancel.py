"""The hang rule of the Postgres stage and the hang-and-cancel verdict: real drivers used
correctly pass; planted defects (no timeout, a timeout 3x too long, a close without a
cancel that leaves the backend busy, nothing matched) fail with the defect named."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Any

import asyncpg
import psycopg
import psycopg.errors as pe
import pytest

from pytest_resilience.fixtures.pgwire import PgFault
from pytest_resilience.pgwire import Hang
from pytest_resilience.verdicts.cancel import (
    BackendWatch,
    CancelMismatch,
    cancel_verdict,
    expect_hung_query_cancelled,
)

SLOW = "SELECT count(*) FROM generate_series(1, 10)"
TIMEOUT = 1.0  # long enough that ± 10 % holds on a loaded machine


# -- drivers used correctly ----------------------------------------------------------------
@pytest.mark.asyncio
@pytest.mark.parametrize("server", ["busy", "done"])
async def test_asyncpg_timeout_sends_a_cancel(pg_fault: PgFault, server: str) -> None:
    conn = await asyncpg.connect(pg_fault.dsn)
    try:
        async with expect_hung_query_cancelled(pg_fault, TIMEOUT, match="generate_series",
                                    server=server) as result:  # type: ignore[arg-type]
            with pytest.raises(TimeoutError):
                await conn.fetchval(SLOW, timeout=TIMEOUT)
        assert result.hang is not None
        assert result.hang.cancelled is not None
        assert result.verdict is not None
        assert result.verdict.passed
        assert await conn.fetchval("SELECT 1") == 1  # the connection goes on
    finally:
        await asyncio.wait_for(conn.close(), 10)


@pytest.mark.asyncio
async def test_psycopg_async_wait_for_cancels(pg_fault: PgFault) -> None:
    """psycopg's async connection sends a CancelRequest when the awaiting task is
    cancelled (asyncio.wait_for / asyncio.timeout)."""
    async with await psycopg.AsyncConnection.connect(pg_fault.dsn, autocommit=True) as conn:
        async with expect_hung_query_cancelled(pg_fault, TIMEOUT,
                                               match="generate_series") as result:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.execute(SLOW), TIMEOUT)
        assert result.hang is not None
        assert result.hang.cancelled is not None
        cur = await conn.execute("SELECT 1")
        assert await cur.fetchone() == (1,)


def test_psycopg_sync_cancel_safe_from_a_timer(pg_fault: PgFault) -> None:
    with psycopg.connect(pg_fault.dsn, autocommit=True) as conn:
        timer = threading.Timer(TIMEOUT, conn.cancel_safe)
        with expect_hung_query_cancelled(pg_fault, TIMEOUT, match="generate_series"):
            timer.start()
            try:
                with pytest.raises(pe.QueryCanceled):
                    conn.execute(SLOW)
            finally:
                timer.cancel()
                timer.join()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_psycopg_statement_timeout_ends_it_server_side(pg_fault: PgFault) -> None:
    with psycopg.connect(pg_fault.dsn, autocommit=True,
                         options=f"-c statement_timeout={int(TIMEOUT * 1000)}") as conn:
        with expect_hung_query_cancelled(pg_fault, TIMEOUT, match="generate_series") as result, \
                pytest.raises(pe.QueryCanceled, match="statement timeout"):
            conn.execute(SLOW)
        assert result.verdict is not None
        assert "statement_timeout ended it" in result.verdict.text()
        assert conn.execute("SELECT 1").fetchone() == (1,)


# -- planted defects -----------------------------------------------------------------------
def test_no_timeout_fails_within_a_bounded_wait(pg_fault: PgFault) -> None:
    started = time.monotonic()
    with psycopg.connect(pg_fault.dsn, autocommit=True) as conn:
        with pytest.raises(CancelMismatch) as info, \
                expect_hung_query_cancelled(pg_fault, 0.3, match="generate_series",
                                            give_up_after=1.0):
            conn.execute(SLOW)  # no timeout: the stage releases it after 1 s
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert time.monotonic() - started < 10
    assert re.search(r"the client never cancelled the held query: no CancelRequest and the "
                     r"socket stayed open [7-9]\d\d(\.\d)? ms after its 300 ms timeout",
                     str(info.value))
    assert isinstance(info.value.__cause__, pe.QueryCanceled)  # the stage's own cancel


@pytest.mark.asyncio
async def test_a_timeout_three_times_the_claim_fails(pg_fault: PgFault) -> None:
    conn = await asyncpg.connect(pg_fault.dsn)
    try:
        async def claim_300_ms() -> None:
            async with expect_hung_query_cancelled(pg_fault, 0.3, match="generate_series"):
                with pytest.raises(TimeoutError):
                    await conn.fetchval(SLOW, timeout=0.9)

        with pytest.raises(CancelMismatch, match=r"gave up on the held query .* late"):
            await claim_300_ms()
    finally:
        await asyncio.wait_for(conn.close(), 10)


@pytest.mark.asyncio
async def test_closing_without_a_cancel_leaves_the_backend_busy(pg_fault: PgFault) -> None:
    """``terminate()`` on a timer: the socket is closed on time but no CancelRequest is
    sent; the backend runs on (pg_sleep), which the server row shows."""
    conn = await asyncpg.connect(pg_fault.dsn)
    try:
        checker = expect_hung_query_cancelled(pg_fault, 0.5, match="generate_series")

        async def close_on_time() -> None:
            async with checker:
                asyncio.get_running_loop().call_later(0.5, conn.terminate)
                with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
                    await conn.fetchval(SLOW)

        with pytest.raises(CancelMismatch) as info:
            await close_on_time()
    finally:
        conn.terminate()
    text = str(info.value)
    assert "closed its socket after" in text
    assert "the server backend (pid" in text
    assert "was still active 1.0" in text
    assert "after the client closed its socket" in text
    assert checker.result.backend.cancelled_after  # not left sleeping after the test


def test_nothing_matched_is_not_measured(pg_fault: PgFault) -> None:
    with psycopg.connect(pg_fault.dsn, autocommit=True) as conn, \
            pytest.raises(CancelMismatch, match="not measured: the hang never fired"), \
            expect_hung_query_cancelled(pg_fault, 0.3, match="never matches"):
        conn.execute("SELECT 1")


def test_a_direct_dsn_is_required() -> None:
    from pytest_resilience.errors import ConfigError

    with pytest.raises(ConfigError, match="direct_dsn="):
        expect_hung_query_cancelled(object(), 0.5)


# -- the verdict alone ----------------------------------------------------------------------
def test_server_still_active_in_the_claims_words() -> None:
    hang = Hang(1, 4242, "SELECT pg_sleep(30)", "busy", 100.0, cancelled=100.5)
    watch = BackendWatch(last_seen=101.5, active_query="SELECT pg_sleep(30)")
    verdict = cancel_verdict(hang, watch, timeout=0.5)
    assert not verdict.passed
    assert verdict.outcome == ("the server backend (pid 4242) was still active 1.000 s after "
                               "the cancel")
    assert verdict.blamed_rows == [2]


def test_hang_log_records_the_backend(pg_fault: PgFault) -> None:
    with psycopg.connect(pg_fault.dsn, autocommit=True) as conn:
        pid = conn.info.backend_pid
        with pg_fault.hang(match="generate_series", server="done", release_after=0.2):
            assert conn.execute(SLOW).fetchone() == (10,)  # released by the stage
    [hang] = pg_fault.hangs
    assert (hang.pid, hang.server, hang.cancelled) == (pid, "done", None)
    assert hang.released is not None
    assert hang.ended.is_set()


@pytest.mark.asyncio
async def test_an_early_timer_does_not_release_the_hang(pg_fault: PgFault,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: uvloop's timers run on a cached millisecond clock and can fire a little
    before ``release_after`` (seen as "stayed open 699.4 ms after its 300 ms timeout" with
    give_up_after=1.0). The stage re-checks its own deadline: a release timer that fires
    early - here at once - waits for the rest instead of ending the hang."""
    from pytest_resilience.pgwire import proxy

    held = threading.Event()
    inject = proxy._Conn._inject

    def inject_and_tell(conn: Any, rule: Any, *args: Any, **kwargs: Any) -> bytes:
        out = inject(conn, rule, *args, **kwargs)
        if rule.kind == "hang":
            held.set()
        return out

    monkeypatch.setattr(proxy._Conn, "_inject", inject_and_tell)
    release_after = 0.3
    async with await psycopg.AsyncConnection.connect(pg_fault.dsn, autocommit=True) as conn:
        with pg_fault.hang(match="generate_series", server="done",
                           release_after=release_after) as rule:
            query = asyncio.ensure_future(conn.execute(SLOW))
            assert await asyncio.to_thread(held.wait, 10)
            [hang] = rule.hangs
            stage_conn = pg_fault._conns[hang.connection]
            pg_fault._thread.loop.call_soon_threadsafe(stage_conn.release_hang, hang, rule)
            cur = await asyncio.wait_for(query, 10)
            assert await cur.fetchone() == (10,)
    assert hang.released is not None
    assert hang.released - hang.started >= release_after
