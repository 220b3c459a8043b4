"""Fallback verdict: while the dependency is down, callers get the fallback - and the
right one.

"It did not raise" is not the claim; *what the call returned* is. A
:class:`FallbackRecorder` wraps the calls a test makes to the code under test and
records what each returned (or raised), in which phase (dependency up, or inside
``with recorder.outage():``) and, when it is given the breaker's state, whether the
breaker was open when the call started::

    recorder = FallbackRecorder(value=lambda t: t.items,
                                breaker_state=lambda: breaker.current_state)
    recorder.call(client.get_trends)                  # up: a good answer, remembered
    with recorder.outage():
        http_backend.rescript("GET /trends", "503 forever")
        for _ in range(8):
            recorder.call(client.get_trends)          # errors are recorded, not raised
    expect_fallback(recorder, served="last_good", while_="down")

``served``: ``"last_good"`` (the last value a call returned while the dependency was
up), a value to compare with ``==``, or a predicate ``value -> bool``.
``while_``: ``"down"`` (every call of the outage: "always") or ``"open"`` (the calls
that started while the breaker was open; needs ``breaker_state``).

A property that could not be measured fails: no good answer before the outage
(``served="last_good"``), no call during the outage, or a breaker that was never open
(``while_="open"``). The verdict raises :class:`FallbackMismatch` naming the defect:
the error reached the caller, a wrong or stale answer was served, or the fallback
only started once the breaker opened.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pytest_resilience.errors import ConfigError
from pytest_resilience.observe.attempts import monotonic
from pytest_resilience.verdicts.core import Verdict, VerdictFailed

__all__ = [
    "FallbackCall",
    "FallbackMismatch",
    "FallbackRecorder",
    "expect_fallback",
]

R = TypeVar("R")

#: How many calls the table shows before it summarises the rest.
MAX_ROWS = 40
#: Longest rendering of a value in the table.
MAX_VALUE_CHARS = 60


class FallbackMismatch(VerdictFailed):
    """The fallback was not served as claimed (error reached the caller, wrong answer)."""


@dataclass
class FallbackCall:
    """One call of the code under test, as a :class:`FallbackRecorder` saw it."""

    number: int
    phase: Literal["up", "down"]
    started: float
    ended: float | None = None
    value: Any = None
    error: BaseException | None = None
    breaker_before: str | None = None
    breaker_after: str | None = None

    @property
    def raised(self) -> bool:
        return self.error is not None

    @property
    def error_text(self) -> str:
        if self.error is None:
            return ""
        text = f"{type(self.error).__name__}: {self.error}".rstrip(": ")
        return _short(text)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


class FallbackRecorder:
    """Records what each call of the code under test returned, by phase.

    ``value`` maps a call's result to what the claim is about (``lambda t: t.items``;
    default: the result itself). ``breaker_state`` returns the breaker's state
    (``"open"``, an enum, a pybreaker state... anything
    :func:`~pytest_resilience.observe.breaker.normalize_state` understands); it is read
    before and after every call. ``catch`` is what :meth:`call` records instead of
    raising (default ``Exception``: the verdict judges errors, the test goes on).
    """

    def __init__(
        self,
        *,
        value: Callable[[Any], Any] | None = None,
        breaker_state: Callable[[], object] | None = None,
        catch: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        now: Callable[[], float] = monotonic,
        what: str = "the call",
    ) -> None:
        self.value = value
        self.breaker_state = breaker_state
        self.catch = catch
        self.now = now
        self.what = what
        self.calls: list[FallbackCall] = []
        self.outages = 0
        self._down = False
        self._lock = threading.Lock()

    # -- phases ----------------------------------------------------------------------

    @contextlib.contextmanager
    def outage(self) -> Iterator[FallbackRecorder]:
        """Calls made inside the block are judged: the dependency is down there."""
        if self._down:
            raise ConfigError("FallbackRecorder.outage() blocks do not nest")
        self._down = True
        self.outages += 1
        try:
            yield self
        finally:
            self._down = False

    @property
    def down(self) -> bool:
        """True inside :meth:`outage`."""
        return self._down

    # -- calls -----------------------------------------------------------------------

    def _state(self) -> str | None:
        if self.breaker_state is None:
            return None
        from pytest_resilience.observe.breaker import normalize_state

        return normalize_state(self.breaker_state())

    def _begin(self) -> FallbackCall:
        before = self._state()
        with self._lock:
            record = FallbackCall(
                number=len(self.calls) + 1, phase="down" if self._down else "up",
                started=self.now(), breaker_before=before,
            )
            self.calls.append(record)
        return record

    def _end(self, record: FallbackCall, result: Any, error: BaseException | None) -> None:
        record.ended = self.now()
        record.error = error
        if error is None:
            record.value = self.value(result) if self.value is not None else result
        record.breaker_after = self._state()

    def call(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R | None:
        """Call ``fn(*args, **kwargs)``; return its result, or ``None`` when it raised one
        of ``catch`` (recorded for the verdict)."""
        if inspect.iscoroutinefunction(fn):
            raise ConfigError(f"{fn!r} is a coroutine function: use `await recorder.acall()`")
        record = self._begin()
        try:
            result = fn(*args, **kwargs)
        except self.catch as exc:
            self._end(record, None, exc)
            return None
        if inspect.isawaitable(result):
            with self._lock:
                self.calls.remove(record)
            close = getattr(result, "close", None)
            if close is not None:
                close()  # never awaited: no "coroutine was never awaited" warning
            raise ConfigError(f"{fn!r} returned an awaitable: use `await recorder.acall()`")
        self._end(record, result, None)
        return result

    async def acall(self, fn: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R | None:
        """Async twin of :meth:`call`."""
        record = self._begin()
        try:
            result = await fn(*args, **kwargs)
        except self.catch as exc:
            self._end(record, None, exc)
            return None
        self._end(record, result, None)
        return result


# -- the verdict ---------------------------------------------------------------------


Served = Any  # "last_good", a value compared with ==, or a predicate value -> bool


def expect_fallback(
    calls: FallbackRecorder | Sequence[FallbackCall],
    *,
    served: Served = "last_good",
    while_: Literal["down", "open"] = "down",
    what: str | None = None,
) -> Verdict:
    """Assert that every judged call returned the fallback ``served``.

    Judged calls: every call made during an outage (``while_="down"``: the claim is
    "always while the dependency is down"), or those that started while the breaker
    was open (``while_="open"``). Returns the passing :class:`Verdict`; raises
    :class:`FallbackMismatch` otherwise (also when something could not be measured).
    """
    if while_ not in ("down", "open"):
        raise ConfigError(f"expect_fallback(while_={while_!r}): use 'down' or 'open'")
    records = list(calls.calls if isinstance(calls, FallbackRecorder) else calls)
    if what is None:
        what = calls.what if isinstance(calls, FallbackRecorder) else "the call"
    has_breaker = any(r.breaker_before is not None for r in records)
    if while_ == "open" and not has_breaker and records:
        raise ConfigError(
            "expect_fallback(while_='open') needs the breaker's state: "
            "FallbackRecorder(breaker_state=lambda: breaker.current_state)"
        )
    expected_text, matches, measurable = _served(served, records)
    when = ("while the dependency is down" if while_ == "down"
            else "while the breaker is open")
    claim = f"{what} serves {expected_text} {when}"

    judged: list[FallbackCall] = []
    for r in records:
        if r.phase != "down":
            continue
        if while_ == "open" and r.breaker_before != "open":
            continue
        judged.append(r)

    headers = ["#", "phase"] + (["breaker"] if has_breaker else []) + ["returned", ""]
    rows: list[list[str]] = []
    blame: list[int] = []
    raised: list[FallbackCall] = []
    wrong: list[FallbackCall] = []
    judged_ids = {id(r) for r in judged}
    for r in records:
        mark = ""
        if id(r) in judged_ids:
            if r.raised:
                raised.append(r)
                mark = "<-- error reached the caller"
            elif measurable and not matches(r):
                wrong.append(r)
                mark = "<-- wrong answer"
        elif r.phase == "down":
            mark = "(not judged: breaker not open)"
        returned = f"raised {r.error_text}" if r.raised else _short(repr(r.value))
        breaker = []
        if has_breaker:
            breaker = [f"{r.breaker_before or '-'} -> {r.breaker_after or '-'}"]
        row = [str(r.number), r.phase, *breaker, returned, mark]
        if mark.startswith("<--"):
            blame.append(len(rows))
        rows.append(row)
    if len(rows) > MAX_ROWS:
        # keep the first blamed rows visible: drop unblamed rows from the middle
        keep = set(range(10)) | set(blame[:20]) | set(range(len(rows) - 5, len(rows)))
        kept = [i for i in range(len(rows)) if i in keep]
        rows = [rows[i] for i in kept]
        blame = [kept.index(i) for i in blame if i in keep]

    not_measured: list[str] = []
    if not measurable:
        not_measured.append(
            "the last good answer: not measured (no call returned while the dependency "
            "was up, before the outage)"
        )
    if not any(r.phase == "down" for r in records):
        not_measured.append(
            "the fallback: not measured (no call was made inside `with recorder.outage():`)"
        )
    elif not judged:
        not_measured.append(
            "the fallback while the breaker is open: not measured (the breaker was never "
            "open when a call of the outage started)"
        )

    notes: list[str] = []
    outcome_parts: list[str] = []
    if raised:
        first = raised[0]
        outcome_parts.append(
            f"the error reached the caller on {len(raised)} of {len(judged)} calls "
            f"{when} (first: call #{first.number}, {first.error_text})"
        )
        if has_breaker and while_ == "down":
            closed = [r for r in raised if r.breaker_before != "open"]
            if closed and len(closed) == len(raised):
                notes.append(
                    f"no fallback until the breaker opened: the {len(closed)} failing calls "
                    "started with the breaker "
                    + "/".join(sorted({str(r.breaker_before) for r in closed}))
                    + " - the claim is 'always while the dependency is down', not only "
                    "while the breaker is open"
                )
    if wrong:
        first = wrong[0]
        outcome_parts.append(
            f"served {_short(repr(first.value))} instead of {expected_text} on "
            f"{len(wrong)} of {len(judged)} calls (first: call #{first.number})"
        )
        if isinstance(served, str) and served == "last_good":
            earlier = [r.value for r in records
                       if r.phase == "up" and not r.raised and r.number < first.number]
            if first.value in earlier[:-1]:
                notes.append(
                    "that is an older good answer, not the last one: a stale fallback"
                )
    if isinstance(served, str) and served == "last_good" and measurable:
        goods = {repr(r.value) for r in records if r.phase == "up" and not r.raised}
        if len(goods) < 2:
            notes.append(
                "only one distinct good answer before the outage: a fallback that keeps "
                "the first answer instead of the last would pass too (change the answer "
                "between two calls, e.g. http_backend.rescript)"
            )
    passed = not not_measured and not raised and not wrong
    if passed:
        outcome = f"{len(judged)} of {len(judged)} calls {when} served {expected_text}"
    else:
        outcome = "; ".join([*not_measured, *outcome_parts])
    verdict = Verdict(
        kind="fallback",
        claim=claim,
        passed=passed,
        expected={"served": expected_text, "while": while_},
        observed={
            "judged": len(judged), "raised": len(raised), "wrong": len(wrong),
            "not_measured": not_measured,
        },
        headers=headers,
        rows=rows,
        notes=[*(f"not measured: {n}" for n in not_measured), *outcome_parts, *notes],
        blame=blame,
        outcome=outcome,
    )
    return verdict.check(FallbackMismatch)


class _NotMeasured:
    def __repr__(self) -> str:
        return "<not measured>"


_NOT_MEASURED: Any = _NotMeasured()


def _served(
    served: Served, records: Sequence[FallbackCall]
) -> tuple[str, Callable[[FallbackCall], bool], bool]:
    """(text for the claim, the test of a judged call's value, whether it is measurable).

    ``"last_good"`` compares each call of an outage with the last value returned while
    the dependency was up before that call (each outage has its own last good answer).
    """
    if isinstance(served, str) and served == "last_good":
        last: dict[int, Any] = {}
        good: Any = _NOT_MEASURED
        for r in records:
            if r.phase == "up" and not r.raised:
                good = r.value
            last[r.number] = good
        first_down = next((r for r in records if r.phase == "down"), None)
        if first_down is None or last[first_down.number] is _NOT_MEASURED:
            return "the last good answer", lambda r: False, False
        want = last[first_down.number]
        text = "the last good answer"
        if all(last[r.number] == want for r in records if r.phase == "down"):
            text += f" ({_short(repr(want))})"
        return text, lambda r: bool(r.value == last[r.number]), True
    if callable(served):
        name = getattr(served, "__name__", "predicate")
        return f"an answer that satisfies {name}", lambda r: bool(served(r.value)), True
    return _short(repr(served)), lambda r: bool(r.value == served), True
