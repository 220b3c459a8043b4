"""Attempt timelines: when each attempt of one logical operation happened.

A :class:`Timeline` is the ordered attempts of one logical call, each with a
timestamp on the timeline's clock and an outcome. ``Timeline.delays()`` gives
the waits between attempts, which the backoff verdict compares with a model.

The ``clock`` says how to compare:

* ``"real"`` - measured with ``time.monotonic()``; verdicts allow scheduling
  noise (an explicit tolerance).
* ``"virtual"`` - timestamps from a virtual clock; verdicts compare exactly.
* ``"requested"`` - the waits the retry library *asked for* (tenacity,
  backoff, stamina adapters below); exact, whether or not anyone slept.

Sources: :func:`track` (a wrapper, sync or async), :meth:`Timeline.record`,
:func:`from_timestamps`, :func:`from_requests` (any fake-backend request log),
:func:`from_toxiproxy_events` and the requested-wait recorders
:class:`TenacityWaits`, :class:`BackoffWaits`, :class:`StaminaWaits`.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar, cast

__all__ = [
    "Attempt",
    "BackoffWaits",
    "Clock",
    "Outcome",
    "StaminaWaits",
    "TenacityWaits",
    "Timeline",
    "Tracked",
    "from_requests",
    "from_timestamps",
    "from_toxiproxy_events",
    "from_waits",
    "track",
]

if TYPE_CHECKING:
    from pytest_resilience.toxiproxy.client import Event

Clock = Literal["real", "virtual", "requested"]
Outcome = Literal["ok", "error", "unknown"]
CLOCKS: tuple[Clock, ...] = ("real", "virtual", "requested")

P = ParamSpec("P")
R = TypeVar("R")


def monotonic() -> float:
    """``time.monotonic()`` looked up at each call, so a virtual clock's patch applies."""
    return time.monotonic()


def detect_clock() -> Clock:
    """``"virtual"`` when this thread reads the plugin's virtual clock, else ``"real"``."""
    from pytest_resilience.clock import current_clock_kind

    return current_clock_kind()


@dataclass(frozen=True)
class Attempt:
    """One attempt: when it started (and ended, when known) and how it went."""

    number: int
    started: float
    ended: float | None = None
    outcome: Outcome = "unknown"
    error: str | None = None


@dataclass
class Timeline:
    """The ordered attempts of one logical operation.

    ``waits`` holds the requested waits when an adapter knows them exactly
    (``waits[i]`` is the wait before attempt ``i + 2``).
    """

    attempts: list[Attempt] = field(default_factory=list)
    clock: Clock = field(default_factory=detect_clock)
    source: str = ""
    waits: list[float] | None = None
    now: Callable[[], float] = field(default=monotonic, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {self.clock!r}")

    @property
    def count(self) -> int:
        """Number of attempts (for a requested-wait timeline: waits + 1)."""
        return len(self.attempts)

    @property
    def exact(self) -> bool:
        """True when verdicts must compare without scheduling tolerance."""
        return self.clock != "real"

    def delays(self) -> list[float]:
        """The wait before each retry: ``len == count - 1``.

        Requested waits when known and the clock is ``"requested"``; otherwise
        the gap from the end of attempt *n* (its start when its end is unknown,
        e.g. a request log) to the start of attempt *n + 1*.
        """
        if self.clock == "requested" and self.waits is not None:
            return list(self.waits)
        out: list[float] = []
        for prev, cur in zip(self.attempts, self.attempts[1:], strict=False):
            base = prev.ended if prev.ended is not None else prev.started
            out.append(cur.started - base)
        return out

    def add(
        self,
        started: float | None = None,
        *,
        ended: float | None = None,
        outcome: Outcome = "unknown",
        error: BaseException | str | None = None,
    ) -> Attempt:
        """Append an attempt (``started`` defaults to now on this timeline's clock)."""
        attempt = Attempt(
            number=len(self.attempts) + 1,
            started=self.now() if started is None else started,
            ended=ended,
            outcome=outcome,
            error=_describe(error),
        )
        self.attempts.append(attempt)
        return attempt

    @contextmanager
    def record(self) -> Iterator[None]:
        """Time the block as one attempt; an exception marks it failed (and propagates).

        Works around ``await`` too: ``with timeline.record(): await call()``.
        """
        started = self.now()
        try:
            yield
        except BaseException as exc:
            self.add(started, ended=self.now(), outcome="error", error=exc)
            raise
        self.add(started, ended=self.now(), outcome="ok")


def _describe(error: BaseException | str | None) -> str | None:
    if error is None or isinstance(error, str):
        return error
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# -- building timelines from data --------------------------------------------------------


def from_timestamps(
    timestamps: Iterable[float], *, clock: Clock = "real", source: str = "timestamps"
) -> Timeline:
    """A timeline from attempt start times (sorted; outcomes unknown)."""
    timeline = Timeline(clock=clock, source=source)
    for ts in sorted(float(t) for t in timestamps):
        timeline.add(ts)
    return timeline


def from_waits(waits: Iterable[float], *, source: str = "requested waits") -> Timeline:
    """A ``"requested"`` timeline from the waits a retry library asked for."""
    waits = [float(w) for w in waits]
    timeline = Timeline(clock="requested", source=source, waits=waits)
    at = 0.0
    timeline.add(at)
    for wait in waits:
        at += wait
        timeline.add(at)
    return timeline


_TIME_NAMES = ("arrived_at", "arrived", "time", "at", "timestamp")


def _time_of(record: object) -> float:
    for name in _TIME_NAMES:
        value = record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)
        if isinstance(value, int | float):
            return float(value)
    raise TypeError(
        f"request record {record!r} has no monotonic arrival time: expected an attribute "
        f"or key named one of {', '.join(_TIME_NAMES)}"
    )


