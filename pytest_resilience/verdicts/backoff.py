"""Backoff models and the curve verdict.

A :class:`BackoffModel` says which delay (or jitter band) a retry library
should wait before retry *n* (``n = 1`` is the wait after the first failed
attempt). :func:`expect_backoff` compares a :class:`~pytest_resilience.observe.attempts.Timeline`
with a model and fails with a table (attempt, expected delay or band,
measured delay, off by) that also names the simple model the measurements fit.
:func:`expect_jitter` compares the delays of *several* timelines retry by retry and
fails when they are in lock-step (a curve without jitter lies inside a jitter band,
so :func:`expect_backoff` alone cannot tell).

Windows: on the real clock a measured delay passes when it lies in
``[lo - 2 ms, hi + 15 ms]`` (:data:`REAL_TOLERANCE`): timers never fire
early by more than clock granularity, but a loaded machine wakes late, and a
request log adds one round trip. On a virtual clock and for requested waits
the comparison is exact (float rounding only).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, Protocol

from pytest_resilience.verdicts.core import Tolerance, Verdict, VerdictFailed, fmt_s

if TYPE_CHECKING:
    from pytest_resilience.observe.attempts import Timeline

__all__ = [
    "REAL_TOLERANCE",
    "BackoffMismatch",
    "BackoffModel",
    "JitterMismatch",
    "amplification",
    "backoff_expo",
    "constant",
    "decorrelated",
    "expect_amplification",
    "expect_backoff",
    "expect_jitter",
    "exponential",
    "fit_simple_model",
    "jitter_threshold",
    "linear",
    "stamina_default",
    "tenacity_wait_exponential",
    "tenacity_wait_exponential_jitter",
    "tenacity_wait_random_exponential",
]

Growth = Literal["constant", "linear", "exponential"]
Jitter = Literal["none", "full", "equal", "decorrelated", "additive", "relative"]

#: Default window on the real clock: 2 ms early, 15 ms late.
REAL_TOLERANCE = Tolerance(early=0.002, late=0.015)
EXACT = Tolerance()


@dataclass(frozen=True)
class BackoffModel:
    """A backoff curve, its cap/floor and its jitter.

    The deterministic part for retry ``n >= 1``:

    * constant: ``initial``
    * linear: ``initial + step * (n - 1)`` (``step`` is stored in ``multiplier``)
    * exponential: ``initial * multiplier ** (n - 1)``

    then clamped to ``[floor, cap]`` *before* the jitter, or *after* it when
    ``cap_after_jitter`` (tenacity ``wait_exponential_jitter``, stamina).
    Jitter of a delay ``t``: none ``t``; full ``U(full_low, t)``; equal
    ``t/2 + U(0, t/2)``; additive ``t + U(0, jitter_max)``; relative
    ``t * U(1 - jitter_ratio, 1 + jitter_ratio)`` (``delay x (1 +- 10 %)``);
    decorrelated (AWS) ``min(cap, U(initial, 3 * previous))``, where *previous* is the
    previous *measured* delay, so its band depends on the point before it.
    """

    growth: Growth
    initial: float
    multiplier: float = 2.0
    cap: float = math.inf
    floor: float = 0.0
    jitter: Jitter = "none"
    jitter_max: float = 0.0
    full_low: float = 0.0
    cap_after_jitter: bool = False
    label: str = ""
    jitter_ratio: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.jitter_ratio <= 1.0:
            raise ValueError(f"jitter_ratio must be in [0, 1], got {self.jitter_ratio}")
        if self.jitter == "relative" and not self.jitter_ratio:
            raise ValueError('jitter="relative" needs a jitter_ratio > 0 (0.1 means +-10 %)')

    def raw(self, n: int) -> float:
        """The curve for retry *n* before cap, floor and jitter."""
        if n < 1:
            raise ValueError(f"retry numbers start at 1, got {n}")
        if self.growth == "constant":
            return self.initial
        if self.growth == "linear":
            return self.initial + self.multiplier * (n - 1)
        try:
            return self.initial * self.multiplier ** (n - 1)
        except OverflowError:
            return math.inf

    def _clamp(self, value: float) -> float:
        return max(self.floor, min(self.cap, value))

    def band(self, n: int, previous: float | None = None) -> tuple[float, float]:
        """The interval the wait before retry *n* must lie in.

        ``previous`` is the previous actual delay (only decorrelated jitter uses it).
        """
        if self.jitter == "decorrelated":
            prev = self.initial if previous is None else previous
            lo = min(self.cap, self.initial)
            return lo, max(lo, min(self.cap, 3.0 * prev))
        t = self.raw(n) if self.cap_after_jitter else self._clamp(self.raw(n))
        if self.jitter == "none":
            lo, hi = t, t
        elif self.jitter == "full":
            lo, hi = min(self.full_low, t), t
        elif self.jitter == "equal":
            lo, hi = t / 2.0, t
        elif self.jitter == "relative":
            lo, hi = t * (1.0 - self.jitter_ratio), t * (1.0 + self.jitter_ratio)
        else:  # additive
            lo, hi = t, t + self.jitter_max
        if self.cap_after_jitter:
            lo, hi = self._clamp(lo), self._clamp(hi)
        return lo, hi

    def sample(
        self, n: int, previous: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Draw a delay for retry *n* the way the library would."""
        lo, hi = self.band(n, previous)
        if lo == hi:
            return lo
        draw = (rng or random).uniform
        if self.jitter == "additive" and self.cap_after_jitter:
            return self._clamp(self.raw(n) + draw(0.0, self.jitter_max))
        return draw(lo, hi)

    def samples(self, retries: int, rng: random.Random | None = None) -> list[float]:
        """A whole curve of *retries* delays."""
        out: list[float] = []
        for n in range(1, retries + 1):
            out.append(self.sample(n, out[-1] if out else None, rng))
        return out

    @property
    def exact(self) -> bool:
        """True when the model has no jitter (one value per retry)."""
        return self.jitter == "none"

    def describe(self) -> str:
        """``exponential 20 ms x 2^(n-1), cap 1.000 s, full jitter``."""
        if self.label:
            return self.label
        return self._shape()

    def _shape(self) -> str:
        if self.jitter == "decorrelated":
            return (
                f"decorrelated jitter U({fmt_s(self.initial)}, 3 x previous), cap {fmt_s(self.cap)}"
            )
        if self.growth == "constant":
            text = f"constant {fmt_s(self.initial)}"
        elif self.growth == "linear":
            text = f"linear {fmt_s(self.initial)} + {fmt_s(self.multiplier)} x (n-1)"
        else:
            text = f"exponential {fmt_s(self.initial)} x {self.multiplier:.3g}^(n-1)"
        if math.isfinite(self.cap):
            text += f", cap {fmt_s(self.cap)}"
        if self.floor > 0:
            text += f", floor {fmt_s(self.floor)}"
        if self.jitter == "full":
            text += ", full jitter" + (f" from {fmt_s(self.full_low)}" if self.full_low else "")
        elif self.jitter == "equal":
            text += ", equal jitter"
        elif self.jitter == "additive":
            text += f", + U(0, {fmt_s(self.jitter_max)}) jitter"
        elif self.jitter == "relative":
            text += f", +-{self.jitter_ratio * 100:.3g} % jitter"
        if self.jitter != "none" and math.isfinite(self.cap):
            text += " (cap after jitter)" if self.cap_after_jitter else " (cap before jitter)"
        return text

    def __str__(self) -> str:
        return self.describe()


