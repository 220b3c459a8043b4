"""The health-grade verdict against a real asyncpg pool behind ``pg_proxy``.

The pool (4 connections) is driven through Toxiproxy: a 150 ms latency toxic makes
every ping slow (degraded), four tasks holding every connection exhaust it
(critical), then the toxic goes and the connections come back (healthy). The monitor
is written here, like examples/content_service/health.py: it grades from the pool's
size and idle count and from how long a ping (checkout + ``SELECT 1`` + return) took.

Test ids say which is which (``correct`` / ``defect-...``): benchmarks/verdict_repeats.py
counts false alarms on the former and misses on the latter. Nothing sleeps: each phase
waits for the recorder to see the grade, with a bound, and the verdict judges.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_resilience.errors import ConfigError
from pytest_resilience.verdicts.health import (
    GradeSample,
    HealthMismatch,
    HealthRecorder,
    expect_health_grades,
)

POOL_SIZE = 4
LATENCY_MS = 150
SLOW_PING = 0.1  # seconds; a ping through the latency toxic takes about 2 x 150 ms
STEPS = [
    ("baseline", "healthy", 1.0),
    ("slow", "degraded", 1.0),
    ("exhausted", "critical", 1.0),
    ("recovered", "healthy", 2.0),
]
#: how long the test waits for each grade before moving on (the verdict judges)
WAIT = {"baseline": 1.5, "slow": 1.5, "exhausted": 1.5, "recovered": 2.5}


@dataclass(frozen=True)
class Health:
    grade: str
    in_use: int
    max_size: int
    ping: float | None


class PoolMonitor:
    """critical: every connection in use, or the ping failed / timed out;
    degraded: 3/4 of the pool in use, or the ping slower than ``slow_ping``;
    healthy otherwise. Planted defects: ``always_healthy``; ``never_recovers`` (grades
    from the worst ping ever seen, not the latest); ``wrong_threshold`` (``slow_ping``
    taken as milliseconds: ``100`` where seconds are compared)."""

    def __init__(self, pool: Any, *, defect: str | None = None) -> None:
        self.pool = pool
        self.defect = defect
        self.slow_ping = SLOW_PING * 1000 if defect == "wrong_threshold" else SLOW_PING
        self.worst: float = 0.0

    async def check(self) -> Health:
        in_use = self.pool.get_size() - self.pool.get_idle_size()
        max_size = self.pool.get_max_size()
        ping: float | None = None
        if in_use < max_size:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(2.0):
                    await self.pool.fetchval("SELECT 1")
                ping = time.perf_counter() - started
            except (TimeoutError, OSError):
                ping = None
        return Health(self.grade(in_use, max_size, ping), in_use, max_size, ping)

    def grade(self, in_use: int, max_size: int, ping: float | None) -> str:
        if self.defect == "always_healthy":
            return "healthy"
        if self.defect == "never_recovers":
            self.worst = max(self.worst, float("inf") if ping is None else ping)
            ping = None if self.worst == float("inf") else self.worst
        if ping is None or in_use >= max_size:
            return "critical"
        if in_use >= 0.75 * max_size or ping > self.slow_ping:
            return "degraded"
        return "healthy"


async def drive(pg_proxy: Any, defect: str | None) -> HealthRecorder:
    """Baseline, slowdown, exhaustion, recovery; returns the recorder (stopped)."""
    import asyncpg

    pool = await asyncpg.create_pool(pg_proxy.dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
    release = asyncio.Event()
    holders: list[asyncio.Task[None]] = []
    toxic: Any = None
    try:
        monitor = PoolMonitor(pool, defect=defect)

        async def hold(acquired: asyncio.Event) -> None:
            async with pool.acquire() as conn:  # a long transaction, say
                await conn.fetchval("SELECT 1")
                acquired.set()
                await release.wait()

        async with HealthRecorder(monitor.check, interval=0.05,
                                  what="the pool monitor") as health:
            health.mark("baseline")
            await health.await_grade("healthy", WAIT["baseline"])

            toxic = await asyncio.to_thread(pg_proxy.latency, LATENCY_MS)
            health.mark("slow")
            await health.await_grade("degraded", WAIT["slow"])

            health.mark("exhausted")  # the load starts: it checks out every connection
            acquired = [asyncio.Event() for _ in range(POOL_SIZE)]
            holders = [asyncio.create_task(hold(event)) for event in acquired]
            async with asyncio.timeout(10):
                await asyncio.gather(*(event.wait() for event in acquired))
            await health.await_grade("critical", WAIT["exhausted"])

            health.mark("recovered")
            await asyncio.to_thread(toxic.remove)
            toxic = None
            release.set()
            async with asyncio.timeout(10):
                await asyncio.gather(*holders)
            await health.await_grade("healthy", WAIT["recovered"])
    finally:
        release.set()
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
        if toxic is not None:
            await asyncio.to_thread(toxic.remove)
        await pool.close()
    return health


@pytest.mark.asyncio
async def test_pool_monitor_grades_correct(pg_proxy: Any) -> None:
    health = await drive(pg_proxy, None)
    verdict = expect_health_grades(health, STEPS)
    assert verdict.passed
    assert [row[2].split()[0] for row in verdict.rows] == [
        "healthy", "degraded", "critical", "healthy"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("defect", "words"),
    [
        pytest.param("always_healthy", "the pool monitor did not say degraded within 1.000 s "
                     "of 'slow': it said healthy", id="defect-always_healthy"),
        pytest.param("never_recovers", "the pool monitor did not say healthy within 2.000 s "
                     "of 'recovered': it said critical", id="defect-never_recovers"),
        pytest.param("wrong_threshold", "the pool monitor did not say degraded within 1.000 s "
                     "of 'slow': it said healthy", id="defect-wrong_threshold"),
    ],
)
async def test_pool_monitor_grades_defect(pg_proxy: Any, defect: str, words: str) -> None:
    health = await drive(pg_proxy, defect)
    with pytest.raises(HealthMismatch) as failed:
        expect_health_grades(health, STEPS)
    verdict = failed.value.verdict
    assert words in verdict.outcome
    assert "<--" in str(failed.value)
    if defect == "always_healthy":
        assert "did not say critical within 1.000 s of 'exhausted'" in verdict.outcome


# -- the timeline rules, on recorded samples (no pool) -------------------------------------


def recorded(marks: list[tuple[str, float]], samples: list[tuple[float, float, str]],
             stopped: float) -> HealthRecorder:
    recorder = HealthRecorder(lambda: "healthy")
    recorder.marks = marks
    recorder.samples = [GradeSample(a, b, g) for a, b, g in samples]
    recorder.stopped = stopped
    return recorder


def test_late_grade_names_how_late() -> None:
    rec = recorded([("slow", 10.0)], [(10.1, 10.2, "healthy"), (10.3, 11.6, "degraded")], 12.0)
    with pytest.raises(HealthMismatch, match=re.escape(
            "did not say degraded within 1.000 s of 'slow': only after 1.600 s")):
        expect_health_grades(rec, [("slow", "degraded", 1.0)])


def test_a_sample_started_before_the_mark_does_not_count() -> None:
    rec = recorded([("slow", 10.0)], [(9.9, 10.3, "degraded")], 12.0)
    with pytest.raises(HealthMismatch, match="not measured"):
        expect_health_grades(rec, [("slow", "degraded", 1.0)])


def test_moving_on_before_the_bound_is_not_measured() -> None:
    rec = recorded([("slow", 10.0), ("next", 10.4)],
                   [(10.1, 10.2, "healthy"), (10.5, 10.6, "degraded")], 12.0)
    with pytest.raises(HealthMismatch, match="not measured \\(the next mark came 400 ms"):
        expect_health_grades(rec, [("slow", "degraded", 1.0)])


def test_hold_catches_flapping() -> None:
    rec = recorded([("slow", 10.0)], [(10.1, 10.2, "degraded"), (10.3, 10.4, "healthy")], 12.0)
    assert expect_health_grades(rec, [("slow", "degraded", 1.0)]).passed
    with pytest.raises(HealthMismatch, match="left degraded after reaching it"):
        expect_health_grades(rec, [("slow", "degraded", 1.0)], hold=True)


def test_errors_and_several_accepted_grades() -> None:
    rec = recorded([("down", 0.0)], [(0.1, 0.2, "degraded")], 1.0)
    assert expect_health_grades(rec, [("down", {"degraded", "critical"}, 0.5)]).passed
    with pytest.raises(ConfigError, match="no mark named 'up'"):
        expect_health_grades(rec, [("up", "healthy", 1.0)])


def test_a_sync_probe_in_a_thread() -> None:
    grades = iter(["healthy"] * 3 + ["critical"] * 1000)
    with HealthRecorder(lambda: next(grades), interval=0.001) as health:
        health.mark("start")
        assert health.wait_grade("critical", timeout=5.0)
    assert expect_health_grades(health, [("start", "critical", 5.0)]).passed


def test_a_probe_without_a_grade_is_misuse() -> None:
    with pytest.raises(ConfigError, match="neither a grade string"), \
            HealthRecorder(lambda: 42, interval=0.001) as health:
        health.wait_grade("healthy", timeout=0.5)
