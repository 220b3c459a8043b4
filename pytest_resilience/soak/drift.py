"""Drift verdicts on a soak record: they judge the *trend* of a series, not its last value.

A leak shows as a steady climb, not as a high reading: a pool that opened one more
connection once, or a noisy descriptor count, must pass; descriptors or sessions that
climb with every minute (or every hundred calls) must fail. :func:`expect_no_growth`
therefore fails only when three independent signs agree (a significant slope, enough
fitted growth over the judged window, and a later quarter clearly above the first).

* :func:`expect_no_growth` - a counted resource (sessions, descriptors, tasks...) does not
  grow after the warm-up.
* :func:`expect_rss_bounded` - memory at the end stays within a ratio of memory after the
  warm-up.
* :func:`expect_sustained` - a threshold counts as broken only for N consecutive samples.
* :func:`expect_stage_latency` - latency during each fault window, outside them, and the
  recovery time after each fault ends.
* :func:`expect_amplification` - attempts per call from the cumulative counters.

Every function returns one :class:`~pytest_resilience.verdicts.core.Verdict`; it is
recorded and raises :class:`DriftFailed` when failed, or, with ``raise_=False``, is only
returned (neither recorded nor raised: the caller collects it). A series that was not
measured never passes: the verdict fails with an outcome starting ``not measured:``.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from typing import Any, Literal

from pytest_resilience.soak.record import SoakRecord, Stage
from pytest_resilience.verdicts.core import Verdict, VerdictFailed, fmt_s

__all__ = [
    "MIN_SAMPLES",
    "DriftFailed",
    "expect_amplification",
    "expect_no_growth",
    "expect_rss_bounded",
    "expect_stage_latency",
    "expect_sustained",
    "t_quantile",
    "theil_sen",
]

#: Fewer measured samples than this after the warm-up: the trend is "not measured".
MIN_SAMPLES = 5
#: Theil-Sen uses every pair up to this many pairs, else this many random pairs.
MAX_PAIRS = 20_000
#: Fixed seed of the pair subsample (a verdict must be reproducible).
PAIR_SEED = 0x5EED
#: Recovery: back at or below the outside-window median times this...
RECOVERY_FACTOR = 1.5
#: ...for this many consecutive samples.
RECOVERY_SAMPLES = 2

Per = Literal["s", "min", "h", "call"]
_PER_SECONDS = {"s": 1.0, "min": 60.0, "h": 3600.0}

#: Series names in people's words, and whether the words are plural.
_WORDS: dict[str, tuple[str, bool]] = {
    "pg_sessions": ("Postgres sessions", True),
    "fds": ("open file descriptors", True),
    "fds_socket": ("open sockets", True),
    "fds_file": ("open files", True),
    "fds_pipe": ("open pipes", True),
    "fds_other": ("other open descriptors", True),
    "tasks": ("asyncio tasks", True),
    "threads": ("threads", True),
    "rss_bytes": ("memory (RSS)", False),
    "in_flight": ("calls in flight", True),
    "pool_size": ("the pool size", False),
    "pool_idle": ("idle pool connections", True),
    "p50_s": ("median latency", False),
    "p95_s": ("p95 latency", False),
    "p99_s": ("p99 latency", False),
    "max_s": ("the slowest call", False),
    "error_rate": ("the error rate", False),
    "rate": ("throughput", False),
}
#: Series that count things: a growth below 2 of them (one connection added once) is noise.
_COUNTS = frozenset({
    "calls", "errors", "attempts", "in_flight", "fds", "fds_socket", "fds_file", "fds_pipe",
    "fds_other", "threads", "tasks", "pg_sessions", "pool_size", "pool_idle",
})


class DriftFailed(VerdictFailed):
    """A soak verdict failed: a resource grew, a threshold was broken for long, latency
    under faults or recovery was out of bounds, retries amplified the load - or the series
    was not measured."""


# -- statistics ------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betai(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betai(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom.

    Exact to about 1e-10 (bisection on the CDF written with the incomplete beta function;
    no scipy): ``t_quantile(0.975, 1) == 12.706...``, ``t_quantile(0.95, 5) == 2.015...``.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"df must be positive, got {df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    lo, hi = 0.0, max(1.0, statistics.NormalDist().inv_cdf(p))
    while _t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2.0


def theil_sen(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """A robust line ``y = intercept + slope * x``: ``(slope, intercept)``.

    The slope is the median of the pairwise slopes (every pair while there are at most
    :data:`MAX_PAIRS`, else that many pairs drawn with a fixed seed, so the cost stays
    O(n) and the result reproducible); the intercept the median of ``y - slope * x``.
    Pairs with equal ``x`` are skipped. Fewer than 2 distinct ``x``: slope 0.
    """
    n = len(xs)
    slopes: list[float] = []
    if n * (n - 1) // 2 <= MAX_PAIRS:
        for i in range(n):
            xi, yi = xs[i], ys[i]
            for j in range(i + 1, n):
                dx = xs[j] - xi
                if dx != 0:
                    slopes.append((ys[j] - yi) / dx)
    else:
        rng = random.Random(PAIR_SEED)
        for _ in range(MAX_PAIRS):
            i, j = rng.randrange(n), rng.randrange(n)
            dx = xs[j] - xs[i]
            if dx != 0:
                slopes.append((ys[j] - ys[i]) / dx)
    slope = statistics.median(slopes) if slopes else 0.0
    intercept = statistics.median([y - slope * x for x, y in zip(xs, ys, strict=True)]) \
        if n else 0.0
    return float(slope), float(intercept)


def _ols(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope and its standard error (0 for a perfect fit)."""
    n = len(xs)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, math.inf
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    a = my - b * mx
    ssr = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    se = math.sqrt(ssr / (n - 2) / sxx) if n > 2 else math.inf
    return b, se


