"""Fault rules of the Postgres stage: what to inject, on which statement, how often; and the
log of what was injected. Armed and disarmed from the test's thread, consulted on the
stage's loop thread: every read and write of a rule's counters holds one lock.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

from pytest_resilience.errors import ConfigError

__all__ = ["Hang", "HangServer", "Injection", "Kind", "PgRule", "RuleBook",
           "check_sqlstate"]

#: ``sqlstate``: the server raises an ERROR; ``fatal``: a FATAL to the client, both sides
#: closed; ``refuse_startup``: the StartupMessage answered with a FATAL; ``cut_mid_response``:
#: part of the response forwarded, then both sides closed; ``hang``: the statement's response
#: does not come until the client cancels or closes (see :class:`Hang`).
Kind = Literal["sqlstate", "fatal", "refuse_startup", "cut_mid_response", "hang"]
#: What the server does during a ``hang``: ``busy`` runs ``pg_sleep`` in place of the
#: statement (a cancel really cancels it; a close leaves it running), ``done`` runs the
#: statement and the stage holds its response.
HangServer = Literal["busy", "done"]

_SQLSTATE = re.compile(r"[0-9A-Z]{5}")


def check_sqlstate(code: object) -> str:
    """A 5-character SQLSTATE (digits and upper-case letters, not ``00000``)."""
    if not isinstance(code, str) or _SQLSTATE.fullmatch(code) is None or code == "00000":
        raise ConfigError(f"a SQLSTATE is 5 digits or upper-case letters other than 00000 "
                          f"(e.g. '40001'), got {code!r}")
    return code


@dataclass(frozen=True)
class Injection:
    """One injected fault: when (``time.monotonic()``), on which proxied connection (1, 2,
    ... in accept order), the statement text (``None`` for a refused startup), the
    SQLSTATE the client sees (``08006`` for a cut connection) and the rule's kind."""

    time: float
    connection: int
    statement: str | None
    sqlstate: str
    kind: Kind


@dataclass
class Hang:
    """One statement held by a ``hang`` rule, and how it ended (times are
    ``time.monotonic()``; filled on the stage's thread, read once :attr:`ended` is set).

    ``pid`` is the backend serving the connection (from its BackendKeyData). ``cancelled``:
    the client sent a CancelRequest for it; ``closed``: the client closed its socket;
    ``released``: nobody did within ``release_after`` and the stage ended the hang itself
    (``busy``: a CancelRequest of its own; ``done``: the held response forwarded);
    ``answered``: the server's reply to a ``busy`` hang passed, with ``answer`` its SQLSTATE
    and message (``57014 canceling statement due to statement timeout``: the server's own
    ``statement_timeout`` ended it).
    """

    connection: int
    pid: int | None
    statement: str | None
    server: HangServer
    started: float
    cancelled: float | None = None
    closed: float | None = None
    released: float | None = None
    answered: float | None = None
    answer: tuple[str, str] | None = None
    ended: threading.Event = field(default_factory=threading.Event, repr=False,
                                   compare=False)

    @property
    def ended_at(self) -> float | None:
        """When the client (or the stage, or the server) ended the hang, if it did."""
        times = [t for t in (self.cancelled, self.closed, self.released, self.answered)
                 if t is not None]
        return min(times) if times else None


