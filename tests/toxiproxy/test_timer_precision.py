"""SpinBudget, TimerPrecision and Stage.arm / _spin / _when_due: the toxics' timers.

The unit tests drive one fresh :class:`SpinBudget` or :class:`TimerPrecision` on a fake
clock (the toxics module's own ``time`` is replaced, nothing else sees it); the last
ones arm real timers on real event loops and check the promise both paths make (the
early wake-up and spin, and the plain timer re-armed by ``_when_due``): a callback never
runs before its deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from spin_fakes import T0, FakeClock

from pytest_resilience.services.loop_thread import new_event_loop
from pytest_resilience.toxiproxy import toxics
from pytest_resilience.toxiproxy.toxics import (
    SpinBudget,
    Stage,
    TimerPrecision,
    ToxicConfig,
    make_stage,
)

SB = SpinBudget
TP = TimerPrecision
@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(toxics, "time", fake.as_time())
    return fake


def enabled() -> TimerPrecision:
    precision = TimerPrecision()
    precision.enabled = True
    return precision


def margin(late: float) -> float:
    """The spin that the recent lateness alone asks for (``spin_for``'s first bound,
    before its floor at MIN_SPIN)."""
    return late * 1.25 + 0.0002


# -- SpinBudget -------------------------------------------------------------------------
def test_spin_budget_defaults() -> None:
    budget = SpinBudget()
    assert budget.enabled is False  # off by default (the thread engine)
    assert (budget.window, budget.spent, budget.paused_until) == (0.0, 0.0, 0.0)
    assert isinstance(TimerPrecision(), SpinBudget)
    # TimerPrecision spends the base budget as it is.
    assert (TP.BUDGET, TP.PREEMPTED, TP.BACKOFF) == (SB.BUDGET, SB.PREEMPTED, SB.BACKOFF)


def test_spin_budget_allowed_and_charge(clock: FakeClock) -> None:
    budget = SpinBudget()
    assert budget.allowed(clock.now)  # the first call opens a window
    assert (budget.window, budget.spent) == (T0, 0.0)
    budget.charge(SB.BUDGET / 2)
    budget.charge(SB.BUDGET / 4)
    assert budget.spent == SB.BUDGET * 3 / 4  # charges add up
    assert budget.allowed(T0 + 0.5)
    assert budget.window == T0  # the same window: nothing reset
    budget.charge(SB.BUDGET / 4)
    assert budget.spent >= SB.BUDGET
    assert not budget.allowed(T0 + 0.5)
    assert not budget.allowed(T0 + 0.999)
    assert budget.spent >= SB.BUDGET  # a refused spin does not reset anything
    assert budget.allowed(T0 + 1.0)  # one second after the window opened: a new one
    assert (budget.window, budget.spent) == (T0 + 1.0, 0.0)
    # A charge beyond the budget (one long spin) is kept, and refuses the rest.
    budget.charge(SB.BUDGET * 3)
    assert not budget.allowed(T0 + 1.5)
    assert budget.allowed(T0 + 2.5)  # a later window forgets it (no debt carried)
    assert budget.spent == 0.0


def test_spin_budget_lost_cpu_default_allowance(clock: FakeClock) -> None:
    budget = SpinBudget()
    budget.lost_cpu(0.01, 0.01 - SB.PREEMPTED / 2)
    budget.lost_cpu(0.01, 0.02)  # more CPU than wall (other threads of the process)
    assert budget.paused_until == 0.0
    assert budget.spent == 0.0  # lost_cpu charges nothing
    budget.lost_cpu(0.01, 0.01 - SB.PREEMPTED * 1.5)
    assert budget.paused_until == T0 + SB.BACKOFF
    assert not budget.allowed(T0)
    assert not budget.allowed(T0 + SB.BACKOFF - 0.001)
    assert budget.allowed(T0 + SB.BACKOFF)


@pytest.mark.parametrize(
    ("wall", "cpu", "allowed", "pauses"),
    [
        (1.0, 0.8, 0.25, False),  # lost 0.2 of an allowed 0.25
        (1.0, 0.7, 0.25, True),  # lost 0.3
        (0.002, 0.0, 0.005, False),  # lost all of it, but less than allowed
        (0.01, 0.01 - SB.PREEMPTED * 2, SB.PREEMPTED * 3, False),  # more than the default
        (0.01, 0.01 - SB.PREEMPTED / 2, SB.PREEMPTED / 4, True),  # less than the default
        (0.01, 0.0095, 0.0, True),  # allowed=0: any loss pauses
        (0.01, 0.01, 0.0, False),  # ...but no loss does not
    ],
)
def test_spin_budget_lost_cpu_explicit_allowance(
    clock: FakeClock, wall: float, cpu: float, allowed: float, pauses: bool
) -> None:
    budget = SpinBudget()
    clock.advance(3.0)
    budget.lost_cpu(wall, cpu, allowed)
    assert budget.paused_until == (clock.now + SB.BACKOFF if pauses else 0.0)
    assert budget.allowed(clock.now) is not pauses


def test_spin_budget_subclass_constants(clock: FakeClock) -> None:
    """BUDGET, PREEMPTED and BACKOFF are read from the instance's class."""

    class Other(SpinBudget):
        BUDGET = 0.5
        PREEMPTED = 0.01
        BACKOFF = 0.25

    budget = Other()
    assert budget.allowed(clock.now)
    budget.charge(SB.BUDGET * 2)  # beyond the base budget, within this one
    assert budget.allowed(clock.now)
    budget.lost_cpu(0.1, 0.1 - SB.PREEMPTED * 2)  # would pause the base class
    assert budget.paused_until == 0.0
    budget.lost_cpu(0.1, 0.1 - Other.PREEMPTED * 2)
    assert budget.paused_until == T0 + Other.BACKOFF
    assert budget.allowed(T0 + Other.BACKOFF)