# -- generic constructors ----------------------------------------------------------------


def constant(
    delay: float, *, jitter: Jitter = "none", jitter_max: float = 0.0, jitter_ratio: float = 0.0
) -> BackoffModel:
    """The same wait before every retry (``jitter="relative", jitter_ratio=0.1``: +-10 %)."""
    return BackoffModel(
        "constant", delay, jitter=jitter, jitter_max=jitter_max, jitter_ratio=jitter_ratio
    )


def linear(
    initial: float,
    step: float,
    *,
    cap: float = math.inf,
    jitter: Jitter = "none",
    jitter_max: float = 0.0,
    jitter_ratio: float = 0.0,
) -> BackoffModel:
    """``initial + step * (n - 1)``, capped, with the given jitter."""
    return BackoffModel(
        "linear", initial, multiplier=step, cap=cap, jitter=jitter, jitter_max=jitter_max,
        jitter_ratio=jitter_ratio,
    )


def exponential(
    initial: float,
    multiplier: float = 2.0,
    *,
    cap: float = math.inf,
    floor: float = 0.0,
    jitter: Jitter = "none",
    jitter_max: float = 0.0,
    cap_after_jitter: bool = False,
    jitter_ratio: float = 0.0,
) -> BackoffModel:
    """``initial * multiplier ** (n - 1)``, clamped, with the given jitter.

    ``jitter="relative", jitter_ratio=0.1``: each delay is ``t * U(0.9, 1.1)``.
    """
    return BackoffModel(
        "exponential",
        initial,
        multiplier,
        cap=cap,
        floor=floor,
        jitter=jitter,
        jitter_max=jitter_max,
        cap_after_jitter=cap_after_jitter,
        jitter_ratio=jitter_ratio,
    )


def decorrelated(base: float, cap: float = math.inf) -> BackoffModel:
    """AWS decorrelated jitter: ``min(cap, U(base, 3 * previous))``."""
    return BackoffModel("exponential", base, 3.0, cap=cap, jitter="decorrelated")


