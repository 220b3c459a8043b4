"""The soak driver in process: open vs closed model, bounds, errors, sampling, the
plan's validation, cancellation and the record's round trip. Real asyncio targets;
runs of 1-3 s; assertions on robust properties (a loaded 2-core machine is slow)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from pytest_resilience.errors import ConfigError
from pytest_resilience.soak.driver import Driver, LoadPlan, parse_soak, run_sync
from pytest_resilience.soak.record import SoakRecord, load, merge
from pytest_resilience.soak.sampler import Sampler

pytestmark = pytest.mark.timeout(60)


async def _slow() -> None:
    await asyncio.sleep(0.1)


def _values(record: SoakRecord, series: str) -> list[Any]:
    return [v for v in record.column(series) if v is not None]


# -- open vs closed model ------------------------------------------------------------------


def test_open_model_keeps_the_arrival_rate_and_shows_queueing() -> None:
    # 50 arrivals/s, capacity 2 / 0.1 s = 20/s: the queue grows for the whole run
    plan = LoadPlan(duration=2.0, rate=50, concurrency=2, interval=0.25, drain=0.1)
    record = run_sync(Driver(_slow, plan))
    # about 100 arrivals; at most about 40 of them can have been served in 2 s
    assert record.totals["calls"] < 70, record.totals
    # queued calls: late against their due time, far beyond the 100 ms service time
    assert record.histogram.percentile(95) > 0.4, record.histogram
    p95 = _values(record, "p95_s")
    assert p95[-1] > p95[0] + 0.2, p95  # the lateness grows as the queue does
    # the queue left at the end did not finish within the drain
    assert record.totals.get("unfinished", 0) >= 1, record.totals
    assert record.plan["model"] == "open"
    assert record.ended == "duration"


def test_open_model_in_flight_counts_the_queue() -> None:
    plan = LoadPlan(duration=1.0, rate=50, concurrency=2, interval=0.25, drain=0.1)
    record = run_sync(Driver(_slow, plan))
    in_flight = _values(record, "in_flight")
    assert max(in_flight) >= 10, in_flight  # ~30 arrivals wait by the end


def test_closed_model_runs_back_to_back_without_queueing() -> None:
    plan = LoadPlan(duration=2.0, concurrency=2, interval=0.25)
    record = run_sync(Driver(_slow, plan))
    assert record.plan["model"] == "closed"
    assert max(_values(record, "in_flight")) <= 2
    # latency is the service time (plus scheduling noise), no queueing
    assert 0.09 <= record.histogram.percentile(50) < 0.4, record.histogram
    assert 4 <= record.totals["calls"] <= 42, record.totals
    assert record.totals["dropped"] == 0


# -- bounds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [None, 200.0], ids=["closed", "open"])
def test_iterations_bound_is_exact(rate: float | None) -> None:
    calls = 0

    async def target() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)

    record = run_sync(Driver(target, LoadPlan(iterations=37, rate=rate, concurrency=3,
                                              interval=0.1)))
    assert calls == 37
    assert record.totals["calls"] == 37
    assert record.histogram.count == 37
    assert record.ended == "iterations"


def test_a_target_that_never_suspends_still_ends_on_time() -> None:
    calls = 0

    async def busy() -> None:  # returns without ever giving the loop a turn
        nonlocal calls
        calls += 1

    plan = LoadPlan(duration=0.5, concurrency=2, interval=0.1)
    began = time.monotonic()
    record = run_sync(Driver(busy, plan))
    assert time.monotonic() - began < 10
    assert record.ended == "duration"
    assert record.totals["calls"] == calls > 0
    assert len(_values(record, "calls")) >= 3  # the sampler ran during the run


def test_duration_bound_ends_the_run_in_time() -> None:
    async def target() -> None:
        await asyncio.sleep(0.005)

    began = time.monotonic()
    record = run_sync(Driver(target, LoadPlan(duration=1.0, concurrency=2, interval=0.2)))
    elapsed = time.monotonic() - began
    assert 0.95 <= elapsed < 6.0
    assert 0.95 <= record.totals["elapsed_s"] < 6.0
    assert record.ended == "duration"
    assert record.totals["calls"] > 0
    assert record.series["t"][-1] == pytest.approx(record.totals["elapsed_s"], abs=1e-3)


# -- errors, sync targets ------------------------------------------------------------------


def test_errors_are_counted_by_type() -> None:
    n = 0

    async def target() -> None:
        nonlocal n
        n += 1
        if n % 3 == 0:
            raise ValueError("every third")
        if n % 5 == 0:
            raise KeyError("every fifth")

    record = run_sync(Driver(target, LoadPlan(iterations=30, interval=0.1)))
    # 10 multiples of 3, 6 of 5 of which 2 are multiples of 15 (ValueError wins)
    assert record.totals["error_types"] == {"ValueError": 10, "KeyError": 4}
    assert record.totals["errors"] == 14
    assert record.totals["calls"] == 30
    assert list(record.totals["error_types"]) == ["ValueError", "KeyError"]  # most first


@pytest.mark.parametrize("rate", [None, 100.0], ids=["closed", "open"])
def test_a_sync_target_runs_on_threads(rate: float | None) -> None:
    threads: set[str] = set()
    main = threading.current_thread().name

    def target() -> None:
        threads.add(threading.current_thread().name)
        time.sleep(0.002)  # the target blocks, not the test

    record = run_sync(Driver(target, LoadPlan(iterations=20, rate=rate, concurrency=2,
                                              interval=0.1)))
    assert record.totals["calls"] == 20
    assert main not in threads
    assert threads
    assert all(name.startswith("soak") for name in threads), threads


# -- sampling --------------------------------------------------------------------------------


def test_resource_series_are_sampled() -> None:
    record = run_sync(Driver(_slow, LoadPlan(duration=1.0, interval=0.2)))
    assert len(record.series["t"]) >= 3
    for series in ("rss_bytes", "fds", "threads", "tasks", "calls", "in_flight", "rate"):
        values = _values(record, series)
        assert values, f"{series} was not sampled: {record.series.get(series)}"
        assert len(record.column(series)) == len(record.series["t"])
    assert min(_values(record, "rss_bytes")) > 1 << 20
    assert min(_values(record, "fds")) >= 3
    assert min(_values(record, "threads")) >= 1


def test_tasks_counts_only_the_targets_tasks() -> None:
    leaked: list[asyncio.Task[None]] = []

    async def leaky() -> None:
        leaked.append(asyncio.get_running_loop().create_task(asyncio.Event().wait()))
        await asyncio.sleep(0.01)

    async def clean() -> None:
        await asyncio.sleep(0.01)

    async def both() -> tuple[SoakRecord, SoakRecord]:
        try:
            bad = await Driver(leaky, LoadPlan(duration=1.0, rate=40, concurrency=2,
                                               interval=0.2, drain=0.5)).run()
        finally:
            for task in leaked:
                task.cancel()
            await asyncio.gather(*leaked, return_exceptions=True)
        good = await Driver(clean, LoadPlan(duration=1.0, rate=40, concurrency=2,
                                            interval=0.2, drain=0.5)).run()
        return bad, good

    bad, good = asyncio.run(both())
    tasks = _values(bad, "tasks")
    assert tasks[-1] >= 20, tasks  # about 40 leaked
    assert tasks[-1] > tasks[0]
    assert tasks == sorted(tasks), tasks  # never shrinks: nobody finishes them
    assert max(_values(good, "tasks")) <= 2, good.series["tasks"]  # the clean target's own


def test_probe_and_attempts_readings_and_problems() -> None:
    attempts = {"n": 0}

    async def target() -> None:
        attempts["n"] += 2
        await asyncio.sleep(0)

    def broken() -> dict[str, Any]:
        raise OSError("pool is gone")

    sampler = Sampler(attempts=lambda: attempts["n"], probe=broken)
    record = run_sync(Driver(target, LoadPlan(iterations=10, interval=0.1), sampler=sampler))
    assert record.totals["attempts"] == 20
    assert record.summary()["attempts_per_call"] == 2.0
    assert record.totals["not_measured"] == {"probe": "OSError: pool is gone"}


class _Ticks:
    """A FaultCycle that only records when it was ticked."""

    def __init__(self) -> None:
        self.ticks: list[float] = []
        self.healed: float | None = None

    def tick(self, now: float) -> None:
        self.ticks.append(now)

    def heal_all(self, now: float) -> None:
        self.healed = now

    def stages(self) -> list[Any]:
        return []

    def current(self) -> str:
        return ""


def test_faults_are_ticked_during_the_run_and_healed_once() -> None:
    cycle = _Ticks()
    record = run_sync(Driver(_slow, LoadPlan(duration=1.0, concurrency=2, interval=0.1),
                             faults=cycle))
    assert len(cycle.ticks) >= 5  # about every 20 ms
    assert cycle.ticks == sorted(cycle.ticks)
    assert cycle.healed is not None
    assert cycle.healed >= cycle.ticks[-1]
    assert set(_values(record, "stage")) == {""}


def test_faults_stop_at_the_end_of_the_planned_duration() -> None:
    async def slower() -> None:
        await asyncio.sleep(0.5)

    cycle = _Ticks()
    # 10 arrivals in 1 s, 2 served: the drain (at most 1 s) outlasts the duration
    run_sync(Driver(slower, LoadPlan(duration=1.0, rate=10, concurrency=1, interval=0.1,
                                     drain=1.0), faults=cycle))
    assert max(cycle.ticks) < 1.1, cycle.ticks[-5:]


# -- the plan -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "a soak run needs a bound: duration= (e.g. '60s') and/or iterations="),
        ({"duration": 10, "rate": 0}, "rate=0: calls per second, above 0"),
        ({"duration": 10, "rate": -5.0}, "rate=-5.0: calls per second, above 0"),
        ({"duration": 10, "rate": float("inf")}, "rate=inf: calls per second, above 0"),
        ({"duration": "2s", "warmup": "2s"}, "warmup=2.0: at least 0 and shorter than the run"),
        ({"duration": "2s", "warmup": "5s"}, "warmup=5.0: at least 0 and shorter than the run"),
        ({"iterations": 0}, "iterations=0: 1..1000000000"),
        ({"duration": 10, "concurrency": 0}, "concurrency=0: 1..10000"),
        ({"duration": 10, "interval": "1ms"}, "interval=0.001: between 10 ms and 1 h"),
        ({"duration": "200h"}, "above 0 and at most 7 days"),
    ],
)
def test_plan_validation_messages(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        LoadPlan.make(**values)
    assert message in str(info.value)


def test_plan_make_accepts_duration_strings() -> None:
    plan = LoadPlan.make(duration="1m", warmup="500ms", interval="250ms", rate=10,
                         iterations=None)
    assert (plan.duration, plan.warmup, plan.interval, plan.iterations) == (60.0, 0.5, 0.25,
                                                                            None)
    assert plan.with_soak({"iterations": 300}).duration is None
    assert plan.with_soak({"iterations": 300}).iterations == 300
    shorter = plan.with_soak({"duration": 0.5})
    assert (shorter.duration, shorter.warmup) == (0.5, 0.25)  # warm-up kept shorter


@pytest.mark.parametrize(
    ("text", "expected"),
    [("60s", {"duration": 60.0}), ("15m", {"duration": 900.0}), ("24h", {"duration": 86400.0}),
     ("250ms", {"duration": 0.25}), ("5000", {"iterations": 5000}),
     (" 7 ", {"iterations": 7})],
)
def test_parse_soak(text: str, expected: dict[str, float]) -> None:
    assert parse_soak(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [("abc", "--resilience-soak='abc': give a duration (60s, 15m, 24h) or a number of calls"),
     ("60", None), ("0", "--resilience-soak=0: iterations must be 1..1000000000"),
     ("200h", "the duration must be above 0 and at most 7 days"),
     ("-5s", "give a duration")],
)
def test_parse_soak_errors(text: str, message: str | None) -> None:
    if message is None:  # a plain number is a count of calls
        assert parse_soak(text) == {"iterations": 60}
        return
    with pytest.raises(ConfigError) as info:
        parse_soak(text)
    assert message in str(info.value)


# -- a call that hangs -------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [None, 20.0], ids=["closed", "open"])
@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
def test_a_hanging_call_shows_in_max_s_while_it_hangs(rate: float | None,
                                                      is_async: bool) -> None:
    """The first call hangs until the fourth sample: no call completes meanwhile, and the
    samples must still show the slowest call growing (its age), not nothing."""
    hung: list[dict[str, Any]] = []
    release_async = asyncio.Event()
    release_sync = threading.Event()
    first = [True]

    def on_sample(sample: dict[str, Any]) -> None:
        if not release_sync.is_set():
            hung.append(sample)
        if len(hung) >= 4:
            release_async.set()
            release_sync.set()

    async def async_target() -> None:
        if first[0]:
            first[0] = False
            await asyncio.wait_for(release_async.wait(), timeout=20)

    def sync_target() -> None:
        if first[0]:
            first[0] = False
            assert release_sync.wait(timeout=20)

    plan = LoadPlan(duration=1.0, rate=rate, concurrency=1, interval=0.1, drain=5.0)
    record = run_sync(Driver(async_target if is_async else sync_target, plan,
                             on_sample=on_sample))
    assert len(hung) == 4
    ages = [s["max_s"] for s in hung]
    assert all(age is not None for age in ages), hung
    assert ages == sorted(ages), ages
    assert ages[-1] > ages[0], ages
    for sample in hung:  # the hung call began at the start of the run
        assert 0.5 * sample["t"] <= sample["max_s"] <= sample["t"] + 1e-6, hung
        assert sample["p95_s"] is None  # percentiles stay those of calls that ended
    # once released, the hung call is counted with its whole latency
    assert record.histogram.max >= ages[-1]


# -- cancellation -----------------------------------------------------------------------------


def test_cancelling_the_run_keeps_a_partial_record() -> None:
    async def main() -> tuple[Driver, BaseException | None]:
        sampled = asyncio.Event()
        driver = Driver(_slow, LoadPlan(duration=30.0, rate=20, concurrency=2, interval=0.1),
                        on_sample=lambda sample: sampled.set())
        run = asyncio.get_running_loop().create_task(driver.run())

        async def cancel_after_first_sample() -> None:
            await asyncio.wait_for(sampled.wait(), timeout=10)
            run.cancel()

        canceller = asyncio.get_running_loop().create_task(cancel_after_first_sample())
        outcome: BaseException | None = None
        try:
            await asyncio.wait_for(asyncio.shield(run), timeout=15)
        except asyncio.CancelledError as exc:
            outcome = exc
        await canceller
        return driver, outcome

    began = time.monotonic()
    driver, outcome = asyncio.run(main())
    assert isinstance(outcome, asyncio.CancelledError)  # the cancel goes on
    assert time.monotonic() - began < 15
    record = driver.record
    assert record.ended == "interrupted"
    assert len(record.series["t"]) >= 2  # the first sample and the final one
    assert record.totals["elapsed_s"] < 15
    assert "calls" in record.totals


# -- the record ----------------------------------------------------------------------------------


def test_record_round_trip_and_merge(tmp_path: Any) -> None:
    async def fast() -> None:
        await asyncio.sleep(0.001)

    plan = LoadPlan(iterations=40, concurrency=2, interval=0.05)
    one = run_sync(Driver(fast, plan, name="run"))
    two = run_sync(Driver(fast, plan, name="run"))
    one.source, two.source = "a", "b"

    again = SoakRecord.from_dict(json.loads(json.dumps(one.as_dict())))
    assert again.as_dict() == one.as_dict()
    assert again.histogram.count == 40
    assert again.histogram.percentile(99) == one.histogram.percentile(99)
    assert load(one.write(tmp_path / "soak" / "one.json")).as_dict() == one.as_dict()

    merged = merge([one, two])
    assert merged.histogram.count == one.histogram.count + two.histogram.count == 80
    assert merged.totals["calls"] == 80
    assert merged.source == "a+b"
    assert "rss_bytes@a" in merged.series
    assert "rss_bytes@b" in merged.series
    n = min(len(one.series["t"]), len(two.series["t"]))
    assert len(merged.series["t"]) == n
    assert merged.series["calls"][n - 1] == one.series["calls"][n - 1] + \
        two.series["calls"][n - 1]

    with pytest.raises(ValueError, match="not a soak record"):
        SoakRecord.from_dict({"format": "something/else"})
