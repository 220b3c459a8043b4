"""Timeout verdicts: the operation gave up on time, and nothing else stalled.

``expect_timeout(within=0.5)`` is a sync and an async context manager::

    async with expect_timeout(within=0.5, give_up_after=3, max_loop_lag=0.05):
        await conn.fetch("SELECT pg_sleep(10)", timeout=0.5)

It passes when the block raised ``exc`` (default ``TimeoutError``) no earlier
than ``within - early`` and no later than ``within + late``. In async code a
hard ceiling ``give_up_after`` (default ``max(2 * within, within + 1 s)``)
cancels a block that never times out, and the verdict says "no timeout",
instead of hanging the test; a loop-lag probe runs meanwhile and reports the
worst lag (``max_loop_lag`` makes it part of the verdict). A sync block cannot
be interrupted: use :func:`expect_timeout_call`, which runs the call in a
worker thread and stops *waiting* after ``give_up_after``.

``async with expect_no_blocking(max_lag=0.05):`` is the probe on its own ("no sync
I/O in async code"): it fails with :class:`LoopBlocked`, naming the worst lag and
the call that blocked the loop.

Default tolerance on the real clock: 5 ms early, ``max(50 ms, 10 % of within)``
late (:func:`default_tolerance`). Under the plugin's virtual clock (detected,
or ``clock="virtual"``) the comparison is exact.

Postgres: :func:`aexpect_query_cancelled` / :func:`expect_query_cancelled`
poll ``pg_stat_activity`` (with a deadline) until the server-side query is
gone; :func:`aexpect_recovers` checks that the next query is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, Literal

from pytest_resilience.errors import ConfigError, ResilienceError
from pytest_resilience.observe.attempts import monotonic
from pytest_resilience.verdicts.core import (
    Tolerance,
    Verdict,
    VerdictFailed,
    collect,
    fmt_s,
)

__all__ = [
    "LoopBlocked",
    "LoopLagProbe",
    "TimeoutMismatch",
    "aexpect_query_cancelled",
    "aexpect_recovers",
    "default_tolerance",
    "expect_no_blocking",
    "expect_query_cancelled",
    "expect_timeout",
    "expect_timeout_call",
]


class TimeoutMismatch(VerdictFailed):
    """The operation did not time out as claimed (too early, too late, never, wrong error)."""


def default_tolerance(within: float) -> Tolerance:
    """5 ms early, ``max(50 ms, 10 % of within)`` late."""
    return Tolerance(early=0.005, late=max(0.05, 0.1 * within))


class LoopLagProbe:
    """Measures how late the event loop runs a periodic timer while a block runs.

    ``max_lag`` is the worst lateness seen. The first due time is taken by
    :meth:`start` itself, before the block's first line runs, and a final
    sample is taken by :meth:`stop`, so a loop blocked right at the start or
    right at the end of the block shows up too.

    With ``watch=`` (seconds) a watchdog thread samples the loop thread's
    stack while the loop is late and, once it is more than ``watch / 2`` late, records the
    innermost frame outside the stdlib, installed packages and this plugin, and how
    long consecutive samples (no probe tick between them) found the thread there:
    :attr:`blocked_at` is the call site of the worst block (``file:line in
    func``), or ``None`` when no user frame was on the stack.
    """

    def __init__(self, interval: float = 0.005, *, watch: float | None = None) -> None:
        self.interval = interval
        self.watch = watch
        self.max_lag = 0.0
        self.samples = 0
        #: call site -> seconds the watchdog saw the late loop's thread stay there
        self.sites: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._due = 0.0
        self._loop_thread = 0
        self._watchdog: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def blocked_at(self) -> str | None:
        """The call site where the late loop's thread stayed longest, if one was seen."""
        if not self.sites:
            return None
        return max(self.sites, key=self.sites.__getitem__)

    async def _run(self) -> None:
        while True:
            # never overwrite a due time that has not been sampled: start() set the
            # first one, before the block's code (which may block at once) ran
            await asyncio.sleep(max(0.0, self._due - time.perf_counter()))
            now = time.perf_counter()
            self._note(now - self._due)
            self._due = now + self.interval

    def _note(self, lag: float) -> None:
        self.samples += 1
        self.max_lag = max(self.max_lag, lag)

    def _watch(self, threshold: float) -> None:
        poll = max(0.001, min(self.interval, threshold / 4))
        # A site counts for the time the loop thread stayed there while the loop was late,
        # from the first to the last of consecutive samples with no probe tick between
        # them. The latest moment is not the blocking call: a sample can land just after
        # the block ended, in the code that resumes after it (the awaiting caller).
        # Stretches are followed from the first missed tick (late by more than a poll), so
        # a stay is timed from near the block's start; a site is recorded once the loop is
        # late by more than the threshold. One sighting names a site (a stay of 0): on a
        # loaded machine the watchdog itself may get only one sample in during a block.
        stretch: tuple[str | None, int, float] = (None, -1, 0.0)
        while not self._stopping.wait(poll):
            now = time.perf_counter()
            late = now - self._due
            if late <= poll:
                stretch = (None, -1, 0.0)
                continue
            ticks = self.samples
            site = _user_site(sys._current_frames().get(self._loop_thread))
            if site is None or stretch[:2] != (site, ticks):
                stretch = (site, ticks, now)
                if site is not None and late > threshold:
                    self.sites.setdefault(site, 0.0)
                continue
            stayed = now - stretch[2]
            if late > threshold and stayed > self.sites.get(site, 0.0):
                self.sites[site] = stayed

    def start(self) -> None:
        """Start probing on the running loop (call it from the loop's thread)."""
        loop = asyncio.get_running_loop()
        self._due = time.perf_counter() + self.interval
        self._loop_thread = threading.get_ident()
        self._task = loop.create_task(self._run(), name="loop-lag-probe")
        if self.watch is not None:
            self._stopping.clear()
            self._watchdog = threading.Thread(
                target=self._watch,
                args=(self.watch / 2,),
                name="resilience-loop-lag-watchdog",
                daemon=True,
            )
            self._watchdog.start()

    async def stop(self) -> float:
        """Stop probing; return the worst lag in seconds (final sample included)."""
        if self._task is not None:
            self._note(time.perf_counter() - self._due)
            self._stopping.set()
            if self._watchdog is not None:
                self._watchdog.join()
                self._watchdog = None
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        return self.max_lag


