"""Claims about timeouts, the event loop, pool health and shutdown. Each test calls one
entry point of ``content_service.claims``."""

from __future__ import annotations

import pytest
from content_service import claims
from content_service.config import TESTING
from content_service.trends import Trends

from pytest_resilience import LoopLagProbe, aexpect_query_cancelled, expect_timeout

pytestmark = [pytest.mark.asyncio, pytest.mark.no_leaks]


async def test_stalled_query_times_out_loop_keeps_serving_pool_recovers(pg_proxy):
    def judge():  # the stalled read: TimeoutError on time, the loop never blocked meanwhile
        return expect_timeout(within=TESTING.query_timeout, tolerance=(0.005, 0.15),
                              max_loop_lag=0.2, what="article query on a stalled Postgres")

    stalled, after = await claims.query_times_out_under_stall(pg_proxy, judge=judge)

    assert str(stalled.error).startswith("TimeoutError")
    assert after == "hello", f"the pool did not serve the next query after the stall: {after}"
    await aexpect_query_cancelled(pg_proxy.direct_dsn, query_like="%FROM articles%")


async def test_retries_do_not_block_the_event_loop(http_backend):
    http_backend.route("GET", "/trends", ["503 x2", '200 {"items": ["a"]}'])
    probe = LoopLagProbe()
    probe.start()
    try:
        served = await claims.trends_while_retrying(trends_api_url=http_backend.url)
    finally:
        lag = await probe.stop()

    assert served == Trends(["a"], stale=False)
    assert lag < 0.15, (  # a sync sleep would block it for 200 ms or more
        f"the event loop was blocked for {lag * 1000:.0f} ms during a retried call: a "
        "blocking call in async code (nothing else was served meanwhile)"
    )


@pytest.mark.virtual_time
async def test_long_task_is_cut_off_after_15_minutes():
    run = await claims.task_is_cut_off(
        judge=lambda: expect_timeout(within=15 * 60, what="task under its 15-minute limit")
    )
    assert str(run.error).startswith("TaskTimedOut")


async def test_pool_health_grades_degraded_and_critical(postgres_db):
    report = await claims.pool_health_grades(postgres_dsn=postgres_db.dsn)

    grades = {phase: health.grade for phase, health in report.items()}
    expected = {"idle": "healthy", "busy": "degraded", "exhausted": "critical",
                "released": "healthy"}
    wrong = [f"{phase} pool ({report[phase].in_use} of {report[phase].max_size} connections "
             f"in use) graded {grades[phase]!r}, expected {want!r}"
             for phase, want in expected.items() if grades[phase] != want]
    assert not wrong, "the pool-health monitor misjudged the pool: " + "; ".join(wrong)


async def test_shutdown_closes_api_session_db_pool_and_files(
    postgres_db, http_backend, leak_check, tmp_path
):
    http_backend.route("GET", "/trends", '200 {"items": ["a"]}')
    run = None
    try:
        async with leak_check.aregion(
            label="after shutdown no API session, DB connection or file is left open"
        ):
            run = await claims.serve_and_shut_down(
                postgres_dsn=postgres_db.dsn, trends_api_url=http_backend.url, workdir=tmp_path
            )
    finally:
        if run is not None:  # after the check: close what a defective stop() left open, so
            await run.service.trends.aclose()  # its ResourceWarnings land in no other test
            run.service.access_log.close()

    statuses = {path: status for path, (status, _) in run.responses.items()}
    assert statuses == dict.fromkeys(["/livez", "/readyz", "/trends", "/articles/1"], 200)