# -- formatting ------------------------------------------------------------------------------


def _words(series: str) -> tuple[str, bool]:
    base, _, source = series.partition("@")
    words, plural = _WORDS.get(base, (base, False))
    return (f"{words} on {source}" if source else words), plural


def _base(series: str) -> str:
    return series.partition("@")[0]


def _num(value: float) -> str:
    v = abs(value)
    if v >= 100 or v == 0:
        text = f"{value:.0f}"
    elif v >= 10:
        text = f"{value:.1f}"
    elif v >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.2g}"
    if "." in text and "e" not in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _bytes(value: float) -> str:
    v = abs(value)
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if v >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def _value(series: str, value: float | None) -> str:
    """A reading of *series* for people (durations, bytes, percent, counts)."""
    if value is None:
        return "-"
    base = _base(series)
    if base.endswith("_s"):
        return fmt_s(value)
    if base.endswith("_bytes"):
        return _bytes(value)
    if base == "error_rate":
        return f"{value * 100:.3g} %"
    if base in _COUNTS and abs(value) >= 10:
        return f"{value:.0f}"
    return _num(value)


def _signed(series: str, value: float) -> str:
    return ("-" if value < 0 else "+") + _value(series, abs(value))


def _t(t: float) -> str:
    return f"+{t:.1f} s"


def _warmup_words(warmup: float) -> str:
    if warmup <= 0:
        return "over the whole run"
    return f"after the {f'{warmup:g} s' if warmup >= 1 else fmt_s(warmup)} warm-up"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _samples(
    record: SoakRecord, series: str, warmup: float
) -> tuple[list[float], list[float], int, int]:
    """Measured ``(t, value)`` after the warm-up, the missing count there, and the number
    of samples taken before it."""
    ts_all = record.series.get("t") or []
    values = record.column(series)
    ts: list[float] = []
    ys: list[float] = []
    missing = before = 0
    for t, v in zip(ts_all, values, strict=False):
        if t is None:
            continue
        if t < warmup:
            before += 1
            continue
        y = _number(v)
        if y is None:
            missing += 1
            continue
        ts.append(float(t))
        ys.append(y)
    return ts, ys, missing, before


def _why_unmeasured(
    record: SoakRecord, series: str, warmup: float, measured: int, needed: int
) -> str:
    values = record.series.get(series)
    if values is None:
        return f"{series} was not sampled in this record"
    if all(_number(v) is None for v in values):
        return f"{series} was never read (every sample is empty)"
    if measured == 0:
        end = max((t for t in record.series.get("t") or [] if t is not None), default=0.0)
        return (f"no {series} sample {_warmup_words(warmup)} (the run ended at {_t(end)})")
    return (f"only {measured} {series} sample{'s' if measured != 1 else ''} "
            f"{_warmup_words(warmup)} (at least {needed} needed)")


def _finish(verdict: Verdict, raise_: bool) -> Verdict:
    return verdict.check(DriftFailed) if raise_ else verdict


def _not_measured(kind: str, claim: str, reason: str, raise_: bool, *,
                  expected: Any = None, data: dict[str, Any] | None = None) -> Verdict:
    verdict = Verdict(
        kind=kind, claim=claim, passed=False, expected=expected,
        observed={"measured": False, "reason": reason},
        notes=[f"not measured: {reason}; a soak verdict never passes without data"],
        outcome=f"not measured: {reason}", data=dict(data or {}),
    )
    return _finish(verdict, raise_)


# -- 1. no growth ----------------------------------------------------------------------------


