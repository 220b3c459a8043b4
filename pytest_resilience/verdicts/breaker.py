"""Circuit-breaker verdicts: the state sequence and its triggers, and a conformance check.

:func:`expect_transitions` checks what a
:class:`~pytest_resilience.observe.breaker.BreakerObserver` saw: the states
in order, and that each change had the right cause - open after *N*
consecutive failures, no call reaching the backend while open, half-open no
sooner than the recovery timeout, closed after a successful trial, reopened
after a failed one.

:func:`check_breaker_conformance` (threads, sync breakers) and
:func:`acheck_breaker_conformance` (asyncio) drive a breaker through an
outage and a recovery with a scripted backend and report every property
separately, including how many concurrent calls reach the backend while the
breaker is half-open (one, for a breaker that limits trials). Every property is
always in the report: one the run could not exercise (the breaker never opened,
so nothing could be half-open) is *not measured*, and counts as failing unless
allowed. ``failure=`` chooses what the backend raises during the outage, for
breakers that count only some errors.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_resilience.observe.breaker import (
    BreakerObserver,
    CallRecord,
    State,
    Transition,
    normalize_state,
)
from pytest_resilience.verdicts.core import Tolerance, Verdict, VerdictFailed, fmt_s

__all__ = [
    "PROPERTIES",
    "BackendDown",
    "BreakerMismatch",
    "ConformanceReport",
    "Property",
    "acheck_breaker_conformance",
    "check_breaker_conformance",
    "expect_transitions",
]

#: A half-open transition may be stamped up to this much before the recovery
#: timeout (different libraries read different clocks: monotonic, time, datetime).
CLOCK_SKEW = Tolerance(early=0.002, late=0.0)


class BreakerMismatch(VerdictFailed):
    """The breaker did not behave as claimed."""


def _reached_between(calls: Sequence[CallRecord], start: float, end: float) -> list[CallRecord]:
    return [c for c in calls if c.reached_at is not None and start < c.reached_at < end]


def _first_reached_after(calls: Sequence[CallRecord], since: float) -> CallRecord | None:
    later = _reached_between(calls, since, float("inf"))
    return min(later, key=lambda c: c.reached_at or 0.0) if later else None


def expect_transitions(
    observer: BreakerObserver,
    expected: Sequence[str],
    *,
    opens_after: int | None = None,
    recovery_timeout: float | None = None,
    tolerance: Tolerance | float | tuple[float, float] | None = None,
) -> Verdict:
    """Assert the breaker's state sequence and the trigger of each transition.

    ``expected`` starts with the initial state, e.g.
    ``["closed", "open", "half_open", "closed"]`` (aliases such as
    ``"half-open"`` and ``"opened"`` are accepted). ``tolerance`` only widens
    the early edge of the recovery-timeout check (default 2 ms of clock skew).
    """
    tol = Tolerance.coerce(tolerance, CLOCK_SKEW)
    want: list[State] = [normalize_state(s) for s in expected]
    transitions = observer.transitions
    got = observer.states()
    calls = sorted(observer.calls, key=lambda c: c.started)
    t0 = observer.started_at
    rows: list[list[str]] = []
    notes: list[str] = []
    passed = got == want
    if not passed:
        notes.append(f"expected states {' -> '.join(want)}")
        notes.append(f"observed states {' -> '.join(got)}")

    opened_at: float | None = None
    since_closed = t0
    trial: CallRecord | None = None
    for i, tr in enumerate(transitions):
        expected_text = ""
        trigger = ""
        ok = True
        if tr.old == "closed" and tr.new == "open":
            failures = _consecutive_failures(calls, since_closed, tr.at)
            trigger = f"{failures} consecutive failures"
            if opens_after is not None:
                expected_text = f"{opens_after} consecutive failures"
                ok = failures == opens_after
            opened_at = tr.at
        elif tr.new == "half_open":
            # The first call through after opening is the trial. Some breakers report
            # half-open late (purgatory: when the trial ends), so the earlier of the two
            # is when the breaker stopped failing fast.
            since = opened_at if opened_at is not None else t0
            trial = _first_reached_after(calls, since)
            through = tr.at if trial is None else min(tr.at, trial.reached_at or tr.at)
            waited = through - since
            trigger = f"{fmt_s(waited)} after opening"
            if recovery_timeout is not None:
                expected_text = f">= {fmt_s(recovery_timeout)} after opening"
                ok = waited >= recovery_timeout - tol.early
                if not ok and trial is not None and (trial.reached_at or 0.0) < tr.at:
                    notes.append(
                        f"call {trial.number} reached the backend {fmt_s(waited)} after the "
                        "breaker opened, before the recovery timeout (expected fail-fast)"
                    )
        else:  # half_open -> closed / open: the trial's outcome decides
            want_ok = tr.new == "closed"
            seen = trial is not None and trial.outcome is not None
            if not seen:
                trigger = "trial not seen"
            else:
                trigger = "trial succeeded" if trial and trial.outcome == "ok" else "trial failed"
            expected_text = "a successful trial" if want_ok else "a failed trial"
            ok = not seen or (trial is not None and (trial.outcome == "ok") == want_ok)
            if want_ok:
                since_closed = tr.at
            else:
                opened_at = tr.at
            trial = None
        passed = passed and ok
        rows.append(
            [
                str(i + 1),
                f"{tr.old} -> {tr.new}",
                f"+{fmt_s(tr.at - t0)}",
                trigger,
                expected_text,
                "" if ok else "<--",
            ]
        )
    if opened_at is not None and got[-1] == "open":
        leaked = _reached_between(calls, opened_at, float("inf"))
        if leaked:
            passed = False
            notes.append(
                f"{len(leaked)} call(s) reached the backend after the last opening "
                "without a half-open transition (expected fail-fast)"
            )
    notes.append(
        f"{len(calls)} calls observed: {sum(c.reached for c in calls)} reached the backend, "
        f"{observer.rejected} rejected (fail-fast); transitions from "
        f"{transitions[0].source if transitions else 'nowhere'}"
    )
    claim = " -> ".join(want)
    if opens_after is not None:
        claim += f"; opens after {opens_after} failures"
    if recovery_timeout is not None:
        claim += f"; half-open after {fmt_s(recovery_timeout)}"
    verdict = Verdict(
        kind="breaker",
        claim=f"{observer.name}: {claim}",
        passed=passed,
        expected={"states": want, "opens_after": opens_after, "recovery_timeout": recovery_timeout},
        observed={"states": got, "transitions": [_tr_dict(t, t0) for t in transitions]},
        tolerance=str(tol),
        headers=["#", "transition", "at", "observed trigger", "expected trigger", ""],
        rows=rows,
        notes=notes,
    )
    return verdict.check(BreakerMismatch)


def _tr_dict(t: Transition, t0: float) -> dict[str, Any]:
    return {"at": t.at - t0, "old": t.old, "new": t.new, "source": t.source}


def _consecutive_failures(calls: Sequence[CallRecord], start: float, end: float) -> int:
    run = 0
    for c in calls:
        if c.reached_at is None or not (start - 1e-9 <= c.reached_at <= end + 1e-9):
            continue
        run = run + 1 if c.outcome == "error" else 0
    return run


# -- conformance -----------------------------------------------------------------------------


class BackendDown(ConnectionError):
    """What the conformance harness's backend raises during the outage (by default)."""


