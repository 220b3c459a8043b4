"""What every verdict shares: data first (a dataclass), text second.

A :class:`Verdict` holds the claim, what was expected, what was observed, the
tolerance used and whether it passed, plus an optional table. ``text()``
renders it for people; ``to_dict()`` renders it for JSON / JUnit / xdist.
A failed verdict raises :class:`VerdictFailed` (an ``AssertionError``), so
pytest shows it like any failed ``assert``.

Verdicts created while a test runs are collected by the
``resilience_verdicts`` fixture and attached to the test report
(see ``pytest_resilience.fixtures.verdicts``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Tolerance",
    "Verdict",
    "VerdictFailed",
    "collect",
    "fmt_s",
    "render_table",
]

#: Absolute slack for comparisons on exact clocks (virtual time, requested
#: waits): float rounding only, never scheduling noise.
EXACT_EPSILON = 1e-9


def fmt_s(seconds: float | None) -> str:
    """A duration for people: ``12.3 ms``, ``1.500 s``, ``-0.4 ms``."""
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return "inf" if seconds > 0 else "-inf"
    if abs(seconds) < 1.0:
        ms = seconds * 1000.0
        digits = 2 if abs(ms) < 10 else 1
        ms = round(ms, digits)
        if ms == int(ms):
            return f"{int(ms)} ms"
        return f"{ms:.{digits}f} ms"
    return f"{seconds:.3f} s"


@dataclass(frozen=True)
class Tolerance:
    """How far a measurement may stray from the expected band.

    ``early``: how much sooner than the band's low edge is still accepted;
    ``late``: how much later than the band's high edge is still accepted.
    Both in seconds and never negative.
    """

    early: float = 0.0
    late: float = 0.0

    def __post_init__(self) -> None:
        if self.early < 0 or self.late < 0:
            raise ValueError(f"tolerance must not be negative, got {self}")

    @classmethod
    def coerce(
        cls, value: Tolerance | float | tuple[float, float] | None, default: Tolerance
    ) -> Tolerance:
        """``None`` -> *default*; ``x`` -> ``±x``; ``(early, late)``; a Tolerance as is."""
        if value is None:
            return default
        if isinstance(value, Tolerance):
            return value
        if isinstance(value, tuple):
            return cls(early=float(value[0]), late=float(value[1]))
        return cls(early=float(value), late=float(value))

    def widen(self, lo: float, hi: float) -> tuple[float, float]:
        """The accepted window for a band ``[lo, hi]``."""
        return lo - self.early - EXACT_EPSILON, hi + self.late + EXACT_EPSILON

    def __str__(self) -> str:
        if self.early == 0 and self.late == 0:
            return "exact"
        return f"-{fmt_s(self.early)} / +{fmt_s(self.late)}"


#: The heading :func:`render_table` gives a last column left unnamed (``""``): the
#: column where verdict builders mark the rows at fault (``<--``, ``<-- loop blocked``).
MARK_HEADING = "at fault"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with a header rule; columns left-aligned.

    A last column without a heading is the builders' marker column: it is headed
    :data:`MARK_HEADING` when a row is marked, and left out when none is (a passing
    verdict's table then has no empty column).
    """
    if headers and headers[-1] == "":
        if any(len(row) == len(headers) and row[-1] for row in rows):
            headers = [*headers[:-1], MARK_HEADING]
        else:
            headers = headers[:-1]
            rows = [row[:len(headers)] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths).rstrip())
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


#: ``severity`` values: a failed ``error`` fails the test; a ``warning`` is reported
#: only (clock-source findings); ``info`` was recorded but not judged (a leak check
#: after the test itself failed).
SEVERITIES = ("error", "warning", "info")


