"""The human-readable report of a run: one self-contained ``report.html`` next to
``results.json`` (``--resilience-report=DIR``).

One file, no external resources and no JavaScript: inline CSS, plots as inline SVG drawn
by matplotlib (optional: without it the page keeps every table and says how to get the
plots). Built from the ``results.json`` dict and the soak records it points to
(``soak/*.json``), so it can be rebuilt later from those files alone::

    write_html(json.loads(Path("DIR/results.json").read_text()), Path("DIR"))

matplotlib is imported on the first call, never when the plugin loads, and only through
its object-oriented API (``matplotlib.figure.Figure``, rendered by the SVG backend): no
pyplot, so no global backend switch and no figure left open in the test process.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["MATPLOTLIB_NOTE", "write_html"]

#: Shown instead of the plots when matplotlib cannot be imported.
MATPLOTLIB_NOTE = "plots need matplotlib: pip install 'pytest-resilience[report]'"

_STATUS_CLASS = {"PASSED": "pass", "FAILED": "fail", "WARNING": "warn",
                 "NOT JUDGED": "skip"}
_OUTCOME_CLASS = {"passed": "pass", "failed": "fail", "error": "fail", "skipped": "skip",
                  "xfailed": "skip"}
#: Soak series drawn in the resources panel (counts), in this order.
_RESOURCES = ("fds", "fds_socket", "pg_sessions", "pool_size", "tasks", "threads",
              "in_flight")
_LATENCY = ("p50_s", "p95_s", "p99_s")
_PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
 color:#1d2329;background:#f6f7f9}
main{max-width:1150px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:17px;margin:0 0 6px;word-break:break-all}
h3{font-size:15px;margin:14px 0 4px}
.cap{color:#56606b;font-size:13px;margin:2px 0 8px}
section.test{background:#fff;border:1px solid #dde1e6;border-left:5px solid #8a939c;
 border-radius:4px;padding:12px 16px;margin:14px 0}
section.test.fail{border-left-color:#c62828}section.test.pass{border-left-color:#2e7d32}
section.test.skip{border-left-color:#9e9e9e}section.test.warn{border-left-color:#ef8f00}
.verdict{border-top:1px solid #eceff2;padding-top:8px;margin-top:10px}
.badge{display:inline-block;font-size:12px;font-weight:600;padding:1px 7px;
 border-radius:9px;color:#fff;background:#757575;margin-right:6px;vertical-align:1px}
.badge.pass{background:#2e7d32}.badge.fail{background:#c62828}
.badge.warn{background:#ef8f00}.badge.skip{background:#757575}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border:1px solid #dde1e6;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.blame td{background:#fde2e1;font-weight:600}
.note{background:#fff8e1;border:1px solid #f3d37a;padding:6px 10px;border-radius:4px}
.plot{margin:6px 0}.plot svg{max-width:100%;height:auto}
pre{background:#f3f4f6;padding:8px;overflow:auto;font-size:12px;max-height:360px}
ul.toc{font-size:13px;overflow-wrap:anywhere}code{font-size:12px}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:4px 0}
dl.meta dt{color:#56606b}dl.meta dd{margin:0}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _float(value: Any) -> float:
    """A plottable number (NaN for None and anything not numeric: a gap in a line)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _fmt_s(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "-"
    s = float(seconds)
    if s != 0 and abs(s) < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if abs(s) < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def _anchor(nodeid: str) -> str:
    return "t-" + re.sub(r"[^A-Za-z0-9_-]+", "-", nodeid).strip("-")[:120]


# --- plots --------------------------------------------------------------------------

class _Plots:
    """matplotlib, imported on first use; ``None`` methods' results when it is missing."""

    def __init__(self) -> None:
        try:
            from matplotlib.figure import Figure
        except ImportError:
            self.figure: Any = None
        else:
            self.figure = Figure

    @property
    def available(self) -> bool:
        return self.figure is not None

    def new(self, height: float, rows: int = 1) -> tuple[Any, Any]:
        # fixed margins (inches), not a layout engine: it would double the drawing time
        width = 9.0
        fig = self.figure(figsize=(width, height), dpi=96)
        fig.subplots_adjust(left=0.85 / width, right=1 - 0.75 / width,
                            bottom=0.55 / height, top=1 - 0.12 / height,
                            hspace=0.25 / max(1.0, (height - 0.67) / rows))
        axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
        for ax in axes:
            ax.grid(True, alpha=0.3)
        return fig, axes

    @staticmethod
    def svg(fig: Any) -> str:
        """The figure as an ``<svg>`` element (no XML prolog, no metadata)."""
        from matplotlib import rc_context

        buf = io.StringIO()
        with rc_context({"svg.fonttype": "none"}):
            fig.savefig(buf, format="svg",
                        metadata={"Creator": None, "Date": None, "Format": None,
                                  "Type": None})
        text = buf.getvalue()
        start = text.find("<svg")
        return text[start:] if start >= 0 else text


def _backoff_plot(plots: _Plots, verdict: dict[str, Any]) -> str | None:
    expected = verdict.get("expected") if isinstance(verdict.get("expected"), dict) else {}
    observed = verdict.get("observed") if isinstance(verdict.get("observed"), dict) else {}
    bands = [b for b in (expected or {}).get("bands") or []
             if isinstance(b, (list, tuple)) and len(b) == 2]
    delays = [_float(d) for d in (observed or {}).get("delays") or []]
    if not bands and not delays:
        return None
    blame = set(verdict.get("blame") or [])
    fig, (ax,) = plots.new(2.8)
    for i, (lo, hi) in enumerate(bands, start=1):
        lo_ms, hi_ms = _float(lo) * 1e3, _float(hi) * 1e3
        ax.bar(i, max(hi_ms - lo_ms, 0.0), bottom=lo_ms, width=0.5, color="#90caf9",
               edgecolor="#1e88e5", label="expected band" if i == 1 else None)
        if hi_ms - lo_ms <= 1e-9:
            ax.hlines(lo_ms, i - 0.25, i + 0.25, color="#1e88e5", lw=2)
    xs = list(range(1, len(delays) + 1))
    ys = [d * 1e3 for d in delays]
    colors = ["#c62828" if i in blame else "#2e7d32" for i in range(len(delays))]
    ax.plot(xs, ys, color="#555", lw=0.8, zorder=2)
    ax.scatter(xs, ys, c=colors, zorder=3, s=36, label="measured")
    n = max(len(bands), len(delays))
    ax.set_xlabel("attempt (the delay measured before it, after the previous one)")
    ax.set_ylabel("delay (ms)")
    ax.set_xticks(range(1, n + 1), [str(i + 1) for i in range(1, n + 1)])
    ax.set_xlim(0.4, n + 0.6)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    return plots.svg(fig)


_STATE_ORDER = ("closed", "half-open", "half_open", "halfopen", "open")


def _breaker_plot(plots: _Plots, verdict: dict[str, Any]) -> str | None:
    observed = verdict.get("observed") if isinstance(verdict.get("observed"), dict) else {}
    expected = verdict.get("expected") if isinstance(verdict.get("expected"), dict) else {}
    transitions = [t for t in (observed or {}).get("transitions") or [] if isinstance(t, dict)]
    if not transitions:
        return None
    first = str(transitions[0].get("old") or "closed")
    times = [0.0]
    states = [first]
    for t in transitions:
        times.append(_float(t.get("at")))
        states.append(str(t.get("new")))
    names = list(dict.fromkeys([*states, *map(str, (expected or {}).get("states") or [])]))
    names.sort(key=lambda s: (_STATE_ORDER.index(s.lower()) if s.lower() in _STATE_ORDER
                              else len(_STATE_ORDER), s))
    end = max((t for t in times if not math.isnan(t)), default=0.0)
    end = end * 1.15 if end > 0 else 1.0
    times.append(end)
    states.append(states[-1])
    unit, scale = ("ms", 1e3) if end < 1 else ("s", 1.0)
    fig, (ax,) = plots.new(max(1.6, 0.55 * len(names) + 1.0))
    ax.step([t * scale for t in times], [names.index(s) for s in states], where="post",
            color="#6a1b9a", lw=2)
    ax.scatter([t * scale for t in times[1:-1]], [names.index(s) for s in states[1:-1]],
               color="#6a1b9a", zorder=3, s=20)
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(-0.5, len(names) - 0.5)
    ax.set_xlabel(f"time since the breaker was observed ({unit})")
    return plots.svg(fig)


def _fault_windows(events: Sequence[tuple[float, str]]) -> list[tuple[str, float, float | None]]:
    """(label, start, end) of each ``faults[i]`` from its applied/removed events."""
    open_: dict[str, tuple[str, float]] = {}
    out: list[tuple[str, float, float | None]] = []
    for at, text in events:
        m = re.match(r"(applied|removed|healed)\s+(faults\[\d+\])\s*(.*)", text)
        if not m:
            continue
        verb, key, rest = m.groups()
        if verb == "applied":
            if key in open_:
                label, start = open_.pop(key)
                out.append((label, start, at))
            open_[key] = (f"{key} {rest}".strip(), at)
        elif key in open_:
            label, start = open_.pop(key)
            out.append((label, start, at))
    out.extend((label, start, None) for label, start in open_.values())
    return sorted(out, key=lambda w: w[1])


def _timeline_plot(plots: _Plots, events: Sequence[tuple[float, str]]) -> str | None:
    if not events:
        return None
    windows = _fault_windows(events)
    end = max(at for at, _ in events) or 1.0
    rows = max(len(windows), 1)
    fig, (ax,) = plots.new(max(1.5, 0.4 * rows + 1.1))
    for i, (label, start, stop) in enumerate(windows):
        width = (stop if stop is not None else end * 1.05) - start
        ax.barh(i, max(width, end * 0.004), left=start, height=0.6, color="#ffb74d",
                edgecolor="#e65100", hatch=None if stop is not None else "//")
        ax.text(start, i, " " + label[:60], va="center", fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.8, rows - 0.2)
    for n, (at, _) in enumerate(events, start=1):
        ax.axvline(at, color="#555", lw=0.6, ls=":")
        ax.annotate(str(n), (at, rows - 0.2), xytext=(0, -2), textcoords="offset points",
                    ha="center", va="top", fontsize=7, color="#333")
    ax.set_xlim(-end * 0.02, end * 1.08)
    ax.set_xlabel("seconds since the scenario started")
    return plots.svg(fig)


def _shade(ax: Any, record: Any, first: bool) -> None:
    if record.warmup:
        ax.axvspan(0, record.warmup, color="#9e9e9e", alpha=0.18, hatch="..", lw=0,
                   label="warm-up (not judged)" if first else None)
    t = [x for x in record.series.get("t", []) if isinstance(x, (int, float))]
    last = max(t, default=0.0)
    labelled = False
    for stage in record.stages:
        start = max(stage.start, 0.0)
        end = min(stage.end if stage.end is not None else last, last)
        if end <= start:
            continue  # outside the sampled time
        ax.axvspan(start, end, color="#ff9800", alpha=0.18, lw=0,
                   label="fault active" if first and not labelled else None)
        labelled = True


def _soak_plot(plots: _Plots, record: Any, drifts: list[dict[str, Any]]) -> str | None:
    series = record.series
    t = [_float(x) for x in series.get("t", [])]
    if not t:
        return None

    def col(name: str, scale: float = 1.0) -> list[float] | None:
        values = series.get(name)
        if not values or all(v is None for v in values):
            return None
        return [_float(v) * scale for v in values[:len(t)]]

    latency = {n: c for n in _LATENCY if (c := col(n, 1e3)) is not None}
    rate, errors = col("rate"), col("error_rate", 100.0)
    drift_names = {str(d.get("series")) for d in drifts}
    resources = {n: c for n in dict.fromkeys([*_RESOURCES, *sorted(drift_names)])
                 if n not in _LATENCY and n not in ("rate", "error_rate", "rss_bytes")
                 and (c := col(n)) is not None}
    rss = col("rss_bytes", 1 / 2**20)
    panels: list[str] = []
    if latency:
        panels.append("latency")
    if rate or errors:
        panels.append("throughput")
    if resources or rss:
        panels.append("resources")
    if not panels:
        return None
    fig, axes = plots.new(2.2 * len(panels) + 0.4, rows=len(panels))
    where: dict[str, tuple[Any, float]] = {}
    for i, (panel, ax) in enumerate(zip(panels, axes, strict=True)):
        _shade(ax, record, first=i == 0)
        if panel == "latency":
            for (name, c), color in zip(latency.items(), ("#1e88e5", "#fb8c00", "#c62828"),
                                        strict=False):
                ax.plot(t, c, lw=1.1, color=color, label=name.removesuffix("_s"))
                where[name] = (ax, 1e3)
            ax.set_ylabel("latency (ms)")
        elif panel == "throughput":
            if rate:
                ax.plot(t, rate, color="#2e7d32", lw=1.1, label="calls/s")
                where["rate"] = (ax, 1.0)
            ax.set_ylabel("calls/s")
            if errors:
                ax2 = ax.twinx()
                ax2.plot(t, errors, color="#c62828", lw=1.0, ls="--", label="errors %")
                ax2.set_ylabel("errors (%)")
                ax2.set_ylim(bottom=0)
                ax2.legend(loc="upper right", fontsize=8)
                where["error_rate"] = (ax2, 100.0)
        else:
            for name, c in resources.items():
                ax.plot(t, c, lw=1.1, label=name)
                where[name] = (ax, 1.0)
            ax.set_ylabel("count")
            if rss:
                ax2 = ax.twinx()
                ax2.plot(t, rss, color="#616161", lw=1.0, ls="--", label="rss (MiB)")
                ax2.set_ylabel("rss (MiB)")
                ax2.legend(loc="upper right", fontsize=8)
                where["rss_bytes"] = (ax2, 1 / 2**20)
    for drift in drifts:
        name = str(drift.get("series"))
        slope, intercept = _float(drift.get("slope")), _float(drift.get("intercept"))
        if name not in where or math.isnan(slope) or math.isnan(intercept):
            continue
        ax, scale = where[name]
        window = drift.get("window")
        t0, t1 = ((_float(window[0]), _float(window[1]))
                  if isinstance(window, (list, tuple)) and len(window) == 2
                  else (record.warmup, max(x for x in t if not math.isnan(x))))
        ax.plot([t0, t1], [(intercept + slope * t0) * scale, (intercept + slope * t1) * scale],
                color="#000", lw=1.6, ls="-.", label=f"{name} drift fit")
    for ax in axes:
        handles, _ = ax.get_legend_handles_labels()
        if handles:
            ax.legend(loc="upper left", fontsize=8, ncols=min(4, len(handles)))
    axes[-1].set_xlabel("seconds since the run started")
    return plots.svg(fig)


def _merged_plot(plots: _Plots, hists: list[tuple[str, Any]]) -> str | None:
    quantiles = (0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0)
    xs = [-math.log10(max(1 - q / 100, 1e-5)) for q in quantiles]
    fig, (ax,) = plots.new(3.0)
    for name, hist in hists:
        if not hist.count:
            continue
        ys = [(hist.max if q >= 100 else hist.percentile(q)) * 1e3 for q in quantiles]
        merged = name == "merged"
        ax.plot(xs, ys, marker="o", ms=3, lw=2.2 if merged else 1.0,
                color="#000" if merged else None, label=name[-70:])
    ax.set_xticks(xs, [f"{q:g}" for q in quantiles], fontsize=8)
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.legend(loc="lower right", fontsize=8)
    return plots.svg(fig)


# --- HTML pieces --------------------------------------------------------------------

def _table(headers: Sequence[Any], rows: Iterable[Sequence[Any]],
           blame: Iterable[int] = ()) -> str:
    blamed = set(blame)
    out = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr>"]
    for i, row in enumerate(rows):
        cls = ' class="blame"' if i in blamed else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _figure(svg: str | None, caption: str, kind: str) -> str:
    if svg is None:
        return ""
    return (f'<figure class="plot" data-plot="{_e(kind)}">{svg}\n'
            f'<figcaption class="cap">{_e(caption)}</figcaption></figure>')


def _json(value: Any) -> str:
    return _e(json.dumps(value, indent=1, default=str))


_CAPTIONS = {
    "backoff": "Blue bars: the delay the retry policy should wait before each retry "
               "(its band, with jitter); dots: the measured delays, red where outside "
               "the band.",
    "breaker": "The circuit breaker's state over time as observed; each step is a "
               "transition (its trigger is in the table).",
}


def _verdict_html(verdict: dict[str, Any], plots: _Plots) -> str:
    status = str(verdict.get("status") or ("PASSED" if verdict.get("passed") else "FAILED"))
    parts = [f'<div class="verdict"><h3><span class="badge {_STATUS_CLASS.get(status, "skip")}">'
             f'{_e(status)}</span>{_e(verdict.get("kind", "?"))}: '
             f'{_e(verdict.get("claim", ""))}</h3>']
    meta = [("outcome", verdict.get("outcome")), ("tolerance", verdict.get("tolerance")),
            ("severity", verdict.get("severity") if verdict.get("severity") != "error"
             else None)]
    shown = [(k, v) for k, v in meta if v not in (None, "")]
    if shown:
        parts.append('<dl class="meta">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>"
                                                    for k, v in shown) + "</dl>")
    table = verdict.get("table") or []
    if table and isinstance(table[0], list):
        parts.append(_table(table[0], table[1:], verdict.get("blame") or ()))
        if verdict.get("blame"):
            parts.append('<p class="cap">Highlighted rows: where the check failed.</p>')
    notes = [n for n in verdict.get("notes") or [] if n]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    kind = verdict.get("kind")
    if plots.available and kind in _CAPTIONS:
        plot = _backoff_plot if kind == "backoff" else _breaker_plot
        parts.append(_figure(plot(plots, verdict), _CAPTIONS[str(kind)], str(kind)))
    parts.append("<details><summary>expected / observed / data (JSON)</summary><pre>"
                 + _json({k: verdict.get(k) for k in ("expected", "observed", "data")})
                 + "</pre></details>")
    parts.append("</div>")
    return "\n".join(parts)


