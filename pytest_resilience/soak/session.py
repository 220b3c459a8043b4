"""A soak run inside a pytest test: the plan from the marker and ``--resilience-soak``,
live progress through the terminal reporter, the record written next to
``results.json`` and attached to the report, JUnit properties with the key figures.

Used by the ``soak`` fixture (Python tests) and by the scenario runner (scenarios whose
``drive`` is a load run); no pytest hooks here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_resilience.config import settings_key
from pytest_resilience.errors import ConfigError
from pytest_resilience.report.state import attach
from pytest_resilience.soak.driver import Driver, FaultCycle, LoadPlan, run_sync
from pytest_resilience.soak.record import SoakRecord, slug
from pytest_resilience.soak.sampler import Sampler
from pytest_resilience.verdicts.core import Verdict, fmt_s

__all__ = ["Progress", "SoakResult", "SoakRunner", "plan_for"]

#: the JUnit property names of the key figures (``resilience_soak_<figure>``)
PROPERTY_PREFIX = "resilience_soak_"
_MARK_KEYS = ("duration", "iterations", "rate", "concurrency", "warmup", "interval", "drain",
              "max_queue")


def plan_for(item: pytest.Item, **defaults: Any) -> LoadPlan:
    """The plan of ``item``: ``defaults`` < the ``soak`` marker < ``--resilience-soak``."""
    __tracebackhide__ = True
    values = dict(defaults)
    marker = item.get_closest_marker("soak")
    if marker is not None:
        if marker.args:
            raise ConfigError(f"@pytest.mark.soak takes keywords only ({', '.join(_MARK_KEYS)})"
                              f", got positional {marker.args!r}")
        unknown = set(marker.kwargs) - set(_MARK_KEYS)
        if unknown:
            raise ConfigError(f"@pytest.mark.soak: unknown keyword(s) {sorted(unknown)}; "
                              f"known: {', '.join(_MARK_KEYS)}")
        values.update(marker.kwargs)
    if "duration" not in values and "iterations" not in values:
        values["duration"] = 10.0
    plan = LoadPlan.make(**values)
    override = item.config.stash[settings_key].soak
    return plan.with_soak(override) if override else plan


class Progress:
    """Live progress of one soak run: a single updating line on a TTY, plain periodic
    lines otherwise (CI logs: no control characters), nothing under ``-q``."""

    def __init__(self, config: pytest.Config, name: str, plan: LoadPlan,
                 every: float | None = None) -> None:
        self.config = config
        self.name = name
        self.plan = plan
        self.reporter: Any = config.pluginmanager.get_plugin("terminalreporter")
        self.capman = config.pluginmanager.get_plugin("capturemanager")
        self.quiet = config.get_verbosity() < 0 or self.reporter is None
        self.tty = bool(getattr(self.reporter, "isatty", False))
        span = plan.duration or 60.0
        self.every = every if every is not None else min(30.0, max(plan.interval, span / 10))
        self._last = -1e9
        self._shown = False

    def line(self, s: dict[str, Any]) -> str:
        plan = self.plan
        elapsed = float(s.get("elapsed", s.get("t", 0.0)))
        if plan.duration is not None:
            where = f"{elapsed:.0f}/{plan.duration:.0f} s"
        else:
            where = f"{s.get('calls', 0)}/{plan.iterations} calls, {elapsed:.0f} s"
        text = (f"soak {self.name}: {where}, {s.get('calls', 0)} calls "
                f"({s.get('rate', 0):.0f}/s), {s.get('errors', 0)} errors, "
                f"p95 {fmt_s(s.get('p95_run_s'))}")
        stage = s.get("stage")
        if stage:
            text += f", stage: {stage}"
        return text

    def __call__(self, sample: dict[str, Any]) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if not self.tty and now - self._last < self.every:
            return
        self._last = now
        self._write(self.line(sample))

    def _write(self, text: str, end: bool = False) -> None:
        ctx = (self.capman.global_and_fixture_disabled() if self.capman is not None
               else contextlib.nullcontext())
        with ctx:
            if self.tty:
                width = max(20, self.reporter._tw.fullwidth - 1)
                self.reporter.write("\r" + text[:width].ljust(width), flush=True)
                if end:
                    self.reporter.write("\n")
            else:
                self.reporter.write_line(text)
            self._shown = True

    def done(self, record: SoakRecord) -> None:
        if self.quiet:
            return
        s = record.summary()
        text = (f"soak {self.name}: {record.ended} after {fmt_s(s.get('elapsed_s'))}, "
                f"{s['calls']} calls, {s['errors']} errors, p95 {fmt_s(s.get('p95_s'))}, "
                f"p99 {fmt_s(s.get('p99_s'))}")
        if self.tty:
            self._write(text, end=True)
        else:
            self._write(text)


@dataclass
class SoakResult:
    """What a soak run measured, and the drift verdicts over it."""

    record: SoakRecord

    @property
    def summary(self) -> dict[str, Any]:
        return self.record.summary()

    def expect_no_growth(self, series: str, **kwargs: Any) -> Verdict:
        """The series does not grow after warm-up (slope with a confidence bound)."""
        __tracebackhide__ = True
        from pytest_resilience.soak import drift

        return drift.expect_no_growth(self.record, series, **kwargs)

    def expect_rss_bounded(self, **kwargs: Any) -> Verdict:
        """RSS at the end at most ``ratio`` x RSS after warm-up (default 1.3)."""
        __tracebackhide__ = True
        from pytest_resilience.soak import drift

        return drift.expect_rss_bounded(self.record, **kwargs)

    def expect_sustained(self, series: str, **kwargs: Any) -> Verdict:
        """``series`` is never above ``at_most`` for ``consecutive`` samples in a row."""
        __tracebackhide__ = True
        from pytest_resilience.soak import drift

        return drift.expect_sustained(self.record, series, **kwargs)

    def expect_stage_latency(self, **kwargs: Any) -> Verdict:
        """Latency during each fault window vs outside, and recovery after it."""
        __tracebackhide__ = True
        from pytest_resilience.soak import drift

        return drift.expect_stage_latency(self.record, **kwargs)

    def expect_amplification(self, **kwargs: Any) -> Verdict:
        """Requests reaching the watched backends per call at most ``at_most``."""
        __tracebackhide__ = True
        from pytest_resilience.soak import drift

        return drift.expect_amplification(self.record, **kwargs)

    def expect_error_rate(self, at_most: float) -> Verdict:
        """At most this share of all calls raised."""
        __tracebackhide__ = True
        from pytest_resilience.soak.drift import DriftFailed

        return error_rate_verdict(self.record, at_most).check(DriftFailed)


def error_rate_verdict(record: SoakRecord, at_most: float) -> Verdict:
    """The share of a run's calls that raised, against ``at_most`` (naming the errors)."""
    calls = int(record.totals.get("calls", 0))
    errors = int(record.totals.get("errors", 0))
    rate = errors / calls if calls else 1.0
    types = record.totals.get("error_types") or {}
    return Verdict(
        kind="error-rate", claim=f"at most {at_most:.1%} of calls fail",
        passed=bool(calls) and rate <= at_most, expected={"max": at_most},
        observed={"rate": rate, "failed": errors, "calls": calls, "types": types},
        outcome=(f"{errors} of {calls} failed ({rate:.2%})" if calls
                 else "not measured: no call completed")
        + (": " + ", ".join(f"{n} {t}" for t, n in types.items()) if types else ""),
    )