#: The properties of a conformance run, in the order they are measured.
PROPERTIES = (
    "opens_after_failures",
    "fail_fast_while_open",
    "half_open_after_recovery_timeout",
    "reopens_on_failed_trial",
    "half_open_trials",
    "closes_on_successful_trial",
)

#: What the backend raises during the outage: an exception type (created with a
#: message), an instance (raised every time), or a callable returning one.
Failure = type[Exception] | Exception | Callable[[], Exception]

_DOWN = "backend is down (conformance harness)"


@dataclass
class Property:
    """One property of the conformance check.

    ``measured`` is False when the run could not exercise the property (e.g. no
    trial while half-open because the breaker never opened); such a property
    does not pass, and ``observed`` says ``"not measured: <why>"``.
    """

    name: str
    expected: str
    observed: str
    passed: bool
    detail: str = ""
    value: Any = None
    measured: bool = True

    @property
    def ok(self) -> bool:
        """Measured and holds (a not measured property is never ok)."""
        return self.passed and self.measured

    @property
    def status(self) -> str:
        """``"ok"``, ``"fails"`` or ``"not measured"``."""
        if not self.measured:
            return "not measured"
        return "ok" if self.passed else "fails"


def _not_measured(name: str, expected: str, why: str) -> Property:
    return Property(name, expected, f"not measured: {why}", False, measured=False)


