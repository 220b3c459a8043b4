"""The machine-readable record of a run: every verdict of every test (``results.json``)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_resilience.verdicts.core import Verdict

__all__ = ["FORMAT", "RunRecord", "TestRecord"]

#: Bumped when the layout of results.json changes incompatibly.
FORMAT = 1
_RANK = {"passed": 0, "skipped": 1, "xfailed": 1, "failed": 2}


@dataclass
class TestRecord:
    nodeid: str
    outcome: str = "passed"  # the worst phase: passed < skipped/xfailed < failed (error)
    duration: float = 0.0
    verdicts: list[Verdict] = field(default_factory=list)
    error: bool = False  # failed in setup or teardown
    attachments: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodeid": self.nodeid,
            "outcome": "error" if self.error and self.outcome == "failed" else self.outcome,
            "duration_s": round(self.duration, 6),
            "verdicts": [v.as_dict() for v in self.verdicts],
            "attachments": self.attachments,
        }


@dataclass
class RunRecord:
    seed: int
    started: float
    tests: dict[str, TestRecord] = field(default_factory=dict)

    def add_report(self, nodeid: str, when: str, outcome: str, duration: float,
                   verdicts: list[Verdict], *, xfail: bool = False,
                   attachments: list[dict[str, Any]] | None = None) -> None:
        test = self.tests.setdefault(nodeid, TestRecord(nodeid))
        test.duration += duration or 0.0
        outcome = "xfailed" if xfail else outcome
        if _RANK.get(outcome, 0) > _RANK.get(test.outcome, 0):
            test.outcome = outcome
            test.error = when != "call" and outcome == "failed"
        for attachment in attachments or ():
            if attachment not in test.attachments:
                test.attachments.append(attachment)
        known = {json.dumps(v.as_dict(), sort_keys=True) for v in test.verdicts}
        for verdict in verdicts:
            key = json.dumps(verdict.as_dict(), sort_keys=True)
            if key not in known:
                known.add(key)
                test.verdicts.append(verdict)

    def all_verdicts(self) -> list[tuple[str, Verdict]]:
        return [(t.nodeid, v) for t in self.tests.values() for v in t.verdicts]

    def summary_lines(self, ambient: frozenset[str]) -> tuple[list[str], dict[str, int]]:
        """One line per verdict; passing ambient checks only counted by kind."""
        lines: list[str] = []
        quiet: dict[str, int] = {}
        for test in self.tests.values():
            for verdict in test.verdicts:
                if verdict.kind in ambient and verdict.passed:
                    quiet[verdict.kind] = quiet.get(verdict.kind, 0) + 1
                    continue
                # node id first: `grep ^FAILED` keeps finding pytest's own lines only
                line = f"{test.nodeid} {verdict.status} {verdict.headline()}"
                if verdict.status == "FAILED" and test.outcome == "passed":
                    line += " (the test expected this failure and passed)"
                lines.append(line)
        return lines, quiet

    def as_dict(self, exit_status: int | None = None) -> dict[str, Any]:
        verdicts = [v for _, v in self.all_verdicts()]
        return {
            "format": FORMAT,
            "tool": "pytest-resilience",
            "seed": self.seed,
            "started": self.started,
            "duration_s": round(time.time() - self.started, 3),
            "exit_status": exit_status,
            "summary": {
                "tests": len(self.tests),
                "verdicts": len(verdicts),
                "passed": sum(v.passed for v in verdicts),
                "failed": sum(v.status == "FAILED" for v in verdicts),
                "warnings": sum(v.status == "WARNING" for v in verdicts),
                "not_judged": sum(v.status == "NOT JUDGED" for v in verdicts),
            },
            "tests": [t.as_dict() for t in self.tests.values()],
        }

    def write(self, path: Path, exit_status: int | None = None) -> dict[str, Any]:
        """Write atomically (a temporary name, then rename); returns what was written."""
        data = self.as_dict(exit_status)
        data["soak"] = soak_summary(self, path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
        return data


def soak_summary(record: RunRecord, directory: Path) -> dict[str, Any] | None:
    """The run's soak records merged: histograms added (never percentiles averaged), also
    across pytest-xdist workers, whose records sit in ``directory/soak``."""
    files = [a["file"] for t in record.tests.values() for a in t.attachments
             if a.get("kind") == "soak" and a.get("file")]
    if not files:
        return None
    from pytest_resilience.soak.hist import Histogram
    from pytest_resilience.soak.record import load

    merged = Histogram()
    calls = errors = 0
    unreadable: list[str] = []
    for name in files:
        try:
            soak = load(directory / name)
        except (OSError, ValueError, KeyError) as exc:
            unreadable.append(f"{name}: {exc}")
            continue
        merged.add(soak.histogram)
        calls += int(soak.totals.get("calls", 0))
        errors += int(soak.totals.get("errors", 0))
    out: dict[str, Any] = {"records": len(files), "calls": calls, "errors": errors,
                           "latency_s": {"p50": merged.percentile(50),
                                         "p95": merged.percentile(95),
                                         "p99": merged.percentile(99), "max": merged.max}
                           if merged.count else None,
                           "histogram": merged.encode()}
    if unreadable:
        out["unreadable"] = unreadable
    return out
