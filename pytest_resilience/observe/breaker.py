"""Circuit-breaker observers: what each call did and which states the breaker went through.

:class:`BreakerObserver` is black-box: wrap the *backend* with
:meth:`~BreakerObserver.backend` and make the calls through the breaker with
:meth:`~BreakerObserver.call` / :meth:`~BreakerObserver.acall`. A call that
fails without reaching the backend was rejected (fail-fast). From those
records alone the observer infers the state sequence.

White-box adapters add the breaker's own view of its transitions:

* :func:`observe_pybreaker` and :func:`observe_aiobreaker` - listeners;
* :func:`observe_purgatory` - the factory's event hook (purgatory publishes
  its events when a call *ends*, so the half-open event of a trial arrives
  together with the trial's outcome);
* :func:`observe_circuitbreaker` - state polling before and after every call
  made through the observer (``circuitbreaker`` computes "half_open" on read).

States are normalised to ``"closed"``, ``"open"``, ``"half_open"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, ParamSpec, TypeVar, cast

from pytest_resilience.observe.attempts import monotonic

__all__ = [
    "BreakerObserver",
    "CallRecord",
    "State",
    "Transition",
    "normalize_state",
    "observe_aiobreaker",
    "observe_circuitbreaker",
    "observe_purgatory",
    "observe_pybreaker",
]

State = Literal["closed", "open", "half_open"]
CallOutcome = Literal["ok", "error", "rejected"]

P = ParamSpec("P")
R = TypeVar("R")

_ALIASES: dict[str, State] = {
    "closed": "closed",
    "close": "closed",
    "open": "open",
    "opened": "open",
    "half_open": "half_open",
    "half-open": "half_open",
    "half-opened": "half_open",
    "half_opened": "half_open",
    "halfopen": "half_open",
}


def normalize_state(state: object) -> State:
    """Normalise a state name: ``"half-opened"``, an enum, a pybreaker state -> ``"half_open"``."""
    inner = getattr(state, "state", None)  # aiobreaker's state objects wrap an enum
    for candidate in (state, inner):
        names = (candidate, getattr(candidate, "name", None), getattr(candidate, "value", None))
        for text in names:
            if isinstance(text, str):
                key = text.strip().lower().replace(" ", "_")
                if key in _ALIASES:
                    return _ALIASES[key]
    raise ValueError(f"not a circuit-breaker state: {state!r}")


@dataclass
class CallRecord:
    """One call made through the breaker."""

    number: int
    started: float
    ended: float | None = None
    reached_at: float | None = None
    outcome: CallOutcome | None = None
    error: str | None = None

    @property
    def reached(self) -> bool:
        """True when the call reached the backend."""
        return self.reached_at is not None


@dataclass(frozen=True)
class Transition:
    """A state change, when it happened and who saw it (listener, event, poll, inferred)."""

    at: float
    old: State
    new: State
    source: str


@dataclass
class BreakerObserver:
    """Records calls through a breaker and its transitions.

    ``now`` is the clock (``time.monotonic``, looked up per call so the plugin's
    virtual clock applies).
    """

    name: str = "breaker"
    now: Callable[[], float] = monotonic
    calls: list[CallRecord] = field(default_factory=list)
    reported: list[Transition] = field(default_factory=list)
    backend_calls: int = 0
    probe_every: float = 0.01
    probe_within: float = 5.0
    _pollers: list[Callable[[], object]] = field(default_factory=list, repr=False)
    _last_polled: State | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _current: contextvars.ContextVar[CallRecord | None] = field(
        default_factory=lambda: contextvars.ContextVar("breaker_call", default=None), repr=False
    )

    def __post_init__(self) -> None:
        self.started_at = self.now()

    # -- black box ---------------------------------------------------------------------

    def backend(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Wrap the backend so the observer knows which calls reached it (sync or async)."""
        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[P, Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def areached(*args: P.args, **kwargs: P.kwargs) -> Any:
                self._mark_reached()
                return await afn(*args, **kwargs)

            return cast(Callable[P, R], areached)

        @functools.wraps(fn)
        def reached(*args: P.args, **kwargs: P.kwargs) -> R:
            self._mark_reached()
            return fn(*args, **kwargs)

        return reached

    def _mark_reached(self) -> None:
        with self._lock:
            self.backend_calls += 1
            record = self._current.get()
            if record is not None and record.reached_at is None:
                record.reached_at = self.now()

    def _begin(self) -> CallRecord:
        self._poll()
        with self._lock:
            record = CallRecord(number=len(self.calls) + 1, started=self.now())
            self.calls.append(record)
        self._current.set(record)
        return record

    def _end(self, record: CallRecord, error: BaseException | None) -> None:
        record.ended = self.now()
        if error is None:
            record.outcome = "ok"
        else:
            record.outcome = "error" if record.reached else "rejected"
            record.error = f"{type(error).__name__}: {error}".rstrip(": ")
        self._current.set(None)
        self._poll(record)

    def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Call *fn* (which goes through the breaker to the wrapped backend) and record it."""
        record = self._begin()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._end(record, exc)
            raise
        self._end(record, None)
        return result

    async def acall(self, fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs) -> R:
        """Async twin of :meth:`call` (each call in its own task keeps its own record)."""
        record = self._begin()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._end(record, exc)
            raise
        self._end(record, None)
        return result

    def call_until_reached(
        self, fn: Callable[P, object], *args: P.args, **kwargs: P.kwargs
    ) -> CallRecord | None:
        """Call *fn* every ``self.probe_every`` s (errors swallowed) until a call reaches
        the backend; return its record, or ``None`` after ``self.probe_within`` s.

        This is how a test waits out a real recovery timeout: the breaker decides
        when the trial happens, the probe only knocks.
        """
        deadline = self.now() + self.probe_within
        while True:
            with contextlib.suppress(Exception):  # the breaker's or backend's error: recorded
                self.call(fn, *args, **kwargs)
            if self.calls[-1].reached:
                return self.calls[-1]
            if self.now() >= deadline:
                return None
            time.sleep(self.probe_every)

    async def acall_until_reached(
        self, fn: Callable[P, Awaitable[object]], *args: P.args, **kwargs: P.kwargs
    ) -> CallRecord | None:
        """Async twin of :meth:`call_until_reached`."""
        deadline = self.now() + self.probe_within
        while True:
            with contextlib.suppress(Exception):  # the breaker's or backend's error: recorded
                await self.acall(fn, *args, **kwargs)
            if self.calls[-1].reached:
                return self.calls[-1]
            if self.now() >= deadline:
                return None
            await asyncio.sleep(self.probe_every)

    # -- white box ---------------------------------------------------------------------

    def report(self, old: object, new: object, source: str, at: float | None = None) -> None:
        """Record a transition the breaker itself reported (``at`` defaults to now)."""
        new_s = normalize_state(new)
        with self._lock:
            if old is None:
                old_s = self.reported[-1].new if self.reported else "closed"
            else:
                old_s = normalize_state(old)
            if old_s != new_s:
                self.reported.append(
                    Transition(self.now() if at is None else at, old_s, new_s, source)
                )

    def _poll(self, record: CallRecord | None = None) -> None:
        if (
            record is not None
            and record.reached_at is not None
            and self._last_polled == "open"
            and self._pollers
        ):
            # Polled "open" just before the call, yet it reached the backend: the
            # breaker went half-open between our read and its own (a race polling
            # cannot close), so the call was the trial.
            self.report("open", "half_open", "poll", at=record.reached_at)
            self._last_polled = "half_open"
        for read in self._pollers:
            state = normalize_state(read())
            if state != self._last_polled:
                self.report(self._last_polled or "closed", state, "poll")
                self._last_polled = state

    # -- what happened -----------------------------------------------------------------

    @property
    def transitions(self) -> list[Transition]:
        """Reported transitions when a white-box adapter is attached, else inferred ones."""
        return list(self.reported) if self.reported else self.inferred_transitions()

    def states(self) -> list[State]:
        """The state sequence, starting with ``"closed"``."""
        return ["closed", *(t.new for t in self.transitions)]

    def inferred_transitions(self) -> list[Transition]:
        """States inferred from call records alone (black box).

        A rejected call means open (opened when the last reaching call ended);
        the next call that reaches the backend is a half-open trial; its
        success closes, its failure reopens the breaker.
        """
        out: list[Transition] = []
        state: State = "closed"
        last_reached_end: float | None = None
        for rec in sorted(self.calls, key=lambda r: r.reached_at or r.started):
            if rec.outcome is None:
                continue
            if state == "closed" and rec.outcome == "rejected":
                at = last_reached_end if last_reached_end is not None else rec.started
                out.append(Transition(at, "closed", "open", "inferred"))
                state = "open"
            elif state == "open" and rec.reached:
                assert rec.reached_at is not None
                out.append(Transition(rec.reached_at, "open", "half_open", "inferred"))
                new: State = "closed" if rec.outcome == "ok" else "open"
                out.append(Transition(rec.ended or rec.reached_at, "half_open", new, "inferred"))
                state = new
            if rec.reached:
                last_reached_end = rec.ended
        return out

    @property
    def rejected(self) -> int:
        """Calls that failed without reaching the backend."""
        return sum(1 for c in self.calls if c.outcome == "rejected")


# -- white-box adapters ----------------------------------------------------------------------


def _make_listener(base: Any, observer: BreakerObserver, source: str) -> Any:
    class Listener(base):  # type: ignore[misc]
        """Records calls the breaker lets through and the transitions it reports."""

        def __init__(self) -> None:
            self.owned: set[int] = set()

        def before_call(self, cb: Any, func: Any, *args: Any, **kwargs: Any) -> None:
            record = observer._current.get()
            if record is None or record.ended is not None:
                # a call not made through observer.call(): record it here
                record = observer._begin()
                self.owned.add(record.number)
            if record.reached_at is None:
                record.reached_at = observer.now()

        def failure(self, cb: Any, exc: BaseException) -> None:
            record = observer._current.get()
            if record is not None and record.number in self.owned:
                self.owned.discard(record.number)
                observer._end(record, exc)

        def success(self, cb: Any) -> None:
            record = observer._current.get()
            if record is not None and record.number in self.owned:
                self.owned.discard(record.number)
                observer._end(record, None)

        def state_change(self, cb: Any, old: Any, new: Any) -> None:
            observer.report(old, new, source)

    return Listener()


def observe_pybreaker(breaker: Any, observer: BreakerObserver | None = None) -> BreakerObserver:
    """Attach a listener to a ``pybreaker.CircuitBreaker``."""
    import pybreaker

    observer = observer or BreakerObserver(name=str(getattr(breaker, "name", None) or "pybreaker"))
    breaker.add_listener(
        _make_listener(pybreaker.CircuitBreakerListener, observer, "pybreaker listener")
    )
    return observer


def observe_aiobreaker(breaker: Any, observer: BreakerObserver | None = None) -> BreakerObserver:
    """Attach a listener to an ``aiobreaker.CircuitBreaker``."""
    from aiobreaker import CircuitBreakerListener

    observer = observer or BreakerObserver(name=str(getattr(breaker, "name", None) or "aiobreaker"))
    breaker.add_listener(_make_listener(CircuitBreakerListener, observer, "aiobreaker listener"))
    return observer


def observe_purgatory(
    factory: Any, circuit: str | None = None, observer: BreakerObserver | None = None
) -> BreakerObserver:
    """Listen to a purgatory ``SyncCircuitBreakerFactory`` / ``AsyncCircuitBreakerFactory``.

    ``circuit`` keeps the events of one circuit name (default: all).
    """
    observer = observer or BreakerObserver(name=circuit or "purgatory")

    def hook(name: str, event_type: str, event: Any) -> None:
        if circuit is not None and name != circuit:
            return
        if event_type == "state_changed":
            observer.report(None, event.state, "purgatory event")

    factory.add_listener(hook)  # called synchronously by both factories
    return observer


def observe_circuitbreaker(
    breaker: Any, observer: BreakerObserver | None = None
) -> BreakerObserver:
    """Poll a ``circuitbreaker.CircuitBreaker``'s ``state`` before and after each observed call."""
    observer = observer or BreakerObserver(
        name=str(getattr(breaker, "name", None) or "circuitbreaker")
    )
    observer._pollers.append(lambda: breaker.state)
    observer._last_polled = normalize_state(breaker.state)
    return observer