@dataclass
class ConformanceReport:
    """Every property of a breaker's conformance run, separately."""

    breaker: str
    properties: list[Property] = field(default_factory=list)
    observer: BreakerObserver | None = None

    def __getitem__(self, name: str) -> Property:
        for prop in self.properties:
            if prop.name == name:
                return prop
        raise KeyError(f"no property {name!r}; have {[p.name for p in self.properties]}")

    @property
    def passed(self) -> bool:
        """True when every property was measured and holds."""
        return self.passes()

    @property
    def failed(self) -> list[str]:
        """Names of the properties that do not hold, the not measured ones included."""
        return [p.name for p in self.properties if not p.ok]

    @property
    def not_measured(self) -> list[str]:
        """Names of the properties the run could not exercise."""
        return [p.name for p in self.properties if not p.measured]

    def passes(self, allow: Sequence[str] = ()) -> bool:
        """True when every property not in *allow* was measured and holds."""
        allowed = _allowed(allow)
        return all(p.ok or p.name in allowed for p in self._complete())

    def _complete(self) -> list[Property]:
        """The properties, plus a not measured row for each one missing from the report."""
        have = {p.name for p in self.properties}
        missing = [
            _not_measured(name, "", "not in the report") for name in PROPERTIES if name not in have
        ]
        return [*self.properties, *missing]

    def verdict(self, *, allow: Sequence[str] = ()) -> Verdict:
        """The report as a :class:`Verdict` (one table row per property).

        The last column is ``ok``, ``<-- FAILS``, ``<-- NOT MEASURED``, or for a
        property in *allow* ``allowed (fails)`` / ``allowed (not measured)``; the
        verdict passes exactly when every row is ``ok`` or allowed.
        """
        allowed = _allowed(allow)

        def mark(p: Property) -> str:
            if p.ok:
                return "ok"
            if p.name in allowed:
                return f"allowed ({p.status})"
            return f"<-- {p.status.upper()}"

        properties = self._complete()
        failing = [p for p in properties if not p.ok]
        notes = [
            f"{p.name}{' (allowed)' if p.name in allowed else ''}: {p.detail}"
            for p in failing
            if p.detail
        ]
        counts = {
            "fail": [p.name for p in failing if p.measured and p.name not in allowed],
            "not measured": [p.name for p in failing if not p.measured and p.name not in allowed],
            "allowed": [p.name for p in failing if p.name in allowed],
        }
        outcome = "; ".join(f"{k}: {', '.join(v)}" for k, v in counts.items() if v)
        outcome = outcome or f"all {len(properties)} properties hold"
        claim = f"{self.breaker} behaves like a circuit breaker"
        if allowed:
            claim += f" (allowed: {', '.join(sorted(allowed))})"
        return Verdict(
            kind="breaker-conformance",
            claim=claim,
            passed=self.passes(allow),
            expected={p.name: p.expected for p in properties},
            observed={p.name: p.value if p.value is not None else p.observed for p in properties},
            headers=["property", "expected", "observed", "result"],
            rows=[[p.name, p.expected, p.observed, mark(p)] for p in properties],
            notes=notes,
            data={"measured": {p.name: p.measured for p in properties}},
            outcome=outcome,
        )

    def text(self, *, allow: Sequence[str] = ()) -> str:
        """The report as text."""
        return self.verdict(allow=allow).text()

    def check(self, *, allow: Sequence[str] = ()) -> ConformanceReport:
        """Raise :class:`BreakerMismatch` unless every property not in *allow* was
        measured and holds (a not measured property fails unless allowed)."""
        self.verdict(allow=allow).check(BreakerMismatch)
        return self


