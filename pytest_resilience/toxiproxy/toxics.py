"""Toxic definitions (attributes, validation, JSON) and their per-connection stages.

A *toxic* is the configuration the API stores (:class:`ToxicConfig`). A
*stage* is one toxic running on one direction of one live connection: it
receives items (bytes, or the :data:`EOF` / :data:`CLOSE` markers), may hold
them in a FIFO behind a timer, and feeds the next stage; the last one feeds
the link's sink, which writes to the destination socket. Stages are pure
callbacks on the event loop: no task per toxic, one timer per stage at most.

Semantics follow toxiproxy-server 2.12 (``toxics/*.go``): see
``reference/toxiproxy-v2.md`` section 2. Stub restarts (PATCH, adding a toxic
after this one, removing the one after it) interrupt the stage the way the Go
goroutine is interrupted, then re-draw its toxicity.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pytest_resilience import faults
from pytest_resilience.toxiproxy.gojson import ApiError, f32

if TYPE_CHECKING:
    import asyncio

    from pytest_resilience.toxiproxy.link import Link

__all__ = [
    "CLOSE",
    "EOF",
    "Marker",
    "Receiver",
    "Stage",
    "ToxicConfig",
    "make_stage",
    "toxic_layout",
    "validate_attributes",
]

#: Go struct names that do not follow ``<CamelCaseType>Toxic`` (toxics/reset_peer.go).
GO_STRUCT_NAMES = {"reset_peer": "ResetToxic"}


def toxic_layout(toxic_type: str) -> tuple[str, tuple[str, ...]] | None:
    """``(Go struct name, attribute names in Go field order)`` of a toxic type the engine
    runs, or ``None`` (answered ``400 invalid toxic type``).

    The types and their attributes come from :mod:`pytest_resilience.faults`; a
    type is run here only when it also has a stage in ``_STAGES``, so a toxic
    registered in ``faults`` alone is validated by the client but refused here.
    """
    fault = faults.NETWORK_FAULTS.get(toxic_type)
    if fault is None or not fault.toxic or toxic_type not in _STAGES:
        return None
    struct = GO_STRUCT_NAMES.get(toxic_type) or (
        "".join(part.title() for part in toxic_type.split("_")) + "Toxic"
    )
    return struct, fault.attribute_names


def attribute_default(toxic_type: str, name: str) -> int:
    """What toxiproxy-server assumes for an omitted attribute (Go's zero value)."""
    attr = faults.get(toxic_type).attribute(name)
    return 0 if attr is None or attr.default is None else int(attr.default)

#: Longest single timer we arm (a month); longer waits behave as "forever".
MAX_WAIT = 30 * 24 * 3600.0


class Marker:
    """End-of-stream markers flowing through a chain after the data."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


#: The source half-closed: the sink half-closes the destination (``write_eof``).
EOF = Marker("EOF")
#: A toxic ended the stream: the sink closes the whole connection.
CLOSE = Marker("CLOSE")

Item = bytes | Marker


class Receiver(Protocol):
    def feed(self, item: Item, ts: float) -> None: ...


@dataclass
class ToxicConfig:
    name: str
    type: str
    stream: str  # as sent by the client (case preserved)
    direction: str  # "upstream" or "downstream"
    toxicity: float
    attributes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "attributes": dict(self.attributes),
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": f32(self.toxicity),
        }

    def attr(self, name: str) -> int:
        return self.attributes.get(name, 0)


def validate_attributes(toxic_type: str, attrs: dict[str, int]) -> None:
    """Reject values that crash toxiproxy-server (400 instead of a dead process).

    Which values those are is :mod:`pytest_resilience.faults`' business (the
    attributes with a ``crash`` reason); every other value is accepted, as the
    real server accepts it (a negative latency acts as 0).
    """
    bad = faults.crash_violation(toxic_type, attrs)
    if bad is not None:
        raise ApiError(
            400,
            f"invalid toxic attributes: {bad.fault} {bad.attribute} must be {bad.rule} "
            f"({bad.why})",
        )


def _clamp_wait(seconds: float) -> float:
    if seconds <= 0:
        return 0.0
    return min(seconds, MAX_WAIT)


class SpinBudget:
    """What turning the engine's event loop without blocking may cost.

    Spinning trades CPU for punctuality: a loop that blocks in ``epoll_wait`` wakes when
    the kernel, and on a virtual machine the hypervisor, gets round to it. The cost is
    bounded two ways: at most :attr:`BUDGET` seconds of charged spinning per second of
    wall time (beyond it nothing spins until the next second), and nothing at all for
    :attr:`BACKOFF` seconds after a spin lost the CPU (its wall time exceeded the CPU
    time the process got by more than :attr:`PREEMPTED`): on a machine whose CPUs are
    all taken, spinning backfires, as the scheduler charges it to the engine and makes
    it wait for its next turn.

    Off by default: in the thread engine a spinning loop would hold the GIL against the
    test's own threads. ``python -m pytest_resilience.toxiproxy`` (the process engine,
    a process that runs nothing but its loop) switches it on.
    """

    __slots__ = ("enabled", "paused_until", "spent", "window")

    BUDGET = 0.05  # seconds of charged spinning per second of wall time
    PREEMPTED = 0.0003
    BACKOFF = 5.0

    def __init__(self) -> None:
        self.enabled = False
        self.window = 0.0  # start of the current one-second budget window
        self.spent = 0.0  # seconds charged in that window
        self.paused_until = 0.0  # no spinning before this time (the CPU was contended)

    def allowed(self, now: float) -> bool:
        """May a spin start at ``now``?"""
        if now < self.paused_until:
            return False
        if now - self.window >= 1.0:
            self.window, self.spent = now, 0.0
        return self.spent < self.BUDGET

    def charge(self, seconds: float) -> None:
        self.spent += seconds

    def lost_cpu(self, wall: float, cpu: float, allowed: float | None = None) -> None:
        """A spin took ``wall`` seconds, of which the process ran ``cpu``: if it was off
        the CPU for more than ``allowed`` (default :attr:`PREEMPTED`), back off."""
        if wall - cpu > (self.PREEMPTED if allowed is None else allowed):
            self.paused_until = time.monotonic() + self.BACKOFF


class TimerPrecision(SpinBudget):
    """How the stages' timers are armed: plainly, or (the engine's own process) woken a
    little early, the last stretch spent turning the event loop without blocking.

    Why: on a VM whose idle vCPUs halt, a timer that blocks in ``epoll_wait`` wakes up
    to ~4-5 ms late (measured with a bare ``select`` sleep, no Python loop involved),
    which made a 100 ms latency toxic's p99 error +4 ms while its median was +0.5 ms.
    Woken early, the loop is already running at the deadline. The loop keeps serving
    every other connection while it spins (it polls with a zero timeout). Besides the
    :class:`SpinBudget` (every spin's wall time is charged), a spin is at most
    :attr:`SHARE` of its wait and at most :attr:`MAX_SPIN`. The margin adapts: it is the
    recent worst lateness of the early wake-ups themselves (a decaying maximum), so on a
    machine whose timers are punctual the spin shrinks to :attr:`MIN_SPIN` (and never
    below it: the lateness is only measured by spinning).
    """

    __slots__ = ("late",)

    MIN_SPIN = 0.0003
    MAX_SPIN = 0.005
    SHARE = 0.05

    def __init__(self) -> None:
        super().__init__()
        self.late = 0.001  # recent worst lateness of an early wake-up (seconds)

    def spin_for(self, delay: float) -> float:
        """How long before ``delay`` runs out to wake up (0: arm a plain timer)."""
        if not self.enabled:
            return 0.0
        spin = min(max(self.late * 1.25 + 0.0002, self.MIN_SPIN), self.MAX_SPIN,
                   delay * self.SHARE)
        if spin < self.MIN_SPIN:  # a wait too short to spend SHARE of it on spinning
            return 0.0
        return spin if self.allowed(time.monotonic()) else 0.0

    def woke(self, late: float) -> None:
        """An early wake-up came ``late`` seconds after it was due."""
        self.late = min(max(late, self.late * 0.97), self.MAX_SPIN)

    def spun(self, wall: float, cpu: float) -> None:
        """A spin took ``wall`` seconds, of which the process ran ``cpu``."""
        self.charge(wall)
        self.lost_cpu(wall, cpu)


#: One per process: the event loop of an engine process is its only user.
PRECISION = TimerPrecision()


class Stage:
    """One toxic on one direction of one connection. The base class is a noop."""

    __slots__ = ("active", "cfg", "closed", "link", "loop", "next", "q", "timer")

    def __init__(self, link: Link, cfg: ToxicConfig) -> None:
        self.link = link
        self.cfg = cfg
        self.loop: asyncio.AbstractEventLoop = link.loop
        self.next: Receiver = link.sink
        self.active = False
        self.closed = False
        self.q: deque[tuple[float, Item]] = deque()
        self.timer: asyncio.Handle | None = None

    # -- plumbing -------------------------------------------------------------
    def feed(self, item: Item, ts: float) -> None:
        if self.closed:
            return
        if not self.active:
            self.next.feed(item, ts)
            return
        self.on_item(item, ts)

    def on_item(self, item: Item, ts: float) -> None:
        self.next.feed(item, ts)

    def enqueue(self, item: Item, ts: float) -> None:
        self.q.append((ts, item))
        if type(item) is bytes:
            self.link.adjust(len(item))

    def dequeue(self) -> tuple[float, Item]:
        ts, item = self.q.popleft()
        if type(item) is bytes:
            self.link.adjust(-len(item))
        return ts, item

    def arm(self, delay: float, callback: Any, precise: bool = True) -> None:
        """Call ``callback`` after ``delay`` seconds (see :class:`TimerPrecision`)."""
        delay = _clamp_wait(delay)
        spin = PRECISION.spin_for(delay) if precise else 0.0
        if spin:
            due = time.monotonic() + delay
            self.timer = self.loop.call_later(
                delay - spin, self._spin, due, due - spin, None, callback
            )
        else:
            self.timer = self.loop.call_later(
                delay, self._when_due, time.monotonic() + delay, callback
            )

    def _when_due(self, due: float, callback: Any) -> None:
        # uvloop keeps timers on a millisecond clock and may run one up to ~1 ms early;
        # Toxiproxy never delivers early, so neither do we: wait out the remainder.
        left = due - time.monotonic()
        if left > 0:
            self.timer = self.loop.call_later(left, self._when_due, due, callback)
            return
        callback()

    def _spin(self, due: float, woken: float | None, start: tuple[float, float] | None,
              callback: Any) -> None:
        now = time.monotonic()
        if woken is not None:  # the early wake-up itself
            PRECISION.woke(now - woken)
            start = (now, time.process_time())
        if now < due:
            self.timer = self.loop.call_soon(self._spin, due, None, start, callback)
            return
        if start is not None:
            PRECISION.spun(now - start[0], time.process_time() - start[1])
        callback()

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def flush(self) -> None:
        while self.q and not self.closed:
            ts, item = self.dequeue()
            self.next.feed(item, ts)

    def close_stream(self) -> None:
        """The toxic closes its output (Go ``stub.Close()``): the connection closes."""
        self.closed = True
        self.cancel_timer()
        while self.q:
            self.dequeue()
        self.next.feed(CLOSE, time.monotonic())

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        """(Re)started with ``active`` decided: arm timers, process the queue."""

    def interrupt(self) -> None:
        """Interrupted before a restart or removal (Go ``InterruptToxic``)."""
        self.cancel_timer()

    def restart(self, active: bool) -> None:
        if self.closed:
            return
        self.interrupt()
        self.active = active
        if active:
            self.start()
        else:
            self.flush()

    def remove(self) -> None:
        """Removed from the chain: hand everything held to the next stage."""
        if self.closed:
            return
        self.interrupt()
        self.flush()
        self.closed = True

    def shutdown(self) -> None:
        """The connection is gone: drop everything."""
        self.closed = True
        self.cancel_timer()
        self.q.clear()

    @property
    def buffered(self) -> int:
        return sum(len(item) for _, item in self.q if type(item) is bytes)


class _PumpStage(Stage):
    """A stage that queues what it is fed and releases it from :meth:`pump`, with at most
    one timer armed (``self.timer``); ``_on_timer`` is the usual callback for it."""

    __slots__ = ()

    def on_item(self, item: Item, ts: float) -> None:
        self.enqueue(item, ts)
        if self.timer is None:
            self.pump()

    def pump(self) -> None:
        raise NotImplementedError

    def _on_timer(self) -> None:
        self.timer = None
        self.pump()

    def start(self) -> None:
        self.pump()


class LatencyStage(_PumpStage):
    __slots__ = ("head_deadline",)

    def __init__(self, link: Link, cfg: ToxicConfig) -> None:
        super().__init__(link, cfg)
        self.head_deadline: float | None = None

    def _delay(self) -> float:
        latency = self.cfg.attr("latency")
        jitter = self.cfg.attr("jitter")
        delay = latency
        if jitter > 0:
            delay += self.link.conn.rng().randrange(2 * jitter) - jitter
        return delay / 1000.0

    def pump(self) -> None:
        q = self.q
        while q and not self.closed:
            if self.head_deadline is None:
                ts, item = q[0]
                self.head_deadline = ts + self._delay() if type(item) is bytes else ts
            now = time.monotonic()
            deadline = self.head_deadline
            if deadline > now:
                # One timer for the whole FIFO; it re-arms if the loop fires it early.
                self.arm(deadline - now, self._on_timer)
                return
            ts, item = self.dequeue()
            self.head_deadline = None
            self.next.feed(item, max(ts, deadline))

    def interrupt(self) -> None:
        super().interrupt()
        self.head_deadline = None
        if self.q and self.active:
            # Go: "Exit fast without applying latency" for the chunk in hand.
            ts, item = self.dequeue()
            self.next.feed(item, ts)


class BandwidthStage(_PumpStage):
    __slots__ = ("charged", "sleep", "wait_start")

    def __init__(self, link: Link, cfg: ToxicConfig) -> None:
        super().__init__(link, cfg)
        self.sleep = 0.0
        self.charged = False
        self.wait_start = 0.0

    def pump(self) -> None:
        rate = self.cfg.attr("rate")
        while self.q and self.timer is None and not self.closed:
            ts, item = self.q[0]
            if type(item) is not bytes:
                self.dequeue()
                self.next.feed(item, ts)
                continue
            if rate <= 0:
                return  # rate 0: the stream stalls until the toxic changes
            if not self.charged:
                self.charged = True
                self.sleep += len(item) / (rate * 1000.0)
            # Plain timers: the next sleep is offset by this one's error anyway.
            if len(item) > rate * 100:
                self.arm(0.1, self._on_split, precise=False)
                return
            if self.sleep > 0:
                self.wait_start = time.monotonic()
                self.arm(self.sleep, self._on_wait, precise=False)
                return
            self.dequeue()
            self.charged = False
            self.next.feed(item, ts)

    def _on_split(self) -> None:
        self.timer = None
        if not self.q:
            return
        limit = self.cfg.attr("rate") * 100
        ts, item = self.dequeue()
        assert type(item) is bytes
        piece, rest = item[:limit], item[limit:]
        self.q.appendleft((ts, rest))
        self.link.adjust(len(rest))
        self.sleep -= 0.1
        self.next.feed(piece, ts)
        self.pump()

    def _on_wait(self) -> None:
        self.timer = None
        # Offset the next sleep by this one's error, like the Go code does.
        self.sleep -= time.monotonic() - self.wait_start
        if not self.q:
            return
        ts, item = self.dequeue()
        self.charged = False
        self.next.feed(item, ts)
        self.pump()

    def start(self) -> None:
        self.pump()

    def interrupt(self) -> None:
        had_timer = self.timer is not None
        super().interrupt()
        if self.q and self.active and (had_timer or self.charged):
            ts, item = self.dequeue()
            self.next.feed(item, ts)
        self.sleep = 0.0
        self.charged = False


class SlowCloseStage(Stage):
    __slots__ = ()

    def on_item(self, item: Item, ts: float) -> None:
        if type(item) is bytes and not self.q:
            self.next.feed(item, ts)
            return
        self.enqueue(item, ts)
        if self.timer is None:
            self.arm(self.cfg.attr("delay") / 1000.0, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self.flush()

    def start(self) -> None:
        if self.q:
            self.arm(self.cfg.attr("delay") / 1000.0, self._on_timer)


class TimeoutStage(Stage):
    __slots__ = ()

    def _arm_idle(self) -> None:
        self.cancel_timer()
        timeout = self.cfg.attr("timeout")
        if timeout > 0:
            self.arm(timeout / 1000.0, self._on_timer)

    def on_item(self, item: Item, ts: float) -> None:
        if type(item) is bytes:
            self._arm_idle()  # data is dropped; the idle timer restarts
            return
        self.cancel_timer()
        self.next.feed(item, ts)

    def _on_timer(self) -> None:
        self.timer = None
        self.link.conn.toxic_fired(self.cfg, "idle timeout")
        self.close_stream()

    def start(self) -> None:
        self._arm_idle()

    def remove(self) -> None:
        # Go's Cleanup hook: removing a timeout toxic closes the connection.
        if self.closed:
            return
        self.cancel_timer()
        self.close_stream()


class ResetPeerStage(Stage):
    __slots__ = ("triggered",)

    def __init__(self, link: Link, cfg: ToxicConfig) -> None:
        super().__init__(link, cfg)
        self.triggered = False

    def on_item(self, item: Item, ts: float) -> None:
        if self.triggered:
            return
        self.triggered = True  # the first chunk (or EOF) is dropped
        self.arm(self.cfg.attr("timeout") / 1000.0, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self.link.conn.toxic_fired(self.cfg, "reset")
        self.close_stream()

    def interrupt(self) -> None:
        # Go sleeps uninterruptibly once triggered: the reset still happens.
        if not self.triggered:
            super().interrupt()

    def restart(self, active: bool) -> None:
        if self.triggered:
            return
        super().restart(active)

    def remove(self) -> None:
        if self.triggered:
            return
        super().remove()


class SlicerStage(_PumpStage):
    __slots__ = ("pieces",)

    def __init__(self, link: Link, cfg: ToxicConfig) -> None:
        super().__init__(link, cfg)
        self.pieces: deque[bytes] | None = None

    def _split(self, data: bytes) -> deque[bytes]:
        avg = self.cfg.attr("average_size")
        var = self.cfg.attr("size_variation")
        rng = self.link.conn.rng() if var > 0 else None
        pieces: deque[bytes] = deque()
        stack = [(0, len(data))]
        while stack:
            start, end = stack.pop()
            if (end - start) - avg <= var:
                if end > start:
                    pieces.append(data[start:end])
                continue
            mid = start + (end - start) // 2
            if rng is not None:
                mid += rng.randrange(2 * var) - var
            stack.append((mid, end))
            stack.append((start, mid))
        return pieces

    def pump(self) -> None:
        delay = self.cfg.attr("delay") / 1e6
        while not self.closed and self.timer is None:
            if self.pieces is None:
                if not self.q:
                    return
                ts, item = self.q[0]
                if type(item) is not bytes:
                    self.dequeue()
                    self.next.feed(item, ts)
                    continue
                self.pieces = self._split(item)
            ts = self.q[0][0]
            if not self.pieces:
                self.pieces = None
                self.dequeue()
                continue
            piece = self.pieces.popleft()
            self.next.feed(piece, ts)
            if not self.pieces:
                self.pieces = None
                if self.q:
                    self.dequeue()
            if delay > 0:
                self.arm(delay, self._on_timer)
                return

    def interrupt(self) -> None:
        super().interrupt()
        if self.pieces is not None and self.q:
            rest = b"".join(self.pieces)
            self.pieces = None
            ts, _ = self.dequeue()
            if rest:
                self.next.feed(rest, ts)
        self.pieces = None


class LimitDataStage(Stage):
    __slots__ = ("transmitted",)

    def __init__(self, link: Link, cfg: ToxicConfig) -> None:
        super().__init__(link, cfg)
        self.transmitted = 0  # kept across restarts of the stub, like Go's state

    def on_item(self, item: Item, ts: float) -> None:
        if type(item) is not bytes:
            self.next.feed(item, ts)
            return
        limit = self.cfg.attr("bytes")
        remaining = max(0, limit - self.transmitted)
        if remaining < len(item):
            item = item[:remaining]
        if item:
            self.transmitted += len(item)
            self.next.feed(item, ts)
        if limit - self.transmitted <= 0 and not self.closed:
            self.link.conn.toxic_fired(self.cfg, "limit reached")
            self.close_stream()


_STAGES: dict[str, type[Stage]] = {
    "latency": LatencyStage,
    "bandwidth": BandwidthStage,
    "slow_close": SlowCloseStage,
    "timeout": TimeoutStage,
    "reset_peer": ResetPeerStage,
    "slicer": SlicerStage,
    "limit_data": LimitDataStage,
    "noop": Stage,
}


def make_stage(link: Link, cfg: ToxicConfig) -> Stage:
    return _STAGES[cfg.type](link, cfg)