def _timeline_html(attachment: dict[str, Any], plots: _Plots) -> str:
    events = [(_float(e[0]), str(e[1])) for e in attachment.get("events") or []
              if isinstance(e, (list, tuple)) and len(e) >= 2]
    parts = ["<h3>fault timeline</h3>"]
    if not events:
        parts.append('<p class="note">no fault was applied in this scenario</p>')
        return "\n".join(parts)
    if plots.available:
        parts.append(_figure(_timeline_plot(plots, events),
                             "When each fault of the scenario was applied and removed "
                             "(orange bars; hatched: still active at the end); dotted "
                             "lines: the numbered events below.", "fault-timeline"))
    parts.append(_table(["#", "at", "event"],
                        [(n, f"{at:.3f} s", what) for n, (at, what) in
                         enumerate(events, start=1)]))
    return "\n".join(parts)


def _soak_html(attachment: dict[str, Any], record: Any, error: str | None,
               drifts: list[dict[str, Any]], plots: _Plots) -> str:
    parts = [f"<h3>soak run <code>{_e(attachment.get('file', ''))}</code></h3>"]
    summary = attachment.get("summary") or {}
    if summary:
        parts.append(_table(list(summary), [[_fmt_s(v) if k.endswith("_s")
                                             and k != "elapsed_s" else v
                                             for k, v in summary.items()]]))
    if error:
        parts.append(f'<p class="note">soak record not readable: {_e(error)}</p>')
        return "\n".join(parts)
    if record is None:
        return "\n".join(parts)
    if record.stages:
        parts.append(_table(["fault window", "from", "to"],
                            [(s.label, f"{s.start:.1f} s",
                              "end" if s.end is None else f"{s.end:.1f} s")
                             for s in record.stages]))
    if plots.available:
        caption = ("Per-interval latency percentiles, throughput and error rate, and the "
                   "test process's resources over the run. Orange: a fault was active; "
                   "grey dots: warm-up, ignored by drift verdicts")
        caption += ("; dash-dotted black: the trend a drift verdict fitted." if drifts
                    else ".")
        parts.append(_figure(_soak_plot(plots, record, drifts), caption, "soak"))
    return "\n".join(parts)