def _allowed(allow: Sequence[str]) -> frozenset[str]:
    if isinstance(allow, str):
        allow = [allow]
    unknown = [name for name in allow if name not in PROPERTIES]
    if unknown:
        raise ValueError(
            f"allow={list(allow)!r}: unknown propert{'y' if len(unknown) == 1 else 'ies'} "
            f"{', '.join(map(repr, unknown))}; valid names: {', '.join(PROPERTIES)}"
        )
    return frozenset(allow)


def _failure_factory(failure: Failure) -> tuple[Callable[[], Exception], str]:
    """A function making the backend's failure, and the failure's type name.

    Checked once, up front: a bad ``failure=`` raises ``TypeError`` here rather
    than inside the backend (where the breaker would count it as an outage).
    """
    if isinstance(failure, type):
        if not issubclass(failure, Exception):
            raise TypeError(f"failure={failure!r}: expected an Exception subclass")
        kind: type[Exception] = failure
        try:
            kind(_DOWN)
        except Exception as exc:
            raise TypeError(
                f"failure={kind.__name__}: cannot create {kind.__name__}({_DOWN!r}) ({exc}); "
                f"pass an instance or a callable, e.g. failure=lambda: {kind.__name__}(...)"
            ) from exc
        return (lambda: kind(_DOWN)), kind.__name__
    if isinstance(failure, BaseException):
        if not isinstance(failure, Exception):
            raise TypeError(f"failure={failure!r}: expected an Exception instance")
        instance = failure
        return (lambda: instance.with_traceback(None)), type(instance).__name__
    if callable(failure):
        make = failure

        def made() -> Exception:
            exc = make()
            if not isinstance(exc, Exception):
                raise TypeError(f"failure={make!r} returned {exc!r}, not an Exception instance")
            return exc

        return made, type(made()).__name__
    raise TypeError(
        f"failure={failure!r}: expected an exception type, an exception instance, "
        "or a callable returning an exception"
    )


class _Backend:
    """The scripted dependency: down or up, optionally holding calls at a gate."""

    def __init__(self, failure: Callable[[], Exception]) -> None:
        self.failure = failure
        self.down = True
        self.entered = 0
        self.gate_closed = False
        self.thread_gate = threading.Event()
        self.async_gate: asyncio.Event | None = None
        self.lock = threading.Lock()

    def _enter(self) -> None:
        with self.lock:
            self.entered += 1

    def sync(self) -> str:
        self._enter()
        if self.gate_closed:
            self.thread_gate.wait(30.0)
        if self.down:
            raise self.failure()
        return "ok"

    async def aio(self) -> str:
        self._enter()
        if self.gate_closed and self.async_gate is not None:
            await self.async_gate.wait()
        if self.down:
            raise self.failure()
        return "ok"


@dataclass
class _Plan:
    failures_to_open: int
    recovery_timeout: float
    concurrency: int
    fail_fast_calls: int
    settle: float
    late: float

    @property
    def probe_every(self) -> float:
        return max(0.005, self.recovery_timeout / 20)

    @property
    def give_up(self) -> float:
        return 3 * self.recovery_timeout + 1.0


