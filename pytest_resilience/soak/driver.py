"""The load/soak driver: calls a target at a fixed arrival rate (open model) or
back to back from N workers (closed model), samples at a fixed interval, and cycles
faults, all bounded in count and time.

Open model: arrival *i* is due at ``start + i / rate`` whether or not earlier calls
have finished; at most ``concurrency`` calls run at once and the others queue. A call's
latency is measured from its *due time*, so a slow target shows as queueing and
growing latency, not as a quietly lower rate (no coordinated omission). Arrivals that
find ``max_queue`` calls already waiting are dropped and counted.

Ctrl-C (SIGINT to ``asyncio.run``) cancels the run: the calls in flight are cancelled,
the partial record is finished (``ended: "interrupted"``) and the interrupt goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import re
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pytest_resilience.errors import ConfigError
from pytest_resilience.faults import parse_duration
from pytest_resilience.soak.hist import Histogram
from pytest_resilience.soak.record import SoakRecord, Stage
from pytest_resilience.soak.sampler import Sampler

__all__ = ["Driver", "FaultCycle", "LoadPlan", "parse_soak"]

#: The hard bounds of any run (a typo must not start a week-long loop).
MAX_DURATION = 7 * 24 * 3600.0
MAX_ITERATIONS = 1_000_000_000
MAX_CONCURRENCY = 10_000


def parse_soak(text: str, what: str = "--resilience-soak") -> dict[str, Any]:
    """``"60s"``/``"15m"``/``"24h"`` -> ``{"duration": s}``; ``"5000"`` (a plain count)
    -> ``{"iterations": 5000}``."""
    value = text.strip()
    if re.fullmatch(r"[0-9]+", value):
        iterations = int(value)
        if not 1 <= iterations <= MAX_ITERATIONS:
            raise ConfigError(f"{what}={text}: iterations must be 1..{MAX_ITERATIONS}")
        return {"iterations": iterations}
    try:
        seconds = parse_duration(value, what, unit_required=True)
    except ConfigError:
        raise ConfigError(f"{what}={text!r}: give a duration (60s, 15m, 24h) or a number of "
                          "calls (5000)") from None
    if not 0 < seconds <= MAX_DURATION:
        raise ConfigError(f"{what}={text!r}: the duration must be above 0 and at most 7 days")
    return {"duration": seconds}


def _seconds(value: float | str | None, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_duration(value, what)
    return float(value)


@dataclass(frozen=True)
class LoadPlan:
    """How a run is driven. At least one of ``duration`` / ``iterations`` bounds it."""

    duration: float | None = None
    iterations: int | None = None
    rate: float | None = None  # arrivals per second (open model); None: closed model
    concurrency: int = 1
    warmup: float = 0.0
    interval: float = 1.0  # sampling interval
    drain: float = 10.0  # how long calls in flight may finish after the end
    max_queue: int | None = None  # default: 10 s of arrivals, at least 1000

    @classmethod
    def make(cls, **values: Any) -> LoadPlan:
        """A plan from user-facing values (durations as ``"60s"`` or seconds)."""
        for key in ("duration", "warmup", "interval", "drain"):
            if key in values:
                values[key] = _seconds(values[key], key)
        values = {k: v for k, v in values.items() if v is not None}
        return cls(**values)

    def __post_init__(self) -> None:
        if self.duration is None and self.iterations is None:
            raise ConfigError("a soak run needs a bound: duration= (e.g. '60s') and/or "
                              "iterations= (a number of calls)")
        if self.duration is not None and not 0 < self.duration <= MAX_DURATION:
            raise ConfigError(f"duration={self.duration!r}: above 0 and at most 7 days")
        if self.iterations is not None and not 1 <= self.iterations <= MAX_ITERATIONS:
            raise ConfigError(f"iterations={self.iterations!r}: 1..{MAX_ITERATIONS}")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise ConfigError(f"rate={self.rate!r}: calls per second, above 0")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ConfigError(f"concurrency={self.concurrency!r}: 1..{MAX_CONCURRENCY}")
        if not 0.01 <= self.interval <= 3600:
            raise ConfigError(f"interval={self.interval!r}: between 10 ms and 1 h")
        if self.warmup < 0 or (self.duration is not None and self.warmup >= self.duration):
            raise ConfigError(f"warmup={self.warmup!r}: at least 0 and shorter than the run "
                              f"({self.duration} s)")

    def with_soak(self, override: dict[str, Any]) -> LoadPlan:
        """This plan bounded by ``--resilience-soak`` instead of its own bound."""
        if "duration" in override:
            warmup = min(self.warmup, override["duration"] / 2)
            return replace(self, duration=override["duration"], iterations=None,
                           warmup=warmup)
        return replace(self, iterations=override["iterations"], duration=None)

    def as_dict(self) -> dict[str, Any]:
        return {"duration_s": self.duration, "iterations": self.iterations,
                "rate": self.rate, "concurrency": self.concurrency,
                "model": "open" if self.rate is not None else "closed"}


class FaultCycle(Protocol):
    """Faults applied during the run: ``tick`` is called about every 20 ms with the
    seconds since the start, ``heal_all`` once at the end; ``stages`` are the windows
    each fault was active."""

    def tick(self, now: float) -> None: ...
    def heal_all(self, now: float) -> None: ...
    def stages(self) -> list[Stage]: ...
    def current(self) -> str: ...


@dataclass(slots=True)
class _Counters:
    calls: int = 0
    errors: int = 0
    started: int = 0
    dropped: int = 0
    latencies: list[float] = field(default_factory=list)
    #: per worker: when its call in flight became due (inf: idle) - the sampler reports
    #: the oldest one's age, so a call still hanging shows as slow before it ends
    busy: list[float] = field(default_factory=list)
    sampled_calls: int = 0  # calls / errors at the last sample
    sampled_errors: int = 0
    stop: bool = False  # the closed model's workers stop (also set with the event)
    error_types: dict[str, int] = field(default_factory=dict)


class Driver:
    """One run of ``target`` under ``plan``; :attr:`record` holds what was measured,
    also after an interrupt."""

    TICK = 0.02

    def __init__(self, target: Callable[[], Any], plan: LoadPlan, *, name: str = "soak",
                 sampler: Sampler | None = None, faults: FaultCycle | None = None,
                 on_sample: Callable[[dict[str, Any]], None] | None = None) -> None:
        if not callable(target):
            raise ConfigError(f"the soak target must be a callable, got {target!r}")
        self.target = target
        self.plan = plan
        self.sampler = sampler or Sampler()
        self.faults = faults
        self.on_sample = on_sample
        self.is_async = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
            type(target).__call__)
        self.record = SoakRecord(name=name, started=time.time(), interval=plan.interval,
                                 warmup=plan.warmup, source=socket.gethostname(),
                                 plan=plan.as_dict())
        self._c = _Counters()
        self._stop: asyncio.Event | None = None
        self._t0 = 0.0
        self._executor: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[float | None] | None = None

    @property
    def calls(self) -> int:
        """Calls completed so far."""
        return self._c.calls

    # -- the run -------------------------------------------------------------------------

    async def run(self) -> SoakRecord:
        loop = asyncio.get_running_loop()
        plan = self.plan
        self._stop = asyncio.Event()
        if not self.is_async:
            self._executor = ThreadPoolExecutor(plan.concurrency, thread_name_prefix="soak")
        self._t0 = time.monotonic()
        self.record.started = time.time()
        self._c.busy = [math.inf] * plan.concurrency
        own = self.sampler.own_tasks
        this = asyncio.current_task()
        if this is not None:
            own.add(this)
        workers: list[asyncio.Task[Any]] = []
        helpers: list[asyncio.Task[Any]] = []
        ticker: asyncio.Task[Any] | None = None
        healed = False
        ended = "duration"

        def helper(coro: Any, name: str) -> asyncio.Task[Any]:
            task = loop.create_task(coro, name=name)
            helpers.append(task)
            own.add(task)
            return task

        try:
            helper(self._sampling(), "soak-sampler")
            if self.faults is not None:
                ticker = helper(self._ticking(), "soak-faults")
            if plan.rate is not None:
                queue: asyncio.Queue[float | None] = asyncio.Queue()
                self._queue = queue
                workers = [loop.create_task(self._open_worker(queue, i),
                                            name=f"soak-worker-{i}")
                           for i in range(plan.concurrency)]
                own.update(workers)
                ended = await helper(self._dispatch(queue), "soak-dispatch")
            else:
                workers = [loop.create_task(self._closed_worker(i), name=f"soak-worker-{i}")
                           for i in range(plan.concurrency)]
                own.update(workers)
                ended = await self._closed_end()
            # the planned end: faults stop here, not after the drain
            if ticker is not None and self.faults is not None:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
                healed = True
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.faults.heal_all, time.monotonic() - self._t0)
            # drain: calls in flight (and queued) may finish within plan.drain
            done, pending = await asyncio.wait(workers, timeout=plan.drain) if workers \
                else (set(), set())
            if pending:
                self.record.totals["unfinished"] = len(pending)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                task.result()  # a bug in the driver itself surfaces here
        except asyncio.CancelledError:
            ended = "interrupted"
            raise
        finally:
            self.record.ended = ended
            for task in [*workers, *helpers]:
                task.cancel()
            await asyncio.gather(*workers, *helpers, return_exceptions=True)
            now = time.monotonic() - self._t0
            await self._take_sample(now)
            if self.faults is not None:
                if not healed:
                    with contextlib.suppress(Exception):
                        await asyncio.to_thread(self.faults.heal_all, now)
                self.record.stages = self.faults.stages()
            self._finish(now)
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
        return self.record

    def _deadline(self) -> float:
        return self.plan.duration if self.plan.duration is not None else MAX_DURATION

    async def _closed_end(self) -> str:
        """Closed model: wait for the duration or for the workers to run out of calls."""
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=self._deadline())
        if self._stop.is_set():
            return "iterations"
        self._stop.set()
        self._c.stop = True
        return "duration"

    async def _dispatch(self, queue: asyncio.Queue[float | None]) -> str:
        plan = self.plan
        assert plan.rate is not None
        period = 1.0 / plan.rate
        limit = plan.iterations if plan.iterations is not None else MAX_ITERATIONS
        max_queue = plan.max_queue or max(1000, int(plan.rate * 10))
        deadline = self._t0 + self._deadline()
        c = self._c
        i = 0
        ended = "duration"
        while True:
            now = time.monotonic()
            while i < limit:
                due = self._t0 + i * period
                if due > now or due >= deadline:
                    break
                if queue.qsize() >= max_queue:
                    c.dropped += 1
                else:
                    queue.put_nowait(due)
                i += 1
            if i >= limit:
                ended = "iterations"
                break
            due = self._t0 + i * period
            if due >= deadline:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        assert self._stop is not None
        self._stop.set()
        for _ in range(plan.concurrency):
            queue.put_nowait(None)
        return ended

    async def _open_worker(self, queue: asyncio.Queue[float | None], slot: int) -> None:
        if not self.is_async:
            while (due := await queue.get()) is not None:
                await self._call_sync(due, slot)
            return
        clock = time.monotonic
        target = self.target
        c = self._c
        busy = c.busy
        while (due := await queue.get()) is not None:
            c.started += 1
            busy[slot] = due
            try:
                await target()
            except Exception as exc:
                self._failed(exc)
            busy[slot] = math.inf
            c.calls += 1
            c.latencies.append(clock() - due)

    async def _closed_worker(self, slot: int) -> None:
        clock = time.monotonic
        c = self._c
        stop = self._stop
        assert stop is not None
        limit = self.plan.iterations if self.plan.iterations is not None else MAX_ITERATIONS
        if not self.is_async:
            while not stop.is_set():
                if c.started >= limit:
                    stop.set()
                    return
                await self._call_sync(clock(), slot)
            return
        target = self.target
        # the hot loop: local names, a plain flag and a countdown (no Event call per call)
        latencies = c.latencies
        busy = c.busy
        while not c.stop:
            if c.started >= limit:
                c.stop = True
                stop.set()
                return
            c.started += 1
            began = busy[slot] = clock()
            try:
                await target()
            except Exception as exc:
                self._failed(exc)
            busy[slot] = math.inf
            c.calls += 1
            if latencies is not c.latencies:  # the sampler took the list
                latencies = c.latencies
            latencies.append(clock() - began)
            if not c.started & 63:  # a target that never suspends must not starve the
                await asyncio.sleep(0)  # sampler, the faults and the duration bound

    def _failed(self, exc: Exception) -> None:
        c = self._c
        c.errors += 1
        name = type(exc).__name__
        c.error_types[name] = c.error_types.get(name, 0) + 1

    async def _call_sync(self, due: float, slot: int) -> None:
        loop = asyncio.get_running_loop()
        c = self._c
        c.started += 1
        c.busy[slot] = due
        try:
            await loop.run_in_executor(self._executor, self.target)
        except Exception as exc:
            self._failed(exc)
        c.busy[slot] = math.inf
        c.calls += 1
        c.latencies.append(time.monotonic() - due)

    # -- sampling and faults ---------------------------------------------------------------

    async def _sampling(self) -> None:
        interval = self.plan.interval
        n = 1
        while True:
            await asyncio.sleep(max(0.0, self._t0 + n * interval - time.monotonic()))
            await self._take_sample(time.monotonic() - self._t0)
            n = max(n + 1, int((time.monotonic() - self._t0) / interval) + 1)

    async def _ticking(self) -> None:
        assert self.faults is not None
        while True:
            await asyncio.to_thread(self.faults.tick, time.monotonic() - self._t0)
            await asyncio.sleep(self.TICK)

    async def _take_sample(self, now: float) -> None:
        c = self._c
        latencies, c.latencies = c.latencies, []
        calls, c.sampled_calls = c.calls - c.sampled_calls, c.calls
        errors, c.sampled_errors = c.errors - c.sampled_errors, c.errors
        interval = Histogram()
        interval.record_many(latencies)
        self.record.histogram.add(interval)
        series = self.record.series
        previous = series["t"][-1] if series["t"] else 0.0
        span = max(now - previous, 1e-9)
        sample: dict[str, Any] = {
            "t": round(now, 6), "calls": c.calls, "errors": c.errors,
            "in_flight": c.started - c.calls + (self._queue.qsize() if self._queue else 0),
            "rate": round(calls / span, 3),
            "error_rate": round(errors / calls, 6) if calls else None,
        }
        if interval.count:
            sample.update({"p50_s": interval.percentile(50), "p95_s": interval.percentile(95),
                           "p99_s": interval.percentile(99), "max_s": interval.max})
        else:
            sample.update({"p50_s": None, "p95_s": None, "p99_s": None, "max_s": None})
        # a call still running is already at least this slow: without it a call that
        # hangs through a fault would show only in the sample after it ends (or never)
        oldest = min(c.busy, default=math.inf)
        if oldest < math.inf:
            age = round(self._t0 + now - oldest, 6)
            if sample["max_s"] is None or age > sample["max_s"]:
                sample["max_s"] = age
        sample.update(await self.sampler.sample())
        if self.faults is not None:
            sample["stage"] = self.faults.current()
        self.record.add_sample(sample)
        if self.on_sample is not None:
            with contextlib.suppress(Exception):
                self.on_sample({**sample, "elapsed": now,
                                "p95_run_s": self.record.histogram.percentile(95)})

    def _finish(self, now: float) -> None:
        c = self._c
        totals = self.record.totals
        totals.update({"calls": c.calls, "errors": c.errors, "dropped": c.dropped,
                       "elapsed_s": round(now, 6)})
        if c.error_types:
            totals["error_types"] = dict(sorted(c.error_types.items(), key=lambda kv: -kv[1]))
        attempts = self.record.series.get("attempts")
        if attempts:
            last = [a for a in attempts if a is not None]
            if last:
                totals["attempts"] = last[-1]
        if self.sampler.problems:
            totals["not_measured"] = dict(self.sampler.problems)
        if self.record.histogram.clamped:
            totals["clamped_over_1h"] = self.record.histogram.clamped


def run_sync(driver: Driver) -> SoakRecord:
    """Run ``driver`` on a fresh event loop (``asyncio.run``); raises
    ``RuntimeError`` inside a running loop (use ``await driver.run()`` there)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("soak.run() was called inside a running event loop: in an async "
                           "test, use `await soak.arun(target)`")
    return asyncio.run(driver.run())


Target = Callable[[], Awaitable[Any]] | Callable[[], Any]