def _field(record: object, name: str) -> object:
    if isinstance(record, Mapping):
        return record.get(name)
    return getattr(record, name, None)


def from_requests(
    records: Iterable[object],
    *,
    match: Callable[[Any], bool] | None = None,
    clock: Clock = "real",
    source: str = "backend request log",
) -> Timeline:
    """A timeline from a fake backend's request log.

    Each record needs a monotonic arrival time as ``.arrived_at``, ``.arrived``,
    ``.time``, ``.at`` or ``.timestamp`` (attribute or mapping key), e.g. the
    ``http_backend`` fixture's ``RecordedRequest``. ``match`` keeps only the
    records of one logical operation (e.g. ``lambda r: r.path == "/trends"``).
    Outcomes come from a ``status`` attribute/key, or the leading status code
    of an ``answer`` such as ``"503 x3"``, when present (>= 500 is an error).
    """
    kept = [r for r in records if match is None or match(r)]
    kept.sort(key=_time_of)
    timeline = Timeline(clock=clock, source=source)
    for record in kept:
        status = _field(record, "status")
        answer = _field(record, "answer")
        if status is None and isinstance(answer, str) and answer[:3].isdigit():
            status = int(answer[:3])
        outcome: Outcome = "unknown"
        if isinstance(status, int):
            outcome = "error" if status >= 500 else "ok"
        timeline.add(_time_of(record), outcome=outcome)
    return timeline


def _event_kind(event: object) -> object:
    if isinstance(event, Mapping):
        return event.get("kind", event.get("type"))
    kind = getattr(event, "kind", None)
    return getattr(event, "type", None) if kind is None else kind


def _event_time(event: object) -> float:
    value = event["time"] if isinstance(event, Mapping) else getattr(event, "time", None)
    if not isinstance(value, int | float | str):
        raise TypeError(
            f"toxiproxy event {event!r} has no 'time' (the engine's time.monotonic())"
        )
    return float(value)


def from_toxiproxy_events(
    events: Iterable[Event | Mapping[str, Any]],
    *,
    kind: str = "accepted",
    proxy: str | None = None,
    clock: Clock = "real",
) -> Timeline:
    """A timeline from the Toxiproxy engine's event log: the
    :class:`~pytest_resilience.toxiproxy.client.Event` objects that ``Proxy.events()``
    returns, or dicts as ``GET /x-resilience/events`` sends them.

    Keeps the events whose ``kind`` (or ``type``) is *kind* or ``"connection_" + kind``
    (and whose ``proxy`` is *proxy*, when given): by default each accepted
    connection counts as one attempt. ``time`` must be ``time.monotonic()``.
    """
    wanted = {kind, f"connection_{kind}"}
    stamps: list[float] = []
    for event in events:
        if _event_kind(event) not in wanted:
            continue
        if proxy is not None and _field(event, "proxy") != proxy:
            continue
        stamps.append(_event_time(event))
    return from_timestamps(stamps, clock=clock, source=f"toxiproxy events {kind!r}")


