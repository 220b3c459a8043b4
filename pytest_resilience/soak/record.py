"""The soak record: what a load or soak run measured, in a documented JSON format.

One record per soak run (a marked test or a scenario). It is column-oriented: ``series``
maps a metric name to a list aligned with ``series["t"]`` (seconds since the run
started, one entry per sample); ``None`` marks a sample where the metric could not be
read. Latencies are kept twice: per-interval percentiles in the series (for plots and
sustained-breach verdicts) and one HDR histogram of the whole run (``histogram``,
microseconds, HdrHistogram's compressed base64 encoding), so records from several
workers or machines merge by *adding histograms*, never by averaging percentiles.

Format ``pytest-resilience/soak/1``::

    {
      "format": "pytest-resilience/soak/1",
      "name": "tests/test_soak.py::test_no_session_leak",   # or the scenario's node id
      "source": "host-or-worker name",
      "started": 1764583200.0,            # unix time of t = 0
      "interval_s": 1.0,                  # sampling interval
      "warmup_s": 5.0,                    # drift verdicts ignore samples before this
      "plan": {"duration_s": 60.0, "iterations": null, "rate": 100.0, "concurrency": 8},
      "ended": "duration",                # duration | iterations | interrupted | error
      "series": {"t": [...], "calls": [...], ...},     # see SERIES
      "stages": [{"start": 10.0, "end": 20.0, "label": "latency 200ms on postgres"}],
      "histogram": "HISTFAAA...",         # latency of every call, microseconds
      "totals": {"calls": 6000, "errors": 3, "attempts": 6010, "elapsed_s": 60.02}
    }

:func:`merge` combines records of the same run from several sources (an external load
engine on several machines writes the same format): histograms are added, counters are
summed per aligned sample, resource series are kept per source.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_resilience.soak.hist import Histogram

__all__ = ["FORMAT", "SERIES", "SoakRecord", "Stage", "load", "merge", "slug"]

FORMAT = "pytest-resilience/soak/1"

#: The series a record may hold (each optional except ``t``), with unit and meaning.
SERIES: dict[str, tuple[str, str]] = {
    "t": ("s", "seconds since the run started (sample time)"),
    "calls": ("", "calls completed so far (cumulative)"),
    "errors": ("", "calls that raised so far (cumulative)"),
    "in_flight": ("", "calls started and not yet finished (queued included)"),
    "rate": ("1/s", "calls completed per second in the last interval"),
    "error_rate": ("", "share of the last interval's calls that raised"),
    "p50_s": ("s", "median latency of the last interval's calls"),
    "p95_s": ("s", "95th percentile latency of the last interval's calls"),
    "p99_s": ("s", "99th percentile latency of the last interval's calls"),
    "max_s": ("s", "slowest call of the last interval, or the age of a call still running "
                   "at the sample if that is longer"),
    "attempts": ("", "requests that reached the watched backends so far (cumulative)"),
    "rss_bytes": ("B", "resident set size of the test process"),
    "fds": ("", "open file descriptors of the test process"),
    "fds_socket": ("", "open sockets"),
    "fds_file": ("", "open regular files"),
    "fds_pipe": ("", "open pipes"),
    "fds_other": ("", "other descriptors (eventfd, epoll, ...)"),
    "threads": ("", "threads of the test process"),
    "tasks": ("", "pending asyncio tasks on the driver's loop"),
    "pg_sessions": ("", "Postgres server sessions opened by the run (pg_stat_activity)"),
    "pool_size": ("", "pool size, from the target's probe"),
    "pool_idle": ("", "idle pool connections, from the target's probe"),
    "breaker": ("", "breaker state name, from the target's probe"),
}
#: Series that count something over the whole run (summed when records merge).
COUNTERS = ("calls", "errors", "attempts", "in_flight", "rate")


@dataclass
class Stage:
    """A window of the run: a fault that was active from ``start`` to ``end``."""

    start: float
    end: float | None
    label: str

    def as_dict(self) -> dict[str, Any]:
        return {"start": round(self.start, 6),
                "end": None if self.end is None else round(self.end, 6), "label": self.label}


@dataclass
class SoakRecord:
    name: str
    started: float
    interval: float
    warmup: float = 0.0
    source: str = ""
    plan: dict[str, Any] = field(default_factory=dict)
    ended: str = "duration"
    series: dict[str, list[Any]] = field(default_factory=lambda: {"t": []})
    stages: list[Stage] = field(default_factory=list)
    histogram: Histogram = field(default_factory=Histogram)
    totals: dict[str, Any] = field(default_factory=dict)

    def column(self, name: str) -> list[Any]:
        """The series ``name`` (a list of ``None`` when it was not sampled)."""
        values = self.series.get(name)
        return list(values) if values is not None else [None] * len(self.series["t"])

    def add_sample(self, sample: dict[str, Any]) -> None:
        """Append one sample (keys from :data:`SERIES`); missing keys become ``None``."""
        n = len(self.series["t"])
        for key, value in sample.items():
            if key not in self.series:
                self.series[key] = [None] * n
            self.series[key].append(_plain(value))
        for values in self.series.values():
            if len(values) == n:
                values.append(None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "source": self.source,
            "started": self.started,
            "interval_s": self.interval,
            "warmup_s": self.warmup,
            "plan": self.plan,
            "ended": self.ended,
            "series": self.series,
            "stages": [s.as_dict() for s in self.stages],
            "histogram": self.histogram.encode(),
            "totals": self.totals,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SoakRecord:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a soak record of format {FORMAT!r}: "
                             f"format={data.get('format')!r}")
        return cls(
            name=str(data.get("name", "")), started=float(data.get("started", 0.0)),
            interval=float(data["interval_s"]), warmup=float(data.get("warmup_s", 0.0)),
            source=str(data.get("source", "")), plan=dict(data.get("plan") or {}),
            ended=str(data.get("ended", "duration")),
            series={k: list(v) for k, v in dict(data["series"]).items()},
            stages=[Stage(float(s["start"]), None if s.get("end") is None else float(s["end"]),
                          str(s.get("label", ""))) for s in data.get("stages") or []],
            histogram=Histogram.decode(data["histogram"]) if data.get("histogram")
            else Histogram(),
            totals=dict(data.get("totals") or {}),
        )

    def write(self, path: Path) -> Path:
        """Write atomically (a temporary name, then rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.as_dict(), separators=(",", ":")) + "\n")
        os.replace(tmp, path)
        return path

    def summary(self) -> dict[str, Any]:
        """The key figures (JUnit properties, the terminal summary, results.json)."""
        h = self.histogram
        out: dict[str, Any] = {
            "calls": self.totals.get("calls", h.count),
            "errors": self.totals.get("errors", 0),
            "elapsed_s": self.totals.get("elapsed_s"),
            "ended": self.ended,
        }
        if h.count:
            out.update({"p50_s": h.percentile(50), "p95_s": h.percentile(95),
                        "p99_s": h.percentile(99), "max_s": h.max})
        elapsed = self.totals.get("elapsed_s")
        if elapsed:
            out["calls_per_s"] = round(out["calls"] / elapsed, 3)
        if self.totals.get("attempts") is not None and out["calls"]:
            out["attempts_per_call"] = round(self.totals["attempts"] / out["calls"], 4)
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def load(path: Path) -> SoakRecord:
    return SoakRecord.from_dict(json.loads(path.read_text()))


