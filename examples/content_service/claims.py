"""Entry points: one per resilience claim, for the tests in ``examples/`` and for a
scenario runner that calls them by import path.

Each runs the claim's whole exercise and returns plain data for a verdict. Parameters
are named after the services they need, the way the scenario runner binds them
(``<service>_url``, ``<service>_dsn``):

* ``trends_api_url`` - base URL of the trends API (a fake backend the caller scripts;
  each docstring says which script);
* ``postgres_dsn`` - a Postgres DSN (through a proxy when the caller injects faults);
* ``pg_proxy`` - a Toxiproxy proxy in front of Postgres (``.dsn`` and fault methods such
  as ``.latency(ms)``: the ``pg_proxy`` fixture), for a fault that must start mid-way;
* ``judge`` - optional: a factory of an async context manager wrapped around the timed
  operation (e.g. ``lambda: expect_timeout(within=0.3)``), for verdicts that watch it live;
* ``workdir`` - a directory the service may write to.

All take ``settings`` (default :data:`~.config.TESTING`) and ``defect`` (default: the
``CONTENT_SERVICE_DEFECT`` environment variable). A failed call shows up in the returned
data as a :class:`Failed`, never as an exception (unless a ``judge`` raises).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from .app import ContentApp, ContentService, lifespan
from .config import TESTING, RetryPolicy, Settings
from .health import Health, PoolHealthMonitor
from .store import ArticleStore
from .tasks import TaskExecutor
from .trends import TrendsClient

Judge = Callable[[], AbstractAsyncContextManager[Any]]


@dataclass(frozen=True)
class Failed:
    """A call that raised: ``error`` is ``"TypeName: message"``."""

    error: str


@dataclass
class Timed:
    """One timed operation: how long it took, and what it returned or raised."""

    elapsed: float | None = None
    value: object = None
    error: str | None = None


@dataclass
class RetryRun:
    waits: list[list[float]]  # the waits the service asked for, per logical call
    served: list[object]  # per logical call: its result or a Failed


@dataclass
class BreakerRun:
    observer: Any  # pytest_resilience.BreakerObserver: every call and transition
    outcomes: list[object] = field(default_factory=list)


@dataclass
class ShutdownRun:
    responses: dict[str, tuple[int, object]]  # path -> (status, JSON body)
    service: ContentService  # the stopped service, so a caller can inspect what is open


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


async def _attempt(call: Awaitable[object]) -> object:
    try:
        return await call
    except Exception as exc:
        return Failed(_describe(exc))


async def _timed(op: Callable[[], Awaitable[object]], judge: Judge | None) -> Timed:
    out = Timed()
    started = time.monotonic()

    async def recorded() -> None:
        try:
            out.value = await op()
        except BaseException as exc:  # the judge's own cancellation included
            out.error = _describe(exc)
            raise
        finally:
            out.elapsed = time.monotonic() - started

    if judge is None:
        with contextlib.suppress(Exception):  # recorded in out.error
            await recorded()
    else:
        async with judge():
            await recorded()
    return out


async def api_retry_backoff(
    trends_api_url: str, calls: int = 2, settings: Settings = TESTING, defect: str | None = None
) -> RetryRun:
    """Claim: API calls are retried with exponential backoff and jitter (``api_retry``).

    Makes *calls* logical calls to ``GET /trends`` (script the API to fail transiently,
    e.g. ``["503 x3", '200 {"items": ["a"]}'] * calls``). Judge the arrival times at the
    API against ``settings.api_retry`` (equal jitter: retry n waits ``t/2 .. t``) and the
    requested ``waits`` for jitter (not all on the bare curve ``t``).
    """
    waits: list[list[float]] = []
    served: list[object] = []
    async with TrendsClient(trends_api_url, settings, defect=defect,
                            on_retry=lambda n, wait, exc: waits[-1].append(wait)) as client:
        for _ in range(calls):
            waits.append([])
            served.append(await _attempt(client.fetch_live()))
    return RetryRun(waits, served)


async def db_retry_backoff(
    postgres_dsn: str, settings: Settings = TESTING, defect: str | None = None
) -> RetryRun:
    """Claim: failed DB connections are retried with exponential backoff and jitter
    (``db_retry``), then the error is raised.

    One logical query on a lazy pool (``pool_min=0``), so every attempt opens its own
    connection: through a proxy that resets connections, each attempt is one accepted
    connection. Judge the accept times against ``settings.db_retry`` and the requested
    ``waits`` for jitter; ``served`` holds the final error.
    """
    waits: list[list[float]] = [[]]
    lazy = replace(settings, pool_min=0)
    async with await ArticleStore.open(postgres_dsn, lazy, defect=defect,
                                       on_retry=lambda n, wait, exc: waits[-1].append(wait)
                                       ) as store:
        served = [await _attempt(store.count())]
    return RetryRun(waits, served)


async def breaker_opens_and_recovers(
    trends_api_url: str, settings: Settings = TESTING, defect: str | None = None,
    observer: Any = None,
) -> BreakerRun:
    """Claim: the breaker opens after ``fail_max`` failed calls, fails fast while open,
    lets one trial through after ``reset_timeout`` and closes when it succeeds.

    Script the API to fail the first ``fail_max x api_retry.attempts`` requests
    (``"reset x20"``: connections dropped) and answer afterwards. Makes ``fail_max + 2``
    calls, waits ``reset_timeout - 1`` s (one call: still open), 1 s more, then the trial
    and one more call. Run it on the virtual clock (an outage of dropped connections
    leaves no idle socket open, which would hold that clock to real speed). Judge
    ``observer`` with ``expect_transitions``; calls rejected while open must not reach
    the API.
    """
    from pytest_resilience import BreakerObserver

    if observer is None:  # a scenario passes its own
        observer = BreakerObserver(name="trends-api breaker")
    policy = settings.breaker

    def changed(old: str, new: str) -> None:
        observer.report(old, new, "content_service breaker")

    run = BreakerRun(observer)
    async with TrendsClient(trends_api_url, settings, defect=defect,
                            on_state_change=changed) as client:
        client.fetch_once = observer.backend(client.fetch_once)  # type: ignore[method-assign]

        async def call() -> None:
            run.outcomes.append(await _attempt(observer.acall(client.fetch_live)))

        for _ in range(policy.fail_max + 2):
            await call()
        await asyncio.sleep(policy.reset_timeout - 1)
        await call()
        await asyncio.sleep(1)
        await call()  # the trial
        await call()
    return run


async def fallback_while_api_down(
    trends_api_url: str, calls: int = 8, settings: Settings = TESTING, defect: str | None = None
) -> list[object]:
    """Claim: while the trends API is down, the last good answer is served (``stale``).

    Script one good answer, then an outage (``['200 {"items": [...]}', "reset forever"]``).
    Returns what each of *calls* ``get_trends()`` calls served: a ``Trends`` or a
    ``Failed``. Run it on the virtual clock (retries and the open breaker take no time).
    """
    async with TrendsClient(trends_api_url, settings, defect=defect) as client:
        return [await _attempt(client.get_trends()) for _ in range(calls)]


async def query_times_out_under_stall(
    pg_proxy: Any, judge: Judge | None = None, stall_ms: int = 2000,
    settings: Settings = TESTING, defect: str | None = None,
) -> tuple[Timed, object]:
    """Claim: a query on a stalled Postgres fails with ``TimeoutError`` after
    ``query_timeout``, the event loop keeps serving, and the pool serves the next query.

    Stores article 1, stalls every answer from Postgres by *stall_ms* (latency toxic on
    *pg_proxy*), reads it (the timed operation, inside ``judge()``), removes the stall and
    reads it again. Returns (the stalled read, the next read: ``"hello"`` or a Failed).
    """
    async with await ArticleStore.open(pg_proxy.dsn, settings, defect=defect) as store:
        await store.migrate()
        await store.add(1, "hello")
        with pg_proxy.latency(stall_ms):
            stalled = await _timed(lambda: store.title(1), judge)
        after = await _attempt(asyncio.wait_for(store.title(1), 5.0))
    return stalled, after


async def pool_health_grades(
    postgres_dsn: str, settings: Settings = TESTING, defect: str | None = None
) -> dict[str, Health]:
    """Claim: the pool-health monitor grades the pool healthy, degraded (most connections
    busy) and critical (all busy), and healthy again once they are released.

    Holds pool connections to make each state; returns the monitor's report per phase:
    ``idle``, ``busy``, ``exhausted``, ``released``.
    """
    async with await ArticleStore.open(postgres_dsn, settings, defect=defect) as store:
        monitor = PoolHealthMonitor(store, settings, defect=defect)
        report = {"idle": await monitor.check()}
        held: list[Any] = []
        try:
            for phase, count in (
                ("busy", math.ceil(settings.health_busy_share * settings.pool_max)),
                ("exhausted", settings.pool_max),
            ):
                while len(held) < count:
                    held.append(await store.pool.acquire(timeout=5.0))
                report[phase] = await monitor.check()
        finally:
            for conn in held:
                await store.pool.release(conn)
        report["released"] = await monitor.check()
    return report


async def trends_while_retrying(
    trends_api_url: str, settings: Settings = TESTING, defect: str | None = None
) -> object:
    """Claim: retry waits do not block the event loop (nor does anything else in a call).

    One ``get_trends()`` with retries waiting 100-200 ms then 200-400 ms (long enough for
    a blocked loop to stand out from a busy machine's scheduling noise). Script
    ``["503 x2", '200 {"items": [...]}']``; measure the loop's lag around the call
    (``LoopLagProbe``). Returns what was served.
    """
    slow = replace(settings, api_retry=RetryPolicy(3, initial=0.2, cap=1.0))
    async with TrendsClient(trends_api_url, slow, defect=defect) as client:
        return await _attempt(client.get_trends())


async def task_is_cut_off(
    judge: Judge | None = None, work_minutes: int = 60,
    settings: Settings = TESTING, defect: str | None = None,
) -> Timed:
    """Claim: a task is cut off after ``task_timeout`` (15 minutes) with ``TaskTimedOut``.

    Runs a *work_minutes* job through the executor (the timed operation, inside
    ``judge()``). Run it on the virtual clock.
    """
    executor = TaskExecutor(settings.task_timeout, defect=defect)

    async def reindex() -> str:
        for _ in range(work_minutes):
            await asyncio.sleep(60)
        return "done"

    return await _timed(lambda: executor.run("reindex", reindex), judge)


async def serve_and_shut_down(
    postgres_dsn: str, trends_api_url: str, workdir: str | Path, settings: Settings = TESTING,
    defect: str | None = None,
) -> ShutdownRun:
    """Claim: on shutdown the service closes its API client session, its Postgres pool
    and its access log file.

    Starts the ASGI app (lifespan), serves ``/livez``, ``/readyz``, ``/trends`` (script a
    good answer) and ``/articles/1``, shuts down. Check for leaks around the call.
    """
    service = ContentService(postgres_dsn, trends_api_url, Path(workdir), settings,
                             defect=defect)
    app = ContentApp(service)
    responses: dict[str, tuple[int, object]] = {}
    async with lifespan(app):
        await service.store.add(1, "hello")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://content") as client:
            for path in ("/livez", "/readyz", "/trends", "/articles/1"):
                response = await client.get(path)
                responses[path] = (response.status_code, response.json())
    return ShutdownRun(responses, service)