@dataclass
class Verdict:
    """The outcome of one check - every check of the plugin produces this one type.

    ``kind`` names the check (``backoff``, ``breaker-transitions``, ``timeout``,
    ``leaks``, ``clock-sources``...), ``claim`` what it holds the code to, ``passed``
    the result; ``expected``/``observed``/``tolerance`` the figures it judged,
    ``headers``/``rows`` its table and ``blame`` the indices of the rows at fault.
    ``outcome`` is a short observed result for one-line summaries, ``message`` a
    ready-made text (else :meth:`text` renders the fields). :meth:`as_dict` /
    :meth:`from_dict` round-trip through JSON (``results.json``, JUnit, xdist).
    """

    kind: str
    claim: str
    passed: bool
    expected: Any = None
    observed: Any = None
    tolerance: str = ""
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    blame: list[int] | None = None
    outcome: str = ""
    message: str = ""
    severity: str = "error"

    @property
    def name(self) -> str:
        """The check's name (same as ``kind``)."""
        return self.kind

    @property
    def blamed_rows(self) -> list[int]:
        """Indices of the rows at fault: ``blame`` if given, else the rows a builder
        marked with ``<--``."""
        if self.blame is not None:
            return list(self.blame)
        return [i for i, row in enumerate(self.rows) if any("<--" in str(c) for c in row)]

    @property
    def status(self) -> str:
        """``PASSED``, ``FAILED``, ``WARNING`` or ``NOT JUDGED``."""
        if self.passed:
            return "PASSED"
        return {"warning": "WARNING", "info": "NOT JUDGED"}.get(self.severity, "FAILED")

    def headline(self) -> str:
        """One line: ``kind: claim`` and the short outcome, for summaries."""
        line = f"{self.kind}: {self.claim}"
        return f"{line} -- {self.outcome}" if self.outcome else line

    def text(self) -> str:
        """A report for people: verdict line, table, notes."""
        if self.message:
            return self.message
        mark = "PASSED" if self.passed else "FAILED"
        parts = [f"{self.kind} verdict {mark}: {self.claim}"]
        if self.tolerance:
            parts.append(f"tolerance: {self.tolerance}")
        if self.headers:
            parts.append(render_table(self.headers, self.rows))
        parts.extend(self.notes)
        return "\n".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (what ``results.json``, JUnit properties and xdist carry);
        :meth:`from_dict` turns it back into an equal verdict."""
        return {
            "kind": self.kind,
            "claim": self.claim,
            "passed": self.passed,
            "status": self.status,
            "severity": self.severity,
            "expected": _jsonable(self.expected),
            "observed": _jsonable(self.observed),
            "tolerance": self.tolerance,
            "table": [list(self.headers), *[list(r) for r in self.rows]] if self.headers else [],
            "blame": self.blamed_rows,
            "notes": list(self.notes),
            "outcome": self.outcome,
            "message": self.text(),
            "data": _jsonable(self.data),
        }

    #: The former name of :meth:`as_dict`.
    to_dict = as_dict

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        """The verdict :meth:`as_dict` described (values as JSON holds them)."""
        table = data.get("table") or []
        return cls(
            kind=data["kind"], claim=data["claim"], passed=bool(data["passed"]),
            expected=data.get("expected"), observed=data.get("observed"),
            tolerance=data.get("tolerance", ""),
            headers=list(table[0]) if table else [],
            rows=[list(r) for r in table[1:]],
            notes=list(data.get("notes", [])), data=dict(data.get("data") or {}),
            blame=list(data["blame"]) if data.get("blame") is not None else None,
            outcome=data.get("outcome", ""), message=data.get("message", ""),
            severity=data.get("severity", "error"),
        )

    def check(self, error: type[VerdictFailed] | None = None) -> Verdict:
        """Record the verdict with the running test, then raise if it failed."""
        collect(self)
        if not self.passed:
            raise (error or VerdictFailed)(self)
        return self


class VerdictFailed(AssertionError):
    """A verdict failed; ``.verdict`` holds the data, ``str()`` the table."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.text())
        self.verdict = verdict


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


# -- collection while a test runs --------------------------------------------------------

_lock = threading.Lock()
_sinks: list[list[Verdict]] = []


def collect(verdict: Verdict) -> None:
    """Hand *verdict* to the innermost active collector (the running test's).

    Innermost only: a test that runs pytest in-process (pytester) keeps the
    inner session's verdicts out of its own report.
    """
    with _lock:
        if _sinks:
            _sinks[-1].append(verdict)


def push_sink(sink: list[Verdict]) -> None:
    """Start collecting verdicts into *sink* (used by the plugin's hooks)."""
    with _lock:
        _sinks.append(sink)


def pop_sink(sink: list[Verdict]) -> None:
    """Stop collecting into *sink*."""
    with _lock:
        for i, active in enumerate(_sinks):
            if active is sink:
                del _sinks[i]
                break