def _expected(name: str, plan: _Plan) -> str:
    return {
        "opens_after_failures": f"{plan.failures_to_open} failures",
        "fail_fast_while_open": f"0 of {plan.fail_fast_calls} calls reach the backend",
        "half_open_after_recovery_timeout": (
            f"a trial after {fmt_s(plan.recovery_timeout)} (probed every {fmt_s(plan.probe_every)})"
        ),
        "reopens_on_failed_trial": "next call rejected after a failed trial",
        "half_open_trials": f"1 of {plan.concurrency} concurrent calls reaches the backend",
        "closes_on_successful_trial": "the next call reaches the backend and succeeds",
    }[name]


def _rest_not_measured(report: ConformanceReport, plan: _Plan, why: str) -> ConformanceReport:
    """Add every property not yet in *report* as not measured, saying *why*."""
    have = {p.name for p in report.properties}
    for name in PROPERTIES:
        if name not in have:
            report.properties.append(_not_measured(name, _expected(name, plan), why))
    return report


def _opens_property(
    obs: BreakerObserver, plan: _Plan, tripping_error: str, failure_name: str
) -> Property:
    reached_failures = 0
    first_reject: CallRecord | None = None
    for c in obs.calls:
        if c.outcome == "rejected":
            first_reject = c
            break
        if c.outcome == "error":
            reached_failures += 1
    opened = first_reject is not None
    if opened:
        detail = f"the backend raised {failure_name}; the tripping call raised {tripping_error}"
    else:
        detail = (
            f"the backend raised {failure_name} and the breaker never rejected a call; "
            "if it counts only some errors, pass the one it counts: failure=..."
        )
    return Property(
        "opens_after_failures",
        _expected("opens_after_failures", plan),
        f"{reached_failures} failures" if opened else f"never opened in {len(obs.calls)} calls",
        opened and reached_failures == plan.failures_to_open,
        detail=detail,
        value=reached_failures if opened else None,
    )


def _fail_fast_property(records: Sequence[CallRecord], plan: _Plan, opened: bool) -> Property:
    reached = sum(1 for c in records if c.reached)
    slowest = max(((c.ended or c.started) - c.started for c in records), default=0.0)
    return Property(
        "fail_fast_while_open",
        _expected("fail_fast_while_open", plan),
        f"{reached} of {len(records)} reached; slowest rejection {fmt_s(slowest)}",
        opened and reached == 0 and len(records) == plan.fail_fast_calls,
        detail="" if opened else "the breaker never opened: every call went to the backend",
        value=reached,
    )


def _half_open_property(trial: CallRecord | None, trip_time: float, plan: _Plan,
                        calls: Sequence[CallRecord] = ()) -> Property:
    """The first trial came after the recovery timeout, and not late.

    "Too late" needs evidence against the breaker: a probe it refused after the deadline.
    When the trial reached the backend late but every refused probe knocked before the
    deadline, the probes themselves came late (a busy machine, a descheduled checker): the
    breaker may have half-opened on time or not - "not measured", which fails too, but
    does not accuse the breaker."""
    lo = plan.recovery_timeout - CLOCK_SKEW.early
    hi = plan.recovery_timeout + plan.probe_every + plan.late
    if trial is None:
        return Property(
            "half_open_after_recovery_timeout",
            _expected("half_open_after_recovery_timeout", plan),
            f"no call reached the backend within {fmt_s(plan.give_up)}",
            False,
            detail="the breaker never let a trial call through",
        )
    waited = (trial.reached_at or 0.0) - trip_time
    refused = [c.started - trip_time for c in calls
               if c.outcome == "rejected" and trip_time <= c.started < trial.started]
    last_refused = max(refused, default=None)
    refused_late = last_refused is not None and last_refused > hi
    observed = f"first trial {fmt_s(waited)} after opening"
    detail = ""
    if waited < lo:
        detail = "too early"
    elif refused_late:
        detail = f"too late: a probe {fmt_s(last_refused or 0.0)} after opening was refused"
    elif waited > hi:
        since = fmt_s(last_refused) if last_refused is not None else "the opening"
        return Property(
            "half_open_after_recovery_timeout",
            _expected("half_open_after_recovery_timeout", plan),
            f"not measured: the probes came late (none between {since} and "
            f"{fmt_s(waited)} after opening)",
            False,
            detail=(f"the checker was held up (a busy machine?): no probe knocked between "
                    f"{since} and {fmt_s(waited)} after opening, so the breaker may have "
                    f"half-opened before the {fmt_s(hi)} deadline or after it"),
            value=waited,
            measured=False,
        )
    return Property(
        "half_open_after_recovery_timeout",
        _expected("half_open_after_recovery_timeout", plan),
        observed,
        lo <= waited <= hi,
        detail=detail,
        value=waited,
    )


