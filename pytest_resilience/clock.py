"""Virtual time: one clock behind every time source a test can read.

A :class:`VirtualClock` drives, together and from one counter:

* the asyncio event loop on the clock's thread (``loop.time()``, ``asyncio.sleep``,
  ``wait_for``, ``asyncio.timeout``, ``call_later``): when the loop would wait for
  its next timer, time jumps to that timer instead (*auto-advance*);
* ``time.monotonic``/``monotonic_ns``/``perf_counter``/``perf_counter_ns`` and
  ``time.clock_gettime[_ns]`` for the monotonic clock ids, including modules that
  bound them early (``from time import monotonic`` — circuitbreaker, psycopg,
  aiohttp), class attributes, default arguments and closures;
* ``time.sleep``: a sync sleep advances virtual time at once;
* the wall clock — ``time.time``/``time_ns``/``gmtime``/``localtime``/``strftime``,
  ``datetime.now``/``utcnow``/``today``, ``date.today`` — through time-machine,
  which patches them at C level, so every binding of them follows.

Only the thread that started the clock sees virtual time. Other threads (a fake
HTTP backend, the built-in Toxiproxy engine, executor workers) and the modules
in :data:`DEFAULT_IGNORE` (pytest, threading, queue, subprocess, psycopg's wait
loops, the plugin's own service code, ...) keep reading the real clocks: their
clock reads bracket real blocking waits, which a frozen clock would turn into
endless loops. Add your own with ``VirtualClock(ignore=("mypkg.poller",))``.

Between waits virtual time stands still: code running on the clock's thread
takes no virtual time, and neither does *sync* real I/O (a blocking socket read
with its own real timeout). Only ``time.sleep``, :meth:`VirtualClock.advance`
and the event loop move it.

Real I/O rule
-------------
Virtual time never jumps past real work that is still outstanding. When the
event loop is about to wait, the clock looks at what the loop is waiting *for*:

* nothing but timers — the selector has no file descriptor registered other
  than the loop's own self-pipe, no ``run_in_executor``/``to_thread`` job of this
  loop is pending and no :meth:`VirtualClock.real_time` block is open: time
  jumps straight to the next timer (no wall time passes);
* anything real — a socket (Postgres, a fake HTTP backend over loopback, a
  proxy), a pipe, an executor job: the loop waits in real time, and virtual time
  advances by exactly the real time that passed. A timeout guarding a real read
  therefore fires when it would fire in real time, never earlier.

The rule is conservative: an *idle* open connection (a pool kept open, a
keep-alive socket) also holds virtual time to real speed, because the clock
cannot tell an idle socket from one whose answer is on its way. The clock
records how long it was held back and by which descriptors
(:attr:`VirtualClock.real_io_wait`, the clock report) so a slow virtual test
says why. In-process fakes that use no socket (respx for httpx) are the fully
virtual path. Work the clock cannot see — a thread feeding the loop through
``call_soon_threadsafe`` — belongs in ``with clock.real_time():``.

Clock-source check
------------------
While the clock runs it records who read which clock (:meth:`VirtualClock.sources_read`)
and reports (:meth:`VirtualClock.report`) code that reads a clock it does not
control (CPU clocks, ``clock_gettime`` with another clock id, a real clock
function held where it cannot be patched — e.g. in a ``functools.partial``)
and code that mixes naive local and naive UTC datetimes (``datetime.now()`` vs
``datetime.utcnow()``, as aiobreaker does: off by the UTC offset outside UTC).

Exactness
---------
Virtual time is counted in integer nanoseconds. The virtual monotonic clock
starts at the real one rounded *up* to 1/512 s, so durations that are whole
or binary-fraction seconds compare exactly (``opened + 60 == now``); others are
exact to within a nanosecond. Wall-clock values are exact to the microsecond
(the resolution of ``datetime``).
"""

from __future__ import annotations

import gc
import linecache
import math
import re
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from pytest_resilience.errors import ResilienceError
from pytest_resilience.services.registry import owned as _owned

if TYPE_CHECKING:
    import asyncio
    import selectors

    from pytest_resilience.verdicts.core import Verdict

__all__ = [
    "DEFAULT_IGNORE",
    "ClockFinding",
    "ClockKind",
    "ClockRead",
    "ClockReport",
    "VirtualClock",
    "VirtualClockError",
    "active_clock",
    "current_clock_kind",
]

ClockKind: TypeAlias = Literal["real", "virtual"]

#: Modules (and their submodules) whose own clock reads stay real.
DEFAULT_IGNORE: tuple[str, ...] = (
    "_pytest",
    "pluggy",
    "pytest_timeout",
    "xdist",
    "execnet",
    "threading",
    "queue",
    "subprocess",
    "selectors",
    "socketserver",
    "concurrent.futures",
    "multiprocessing",
    "freezegun",
    "time_machine",
    # drivers whose sync waits bracket real blocking I/O with a monotonic deadline
    # (psycopg's connect_timeout): on a frozen clock they would never time out
    "psycopg.waiting",
    "psycopg_binary",
    "psycopg_c",
    "pytest_resilience.clock",
    "pytest_resilience.fixtures",
    # Plugin services (Postgres, Toxiproxy, HTTP backends...) are not listed here: each
    # declares its modules in the ownership registry when it starts
    # (pytest_resilience.services.registry), and the clock reads that. The in-process
    # respx fake (pytest_resilience.services.http_respx) declares none: it is the fully
    # virtual path.
)

