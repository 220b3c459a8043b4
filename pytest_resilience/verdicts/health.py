"""Health-grade verdict: a monitor says what the dependency is going through, in time.

A :class:`HealthRecorder` samples a monitor's ``probe()`` (sync or async; returning a
grade string or an object with ``.grade``) every ``interval`` seconds while a block
runs, and the test marks what it did to the dependency::

    async with HealthRecorder(monitor.check, interval=0.05) as health:
        health.mark("baseline")
        await health.await_grade("healthy", timeout=1.5)
        health.mark("slow")
        with pg_proxy.latency(200):
            await health.await_grade("degraded", timeout=1.5)
            ...
    expect_health_grades(health, [
        ("baseline", "healthy", 1.0),
        ("slow", "degraded", 1.0),        # degraded within 1 s of the slowdown
        ("exhausted", "critical", 1.0),
        ("recovered", "healthy", 2.0),    # healthy again within 2 s after
    ])

``await_grade`` / ``wait_grade`` return when a sample taken after the last mark shows
the grade, or after ``timeout`` (they never raise: the verdict judges). The verdict
passes a step when a sample that *started* after the step's mark reported one of the
expected grades no later than ``within`` seconds after the mark. A step with no sample
after its mark, or whose window closed (next mark, end of recording) before ``within``
elapsed without the grade, is "not measured" and fails. With ``hold=True`` the grade
must also stay until the next mark (no flapping). Real clock only.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pytest_resilience.errors import ConfigError
from pytest_resilience.verdicts.core import Verdict, VerdictFailed, fmt_s

__all__ = [
    "GradeSample",
    "HealthMismatch",
    "HealthRecorder",
    "expect_health_grades",
]


class HealthMismatch(VerdictFailed):
    """The monitor did not report the claimed grade in time (or at all)."""


@dataclass(frozen=True)
class GradeSample:
    """One probe: when it started and returned (``time.monotonic()``), and its grade
    (``None`` when the probe raised or timed out: ``error`` says what happened)."""

    started: float
    ended: float
    grade: str | None
    error: str | None = None

    @property
    def label(self) -> str:
        return self.grade if self.grade is not None else f"error ({self.error})"


def _default_grade(result: Any) -> str:
    if isinstance(result, str):
        return result
    grade = getattr(result, "grade", None)
    if grade is None:
        raise ConfigError(
            f"the probe returned {result!r}: neither a grade string nor an object with "
            "`.grade`; pass HealthRecorder(grade=lambda result: ...)"
        )
    return str(getattr(grade, "value", grade))


class HealthRecorder:
    """Samples ``probe()`` in the background and records grades and marks.

    ``async with`` runs the sampler as a task on the running loop (the probe may be a
    coroutine function); ``with`` runs it in a thread (sync probes only). Each probe
    gets ``probe_timeout`` seconds (async only: a sync probe cannot be interrupted).
    """

    def __init__(
        self,
        probe: Callable[[], Any],
        *,
        interval: float = 0.05,
        grade: Callable[[Any], str] | None = None,
        probe_timeout: float = 5.0,
        what: str = "the monitor",
    ) -> None:
        if interval <= 0:
            raise ConfigError(f"HealthRecorder(interval={interval!r}): must be > 0 seconds")
        self.probe = probe
        self.interval = interval
        self.grade = grade or _default_grade
        self.probe_timeout = probe_timeout
        self.what = what
        self.samples: list[GradeSample] = []
        self.marks: list[tuple[str, float]] = []
        self.started: float | None = None
        self.stopped: float | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._new_sample: asyncio.Event | None = None
        self._misuse: ConfigError | None = None

    # -- marks and waiting -----------------------------------------------------------

    def mark(self, name: str) -> float:
        """Note that *name* happened now (``"slow"``, ``"exhausted"``...); returns the time."""
        if any(existing == name for existing, _ in self.marks):
            raise ConfigError(f"HealthRecorder.mark({name!r}): marked twice")
        at = time.monotonic()
        with self._cond:
            self.marks.append((name, at))
        return at

    def _reached(self, grades: Collection[str]) -> bool:
        since = self.marks[-1][1] if self.marks else float("-inf")
        return any(s.started >= since and s.grade in grades for s in self.samples)

    def wait_grade(self, grades: str | Collection[str], timeout: float) -> bool:
        """Block until a sample after the last mark shows one of *grades* (True), or
        *timeout* seconds pass (False). For ``with`` recorders (sampling in a thread)."""
        wanted = _grades(grades)
        with self._cond:
            return self._cond.wait_for(lambda: self._reached(wanted), timeout=timeout)

    async def await_grade(self, grades: str | Collection[str], timeout: float) -> bool:
        """Async twin of :meth:`wait_grade`, for ``async with`` recorders."""
        wanted = _grades(grades)
        if self._new_sample is None:
            raise ConfigError("await_grade() needs a recorder started with `async with`")
        deadline = time.monotonic() + timeout
        while not self._reached(wanted):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._new_sample.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._new_sample.wait()
        return True

    def _add(self, sample: GradeSample) -> None:
        with self._cond:
            self.samples.append(sample)
            self._cond.notify_all()
        if self._new_sample is not None:
            self._new_sample.set()

    def _classify(self, started: float, result: Any) -> GradeSample:
        try:
            grade = self.grade(result)
        except ConfigError as exc:  # the probe returns no grade: misuse, raised on exit
            self._misuse = exc
            return GradeSample(started, time.monotonic(), None, str(exc))
        except Exception as exc:
            return GradeSample(started, time.monotonic(), None, f"grade(): {exc!r}")
        return GradeSample(started, time.monotonic(), grade)

    # -- async sampling --------------------------------------------------------------

    async def _arun(self) -> None:
        while True:
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.probe_timeout):
                    result = self.probe()
                    if inspect.isawaitable(result):
                        result = await result
            except TimeoutError:
                self._add(GradeSample(started, time.monotonic(), None,
                                      f"probe timed out after {fmt_s(self.probe_timeout)}"))
            except Exception as exc:
                self._add(GradeSample(started, time.monotonic(), None, repr(exc)))
            else:
                self._add(self._classify(started, result))
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> HealthRecorder:
        self._new_sample = asyncio.Event()
        self.started = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._arun(),
                                                             name="health-recorder")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stopped = time.monotonic()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._misuse is not None and et is None:
            raise self._misuse

    # -- sync sampling ---------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                result = self.probe()
            except Exception as exc:
                self._add(GradeSample(started, time.monotonic(), None, repr(exc)))
            else:
                self._add(self._classify(started, result))
            self._stop.wait(self.interval)

    def __enter__(self) -> HealthRecorder:
        if inspect.iscoroutinefunction(self.probe):
            raise ConfigError("the probe is a coroutine function: use `async with` "
                              "HealthRecorder(...)")
        self._stop.clear()
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="resilience-health-recorder")
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stopped = time.monotonic()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._misuse is not None and et is None:
            raise self._misuse


def _grades(grades: str | Collection[str]) -> frozenset[str]:
    return frozenset([grades] if isinstance(grades, str) else grades)


def _runs(samples: Sequence[GradeSample]) -> str:
    """``healthy x3, degraded x12`` (consecutive samples with the same grade merged)."""
    parts: list[list[Any]] = []
    for s in samples:
        if parts and parts[-1][0] == s.label:
            parts[-1][1] += 1
        else:
            parts.append([s.label, 1])
    return ", ".join(f"{label} x{n}" for label, n in parts) or "no sample"


Step = tuple[str, "str | Collection[str]", float]


def expect_health_grades(
    recorder: HealthRecorder,
    steps: Sequence[Step],
    *,
    hold: bool = False,
    what: str | None = None,
) -> Verdict:
    """Assert a timeline of grades: for each ``(mark, grade(s), within)``, the monitor
    reported the grade within ``within`` seconds of the mark. Raises
    :class:`HealthMismatch` naming each step that was late, wrong or not measured."""
    what = what or recorder.what
    if not steps:
        raise ConfigError("expect_health_grades(): give at least one (mark, grade, within)")
    marks = dict(recorder.marks)
    unknown = [name for name, _, _ in steps if name not in marks]
    if unknown:
        raise ConfigError(
            f"expect_health_grades(): no mark named {', '.join(map(repr, unknown))}; "
            f"marked: {', '.join(repr(n) for n, _ in recorder.marks) or 'nothing'}"
        )
    end = recorder.stopped if recorder.stopped is not None else time.monotonic()
    ordered = sorted(recorder.marks, key=lambda m: m[1])
    rows: list[list[str]] = []
    problems: list[str] = []
    claims: list[str] = []
    observed: dict[str, Any] = {}
    for name, grades, within in steps:
        wanted = _grades(grades)
        want_text = "/".join(sorted(wanted))
        claims.append(f"{want_text} within {fmt_s(within)} of {name!r}")
        at = marks[name]
        later = [t for _, t in ordered if t > at]
        window_end = min(later) if later else end
        window = [s for s in recorder.samples if s.started >= at and s.ended <= window_end]
        hit = next((s for s in window if s.grade in wanted), None)
        problem = ""
        if hit is not None and hit.ended - at <= within:
            after = window[window.index(hit):]
            left = [s for s in after if s.grade not in wanted]
            result = f"{hit.grade} after {fmt_s(hit.ended - at)}"
            if hold and left:
                problem = (f"{what} left {want_text} after reaching it ({left[0].label} "
                           f"{fmt_s(left[0].ended - at)} after {name!r})")
        elif hit is not None:
            result = f"{hit.grade} only after {fmt_s(hit.ended - at)}"
            problem = (f"{what} did not say {want_text} within {fmt_s(within)} of {name!r}: "
                       f"only after {fmt_s(hit.ended - at)}")
        elif not window:
            result = "not measured"
            problem = (f"{want_text} after {name!r}: not measured (no probe started after the "
                       f"mark returned before {'the next mark' if later else 'the end'}, "
                       f"{fmt_s(window_end - at)} later)")
        elif window_end - at < within:
            result = "not measured"
            problem = (f"{want_text} after {name!r}: not measured (the "
                       f"{'next mark' if later else 'recording end'} came "
                       f"{fmt_s(window_end - at)} after it, before the {fmt_s(within)} bound, "
                       f"and {what} had not said {want_text} yet)")
        else:
            result = "never"
            seen = sorted({s.label for s in window})
            problem = (f"{what} did not say {want_text} within {fmt_s(within)} of {name!r}: "
                       f"it said {', '.join(seen)}")
        rows.append([name, f"{want_text} within {fmt_s(within)}", result, _runs(window),
                     "<--" if problem else ""])
        observed[name] = {"result": result, "grades": [s.label for s in window]}
        if problem:
            problems.append(problem)
    passed = not problems
    verdict = Verdict(
        kind="health-grades",
        claim=f"{what} says " + "; ".join(claims),
        passed=passed,
        expected=[{"mark": n, "grades": sorted(_grades(g)), "within": w} for n, g, w in steps],
        observed=observed,
        tolerance="hold: grade kept until the next mark" if hold else "",
        headers=["mark", "expected", "observed", "grades after the mark", ""],
        rows=rows,
        notes=[*problems, f"{len(recorder.samples)} samples, one every "
               f"{fmt_s(recorder.interval)} plus the probe's own time"],
        outcome="; ".join(problems) if problems else f"{len(steps)} of {len(steps)} in time",
    )
    return verdict.check(HealthMismatch)