def _default_min_growth(series: str, start: float) -> float:
    base = _base(series)
    if base in _COUNTS:
        return 2.0
    if base.endswith("_bytes"):
        return max(float(1 << 20), 0.1 * abs(start))
    if base.endswith("_s"):
        return max(0.001, 0.25 * abs(start))
    if base == "error_rate":
        return 0.01
    return max(1e-9, 0.1 * abs(start))


def _rate_phrase(series: str, slope: float, per: str) -> str:
    if per == "call":
        if 0 < slope < 1 and not _base(series).endswith(("_s", "_bytes")):
            return f"about 1 per {_num(1.0 / slope)} calls"
        return f"about {_value(series, slope)} per call"
    for unit, seconds in (("minute", 60.0), ("hour", 3600.0), ("day", 86400.0)):
        if abs(slope) * seconds >= 1 or unit == "day":
            return f"about {_value(series, slope * seconds)} per {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def expect_no_growth(
    record: SoakRecord,
    series: str,
    *,
    warmup: float | None = None,
    confidence: float = 0.95,
    min_growth: float | None = None,
    per: Per = "s",
    raise_: bool = True,
) -> Verdict:
    """Assert that *series* (``pg_sessions``, ``fds``, ``tasks``...) does not grow after
    the warm-up (*warmup* seconds, default ``record.warmup``).

    The trend is fitted on the measured samples with ``t >= warmup``: a Theil-Sen line
    (median of pairwise slopes, robust to spikes and steps) and the least-squares slope's
    confidence interval at *confidence* (Student's t). The verdict fails only when all
    three hold:

    * the interval lies above zero (its lower end is a one-sided bound at
      ``(1 + confidence) / 2``),
    * the Theil-Sen growth over the judged window (slope x window length) is at least
      *min_growth*,
    * the median of the last quarter of the samples exceeds the first quarter's by at
      least *min_growth*.

    *min_growth* defaults to 2 for counted series (a pool that adds one connection once
    passes), 10 % of the starting level (at least 1 MiB) for bytes, 25 % (at least 1 ms)
    for latencies (per-interval percentiles are noisy), one percentage point for
    ``error_rate``, else 10 % of the starting level. The quarter-median shift must also
    exceed *min_growth* by the noise margin of the two medians (a robust noise scale from
    the residuals around the Theil-Sen line, at *confidence*; zero for a clean series).

    *per* is the unit of the reported slope: ``"s"``, ``"min"``, ``"h"``, or ``"call"``
    (the slope is fitted against the cumulative ``calls`` series instead of time:
    "1 per 100 calls").

    Fewer than :data:`MIN_SAMPLES` measured samples after the warm-up fail as "not
    measured". ``data`` carries the fitted line (``slope`` and ``intercept`` per unit of
    ``x``, ``x`` being ``"t"`` or ``"calls"``) and the judged ``window`` for plots.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if per not in ("s", "min", "h", "call"):
        raise ValueError(f"per must be 's', 'min', 'h' or 'call', got {per!r}")
    if min_growth is not None and min_growth < 0:
        raise ValueError(f"min_growth must not be negative, got {min_growth}")
    w = record.warmup if warmup is None else float(warmup)
    words, plural = _words(series)
    claim = f"{words} {'do' if plural else 'does'} not grow {_warmup_words(w)}"
    ts, ys, missing, _ = _samples(record, series, w)
    xs = ts
    if per == "call":
        calls = dict(zip(record.series.get("t") or [], record.column("calls"), strict=False))
        keep = [i for i, t in enumerate(ts) if _number(calls.get(t)) is not None]
        missing += len(ts) - len(keep)
        ts, ys = [ts[i] for i in keep], [ys[i] for i in keep]
        xs = [float(calls[t]) for t in ts]
        if not keep and record.series.get(series) is not None and any(
                _number(v) is not None for v in record.series[series]):
            return _not_measured("drift", claim, "per='call' needs the calls series, which "
                                 "was not measured", raise_, data={"series": series})
    if len(ys) < MIN_SAMPLES or len(set(xs)) < 2:
        reason = _why_unmeasured(record, series, w, len(ys), MIN_SAMPLES)
        if len(ys) >= MIN_SAMPLES:
            reason = f"{'calls' if per == 'call' else 'time'} did not advance"
        return _not_measured("drift", claim, reason, raise_,
                             expected={"warmup": w}, data={"series": series})

    n = len(ys)
    slope, intercept = theil_sen(xs, ys)
    b, se = _ols(xs, ys)
    if math.isinf(se):
        lo, hi = -math.inf, math.inf
    else:
        half = t_quantile((1.0 + confidence) / 2.0, n - 2) * se
        lo, hi = b - half, b + half
    span = max(xs) - min(xs)
    growth = slope * span
    q = max(1, n // 4)
    start, end = statistics.median(ys[:q]), statistics.median(ys[-q:])
    mg = _default_min_growth(series, start) if min_growth is None else float(min_growth)
    # the quarter medians move by noise alone: require the shift to exceed min_growth by
    # more than that (robust noise scale from the residuals around the Theil-Sen line)
    residuals = [y - intercept - slope * x for x, y in zip(xs, ys, strict=True)]
    mid = statistics.median(residuals)
    noise = 1.4826 * statistics.median([abs(r - mid) for r in residuals])
    margin = statistics.NormalDist().inv_cdf(confidence) * 1.2533 * noise * math.sqrt(2.0 / q)
    significant = lo > 0
    fitted = growth >= mg
    shifted = end - start >= mg + margin
    passed = not (significant and fitted and shifted)

    scale = 1.0 if per == "call" else _PER_SECONDS[per]
    unit = "/call" if per == "call" else f"/{per}"
    pct = f"{confidence * 100:g} %"
    slope_txt = f"{_signed(series, slope * scale)}{unit}"
    ci_txt = f"{pct} CI {_value(series, lo * scale)}\u2013{_value(series, hi * scale)}{unit}"
    y0, y1 = intercept + slope * min(xs), intercept + slope * max(xs)
    if not passed:
        outcome = (f"grew from {_value(series, y0)} to {_value(series, y1)} "
                   f"({slope_txt}, {ci_txt}): {_rate_phrase(series, slope, per)}")
    elif not significant:
        outcome = (f"no significant growth: {_value(series, start)} -> {_value(series, end)} "
                   f"(first/last quarter medians; {slope_txt}, {ci_txt})")
    else:
        outcome = (f"no lasting growth: {_value(series, start)} -> {_value(series, end)} "
                   f"(first/last quarter medians), fitted {_signed(series, growth)} over the "
                   f"window, below the {_value(series, mg)} that counts as growth "
                   f"({slope_txt})")
    mark = "" if passed else "<--"
    t0, t1 = ts[0], ts[-1]
    window = f"{_t(t0)} .. {_t(t1)} ({t1 - t0:.1f} s)"
    if per == "call":
        window += f", {_num(span)} calls"
    rows = [
        ["window", window, "", ""],
        ["samples", f"{n} measured" + (f", {missing} missing" if missing else ""),
         f"< {MIN_SAMPLES}: not measured", ""],
        ["start median (first quarter)", _value(series, start), "", ""],
        ["end median (last quarter)", _value(series, end),
         f"end - start >= {_value(series, mg)}"
         + (f" + {_value(series, margin)} noise" if margin > 0 else ""),
         mark if shifted else ""],
        ["slope (Theil-Sen)", slope_txt, "", ""],
        [f"slope {pct} CI (least squares)", ci_txt.removeprefix(f"{pct} CI "),
         "lower end > 0", mark if significant else ""],
        ["growth over the window", _signed(series, growth), f">= {_value(series, mg)}",
         mark if fitted else ""],
    ]
    notes = [f"series: {series} ({words}); judged {_warmup_words(w)}"]
    if passed and significant:
        notes.append("the slope is significant but the growth is too small to be a leak "
                     "(a step such as one pool connection added once)")
    verdict = Verdict(
        kind="drift",
        claim=claim,
        passed=passed,
        expected={"min_growth": mg, "confidence": confidence, "warmup": w},
        observed={"slope": slope, "ci": [lo, hi], "growth": growth, "start": start,
                  "end": end, "noise": noise, "margin": margin, "samples": n,
                  "missing": missing},
        tolerance=f"growth below {_value(series, mg)}, {pct} confidence",
        headers=["figure", "value", "fails when", ""],
        rows=rows,
        notes=notes,
        data={"series": series, "x": "calls" if per == "call" else "t", "slope": slope,
              "intercept": intercept, "window": [t0, t1], "ci": [lo, hi], "per": per},
        blame=[] if passed else [3, 5, 6],
        outcome=outcome,
    )
    return _finish(verdict, raise_)


# -- 2. RSS bounded --------------------------------------------------------------------------


def expect_rss_bounded(
    record: SoakRecord,
    *,
    ratio: float = 1.3,
    warmup: float | None = None,
    raise_: bool = True,
) -> Verdict:
    """Assert that memory (``rss_bytes``) at the end is at most *ratio* times memory right
    after the warm-up.

    Both levels are medians: of the first 10 % of the measured samples after the warm-up
    and of the last 10 % (at least 3 samples each, so at least 6 are needed, else the
    verdict fails as "not measured").
    """
    if ratio <= 0:
        raise ValueError(f"ratio must be positive, got {ratio}")
    series = "rss_bytes"
    w = record.warmup if warmup is None else float(warmup)
    claim = f"memory (RSS) stays within {ratio:g}x of its size {_warmup_words(w)}"
    ts, ys, missing, _ = _samples(record, series, w)
    if len(ys) < 6:
        return _not_measured("drift", claim, _why_unmeasured(record, series, w, len(ys), 6),
                             raise_, expected={"ratio": ratio}, data={"series": series})
    k = max(3, math.ceil(0.1 * len(ys)))
    start, end = statistics.median(ys[:k]), statistics.median(ys[-k:])
    limit = ratio * start
    observed = end / start if start > 0 else math.inf
    passed = end <= limit
    mark = "" if passed else "<--"
    text = f"{_bytes(start)} -> {_bytes(end)}, {observed:.2f}x (limit {_bytes(limit)})"
    outcome = f"grew {observed:.2f}x: {text}" if not passed else f"bounded: {text}"
    verdict = Verdict(
        kind="drift",
        claim=claim,
        passed=passed,
        expected={"ratio": ratio, "limit_bytes": limit},
        observed={"start": start, "end": end, "ratio": observed, "samples": len(ys)},
        tolerance=f"{ratio:g}x",
        headers=["figure", "value", ""],
        rows=[
            ["window", f"{_t(ts[0])} .. {_t(ts[-1])}", ""],
            ["samples", f"{len(ys)} measured" + (f", {missing} missing" if missing else ""),
             ""],
            [f"after warm-up (median of first {k})", _bytes(start), ""],
            [f"at the end (median of last {k})", _bytes(end), mark],
            ["ratio", f"{observed:.2f}x (limit {ratio:g}x)", mark],
        ],
        notes=[f"{_signed(series, end - start)} between {_t(ts[0])} and {_t(ts[-1])}"],
        data={"series": series, "window": [ts[0], ts[-1]], "start": start, "end": end,
              "limit": limit},
        outcome=outcome,
    )
    return _finish(verdict, raise_)


# -- 3. sustained breach ---------------------------------------------------------------------


def expect_sustained(
    record: SoakRecord,
    series: str,
    *,
    at_most: float,
    consecutive: int = 3,
    warmup: float | None = None,
    raise_: bool = True,
) -> Verdict:
    """Assert that *series* never stays above *at_most* for *consecutive* samples in a row
    (after the warm-up, default ``record.warmup``).

    A single spike passes; a breach counts once it lasts *consecutive* samples. An empty
    sample (``None``) is "not broken" and ends a run. A series with no reading after the
    warm-up fails as "not measured". The table lists every run above the limit, the
    sustained ones marked.
    """
    if consecutive < 1:
        raise ValueError(f"consecutive must be at least 1, got {consecutive}")
    w = record.warmup if warmup is None else float(warmup)
    words, plural = _words(series)
    limit = _value(series, at_most)
    claim = (f"{words} {'stay' if plural else 'stays'} at or below {limit} "
             f"{_warmup_words(w)} (a breach counts after {consecutive} consecutive samples)")
    ts_all = record.series.get("t") or []
    values = record.column(series)
    points = [(float(t), _number(v)) for t, v in zip(ts_all, values, strict=False)
              if t is not None and t >= w]
    if not any(v is not None for _, v in points):
        return _not_measured("sustained-breach", claim,
                             _why_unmeasured(record, series, w, 0, 1), raise_,
                             expected={"at_most": at_most}, data={"series": series})
    runs: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for t, v in points:
        if v is not None and v > at_most:
            current.append((t, v))
            continue
        if current:
            runs.append(current)
        current = []
    if current:
        runs.append(current)
    sustained = [r for r in runs if len(r) >= consecutive]
    passed = not sustained
    rows: list[list[str]] = []
    for run in runs:
        bad = len(run) >= consecutive
        rows.append([_t(run[0][0]), _t(run[-1][0]), str(len(run)),
                     _value(series, max(v for _, v in run)),
                     "sustained" if bad else "spike", "<--" if bad else ""])
    notes = [f"{len(points)} samples judged; {len(runs)} above {limit}"]
    if passed:
        outcome = ("never above " + limit if not runs else
                   f"{len(runs)} short excursion{'s' if len(runs) > 1 else ''} above {limit}, "
                   f"none for {consecutive} consecutive samples")
    else:
        worst = max(sustained, key=len)
        outcome = (f"{series} above {limit} for {len(worst)} consecutive samples from "
                   f"{_t(worst[0][0])} to {_t(worst[-1][0])}")
        if len(sustained) > 1:
            outcome += f" ({len(sustained)} sustained breaches)"
    verdict = Verdict(
        kind="sustained-breach",
        claim=claim,
        passed=passed,
        expected={"at_most": at_most, "consecutive": consecutive},
        observed={"runs": [[r[0][0], r[-1][0], len(r)] for r in runs],
                  "sustained": len(sustained)},
        tolerance=f"{consecutive - 1} consecutive samples above the limit",
        headers=["from", "to", "samples", "worst", "result", ""],
        rows=rows,
        notes=notes,
        data={"series": series, "at_most": at_most,
              "windows": [[r[0][0], r[-1][0]] for r in sustained]},
        outcome=outcome,
    )
    return _finish(verdict, raise_)


# -- 4. latency per stage --------------------------------------------------------------------


def _during(since: float, t: float, stage: Stage) -> bool:
    """The sample at *t* covers ``(since, t]`` (from the sample before it): does that
    overlap the stage? A sample without a span (``since >= t``) is an instant."""
    end = math.inf if stage.end is None else stage.end
    return t > stage.start and since < end if since < t else stage.start <= t <= end


def _spans(record: SoakRecord, series: str, warmup: float) -> list[tuple[float, float,
                                                                             float | None]]:
    """(since, t, value) of each sample at or after *warmup*: a sample covers the time
    since the sample before it (the first, ``record.interval`` before it), so a sampler
    that ran late does not leave a fault window without its last sample."""
    out: list[tuple[float, float, float | None]] = []
    previous: float | None = None
    for t, v in zip(record.series.get("t") or [], record.column(series), strict=False):
        if t is None:
            continue
        t = float(t)
        since = previous if previous is not None else max(0.0, t - record.interval)
        previous = t
        if t >= warmup:
            out.append((since, t, _number(v)))
    return out


def expect_stage_latency(
    record: SoakRecord,
    *,
    series: str = "p95_s",
    at_most_during: float | None = None,
    at_most_outside: float | None = None,
    recover_within: float | None = None,
    warmup: float | None = None,
    raise_: bool = True,
) -> Verdict:
    """Assert latency (*series*, default ``p95_s``) during each fault window
    (``record.stages``), outside them, and the recovery after each fault.

    * ``at_most_during``: the worst sample of each stage (samples whose interval overlaps
      the stage) must be at or below it.
    * ``at_most_outside``: the median of the samples outside every stage (after the
      warm-up) must be at or below it - the steady level the service returns to.
    * ``recover_within``: after a stage ends, the series must be back at or below
      ``at_most_outside`` (if given, else the outside median x 1.5) for 2 consecutive
      samples, at most this many seconds after the end; recovery time is measured from
      the stage end to the first of those samples, before the next stage starts.

    One row per stage. No stages while during/recovery bounds are asked, a stage without
    samples, an unmeasured series or an unknown baseline fail as "not measured".
    """
    if at_most_during is None and at_most_outside is None and recover_within is None:
        raise ValueError("expect_stage_latency() needs at_most_during, at_most_outside "
                         "or recover_within")
    w = record.warmup if warmup is None else float(warmup)
    words, _ = _words(series)
    parts = []
    if at_most_during is not None:
        parts.append(f"at most {_value(series, at_most_during)} during faults")
    if at_most_outside is not None:
        parts.append(f"at most {_value(series, at_most_outside)} outside them")
    text = ", ".join(parts)
    if recover_within is not None:
        text += (" and " if text else "") + f"recovers within {fmt_s(recover_within)} after " \
            "each fault"
    claim = f"{words}: {text}"
    expected = {"at_most_during": at_most_during, "at_most_outside": at_most_outside,
                "recover_within": recover_within}
    spans = _spans(record, series, w)
    if not any(v is not None for _, _, v in spans):
        return _not_measured("stage-latency", claim, _why_unmeasured(record, series, w, 0, 1),
                             raise_, expected=expected, data={"series": series})
    stages = sorted(record.stages, key=lambda s: s.start)
    if not stages and (at_most_during is not None or recover_within is not None):
        return _not_measured("stage-latency", claim, "the record has no stages (no fault "
                             "window was marked during the run)", raise_, expected=expected,
                             data={"series": series})
    outside = [v for since, t, v in spans
               if v is not None and not any(_during(since, t, s) for s in stages)]
    outside_median = statistics.median(outside) if outside else None
    baseline: float | None
    if at_most_outside is not None:
        baseline = at_most_outside
    else:
        baseline = None if outside_median is None else outside_median * RECOVERY_FACTOR
    failures: list[str] = []
    unmeasured: list[str] = []
    if at_most_outside is not None:
        if outside_median is None:
            unmeasured.append("no sample outside the fault windows")
        elif outside_median > at_most_outside:
            failures.append(f"outside faults the median was {_value(series, outside_median)} "
                            f"(limit {_value(series, at_most_outside)})")

    rows: list[list[str]] = []
    blame: list[int] = []
    observed_stages: list[dict[str, Any]] = []
    for index, stage in enumerate(stages):
        during = [v for since, t, v in spans if v is not None and _during(since, t, stage)]
        worst = max(during) if during else None
        med = statistics.median(during) if during else None
        bad: list[str] = []
        recovery: float | None = None
        recovery_txt = "-"
        if at_most_during is not None:
            if worst is None:
                unmeasured.append(f"no sample during {stage.label!r}")
                bad.append("not measured")
            elif worst > at_most_during:
                failures.append(f"during {stage.label!r} {series} reached "
                                f"{_value(series, worst)} (limit "
                                f"{_value(series, at_most_during)})")
                bad.append("too slow")
        if recover_within is not None or baseline is not None:
            recovery, recovery_txt = _recovery(spans, stage, stages, baseline)
        if recover_within is not None:
            if baseline is None:
                if not any("baseline" in u for u in unmeasured):
                    unmeasured.append("no baseline: no sample outside the fault windows")
                bad.append("not measured")
            elif stage.end is None:
                unmeasured.append(f"{stage.label!r} was still active when the run ended")
                bad.append("not measured")
            elif recovery is None:
                failures.append(f"{series} did not recover after {stage.label!r} "
                                f"({recovery_txt})")
                bad.append("no recovery")
            elif recovery > recover_within + 1e-9:
                failures.append(f"recovery after {stage.label!r} took {fmt_s(recovery)} "
                                f"(limit {fmt_s(recover_within)})")
                bad.append("slow recovery")
        end_txt = "end of run" if stage.end is None else _t(stage.end)
        rows.append([stage.label, f"{_t(stage.start)} .. {end_txt}", str(len(during)),
                     _value(series, med), _value(series, worst), recovery_txt,
                     ", ".join(bad) or "ok", "<--" if bad else ""])
        if bad:
            blame.append(index)
        observed_stages.append({"label": stage.label, "start": stage.start, "end": stage.end,
                                "samples": len(during), "median": med, "worst": worst,
                                "recovery_s": recovery})

    passed = not failures and not unmeasured
    if unmeasured:
        outcome = "not measured: " + "; ".join(unmeasured)
        if failures:
            outcome += "; " + "; ".join(failures)
    elif failures:
        outcome = "; ".join(failures)
    else:
        bits = []
        worst_all = [s["worst"] for s in observed_stages if s["worst"] is not None]
        if worst_all:
            bits.append(f"worst during faults {_value(series, max(worst_all))}")
        if outside_median is not None:
            bits.append(f"{_value(series, outside_median)} outside them")
        recs = [s["recovery_s"] for s in observed_stages if s["recovery_s"] is not None]
        if recover_within is not None and recs:
            bits.append(f"recovered within {fmt_s(max(recs))}")
        outcome = ", ".join(bits)
    notes = [f"outside the fault windows: {len(outside)} samples, median "
             f"{_value(series, outside_median)}"]
    if baseline is not None:
        how = "at_most_outside" if at_most_outside is not None else \
            f"outside median x {RECOVERY_FACTOR:g}"
        notes.append(f"recovered = at or below {_value(series, baseline)} ({how}) for "
                     f"{RECOVERY_SAMPLES} consecutive samples")
    verdict = Verdict(
        kind="stage-latency",
        claim=claim,
        passed=passed,
        expected=expected,
        observed={"outside_median": outside_median, "stages": observed_stages},
        headers=["stage", "window", "samples", "median", "worst", "recovery", "result", ""],
        rows=rows,
        notes=notes,
        data={"series": series, "baseline": baseline,
              "windows": [[s.start, s.end] for s in stages]},
        blame=blame,
        outcome=outcome,
    )
    return _finish(verdict, raise_)


def _recovery(
    spans: list[tuple[float, float, float | None]], stage: Stage, stages: list[Stage],
    baseline: float | None,
) -> tuple[float | None, str]:
    """Seconds from the stage end to the first of RECOVERY_SAMPLES samples at or below the
    baseline (searched until the next stage starts), and its text."""
    if stage.end is None:
        return None, "still active"
    if baseline is None:
        return None, "no baseline"
    end = stage.end
    later = [s.start for s in stages if s.start > end]
    stop = min(later) if later else math.inf
    after = [(t, v) for since, t, v in spans if t > end and t < stop
             and not any(_during(since, t, s) for s in stages)]
    for i in range(len(after) - RECOVERY_SAMPLES + 1):
        run = after[i:i + RECOVERY_SAMPLES]
        if all(v is not None and v <= baseline for _, v in run):
            took = run[0][0] - end
            return took, fmt_s(took)
    return None, "not before the next fault" if later else "not before the run ended"


# -- 5. amplification ------------------------------------------------------------------------


def _at(points: list[tuple[float, float, float]], t: float, *, before: bool) -> tuple[float, float]:
    """Cumulative (calls, attempts) at the last sample <= t (``before``; 0, 0 when none)
    or the first sample >= t (else the last sample)."""
    if before:
        found = [(c, a) for ts, c, a in points if ts <= t]
        return found[-1] if found else (0.0, 0.0)
    found = [(c, a) for ts, c, a in points if ts >= t]
    return found[0] if found else (points[-1][1], points[-1][2])


def expect_amplification(
    record: SoakRecord,
    *,
    at_most: float,
    during_stages: bool = False,
    raise_: bool = True,
) -> Verdict:
    """Assert that retries do not cause a request explosion: attempts that reached the
    watched backends per completed call are at most *at_most*.

    From the cumulative ``attempts`` and ``calls`` series: over the whole run (counters
    start at 0), or with ``during_stages`` only over the fault windows (the delta from the
    last sample at or before each stage start to the first at or after its end; one row
    per stage). No ``attempts`` or ``calls`` series, or no call completed in the judged
    window, fails as "not measured".
    """
    if at_most <= 0:
        raise ValueError(f"at_most must be positive, got {at_most}")
    where = " during faults" if during_stages else ""
    claim = f"retries do not cause a request explosion: at most {at_most:g} attempts per " \
        f"call{where}"
    ts_all = record.series.get("t") or []
    points: list[tuple[float, float, float]] = []
    for t, c, a in zip(ts_all, record.column("calls"), record.column("attempts"),
                       strict=False):
        cn, an = _number(c), _number(a)
        if t is not None and cn is not None and an is not None:
            points.append((float(t), cn, an))
    expected = {"at_most": at_most, "during_stages": during_stages}
    if not points:
        missing = [s for s in ("attempts", "calls")
                   if all(_number(v) is None for v in record.column(s))]
        reason = (f"no {' or '.join(missing)} series in the record" if missing
                  else "attempts and calls were never read at the same sample")
        return _not_measured("amplification", claim, reason, raise_, expected=expected)
    rows: list[list[str]] = []
    windows: list[tuple[float, float, str]] = []
    if during_stages:
        if not record.stages:
            return _not_measured("amplification", claim, "the record has no stages (no "
                                 "fault window was marked during the run)", raise_,
                                 expected=expected)
        for stage in sorted(record.stages, key=lambda s: s.start):
            windows.append((stage.start, math.inf if stage.end is None else stage.end,
                            stage.label))
    else:
        windows.append((0.0, points[-1][0], "whole run"))
    calls = attempts = 0.0
    for start, end, label in windows:
        c0, a0 = _at(points, start, before=True) if start > 0 else (0.0, 0.0)
        c1, a1 = _at(points, end, before=False)
        dc, da = c1 - c0, a1 - a0
        calls += dc
        attempts += da
        ratio = da / dc if dc > 0 else math.inf
        end_txt = "end of run" if math.isinf(end) else _t(end)
        rows.append([label, f"{_t(start)} .. {end_txt}", f"{dc:.0f}", f"{da:.0f}",
                     f"{ratio:.2f}" if dc > 0 else "-",
                     "<--" if ratio > at_most + 1e-12 else ""])
    if calls <= 0:
        return _not_measured("amplification", claim,
                             f"no call completed{where or ' during the run'}", raise_,
                             expected=expected)
    figure = attempts / calls
    passed = figure <= at_most + 1e-12
    outcome = f"{figure:.2f} attempts per call{where} (limit {at_most:g})"
    if not passed:
        outcome = f"request explosion: {outcome}"
    verdict = Verdict(
        kind="amplification",
        claim=claim,
        passed=passed,
        expected=expected,
        observed={"amplification": figure, "attempts": attempts, "calls": calls},
        tolerance=f"at most {at_most:g}x",
        headers=["window", "span", "calls", "attempts", "per call", ""],
        rows=rows,
        notes=[f"{attempts:.0f} attempts reached the watched backends for {calls:.0f} "
               f"completed calls{where}"],
        data={"series": "attempts", "windows": [[s, e] for s, e, _ in windows],
              "amplification": figure},
        blame=[] if passed else [i for i, r in enumerate(rows) if r[-1]] or None,
        outcome=outcome,
    )
    return _finish(verdict, raise_)