# -- the libraries' own strategies -------------------------------------------------------


def tenacity_wait_exponential(
    multiplier: float = 1, max: float = math.inf, exp_base: float = 2, min: float = 0
) -> BackoffModel:
    """tenacity ``wait_exponential``: ``clamp(multiplier * exp_base^(n-1), min, max)``."""
    model = exponential(multiplier, exp_base, cap=max, floor=min)
    return replace(model, label=f"tenacity wait_exponential: {model._shape()}")


def tenacity_wait_random_exponential(
    multiplier: float = 1, max: float = math.inf, exp_base: float = 2, min: float = 0
) -> BackoffModel:
    """tenacity ``wait_random_exponential``: ``U(min, clamp(multiplier * exp_base^(n-1)))``."""
    model = replace(
        exponential(multiplier, exp_base, cap=max, floor=min, jitter="full"), full_low=min
    )
    return replace(model, label=f"tenacity wait_random_exponential: {model._shape()}")


def tenacity_wait_exponential_jitter(
    multiplier: float = 1,
    max: float = math.inf,
    exp_base: float = 2,
    jitter: float = 1,
    min: float = 0,
) -> BackoffModel:
    """tenacity ``wait_exponential_jitter``: ``clamp(multiplier * base^(n-1) + U(0, jitter))``."""
    model = exponential(
        multiplier,
        exp_base,
        cap=max,
        floor=min,
        jitter="additive",
        jitter_max=jitter,
        cap_after_jitter=True,
    )
    return replace(model, label=f"tenacity wait_exponential_jitter: {model._shape()}")


def backoff_expo(
    base: float = 2, factor: float = 1, max_value: float | None = None, *, full_jitter: bool = True
) -> BackoffModel:
    """backoff ``expo`` (first wait = factor); its default ``full_jitter`` applies after the cap.

    backoff's ``max_time`` may shorten the last wait; this model does not know it.
    """
    cap = math.inf if max_value is None else max_value
    model = exponential(factor, base, cap=cap, jitter="full" if full_jitter else "none")
    return replace(model, label=f"backoff expo: {model._shape()}")


def stamina_default(
    wait_initial: float = 0.1,
    wait_max: float = 5.0,
    wait_jitter: float = 1.0,
    wait_exp_base: float = 2,
) -> BackoffModel:
    """stamina: ``min(wait_max, wait_initial * wait_exp_base^(n-1) + U(0, wait_jitter))``."""
    model = exponential(
        wait_initial,
        wait_exp_base,
        cap=wait_max,
        jitter="additive" if wait_jitter else "none",
        jitter_max=wait_jitter,
        cap_after_jitter=True,
    )
    return replace(model, label=f"stamina: {model._shape()}")


# -- fitting: which simple curve do the measurements look like? ------------------------------


def fit_simple_model(
    delays: Sequence[float], *, jitter_ratio: float = 0.0
) -> BackoffModel | None:
    """The simplest of constant / exponential (capped or not) / linear that fits *delays*.

    Returns the closest when none fits. ``None`` for fewer than two delays.

    The curves are fitted robustly (Theil-Sen: medians of pairwise slopes), so one late
    point does not bend them. A fit is accepted when every point is within 10 % (+ 2 ms,
    less for millisecond curves) of its band; simpler shapes win. A growing shape must
    rise by more than its scatter, so jitter around a constant is never called "linear".
    Then, in turn: the simplest shape that fits all points but one; a constant with
    relative jitter (``+- r``, r <= 50 %); the closest shape.

    ``jitter_ratio``: the measured delays carry relative jitter ``delay x (1 +- r)`` (the
    claimed model's): the shapes are compared with those jitter bands.
    """
    fit = _fit(delays, jitter_ratio)
    return fit[0] if fit is not None else None


_FitHow = Literal["all", "all but one", "jitter", "closest"]