# -- spin_for ---------------------------------------------------------------------------
def test_disabled_never_spins(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_clock() -> float:
        raise AssertionError("a disabled TimerPrecision has no reason to read the clock")

    monkeypatch.setattr(toxics, "time", SimpleNamespace(monotonic=no_clock, process_time=no_clock))
    precision = TimerPrecision()
    assert precision.enabled is False  # off by default (the thread engine)
    for delay in (0.0, 0.02, 0.1, 1.0, toxics.MAX_WAIT):
        assert precision.spin_for(delay) == 0.0
    assert (precision.window, precision.spent, precision.paused_until) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("late", "delay", "bound"),
    [
        (0.001, 1.0, "late"),  # the default lateness on a long wait
        (TP.MAX_SPIN, 1.0, "max"),  # a very late machine: capped per timer
        (0.004, 0.02, "share"),  # a short wait: at most SHARE of it
        (0.002, 0.1, "late"),
        (0.0045, 0.2, "max"),  # margin 5.8 ms, SHARE of the wait 10 ms
        (0.0, 1.0, "min"),  # a punctual machine: the margin is floored at MIN_SPIN
        (0.00005, 0.1, "min"),
        (0.001, 0.008, "share"),  # SHARE of the wait: above MIN_SPIN, below the margin
    ],
)
def test_spin_is_the_smallest_of_three_bounds(
    clock: FakeClock, late: float, delay: float, bound: str
) -> None:
    precision = enabled()
    precision.late = late
    expected = {
        "late": margin(late),
        "min": TP.MIN_SPIN,
        "max": TP.MAX_SPIN,
        "share": delay * TP.SHARE,
    }[bound]
    # The case really is decided by the bound it names.
    assert expected == min(max(margin(late), TP.MIN_SPIN), TP.MAX_SPIN, delay * TP.SHARE)
    assert precision.spin_for(delay) == pytest.approx(expected, rel=1e-12, abs=0)


