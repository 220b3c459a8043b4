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

import contextlib
import json
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_resilience.errors import ConfigError

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

    from pytest_resilience.soak.schedule import FaultSchedule

__all__ = ["ExploreResult", "InjectionLog", "ReplayResult", "Schedule", "Step", "explore",
           "fault_schedules", "logged_applier", "replay"]

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

    @classmethod
    def from_faults(cls, faults: Sequence[Mapping[str, Any]]) -> Schedule:
        """The schedule of a scenario ``faults:`` list (what :meth:`as_faults` writes):
        ``on``, ``fault``, ``after: N calls``, ``at``/``for`` as ``250ms``, ``2s`` or
        seconds, the rest attributes."""
        steps = []
        for i, raw in enumerate(faults):
            item = dict(raw)
            try:
                on, fault = str(item.pop("on")), str(item.pop("fault"))
            except KeyError as exc:
                raise ConfigError(f"faults[{i}]: needs {exc.args[0]!r} (a step reads "
                                  "{on: NAME, fault: KIND, ...})") from None
            after = item.pop("after", None)
            after_calls = None
            if after is not None:
                text = str(after).strip()
                if not text.endswith("calls") or not text[:-5].strip().isdigit():
                    raise ConfigError(f"faults[{i}]: after={after!r}: a replay reads "
                                      "'N calls' triggers")
                after_calls = int(text[:-5])
            at_ms = _ms(item.pop("at", 0), f"faults[{i}].at")
            window = item.pop("for", None)
            for_ms = None if window is None else _ms(window, f"faults[{i}].for")
            steps.append(Step(on, fault, tuple(item.items()), at_ms, after_calls, for_ms))
        return cls(tuple(steps))

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
            apply = logged_applier(_applier(step, proxies, backends), i, label,
                                   target=backends.get(step.on), calls=counted)
            after: Callable[[], bool] | None = None
            if step.after_calls is not None:
                n = step.after_calls
                after = lambda n=n: counted() >= n  # noqa: E731
            out.add(label, apply, at=step.at_ms / 1000,
                    for_=None if step.for_ms is None else step.for_ms / 1000,
                    after=after, after_label=f"after {step.after_calls} calls")
        return out


def _ms(value: Any, where: str) -> int:
    """Milliseconds from ``250ms``, ``2s``, ``1.5 s`` or a number of seconds."""
    text = str(value).strip().replace(" ", "")
    try:
        if text.endswith("ms"):
            return round(float(text[:-2]))
        return round(float(text.removesuffix("s")) * 1000)
    except ValueError:
        raise ConfigError(f"{where}={value!r}: a duration such as 250ms or 2s") from None


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
    seconds or (with ``max_calls``) after 0..max_calls-1 completed calls, for a window of
    ``min_window``..``horizon`` seconds or to the end. ``clock=False``: logical triggers
    only (needs ``max_calls``; the same run replays the same way). Shrinks to fewer
    faults, earlier triggers, shorter windows and smaller attributes (and
    :func:`explore` finishes the job with a deterministic pass)."""
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
    # a run of N calls ticks before each: "after N calls" would never fire
    last_call = max(0, (max_calls or 0) - 1)

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
            after = draw(st.integers(0, last_call))
            at_ms = draw(st.integers(0, horizon_ms // 4)) if clock else 0
        else:
            at_ms = draw(st.integers(0, horizon_ms))
        window = draw(st.one_of(st.integers(min_ms, horizon_ms), st.none()))
        return Step(on, fault, attrs, at_ms, after, window)

    drawn = st.lists(step(), max_size=max_faults).map(lambda steps: Schedule(tuple(steps)))
    drawn._resilience_bounds = (horizon_ms, min_ms)  # type: ignore[attr-defined]
    return drawn


# ------------------------------------------------------------------ the injection log


class InjectionLog:
    """Which fault fired when, and which requests it answered: one entry per event, in
    order. Positions are logical (completed calls, the backend's request index, its
    connections numbered 1, 2, ... in order of appearance), never clock times, so a
    deterministic target replays a byte-identical log (:meth:`to_json`)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._marks: list[tuple[Any, int, int, str, bool]] = []  # backend, step, at, label, on

    def _event(self, event: str, step: int, label: str, calls: int,
               target: Any | None) -> None:
        self.entries.append({"event": event, "step": step, "fault": label, "calls": calls})
        if target is not None and hasattr(target, "requests"):
            self._marks.append((target, step, len(target.requests), label, event == "applied"))

    def _finish(self) -> None:
        """Attribute each backend request made while a fault was on to the fault that
        was on top (the last applied and not yet healed)."""
        backends: dict[int, Any] = {}
        for target, *_ in self._marks:
            backends.setdefault(id(target), target)
        for key, backend in backends.items():
            marks = [m[1:] for m in self._marks if id(m[0]) == key]
            log = backend.requests
            connections: dict[int, int] = {}
            for request in log:
                connections.setdefault(request.connection, len(connections) + 1)
            stack: list[tuple[int, str]] = []
            position = 0
            bounds = [*marks, (-1, len(log), "", False)]
            for step, upto, label, applied in bounds:
                for request in log[position:upto]:
                    if stack:
                        on_top, name = stack[-1]
                        self.entries.append({
                            "event": "request", "step": on_top, "fault": name,
                            "request": request.index, "connection":
                            connections[request.connection], "method": request.method,
                            "target": request.target, "answer": request.answer})
                position = max(position, upto)
                if step < 0:
                    break
                if applied:
                    stack.append((step, label))
                elif (step, label) in stack:
                    stack.remove((step, label))
        self._marks.clear()

    def to_json(self) -> str:
        """The log as canonical JSON (sorted keys, no spaces): compare these bytes."""
        return json.dumps(self.entries, sort_keys=True, separators=(",", ":"))

    def text(self, limit: int = 40) -> str:
        lines = []
        for e in self.entries[:limit]:
            if e["event"] == "request":
                lines.append(f"  request #{e['request']} (connection {e['connection']}) "
                             f"{e['method']} {e['target']} -> {e['answer']}  "
                             f"[faults[{e['step']}]]")
            else:
                lines.append(f"  at call {e['calls']}: {e['event']} {e['fault']}")
        if len(self.entries) > limit:
            lines.append(f"  ... {len(self.entries) - limit} more (the JSON record has all)")
        return "\n".join(lines) if lines else "  (no fault fired)"


