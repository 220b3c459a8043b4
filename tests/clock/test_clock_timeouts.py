"""Loop time, time.* and datetime.* move together; long timeouts pass in milliseconds."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from pytest_resilience.clock import VirtualClock, current_clock_kind


async def _forever() -> None:
    await asyncio.Event().wait()


@pytest.mark.asyncio
@pytest.mark.virtual_time
async def test_wait_for_900_seconds_fires_at_900_virtual_seconds(
    virtual_clock: VirtualClock,
) -> None:
    loop = asyncio.get_running_loop()
    begin = loop.time()
    wall_begin = dt.datetime.now(dt.UTC)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_forever(), timeout=900)
    assert loop.time() - begin == 900
    assert dt.datetime.now(dt.UTC) - wall_begin == dt.timedelta(minutes=15)
    assert virtual_clock.elapsed == 900


@pytest.mark.asyncio
@pytest.mark.virtual_time
async def test_a_task_cut_off_after_15_minutes_ran_until_then(virtual_clock: VirtualClock) -> None:
    ticks: list[float] = []

    async def long_job() -> None:
        while True:
            await asyncio.sleep(60)
            ticks.append(time.monotonic())

    begin = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(15 * 60):
            await long_job()
    assert len(ticks) == 14  # at 60, 120, ... 840 s; the 900 s tick loses to the timeout
    assert ticks[-1] - begin == 840
    assert time.monotonic() - begin == 900


@pytest.mark.asyncio
@pytest.mark.virtual_time
async def test_timers_fire_in_order_and_loop_time_matches_time_monotonic(
    virtual_clock: VirtualClock,
) -> None:
    loop = asyncio.get_running_loop()
    fired: list[tuple[str, float]] = []
    for name, delay in (("c", 30.0), ("a", 0.5), ("b", 5.0)):
        loop.call_later(delay, lambda n=name: fired.append((n, loop.time())))
    begin = loop.time()
    await asyncio.sleep(31)
    assert [(n, t - begin) for n, t in fired] == [("a", 0.5), ("b", 5.0), ("c", 30.0)]
    assert loop.time() == time.monotonic() == virtual_clock.monotonic()


@pytest.mark.asyncio
@pytest.mark.virtual_time(start="2030-06-01T12:00:00+00:00")
async def test_every_clock_moves_together(virtual_clock: VirtualClock) -> None:
    assert dt.datetime.now(dt.UTC) == dt.datetime(2030, 6, 1, 12, tzinfo=dt.UTC)
    assert virtual_clock.now() == dt.datetime(2030, 6, 1, 12, tzinfo=dt.UTC)
    before = (time.monotonic(), time.perf_counter(), time.time(), time.monotonic_ns())
    await asyncio.sleep(3600)
    time.sleep(1.5)  # a sync sleep advances virtual time at once
    after = (time.monotonic(), time.perf_counter(), time.time(), time.monotonic_ns())
    assert [b - a for a, b in zip(before, after, strict=True)] == [3601.5] * 3 + [3601_500_000_000]
    assert dt.datetime.now(dt.UTC) == dt.datetime(2030, 6, 1, 13, 0, 1, 500000, tzinfo=dt.UTC)
    assert dt.date.today() == dt.date(2030, 6, 1) or dt.datetime.now().date() == dt.date.today()
    assert time.clock_gettime(time.CLOCK_MONOTONIC) == time.monotonic()
    assert current_clock_kind() == "virtual"


def test_sync_code_on_the_clock(virtual_clock: VirtualClock) -> None:
    from circuitbreaker import monotonic as bound_at_import  # `from time import monotonic`

    begin = bound_at_import()
    time.sleep(45)
    virtual_clock.advance(dt.timedelta(seconds=15))
    assert bound_at_import() - begin == 60
    assert virtual_clock.elapsed == 60
    virtual_clock.move_to(virtual_clock.now() + dt.timedelta(hours=1))
    assert virtual_clock.elapsed == 3660
    with pytest.raises(ValueError, match="non-negative"):
        virtual_clock.advance(-1)
    with pytest.raises(ValueError, match="non-negative"):
        time.sleep(-1)


@pytest.mark.asyncio
@pytest.mark.virtual_time(auto_advance=False)
async def test_manual_mode_moves_only_when_advanced(virtual_clock: VirtualClock) -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.call_later(10, done.set_result, "fired")
    begin = loop.time()
    await asyncio.sleep(0)
    assert loop.time() == begin  # nothing moved on its own
    virtual_clock.advance(9.999)
    await asyncio.sleep(0)
    assert not done.done()
    virtual_clock.advance(0.001)
    assert await done == "fired"
    assert loop.time() - begin == 10


def test_threads_other_than_the_clocks_keep_real_time(virtual_clock: VirtualClock) -> None:
    import threading

    seen: dict[str, object] = {}

    def worker() -> None:
        seen["kind"] = current_clock_kind()
        seen["datetime_year"] = dt.datetime.now().year
        seen["monotonic"] = time.monotonic()

    virtual_clock.advance(10 * 365 * 86400)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["kind"] == "real"
    assert seen["datetime_year"] == dt.datetime.now().year - 10 or seen["datetime_year"] < 2100
    assert isinstance(seen["monotonic"], float)
    assert seen["monotonic"] < time.monotonic()


@pytest.mark.asyncio
@pytest.mark.virtual_time
async def test_to_thread_work_is_waited_for_in_real_time(virtual_clock: VirtualClock) -> None:
    import threading

    release = threading.Event()

    def blocking() -> str:
        release.wait(timeout=5)
        return "done"

    loop = asyncio.get_running_loop()
    job = asyncio.ensure_future(asyncio.wait_for(asyncio.to_thread(blocking), timeout=3))
    await asyncio.sleep(0)
    # The executor job is outstanding, so the 3 s timeout must not be jumped to.
    loop.call_soon(release.set)
    assert await job == "done"
    assert virtual_clock.elapsed < 3


def test_misuse_raises_the_plugins_error(virtual_clock: VirtualClock) -> None:
    from pytest_resilience.clock import VirtualClockError

    with pytest.raises(VirtualClockError, match="another VirtualClock is already running"):
        VirtualClock().start()
    with pytest.raises(VirtualClockError, match="already running"):
        virtual_clock.start()


def test_uvloop_and_freezegun_are_refused() -> None:
    from pytest_resilience.clock import VirtualClockError, active_clock

    uvloop = pytest.importorskip("uvloop")
    policy = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        with pytest.raises(VirtualClockError, match="uvloop"):
            VirtualClock().start()
    finally:
        asyncio.set_event_loop_policy(policy)
    freezegun = pytest.importorskip("freezegun")
    with freezegun.freeze_time("2030-01-01"), pytest.raises(VirtualClockError, match="freezegun"):
        VirtualClock().start()
    assert active_clock() is None
    assert type(time.monotonic).__name__ == "builtin_function_or_method"


def test_advance_needs_a_running_clock() -> None:
    from pytest_resilience.clock import VirtualClockError

    with pytest.raises(VirtualClockError, match=r"advance\(\) needs a running clock"):
        VirtualClock().advance(1)