def _reopen_property(trial: CallRecord, next_rejected: bool) -> Property:
    raised = (trial.error or "nothing").split(":")[0]
    return Property(
        "reopens_on_failed_trial",
        "next call rejected after a failed trial",
        "rejected" if next_rejected else "reached the backend",
        next_rejected,
        detail=f"the failed trial raised {raised}",
    )


def _trials_property(reached: int, plan: _Plan, racers: Sequence[CallRecord]) -> Property:
    others = {
        "rejected": sum(1 for c in racers if c.outcome == "rejected"),
        "waited and then reached the backend": sum(1 for c in racers if c.reached) - reached,
    }
    spread = ", ".join(f"{v} {k}" for k, v in others.items() if v)
    return Property(
        "half_open_trials",
        f"1 of {plan.concurrency} concurrent calls reaches the backend",
        f"{reached} of {plan.concurrency} reached the backend while the first trial was held",
        reached == 1,
        detail=(
            f"the breaker lets {reached} concurrent calls through while half-open "
            "(a stampede on a recovering backend)"
            if reached > 1
            else ""
        )
        + (f"; the other calls: {spread}" if spread else ""),
        value=reached,
    )


def _no_failed_trial(trial: CallRecord, plan: _Plan) -> Property:
    why = "the trial during the outage did not fail (the call through the breaker returned)"
    if trial.outcome != "ok":
        why = f"the trial during the outage did not end ({trial.outcome})"
    return _not_measured("reopens_on_failed_trial", _expected("reopens_on_failed_trial", plan), why)


def _no_successful_trial(racers: Sequence[CallRecord]) -> str:
    rejected = sum(1 for c in racers if c.outcome == "rejected")
    failed = sum(1 for c in racers if c.reached and c.outcome != "ok")
    return (
        f"no half-open trial succeeded ({rejected} of {len(racers)} concurrent calls rejected, "
        f"{failed} reached the backend and failed)"
    )


def _closes_property(ok: bool, error: str) -> Property:
    return Property(
        "closes_on_successful_trial",
        "the next call reaches the backend and succeeds",
        "it did" if ok else f"it did not: {error}",
        ok,
    )


def _describe(exc: BaseException | None) -> str:
    return "nothing" if exc is None else type(exc).__name__