def _user_site(frame: FrameType | None) -> str | None:
    """``file:line in func`` of the innermost frame outside libraries and this plugin."""
    from pytest_resilience.observe.resources import Origin

    frames: list[tuple[str, int, str]] = []
    while frame is not None and len(frames) < 64:
        code = frame.f_code
        frames.append((code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    origin = Origin(frames=tuple(reversed(frames)))
    return origin.headline() if origin.user_frame() is not None else None


@dataclass
class TimeoutResult:
    """What :class:`expect_timeout` observed (filled when the block exits)."""

    elapsed: float | None = None
    error: BaseException | None = None
    gave_up: bool = False
    loop_lag: float | None = None
    blocked_at: str | None = None
    verdict: Verdict | None = None
    notes: list[str] = field(default_factory=list)


class expect_timeout:
    """Assert that the block raises *exc* after ``within`` seconds (± tolerance).

    Use as ``with`` (sync code) or ``async with`` (async code; adds the
    ``give_up_after`` ceiling and the loop-lag probe). The block's exception
    is swallowed when it is the expected timeout; the verdict raises
    :class:`TimeoutMismatch` (chained to the block's exception) otherwise.
    """

    def __init__(
        self,
        within: float,
        *,
        tolerance: Tolerance | float | tuple[float, float] | None = None,
        exc: type[BaseException] | tuple[type[BaseException], ...] = TimeoutError,
        give_up_after: float | None = None,
        max_loop_lag: float | None = None,
        clock: Literal["real", "virtual"] | None = None,
        now: Callable[[], float] = monotonic,
        what: str = "operation",
    ) -> None:
        self.within = within
        if clock is None:
            from pytest_resilience.clock import current_clock_kind

            clock = current_clock_kind()
        exact = clock == "virtual"
        self.tolerance = Tolerance.coerce(
            tolerance, Tolerance() if exact else default_tolerance(within)
        )
        self.exc = exc
        self.give_up_after = (
            give_up_after if give_up_after is not None else max(2 * within, within + 1.0)
        )
        self.max_loop_lag = max_loop_lag
        self.clock = clock
        self.now = now
        self.what = what
        self.result = TimeoutResult()
        self._started = 0.0
        self._probe: LoopLagProbe | None = None
        self._ceiling: asyncio.Timeout | None = None
        self._sync_call = False

    # -- sync ---------------------------------------------------------------------------

    def __enter__(self) -> TimeoutResult:
        self._started = self.now()
        return self.result

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> bool:
        self.result.elapsed = self.now() - self._started
        self.result.error = ev
        return self._judge(ev)

    # -- async --------------------------------------------------------------------------

    async def __aenter__(self) -> TimeoutResult:
        if self.clock == "real":  # on a virtual clock lag is not measurable (and
            self._probe = LoopLagProbe(watch=self.max_loop_lag)  # 5 ms ticks would flood
            self._probe.start()
        else:
            self.result.notes.append("loop-lag probe off: virtual clock")
        self._ceiling = asyncio.timeout(self.give_up_after)
        await self._ceiling.__aenter__()
        self._started = self.now()
        return self.result

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> bool:
        self.result.elapsed = self.now() - self._started
        assert self._ceiling is not None
        try:
            await self._ceiling.__aexit__(et, ev, tb)
        except TimeoutError as converted:
            if self._ceiling.expired():
                ev = converted
        if self._probe is not None:
            self.result.loop_lag = await self._probe.stop()
            self.result.blocked_at = self._probe.blocked_at
        if self._ceiling.expired():
            self.result.gave_up = True
        elif isinstance(ev, asyncio.CancelledError):
            return False  # cancelled from outside: not ours to judge, let it propagate
        self.result.error = ev
        return self._judge(ev)

    # -- the verdict --------------------------------------------------------------------

    def _judge(self, ev: BaseException | None) -> bool:
        r = self.result
        elapsed = r.elapsed if r.elapsed is not None else 0.0
        lo, hi = self.tolerance.widen(self.within, self.within)
        exp_name = _exc_name(self.exc)
        rows: list[list[str]] = []
        passed = True
        if r.gave_up:
            raised_text = f"nothing: still running after {fmt_s(self.give_up_after)}"
            passed = False
        elif ev is None:
            raised_text = "nothing (completed normally)"
            passed = False
        else:
            raised_text = type(ev).__name__
            if not isinstance(ev, self.exc):
                passed = False
        rows.append(["raised", exp_name, raised_text, "" if passed else "<--"])
        in_window = lo <= elapsed <= hi
        timing_ok = in_window or r.gave_up
        if not r.gave_up:
            off = ("+" if elapsed > self.within else "") + fmt_s(elapsed - self.within)
            rows.append(
                [
                    "after",
                    f"{fmt_s(self.within)} ({self.tolerance})",
                    fmt_s(elapsed),
                    "" if in_window else f"<-- off by {off}",
                ]
            )
        passed = passed and timing_ok
        if r.loop_lag is not None:
            lag_ok = self.max_loop_lag is None or r.loop_lag <= self.max_loop_lag
            bound = (
                f"<= {fmt_s(self.max_loop_lag)}" if self.max_loop_lag is not None else "(reported)"
            )
            rows.append(
                ["loop lag (max)", bound, fmt_s(r.loop_lag), "" if lag_ok else "<-- loop blocked"]
            )
            if not lag_ok and r.blocked_at is not None:
                rows.append(["blocked at", "", r.blocked_at, ""])
            passed = passed and lag_ok
        notes = list(r.notes)
        if r.gave_up:
            how = "left running in its thread" if self._sync_call else "cancelled"
            notes.append(
                f"the {self.what} has no effective timeout: it was still running after "
                f"{fmt_s(self.give_up_after)} (give_up_after) and was {how}"
            )
        elif ev is None:
            notes.append(f"the {self.what} finished in {fmt_s(elapsed)} without timing out")
        elif not in_window and elapsed < lo:
            notes.append(
                f"the {self.what} gave up {fmt_s(self.within - elapsed)} before its timeout"
            )
        elif not in_window:
            notes.append(
                f"the {self.what} gave up {fmt_s(elapsed - self.within)} after its timeout"
            )
        verdict = Verdict(
            kind="timeout",
            claim=f"{self.what} raises {exp_name} after {fmt_s(self.within)}",
            passed=passed,
            expected={"exc": exp_name, "within": self.within, "max_loop_lag": self.max_loop_lag},
            observed={
                "raised": None if ev is None else type(ev).__name__,
                "elapsed": r.elapsed,
                "gave_up": r.gave_up,
                "loop_lag": r.loop_lag,
                "blocked_at": r.blocked_at,
            },
            tolerance=str(self.tolerance),
            headers=["check", "expected", "observed", ""],
            rows=rows,
            notes=notes,
            data={"clock": self.clock},
        )
        r.verdict = verdict
        if passed:
            verdict.check()
            return True  # swallow the expected timeout
        try:
            verdict.check(TimeoutMismatch)
        except TimeoutMismatch as failure:
            raise failure from ev
        return False  # pragma: no cover - check() raised


class LoopBlocked(VerdictFailed):
    """Something blocked the event loop for longer than claimed (sync I/O in async code)."""


@dataclass
class BlockingResult:
    """What :class:`expect_no_blocking` observed (filled when the block exits)."""

    loop_lag: float | None = None
    blocked_at: str | None = None
    elapsed: float | None = None
    verdict: Verdict | None = None


class expect_no_blocking:
    """Assert that nothing blocks the event loop for more than ``max_lag`` seconds.

    ``async with expect_no_blocking(max_lag=0.05):`` runs a :class:`LoopLagProbe`
    (a 5 ms timer, with a watchdog thread that samples the loop thread's stack
    while the loop is late) from the first line of the block to the last. On
    exit a ``loop-lag`` verdict names the worst lag and, when it saw one, the
    call site that blocked (``file:line in func``); it raises
    :class:`LoopBlocked` when the lag exceeded ``max_lag``. When the block
    itself raises, its exception propagates and the verdict is only recorded.

    Needs a running event loop on the real clock: a sync ``with`` raises
    :class:`~pytest_resilience.ResilienceError` (a sync block has no loop to
    block), and so does ``async with`` under the virtual clock (loop lag is not
    measurable in virtual time).
    """

    def __init__(self, max_lag: float = 0.05, *, what: str = "the async code") -> None:
        if max_lag <= 0:
            raise ConfigError(f"expect_no_blocking(max_lag={max_lag!r}): must be > 0 seconds")
        self.max_lag = max_lag
        self.what = what
        self.result = BlockingResult()
        self._probe: LoopLagProbe | None = None
        self._started = 0.0

    def __enter__(self) -> BlockingResult:
        raise ResilienceError(
            "expect_no_blocking() measures event-loop lag and needs a running event loop: "
            "use `async with expect_no_blocking(...)` inside a coroutine "
            "(e.g. a @pytest.mark.asyncio test). See README, Verdicts > Timeouts."
        )

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:  # pragma: no cover - __enter__ always raises
        return None

    async def __aenter__(self) -> BlockingResult:
        from pytest_resilience.clock import current_clock_kind

        if current_clock_kind() == "virtual":
            raise ResilienceError(
                "expect_no_blocking() needs the real clock: event-loop lag is not measurable "
                "under the virtual clock (a blocked loop costs no virtual time). Run this "
                "check in a test without the virtual clock."
            )
        self._probe = LoopLagProbe(watch=self.max_lag)
        self._started = time.perf_counter()
        self._probe.start()  # takes its first due time now, before the block's first line
        return self.result

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> bool:
        assert self._probe is not None
        r = self.result
        r.loop_lag = await self._probe.stop()
        r.elapsed = time.perf_counter() - self._started
        r.blocked_at = self._probe.blocked_at
        if isinstance(ev, asyncio.CancelledError):
            return False  # cancelled from outside: nothing to judge
        passed = r.loop_lag <= self.max_lag
        rows = [
            [
                "loop lag (max)",
                f"<= {fmt_s(self.max_lag)}",
                fmt_s(r.loop_lag),
                "" if passed else "<-- loop blocked",
            ]
        ]
        notes: list[str] = []
        if passed:
            outcome = f"worst lag {fmt_s(r.loop_lag)}"
        else:
            where = f" at {r.blocked_at}" if r.blocked_at is not None else ""
            if r.blocked_at is not None:
                rows.append(["blocked at", "", r.blocked_at, ""])
            outcome = f"loop blocked for {fmt_s(r.loop_lag)}{where}"
            notes.append(
                f"the event loop was blocked for {fmt_s(r.loop_lag)}{where}: a synchronous "
                "call in async code (time.sleep, a blocking driver, file or DNS I/O, heavy "
                "CPU work); await the async API or move it to a thread (asyncio.to_thread)"
            )
            if r.blocked_at is None:
                notes.append(
                    "no call site was seen: the block ran in library code only, or ended "
                    "before the watchdog sampled the loop thread"
                )
        if ev is not None:
            notes.append(f"the block raised {type(ev).__name__}; the verdict is only recorded")
        verdict = Verdict(
            kind="loop-lag",
            claim=f"{self.what} never blocks the event loop for more than {fmt_s(self.max_lag)}",
            passed=passed,
            expected={"max_lag": self.max_lag},
            observed={
                "loop_lag": r.loop_lag,
                "blocked_at": r.blocked_at,
                "elapsed": r.elapsed,
                "samples": self._probe.samples,
            },
            headers=["check", "expected", "observed", ""],
            rows=rows,
            notes=notes,
            outcome=outcome,
            data={"clock": "real"},
        )
        r.verdict = verdict
        if ev is not None:
            collect(verdict)  # the block's own exception wins
            return False
        verdict.check(LoopBlocked)
        return False


def _exc_name(exc: type[BaseException] | tuple[type[BaseException], ...]) -> str:
    if isinstance(exc, tuple):
        return " | ".join(e.__name__ for e in exc)
    return exc.__name__


def expect_timeout_call(
    fn: Callable[[], Any],
    *,
    within: float,
    tolerance: Tolerance | float | tuple[float, float] | None = None,
    exc: type[BaseException] | tuple[type[BaseException], ...] = TimeoutError,
    give_up_after: float | None = None,
    what: str = "operation",
) -> Verdict:
    """Run a *sync* call in a worker thread and judge its timeout without hanging.

    When the call has not finished after ``give_up_after`` the verdict fails
    ("no timeout"); the worker thread (a daemon) is left to finish on its own,
    since Python cannot stop it.
    """
    checker = expect_timeout(
        within, tolerance=tolerance, exc=exc, give_up_after=give_up_after, what=what
    )
    checker._sync_call = True
    done = threading.Event()
    box: dict[str, BaseException | None] = {"error": None}
    started = time.monotonic()
    ended = [started]

    def run() -> None:
        try:
            fn()
        except BaseException as e:
            box["error"] = e
        finally:
            ended[0] = time.monotonic()
            done.set()

    threading.Thread(target=run, name=f"expect_timeout_call({what})", daemon=True).start()
    finished = done.wait(checker.give_up_after)
    checker.result.elapsed = (ended[0] if finished else time.monotonic()) - started
    checker.result.gave_up = not finished
    checker.result.error = box["error"]
    checker._judge(box["error"] if finished else None)
    assert checker.result.verdict is not None
    return checker.result.verdict


# -- Postgres -----------------------------------------------------------------------------

_ACTIVE_SQL = (
    "SELECT pid, state, now() - query_start AS running, query FROM pg_stat_activity "
    "WHERE pid <> pg_backend_pid() AND state <> 'idle' AND query LIKE %s"
)


def _cancel_verdict(
    pattern: str, within: float, waited: float, left: list[tuple[Any, ...]]
) -> Verdict:
    passed = not left
    rows = [
        [str(pid), str(state), str(running), str(query)[:80]] for pid, state, running, query in left
    ]
    notes = [f"polled pg_stat_activity for {fmt_s(waited)} (deadline {fmt_s(within)})"]
    if not passed:
        notes.append(
            "the client gave up but the server is still running the query: the timeout "
            "is client-side only (use statement_timeout or cancel the query)"
        )
    return Verdict(
        kind="query-cancelled",
        claim=f"no server-side query matching {pattern!r} within {fmt_s(within)}",
        passed=passed,
        expected={"matching_queries": 0, "within": within},
        observed={"matching_queries": len(left), "waited": waited},
        headers=["pid", "state", "running for", "query"] if rows else [],
        rows=rows,
        notes=notes,
    )


async def aexpect_query_cancelled(
    dsn: str, *, query_like: str = "%pg_sleep%", within: float = 2.0, poll: float = 0.02
) -> Verdict:
    """Poll ``pg_stat_activity`` until no non-idle query matches *query_like*.

    Fails when one still runs after *within* seconds.
    """
    import psycopg

    started = time.monotonic()
    left: list[tuple[Any, ...]] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            cur = await conn.execute(_ACTIVE_SQL, (query_like,))
            left = list(await cur.fetchall())
            waited = time.monotonic() - started
            if not left or waited >= within:
                break
            await asyncio.sleep(poll)
    return _cancel_verdict(query_like, within, waited, left).check(TimeoutMismatch)


def expect_query_cancelled(
    dsn: str, *, query_like: str = "%pg_sleep%", within: float = 2.0, poll: float = 0.02
) -> Verdict:
    """Sync twin of :func:`aexpect_query_cancelled` (psycopg)."""
    import psycopg

    started = time.monotonic()
    left: list[tuple[Any, ...]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            left = list(conn.execute(_ACTIVE_SQL, (query_like,)).fetchall())
            waited = time.monotonic() - started
            if not left or waited >= within:
                break
            time.sleep(poll)
    return _cancel_verdict(query_like, within, waited, left).check(TimeoutMismatch)


async def aexpect_recovers(
    probe: Callable[[], Awaitable[Any]], *, within: float = 2.0, what: str = "the next query"
) -> Verdict:
    """Assert that ``await probe()`` succeeds within *within* seconds.

    E.g. ``await aexpect_recovers(lambda: pool.fetchval("SELECT 1"))``.
    """
    started = time.monotonic()
    error: BaseException | None = None
    try:
        async with asyncio.timeout(within):
            await probe()
    except Exception as e:
        error = e
    elapsed = time.monotonic() - started
    verdict = Verdict(
        kind="recovery",
        claim=f"{what} is served within {fmt_s(within)} after the fault is removed",
        passed=error is None,
        expected={"within": within},
        observed={"elapsed": elapsed, "error": None if error is None else repr(error)},
        headers=["check", "expected", "observed"],
        rows=[
            [
                "served",
                f"within {fmt_s(within)}",
                f"yes, in {fmt_s(elapsed)}"
                if error is None
                else f"no: {error!r} after {fmt_s(elapsed)}",
            ]
        ],
    )
    try:
        return verdict.check(TimeoutMismatch)
    except TimeoutMismatch as failure:
        raise failure from error
