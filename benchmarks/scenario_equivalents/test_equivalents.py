"""The checks of scenarios/pool_health.yaml, task_timeout.yaml and fallback.yaml written
as Python tests with the same fixtures and the same verdict (for bench_scenarios.py)."""

from __future__ import annotations

import os

import pytest
from content_service import scenario_targets as targets
from content_service.tasks import TaskTimedOut

from pytest_resilience import Verdict, expect_timeout

pytestmark = [pytest.mark.asyncio, pytest.mark.no_leaks]

#: copies of each measured test (bench_scenarios.py interleaves them with the scenarios)
REPEAT = range(int(os.environ.get("BENCH_REPEAT", "1")))


@pytest.mark.parametrize("rep", REPEAT)
async def test_pool_health(pg_proxy, rep):
    grades = await targets.health_grades(postgres_dsn=pg_proxy.dsn)
    expected = {"idle": "healthy", "busy": "degraded", "exhausted": "critical",
                "released": "healthy"}
    Verdict(kind="returns", claim=f"every call returns {expected!r}",
            passed=grades == expected, expected=expected, observed=grades).check()


@pytest.mark.virtual_time
@pytest.mark.parametrize("rep", REPEAT)
async def test_task_timeout(rep):
    async with expect_timeout(within=900, exc=TaskTimedOut):
        await targets.hour_long_task()


@pytest.mark.virtual_time
@pytest.mark.parametrize("rep", REPEAT)
async def test_fallback(http_backends, rep):
    backend = http_backends({"GET /trends": ['200 {"items": ["a", "b"]}', "reset forever"]},
                            assert_all_used=False)
    served = await targets.served_while_api_down(trends_api_url=backend.url, calls=4)
    good = {"items": ["a", "b"], "stale": False}
    expected = [good] + [{**good, "stale": True}] * 3
    Verdict(kind="returns", claim="every call returns the fallback", passed=served == expected,
            expected=expected, observed=served).check()


@pytest.mark.virtual_time
async def test_warm_up_virtual():
    with pytest.raises(TaskTimedOut):
        await targets.hour_long_task()


async def test_warm_up(pg_proxy, http_backends):
    """Runs first: starts the session's services, so neither side pays for them."""
    import httpx

    backend = http_backends({"GET /": "200"})
    async with httpx.AsyncClient() as client:
        assert (await client.get(backend.url + "/")).status_code == 200