def _attempts(watch: Iterable[Any]) -> Callable[[], int] | None:
    sources = list(watch)
    if not sources:
        return None

    def count() -> int:
        total = 0
        for source in sources:
            if callable(source):
                total += int(source())
            elif hasattr(source, "requests"):
                total += len(source.requests)
            else:
                raise ConfigError(f"watch= takes HTTP backends or callables, got {source!r}")
        return total

    return count


def pg_session_counter(request: pytest.FixtureRequest, *, used: bool = False
                       ) -> Callable[[], int] | None:
    """Counts the sessions connected to the test's database (the plugin's own excluded),
    when the test uses ``postgres_db`` (``pg_proxy`` does; ``used``: it was requested
    dynamically)."""
    if not used and "postgres_db" not in request.fixturenames:
        return None
    from pytest_resilience.services.postgres import APPLICATION_NAME

    db = request.getfixturevalue("postgres_db")

    def count() -> int:
        sessions = db.server.connected_sessions(db.dbname)
        return sum(1 for s in sessions if not s.startswith(APPLICATION_NAME))

    return count


class SoakRunner:
    """The ``soak`` fixture: ``soak.run(target)`` drives it under the test's plan."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.request = request
        self.results: list[SoakResult] = []

    def plan(self, **overrides: Any) -> LoadPlan:
        """The plan this test's runs use (marker, then ``--resilience-soak``)."""
        return plan_for(self.request.node, **overrides)

    def _driver(self, target: Callable[[], Any], *, probe: Callable[[], dict[str, Any]] | None,
                watch: Iterable[Any], faults: FaultCycle | None, pg_sessions: bool,
                name: str | None, plan: dict[str, Any]) -> tuple[Driver, Progress]:
        __tracebackhide__ = True
        item = self.request.node
        try:
            load: LoadPlan | None = plan_for(item, **plan)
            problem = ""
        except ConfigError as exc:
            load, problem = None, str(exc)
        if load is None:  # failed outside the except block: one message, no chain
            pytest.fail(f"{item.nodeid}: {problem}", pytrace=False)
        sampler = Sampler(probe=probe, attempts=_attempts(watch),
                          pg_sessions=pg_session_counter(self.request) if pg_sessions
                          else None)
        label = name or item.nodeid
        progress = Progress(item.config, item.name, load)
        return Driver(target, load, name=label, sampler=sampler, faults=faults,
                      on_sample=progress), progress

    def run(self, target: Callable[[], Any], *, probe: Callable[[], dict[str, Any]] | None = None,
            watch: Iterable[Any] = (), faults: FaultCycle | None = None,
            pg_sessions: bool = True, name: str | None = None, **plan: Any) -> SoakResult:
        """Drive ``target`` (a no-argument callable, sync or async) under the plan and
        return what was measured. ``probe`` returns the target's own figures each sample
        (``pool_size``, ``pool_idle``, ``breaker``); ``watch`` the HTTP backends whose
        requests count as attempts; keywords override the marker (``rate=``...)."""
        __tracebackhide__ = True
        driver, progress = self._driver(target, probe=probe, watch=watch, faults=faults,
                                        pg_sessions=pg_sessions, name=name, plan=plan)
        try:
            run_sync(driver)
        finally:
            self._finish(driver, progress)
        return self.results[-1]

    async def arun(self, target: Callable[[], Any], *,
                   probe: Callable[[], dict[str, Any]] | None = None, watch: Iterable[Any] = (),
                   faults: FaultCycle | None = None, pg_sessions: bool = True,
                   name: str | None = None, **plan: Any) -> SoakResult:
        """:meth:`run` for async tests (on the test's running event loop)."""
        __tracebackhide__ = True
        driver, progress = self._driver(target, probe=probe, watch=watch, faults=faults,
                                        pg_sessions=pg_sessions, name=name, plan=plan)
        try:
            await driver.run()
        finally:
            self._finish(driver, progress)
        return self.results[-1]

    def _finish(self, driver: Driver, progress: Progress) -> None:
        record = driver.record
        progress.done(record)
        self.results.append(SoakResult(record))
        finish(self.request.node, record, index=len(self.results))


def finish(item: pytest.Item, record: SoakRecord, index: int = 1) -> None:
    """Write the record (with ``--resilience-report``), attach it, add JUnit
    properties; after an interrupt, put the partial record on the run's report."""
    summary = record.summary()
    directory = item.config.stash[settings_key].report
    entry: dict[str, Any] = {"name": record.name, "summary": summary}
    if directory is not None:
        name = slug(item.nodeid) + (f"-{index}" if index > 1 else "") + ".json"
        record.write(directory / "soak" / name)
        entry["file"] = f"soak/{name}"
    attach(item, "soak", **entry)
    for key, value in summary.items():
        if value is not None:
            prop = (PROPERTY_PREFIX + key, value)
            if prop not in item.user_properties:
                item.user_properties.append(prop)
    if record.ended == "interrupted":
        from pytest_resilience.report.plugin import record_key

        run = item.config.stash.get(record_key, None)
        if run is not None:
            run.add_report(item.nodeid, "call", "failed", summary.get("elapsed_s") or 0.0, [],
                           attachments=[{"kind": "soak", **entry}])