def check_breaker_conformance(
    call: Callable[[Callable[[], str]], Any],
    *,
    failures_to_open: int,
    recovery_timeout: float,
    concurrency: int = 10,
    fail_fast_calls: int = 5,
    settle: float = 0.5,
    late: float = 0.1,
    name: str = "breaker",
    failure: Failure = BackendDown,
) -> ConformanceReport:
    """Drive a *sync* breaker through an outage and recovery (threads for concurrency).

    ``call(backend)`` must call ``backend()`` through the breaker, e.g.
    ``lambda backend: breaker.call(backend)``. Returns the report; call
    ``.check()`` on it to assert. Concurrent half-open calls run in threads and
    the first trial is held for ``settle`` seconds: calls that reach the
    backend meanwhile are counted (a breaker that serialises callers - pybreaker
    holds a lock during the call - shows 1).

    The first trial must come no sooner than ``recovery_timeout`` (2 ms clock
    skew allowed) and no later than ``recovery_timeout`` + one probe interval
    (``recovery_timeout / 20``, at least 5 ms) + ``late``.

    ``failure`` is what the backend raises during the outage: an exception type
    (created with a message; default :class:`BackendDown`), an instance (raised
    every time), or a callable returning one - e.g. an ``httpx.HTTPStatusError``
    for a breaker that counts only HTTP errors.

    Every property is in the report. One the run could not exercise (the
    breaker never opened, never let a trial through, or no trial succeeded) is
    *not measured* (``Property.measured`` is False) and fails unless allowed.
    """
    plan = _Plan(failures_to_open, recovery_timeout, concurrency, fail_fast_calls, settle, late)
    make_failure, failure_name = _failure_factory(failure)
    backend = _Backend(make_failure)
    obs = BreakerObserver(name=name)
    guarded = obs.backend(backend.sync)

    def attempt() -> BaseException | None:
        try:
            obs.call(call, guarded)
        except Exception as exc:
            return exc
        return None

    report = ConformanceReport(name, observer=obs)
    tripping_error = "nothing"
    for _ in range(failures_to_open + 3):
        err = attempt()
        if obs.calls[-1].outcome == "rejected":
            break
        tripping_error = _describe(err)
    report.properties.append(_opens_property(obs, plan, tripping_error, failure_name))
    opened = obs.rejected > 0
    trip_time = max((c.ended or 0.0 for c in obs.calls if c.reached), default=obs.started_at)

    start = len(obs.calls)
    for _ in range(fail_fast_calls):
        attempt()
    report.properties.append(_fail_fast_property(obs.calls[start:], plan, opened))
    if not opened:
        return _rest_not_measured(report, plan, "the breaker never opened")

    # half-open only after the recovery timeout: probe until a call gets through
    obs.probe_every, obs.probe_within = plan.probe_every, plan.give_up
    trial = obs.call_until_reached(call, guarded)
    report.properties.append(_half_open_property(trial, trip_time, plan, obs.calls))
    if trial is None:
        return _rest_not_measured(report, plan, "no trial call reached the backend")
    reopen_time = obs.calls[-1].ended or time.monotonic()
    if trial.outcome == "error":
        attempt()
        report.properties.append(_reopen_property(trial, not obs.calls[-1].reached))
    else:
        report.properties.append(_no_failed_trial(trial, plan))

    # concurrent trials while half-open: wait out the timeout, then fire at once
    time.sleep(max(0.0, reopen_time + recovery_timeout + plan.probe_every - time.monotonic()))
    backend.down = False
    backend.gate_closed = True
    backend.thread_gate.clear()
    entered_before = backend.entered
    start = len(obs.calls)
    go = threading.Barrier(concurrency)

    def racer() -> None:
        go.wait()
        attempt()

    threads = [threading.Thread(target=racer, name=f"conformance-{i}") for i in range(concurrency)]
    for t in threads:
        t.start()
    # hold the trial until every racer has reached the backend or finished; racers
    # blocked elsewhere (e.g. on the breaker's lock) are given `settle` seconds
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        finished = sum(1 for c in obs.calls[start:] if c.ended is not None)
        if backend.entered - entered_before + finished >= concurrency:
            break
        time.sleep(0.002)
    reached = backend.entered - entered_before
    backend.gate_closed = False
    backend.thread_gate.set()
    for t in threads:
        t.join(30.0)
    racers = obs.calls[start:]
    report.properties.append(_trials_property(reached, plan, racers))
    if not any(c.reached and c.outcome == "ok" for c in racers):
        return _rest_not_measured(report, plan, _no_successful_trial(racers))

    err = attempt()
    last = obs.calls[-1]
    report.properties.append(
        _closes_property(last.reached and last.outcome == "ok", _describe(err))
    )
    return report


