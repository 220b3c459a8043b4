"""Hang-and-cancel verdict: a client whose query hangs gives up on time, by cancelling it or
closing its connection, and the server stops working on it.

``expect_hung_query_cancelled`` is a sync and an async context manager around the client code. It
arms a ``hang`` rule on the Postgres fault stage (``pg_fault``), so the first statement
matching ``match`` gets no answer until the client sends a CancelRequest or closes its
socket, and judges::

    from pytest_resilience.verdicts.cancel import expect_hung_query_cancelled

    async def test_report_query_gives_up(pg_fault):
        conn = await asyncpg.connect(pg_fault.dsn)
        async with expect_hung_query_cancelled(pg_fault, timeout=0.5, match=r"FROM orders"):
            with pytest.raises(TimeoutError):
                await conn.fetch("SELECT * FROM orders", timeout=0.5)

It passes when both hold:

* **client**: a CancelRequest for the held statement, or the client's socket closed,
  ``timeout`` seconds (± ``tolerance``, a fraction: 0.1 is ± 10 %) after the statement
  reached the stage; the server's own ``statement_timeout`` ending it in that window counts
  too (the row says so).
* **server**: the backend that ran the statement (its pid is the stage's BackendKeyData) is
  idle or gone within ``server_idle_within`` seconds of that, as ``pg_stat_activity`` shows
  through a direct connection (``pg_fault.direct_dsn``, or ``direct_dsn=``).

``server="busy"`` (default) makes the backend really busy (``pg_sleep`` in place of the
statement), so a client that closes without cancelling leaves it running - a defect the
server row shows; ``server="done"`` runs the statement and holds its response.

Nothing passes by default: no matching statement, no backend pid, no direct connection are
failures that say "not measured". A client that never gives up does not hang the test: the
stage ends the hang itself after ``give_up_after`` (default ``max(4 * timeout, timeout +
2 s)``) and the verdict fails. A backend still busy when the verdict is done is cancelled
(``pg_cancel_backend``) so it does not outlive the test.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from pytest_resilience.errors import ConfigError
from pytest_resilience.verdicts.core import Verdict, VerdictFailed, fmt_s

if TYPE_CHECKING:
    from pytest_resilience.pgwire import Hang, PgRule

__all__ = ["BackendWatch", "CancelMismatch", "CancelResult", "cancel_verdict",
           "expect_hung_query_cancelled"]

_POLL = 0.01
_STATE_SQL = "SELECT state, query FROM pg_stat_activity WHERE pid = %s"


class CancelMismatch(VerdictFailed):
    """The client did not give up on a hung query as claimed, or the server kept running it."""


@dataclass
class BackendWatch:
    """What ``pg_stat_activity`` showed of the held statement's backend after the client
    gave up: ``idle_at`` (``time.monotonic()``) when it was first seen idle or gone,
    ``state`` then (``gone`` when it had no row); else ``active_query`` still running at
    the deadline. ``error``: why it could not be watched."""

    idle_at: float | None = None
    state: str | None = None
    last_seen: float | None = None
    active_query: str | None = None
    cancelled_after: bool = False
    error: str | None = None


@dataclass
class CancelResult:
    """What :class:`expect_hung_query_cancelled` observed (filled when the block exits)."""

    hang: Hang | None = None
    backend: BackendWatch = field(default_factory=BackendWatch)
    error: BaseException | None = None
    verdict: Verdict | None = None


def _how(hang: Hang) -> tuple[str, float | None]:
    """How the client ended the hang and when: ``cancel``, ``close``, ``server`` (the
    server's statement_timeout), or ``none``."""
    if hang.cancelled is not None:
        return "cancel", hang.cancelled
    if hang.closed is not None:
        return "close", hang.closed
    if hang.answered is not None and hang.released is None and hang.answer is not None \
            and "injected by pytest-resilience" not in hang.answer[1]:
        return "server", hang.answered
    return "none", None


def cancel_verdict(hang: Hang | None, backend: BackendWatch, *, timeout: float,
                   tolerance: float = 0.1, server_idle_within: float = 1.0,
                   match: str | None = None, give_up_after: float | None = None,
                   what: str = "the client") -> Verdict:
    """The ``cancel`` verdict from what was observed (see :class:`expect_hung_query_cancelled`)."""
    lo, hi = timeout * (1 - tolerance), timeout * (1 + tolerance)
    band = f"{fmt_s(timeout)} ± {tolerance:.0%} ({fmt_s(lo)} .. {fmt_s(hi)})"
    claim = (f"{what} cancels a hung query (CancelRequest or closed socket) {band} after "
             f"sending it, and its server backend is idle within {fmt_s(server_idle_within)}")
    rows: list[list[str]] = []
    notes: list[str] = []
    observed: dict[str, Any] = {}
    outcome = ""
    client_ok = server_ok = False
    if hang is None:
        rows.append(["held statement", f"one matching {match!r}",
                     "none: no statement matched, nothing was measured", "<--"])
        outcome = "not measured: the hang never fired"
        notes.append(outcome)
        notes.append(f"no statement matching {match!r} reached the stage while the block "
                     "ran: check match= and that the client connects through pg_fault.dsn")
    else:
        rows.append(["held statement", f"one matching {match!r}",
                     f"{(hang.statement or '?')[:60]!r} (connection {hang.connection}, "
                     f"backend pid {hang.pid})", ""])
        how, at = _how(hang)
        observed.update(how=how, statement=hang.statement, pid=hang.pid)
        if at is None:
            open_for = (hang.released if hang.released is not None
                        else time.monotonic()) - hang.started
            observed["gave_up_after"] = None
            rows.append(["client gave up", f"CancelRequest or close, {band}",
                         f"neither after {fmt_s(open_for)}", "<--"])
            outcome = (f"{what} never cancelled the held query: no CancelRequest and the "
                       f"socket stayed open {fmt_s(open_for - timeout)} after its "
                       f"{fmt_s(timeout)} timeout")
            notes.append(outcome)
            if hang.released is not None:
                notes.append(f"the stage released the statement itself after "
                             f"{fmt_s(give_up_after)} (give_up_after): {what} has no "
                             "effective timeout (a driver timeout, asyncio.timeout, or "
                             "statement_timeout)")
        else:
            elapsed = at - hang.started
            observed["gave_up_after"] = elapsed
            label = {"cancel": "CancelRequest", "close": "closed its socket",
                     "server": "server's statement_timeout ended it"}[how]
            client_ok = lo <= elapsed <= hi
            rows.append(["client gave up", f"CancelRequest or close, {band}",
                         f"{label} after {fmt_s(elapsed)}", "" if client_ok else "<--"])
            if how == "close":
                notes.append(f"{what} closed its socket without a CancelRequest: the server "
                             "only learns of it when it next writes to the socket")
            if not client_ok:
                off = elapsed - timeout
                word = "late" if off > 0 else "early"
                outcome = (f"{what} gave up on the held query {fmt_s(abs(off))} {word}: "
                           f"{label} {fmt_s(elapsed)} after sending it, its timeout is "
                           f"{fmt_s(timeout)} ± {tolerance:.0%}")
                notes.append(outcome)
        # the server side, judged from when the hang ended (whoever ended it)
        end = at if at is not None else hang.released
        event = {"cancel": "the cancel", "close": "the client closed its socket",
                 "server": "the statement timeout"}.get(how, "the stage released it")
        expected = f"idle or gone within {fmt_s(server_idle_within)}"
        if backend.error is not None or hang.pid is None or end is None:
            why = backend.error or ("the stage saw no BackendKeyData for the connection"
                                    if hang.pid is None else "the hang did not end")
            rows.append(["server backend", expected, f"not measured: {why}", "<--"])
            outcome = outcome or f"server backend not measured: {why}"
        elif backend.idle_at is not None and backend.idle_at - end <= server_idle_within:
            server_ok = True
            rows.append(["server backend", expected,
                         f"{backend.state} {fmt_s(max(0.0, backend.idle_at - end))} after "
                         f"{event}", ""])
        else:
            seen = backend.last_seen if backend.last_seen is not None else end
            rows.append(["server backend", expected,
                         f"still active {fmt_s(seen - end)} after {event}: "
                         f"{(backend.active_query or '?')[:60]!r}", "<--"])
            msg = (f"the server backend (pid {hang.pid}) was still active "
                   f"{fmt_s(seen - end)} after {event}")
            outcome = outcome or msg
            notes.append(msg + (": the query runs on although the client gave up (cancel "
                                "it: a driver timeout that sends a CancelRequest, "
                                "conn.cancel_safe(), or statement_timeout)"
                                if how == "close" else ""))
        if backend.cancelled_after:
            notes.append(f"the verdict cancelled the backend (pg_cancel_backend({hang.pid})) "
                         "after judging, so it does not outlive the test")
    passed = client_ok and server_ok
    return Verdict(
        kind="cancel",
        claim=claim,
        passed=passed,
        expected={"timeout": timeout, "tolerance": tolerance,
                  "server_idle_within": server_idle_within},
        observed=observed,
        tolerance=f"± {tolerance:.0%}",
        headers=["check", "expected", "observed", ""],
        rows=rows,
        notes=notes,
        outcome=outcome or "cancelled on time, backend idle",
    )


class expect_hung_query_cancelled:
    """Hold the first statement matching ``match`` and assert that the client cancels it on
    time and the server stops running it (see the module's docs). ``with`` or ``async
    with``; the block's own exception (the driver's timeout error) propagates when the
    verdict passes; when it fails, :class:`CancelMismatch` is raised, chained to it.

    ``stage``: the ``pg_fault`` fixture or a :class:`~pytest_resilience.pgwire.PgFaultProxy`
    (then pass ``direct_dsn``).
    """

    def __init__(self, stage: Any, timeout: float, *, match: str | None = None,
                 nth: int | None = None, server: Literal["busy", "done"] = "busy",
                 tolerance: float = 0.1, server_idle_within: float = 1.0,
                 give_up_after: float | None = None, direct_dsn: str | None = None,
                 what: str = "the client") -> None:
        for name, value in (("timeout", timeout), ("server_idle_within", server_idle_within)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(
                    f"expect_hung_query_cancelled({name}={value!r}): must be > 0 seconds")
        if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) \
                or not 0 <= tolerance < 1:
            raise ConfigError(f"expect_hung_query_cancelled(tolerance={tolerance!r}): a "
                              "fraction of the timeout from 0 to 1 (0.1 is ± 10 %)")
        direct = direct_dsn or getattr(stage, "direct_dsn", None)
        if not isinstance(direct, str) or not direct:
            raise ConfigError("expect_hung_query_cancelled() watches the server backend through a "
                              "direct connection: pass the pg_fault fixture, or "
                              "direct_dsn='postgresql://...' (the database without the stage)")
        self.direct_dsn: str = direct
        self.stage = stage
        self.timeout = float(timeout)
        self.match = match
        self.nth = nth
        self.server = server
        self.tolerance = float(tolerance)
        self.server_idle_within = float(server_idle_within)
        self.give_up_after = (give_up_after if give_up_after is not None
                              else max(4 * self.timeout, self.timeout + 2.0))
        self.what = what
        self.result = CancelResult()
        self._rule: PgRule | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- the watcher thread ---------------------------------------------------------------
    def _watch(self, rule: PgRule) -> None:
        import psycopg

        watch = self.result.backend
        try:
            conn = psycopg.connect(self.direct_dsn, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            watch.error = f"no direct connection to the server ({exc})"
            return
        try:
            while not rule.hang_ended.wait(0.05):
                if self._stop.is_set() and not rule.hangs:
                    return  # the block is over and nothing was held
            hang = rule.hangs[0]
            end = hang.ended_at
            if hang.pid is None or end is None:
                return
            deadline = end + self.server_idle_within
            while True:
                row = conn.execute(_STATE_SQL, (hang.pid,)).fetchone()
                now = time.monotonic()
                watch.last_seen = now
                if row is None or row[0] != "active":
                    watch.idle_at, watch.state = now, "gone" if row is None else str(row[0])
                    return
                watch.active_query = str(row[1])
                if now >= deadline:
                    conn.execute("SELECT pg_cancel_backend(%s)", (hang.pid,))
                    watch.cancelled_after = True
                    return
                time.sleep(_POLL)  # the poll interval of pg_stat_activity
        except psycopg.Error as exc:
            watch.error = f"pg_stat_activity could not be read ({exc})"
        finally:
            conn.close()

    def start(self) -> CancelResult:
        """Arm the hang and the watcher (what entering the block does)."""
        self._rule = self.stage.hang(self.match, nth=self.nth, times=1, server=self.server,
                                     release_after=self.give_up_after)
        self._watcher = threading.Thread(target=self._watch, args=(self._rule,),
                                         name="expect_hung_query_cancelled-watch", daemon=True)
        self._watcher.start()
        return self.result

    def finish(self) -> Verdict:
        """Wait (bounded) for the hang to end and the backend to be judged; the verdict
        (not recorded, not raised: leaving the block does both)."""
        assert self._rule is not None
        assert self._watcher is not None
        rule = self._rule
        self._stop.set()
        if rule.hangs:  # the stage releases it by give_up_after at the latest
            left = rule.hangs[0].started + self.give_up_after - time.monotonic()
            rule.hang_ended.wait(max(0.0, left) + 5.0)
        self._watcher.join(self.server_idle_within + 15.0)
        rule.disarm()
        hang = rule.hangs[0] if rule.hangs else None
        self.result.hang = hang
        verdict = cancel_verdict(hang, self.result.backend, timeout=self.timeout,
                                 tolerance=self.tolerance,
                                 server_idle_within=self.server_idle_within,
                                 match=self.match, give_up_after=self.give_up_after,
                                 what=self.what)
        self.result.verdict = verdict
        return verdict

    def _raise(self, verdict: Verdict, ev: BaseException | None) -> bool:
        self.result.error = ev
        try:
            verdict.check(CancelMismatch)
        except CancelMismatch as failure:
            raise failure from ev
        return False

    # -- sync / async ---------------------------------------------------------------------
    def __enter__(self) -> CancelResult:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> bool:
        return self._raise(self.finish(), ev)

    async def __aenter__(self) -> CancelResult:
        return self.start()

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> bool:
        # in a thread: the client's cancel may still have to run on this loop
        verdict = await asyncio.to_thread(self.finish)
        return self._raise(verdict, ev)