def test_spin_below_min_spin_is_a_plain_timer(clock: FakeClock) -> None:
    """Only the SHARE bound can make the spin smaller than MIN_SPIN: such a short wait
    gets a plain timer, whatever the lateness."""
    short = TP.MIN_SPIN / TP.SHARE  # below this wait, SHARE of it is less than MIN_SPIN
    for late in (0.0, 0.001, TP.MAX_SPIN):
        precision = enabled()
        precision.late = late
        assert precision.spin_for(short * 0.9) == 0.0
        assert precision.spin_for(short * 0.5) == 0.0
        assert precision.spin_for(short * 1.1) == pytest.approx(
            min(max(margin(late), TP.MIN_SPIN), short * 1.1 * TP.SHARE)
        )
    assert precision.spent == 0.0  # asking is free


def test_punctual_machine_still_spins_min_spin(clock: FakeClock) -> None:
    """The lateness is only measured by early wake-ups: a punctual machine must keep
    waking early (by MIN_SPIN), or ``late`` could never rise again."""
    precision = enabled()
    for _ in range(300):  # a long run of punctual wake-ups: the margin decays to ~0
        precision.woke(0.0)
    assert precision.late < 0.00001
    assert margin(precision.late) < TP.MIN_SPIN
    assert precision.spin_for(1.0) == TP.MIN_SPIN
    assert precision.spin_for(toxics.MAX_WAIT) == TP.MIN_SPIN
    # Just above the margin's floor, the margin itself.
    precision.late = (TP.MIN_SPIN - 0.0002) / 1.25 * 1.01
    assert precision.spin_for(1.0) == pytest.approx(margin(precision.late))
    assert precision.spin_for(1.0) > TP.MIN_SPIN


def test_budget_per_second_of_wall_time(clock: FakeClock) -> None:
    precision = enabled()
    spin = precision.spin_for(1.0)
    assert spin == pytest.approx(margin(0.001))
    assert (precision.window, precision.spent) == (T0, 0.0)  # the first window opens now

    precision.spun(TP.BUDGET / 2, TP.BUDGET / 2)
    assert precision.spent == TP.BUDGET / 2
    assert precision.spin_for(1.0) == spin  # half the budget left
    clock.advance(0.5)
    precision.spun(TP.BUDGET / 2 - 1e-6, TP.BUDGET / 2 - 1e-6)
    assert precision.spent < TP.BUDGET
    assert precision.spin_for(1.0) == spin  # a hair of budget left still spins
    precision.spun(1e-6, 1e-6)
    assert precision.spent >= TP.BUDGET

    assert precision.spin_for(1.0) == 0.0  # spent: plain timers...
    clock.advance(0.499)
    assert precision.spin_for(1.0) == 0.0  # ...for the rest of this window
    assert precision.window == T0
    clock.now = T0 + 1.0  # the window is one second old: a new one opens
    assert precision.spin_for(1.0) == spin
    assert precision.window == clock.now
    assert precision.spent == 0.0


def test_budget_counts_wall_time_not_cpu(clock: FakeClock) -> None:
    precision = enabled()
    assert precision.spin_for(1.0) > 0
    precision.spun(TP.BUDGET, 0.0)  # no CPU at all (and preempted: see below)
    assert precision.spent == TP.BUDGET
    clock.advance(TP.BACKOFF + 1.0)  # past the pause and the window
    assert precision.spin_for(1.0) > 0
    assert precision.spent == 0.0


def test_preempted_spin_pauses_for_backoff(clock: FakeClock) -> None:
    precision = enabled()
    spin = precision.spin_for(1.0)
    assert spin > 0
    # Lost the CPU for a little more than PREEMPTED during a 2 ms spin.
    precision.spun(0.002, 0.002 - TP.PREEMPTED * 1.5)
    assert precision.paused_until == T0 + TP.BACKOFF
    assert precision.spin_for(1.0) == 0.0
    clock.advance(TP.BACKOFF / 2)
    assert precision.spin_for(1.0) == 0.0
    clock.advance(TP.BACKOFF / 2 - 0.001)
    assert precision.spin_for(1.0) == 0.0  # still paused, though the 1-s window is over
    clock.now = T0 + TP.BACKOFF  # BACKOFF seconds after the preempted spin: it resumes
    assert precision.spin_for(1.0) == spin
    assert (precision.window, precision.spent) == (clock.now, 0.0)


