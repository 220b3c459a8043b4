"""What the report hooks record per test, readable by fixtures (no pytest hooks here)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_resilience.verdicts.core import Verdict

__all__ = [
    "ATTACHMENT_PROPERTY", "PROPERTY_NAME", "VerdictLog", "attach", "attachments_of_report",
    "log_for", "phase_failed", "phase_outcome", "verdicts_of_report",
]

#: ``user_properties`` / JUnit property name of one verdict (its JSON).
PROPERTY_NAME = "resilience_verdict"

#: ``user_properties`` name of one attachment: data a report shows next to the verdicts
#: (a fault timeline as it ran, a soak run's key figures and record file), JSON with a
#: ``kind`` key.
ATTACHMENT_PROPERTY = "resilience_attachment"

#: when -> "passed" | "failed" | "skipped" | "xfailed" for the phases seen so far
outcomes_key = pytest.StashKey[dict[str, str]]()


def phase_outcome(item: pytest.Item, when: str) -> str | None:
    """How the ``setup``/``call``/``teardown`` phase of ``item`` ended (None: not yet)."""
    return item.stash.get(outcomes_key, {}).get(when)


def phase_failed(item: pytest.Item, *whens: str) -> bool:
    """True if any of the phases (default: setup and call) failed or xfailed."""
    seen = item.stash.get(outcomes_key, {})
    return any(seen.get(w) in ("failed", "xfailed") for w in (whens or ("setup", "call")))


def verdicts_of_report(report: pytest.TestReport | Any) -> list[Verdict]:
    """The verdicts a test report carries (from its ``user_properties``)."""
    from pytest_resilience.verdicts.core import Verdict

    out: list[Verdict] = []
    seen: set[str] = set()
    for name, value in getattr(report, "user_properties", ()):
        if name != PROPERTY_NAME or not isinstance(value, str) or value in seen:
            continue
        seen.add(value)
        out.append(Verdict.from_dict(json.loads(value)))
    return out


def attachments_of_report(report: pytest.TestReport | Any) -> list[dict[str, Any]]:
    """The attachments a test report carries (from its ``user_properties``)."""
    out: list[dict[str, Any]] = []
    for name, value in getattr(report, "user_properties", ()):
        if name == ATTACHMENT_PROPERTY and isinstance(value, str):
            out.append(json.loads(value))
    return out


def attach(item: pytest.Item, kind: str, **data: Any) -> None:
    """Attach ``data`` (JSON-able) of ``kind`` to the report of ``item``'s current phase."""
    log_for(item).attachments.append({"kind": kind, **data})


class VerdictLog:
    """The verdicts checked during one test, in order (the ``resilience_verdicts``
    fixture)."""

    def __init__(self) -> None:
        self.verdicts: list[Verdict] = []
        self.reported = 0  # how many are already on a phase report
        self.attachments: list[dict[str, Any]] = []
        self.attached = 0  # how many attachments are already on a phase report

    def __iter__(self) -> Any:
        return iter(self.verdicts)

    def __len__(self) -> int:
        return len(self.verdicts)

    def __getitem__(self, index: int) -> Verdict:
        return self.verdicts[index]

    @property
    def failed(self) -> list[Verdict]:
        """The verdicts that did not pass."""
        return [v for v in self.verdicts if not v.passed]

    def add(self, verdict: Verdict) -> Verdict:
        """Record a verdict built by hand (``Verdict(...)``) without raising."""
        self.verdicts.append(verdict)
        return verdict

    def text(self) -> str:
        """All verdicts as text, separated by blank lines."""
        return "\n\n".join(v.text() for v in self.verdicts)


log_key = pytest.StashKey[VerdictLog]()


def log_for(item: pytest.Item) -> VerdictLog:
    """The verdict log of ``item`` (created on first use)."""
    log = item.stash.get(log_key, None)
    if log is None:
        log = VerdictLog()
        item.stash[log_key] = log
    return log