def slug(nodeid: str) -> str:
    """A file name for a node id (stable, readable, no path separators)."""
    text = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")
    return text[:150] or "soak"


def merge(records: list[SoakRecord], name: str | None = None) -> SoakRecord:
    """One record for the same run measured from several sources.

    Histograms are added (percentiles of the merged run are exact to the histogram's
    precision), counters are summed sample by sample (samples aligned by index after
    each record's own start; records should share ``interval_s``), per-interval
    percentiles are the worst source's (an upper bound, marked in ``totals``), and
    resource series are kept per source as ``<series>@<source>``.
    """
    if not records:
        raise ValueError("merge() needs at least one record")
    intervals = {r.interval for r in records}
    if len(intervals) > 1:
        raise ValueError(f"records sampled at different intervals cannot be merged "
                         f"sample by sample: {sorted(intervals)}")
    first = records[0]
    n = min(len(r.series["t"]) for r in records)
    out = SoakRecord(name=name or first.name, started=min(r.started for r in records),
                     interval=first.interval, warmup=max(r.warmup for r in records),
                     source="+".join(r.source or f"source{i}" for i, r in enumerate(records)),
                     plan=dict(first.plan),
                     ended="interrupted" if any(r.ended == "interrupted" for r in records)
                     else first.ended)
    out.series = {"t": list(first.series["t"][:n])}
    for key in COUNTERS:
        columns = [r.series.get(key) for r in records]
        if any(c is not None for c in columns):
            out.series[key] = [
                sum(c[i] or 0 for c in columns if c is not None) for i in range(n)]
    for key in ("p50_s", "p95_s", "p99_s", "max_s"):
        present = [c for r in records if (c := r.series.get(key)) is not None]
        if present:
            out.series[key] = [max((c[i] for c in present if c[i] is not None), default=None)
                               for i in range(n)]
    for i, record in enumerate(records):
        tag = record.source or f"source{i}"
        for key, values in record.series.items():
            if key in COUNTERS or key == "t" or (key.endswith("_s") and key != "t"):
                continue
            out.series[f"{key}@{tag}"] = list(values[:n])
    for record in records:
        out.histogram.add(record.histogram)
        out.stages.extend(record.stages)
    totals: dict[str, Any] = {"merged_from": len(records),
                              "interval_percentiles": "worst source per sample"}
    for key in ("calls", "errors", "attempts"):
        values = [r.totals.get(key) for r in records]
        if any(v is not None for v in values):
            totals[key] = sum(v or 0 for v in values)
    totals["elapsed_s"] = max(r.totals.get("elapsed_s") or 0.0 for r in records)
    out.totals = totals
    return out