_NS = 1_000_000_000
_GRID = 512  # the virtual monotonic clocks start on a 1/512 s grid (exact in ns and floats)

# The real functions, captured once when this module is imported.
_real_monotonic = time.monotonic
_real_monotonic_ns = time.monotonic_ns
_real_perf_counter = time.perf_counter
_real_perf_counter_ns = time.perf_counter_ns
_real_sleep = time.sleep
_real_clock_gettime = time.clock_gettime
_real_clock_gettime_ns = time.clock_gettime_ns
_real_process_time = time.process_time
_real_process_time_ns = time.process_time_ns
_real_thread_time = time.thread_time
_real_thread_time_ns = time.thread_time_ns

_MONOTONIC_IDS = frozenset(
    getattr(time, name)
    for name in ("CLOCK_MONOTONIC", "CLOCK_MONOTONIC_RAW", "CLOCK_BOOTTIME", "CLOCK_UPTIME_RAW")
    if hasattr(time, name)
)
_REALTIME_ID: int | None = getattr(time, "CLOCK_REALTIME", None)


class VirtualClockError(ResilienceError):
    """The virtual clock was misused (started twice, started under freezegun, ...)."""


@dataclass(frozen=True)
class ClockRead:
    """One call site that read a clock while the virtual clock ran."""

    source: str  # e.g. "time.monotonic", "datetime.utcnow", "time.process_time"
    module: str
    function: str
    filename: str
    lineno: int
    count: int
    controlled: bool

    @property
    def where(self) -> str:
        return f"{self.module}.{self.function} ({self.filename}:{self.lineno})"


@dataclass(frozen=True)
class ClockFinding:
    """A problem the clock-source check found."""

    kind: Literal["uncontrolled", "mixed", "unpatched_binding"]
    where: str
    message: str


@dataclass(frozen=True)
class ClockReport:
    """What the clock saw during one run: reads, findings, real-time waits."""

    reads: tuple[ClockRead, ...]
    findings: tuple[ClockFinding, ...]
    virtual_elapsed: float
    real_io_wait: float
    held_by: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.findings

    def as_verdict(self) -> Verdict:
        """The clock-source check as the plugin's one result type: ``kind="clock-sources"``,
        severity ``warning`` (reported, not failing the test), one row per problem."""
        from pytest_resilience.verdicts.core import Verdict

        rows = [[f.kind, f.where, f.message] for f in self.findings]
        outcome = "all clocks read were virtual"
        if self.findings:
            first = self.findings[0]
            outcome = (f"{len(self.findings)} problem(s): [{first.kind}] {first.where}: "
                       f"{first.message}")
        return Verdict(
            kind="clock-sources",
            claim="every clock the code reads follows the virtual clock",
            passed=self.ok,
            expected={"problems": 0},
            observed={"problems": len(self.findings),
                      "virtual_elapsed_s": self.virtual_elapsed,
                      "real_io_wait_s": self.real_io_wait},
            headers=["problem", "where", "what"] if rows else [],
            rows=rows,
            blame=list(range(len(rows))),
            outcome=outcome,
            message=self.format(),
            severity="warning",
            data={"reads": [[r.source, r.count, r.where, r.controlled] for r in self.reads]},
        )

    def format(self) -> str:
        """A readable text block for a report section."""
        lines = [
            f"virtual time elapsed: {self.virtual_elapsed:.6f} s; "
            f"real time spent waiting on real I/O: {self.real_io_wait:.3f} s"
        ]
        if self.held_by:
            lines.append("auto-advance held back by: " + ", ".join(self.held_by))
        if self.findings:
            lines.append("clock-source problems:")
            lines += [f"  [{f.kind}] {f.where}: {f.message}" for f in self.findings]
        if self.reads:
            lines.append("clocks read (source, calls, where):")
            for r in self.reads:
                mark = "" if r.controlled else "  <- NOT controlled by the virtual clock"
                lines.append(f"  {r.source:<34} {r.count:>6}  {r.where}{mark}")
        return "\n".join(lines)


_active: VirtualClock | None = None


def active_clock() -> VirtualClock | None:
    """The running virtual clock, if any."""
    return _active


def current_clock_kind() -> ClockKind:
    """``"virtual"`` when the calling thread reads virtual time, else ``"real"``.

    Timelines stamp this next to their timestamps, so verdicts know whether to
    compare exactly (virtual) or with a real-time tolerance.
    """
    clock = _active
    if clock is not None and threading.get_ident() == clock._thread_id:
        return "virtual"
    return "real"


# --- the fake functions -----------------------------------------------------------
# Module-level and stable: a module that binds one of them during a test keeps a
# function that reads real time again once no clock runs.


def _here() -> tuple[VirtualClock | None, types.FrameType | None]:
    """The clock that answers the caller of a fake (two frames up), or None: real time."""
    clock = _active
    if clock is None:
        return None, None
    try:
        frame = sys._getframe(2)
    except ValueError:  # called straight from C with no Python caller
        return None, None
    if clock._controls(frame):
        return clock, frame
    return None, frame