_LOG: ContextVar[InjectionLog | None] = ContextVar("pytest_resilience_injections",
                                                   default=None)


def logged_applier(apply: Callable[[], Callable[[], None]], index: int, label: str, *,
                   target: Any | None = None, calls: Callable[[], int] | None = None,
                   ) -> Callable[[], Callable[[], None]]:
    """``apply`` (a fault's ``apply()`` returning its heal) recording into the injection
    log of the running :func:`explore` / :func:`replay` run, if any: when it was applied
    and healed (after how many ``calls``) and, for an HTTP backend ``target``, which of
    its requests it answered. Outside a run it is ``apply`` unchanged."""
    counted = calls or (lambda: 0)

    def apply_logged() -> Callable[[], None]:
        log = _LOG.get()
        heal = apply()
        if log is None:
            return heal
        log._event("applied", index, label, counted(), target)

        def heal_logged() -> None:
            heal()
            log._event("healed", index, label, counted(), target)

        return heal_logged

    return apply_logged


@contextlib.contextmanager
def _recording(seed: int | None) -> Iterator[InjectionLog]:
    """One run: a fresh injection log and (``seed`` given) the ``random`` module seeded."""
    log = InjectionLog()
    token = _LOG.set(log)
    state = random.getstate() if seed is not None else None
    if seed is not None:
        random.seed(seed)
    try:
        yield log
    finally:
        _LOG.reset(token)
        if state is not None:
            random.setstate(state)
        log._finish()


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
    #: the schedule as the search (Hypothesis) left it, before the deterministic pass
    searched: Schedule | None = None
    #: runs spent by the deterministic pass (drop a fault, earlier, shorter, smaller)
    shrink_runs: int = 0
    #: the injection log of the last failing replay of :attr:`schedule`
    injections: InjectionLog | None = None

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
        log = self.injections.text() if self.injections is not None else "  (not recorded)"
        return (f"{head}: the smallest schedule that breaks the claims has "
                f"{len(self.schedule)} fault(s) and failed {self.reproduced} of "
                f"{self.replayed} replays ({self.rate:.0%}):\n\n{self.schedule.to_yaml()}\n"
                f"{self.schedule.describe()}\n\nwhat failed:\n{self.detail}\n\n"
                f"injections (a failing replay):\n{log}\n\n"
                f"replay it: replay(run_once, <this schedule or its JSON record>, "
                f"seed={self.seed})")

    def record(self) -> dict[str, Any]:
        """The result as JSON-ready data (what :meth:`save` writes; :func:`replay` reads
        it back)."""
        return {
            "found": self.found, "seed": self.seed, "examples": self.examples,
            "elapsed_s": round(self.elapsed, 3), "stopped_by_time": self.stopped_by_time,
            "faults": self.schedule.as_faults() if self.schedule is not None else None,
            "yaml": self.schedule.to_yaml() if self.schedule is not None else None,
            "searched": self.searched.as_faults() if self.searched is not None else None,
            "shrink_runs": self.shrink_runs, "reproduced": self.reproduced,
            "replayed": self.replayed, "rate": round(self.rate, 4), "detail": self.detail,
            "injections": self.injections.entries if self.injections is not None else None,
        }

    def save(self, path: str | Path) -> Path:
        """Write :meth:`record` as JSON to ``path``; ``replay(run_once, path)`` replays it."""
        out = Path(path)
        out.write_text(json.dumps(self.record(), indent=2, sort_keys=True) + "\n")
        return out

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