async def acheck_breaker_conformance(
    call: Callable[[Callable[[], Awaitable[str]]], Awaitable[Any]],
    *,
    failures_to_open: int,
    recovery_timeout: float,
    concurrency: int = 10,
    fail_fast_calls: int = 5,
    settle: float = 0.5,
    late: float = 0.1,
    name: str = "breaker",
    failure: Failure = BackendDown,
) -> ConformanceReport:
    """Async twin of :func:`check_breaker_conformance`: ``call(backend)`` awaits ``backend()``
    through the breaker, e.g. ``lambda backend: breaker.call_async(backend)``.

    The concurrent half-open calls are tasks; the first trial is held until
    every task has either reached the backend or finished (at most ``settle`` s).
    ``failure`` and not measured properties: as in :func:`check_breaker_conformance`.
    """
    plan = _Plan(failures_to_open, recovery_timeout, concurrency, fail_fast_calls, settle, late)
    make_failure, failure_name = _failure_factory(failure)
    backend = _Backend(make_failure)
    backend.async_gate = asyncio.Event()
    obs = BreakerObserver(name=name)
    guarded = obs.backend(backend.aio)

    async def attempt() -> BaseException | None:
        try:
            await obs.acall(call, guarded)
        except Exception as exc:
            return exc
        return None

    report = ConformanceReport(name, observer=obs)
    tripping_error = "nothing"
    for _ in range(failures_to_open + 3):
        err = await attempt()
        if obs.calls[-1].outcome == "rejected":
            break
        tripping_error = _describe(err)
    report.properties.append(_opens_property(obs, plan, tripping_error, failure_name))
    opened = obs.rejected > 0
    trip_time = max((c.ended or 0.0 for c in obs.calls if c.reached), default=obs.started_at)

    start = len(obs.calls)
    for _ in range(fail_fast_calls):
        await attempt()
    report.properties.append(_fail_fast_property(obs.calls[start:], plan, opened))
    if not opened:
        return _rest_not_measured(report, plan, "the breaker never opened")

    obs.probe_every, obs.probe_within = plan.probe_every, plan.give_up
    trial = await obs.acall_until_reached(call, guarded)
    report.properties.append(_half_open_property(trial, trip_time, plan, obs.calls))
    if trial is None:
        return _rest_not_measured(report, plan, "no trial call reached the backend")
    reopen_time = obs.calls[-1].ended or time.monotonic()
    if trial.outcome == "error":
        await attempt()
        report.properties.append(_reopen_property(trial, not obs.calls[-1].reached))
    else:
        report.properties.append(_no_failed_trial(trial, plan))

    await asyncio.sleep(
        max(0.0, reopen_time + recovery_timeout + plan.probe_every - time.monotonic())
    )
    backend.down = False
    backend.gate_closed = True
    backend.async_gate.clear()
    entered_before = backend.entered
    start = len(obs.calls)
    tasks = [asyncio.ensure_future(attempt()) for _ in range(concurrency)]
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        await asyncio.sleep(0)
        finished = sum(1 for t in tasks if t.done())
        if backend.entered - entered_before + finished >= concurrency:
            break
    reached = backend.entered - entered_before
    backend.gate_closed = False
    backend.async_gate.set()
    async with asyncio.timeout(30.0):
        await asyncio.gather(*tasks)
    racers = obs.calls[start:]
    report.properties.append(_trials_property(reached, plan, racers))
    if not any(c.reached and c.outcome == "ok" for c in racers):
        return _rest_not_measured(report, plan, _no_successful_trial(racers))

    err = await attempt()
    last = obs.calls[-1]
    report.properties.append(
        _closes_property(last.reached and last.outcome == "ok", _describe(err))
    )
    return report