def _load_soak(directory: Path, file: Any) -> tuple[Any, str | None]:
    if not isinstance(file, str) or not file:
        return None, "the attachment names no file"
    path = (directory / file)
    try:
        from pytest_resilience.soak.record import load

        return load(path), None
    except (OSError, ValueError, KeyError, TypeError, ImportError) as exc:
        return None, f"{path}: {exc}"


def _drifts_for(verdicts: list[dict[str, Any]], file: str, n_soaks: int) -> list[dict[str, Any]]:
    out = []
    for v in verdicts:
        data = v.get("data")
        if v.get("kind") != "drift" or not isinstance(data, dict) or "series" not in data:
            continue
        target = data.get("file") or data.get("record")
        if n_soaks > 1 and isinstance(target, str) and not file.endswith(target) \
                and not target.endswith(file):
            continue
        out.append(data)
    return out


def _header(results: dict[str, Any]) -> str:
    summary = results.get("summary") or {}
    started = results.get("started")
    when = (datetime.fromtimestamp(started, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            if isinstance(started, (int, float)) else "-")
    exit_status = results.get("exit_status")
    tests = results.get("tests") or []
    outcomes: dict[str, int] = {}
    for t in tests:
        outcomes[str(t.get("outcome"))] = outcomes.get(str(t.get("outcome")), 0) + 1
    ok = exit_status == 0
    rows = [("started", when), ("duration", _fmt_s(results.get("duration_s"))),
            ("seed", results.get("seed")),
            ("pytest exit status", f"{exit_status} ({'ok' if ok else 'not ok'})"),
            ("tests", ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())) or "0")]
    counts = [("verdicts", summary.get("verdicts", 0)), ("passed", summary.get("passed", 0)),
              ("failed", summary.get("failed", 0)), ("warnings", summary.get("warnings", 0)),
              ("not judged", summary.get("not_judged", 0))]
    return "\n".join([
        '<h1>pytest-resilience report</h1>',
        '<p class="cap">Every resilience check (verdict) the tests made: what was claimed, '
        'what was expected, what was measured. A verdict is FAILED when the measurement '
        'broke the claim; highlighted table rows show where.</p>',
        '<dl class="meta">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
        + "</dl>",
        _table([k for k, _ in counts], [[v for _, v in counts]]),
    ])


