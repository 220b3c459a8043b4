"""A fake clock for the engine's spinning (``toxics.SpinBudget`` and its users): the
tests of ``TimerPrecision`` and of ``PacketPoll`` put it in place of a module's
``time`` (and of the kernel's CPU pressure)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

T0 = 1000.0  # the fake clock's start (monotonic and CPU seconds)


class FakeClock:
    """``monotonic``, ``process_time`` and the CPU pressure under the test's control."""

    def __init__(self) -> None:
        self.now = T0
        self.cpu = T0
        self.reads = 0
        self.stall_us = 0  # the kernel's CPU pressure, "some" total (microseconds)
        self.pressure_reads = 0

    def pressure(self, *_: Any) -> int | None:  # set on a class: no self of its own
        self.pressure_reads += 1
        return self.stall_us

    def monotonic(self) -> float:
        self.reads += 1
        return self.now

    def process_time(self) -> float:
        self.reads += 1
        return self.cpu

    def advance(self, wall: float, cpu: float | None = None) -> None:
        """``wall`` seconds pass, of which the process ran ``cpu`` (all by default)."""
        self.now += wall
        self.cpu += wall if cpu is None else cpu

    def as_time(self) -> Any:
        """A stand-in for the ``time`` module of the code under test."""
        return SimpleNamespace(monotonic=self.monotonic, process_time=self.process_time)