def _cost(schedule: Schedule, horizon_ms: int) -> tuple[int, int, int, int, int, bool]:
    """Smaller is simpler: fewer faults, earlier triggers, shorter windows, smaller
    attributes (an HTTP attribute by its place in the vocabulary), then steps written in
    the order they trigger."""
    steps = schedule.steps
    return (len(steps), sum(s.after_calls or 0 for s in steps), sum(s.at_ms for s in steps),
            sum(horizon_ms + 1 if s.for_ms is None else s.for_ms for s in steps),
            sum(_rank(s.fault, name, value) for s in steps for name, value in s.attributes),
            list(steps) != _in_trigger_order(steps))


def _in_trigger_order(steps: Sequence[Step]) -> list[Step]:
    return sorted(steps, key=lambda s: (-1 if s.after_calls is None else s.after_calls,
                                        s.at_ms))


def _rank(fault: str, name: str, value: Any) -> int:
    if fault in HTTP:
        options = tuple(HTTP[fault].get(name, ()))
        return options.index(value) if value in options else len(options)
    return value if isinstance(value, int) else 0


def _simpler(schedule: Schedule, min_ms: int) -> Iterator[Schedule]:
    """Candidates one edit simpler than ``schedule``, the biggest simplifications first:
    drop a fault, trigger earlier, shorten its window, lower an attribute."""
    steps = list(schedule.steps)
    for i in range(len(steps)):
        yield Schedule(tuple(steps[:i] + steps[i + 1:]))
    yield Schedule(tuple(_in_trigger_order(steps)))

    def with_step(i: int, step: Step) -> Schedule:
        return Schedule((*steps[:i], step, *steps[i + 1:]))

    for i, s in enumerate(steps):
        if s.after_calls:
            for n in dict.fromkeys((0, s.after_calls // 2, s.after_calls - 1)):
                yield with_step(i, replace(s, after_calls=n))
        if s.at_ms:
            for ms in dict.fromkeys((0, s.at_ms // 2, s.at_ms * 9 // 10)):
                yield with_step(i, replace(s, at_ms=ms))
        if s.for_ms is None or s.for_ms > min_ms:
            current = s.for_ms
            options = [min_ms] if current is None else [min_ms, max(min_ms, current // 2),
                                                        max(min_ms, current * 9 // 10)]
            for ms in dict.fromkeys(options):
                yield with_step(i, replace(s, for_ms=ms))
        for k, (name, value) in enumerate(s.attributes):
            for lower in _lower(s.fault, name, value):
                attrs = list(s.attributes)
                attrs[k] = (name, lower)
                yield with_step(i, replace(s, attributes=tuple(attrs)))


def _lower(fault: str, name: str, value: Any) -> list[Any]:
    if fault in HTTP:
        options = tuple(HTTP[fault].get(name, ()))
        return list(options[:options.index(value)]) if value in options else []
    bounds = NETWORK.get(fault, {}).get(name)
    if bounds is None or not isinstance(value, int) or value <= bounds[0]:
        return []
    low = bounds[0]
    return list(dict.fromkeys((low, low + (value - low) // 2, value - max(1, (value - low) // 10))))


def explore(run_once: Callable[[Schedule], Any], strategy: SearchStrategy[Schedule], *,
            max_examples: int = 50, max_time: float = 120.0, seed: int = 0,
            replays: tuple[int, int] = (1, 1), rate_runs: int = 10,
            shrink_time: float | None = None) -> ExploreResult:
    """Search ``strategy`` for a schedule under which ``run_once`` fails (raises).

    ``run_once(schedule)`` applies the schedule, drives the target, heals everything and
    raises (an ``AssertionError`` such as a failed verdict) when a claim broke. A
    candidate fails when it fails in ``m`` of ``k`` runs (``replays=(m, k)``). The search
    is bounded by ``max_examples`` and ``max_time`` seconds (then candidates count as
    passing, so shrinking stops too). Hypothesis shrinks for at most ``shrink_time``
    seconds (default: a quarter of ``max_time``); then a deterministic pass tries
    dropping each fault, earlier triggers, shorter windows and smaller attributes, each
    candidate confirmed in ``m`` of ``k`` runs, until none is simpler. The minimal
    schedule is replayed ``rate_runs`` times for its reproduction rate and injection log.
    Runs under the search have the ``random`` module seeded by Hypothesis;
    ``replay(run_once, schedule, seed=seed)`` seeds it with ``seed`` for every run."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis.errors import Flaky

    m, k = replays
    if not 1 <= m <= k <= 100:
        raise ConfigError(f"replays=({m}, {k}): need 1 <= m <= k <= 100 (fail in m of k)")
    if not 1 <= max_examples <= 100_000 or not 0 < max_time <= 24 * 3600:
        raise ConfigError("explore(): max_examples 1..100000, max_time above 0 and at most "
                          "a day")
    if not 0 <= rate_runs <= 10_000:
        raise ConfigError(f"rate_runs={rate_runs}: 0..10000 replays")
    started = time.monotonic()
    deadline = started + max_time
    shrink_budget = max_time / 4 if shrink_time is None else shrink_time
    result = ExploreResult(schedule=None, seed=seed)
    confirmed: list[tuple[Schedule, str]] = []
    first_failure: list[float] = []

    def evaluate(schedule: Schedule, seeded: int | None = None) -> str | None:
        failed, detail = 0, ""
        for run in range(k):
            with _recording(seeded):
                outcome = _evaluate(run_once, schedule)
            if outcome is not None:
                failed += 1
                detail = outcome
                result.failures_seen += 1
                result.history.append((schedule, outcome))
            if failed >= m or failed + (k - run - 1) < m:
                break
        if failed >= m:
            confirmed.append((schedule, detail))
            return detail
        return None

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
              phases=[Phase.generate, Phase.shrink], print_blob=False)
    @hseed(seed)
    @given(strategy)
    def search(schedule: Schedule) -> None:
        now = time.monotonic()
        if now > deadline or (first_failure and now > first_failure[0] + shrink_budget):
            result.stopped_by_time = now > deadline
            return  # counts as passing: Hypothesis's shrinking winds down
        result.examples += 1
        detail = evaluate(schedule)
        if detail is not None:
            if not first_failure:
                first_failure.append(time.monotonic())
            raise _CandidateFailed(schedule, detail)

    found: tuple[Schedule, str] | None = None
    try:
        search()
    except _CandidateFailed as exc:
        found = (exc.schedule, exc.detail)
    except Flaky:
        pass  # the smallest confirmed schedule is taken below
    except BaseException as exc:
        group = getattr(exc, "exceptions", None)
        if group is None:
            raise
        hits = [e for e in group if isinstance(e, _CandidateFailed)]
        if not hits:
            raise
        found = (hits[0].schedule, hits[0].detail)
    horizon_ms, min_ms = _bounds(strategy)
    if confirmed:
        best = min(confirmed, key=lambda h: _cost(h[0], horizon_ms))
        if found is None or _cost(best[0], horizon_ms) < _cost(found[0], horizon_ms):
            found = best
    if found is not None:
        result.searched = found[0]
        found = _post_pass(found, evaluate, result, deadline, horizon_ms, min_ms)
        schedule, detail = found
        result.schedule, result.detail = schedule, detail
        for run in range(rate_runs):
            result.replayed += 1
            with _recording(None) as log:
                outcome = _evaluate(run_once, schedule)
            if outcome is not None:
                result.reproduced += 1
                result.injections = log
            elif result.injections is None and run == rate_runs - 1:
                result.injections = log
    result.elapsed = time.monotonic() - started
    return result


def _bounds(strategy: Any) -> tuple[int, int]:
    """The horizon and the shortest window the strategy drew with (for the shrink pass)."""
    bounds = getattr(strategy, "_resilience_bounds", None)
    if isinstance(bounds, tuple):
        return int(bounds[0]), int(bounds[1])
    return 3000, 10


def _post_pass(found: tuple[Schedule, str], evaluate: Callable[[Schedule], str | None],
               result: ExploreResult, deadline: float, horizon_ms: int, min_ms: int,
               ) -> tuple[Schedule, str]:
    """Greedy: take the first simpler candidate that still fails (m of k), start over
    from it; stop when none does or at the deadline."""
    seen: set[Schedule] = {found[0]}
    improved = True
    while improved and time.monotonic() < deadline:
        improved = False
        for candidate in _simpler(found[0], min_ms):
            if candidate in seen or _cost(candidate, horizon_ms) >= _cost(found[0], horizon_ms):
                continue
            if time.monotonic() >= deadline:
                result.stopped_by_time = True
                break
            seen.add(candidate)
            result.shrink_runs += 1
            detail = evaluate(candidate)
            if detail is not None:
                found = (candidate, detail)
                improved = True
                break
    return found


# --------------------------------------------------------------------------- replaying


@dataclass
class ReplayResult:
    """Runs of one schedule: what failed in each and each run's injection log."""

    schedule: Schedule
    seed: int | None
    outcomes: list[str | None] = field(default_factory=list)
    logs: list[InjectionLog] = field(default_factory=list)

    @property
    def reproduced(self) -> int:
        return sum(o is not None for o in self.outcomes)

    @property
    def identical(self) -> bool:
        """Every run's injection log is byte-identical (as canonical JSON)."""
        return len({log.to_json() for log in self.logs}) <= 1

    def report(self) -> str:
        first = next((o for o in self.outcomes if o is not None), None)
        same = ("byte-identical injection logs" if self.identical else
                f"{len({log.to_json() for log in self.logs})} different injection logs")
        head = (f"replayed {len(self)} fault(s) {len(self.outcomes)} times (seed "
                f"{self.seed}): failed {self.reproduced}, {same}")
        log = self.logs[0].text() if self.logs else ""
        return (f"{head}\n\n{self.schedule.to_yaml()}\ninjections (run 1):\n{log}"
                + (f"\n\nwhat failed:\n{first}" if first else ""))

    def __len__(self) -> int:
        return len(self.schedule)

    def check(self) -> None:
        """Fail the running test when a replay failed (the claims broke again)."""
        __tracebackhide__ = True
        if self.reproduced:
            import pytest

            pytest.fail(self.report(), pytrace=False)


def _load(source: Schedule | Sequence[Mapping[str, Any]] | str | Path,
          seed: int | None) -> tuple[Schedule, int | None]:
    if isinstance(source, Schedule):
        return source, seed
    if isinstance(source, (str, Path)):
        is_text = isinstance(source, str) and ("\n" in source or source.lstrip()[:1] == "{")
        try:
            text = source if is_text else Path(source).read_text()
        except OSError as exc:
            raise ConfigError(f"replay: cannot read {str(source)!r}: {exc.strerror}") from None
        assert isinstance(text, str)
        data: Any
        if text.lstrip().startswith("{"):
            data = json.loads(text)
        else:  # the scenario loader: keys stay strings (YAML 1.1 reads a bare on: as True)
            from pytest_resilience.scenarios.loader import load_text

            documents = load_text(text)
            data = documents[0].data if documents else None
        if isinstance(data, list):
            return Schedule.from_faults(data), seed
        if not isinstance(data, dict) or not isinstance(data.get("faults"), list):
            raise ConfigError(f"replay: {str(source)[:80]!r} holds no 'faults:' list (a "
                              "JSON record from ExploreResult.save, a scenario or replay "
                              "file, or the YAML of a report)")
        found = data.get("seed")
        return Schedule.from_faults(data["faults"]), (
            seed if seed is not None else found if isinstance(found, int) else None)
    return Schedule.from_faults(list(source)), seed


def replay(run_once: Callable[[Schedule], Any],
           schedule: Schedule | Sequence[Mapping[str, Any]] | str | Path, *,
           seed: int | None = None, runs: int = 1) -> ReplayResult:
    """Run ``run_once`` under ``schedule`` ``runs`` times, each with ``random`` seeded by
    ``seed`` and its own injection log. ``schedule``: a :class:`Schedule`, a ``faults``
    list, a path to a JSON record (:meth:`ExploreResult.save`, whose seed is used unless
    ``seed`` is given) or a scenario/replay YAML file, or the YAML text of a report."""
    if not 1 <= runs <= 10_000:
        raise ConfigError(f"replay(runs={runs}): 1..10000")
    chosen, used = _load(schedule, seed)
    out = ReplayResult(chosen, used)
    for _ in range(runs):
        with _recording(used) as log:
            out.outcomes.append(_evaluate(run_once, chosen))
        out.logs.append(log)
    return out