def monotonic() -> float:
    clock, frame = _here()
    if clock is None:
        return _real_monotonic()
    clock._note("time.monotonic", frame)
    return clock._mono()


def monotonic_ns() -> int:
    clock, frame = _here()
    if clock is None:
        return _real_monotonic_ns()
    clock._note("time.monotonic_ns", frame)
    return clock._mono_base_ns + clock._elapsed_ns


def perf_counter() -> float:
    clock, frame = _here()
    if clock is None:
        return _real_perf_counter()
    clock._note("time.perf_counter", frame)
    return clock._perf()


def perf_counter_ns() -> int:
    clock, frame = _here()
    if clock is None:
        return _real_perf_counter_ns()
    clock._note("time.perf_counter_ns", frame)
    return clock._perf_base_ns + clock._elapsed_ns


def sleep(secs: float, /) -> None:
    clock, frame = _here()
    if clock is None:
        _real_sleep(secs)
        return
    if secs < 0:
        raise ValueError("sleep length must be non-negative")
    clock._note("time.sleep", frame)
    clock.advance(secs)
    _real_sleep(0)  # let other threads run, as a real sleep would


def clock_gettime(clk_id: int, /) -> float:
    clock, frame = _here()
    if clock is None:
        return _real_clock_gettime(clk_id)
    if clk_id in _MONOTONIC_IDS:
        clock._note("time.clock_gettime(monotonic)", frame)
        return clock._mono()
    if clk_id == _REALTIME_ID:
        clock._note("time.clock_gettime(realtime)", frame)
        return clock._wall_ns() / _NS
    clock._note(f"time.clock_gettime({clk_id})", frame, controlled=False)
    return _real_clock_gettime(clk_id)


def clock_gettime_ns(clk_id: int, /) -> int:
    clock, frame = _here()
    if clock is None:
        return _real_clock_gettime_ns(clk_id)
    if clk_id in _MONOTONIC_IDS:
        clock._note("time.clock_gettime_ns(monotonic)", frame)
        return clock._mono_base_ns + clock._elapsed_ns
    if clk_id == _REALTIME_ID:
        clock._note("time.clock_gettime_ns(realtime)", frame)
        return clock._wall_ns()
    clock._note(f"time.clock_gettime_ns({clk_id})", frame, controlled=False)
    return _real_clock_gettime_ns(clk_id)


# Clocks left real but observed: reading them on the clock's thread is reported.
# (Plain functions, not closures: nothing but this module's globals may hold the reals.)


def process_time() -> float:
    clock, frame = _here()
    if clock is not None:
        clock._note("time.process_time", frame, controlled=False)
    return _real_process_time()


def process_time_ns() -> int:
    clock, frame = _here()
    if clock is not None:
        clock._note("time.process_time_ns", frame, controlled=False)
    return _real_process_time_ns()


def thread_time() -> float:
    clock, frame = _here()
    if clock is not None:
        clock._note("time.thread_time", frame, controlled=False)
    return _real_thread_time()


def thread_time_ns() -> int:
    clock, frame = _here()
    if clock is not None:
        clock._note("time.thread_time_ns", frame, controlled=False)
    return _real_thread_time_ns()


# time attribute -> (real, fake)
_TIME_FUNCS: dict[str, tuple[Any, Any]] = {
    "monotonic": (_real_monotonic, monotonic),
    "monotonic_ns": (_real_monotonic_ns, monotonic_ns),
    "perf_counter": (_real_perf_counter, perf_counter),
    "perf_counter_ns": (_real_perf_counter_ns, perf_counter_ns),
    "sleep": (_real_sleep, sleep),
    "clock_gettime": (_real_clock_gettime, clock_gettime),
    "clock_gettime_ns": (_real_clock_gettime_ns, clock_gettime_ns),
    "process_time": (_real_process_time, process_time),
    "process_time_ns": (_real_process_time_ns, process_time_ns),
    "thread_time": (_real_thread_time, thread_time),
    "thread_time_ns": (_real_thread_time_ns, thread_time_ns),
}
for _name, (_real, _fake) in _TIME_FUNCS.items():
    if _fake.__name__ != _name:  # pragma: no cover - names are kept in step
        raise AssertionError(_name)
del _name, _real, _fake


# --- classifying wall-clock reads --------------------------------------------------

_WALL_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\butcnow\s*\("), "datetime.utcnow"),
    (re.compile(r"\butcfromtimestamp\s*\("), "datetime.utcfromtimestamp"),
    (re.compile(r"\bnow\s*\(\s*\)"), "datetime.now"),
    (re.compile(r"\bnow\s*\(\s*[^)\s]"), "datetime.now(tz)"),
    (re.compile(r"\btoday\s*\("), "date.today"),
    (re.compile(r"\btime_ns\s*\("), "time.time_ns"),
    (re.compile(r"\btime\s*\(\s*\)"), "time.time"),
    (re.compile(r"\b(gmtime|localtime|strftime|ctime|asctime)\s*\("), "time.{0}"),
)
_NAIVE_LOCAL = frozenset({"datetime.now", "date.today"})
_NAIVE_UTC = frozenset({"datetime.utcnow"})