class PgRule:
    """One armed fault. A context manager: leaving the ``with`` block disarms it.

    Every execution whose text matches ``match`` (``re.search``; ``None`` matches every
    statement) counts, across all connections of the proxy; the rule fires on matching
    execution ``nth`` (1-based, default 1) and the following ones, ``times`` times in all
    (default: once when ``nth`` is given, else without limit), each time with
    ``probability`` (drawn from a ``random.Random(seed)``).

    ``server``/``hold_for``/``release_after`` are a ``hang`` rule's: see
    :meth:`pytest_resilience.pgwire.PgFaultProxy.hang`.
    """

    def __init__(self, book: RuleBook, kind: Kind, code: str, match: str | None,
                 *, nth: int | None = None, times: int | None = None,
                 probability: float = 1.0, seed: int | None = None, message: str = "",
                 after_messages: int = 1, server: HangServer = "busy",
                 hold_for: float = 3600.0, release_after: float | None = None) -> None:
        for what, value in (("nth", nth), ("times", times)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ConfigError(f"{kind}: {what} must be a positive integer or None, got "
                                  f"{value!r}")
        if isinstance(probability, bool) or not isinstance(probability, int | float) \
                or not 0 <= probability <= 1:
            raise ConfigError(f"{kind}: probability must be a number from 0 to 1, got "
                              f"{probability!r}")
        if isinstance(after_messages, bool) or not isinstance(after_messages, int) \
                or after_messages < 0:
            raise ConfigError(f"{kind}: after_messages must be an integer >= 0, got "
                              f"{after_messages!r}")
        if server not in ("busy", "done"):
            raise ConfigError(f"{kind}: server must be 'busy' (the server runs pg_sleep in "
                              f"place of the statement) or 'done' (the server runs it, its "
                              f"response is held), got {server!r}")
        for what, limit in (("hold_for", hold_for), ("release_after", release_after)):
            if limit is not None and (isinstance(limit, bool)
                                      or not isinstance(limit, int | float) or limit <= 0):
                raise ConfigError(f"{kind}: {what} must be a number of seconds > 0, got "
                                  f"{limit!r}")
        try:
            self.pattern = None if match is None else re.compile(match)
        except (re.error, TypeError) as exc:
            raise ConfigError(f"{kind}: match={match!r} is not a regular expression: "
                              f"{exc}") from None
        self.kind: Kind = kind
        self.code = check_sqlstate(code)
        self.match = match
        self.start = nth or 1
        self.times = times if times is not None else (1 if nth is not None else None)
        self.probability = float(probability)
        self.seed = seed
        self.message = message
        self.after_messages = after_messages
        self.server: HangServer = server
        self.hold_for = float(hold_for)
        self.release_after = release_after
        #: set when one of this rule's hangs ends (cancelled, closed or released)
        self.hang_ended = threading.Event()
        #: the statements this ``hang`` rule held (appended on the stage's thread)
        self.hangs: list[Hang] = []
        self._rng = random.Random(seed)
        self._book = book
        #: matching executions seen / times the rule fired (read under the book's lock)
        self.seen = 0
        self.fired = 0
        self.armed = True

    def _check(self, text: str | None) -> bool:
        """Count one execution; whether the rule fires on it. Called under the lock."""
        if not self.armed:
            return False
        if self.pattern is not None and (text is None or self.pattern.search(text) is None):
            return False
        self.seen += 1
        if self.seen < self.start or (self.times is not None and self.fired >= self.times):
            return False
        if self.probability < 1 and self._rng.random() >= self.probability:
            return False
        self.fired += 1
        return True

    def disarm(self) -> None:
        """Stop firing (idempotent); the counters stay readable."""
        self._book.remove(self)

    def __enter__(self) -> PgRule:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.disarm()

    def __repr__(self) -> str:
        when = f"nth={self.start}, " if self.start != 1 else ""
        return (f"<PgRule {self.kind} {self.code} match={self.match!r} {when}"
                f"times={self.times} seen={self.seen} fired={self.fired}"
                f"{'' if self.armed else ' disarmed'}>")


class RuleBook:
    """The armed rules of one proxy and its injection log, behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: read without the lock on the hot path: a list replaced, never mutated
        self.rules: tuple[PgRule, ...] = ()
        self.log: list[Injection] = []
        #: the statements held by ``hang`` rules (appended on the stage's thread)
        self.hangs: list[Hang] = []
        self.on_change: Callable[[], None] | None = None

    def add(self, rule: PgRule) -> PgRule:
        with self.lock:
            self.rules = (*self.rules, rule)
        return rule

    def remove(self, rule: PgRule) -> None:
        with self.lock:
            rule.armed = False
            self.rules = tuple(r for r in self.rules if r is not rule)

    def clear(self) -> None:
        with self.lock:
            for rule in self.rules:
                rule.armed = False
            self.rules = ()

    def fire(self, kinds: tuple[Kind, ...], text: str | None, connection: int
             ) -> PgRule | None:
        """The first armed rule of ``kinds`` that fires on this execution (logged), or
        ``None``. Rules are consulted in arming order; the first that fires wins and the
        later ones do not count the execution."""
        rules = self.rules
        if not rules:
            return None
        with self.lock:
            for rule in rules:
                if rule.kind in kinds and rule._check(text):
                    code = "08006" if rule.kind == "cut_mid_response" else rule.code
                    self.log.append(Injection(time.monotonic(), connection, text, code,
                                              rule.kind))
                    return rule
        return None

    def injections(self) -> list[Injection]:
        with self.lock:
            return list(self.log)