def test_spin_that_kept_the_cpu_does_not_pause(clock: FakeClock) -> None:
    precision = enabled()
    precision.spun(0.002, 0.002 - TP.PREEMPTED / 2)  # a little off-CPU time is tolerated
    precision.spun(0.002, 0.003)  # more CPU than wall (other threads of the process)
    assert precision.paused_until == 0.0
    assert precision.spin_for(1.0) > 0


def test_woke_keeps_a_decaying_max_capped_at_max_spin() -> None:
    precision = TimerPrecision()
    expected = precision.late
    for _ in range(10):  # punctual wake-ups: the margin decays by 3 % each
        precision.woke(0.0)
        expected *= 0.97
    assert precision.late == pytest.approx(expected, rel=1e-12)
    assert precision.late < 0.001

    precision.woke(expected * 0.96)  # less than the decayed value: decay wins
    assert precision.late == pytest.approx(expected * 0.97, rel=1e-12)
    precision.woke(0.002)  # a later wake-up than any recent one: taken as is
    assert precision.late == 0.002
    precision.woke(0.0015)
    assert precision.late == pytest.approx(0.002 * 0.97)

    precision.woke(TP.MAX_SPIN * 10)  # a wake-up far too late: capped
    assert precision.late == TP.MAX_SPIN
    precision.woke(TP.MAX_SPIN * 10)
    assert precision.late == TP.MAX_SPIN
    precision.woke(0.0)
    assert precision.late == pytest.approx(TP.MAX_SPIN * 0.97)


# -- Stage.arm / Stage._spin on a fake loop ---------------------------------------------
class FakeHandle:
    def __init__(self, kind: str, delay: float, callback: Callable[..., Any],
                 args: tuple[Any, ...]) -> None:
        self.kind = kind
        self.delay = delay
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def run(self) -> None:
        assert not self.cancelled
        self.callback(*self.args)


class FakeLoop:
    """Records what the stage schedules; the test runs it."""

    def __init__(self) -> None:
        self.handles: list[FakeHandle] = []

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> FakeHandle:
        self.handles.append(FakeHandle("later", delay, callback, args))
        return self.handles[-1]

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> FakeHandle:
        self.handles.append(FakeHandle("soon", 0.0, callback, args))
        return self.handles[-1]


def noop_stage(loop: Any) -> Stage:
    link: Any = SimpleNamespace(loop=loop, sink=None)
    cfg = ToxicConfig("t", "noop", "downstream", "downstream", 1.0)
    stage = make_stage(link, cfg)
    assert type(stage) is Stage
    return stage


def stage_under(monkeypatch: pytest.MonkeyPatch, loop: Any, precision: TimerPrecision) -> Stage:
    """A no-op stage on ``loop`` whose timers follow ``precision`` (in place of the
    module's ``PRECISION`` for this test)."""
    monkeypatch.setattr(toxics, "PRECISION", precision)
    return noop_stage(loop)


@pytest.fixture
def fake_loop() -> FakeLoop:
    return FakeLoop()


@pytest.fixture
def calls() -> list[float]:
    return []


def recorder(clock: FakeClock, calls: list[float]) -> Callable[[], None]:
    return lambda: calls.append(clock.now)