def _classify_wall(filename: str, lineno: int) -> list[str]:
    line = linecache.getline(filename, lineno)
    found: list[str] = []
    for pattern, label in _WALL_PATTERNS:
        for m in pattern.finditer(line):
            name = label.format(*m.groups()) if m.groups() else label
            if name not in found:
                found.append(name)
    return found or ["wall clock (time.time / datetime)"]


# --- bindings ----------------------------------------------------------------------


@dataclass
class _Patch:
    undo: Callable[[], None]


def _module_of_dict(d: dict[str, Any]) -> str | None:
    name = d.get("__name__")
    if isinstance(name, str):
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "__dict__", None) is d:
            return name
    return None


class VirtualClock:
    """One virtual clock for the asyncio loop, ``time.*`` and ``datetime.*``.

    ``start`` is anything ``time_machine.travel`` accepts (a datetime, an ISO
    string, a POSIX timestamp); ``None`` starts at the real current time.
    With ``auto_advance`` (the default) an idle event loop jumps to its next
    timer; without it, time moves only through :meth:`advance`, :meth:`move_to`
    and ``time.sleep``.
    """

    def __init__(
        self,
        start: Any = None,
        *,
        auto_advance: bool = True,
        ignore: tuple[str, ...] = (),
    ) -> None:
        self.auto_advance = auto_advance
        self._start_arg = start
        self._ignore = tuple(DEFAULT_IGNORE) + tuple(ignore)
        self._ignore_cache: dict[str, bool] = {}
        self._owned_version = -1
        self._thread_id = -1
        self._lock = threading.Lock()
        self._elapsed_ns = 0
        self._mono_base_ns = 0
        self._perf_base_ns = 0
        self._mono_base = 0.0
        self._perf_base = 0.0
        self._wall_base_ns = 0
        self._running = False
        self._reads: dict[tuple[str, str, str, str, int, bool], int] = {}
        self._findings: list[ClockFinding] = []
        self._patches: list[_Patch] = []
        self._modules_at_start: frozenset[str] = frozenset()
        self._traveller: Any = None
        self._travel: Any = None
        self._loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        self._executor_jobs: set[asyncio.Future[Any]] = set()
        self._real_time_depth = 0
        self._real_io_wait = 0.0
        self._held_by: dict[str, None] = {}

    # --- public API ----------------------------------------------------------------

    @property
    def is_virtual(self) -> bool:
        """True while the clock runs (between :meth:`start` and :meth:`stop`)."""
        return self._running

    @property
    def kind(self) -> ClockKind:
        return "virtual" if self._running else "real"

    @property
    def elapsed(self) -> float:
        """Virtual seconds since :meth:`start`."""
        return self._elapsed_ns / _NS

    @property
    def real_io_wait(self) -> float:
        """Real seconds the loop waited because real I/O was outstanding."""
        return self._real_io_wait

    def monotonic(self) -> float:
        """The virtual ``time.monotonic()`` (also the event loop's ``loop.time()``)."""
        return self._mono()

    def perf_counter(self) -> float:
        return self._perf()

    def time(self) -> float:
        """The virtual ``time.time()``."""
        return self._wall_ns() / _NS

    def now(self, tz: tzinfo | None = UTC) -> datetime:
        """The virtual wall-clock time, aware in ``tz`` (UTC by default); ``None``: naive local."""
        ns = self._wall_ns()
        moment = datetime.fromtimestamp(ns // _NS, UTC) + timedelta(microseconds=ns % _NS // 1000)
        return moment.astimezone(tz) if tz is not None else moment.astimezone().replace(tzinfo=None)

    def advance(self, seconds: float | timedelta) -> None:
        """Move virtual time forward by ``seconds`` at once (timers then due fire on
        the loop's next iteration)."""
        secs = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        if not math.isfinite(secs) or secs < 0:
            raise ValueError(f"advance() needs a finite, non-negative duration, got {seconds!r}")
        self._require_running("advance")
        with self._lock:
            self._elapsed_ns += round(secs * _NS)
        self._wake_loops()

    def move_to(self, moment: datetime) -> None:
        """Advance to the wall-clock ``moment`` (aware, or naive UTC); never backwards."""
        target = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        delta = target - self.now()
        if delta < timedelta(0):
            raise ValueError(f"move_to({moment!r}) is in the virtual past ({self.now()!r})")
        self.advance(delta)

    @contextmanager
    def real_time(self) -> Iterator[None]:
        """Inside this block the loop never jumps: virtual time flows at real speed.

        For work the clock cannot see, e.g. a thread that answers through
        ``loop.call_soon_threadsafe``.
        """
        self._real_time_depth += 1
        try:
            yield
        finally:
            self._real_time_depth -= 1

    def sources_read(self) -> list[ClockRead]:
        """Every call site that read a clock, with how often and whether it was controlled."""
        out: list[ClockRead] = []
        for (source, module, function, filename, lineno, controlled), count in sorted(
            self._reads.items()
        ):
            if source == "wall":
                for name in _classify_wall(filename, lineno):
                    out.append(ClockRead(name, module, function, filename, lineno, count, True))
            else:
                out.append(ClockRead(source, module, function, filename, lineno, count, controlled))
        return out

    def findings(self) -> list[ClockFinding]:
        """Clocks read that the clock does not control, mixed clocks, unpatchable bindings."""
        reads = self.sources_read()
        found = list(self._findings)
        seen: set[tuple[str, str]] = set()
        for r in reads:
            if not r.controlled and (r.source, r.where) not in seen:
                seen.add((r.source, r.where))
                found.append(
                    ClockFinding(
                        "uncontrolled",
                        r.where,
                        f"reads {r.source}, which the virtual clock does not control "
                        "(it keeps real time)",
                    )
                )
        # One library (top-level package) is one measurement scope: aiobreaker stamps
        # utcnow() in state.py and compares with now() in circuitbreaker.py.
        by_package: dict[str, dict[str, list[ClockRead]]] = {}
        for r in reads:
            package = r.module.split(".")[0]
            by_package.setdefault(package, {}).setdefault(r.source, []).append(r)
        for package, sources in sorted(by_package.items()):
            local = sorted(set(sources) & _NAIVE_LOCAL)
            utc = sorted(set(sources) & _NAIVE_UTC)
            if local and utc:
                sites = [s.where for name in (*utc, *local) for s in sources[name]]
                found.append(
                    ClockFinding(
                        "mixed",
                        package,
                        f"mixes {', '.join(utc)}() (naive UTC) with {', '.join(local)}() "
                        "(naive local time): comparisons are off by the UTC offset outside "
                        "UTC; use one aware clock, e.g. datetime.now(UTC). Call sites: "
                        + "; ".join(sites),
                    )
                )
        return found

    def report(self) -> ClockReport:
        return ClockReport(
            reads=tuple(self.sources_read()),
            findings=tuple(self.findings()),
            virtual_elapsed=self.elapsed,
            real_io_wait=self._real_io_wait,
            held_by=tuple(self._held_by),
        )

    def assert_sources_controlled(self) -> None:
        """Raise ``AssertionError`` with the report if the clock-source check found anything."""
        report = self.report()
        if not report.ok:
            raise AssertionError(report.format())

    # --- lifecycle ----------------------------------------------------------------

    def start(self) -> VirtualClock:
        global _active
        if self._running:
            raise VirtualClockError("this VirtualClock is already running")
        if _active is not None:
            raise VirtualClockError(
                "another VirtualClock is already running; use one clock per test "
                "(the virtual_clock fixture or @pytest.mark.virtual_time)"
            )
        import datetime as dt_module

        if dt_module.datetime.__name__ == "FakeDatetime":
            raise VirtualClockError(
                "freezegun is active: the virtual clock replaces freeze_time; remove one of them"
            )
        self._check_loop_policy()
        try:
            import time_machine
        except ImportError:
            raise VirtualClockError(
                "virtual time needs time-machine (it patches datetime.now & co. at C level): "
                "pip install 'time-machine>=3'"
            ) from None

        self._thread_id = threading.get_ident()
        self._elapsed_ns = 0
        self._reads.clear()
        self._findings.clear()
        self._real_io_wait = 0.0
        self._held_by.clear()
        self._mono_base_ns = math.ceil(_real_monotonic() * _GRID) * (_NS // _GRID)
        self._perf_base_ns = math.ceil(_real_perf_counter() * _GRID) * (_NS // _GRID)
        self._mono_base = self._mono_base_ns / _NS
        self._perf_base = self._perf_base_ns / _NS
        try:
            self._wall_base_ns, _tzname = time_machine.extract_timestamp_tzname(self._start_arg)
            self._travel = time_machine.travel(self._start_arg, tick=False)
            traveller = self._travel.start()
            self._patches.append(_Patch(self._travel.stop))
            real_time_ns = time_machine.escape_hatch.time.time_ns

            def wall_time_ns() -> int:
                # time-machine calls this from its C-level datetime.now, time.time, ...:
                # frame 1 is the Python code that asked for the time
                clock = _active
                if clock is None:
                    return real_time_ns()
                try:
                    frame = sys._getframe(1)
                except ValueError:
                    return real_time_ns()
                if not clock._controls(frame):
                    return real_time_ns()
                clock._note("wall", frame)
                return clock._wall_ns()

            traveller.time_ns = wall_time_ns
            self._traveller = traveller
            self._patch_time_module()
            self._patch_bindings()
            self._patch_asyncio()
            self._running = True
            _active = self
        except BaseException:
            self._running = False
            _active = None
            self._undo()
            raise
        return self

    def stop(self) -> None:
        global _active
        if not self._running:
            return
        try:
            self._rebase_loops()
        finally:
            self._running = False
            _active = None
            self._undo()
            self._unbind_leaked_fakes()

    def __enter__(self) -> VirtualClock:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- internals: reading -------------------------------------------------------

    def _mono(self) -> float:
        return self._mono_base + self._elapsed_ns / _NS

    def _perf(self) -> float:
        return self._perf_base + self._elapsed_ns / _NS

    def _wall_ns(self) -> int:
        return self._wall_base_ns + self._elapsed_ns

    def _controls(self, frame: types.FrameType) -> bool:
        if threading.get_ident() != self._thread_id:
            return False
        if _owned.version != self._owned_version:  # a service declared more modules
            self._owned_version = _owned.version
            self._ignore_cache.clear()
        name = frame.f_globals.get("__name__") or ""
        ignored = self._ignore_cache.get(name)
        if ignored is None:
            ignored = self._is_ignored(name)
            self._ignore_cache[name] = ignored
        return not ignored

    def _is_ignored(self, module: str) -> bool:
        return _owned.owns_module(module) or any(
            module == p or module.startswith(p + ".") for p in self._ignore
        )

    def _note(
        self, source: str, frame: types.FrameType | None, *, controlled: bool = True
    ) -> None:
        if frame is None:
            return
        code = frame.f_code
        key = (
            source,
            frame.f_globals.get("__name__") or "?",
            code.co_qualname,
            code.co_filename,
            frame.f_lineno or code.co_firstlineno,
            controlled,
        )
        self._reads[key] = self._reads.get(key, 0) + 1

    def _require_running(self, what: str) -> None:
        if not self._running:
            raise VirtualClockError(f"{what}() needs a running clock: call start() first")

    # --- internals: patching ------------------------------------------------------

    def _undo(self) -> None:
        errors: list[BaseException] = []
        while self._patches:
            patch = self._patches.pop()
            try:
                patch.undo()
            except Exception as exc:  # keep undoing the rest
                errors.append(exc)
        self._traveller = None
        self._travel = None
        if errors:
            raise errors[0]

    def _setattr(self, obj: Any, name: str, value: Any) -> None:
        old = obj.__dict__[name] if name in vars(obj) else getattr(obj, name)
        setattr(obj, name, value)
        self._patches.append(_Patch(lambda: setattr(obj, name, old)))

    def _patch_time_module(self) -> None:
        for name, (_real, fake) in _TIME_FUNCS.items():
            setattr(time, name, fake)
            self._patches.append(_Patch(_time_undo(name)))

    def _patch_bindings(self) -> None:
        """Point early bindings of the real functions (``from time import monotonic``,
        class attributes, default arguments, closures, instance attributes) at the fakes."""
        self._modules_at_start = frozenset(sys.modules)
        for target in _find_bindings():
            kind, holder, key, module = target
            if self._is_ignored(module) or module in ("time", __name__):
                continue
            if kind == "finding":
                if getattr(sys.modules.get(module), "__dict__", {}).get(key) is not holder:
                    continue  # a cached finding that no longer holds
                self._findings.append(
                    ClockFinding(
                        "unpatched_binding",
                        f"{module}:{key}",
                        f"holds the real {_names(holder)} in a {type(holder).__name__}, "
                        "which the virtual clock cannot patch: calls through it read real time",
                    )
                )
                continue
            real = _get_binding(kind, holder, key)
            fake = _FAKE_BY_REAL_ID.get(id(real))
            if fake is None:
                continue
            undo = _binding_undo(kind, holder, key, _name_of(real))
            _set_binding(kind, holder, key, fake)
            self._patches.append(_Patch(undo))

    def _unbind_leaked_fakes(self) -> None:
        """Modules imported during the run bound the fakes; point them back at the reals."""
        for name in set(sys.modules) - self._modules_at_start:
            d = getattr(sys.modules.get(name), "__dict__", None)
            if not isinstance(d, dict):
                continue
            for key, value in list(d.items()):
                real = _REAL_BY_FAKE_ID.get(id(value))
                if real is not None:
                    d[key] = real

    # --- internals: the event loop ------------------------------------------------

    def _check_loop_policy(self) -> None:
        import asyncio

        policy = type(asyncio.get_event_loop_policy())
        if policy.__module__.startswith("uvloop"):
            raise VirtualClockError(
                "the virtual clock drives selector-based asyncio loops; the uvloop policy "
                "is set (its loop reads a C-level clock that cannot be controlled). "
                "Use the default asyncio loop in tests that use virtual time."
            )

    def _patch_asyncio(self) -> None:
        import asyncio.base_events
        import selectors

        for cls_name in (
            "SelectSelector", "PollSelector", "EpollSelector", "DevpollSelector", "KqueueSelector"
        ):
            cls = getattr(selectors, cls_name, None)
            if cls is not None and "select" in vars(cls):
                self._setattr(cls, "select", _make_select(vars(cls)["select"]))
        base = asyncio.base_events.BaseEventLoop
        self._setattr(base, "run_in_executor", _make_run_in_executor(base.run_in_executor))

    def _wake_loops(self) -> None:
        here = threading.get_ident()
        for loop in list(self._loops):
            if here != self._thread_id and not loop.is_closed():
                loop.call_soon_threadsafe(lambda: None)

    def _outstanding(self, loop: Any, selector: selectors.BaseSelector) -> str | None:
        """What real work the loop waits for, or None when it waits only for timers."""
        if self._real_time_depth:
            return "a clock.real_time() block"
        ssock = getattr(loop, "_ssock", None)
        self_fd = ssock.fileno() if ssock is not None else -1
        for key in selector.get_map().values():
            if key.fd != self_fd:
                transports = getattr(loop, "_transports", None)
                transport = transports.get(key.fd) if transports is not None else None
                return _describe_fd(key.fileobj, key.fd, transport)
        for job in self._executor_jobs:
            if not job.done() and job.get_loop() is loop:
                return "a run_in_executor/to_thread job"
        return None

    def _loop_select(
        self,
        loop: Any,
        selector: selectors.BaseSelector,
        real_select: Callable[[selectors.BaseSelector, float | None], Any],
        timeout: float | None,
    ) -> Any:
        self._loops.add(loop)
        if timeout is not None and timeout <= 0:
            return real_select(selector, timeout)
        if not self.auto_advance:
            return real_select(selector, timeout)
        busy = self._outstanding(loop, selector)
        if busy is None:
            events = real_select(selector, 0)
            if events or timeout is None:
                return events or real_select(selector, None)
            scheduled = loop._scheduled
            target = scheduled[0].when() if scheduled else self._mono() + timeout
            self._jump_to(target)
            return []
        started = _real_monotonic()
        events = real_select(selector, timeout)
        waited = _real_monotonic() - started
        with self._lock:
            self._elapsed_ns += round(waited * _NS)
        self._real_io_wait += waited
        self._held_by.setdefault(busy, None)
        return events

    def _jump_to(self, mono: float) -> None:
        with self._lock:
            target = round((mono - self._mono_base) * _NS)
            if target <= self._elapsed_ns:
                return
            self._elapsed_ns = target
            while self._mono() < mono:
                self._elapsed_ns += 1

    def _rebase_loops(self) -> None:
        """Pending timers of loops that outlive the clock keep their remaining delay."""
        delta = _real_monotonic() - self._mono()
        for loop in list(self._loops):
            if loop.is_closed():
                continue
            for handle in getattr(loop, "_scheduled", ()):
                handle._when += delta


_REAL_BY_FAKE_ID = {id(fake): real for real, fake in _TIME_FUNCS.values()}
_FAKE_BY_REAL_ID = {id(real): fake for real, fake in _TIME_FUNCS.values()}
_NAME_BY_ID = {id(real): f"time.{name}" for name, (real, _fake) in _TIME_FUNCS.items()}

# (kind, holder, key, module): kind is "dict" (module or instance __dict__), "class",
# "defaults", "kwdefaults", "cell" (key unused) or "finding" (cannot be patched).
_Binding: TypeAlias = tuple[str, Any, Any, str]
_deep_cache: tuple[list[Any], list[_Binding]] = ([], [])


def _find_bindings() -> list[_Binding]:
    """Every place outside ``time`` that holds a real clock function: three heap walks."""
    reals = [real for real, _fake in _TIME_FUNCS.values()]
    own: set[int] = {id(reals), id(_TIME_FUNCS), id(globals()), id(vars(time))}
    own.update(id(pair) for pair in _TIME_FUNCS.values())
    modules = {
        id(vars(m)): name
        for name, m in list(sys.modules.items())
        if isinstance(getattr(m, "__dict__", None), dict)
    }
    out: list[_Binding] = []
    rest: dict[int, Any] = {}
    found = gc.get_referrers(*reals)
    for holder in found:
        if id(holder) in own or holder is found:
            continue
        if isinstance(holder, dict) and id(holder) in modules:
            out += [
                ("dict", holder, key, modules[id(holder)])
                for key, value in holder.items()
                if id(value) in _FAKE_BY_REAL_ID
            ]
        elif isinstance(holder, types.ModuleType | types.FrameType | list):
            continue
        elif not isinstance(holder, dict | tuple | types.CellType | type) and any(
            id(v) in _FAKE_BY_REAL_ID for v in _instance_values(holder)
        ):
            # an instance whose attributes live inline (no __dict__ object until asked)
            d = holder.__dict__
            out += [
                ("dict", d, key, type(holder).__module__)
                for key, value in d.items()
                if id(value) in _FAKE_BY_REAL_ID
            ]
        else:
            rest[id(holder)] = holder
    del found
    if not rest:
        return out
    global _deep_cache
    cached_rest, cached_out = _deep_cache
    if len(cached_rest) == len(rest) and all(id(obj) in rest for obj in cached_rest):
        return out + cached_out  # the same holders as last time: their owners are known
    deep = _find_owners(rest, modules)
    _deep_cache = (list(rest.values()), deep)
    return out + deep


def _find_owners(rest: dict[int, Any], modules: dict[int, str]) -> list[_Binding]:
    """Who holds the non-module holders: classes, functions, closures, instances."""
    out: list[_Binding] = []
    closures: dict[int, tuple[Any, ...]] = {}
    owners = gc.get_referrers(*rest.values())
    for owner in owners:
        if owner is rest or owner is owners:
            continue
        if isinstance(owner, type):
            for ref in gc.get_referents(owner):
                if id(ref) in rest and isinstance(ref, dict):
                    out += [
                        ("class", owner, key, owner.__module__)
                        for key, value in ref.items()
                        if id(value) in _FAKE_BY_REAL_ID
                    ]
        elif isinstance(owner, types.FunctionType):
            if id(owner.__defaults__) in rest:
                out.append(("defaults", owner, None, owner.__module__))
            if id(owner.__kwdefaults__) in rest:
                out.append(("kwdefaults", owner, None, owner.__module__))
        elif isinstance(owner, tuple):
            if any(isinstance(c, types.CellType) and id(c) in rest for c in owner):
                closures[id(owner)] = owner
        elif isinstance(owner, dict) and id(owner) in modules:
            out += [
                ("finding", value, key, modules[id(owner)])
                for key, value in owner.items()
                if id(value) in rest and not isinstance(value, dict | tuple | types.CellType)
            ]
        elif id(getattr(owner, "__dict__", None)) in rest:
            d = owner.__dict__
            out += [
                ("dict", d, key, type(owner).__module__)
                for key, value in d.items()
                if id(value) in _FAKE_BY_REAL_ID
            ]
    del owners
    if closures:
        for fn in gc.get_referrers(*closures.values()):
            if isinstance(fn, types.FunctionType) and id(fn.__closure__) in closures:
                out += [
                    ("cell", cell, None, fn.__module__)
                    for cell in fn.__closure__ or ()
                    if id(cell) in rest
                ]
    return out


def _instance_values(obj: Any) -> list[Any]:
    d = getattr(obj, "__dict__", None)
    return list(d.values()) if isinstance(d, dict) else []


def _get_binding(kind: str, holder: Any, key: Any) -> Any:
    if kind == "dict":
        return holder.get(key)
    if kind == "class":
        return vars(holder).get(key)
    if kind == "cell":
        try:
            return holder.cell_contents
        except ValueError:
            return None
    values = holder.__defaults__ if kind == "defaults" else holder.__kwdefaults__
    hits = [v for v in (values.values() if isinstance(values, dict) else values or ())
            if id(v) in _FAKE_BY_REAL_ID]
    return hits[0] if hits else None


def _swap(value: Any) -> Any:
    """Fake for real and real for fake."""
    return _FAKE_BY_REAL_ID.get(id(value)) or _REAL_BY_FAKE_ID.get(id(value)) or value


def _set_binding(kind: str, holder: Any, key: Any, value: Any) -> None:
    if kind == "dict":
        holder[key] = value
    elif kind == "class":
        # a Python function on a class would bind as a method; builtins do not
        setattr(holder, key, staticmethod(value) if value in _REAL_BY_FAKE_ID_VALUES else value)
    elif kind == "cell":
        holder.cell_contents = value
    elif kind == "defaults":
        holder.__defaults__ = tuple(_swap(v) for v in holder.__defaults__)
    elif kind == "kwdefaults":
        holder.__kwdefaults__ = {k: _swap(v) for k, v in holder.__kwdefaults__.items()}


def _name_of(real: Any) -> str:
    return _NAME_BY_ID[id(real)].removeprefix("time.")


def _time_undo(name: str) -> Callable[[], None]:
    # Holds the name, not the function: undo records must not show up as bindings.
    def undo() -> None:
        setattr(time, name, _TIME_FUNCS[name][0])

    return undo


def _binding_undo(kind: str, holder: Any, key: Any, name: str) -> Callable[[], None]:
    if kind in ("defaults", "kwdefaults"):
        saved = holder.__defaults__ if kind == "defaults" else holder.__kwdefaults__

        def undo_defaults() -> None:  # the original tuple/dict object goes back
            setattr(holder, f"__{kind}__", saved)

        return undo_defaults

    def undo() -> None:
        _set_binding(kind, holder, key, _TIME_FUNCS[name][0])

    return undo


_REAL_BY_FAKE_ID_VALUES = tuple(fake for _real, fake in _TIME_FUNCS.values())


def _names(holder: Any) -> str:
    func = getattr(holder, "func", None)
    values = [func] if func is not None else []
    with suppress(TypeError):
        values += list(vars(holder).values())
    names = sorted({_NAME_BY_ID[id(v)] for v in values if id(v) in _NAME_BY_ID})
    return ", ".join(names) or "clock function"


def _describe_fd(fileobj: Any, fd: int, transport: Any) -> str:
    peer = None
    if transport is not None:
        peer = transport.get_extra_info("peername") or transport.get_extra_info("sockname")
    elif hasattr(fileobj, "getpeername"):
        with suppress(OSError):
            peer = fileobj.getpeername()
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"fd {fd} (socket to {peer[0]}:{peer[1]})"
    if peer:
        return f"fd {fd} ({peer})"
    return f"fd {fd}"


def _make_select(real_select: Any) -> Callable[..., Any]:
    def select(self: selectors.BaseSelector, timeout: float | None = None) -> Any:
        clock = _active
        if clock is None or threading.get_ident() != clock._thread_id:
            return real_select(self, timeout)
        from asyncio import events

        loop = events._get_running_loop()
        if loop is None or getattr(loop, "_selector", None) is not self:
            return real_select(self, timeout)
        return clock._loop_select(loop, self, real_select, timeout)

    select.__wrapped__ = real_select  # type: ignore[attr-defined]
    return select


def _make_run_in_executor(real: Any) -> Callable[..., Any]:
    def run_in_executor(self: Any, executor: Any, func: Any, *args: Any) -> Any:
        future = real(self, executor, func, *args)
        clock = _active
        if clock is not None and threading.get_ident() == clock._thread_id:
            clock._executor_jobs.add(future)
            future.add_done_callback(clock._executor_jobs.discard)
        return future

    run_in_executor.__wrapped__ = real  # type: ignore[attr-defined]
    return run_in_executor
