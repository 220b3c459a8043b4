"""Blocking calls in async code: the loop-lag probe sees them from the region's first
line to its last, and names the call site.

The blocking calls under test are real (``time.sleep``, ``threading.Event().wait``);
good cases only await, and their bound (100 ms) leaves room for a loaded 2-core machine.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from pytest_resilience import (
    LoopBlocked,
    LoopLagProbe,
    ResilienceError,
    TimeoutMismatch,
    VirtualClock,
    expect_no_blocking,
    expect_timeout,
)

BLOCK = 0.3
#: a 300 ms block seen from a 5 ms timer: at least ~295 ms late, whatever the load
SEEN = 0.25
HERE = Path(__file__)


def site(marker: str, func: str) -> str:
    """``test_verdict_no_blocking.py:<line> in <func>`` for the line tagged *marker*."""
    for number, line in enumerate(HERE.read_text().splitlines(), start=1):
        if line.rstrip().endswith(f"# {marker}"):
            return f"{HERE.name}:{number} in {func}"
    raise AssertionError(f"no line tagged {marker!r}")


# -- regions that block (each reports its own line) ---------------------------------------


async def timeout_blocked_at_start(checker: expect_timeout) -> None:
    async with checker:
        time.sleep(BLOCK)  # timeout-start
        await asyncio.wait_for(asyncio.Event().wait(), 0.1)


async def blocked_at_start(checker: expect_no_blocking) -> None:
    async with checker:
        time.sleep(BLOCK)  # nb-start


async def blocked_in_the_middle(checker: expect_no_blocking) -> None:
    async with checker:
        await asyncio.sleep(0.02)
        # blocks inside threading.py: the site reported is this line, not the stdlib's
        threading.Event().wait(BLOCK)  # nb-middle
        await asyncio.sleep(0.02)


async def blocked_at_the_end(checker: expect_no_blocking) -> None:
    async with checker:
        await asyncio.sleep(0.02)
        time.sleep(BLOCK)  # nb-end


async def blocked_then_raises(checker: expect_no_blocking) -> None:
    async with checker:
        time.sleep(BLOCK)
        raise ConnectionResetError("peer reset")


# -- expect_timeout(max_loop_lag=...) ----------------------------------------------------


@pytest.mark.asyncio
async def test_expect_timeout_sees_a_block_at_the_start() -> None:
    checker = expect_timeout(within=BLOCK + 0.1, tolerance=(0.1, 0.5), max_loop_lag=0.1)
    result = checker.result
    with pytest.raises(TimeoutMismatch) as info:
        await timeout_blocked_at_start(checker)
    assert result.loop_lag is not None
    assert result.loop_lag >= SEEN
    text = str(info.value)
    assert "<-- loop blocked" in text
    assert site("timeout-start", "timeout_blocked_at_start") in text
    assert result.blocked_at is not None
    assert result.blocked_at.endswith(site("timeout-start", "timeout_blocked_at_start"))
    # only the lag failed: the timeout itself came on time
    verdict = info.value.verdict
    assert [verdict.rows[i][0] for i in verdict.blamed_rows] == ["loop lag (max)"]


@pytest.mark.asyncio
async def test_expect_timeout_with_only_awaits_passes() -> None:
    async with expect_timeout(within=BLOCK, tolerance=(0.05, 0.5), max_loop_lag=0.1) as result:
        await asyncio.wait_for(asyncio.Event().wait(), BLOCK)
    assert result.verdict is not None
    assert result.verdict.passed
    assert result.loop_lag is not None


# -- expect_no_blocking ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_block_at_the_start_is_caught() -> None:
    checker = expect_no_blocking(max_lag=0.1)
    result = checker.result
    with pytest.raises(LoopBlocked) as info:
        await blocked_at_start(checker)
    assert result.loop_lag is not None
    assert result.loop_lag >= SEEN
    verdict = info.value.verdict
    assert verdict.kind == "loop-lag"
    assert not verdict.passed
    assert verdict.observed["loop_lag"] >= SEEN
    text = str(info.value)
    assert "loop-lag verdict FAILED" in text
    assert "<-- loop blocked" in text
    assert site("nb-start", "blocked_at_start") in text
    assert "asyncio.to_thread" in text


@pytest.mark.asyncio
async def test_a_block_in_the_middle_is_caught_past_library_frames() -> None:
    checker = expect_no_blocking(max_lag=0.1)
    result = checker.result
    with pytest.raises(LoopBlocked) as info:
        await blocked_in_the_middle(checker)
    assert result.loop_lag is not None
    assert result.loop_lag >= SEEN
    assert site("nb-middle", "blocked_in_the_middle") in str(info.value)


@pytest.mark.asyncio
async def test_a_block_at_the_end_is_caught() -> None:
    checker = expect_no_blocking(max_lag=0.1)
    result = checker.result
    with pytest.raises(LoopBlocked) as info:
        await blocked_at_the_end(checker)
    assert result.loop_lag is not None
    assert result.loop_lag >= SEEN
    assert site("nb-end", "blocked_at_the_end") in str(info.value)


def fetch_report() -> None:
    time.sleep(BLOCK)  # nb-callee


async def blocked_in_a_callee_then_busy(checker: expect_no_blocking) -> None:
    async with checker:
        await asyncio.sleep(0.02)
        fetch_report()
        # the caller goes on for a while before its next await: the loop is latest here,
        # but the block was in fetch_report
        until = time.perf_counter() + 0.06
        while time.perf_counter() < until:  # nb-caller
            pass


@pytest.mark.asyncio
async def test_the_site_is_where_the_loop_stayed_not_where_it_was_latest() -> None:
    checker = expect_no_blocking(max_lag=0.1)
    with pytest.raises(LoopBlocked) as info:
        await blocked_in_a_callee_then_busy(checker)
    text = str(info.value)
    assert site("nb-callee", "fetch_report") in text, text
    assert "blocked_in_a_callee_then_busy" not in text, text


@pytest.mark.asyncio
async def test_awaiting_passes() -> None:
    async with expect_no_blocking(max_lag=0.1) as result:
        await asyncio.sleep(BLOCK)
    assert result.verdict is not None
    assert result.verdict.passed
    assert result.verdict.kind == "loop-lag"
    assert result.loop_lag is not None
    assert result.blocked_at is None
    assert result.elapsed is not None
    assert result.elapsed >= BLOCK


@pytest.mark.asyncio
async def test_the_blocks_own_exception_wins() -> None:
    checker = expect_no_blocking(max_lag=0.1)
    result = checker.result
    with pytest.raises(ConnectionResetError):
        await blocked_then_raises(checker)
    assert result.verdict is not None
    assert not result.verdict.passed  # recorded, not raised


def test_the_sync_form_explains_it_needs_a_loop() -> None:
    with (
        pytest.raises(ResilienceError, match=r"needs a running event loop.*async with"),
        expect_no_blocking(max_lag=0.1),
    ):
        pass  # pragma: no cover


def test_a_bad_bound_is_refused() -> None:
    with pytest.raises(ResilienceError, match=r"max_lag=0\b.*must be > 0"):
        expect_no_blocking(max_lag=0)


@pytest.mark.asyncio
async def test_the_virtual_clock_is_refused(virtual_clock: VirtualClock) -> None:
    with pytest.raises(ResilienceError, match="needs the real clock"):
        async with expect_no_blocking(max_lag=0.1):
            pass  # pragma: no cover


# -- the probe itself --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_probe_sees_a_block_before_its_task_first_runs() -> None:
    probe = LoopLagProbe()
    probe.start()
    time.sleep(BLOCK)  # before the probe's task was ever scheduled
    await asyncio.sleep(0.02)
    assert await probe.stop() >= SEEN
    assert probe.blocked_at is None  # no watchdog without watch=