def _theil_sen(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Slope and intercept from the medians of the pairwise slopes (robust to one outlier)."""
    slopes = [
        (ys[j] - ys[i]) / (xs[j] - xs[i])
        for i in range(len(xs))
        for j in range(i + 1, len(xs))
        if xs[j] != xs[i]
    ]
    if not slopes:
        return 0.0, statistics.median(ys)
    slope = statistics.median(slopes)
    return slope, statistics.median(y - slope * x for x, y in zip(xs, ys, strict=True))


def _with_ratio(model: BackoffModel, ratio: float) -> BackoffModel:
    return replace(model, jitter="relative", jitter_ratio=ratio) if ratio > 0 else model


def _fit(
    delays: Sequence[float], jitter_ratio: float = 0.0
) -> tuple[BackoffModel, _FitHow, int | None] | None:
    """The fitted model, how it fits, and the index of the point left out (if any)."""
    if len(delays) < 2:
        return None
    ns = list(range(1, len(delays) + 1))
    growing: list[BackoffModel] = []
    if all(d > 0 for d in delays):
        k, c = _theil_sen(ns, [math.log(d) for d in delays])
        growing.append(exponential(math.exp(c + k), math.exp(k)))
        top = max(delays)
        rising = [(n, d) for n, d in zip(ns, delays, strict=True) if d < 0.95 * top]
        if len(rising) >= 2 and len(rising) <= len(delays) - 2:  # a plateau: a cap
            k, c = _theil_sen([n for n, _ in rising], [math.log(d) for _, d in rising])
            growing.append(exponential(math.exp(c + k), math.exp(k), cap=top))
    slope, intercept = _theil_sen(ns, list(delays))
    growing.append(linear(intercept + slope, slope))
    middle = statistics.median(delays)
    candidates = [_with_ratio(m, jitter_ratio) for m in [constant(middle), *growing]]

    slack = min(0.002, 0.1 * abs(middle))

    def misses(model: BackoffModel) -> list[float]:
        out: list[float] = []
        for n, d in zip(ns, delays, strict=True):
            lo, hi = model.band(n)
            gap = lo - d if d < lo else (d - hi if d > hi else 0.0)
            out.append(gap / (0.1 * abs(hi) + slack + 1e-12))
        return out

    def trend(model: BackoffModel) -> bool:
        """A growing shape must rise by more than the scatter around it (and than jitter)."""
        if model.growth == "constant":
            return True
        rise = abs(model.band(len(delays))[0] - model.band(1)[0]) / max(
            1.0 - model.jitter_ratio, 1e-12
        )
        scatter = max(
            abs(d - sum(model.band(n)) / 2.0) for n, d in zip(ns, delays, strict=True)
        )
        return rise > 2.0 * scatter

    # a constant wins when it fits; else the growing shape that fits best
    if max(misses(candidates[0])) <= 1.0:
        return candidates[0], "all", None
    fits = [m for m in candidates[1:] if max(misses(m)) <= 1.0 and trend(m)]
    if fits:
        return min(fits, key=lambda m: max(misses(m))), "all", None
    if len(delays) >= 4:
        loo: list[tuple[int, float, BackoffModel, int]] = []
        for rank, model in enumerate(candidates):
            worst = misses(model)
            bad = [i for i, w in enumerate(worst) if w > 1.0]
            if len(bad) == 1 and trend(model):
                rest = max(w for i, w in enumerate(worst) if i != bad[0])
                loo.append((min(rank, 1), rest, model, bad[0]))
        if loo:
            _, _, model, left_out = min(loo, key=lambda t: (t[0], t[1]))
            return model, "all but one", left_out
    if not jitter_ratio and all(d > 0 for d in delays):
        ratio = (max(delays) - min(delays)) / (max(delays) + min(delays))
        if ratio <= 0.5:
            step = 0.05
            ratio = math.ceil(ratio / step - 1e-9) * step
            centre = (max(delays) + min(delays)) / 2.0
            return constant(centre, jitter="relative", jitter_ratio=ratio), "jitter", None
    return min(candidates, key=lambda m: max(misses(m))), "closest", None


def _least_squares(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, my
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope, my - slope * mx


# -- the verdict ---------------------------------------------------------------------------


class HasTimelines(Protocol):
    """Anything that keeps one timeline per logical call (``track()``, the wait recorders)."""

    @property
    def timelines(self) -> list[Timeline]: ...


class BackoffMismatch(VerdictFailed):
    """The measured retry curve is not the claimed one."""


def _band_text(lo: float, hi: float) -> str:
    return fmt_s(lo) if lo == hi else f"{fmt_s(lo)} .. {fmt_s(hi)}"


def expect_backoff(
    timeline: Timeline,
    model: BackoffModel,
    *,
    attempts: int | None = None,
    tolerance: Tolerance | float | tuple[float, float] | None = None,
) -> Verdict:
    """Assert that *timeline*'s delays follow *model* (and its attempt count is *attempts*).

    Raises :class:`BackoffMismatch` with a table when they do not; returns the
    passing :class:`Verdict` otherwise. ``tolerance`` defaults to
    :data:`REAL_TOLERANCE` on the real clock and to exact otherwise; a float
    means ``±x``, a pair ``(early, late)``.
    """
    tol = Tolerance.coerce(tolerance, EXACT if timeline.exact else REAL_TOLERANCE)
    delays = timeline.delays()
    expected_retries = (attempts - 1) if attempts is not None else len(delays)
    rows: list[list[str]] = []
    bands: list[tuple[float, float]] = []
    off: list[float | None] = []
    passed = attempts is None or timeline.count == attempts
    previous: float | None = None
    for i in range(max(len(delays), expected_retries)):
        n = i + 1
        lo, hi = model.band(n, previous)
        bands.append((lo, hi))
        measured = delays[i] if i < len(delays) else None
        if measured is None:
            rows.append([str(n + 1), _band_text(lo, hi), "(missing)", "no such attempt", "<--"])
            off.append(None)
            continue
        if i >= expected_retries:
            rows.append([str(n + 1), "(none: too many)", fmt_s(measured), "extra attempt", "<--"])
            off.append(None)
            passed = False
            previous = measured
            continue
        w_lo, w_hi = tol.widen(lo, hi)
        if measured < w_lo:
            d: float = measured - lo
        elif measured > w_hi:
            d = measured - hi
        else:
            d = 0.0
        off.append(d)
        ok = d == 0.0
        passed = passed and ok
        shown = "ok" if ok else ("+" if d > 0 else "") + fmt_s(d)
        rows.append([str(n + 1), _band_text(lo, hi), fmt_s(measured), shown, "" if ok else "<--"])
        # decorrelated jitter: the next band is 3 x this wait; a wake-up up to `early`
        # sooner than asked must not narrow it (a late one only widens it)
        previous = measured + tol.early

    count_text = f"{attempts} attempts" if attempts is not None else f"{timeline.count} attempts"
    claim = f"{model.describe()}; {count_text}"
    notes: list[str] = []
    if attempts is not None and timeline.count != attempts:
        notes.append(
            f"expected {attempts} attempts, observed {timeline.count}: "
            f"{_reached_text(timeline.count)}, not {_times(attempts)}"
        )
    clock_text = {
        "real": "measured on the real clock",
        "virtual": "virtual clock (exact)",
        "requested": "exact",
    }[timeline.clock]
    notes.append(f"source: {timeline.source or 'timeline'}, {clock_text}")
    judged = [(i, d) for i, d in enumerate(off) if d is not None]
    wrong = [(i, d) for i, d in judged if d]
    fit = _fit(delays, model.jitter_ratio if model.jitter == "relative" else 0.0)
    if len(wrong) == 1 and len(judged) >= 3:
        i, d = wrong[0]
        text = (
            f"a single point is off: retry {i + 1} (attempt {i + 2}) came {fmt_s(abs(d))} "
            f"{'late' if d > 0 else 'early'}"
        )
        if d > 0 and timeline.clock == "real":
            text += " (a late wake-up on a busy machine?)"
        notes.append(text + f"; the other {len(judged) - 1} delays follow the claimed curve")
        if fit is not None and fit[1] == "all" and d < 0:
            # every point, the early one included, lies on another simple curve
            notes.append(f"the measured delays look like {fit[0].describe()}, not {model._shape()}")
    elif wrong and fit is not None:
        fitted, how, left_out = fit
        text = f"the measured delays look like {fitted.describe()}, not {model._shape()}"
        if how == "all but one" and left_out is not None:
            text += f" (except retry {left_out + 1})"
        notes.append(text)
    verdict = Verdict(
        kind="backoff",
        claim=claim,
        passed=passed,
        expected={"model": model.describe(), "attempts": attempts, "bands": bands},
        observed={"attempts": timeline.count, "delays": delays},
        tolerance=str(tol),
        headers=["attempt", "expected delay", "measured", "off by", ""],
        rows=rows,
        notes=notes,
        data={"clock": timeline.clock, "off_by": off},
    )
    return verdict.check(BackoffMismatch)


# -- jitter across timelines -----------------------------------------------------------------

#: Default chance that :func:`expect_jitter` fails a correctly jittered policy (all retries
#: of one verdict together).
JITTER_FALSE_ALARM = 1e-6


class JitterMismatch(VerdictFailed):
    """Retries of several clients are in lock-step (or jitter could not be measured)."""


def jitter_threshold(samples: int, false_alarm: float = JITTER_FALSE_ALARM) -> float:
    """The smallest spread, as a fraction of the jitter band, that *samples* draws show
    except with probability *false_alarm*.

    The spread (max - min) of ``N`` independent draws, each uniform on an interval at
    least ``w`` wide, is below ``r * w`` with probability at most ``N * r ** (N - 1)``
    (exactly ``N r^(N-1) - (N-1) r^N`` for one common interval). Solving for ``r``:
    ``(false_alarm / N) ** (1 / (N - 1))``. For ``N = 5`` and ``1e-6``: 2.1 % of the band
    (exact false alarm 1.0e-6); ``N = 8``: 10.3 %; ``N = 20``: 46.7 %.
    """
    if samples < 2:
        raise ValueError(f"a spread needs at least 2 samples, got {samples}")
    if not 0.0 < false_alarm < 1.0:
        raise ValueError(f"false_alarm must be in (0, 1), got {false_alarm}")
    return float((false_alarm / samples) ** (1.0 / (samples - 1)))


def _spread_false_alarm(samples: int, fraction: float) -> float:
    """Upper bound of P(spread of *samples* uniform draws < *fraction* of the band)."""
    return float(min(1.0, samples * max(0.0, fraction) ** (samples - 1)))


@dataclass
class _JitterRow:
    retry: int
    delays: list[float]
    required: float | None = None  # None: not judged
    reason: str = ""
    ok: bool = True

    @property
    def spread(self) -> float:
        return max(self.delays) - min(self.delays) if self.delays else 0.0


def _jitter_width(model: BackoffModel, n: int, previous: list[float | None]) -> tuple[float, str]:
    """The narrowest uniform jitter band of retry *n* over the clients, or ``(0, why not)``.

    A cap applied after the jitter (or decorrelated jitter's cap) piles draws onto the cap:
    such retries are not uniform on the band and are not judged.
    """
    widths: list[float] = []
    for prev in previous:
        lo, hi = model.band(n, prev)
        if model.jitter == "decorrelated":
            base = model.initial if prev is None else prev
            if 3.0 * base > model.cap:
                return 0.0, f"cap {fmt_s(model.cap)} clips the jitter"
        elif model.cap_after_jitter:
            unclamped = replace(model, cap=math.inf, floor=0.0, cap_after_jitter=False)
            if (lo, hi) != unclamped.band(n, prev):
                return 0.0, "cap/floor clips the jitter"
        if hi - lo <= EXACT.widen(0.0, 0.0)[1]:
            return 0.0, f"no jitter expected ({_band_text(lo, hi)})"
        widths.append(hi - lo)
    return min(widths), ""


def expect_jitter(
    timelines: Sequence[Timeline] | HasTimelines,
    model: BackoffModel | None = None,
    *,
    min_spread: float | None = None,
    false_alarm: float = JITTER_FALSE_ALARM,
    noise: float | None = None,
) -> Verdict:
    """Assert that *timelines* (several clients or calls under the same retry policy)
    do not retry in lock-step: before each retry their waits differ enough.

    For each retry number with at least 2 samples, the spread (max - min) of the waits
    must reach the required spread; the verdict fails when any judged retry falls short,
    and fails as "not measured" when there are fewer than 2 timelines or no retry can be
    judged (it never passes by default).

    * With a jittered *model*, the required spread is ``min_spread`` times the band
      width (``hi - lo``; for equal jitter ``t/2``). ``min_spread`` defaults to
      :func:`jitter_threshold` of the sample count, with *false_alarm* shared among
      the judged retries, so a correctly jittered policy fails with probability at
      most *false_alarm*. Retries whose band is zero or clipped by a cap applied after
      the jitter are not judged.
    * Without a model the band is unknown: the waits must merely differ (beyond the
      noise floor, and by ``min_spread`` times their median when given).
    * On the real clock the waits carry scheduling noise up to *noise* (default: the
      width of :data:`REAL_TOLERANCE`, 17 ms), which can add or remove that much spread:
      the required spread is lowered by *noise* but must exceed it, and a retry whose
      band is too narrow for that is not judged. Requested waits and virtual time are
      exact (no floor). With a model the floor is checked against the evidence: noise
      only makes a wait longer, so a judged retry whose spread is no larger than the
      lateness of its latest wait past the band's upper edge (beyond the floor) is
      lock-step, whatever the load: no client waited less than the top of its band.

    Raises :class:`JitterMismatch` with a table (retry, samples, min, max, spread,
    required) when the retries are in lock-step.
    """
    if model is not None and model.exact:
        raise ValueError(
            f"expect_jitter() needs a jittered model, got {model.describe()!r}: "
            "a policy without jitter is checked with expect_backoff()"
        )
    if min_spread is not None and min_spread < 0:
        raise ValueError(f"min_spread must not be negative, got {min_spread}")
    lines = list(timelines.timelines) if hasattr(timelines, "timelines") else list(timelines)
    exact = all(t.exact for t in lines)
    floor = 0.0 if exact else (
        REAL_TOLERANCE.early + REAL_TOLERANCE.late if noise is None else noise
    )
    per_line = [t.delays() for t in lines]
    most = max((len(d) for d in per_line), default=0)
    # The floor is an assumption about the machine, and the evidence can refute it: noise
    # on the real clock only makes a wait look longer, so a delay past its band's upper
    # edge shows at least that much noise in its row. A spread no larger than that is
    # explained by noise alone (every client waited the top of its band or longer).
    late_by: list[float] = [0.0] * most
    if not exact and model is not None:
        for d in per_line:
            for i, delay in enumerate(d):
                hi = model.band(i + 1, d[i - 1] if i else None)[1]
                late_by[i] = max(late_by[i], delay - hi)

    rows: list[_JitterRow] = []
    for i in range(most):
        n = i + 1
        have = [d for d in per_line if len(d) > i]
        row = _JitterRow(n, [d[i] for d in have])
        rows.append(row)
        if len(have) < 2:
            row.reason = "not judged: fewer than 2 samples"
            continue
        if model is not None:
            width, why = _jitter_width(model, n, [d[i - 1] if i else None for d in have])
            if not width:
                row.reason = f"not judged: {why}"
                continue
            row.required = width  # scaled below, once the judged rows are known
    judged = [r for r in rows if r.required is not None or (model is None and not r.reason)]
    share = false_alarm / len(judged) if judged else false_alarm
    alarm = 0.0
    for row in judged:
        samples = len(row.delays)
        if model is None:
            scale = statistics.median(row.delays) * (min_spread or 0.0)
            row.required = max(scale, floor) + EXACT.widen(0.0, 0.0)[1]
        else:
            width = row.required or 0.0
            fraction = jitter_threshold(samples, share) if min_spread is None else min_spread
            # noise can shrink a true spread by up to `floor`; the requirement must stay above it
            required = fraction * width - floor
            if required <= floor:
                row.required = None
                row.reason = (
                    f"not judged: band {fmt_s(width)} too narrow for the "
                    f"{fmt_s(floor)} noise floor"
                )
                continue
            row.required = max(required, EXACT.widen(0.0, 0.0)[1])
            alarm += _spread_false_alarm(samples, fraction)
        row.ok = row.spread >= row.required
    judged = [r for r in judged if r.required is not None]
    # (a wake-up may come up to REAL_TOLERANCE.early before its due time)
    noisy = [r for r in judged if late_by[r.retry - 1] > floor
             and r.spread <= late_by[r.retry - 1] + REAL_TOLERANCE.early]
    for row in noisy:
        row.ok = False
    lockstep = [r for r in judged if not r.ok and
                (r.spread <= floor + EXACT.widen(0.0, 0.0)[1] or r in noisy)]
    narrow = [r for r in judged if not r.ok and r not in lockstep]

    what = model.describe() if model is not None else "jittered retries"
    plural = "" if len(lines) == 1 else "s"
    claim = f"{what}: clients do not retry in lock-step ({len(lines)} timeline{plural})"
    notes: list[str] = []
    if len(lines) < 2 or not judged:
        passed = False
        why = f"{len(lines)} timeline{plural}" if len(lines) < 2 else "no retry could be judged"
        outcome = "not measured"
        notes.append(
            f"jitter not measured: {why}; give at least 2 timelines of clients (or calls) "
            "retrying the same outage, with at least one retry each"
        )
    else:
        passed = not lockstep and not narrow
        outcome = "jittered" if passed else ("lock-step" if lockstep else "too little jitter")
        if lockstep:
            waited = ", ".join(
                f"{fmt_s(statistics.median(r.delays))} before retry {r.retry}" for r in lockstep
            )
            noun = "every client waited" if exact else "every client waited about"
            notes.append(f"retries are in lock-step: {noun} {waited} (no jitter)")
        if narrow:
            spread = ", ".join(
                f"{fmt_s(r.spread)} before retry {r.retry} (required {fmt_s(r.required)})"
                for r in narrow
            )
            notes.append(f"too little jitter: the waits spread over only {spread}")
    if min_spread is None and model is not None and judged:
        notes.append(
            f"required spread: a fraction of the jitter band chosen so that a correctly "
            f"jittered policy fails with probability <= {alarm:.1g}"
        )
    elif model is not None and judged:
        notes.append(
            f"min_spread={min_spread:g} of the band: a correctly jittered policy fails with "
            f"probability <= {alarm:.2g}"
        )
    for row in noisy:
        notes.append(
            f"retry {row.retry}: no client waited less than the top of its band; the waits "
            f"spread over {fmt_s(row.spread)}, no more than the {fmt_s(late_by[row.retry - 1])} "
            f"by which the latest came after it (beyond the {fmt_s(floor)} noise floor): "
            "delays alone explain that spread (no jitter, or something that holds back every "
            "retry: a loaded machine, a blocked event loop)"
        )
    clock_text = "exact" if exact else f"real clock, noise floor {fmt_s(floor)}"
    sources = sorted({t.source or "timeline" for t in lines})
    notes.append(f"source: {', '.join(sources) or 'no timelines'}, {clock_text}")

    table: list[list[str]] = []
    for row in rows:
        if row.required is None:
            status, mark = row.reason, ""
        elif row.ok:
            status, mark = "ok", ""
        else:
            status, mark = ("lock-step" if row in lockstep else "too little"), "<--"
        table.append([
            str(row.retry), str(len(row.delays)),
            fmt_s(min(row.delays)), fmt_s(max(row.delays)), fmt_s(row.spread),
            fmt_s(row.required) if row.required is not None else "-", status, mark,
        ])
    verdict = Verdict(
        kind="jitter",
        claim=claim,
        passed=passed,
        expected={
            "model": model.describe() if model is not None else None,
            "required_spread": [r.required for r in rows],
            "false_alarm": alarm if model is not None else None,
        },
        observed={"timelines": len(lines), "delays": per_line,
                  "spread": [r.spread for r in rows]},
        tolerance="exact" if exact else f"noise floor {fmt_s(floor)}",
        headers=["retry", "samples", "min", "max", "spread", "required", "result", ""],
        rows=table,
        notes=notes,
        outcome=outcome,
        data={"clock": "exact" if exact else "real", "lock_step": [r.retry for r in lockstep]},
    )
    return verdict.check(JitterMismatch)


# -- retry amplification ---------------------------------------------------------------------


def amplification(
    source: int | Sequence[Timeline] | HasTimelines, calls: int | None = None
) -> float:
    """Attempts reaching the dependency per logical call.

    ``source`` is a count of requests that reached the dependency (then give
    ``calls``), a list of timelines (one per logical call) or a ``track()``-ed callable.
    """
    reached, n_calls, _ = _amplification_counts(source, calls)
    return reached / n_calls if n_calls else math.inf


def _amplification_counts(
    source: int | Sequence[Timeline] | HasTimelines, calls: int | None
) -> tuple[int, int, list[int]]:
    if isinstance(source, int):
        if calls is None:
            raise TypeError("amplification(count, calls=...) needs the number of logical calls")
        return source, calls, []
    timelines = list(source.timelines) if hasattr(source, "timelines") else list(source)
    timelines = [t for t in timelines if t.count]
    per_call = [t.count for t in timelines]
    return sum(per_call), (calls if calls is not None else len(timelines)), per_call


def expect_amplification(
    source: int | Sequence[Timeline] | HasTimelines,
    *,
    at_most: float,
    calls: int | None = None,
) -> Verdict:
    """Assert that retries multiply the load on the dependency by no more than *at_most*."""
    reached, n_calls, per_call = _amplification_counts(source, calls)
    figure = reached / n_calls if n_calls else math.inf
    passed = figure <= at_most + 1e-12
    rows = [[str(i + 1), str(c)] for i, c in enumerate(per_call)]
    notes = [f"{reached} attempts reached the dependency for {n_calls} logical calls"]
    if per_call:
        notes.append(f"worst single call: {max(per_call)} attempts")
    outcome = _amplification_outcome(reached, n_calls, per_call)
    if not passed:
        allowed = at_most * n_calls
        notes.insert(
            0,
            f"{outcome}; the claim allows at most {at_most:g} attempts per call "
            f"({_retries(at_most - 1)} on average), {allowed:g} for {n_calls} calls",
        )
    verdict = Verdict(
        kind="amplification",
        claim=f"retry amplification at most {at_most:g}x (observed {figure:.2f}x)",
        passed=passed,
        expected={"at_most": at_most},
        observed={"amplification": figure, "attempts": reached, "calls": n_calls},
        headers=["call", "attempts"] if rows else [],
        rows=rows,
        notes=notes,
        outcome=outcome,
    )
    return verdict.check()


def _times(count: float) -> str:
    return "once" if count == 1 else f"{count:g} times"


def _retries(count: float) -> str:
    return f"{count:g} retry" if count == 1 else f"{count:g} retries"


def _reached_text(attempts: int) -> str:
    """``the call reached the dependency 4 times (3 retries)``."""
    return f"the call reached the dependency {_times(attempts)} ({_retries(max(attempts - 1, 0))})"


def _amplification_outcome(reached: int, calls: int, per_call: Sequence[int]) -> str:
    """What happened, in the claim's words: how often each call reached the dependency."""
    if not calls:
        return f"{reached} attempts reached the dependency without any logical call"
    if per_call and len(set(per_call)) == 1:
        each = per_call[0]
        who = "the call" if len(per_call) == 1 else f"each of the {len(per_call)} calls"
        return f"{who} reached the dependency {_times(each)} ({_retries(each - 1)})"
    figure = reached / calls
    text = (
        f"the {calls} calls reached the dependency {_times(round(figure, 2))} on average "
        f"({_retries(round(figure - 1, 2))})"
    )
    if per_call:
        worst = max(per_call)
        text += f"; the worst call {_times(worst)} ({_retries(worst - 1)})"
    return text
