"""Latency histograms: HdrHistogram (the ``hdrhistogram`` package), in seconds outside,
microseconds inside, so percentiles keep 3 significant digits from 1 µs to one hour and
histograms from several workers or machines merge exactly (by adding counts)."""

from __future__ import annotations

from collections import Counter
from itertools import repeat
from operator import mul
from typing import Any

__all__ = ["Histogram"]

_LOWEST_US = 1
_HIGHEST_US = 3600 * 1_000_000
_DIGITS = 3


def _new() -> Any:
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError as exc:  # a dependency: say how to get it back
        raise ImportError("soak runs need the 'hdrhistogram' package (a dependency of "
                          "pytest-resilience): pip install hdrhistogram") from exc
    return HdrHistogram(_LOWEST_US, _HIGHEST_US, _DIGITS)


class Histogram:
    """Seconds in, seconds out; values above one hour are clamped (and counted)."""

    __slots__ = ("_h", "clamped")

    def __init__(self) -> None:
        self._h = _new()
        self.clamped = 0

    def record(self, seconds: float) -> None:
        us = int(seconds * 1_000_000)
        if us < _LOWEST_US:
            us = _LOWEST_US
        elif us > _HIGHEST_US:
            us = _HIGHEST_US
            self.clamped += 1
        self._h.record_value(us)

    def record_many(self, seconds: list[float]) -> None:
        """Record many values at once (equal microsecond values are counted together, in
        C: a soak driver keeps a plain list per interval and folds it in here)."""
        counts = Counter(map(int, map(mul, seconds, repeat(1_000_000.0))))
        record = self._h.record_value
        for us, n in counts.items():
            if us < _LOWEST_US:
                us = _LOWEST_US
            elif us > _HIGHEST_US:
                us = _HIGHEST_US
                self.clamped += n
            record(us, n)

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile in seconds (0.0 when empty)."""
        return float(self._h.get_value_at_percentile(q)) / 1e6 if self.count else 0.0

    @property
    def max(self) -> float:
        return float(self._h.get_max_value()) / 1e6 if self.count else 0.0

    @property
    def mean(self) -> float:
        return float(self._h.get_mean_value()) / 1e6 if self.count else 0.0

    def add(self, other: Histogram) -> None:
        if other.count:
            self._h.add(other._h)
        self.clamped += other.clamped

    def reset(self) -> None:
        self._h.reset()
        self.clamped = 0

    def encode(self) -> str:
        """HdrHistogram's compressed base64 encoding (V2), readable by every HDR port."""
        return str(self._h.encode().decode("ascii"))

    @classmethod
    def decode(cls, text: str) -> Histogram:
        from hdrh.histogram import HdrHistogram

        out = cls()
        decoded = HdrHistogram.decode(text.encode("ascii"))
        if decoded.get_total_count():
            out._h.add(decoded)
        return out

    def __repr__(self) -> str:
        if not self.count:
            return "Histogram(empty)"
        return (f"Histogram(count={self.count}, p50={self.percentile(50):.6f}s, "
                f"p99={self.percentile(99):.6f}s, max={self.max:.6f}s)")
