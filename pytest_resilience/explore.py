"""Hypothesis-generated fault schedules that shrink to the smallest failing timeline.

Instead of hand-picking "Postgres slow for 2 s, then the API down", let Hypothesis search
the space of fault timelines against a service and hand back the smallest one that
breaks a claim::

    from pytest_resilience.explore import explore, fault_schedules

    def run_once(schedule):                  # apply, drive, heal, judge: raise if broken
        faults = schedule.fault_schedule(proxies={"db": pg_proxy}, backends={"api": api})
        ...                                  # drive the target, faults.tick(now) as it runs
        faults.heal_all(now)

    result = explore(run_once, fault_schedules(proxies=["db"], backends=["api"]),
                     max_examples=40, seed=7)
    result.check()                           # fails with the minimal schedule as YAML

Scenarios get the same through an ``explore:`` section (the scenario's ``expect`` are the
invariants). Steps trigger on logical time (``after: N calls``) as well as the clock:
logical triggers replay the same way however fast the machine is.

Flake-aware: a candidate counts as failing when it fails in ``m`` of ``k`` replays;
the minimal schedule found is replayed ``rate_runs`` times and the report states its
reproduction rate instead of raising Hypothesis's opaque ``Flaky``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_resilience.errors import ConfigError

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

    from pytest_resilience.soak.schedule import FaultSchedule

__all__ = ["ExploreResult", "Schedule", "Step", "explore", "fault_schedules"]

#: network faults the generator knows: attribute -> (low, high) integer bounds
NETWORK: dict[str, dict[str, tuple[int, int]]] = {
    "latency": {"latency": (10, 2000)},
    "down": {},
    "reset_peer": {"timeout": (0, 1000)},
    "timeout": {"timeout": (0, 2000)},
    "bandwidth": {"rate": (1, 100)},
    "fail_first": {"count": (1, 5)},
}
#: HTTP faults on a backend's answers
HTTP: dict[str, dict[str, Any]] = {
    "status": {"status": (500, 502, 503, 429)},
    "reset": {},
    "empty": {},
    "hang": {},
}
DEFAULT_NETWORK = ("latency", "down", "reset_peer")
DEFAULT_HTTP = ("status", "reset")


@dataclass(frozen=True)
class Step:
    """One generated fault: on a named target, from a trigger, for a window."""

    on: str
    fault: str
    attributes: tuple[tuple[str, Any], ...] = ()
    at_ms: int = 0
    after_calls: int | None = None
    for_ms: int | None = None

    def as_yaml_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"on": self.on, "fault": self.fault, **dict(self.attributes)}
        if self.after_calls is not None:
            out["after"] = f"{self.after_calls} calls"
        if self.at_ms:
            out["at"] = f"{self.at_ms}ms"
        if self.for_ms is not None:
            out["for"] = f"{self.for_ms}ms"
        return out

    def describe(self) -> str:
        attrs = ", ".join(f"{k}={v}" for k, v in self.attributes)
        when = (f"after {self.after_calls} calls" if self.after_calls is not None
                else f"at {self.at_ms} ms")
        if self.after_calls is not None and self.at_ms:
            when += f" + {self.at_ms} ms"
        span = f"for {self.for_ms} ms" if self.for_ms is not None else "to the end"
        return f"{self.fault}{f' ({attrs})' if attrs else ''} on {self.on} {when}, {span}"


@dataclass(frozen=True)
class Schedule:
    """A fault timeline: what Hypothesis draws, shrinks and reports."""

    steps: tuple[Step, ...] = ()

    def __len__(self) -> int:
        return len(self.steps)

    def as_faults(self) -> list[dict[str, Any]]:
        """The scenario ``faults:`` list (dicts, as YAML holds them)."""
        return [s.as_yaml_dict() for s in self.steps]

    def to_yaml(self) -> str:
        """A ``faults:`` section to paste into a scenario file."""
        if not self.steps:
            return "faults: []\n"
        lines = ["faults:"]
        for step in self.as_faults():
            body = ", ".join(f"{k}: {_yaml_scalar(v)}" for k, v in step.items())
            lines.append(f"  - {{{body}}}")
        return "\n".join(lines) + "\n"

    def describe(self) -> str:
        if not self.steps:
            return "no faults"
        return "; ".join(f"[{i}] {s.describe()}" for i, s in enumerate(self.steps))

    def fault_schedule(self, *, proxies: Mapping[str, Any] | None = None,
                       backends: Mapping[str, Any] | None = None,
                       calls: Callable[[], int] | None = None,
                       note: Callable[[float, str], None] | None = None) -> FaultSchedule:
        """This schedule on real targets: ``proxies`` (client ``Proxy`` objects) and
        ``backends`` (``HttpBackend``) by the names it was drawn with; ``calls`` counts
        completed calls (for ``after: N calls`` steps). Tick it as the target runs."""
        from pytest_resilience.soak.schedule import FaultSchedule

        proxies = dict(proxies or {})
        backends = dict(backends or {})
        out = FaultSchedule(note=note)
        counted = calls or (lambda: 0)
        for i, step in enumerate(self.steps):
            label = f"faults[{i}] {step.describe()}"
            apply = _applier(step, proxies, backends)
            after: Callable[[], bool] | None = None
            if step.after_calls is not None:
                n = step.after_calls
                after = lambda n=n: counted() >= n  # noqa: E731
            out.add(label, apply, at=step.at_ms / 1000,
                    for_=None if step.for_ms is None else step.for_ms / 1000,
                    after=after, after_label=f"after {step.after_calls} calls")
        return out


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, str) and (value[:1].isdigit() or ":" in value or "[" in value):
        return value if value.endswith(("ms", "calls")) else repr(value)
    return str(value)


def _applier(step: Step, proxies: Mapping[str, Any],
             backends: Mapping[str, Any]) -> Callable[[], Callable[[], None]]:
    from pytest_resilience.soak.schedule import http_fault, network_fault

    attrs = dict(step.attributes)
    if step.fault in HTTP:
        backend = backends.get(step.on)
        if backend is None:
            raise ConfigError(f"{step.fault} needs an HTTP backend named {step.on!r}; "
                              f"backends: {sorted(backends)}")
        return http_fault(backend, None, [{"fault": step.fault, **attrs, "times": "forever"}])
    proxy = proxies.get(step.on)
    if proxy is None:
        raise ConfigError(f"{step.fault} needs a proxy named {step.on!r}; proxies: "
                          f"{sorted(proxies)}")
    return network_fault(proxy, step.fault, attrs)


def fault_schedules(*, proxies: Sequence[str] = (), backends: Sequence[str] = (),
                    faults: Sequence[str] | None = None, max_faults: int = 3,
                    horizon: float = 3.0, max_calls: int | None = None,
                    min_window: float = 0.01, clock: bool = True) -> SearchStrategy[Schedule]:
    """Timelines of up to ``max_faults`` faults on the named ``proxies`` (network faults)
    and HTTP ``backends`` (their answers), each starting at a time within ``horizon``
    seconds or (with ``max_calls``) after 0..max_calls completed calls, for a window of
    ``min_window``..``horizon`` seconds or to the end. ``clock=False``: logical triggers
    only (needs ``max_calls``; the same run replays the same way). Shrinks to fewer
    faults, earlier triggers, shorter windows and smaller attributes."""
    try:
        from hypothesis import strategies as st
    except ImportError:
        raise ConfigError("fault schedules are drawn by Hypothesis, which is not installed: "
                          "pip install 'pytest-resilience[explore]'") from None

    if not proxies and not backends:
        raise ConfigError("fault_schedules() needs at least one of proxies= or backends=")
    if not 0 < max_faults <= 20:
        raise ConfigError(f"max_faults={max_faults}: 1..20")
    if not clock and max_calls is None:
        raise ConfigError("fault_schedules(clock=False) needs max_calls= (steps trigger "
                          "after a number of completed calls)")
    if not 0 < horizon <= 3600:
        raise ConfigError(f"horizon={horizon}: seconds, above 0 and at most an hour")
    wanted = tuple(faults) if faults is not None else DEFAULT_NETWORK + DEFAULT_HTTP
    unknown = [f for f in wanted if f not in NETWORK and f not in HTTP]
    if unknown:
        raise ConfigError(f"fault_schedules(faults=...): cannot generate {unknown}; known: "
                          f"{', '.join([*NETWORK, *HTTP])}")
    network = [f for f in wanted if f in NETWORK]
    http = [f for f in wanted if f in HTTP]
    horizon_ms = int(horizon * 1000)
    min_ms = max(1, int(min_window * 1000))

    choices: list[tuple[str, str]] = [(p, f) for p in proxies for f in network]
    choices += [(b, f) for b in backends for f in http]
    if not choices:
        raise ConfigError("fault_schedules(): no fault applies: network faults need "
                          "proxies=, HTTP faults need backends=")

    def pair(name: str, values: SearchStrategy[Any]) -> SearchStrategy[tuple[str, Any]]:
        return values.map(lambda v: (name, v))

    def attributes(fault: str) -> SearchStrategy[tuple[tuple[str, Any], ...]]:
        spec = NETWORK.get(fault) or HTTP.get(fault) or {}
        parts: list[SearchStrategy[tuple[str, Any]]] = []
        for name, bounds in spec.items():
            if fault in NETWORK:
                parts.append(pair(name, st.integers(bounds[0], bounds[1])))
            else:
                parts.append(pair(name, st.sampled_from(bounds)))
        return st.tuples(*parts) if parts else st.just(())

    @st.composite
    def step(draw: Any) -> Step:
        on, fault = draw(st.sampled_from(choices))
        attrs = draw(attributes(fault))
        after = None
        if max_calls is not None and (not clock or draw(st.booleans())):
            after = draw(st.integers(0, max_calls))
            at_ms = draw(st.integers(0, horizon_ms // 4)) if clock else 0
        else:
            at_ms = draw(st.integers(0, horizon_ms))
        window = draw(st.one_of(st.integers(min_ms, horizon_ms), st.none()))
        return Step(on, fault, attrs, at_ms, after, window)

    return st.lists(step(), max_size=max_faults).map(lambda steps: Schedule(tuple(steps)))


# --------------------------------------------------------------------------- the search


class _CandidateFailed(Exception):
    def __init__(self, schedule: Schedule, detail: str) -> None:
        super().__init__(detail)
        self.schedule = schedule
        self.detail = detail


@dataclass
class ExploreResult:
    """What a search found: the minimal failing schedule (``None``: nothing failed)."""

    schedule: Schedule | None
    detail: str = ""
    examples: int = 0
    failures_seen: int = 0
    elapsed: float = 0.0
    seed: int = 0
    reproduced: int = 0
    replayed: int = 0
    stopped_by_time: bool = False
    history: list[tuple[Schedule, str]] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.schedule is not None

    @property
    def rate(self) -> float:
        return self.reproduced / self.replayed if self.replayed else 0.0

    def report(self) -> str:
        limit = ", stopped by the time limit" if self.stopped_by_time else ""
        head = (f"explored {self.examples} fault schedules in {self.elapsed:.1f} s "
                f"(seed {self.seed}{limit})")
        if self.schedule is None:
            return head + ": no schedule broke the claims"
        return (f"{head}: the smallest schedule that breaks the claims has "
                f"{len(self.schedule)} fault(s) and failed {self.reproduced} of "
                f"{self.replayed} replays ({self.rate:.0%}):\n\n{self.schedule.to_yaml()}\n"
                f"{self.schedule.describe()}\n\nwhat failed:\n{self.detail}")

    def check(self) -> None:
        """Fail the running test with the report when a schedule broke the claims."""
        __tracebackhide__ = True
        if self.found:
            import pytest

            pytest.fail(self.report(), pytrace=False)


def _evaluate(run_once: Callable[[Schedule], Any], schedule: Schedule) -> str | None:
    """None when the claims held under ``schedule``, else what failed."""
    try:
        run_once(schedule)
    except AssertionError as exc:  # a verdict (VerdictFailed) or a plain assert
        return str(exc) or type(exc).__name__
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def explore(run_once: Callable[[Schedule], Any], strategy: SearchStrategy[Schedule], *,
            max_examples: int = 50, max_time: float = 120.0, seed: int = 0,
            replays: tuple[int, int] = (1, 1), rate_runs: int = 10) -> ExploreResult:
    """Search ``strategy`` for a schedule under which ``run_once`` fails (raises).

    ``run_once(schedule)`` applies the schedule, drives the target, heals everything and
    raises (an ``AssertionError`` such as a failed verdict) when a claim broke. A
    candidate fails when it fails in ``m`` of ``k`` runs (``replays=(m, k)``). The search
    is bounded by ``max_examples`` and ``max_time`` seconds (then candidates count as
    passing, so shrinking stops too); the minimal failing schedule is replayed
    ``rate_runs`` times for its reproduction rate."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis.errors import Flaky

    m, k = replays
    if not 1 <= m <= k <= 100:
        raise ConfigError(f"replays=({m}, {k}): need 1 <= m <= k <= 100 (fail in m of k)")
    if not 1 <= max_examples <= 100_000 or not 0 < max_time <= 24 * 3600:
        raise ConfigError("explore(): max_examples 1..100000, max_time above 0 and at most "
                          "a day")
    started = time.monotonic()
    deadline = started + max_time
    result = ExploreResult(schedule=None, seed=seed)

    def evaluate(schedule: Schedule) -> str | None:
        failed, detail = 0, ""
        for run in range(k):
            outcome = _evaluate(run_once, schedule)
            if outcome is not None:
                failed += 1
                detail = outcome
                result.failures_seen += 1
                result.history.append((schedule, outcome))
            if failed >= m or failed + (k - run - 1) < m:
                break
        return detail if failed >= m else None

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
              phases=[Phase.generate, Phase.shrink], print_blob=False)
    @hseed(seed)
    @given(strategy)
    def search(schedule: Schedule) -> None:
        if time.monotonic() > deadline:
            result.stopped_by_time = True
            return
        result.examples += 1
        detail = evaluate(schedule)
        if detail is not None:
            raise _CandidateFailed(schedule, detail)

    found: tuple[Schedule, str] | None = None
    try:
        search()
    except _CandidateFailed as exc:
        found = (exc.schedule, exc.detail)
    except Flaky:
        pass  # the smallest failing schedule seen is reported below, with its rate
    except BaseException as exc:
        group = getattr(exc, "exceptions", None)
        if group is None:
            raise
        hits = [e for e in group if isinstance(e, _CandidateFailed)]
        if not hits:
            raise
        found = (hits[0].schedule, hits[0].detail)
    if found is None and result.history:
        found = min(result.history, key=lambda h: (len(h[0]), repr(h[0])))
    if found is not None:
        schedule, detail = found
        result.schedule, result.detail = schedule, detail
        for _ in range(rate_runs):
            result.replayed += 1
            if _evaluate(run_once, schedule) is not None:
                result.reproduced += 1
    result.elapsed = time.monotonic() - started
    return result