# -- wrapping a callable -----------------------------------------------------------------


class Tracked(Generic[P, R]):
    """A callable that records each call as an attempt on ``.timeline``.

    Wrap the *dependency* (the thing being retried), not the retrying caller.
    ``timelines`` starts a new timeline on :meth:`new_call` so that several
    logical operations can be told apart.
    """

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        clock: Clock | None = None,
        now: Callable[[], float] = monotonic,
    ) -> None:
        functools.update_wrapper(self, fn)
        self._fn = fn
        self._clock: Clock = clock if clock is not None else detect_clock()
        self._now = now
        self._is_async = inspect.iscoroutinefunction(fn)
        if self._is_async:
            # Look like a coroutine function to inspect.iscoroutinefunction (which
            # stamina, backoff and tenacity use to pick their async code path).
            self.__code__ = Tracked._acall.__code__
            self.__defaults__ = None
            self.__kwdefaults__ = None
        self.timelines: list[Timeline] = []
        self.new_call()

    def new_call(self) -> Timeline:
        """Start the timeline of a new logical operation and return it."""
        timeline = Timeline(clock=self._clock, source=f"track({_name(self._fn)})", now=self._now)
        self.timelines.append(timeline)
        return timeline

    @property
    def timeline(self) -> Timeline:
        """The current (latest) logical operation's timeline."""
        return self.timelines[-1]

    @property
    def calls(self) -> int:
        """Attempts that reached the wrapped callable, over all timelines."""
        return sum(t.count for t in self.timelines)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self._is_async:
            return cast(R, self._acall(*args, **kwargs))
        with self.timeline.record():
            return self._fn(*args, **kwargs)

    async def _acall(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        with self.timeline.record():
            return await cast(Callable[P, Awaitable[Any]], self._fn)(*args, **kwargs)


def track(
    fn: Callable[P, R], *, clock: Clock | None = None, now: Callable[[], float] = monotonic
) -> Tracked[P, R]:
    """Wrap *fn* (sync or async) so every call is recorded: ``tracked.timeline``.

    ``clock`` defaults to the calling thread's: ``"virtual"`` under the plugin's
    virtual clock, else ``"real"``.
    """
    return Tracked(fn, clock=clock, now=now)


def _name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or fn)


# -- requested waits of retry libraries --------------------------------------------------


class _WaitRecorder:
    """Shared part of the requested-wait recorders: one wait list per logical call."""

    library = ""

    def __init__(self, now: Callable[[], float] = monotonic) -> None:
        self._lock = threading.Lock()
        self._now = now
        self._clock = detect_clock()
        self.calls: list[list[float]] = []
        self._final_attempts: list[int | None] = []
        self._started: list[list[float]] = []

    def _new_call(self) -> None:
        self.calls.append([])
        self._final_attempts.append(None)
        self._started.append([])

    def _wait(self, retry_number: int, wait: float) -> None:
        with self._lock:
            if not self.calls or retry_number == 1:
                self._new_call()
            self.calls[-1].append(float(wait))

    @property
    def waits(self) -> list[float]:
        """The requested waits of the latest logical call."""
        return list(self.calls[-1]) if self.calls else []

    @property
    def timelines(self) -> list[Timeline]:
        """One ``"requested"`` timeline per logical call."""
        out = []
        for waits, final in zip(self.calls, self._final_attempts, strict=True):
            timeline = from_waits(waits, source=f"requested waits ({self.library})")
            if final is not None and final < timeline.count:
                raise AssertionError(f"{self.library}: {final} attempts but {len(waits)} waits")
            out.append(timeline)
        return out

    @property
    def timeline(self) -> Timeline:
        """The latest logical call's requested waits as a ``"requested"`` timeline."""
        timelines = self.timelines
        return timelines[-1] if timelines else from_waits([], source=self.library)

    @property
    def measured(self) -> Timeline:
        """The latest call's attempt start times on the real clock (when the adapter saw them)."""
        stamps = self._started[-1] if self._started else []
        return from_timestamps(
            stamps, clock=self._clock, source=f"attempt starts ({self.library})"
        )