def _merged_html(soaks: list[tuple[str, Any]], plots: _Plots) -> str:
    from pytest_resilience.soak.hist import Histogram

    merged = Histogram()
    for _, record in soaks:
        merged.add(record.histogram)
    hists = [(name, r.histogram) for name, r in soaks] + [("merged", merged)]
    rows = []
    for name, h in hists:
        rows.append([name, h.count, *(_fmt_s(h.percentile(q)) if h.count else "-"
                                      for q in _PERCENTILES),
                     _fmt_s(h.max) if h.count else "-"])
    parts = ["<h2>latency of all soak runs</h2>",
             '<p class="cap">Every call of every soak run: histograms added (not '
             'percentiles averaged), so the merged row is exact to 3 significant '
             'digits.</p>',
             _table(["run", "calls", *(f"p{q:g}" for q in _PERCENTILES), "max"], rows)]
    if plots.available and merged.count:
        parts.append(_figure(_merged_plot(plots, hists),
                             "Latency by percentile (log scale); black: all runs merged.",
                             "merged-latency"))
    return "\n".join(parts)


def render(results: dict[str, Any], directory: Path) -> str:
    """The report page for ``results`` (the ``results.json`` dict) as HTML text."""
    plots = _Plots()
    tests = [t for t in results.get("tests") or [] if isinstance(t, dict)]
    body = [_header(results)]
    if not plots.available:
        body.append(f'<p class="note">{_e(MATPLOTLIB_NOTE)}</p>')
    if tests:
        body.append('<ul class="toc">' + "".join(
            f'<li><span class="badge {_OUTCOME_CLASS.get(str(t.get("outcome")), "skip")}">'
            f'{_e(t.get("outcome"))}</span><a href="#{_anchor(str(t.get("nodeid")))}">'
            f'{_e(t.get("nodeid"))}</a></li>' for t in tests) + "</ul>")
    soaks: list[tuple[str, Any]] = []
    sections = []
    for test in tests:
        nodeid = str(test.get("nodeid", ""))
        verdicts = [v for v in test.get("verdicts") or [] if isinstance(v, dict)]
        attachments = [a for a in test.get("attachments") or [] if isinstance(a, dict)]
        cls = _OUTCOME_CLASS.get(str(test.get("outcome")), "skip")
        if cls == "pass" and any(v.get("status") == "WARNING" for v in verdicts):
            cls = "warn"
        part = [f'<section class="test {cls}" id="{_anchor(nodeid)}">',
                f'<h2>{_e(nodeid)}</h2>',
                f'<p><span class="badge {cls}">{_e(test.get("outcome"))}</span>'
                f'{len(verdicts)} verdict(s), {_fmt_s(test.get("duration_s"))}</p>']
        part += [_verdict_html(v, plots) for v in verdicts]
        n_soaks = sum(a.get("kind") == "soak" for a in attachments)
        for attachment in attachments:
            kind = attachment.get("kind")
            if kind == "fault-timeline":
                part.append(_timeline_html(attachment, plots))
            elif kind == "soak":
                record, error = _load_soak(directory, attachment.get("file"))
                if record is not None:
                    soaks.append((nodeid, record))
                drifts = _drifts_for(verdicts, str(attachment.get("file", "")), n_soaks)
                part.append(_soak_html(attachment, record, error, drifts, plots))
            else:
                part.append(f"<h3>{_e(kind)}</h3><pre>{_json(attachment)}</pre>")
        part.append("</section>")
        sections.append("\n".join(part))
    if soaks:
        body.append(_merged_html(soaks, plots))
    body.extend(sections)
    if not tests:
        body.append("<p>No tests ran.</p>")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>pytest-resilience report</title>",
        f"<style>{_CSS}</style></head><body><main>",
        *body,
        "</main></body></html>",
        "",
    ])


def write_html(results: dict[str, Any], directory: Path) -> Path:
    """Write ``directory/report.html`` (atomically) for ``results`` and return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "report.html"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(render(results, directory), encoding="utf-8")
    os.replace(tmp, path)
    return path