def test_arm_wakes_early_then_spins_to_the_deadline(
    clock: FakeClock, fake_loop: FakeLoop, calls: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    precision = enabled()
    stage = stage_under(monkeypatch, fake_loop, precision)
    callback = recorder(clock, calls)
    delay = 0.1
    spin = margin(precision.late)
    due = T0 + delay

    stage.arm(delay, callback)
    [wake] = fake_loop.handles
    assert stage.timer is wake
    assert wake.kind == "later"
    assert wake.delay == pytest.approx(delay - spin)
    assert wake.callback == stage._spin
    assert wake.args == (due, due - spin, None, callback)

    clock.advance(delay - spin + 0.0004)  # the early wake-up comes 0.4 ms late
    wake.run()
    assert precision.late == pytest.approx(max(0.0004, 0.001 * 0.97))
    started = (clock.now, clock.cpu)
    [spin1] = fake_loop.handles[1:]
    assert stage.timer is spin1
    assert (spin1.kind, spin1.callback, spin1.args) == (
        "soon", stage._spin, (due, None, started, callback)
    )
    assert calls == []

    clock.advance(0.0005)  # still before the deadline: turn the loop again
    spin1.run()
    [spin2] = fake_loop.handles[2:]
    assert spin2.args == (due, None, started, callback)
    assert stage.timer is spin2
    assert calls == []

    clock.now = due  # the deadline itself: call back, and account for the spin
    clock.cpu = started[1] + (due - started[0])
    spin2.run()
    assert calls == [due]
    assert len(fake_loop.handles) == 3
    assert precision.spent == pytest.approx(due - started[0])
    assert precision.paused_until == 0.0


def test_preempted_spin_through_stage_pauses(
    clock: FakeClock, fake_loop: FakeLoop, calls: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    precision = enabled()
    stage = stage_under(monkeypatch, fake_loop, precision)
    stage.arm(0.1, recorder(clock, calls))
    due = T0 + 0.1
    clock.now = fake_loop.handles[0].args[1]  # woken right on the early time
    fake_loop.handles[0].run()
    clock.advance(due - clock.now, cpu=0.0)  # the spin got no CPU at all
    fake_loop.handles[1].run()
    assert calls == [due]
    assert precision.paused_until == due + TP.BACKOFF

    callback = recorder(clock, calls)
    stage.arm(0.1, callback)  # the next timer is plain
    last = fake_loop.handles[-1]
    assert (last.kind, last.delay, last.callback, last.args) == (
        "later", 0.1, stage._when_due, (clock.now + 0.1, callback)
    )


def test_late_rises_again_after_a_punctual_run(
    clock: FakeClock, fake_loop: FakeLoop, calls: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    precision = enabled()
    monkeypatch.setattr(toxics, "PRECISION", precision)
    precision.late = 0.0  # a punctual machine
    stage = noop_stage(fake_loop)
    delay = 1.0
    due = T0 + delay
    stage.arm(delay, recorder(clock, calls))
    [wake] = fake_loop.handles
    assert wake.callback == stage._spin
    assert wake.delay == pytest.approx(delay - TP.MIN_SPIN)  # still woken early
    assert wake.args == (due, due - TP.MIN_SPIN, None, wake.args[3])

    clock.now = due - TP.MIN_SPIN + 0.002  # ...and this time 2 ms late, past the deadline
    wake.run()
    assert calls == [clock.now]
    assert precision.late == pytest.approx(0.002)
    # The next timers wake early enough for such a machine again.
    assert precision.spin_for(delay) == pytest.approx(margin(0.002))
    stage.arm(delay, recorder(clock, calls))
    assert fake_loop.handles[-1].delay == pytest.approx(delay - margin(0.002))


def test_wake_up_after_the_deadline_calls_back_at_once(
    clock: FakeClock, fake_loop: FakeLoop, calls: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    precision = enabled()
    stage = stage_under(monkeypatch, fake_loop, precision)
    stage.arm(0.1, recorder(clock, calls))
    [wake] = fake_loop.handles
    woken_due = wake.args[1]
    clock.now = T0 + 0.1 + 0.002  # the early wake-up is later than the deadline
    wake.run()
    assert calls == [clock.now]
    assert len(fake_loop.handles) == 1  # no spin
    assert precision.late == pytest.approx(clock.now - woken_due)
    assert precision.spent == 0.0


def test_cancel_during_the_spin_never_calls_back(
    clock: FakeClock, fake_loop: FakeLoop, calls: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = stage_under(monkeypatch, fake_loop, enabled())
    stage.arm(0.1, recorder(clock, calls))
    clock.now = fake_loop.handles[0].args[1]
    fake_loop.handles[0].run()
    spinning = fake_loop.handles[1]
    stage.interrupt()  # a stub restart while the loop spins
    assert spinning.cancelled
    assert stage.timer is None
    assert calls == []


@pytest.mark.parametrize(
    ("precise", "on", "delay", "armed"),
    [
        (False, True, 0.1, 0.1),  # the caller asked for a plain timer
        (True, False, 0.1, 0.1),  # precision off (thread engine)
        (True, True, 0.001, 0.001),  # too short a wait to spin on
        (True, True, -5.0, 0.0),  # a negative wait is no wait
    ],
)
def test_plain_arm(
    clock: FakeClock, fake_loop: FakeLoop, calls: list[float], monkeypatch: pytest.MonkeyPatch,
    precise: bool, on: bool, delay: float, armed: float,
) -> None:
    precision = TimerPrecision()
    precision.enabled = on
    stage = stage_under(monkeypatch, fake_loop, precision)
    callback = recorder(clock, calls)
    stage.arm(delay, callback, precise=precise)
    [handle] = fake_loop.handles
    assert (handle.kind, handle.delay, handle.callback, handle.args) == (
        "later", armed, stage._when_due, (T0 + armed, callback)
    )
    assert stage.timer is handle
    assert precision.spent == 0.0
    clock.now = T0 + armed  # run when due: calls back, nothing re-armed
    handle.run()
    assert calls == [T0 + armed]
    assert len(fake_loop.handles) == 1


@pytest.mark.parametrize("early", [0.0004, 0.001, 0.00001])
def test_when_due_rearms_when_run_early(
    clock: FakeClock, fake_loop: FakeLoop, calls: list[float], monkeypatch: pytest.MonkeyPatch,
    early: float,
) -> None:
    """A loop that runs a plain timer before its due time (uvloop's millisecond clock):
    the stage waits out the remainder, as often as it takes."""
    stage = stage_under(monkeypatch, fake_loop, TimerPrecision())  # disabled: plain timers
    callback = recorder(clock, calls)
    delay = 0.03
    due = T0 + delay
    stage.arm(delay, callback)
    [first] = fake_loop.handles
    assert (first.kind, first.delay, first.callback, first.args) == (
        "later", delay, stage._when_due, (due, callback)
    )

    clock.now = due - early  # the loop ran it early
    first.run()
    assert calls == []
    [again] = fake_loop.handles[1:]
    assert (again.kind, again.callback, again.args) == ("later", stage._when_due, (due, callback))
    assert again.delay == pytest.approx(early, rel=1e-6)
    assert stage.timer is again

    clock.now = due - early / 10  # early again: once more, for what is left
    again.run()
    [third] = fake_loop.handles[2:]
    assert third.delay == pytest.approx(early / 10, rel=1e-6)
    assert third.args == (due, callback)
    assert stage.timer is third
    assert calls == []

    clock.now = due  # due: calls back, arms nothing more
    third.run()
    assert calls == [due]
    assert len(fake_loop.handles) == 3


def test_when_due_late_calls_back_at_once(
    clock: FakeClock, fake_loop: FakeLoop, calls: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = stage_under(monkeypatch, fake_loop, TimerPrecision())
    stage.arm(0.02, recorder(clock, calls))
    clock.now = T0 + 0.02 + 0.004  # run 4 ms late (a halted vCPU)
    fake_loop.handles[0].run()
    assert calls == [clock.now]
    assert len(fake_loop.handles) == 1


def test_cancel_while_rearmed_never_calls_back(
    clock: FakeClock, fake_loop: FakeLoop, calls: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = stage_under(monkeypatch, fake_loop, TimerPrecision())
    stage.arm(0.02, recorder(clock, calls))
    clock.now = T0 + 0.02 - 0.0005
    fake_loop.handles[0].run()
    rearmed = fake_loop.handles[1]
    assert stage.timer is rearmed
    stage.interrupt()  # a stub restart between the early run and the due time
    assert rearmed.cancelled
    assert stage.timer is None
    assert calls == []


# -- real event loops -------------------------------------------------------------------
class Counting(TimerPrecision):
    """Counts the spins. BUDGET and PREEMPTED are lifted so that every timer of the test
    spins on a loaded machine too (the budget and the backoff are tested above, on a fake
    clock), and the precise test really tests the spin, not a plain-path fallback (which
    has a test of its own: test_plain_timers_never_fire_early)."""

    BUDGET = float("inf")
    PREEMPTED = float("inf")

    def __init__(self) -> None:
        super().__init__()
        self.woken = 0
        self.spins = 0

    def woke(self, late: float) -> None:
        self.woken += 1
        super().woke(late)

    def spun(self, wall: float, cpu: float) -> None:
        self.spins += 1
        super().spun(wall, cpu)


LOOPS = pytest.mark.parametrize(
    "loop_factory",
    [pytest.param(new_event_loop, id="uvloop"), pytest.param(asyncio.new_event_loop, id="asyncio")],
)


def run_timers(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], delays: list[float], precise: bool
) -> list[tuple[float, float]]:
    """Arm one timer per delay, all at once, each on its own stage; returns (due, ran)."""
    loop = loop_factory()
    if loop_factory is new_event_loop:
        assert type(loop).__module__.startswith("uvloop")
    results: list[tuple[float, float]] = []
    try:
        done = loop.create_future()

        def start() -> None:
            for delay in delays:
                stage = noop_stage(loop)
                due = time.monotonic() + delay  # before arm: the stage's own is later

                def fired(due: float = due) -> None:
                    results.append((due, time.monotonic()))
                    if len(results) == len(delays):
                        done.set_result(None)

                stage.arm(delay, fired, precise=precise)

        loop.call_soon(start)
        loop.run_until_complete(asyncio.wait_for(done, 60))
    finally:
        loop.close()
    return results


@LOOPS
def test_precise_timers_never_fire_early(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], monkeypatch: pytest.MonkeyPatch
) -> None:
    precision = Counting()
    precision.enabled = True
    monkeypatch.setattr(toxics, "PRECISION", precision)
    rng = random.Random(7)
    delays = [rng.uniform(0.02, 0.05) for _ in range(30)]
    assert all(precision.spin_for(d) > 0 for d in delays)  # all long enough to spin on

    results = run_timers(loop_factory, delays, precise=True)
    assert len(results) == len(delays)
    early = [(due, ran) for due, ran in results if ran < due]
    assert not early, f"{len(early)} callbacks ran before their due time: {early}"
    # Every timer took the spin path: woken early once, accounted for once.
    assert precision.woken == len(delays)
    assert precision.spins == len(delays)
    assert precision.spent > 0


PLAIN = pytest.mark.parametrize("how", ["disabled", "not-precise"])


@LOOPS
@PLAIN
def test_plain_timers_never_fire_early(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    """The plain path (the thread engine's only one, and ``precise=False``): on uvloop
    a timer may run up to a millisecond early (libuv keeps a cached loop time in whole
    milliseconds); before ``_when_due`` 8-20 of these 30 callbacks ran early there."""
    precision = Counting()
    precision.enabled = how != "disabled"
    monkeypatch.setattr(toxics, "PRECISION", precision)
    late = precision.late
    rng = random.Random(11)
    delays = [rng.uniform(0.02, 0.05) for _ in range(30)]

    results = run_timers(loop_factory, delays, precise=how == "disabled")
    assert len(results) == len(delays)
    early = [(due, ran) for due, ran in results if ran < due]
    assert not early, f"{len(early)} callbacks ran before their due time: {early}"
    # All of them took the plain path: no early wake-up, no spin, nothing charged.
    assert (precision.woken, precision.spins, precision.spent) == (0, 0, 0.0)
    assert precision.late == late