class TenacityWaits(_WaitRecorder):
    """Record the waits tenacity requests, exactly, with or without sleeping.

    Either pass the hooks (``before=rec.before, before_sleep=rec.before_sleep``),
    wrap a wait strategy (``wait=rec.wrap(wait_exponential(...))``), or
    ``rec.attach(retrying_or_decorated_function)``, which chains onto the
    hooks already configured.
    """

    library = "tenacity"

    def before(self, retry_state: Any) -> None:
        """tenacity ``before`` hook: an attempt starts."""
        with self._lock:
            if retry_state.attempt_number == 1:
                self._new_call()
            self._started[-1].append(self._now())

    def before_sleep(self, retry_state: Any) -> None:
        """tenacity ``before_sleep`` hook: the requested wait is ``next_action.sleep``."""
        with self._lock:
            if not self.calls:
                self._new_call()
            self.calls[-1].append(float(retry_state.next_action.sleep))

    def wrap(self, wait: Callable[[Any], float]) -> Callable[[Any], float]:
        """Wrap a wait strategy so each wait it returns is recorded."""

        def recorded(retry_state: Any) -> float:
            value = float(wait(retry_state))
            self._wait(int(retry_state.attempt_number), value)
            return value

        return recorded

    def attach(self, target: Any) -> Any:
        """Chain ``before``/``before_sleep`` onto a ``Retrying`` or a ``@retry`` function."""
        retrying: Any = target
        if not hasattr(target, "before_sleep"):  # a @retry function: its Retrying
            retrying = getattr(target, "retry", None)
        if not hasattr(retrying, "before_sleep"):
            raise TypeError(f"{target!r} is neither a tenacity Retrying nor a @retry function")
        retrying.before = _chain(retrying.before, self.before)
        retrying.before_sleep = _chain(retrying.before_sleep, self.before_sleep)
        return target


def _chain(
    first: Callable[[Any], Any] | None, second: Callable[[Any], None]
) -> Callable[[Any], Any]:
    if first is None:
        return second

    def both(state: Any) -> Any:
        second(state)
        return first(state)

    return both


class BackoffWaits(_WaitRecorder):
    """Record the waits ``backoff`` requests (its ``on_backoff`` ``details["wait"]``).

    ``@backoff.on_exception(..., on_backoff=rec.on_backoff, on_success=rec.on_success,
    on_giveup=rec.on_giveup)``.
    """

    library = "backoff"

    def on_backoff(self, details: Mapping[str, Any]) -> None:
        """backoff ``on_backoff`` handler."""
        self._wait(int(details["tries"]), float(details["wait"]))

    def _done(self, details: Mapping[str, Any]) -> None:
        with self._lock:
            tries = int(details["tries"])
            if tries == 1 or not self.calls:
                self._new_call()
            self._final_attempts[-1] = tries

    on_success = _done
    on_giveup = _done


class StaminaWaits(_WaitRecorder):
    """Record the waits stamina requests (``RetryDetails.wait_for``) via its retry hooks.

    ``with StaminaWaits().installed() as rec: ...`` adds the recorder to
    stamina's on-retry hooks and restores the previous hooks afterwards.
    Note ``stamina.set_testing(True)`` zeroes every wait: do not combine them.
    """

    library = "stamina"

    def __call__(self, details: Any) -> None:
        """The stamina ``RetryHook`` interface."""
        self._wait(int(details.retry_num), float(details.wait_for))

    @contextmanager
    def installed(self) -> Iterator[StaminaWaits]:
        """Install as a stamina on-retry hook for the duration of the block."""
        from stamina import instrumentation

        previous: Sequence[Any] = instrumentation.get_on_retry_hooks()
        instrumentation.set_on_retry_hooks([*previous, self])
        try:
            yield self
        finally:
            instrumentation.set_on_retry_hooks(previous)
