"""Faults on a timeline that can repeat: "Postgres latency 10 s every minute", "the API
down for 5 s every 30 s". The soak driver ticks it every 20 ms; the windows each fault
was active become the record's stages (shaded in the report, judged per stage).

    schedule = FaultSchedule()
    schedule.toxic(pg_proxy, "latency", latency=200, at=5, for_=2, every=10)
    schedule.down(api_proxy, at=20, for_=3)
    schedule.add("backend answers 503", lambda: backend.set_routes(...) or restore,
                 at=30, for_=5)   # any apply() returning its heal()
    result = soak.run(target, faults=schedule)

The scenario runner builds one from a scenario's ``faults`` steps.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytest_resilience.errors import ConfigError
from pytest_resilience.soak.record import Stage

__all__ = ["FaultSchedule", "http_fault", "network_fault"]

#: toxic options (not attributes) a fault step may carry next to the attributes
TOXIC_OPTIONS = ("stream", "toxicity", "name")


def network_fault(proxy: Any, fault: str, attributes: dict[str, Any] | None = None
                  ) -> Callable[[], Callable[[], None]]:
    """``apply()`` for a network fault of the vocabulary on ``proxy`` (a client ``Proxy``,
    or anything with a ``.proxy``): ``down``, ``fail_first`` or a toxic (its options
    ``stream``/``toxicity``/``name`` taken from ``attributes``); it returns the heal."""
    target = getattr(proxy, "proxy", proxy)
    attrs = dict(attributes or {})

    def apply() -> Callable[[], None]:
        if fault == "down":
            target.disable()
            enable: Callable[[], None] = target.enable
            return enable
        if fault == "fail_first":  # an engine extension, not a toxic
            armed = target.fail_first(**attrs)
            disarm: Callable[[], None] = armed.remove
            return disarm
        toxic_attrs = dict(attrs)
        options = {k: toxic_attrs.pop(k) for k in TOXIC_OPTIONS if k in toxic_attrs}
        toxic = target.add_toxic(fault, toxic_attrs, **options)
        remove: Callable[[], None] = toxic.remove
        return remove

    return apply


def http_fault(backend: Any, route: str | None, steps: Any) -> Callable[[], Callable[[], None]]:
    """``apply()`` re-scripting ``route`` of an HTTP backend (``None``: all its routes)
    with ``steps``; it returns the restore."""

    def apply() -> Callable[[], None]:
        restore: Callable[[], None] = backend.rescript(route, steps)
        return restore

    return apply


@dataclass
class _Step:
    index: int
    label: str
    apply: Callable[[], Callable[[], None]]
    at: float
    for_: float | None
    every: float | None
    after: Callable[[], bool] | None = None
    after_label: str = ""
    ended: int = 0  # windows of this step that have ended


class FaultSchedule:
    """Steps applied at ``at`` (seconds since the run started) for ``for_`` seconds
    (``None``: to the end), again every ``every`` seconds when given."""

    def __init__(self, note: Callable[[float, str], None] | None = None) -> None:
        self._steps: list[_Step] = []
        self._pending: list[tuple[float, int]] = []
        self._waiting: list[int] = []  # steps whose trigger has not fired yet
        self._active: list[tuple[float, _Step, Callable[[], None], int]] = []
        self._windows: list[tuple[float, float | None, str]] = []
        self._note = note
        self._lock = threading.Lock()

    # -- building ----------------------------------------------------------------------

    def add(self, label: str, apply: Callable[[], Callable[[], None]], *, at: float = 0.0,
            for_: float | None = None, every: float | None = None,
            after: Callable[[], bool] | str | int | None = None,
            after_label: str = "") -> FaultSchedule:
        """``apply()`` starts the fault and returns the function that heals it.

        ``after``: start ``at`` seconds after a trigger instead of after the run's start:
        a predicate checked at every tick (``lambda: len(backend.requests) >= 5``), or
        the index of an earlier step (its first window ended)."""
        if at < 0 or (for_ is not None and for_ < 0):
            raise ConfigError(f"{label}: at= and for_= are seconds >= 0")
        if every is not None and (every <= 0 or for_ is None or for_ >= every):
            raise ConfigError(f"{label}: a repeating fault needs for_ shorter than every "
                              f"(got for_={for_!r}, every={every!r})")
        trigger: Callable[[], bool] | None
        if isinstance(after, int) and not isinstance(after, bool):
            if not 0 <= after < len(self._steps):
                raise ConfigError(f"{label}: after={after} is not an earlier step (0.."
                                  f"{len(self._steps) - 1})")
            earlier = self._steps[after]
            trigger = lambda: earlier.ended > 0  # noqa: E731
            after_label = after_label or f"after {earlier.label} ended"
        elif isinstance(after, str):
            raise ConfigError(f"{label}: after= takes a predicate or a step index; the "
                              "scenario format parses trigger strings")
        elif isinstance(after, bool):
            raise ConfigError(f"{label}: after= takes a predicate or a step index")
        else:
            trigger = after
        step = _Step(len(self._steps), label, apply, float(at),
                     None if for_ is None else float(for_),
                     None if every is None else float(every), trigger,
                     after_label or ("after its trigger" if trigger else ""))
        self._steps.append(step)
        if trigger is None:
            self._pending.append((step.at, step.index))
            self._pending.sort()
        else:
            self._waiting.append(step.index)
        return self

    def toxic(self, proxy: Any, kind: str, *, at: float = 0.0, for_: float | None = None,
              every: float | None = None, stream: str = "downstream", toxicity: float = 1.0,
              **attributes: Any) -> FaultSchedule:
        """A Toxiproxy toxic on ``proxy`` (a client ``Proxy``: ``pg_proxy.proxy``...)."""
        target = getattr(proxy, "proxy", proxy)
        text = ", ".join(f"{k}={v}" for k, v in attributes.items())
        label = f"{kind} on {getattr(target, 'name', 'proxy')}" + (f" ({text})" if text else "")
        apply = network_fault(target, kind, {**attributes, "stream": stream,
                                             "toxicity": toxicity})
        return self.add(label, apply, at=at, for_=for_, every=every)

    def down(self, proxy: Any, *, at: float = 0.0, for_: float | None = None,
             every: float | None = None) -> FaultSchedule:
        """``proxy`` disabled (connections refused and cut) for the window."""
        target = getattr(proxy, "proxy", proxy)
        return self.add(f"down: {getattr(target, 'name', 'proxy')}",
                        network_fault(target, "down"), at=at, for_=for_, every=every)

    # -- running (the driver's FaultCycle) ------------------------------------------------

    def _say(self, now: float, text: str) -> None:
        if self._note is not None:
            self._note(now, text)

    def tick(self, now: float) -> None:
        with self._lock:
            for entry in list(self._active):
                started, step, heal, window = entry
                if step.for_ is not None and now >= started + step.for_:
                    heal()
                    self._active.remove(entry)
                    self._close(window, now)
                    step.ended += 1
                    self._say(now, f"removed {step.label}")
            for index in list(self._waiting):
                step = self._steps[index]
                assert step.after is not None
                if step.after():
                    self._waiting.remove(index)
                    self._pending.append((now + step.at, index))
                    self._pending.sort()
                    self._say(now, f"triggered {step.label} ({step.after_label}"
                              + (f", starts in {step.at:g} s" if step.at else "") + ")")
            while self._pending and self._pending[0][0] <= now:
                due, index = self._pending.pop(0)
                step = self._steps[index]
                heal = step.apply()
                self._say(now, f"applied {step.label}")
                if step.every is not None:
                    self._pending.append((due + step.every, index))
                    self._pending.sort()
                if step.for_ is not None and step.for_ <= 0:
                    heal()
                    step.ended += 1
                    continue
                self._windows.append((now, None, step.label))
                self._active.append((due, step, heal, len(self._windows) - 1))

    def _close(self, window: int, now: float) -> None:
        start, _, label = self._windows[window]
        self._windows[window] = (start, now, label)

    def heal_all(self, now: float) -> None:
        with self._lock:
            for _, step, heal, window in reversed(self._active):  # last applied first
                with contextlib.suppress(Exception):
                    heal()
                self._close(window, now)
                step.ended += 1
                self._say(now, f"healed {step.label} (end)")
            self._active.clear()

    def stages(self) -> list[Stage]:
        with self._lock:
            return [Stage(start, end, label) for start, end, label in self._windows]

    def waiting(self) -> list[str]:
        """Steps whose trigger never fired (for the timeline at the end)."""
        with self._lock:
            return [f"{self._steps[i].label} ({self._steps[i].after_label})"
                    for i in self._waiting]

    def current(self) -> str:
        with self._lock:
            return "; ".join(step.label for _, step, _, _ in self._active)
