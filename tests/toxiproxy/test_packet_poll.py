"""PacketPoll: the engine process keeps its loop turning for a moment after each packet.

The unit tests drive one fresh :class:`PacketPoll` on a fake clock and a fake loop (the
``time`` of the link module, and of the toxics module where :class:`SpinBudget` reads
it, is replaced; nothing else sees it). Then the real thing: an episode on a real uvloop
loop ends by itself; the thread engine never spins; and the process engine, with and
without ``--no-busy-poll``, forwards bytes intact and goes back to sleep when idle.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from spin_fakes import T0, FakeClock

from pytest_resilience.services.loop_thread import new_event_loop
from pytest_resilience.toxiproxy import EngineHandle, link, start_process, start_thread, toxics
from pytest_resilience.toxiproxy.link import PacketPoll
from pytest_resilience.toxiproxy.toxics import SpinBudget

PP = PacketPoll
REAL_PRESSURE = PacketPoll._pressure  # before any test replaces it
@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    fake_time = fake.as_time()
    monkeypatch.setattr(link, "time", fake_time)
    # SpinBudget.lost_cpu reads the clock of its own module (to set paused_until).
    monkeypatch.setattr(toxics, "time", fake_time)
    # ... and the CPU pressure is the test's too: no stall unless a test adds some.
    monkeypatch.setattr(PacketPoll, "_pressure", fake.pressure)
    return fake


class FakeLoop:
    """Records ``call_soon``; the test runs the calls, in order."""

    def __init__(self) -> None:
        self.soon: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.ran = 0

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        self.soon.append((callback, args))

    @property
    def pending(self) -> int:
        return len(self.soon) - self.ran

    def run_one(self) -> None:
        assert self.pending == 1, f"{self.pending} calls pending, expected one"
        callback, args = self.soon[self.ran]
        self.ran += 1
        callback(*args)


@pytest.fixture
def fake_loop() -> FakeLoop:
    return FakeLoop()


def touch(poll: PacketPoll, loop: FakeLoop) -> None:
    """A packet was forwarded (the fake loop stands in for the event loop)."""
    fake: Any = loop
    poll.touch(fake)


def enabled() -> PacketPoll:
    poll = PacketPoll()
    poll.enabled = True
    return poll


def spin_out(poll: PacketPoll, clock: FakeClock, loop: FakeLoop, step: float,
             cpu_share: float = 1.0) -> int:
    """Run the episode's turns, ``step`` seconds apart, until it ends; returns the turns."""
    turns = 0
    while poll.running:
        clock.advance(step, step * cpu_share)
        loop.run_one()
        turns += 1
        assert turns < 10_000
    assert loop.pending == 0
    return turns


def episode(poll: PacketPoll, clock: FakeClock, loop: FakeLoop) -> bool:
    """One packet and the quiet window after it; True if it started an episode."""
    before = len(loop.soon)
    touch(poll, loop)
    if len(loop.soon) == before:
        assert not poll.running
        return False
    spin_out(poll, clock, loop, PP.WINDOW / 4)
    return True


# -- PacketPoll on a fake clock and loop ------------------------------------------------
def test_defaults_and_constants() -> None:
    poll = PacketPoll()
    assert isinstance(poll, SpinBudget)
    assert poll.enabled is False  # off by default: only the engine process switches it on
    assert (poll.running, poll.deadline, poll.started, poll.cpu_start) == (False, 0.0, 0.0, 0.0)
    assert (poll.window, poll.spent, poll.paused_until) == (0.0, 0.0, 0.0)
    # Its own allowance of lost CPU; the budget and backoff of the base class.
    assert PP.PREEMPTED != SpinBudget.PREEMPTED
    assert (PP.BACKOFF, PP.BUDGET) == (SpinBudget.BACKOFF, SpinBudget.BUDGET)
    assert 0 < PP.WINDOW < PP.PREEMPTED < PP.CHECK_EVERY < PP.BACKOFF
    assert 0 < PP.LOST_SHARE < 1


def test_module_poll_is_off_in_this_process() -> None:
    """The test process is not an engine process: its POLL (which the thread engine's
    links would use) is off."""
    assert isinstance(link.POLL, PacketPoll)
    assert link.POLL.enabled is False


def test_disabled_does_nothing(monkeypatch: pytest.MonkeyPatch, fake_loop: FakeLoop) -> None:
    def no_clock() -> float:
        raise AssertionError("a disabled PacketPoll has no reason to read the clock")

    no_time = SimpleNamespace(monotonic=no_clock, process_time=no_clock)
    monkeypatch.setattr(link, "time", no_time)
    monkeypatch.setattr(toxics, "time", no_time)
    poll = PacketPoll()
    for _ in range(3):
        touch(poll, fake_loop)
    assert fake_loop.soon == []
    assert (poll.running, poll.deadline, poll.started, poll.cpu_start) == (False, 0.0, 0.0, 0.0)
    assert (poll.window, poll.spent, poll.paused_until) == (0.0, 0.0, 0.0)


def test_touch_starts_one_episode(clock: FakeClock, fake_loop: FakeLoop) -> None:
    poll = enabled()
    touch(poll, fake_loop)
    assert poll.running
    assert fake_loop.soon == [(poll._turn, (fake_loop,))]
    assert poll.deadline == T0 + PP.WINDOW
    assert (poll.started, poll.cpu_start) == (T0, T0)
    assert (poll.window, poll.spent) == (T0, 0.0)  # the budget's window opened, nothing charged

    # More packets during the episode: the deadline moves, no second chain starts.
    for _ in range(5):
        clock.advance(PP.WINDOW / 2)
        touch(poll, fake_loop)
        assert poll.deadline == clock.now + PP.WINDOW
    assert len(fake_loop.soon) == 1
    assert poll.started == T0
    assert poll.spent == 0.0


def test_turns_until_the_deadline_then_stops(clock: FakeClock, fake_loop: FakeLoop) -> None:
    poll = enabled()
    touch(poll, fake_loop)
    step = PP.WINDOW / 8
    for turn in range(1, 4):  # before the deadline: each turn schedules exactly the next
        clock.advance(step)
        fake_loop.run_one()
        assert poll.running
        assert len(fake_loop.soon) == turn + 1
        assert fake_loop.soon[-1] == (poll._turn, (fake_loop,))
        assert poll.spent == 0.0

    clock.advance(step)
    touch(poll, fake_loop)  # a packet half-way: the episode lasts WINDOW from here
    last_packet = clock.now
    assert len(fake_loop.soon) == 4  # (no second chain)
    turns = spin_out(poll, clock, fake_loop, step)
    assert clock.now >= last_packet + PP.WINDOW
    assert clock.now - step < last_packet + PP.WINDOW  # it stopped at the first chance
    assert turns >= 1
    assert not poll.running
    assert poll.spent == PP.WINDOW  # charged the quiet window, once, not the episode
    assert poll.paused_until == 0.0  # it had the CPU all along

    # The next packet starts a new episode, charged once more.
    touch(poll, fake_loop)
    assert poll.running
    assert poll.started == clock.now
    spin_out(poll, clock, fake_loop, step)
    assert poll.spent == PP.WINDOW * 2


def test_turn_exactly_at_the_deadline_stops(clock: FakeClock, fake_loop: FakeLoop) -> None:
    poll = enabled()
    touch(poll, fake_loop)
    clock.now = poll.deadline
    clock.cpu = T0 + PP.WINDOW
    fake_loop.run_one()
    assert not poll.running
    assert fake_loop.pending == 0
    assert poll.spent == PP.WINDOW


def test_budget_exhausted_then_next_window(clock: FakeClock, fake_loop: FakeLoop) -> None:
    poll = enabled()
    episodes = 0
    while episode(poll, clock, fake_loop):
        episodes += 1
        assert episodes <= PP.BUDGET / PP.WINDOW + 2
    # Each episode charged WINDOW: the budget allows about BUDGET / WINDOW of them.
    assert episodes == pytest.approx(PP.BUDGET / PP.WINDOW, abs=1)
    assert poll.spent >= PP.BUDGET
    assert clock.now - T0 < 1.0  # (all within the first window of the fake clock)
    assert poll.paused_until == 0.0  # not a backoff: the budget

    refused = len(fake_loop.soon)
    for at in (0.5, 0.9, 0.999):  # nothing spins for the rest of this window
        clock.now = T0 + at
        touch(poll, fake_loop)
        assert not poll.running
    assert len(fake_loop.soon) == refused
    assert poll.window == T0

    clock.now = T0 + 1.0  # a new window: spinning resumes, with a fresh budget
    assert episode(poll, clock, fake_loop)
    assert poll.window == T0 + 1.0
    assert poll.spent == PP.WINDOW


def test_a_long_episode_is_charged_one_window(clock: FakeClock, fake_loop: FakeLoop) -> None:
    """Steady traffic keeps one episode going well past the budget; only its quiet end
    is charged (spinning between packets replaces the sleeps and wake-ups)."""
    poll = enabled()
    touch(poll, fake_loop)
    packets = int(PP.BUDGET * 4 / (PP.WINDOW / 2))
    for _ in range(packets):  # a packet every half WINDOW, a turn in between
        clock.advance(PP.WINDOW / 2)
        fake_loop.run_one()
        assert poll.running  # all one episode
        assert fake_loop.pending == 1  # one chain of turns
        touch(poll, fake_loop)
    assert clock.now - T0 == pytest.approx(PP.BUDGET * 4)  # four budgets' worth of spinning
    assert PP.BUDGET * 4 > PP.CHECK_EVERY
    assert clock.now - poll.started < PP.CHECK_EVERY  # checked for lost CPU on the way
    spin_out(poll, clock, fake_loop, PP.WINDOW / 4)
    assert poll.spent == PP.WINDOW
    assert poll.paused_until == 0.0


@pytest.mark.parametrize(
    ("wall", "lost", "backs_off"),
    [
        # A short episode: PREEMPTED is the allowance.
        (PP.PREEMPTED * 2, PP.PREEMPTED * 1.5, True),  # the turn came late, off the CPU
        (PP.PREEMPTED * 2, PP.PREEMPTED * 0.9, False),  # lost less than PREEMPTED
        (PP.WINDOW * 2, PP.WINDOW * 2, False),  # lost all of a short one: < PREEMPTED
        # A long episode: LOST_SHARE of it is the allowance.
        (PP.CHECK_EVERY * 0.9, PP.CHECK_EVERY * 0.9 * PP.LOST_SHARE * 1.2, True),
        # lost far more than PREEMPTED, but less than LOST_SHARE
        (PP.CHECK_EVERY * 0.9, PP.CHECK_EVERY * 0.9 * PP.LOST_SHARE * 0.8, False),
        (PP.CHECK_EVERY * 0.5, PP.CHECK_EVERY * 0.5 * PP.LOST_SHARE * 1.1, True),
        (PP.CHECK_EVERY * 0.5, PP.CHECK_EVERY * 0.5 * PP.LOST_SHARE * 0.9, False),
    ],
)
def test_episode_off_the_cpu_backs_off(
    clock: FakeClock, fake_loop: FakeLoop, wall: float, lost: float, backs_off: bool
) -> None:
    assert (lost > max(PP.PREEMPTED, PP.LOST_SHARE * wall)) is backs_off  # the rule
    poll = enabled()
    # Packets keep the episode going for ``wall`` (one every ``step``, a turn half-way
    # between), while the process runs for ``wall - lost`` of it.
    packets = max(int(wall / PP.WINDOW), 1)
    step = wall / packets  # at least WINDOW, less than 2 WINDOW

    def at(offset: float) -> None:
        clock.now = T0 + offset
        clock.cpu = T0 + offset * (1 - lost / wall)

    touch(poll, fake_loop)
    for n in range(1, packets):
        at((n - 0.5) * step)
        fake_loop.run_one()
        assert poll.running
        at(n * step)
        touch(poll, fake_loop)
    at(wall)  # the last turn comes when the deadline has passed: the episode ends
    assert clock.now >= poll.deadline
    fake_loop.run_one()
    assert not poll.running
    assert fake_loop.pending == 0
    assert poll.spent == PP.WINDOW
    end = clock.now

    if not backs_off:
        assert poll.paused_until == 0.0
        clock.advance(PP.WINDOW)
        assert episode(poll, clock, fake_loop)
        return
    assert poll.paused_until == end + PP.BACKOFF
    for later in (0.0, PP.WINDOW, PP.BACKOFF / 2, PP.BACKOFF - 0.001):
        clock.now = end + later  # paused
        assert not episode(poll, clock, fake_loop)
    clock.now = end + PP.BACKOFF  # BACKOFF seconds after: it resumes
    assert episode(poll, clock, fake_loop)
    assert poll.paused_until == end + PP.BACKOFF  # (the resumed episode kept the CPU)


@pytest.mark.parametrize("lost_share", [PP.LOST_SHARE * 1.2, PP.LOST_SHARE * 0.8])
def test_steady_traffic_is_checked_for_lost_cpu_as_it_goes(
    clock: FakeClock, fake_loop: FakeLoop, lost_share: float
) -> None:
    """A spin that packets keep going never reaches its quiet end: it is checked every
    CHECK_EVERY instead, and stops there if it lost more than LOST_SHARE of the CPU."""
    poll = enabled()
    touch(poll, fake_loop)
    step = PP.WINDOW / 2
    while poll.running and clock.now - T0 < PP.CHECK_EVERY * 3:
        clock.advance(step, step * (1 - lost_share))
        fake_loop.run_one()
        if poll.running:
            touch(poll, fake_loop)
    if lost_share > PP.LOST_SHARE:
        assert not poll.running
        assert fake_loop.pending == 0
        assert clock.now - T0 == pytest.approx(PP.CHECK_EVERY, abs=step)  # the first check
        assert poll.paused_until == pytest.approx(clock.now + PP.BACKOFF)
        assert poll.spent == 0.0  # stopped mid-traffic: nothing was waste
        clock.advance(PP.WINDOW)
        assert not episode(poll, clock, fake_loop)  # backed off
    else:
        assert poll.running  # three checks passed
        assert poll.paused_until == 0.0
        assert clock.now - poll.started < PP.CHECK_EVERY


@pytest.mark.parametrize("share", [PP.STALL_MAX * 1.2, PP.STALL_MAX * 0.8])
def test_backs_off_while_others_wait_for_a_cpu(
    clock: FakeClock, fake_loop: FakeLoop, share: float
) -> None:
    """Every CHECK_EVERY of spinning the CPU pressure is read; when tasks waited for a
    CPU more than STALL_MAX of the time, spinning stops for BACKOFF."""
    poll = enabled()
    assert poll.switch_on()
    assert (poll.pressure_at, poll.pressure_total) == (T0, 0)
    touch(poll, fake_loop)
    step = PP.WINDOW / 2
    reads = clock.pressure_reads
    while poll.running and clock.now - T0 < PP.CHECK_EVERY * 3:
        clock.advance(step)  # the process keeps its CPU: only the pressure tells
        clock.stall_us += round(step * share * 1e6)
        fake_loop.run_one()
        if poll.running:
            touch(poll, fake_loop)
    if share > PP.STALL_MAX:
        assert not poll.running
        assert clock.now - T0 == pytest.approx(PP.CHECK_EVERY, abs=step)  # the first check
        assert poll.paused_until == pytest.approx(clock.now + PP.BACKOFF)
        clock.advance(PP.WINDOW)
        assert not episode(poll, clock, fake_loop)
    else:
        assert poll.running
        assert poll.paused_until == 0.0
        # Once per CHECK_EVERY, not once per turn (hundreds of turns).
        assert 2 <= clock.pressure_reads - reads <= (clock.now - T0) / PP.CHECK_EVERY


def test_short_episodes_read_the_pressure_at_most_every_check(
    clock: FakeClock, fake_loop: FakeLoop
) -> None:
    poll = enabled()
    assert poll.switch_on()
    reads = clock.pressure_reads
    for _ in range(50):  # 50 short episodes, far less than CHECK_EVERY in all
        assert episode(poll, clock, fake_loop)
    assert clock.now - T0 < PP.CHECK_EVERY
    assert clock.pressure_reads == reads
    clock.now = T0 + PP.CHECK_EVERY * 1.01
    assert episode(poll, clock, fake_loop)
    assert clock.pressure_reads == reads + 1


def test_no_pressure_no_spinning(
    clock: FakeClock, fake_loop: FakeLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the kernel's CPU pressure the engine could not tell when to stop: it
    never spins; and if the pressure goes away mid-run, it stops for good."""
    monkeypatch.setattr(PacketPoll, "PRESSURE", "/nonexistent/pressure/cpu")
    monkeypatch.setattr(PacketPoll, "_pressure", REAL_PRESSURE)
    poll = PacketPoll()
    assert poll.switch_on() is False
    assert poll.enabled is False
    touch(poll, fake_loop)
    assert fake_loop.pending == 0

    monkeypatch.setattr(PacketPoll, "_pressure", clock.pressure)
    poll = enabled()
    assert poll.switch_on()
    touch(poll, fake_loop)
    clock.advance(PP.CHECK_EVERY * 1.01)  # on the CPU all along
    monkeypatch.setattr(PacketPoll, "_pressure", lambda self: None)
    fake_loop.run_one()  # the check finds no pressure
    assert not poll.running
    assert poll.enabled is False


@pytest.mark.skipif(not Path(PP.PRESSURE).exists(), reason="no /proc/pressure/cpu (PSI)")
def test_reads_the_real_pressure() -> None:
    poll = PacketPoll()
    total = poll._pressure()
    assert isinstance(total, int)
    assert total >= 0
    assert poll.switch_on()
    assert poll.enabled
    assert poll.pressure_total >= total  # it only grows


# -- PacketPoll on a real uvloop loop ---------------------------------------------------
class Recording(PacketPoll):
    """Records the episodes. BUDGET, PREEMPTED and LOST_SHARE are lifted so that a
    loaded machine cannot switch it off mid-test (they are tested above, on a fake
    clock)."""

    BUDGET = float("inf")
    PREEMPTED = float("inf")
    LOST_SHARE = float("inf")

    def __init__(self) -> None:
        super().__init__()
        self.turns = 0
        self.charges: list[float] = []
        self.walls: list[float] = []
        self.ended: asyncio.Future[None] | None = None

    def charge(self, seconds: float) -> None:
        self.charges.append(seconds)
        super().charge(seconds)

    def _turn(self, loop: asyncio.AbstractEventLoop) -> None:
        self.turns += 1
        super()._turn(loop)
        if not self.running:
            self.walls.append(time.monotonic() - self.started)
            if self.ended is not None and not self.ended.done():
                self.ended.set_result(None)


def test_episode_on_a_real_loop_ends_by_itself() -> None:
    loop = new_event_loop()
    assert type(loop).__module__.startswith("uvloop")
    poll = Recording()
    poll.enabled = True
    received: list[bytes] = []
    running_on_touch: list[bool] = []

    class Touching(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            received.append(data)
            poll.touch(loop)
            running_on_touch.append(poll.running)

    ours, theirs = socket.socketpair()
    try:
        async def main() -> None:
            transport, _ = await loop.connect_accepted_socket(Touching, ours)
            try:
                for n in range(3):
                    poll.ended = loop.create_future()
                    packets = len(received)
                    turns = poll.turns
                    theirs.send(b"packet %d" % n)
                    await asyncio.wait_for(poll.ended, 30)
                    assert not poll.running
                    assert len(received) == packets + 1  # it ended with no further packet
                    assert running_on_touch[-1] is True  # the packet started the episode
                    assert poll.turns > turns
                    # No chain left behind: a few more loop iterations turn nothing.
                    turns = poll.turns
                    for _ in range(5):
                        await asyncio.sleep(0)
                    assert poll.turns == turns
                    assert not poll.running
            finally:
                transport.close()

        loop.run_until_complete(main())
    finally:
        theirs.close()
        ours.close()
        loop.close()
    assert b"".join(received) == b"packet 0packet 1packet 2"
    assert poll.charges == [PP.WINDOW] * 3  # exactly WINDOW, once per episode
    assert len(poll.walls) == 3
    assert all(wall >= PP.WINDOW for wall in poll.walls)  # it spun the whole window
    assert poll.paused_until == 0.0


# -- the engines ------------------------------------------------------------------------
def _poll_state(poll: PacketPoll) -> tuple[Any, ...]:
    return (poll.enabled, poll.running, poll.deadline, poll.started, poll.cpu_start,
            poll.window, poll.spent, poll.paused_until)


def _proxy(engine: EngineHandle, upstream: str, name: str) -> int:
    response = httpx.post(
        f"{engine.url}/proxies",
        json={"name": name, "upstream": upstream, "listen": "127.0.0.1:0"}, timeout=15,
    )
    assert response.status_code == 201, response.text
    return int(response.json()["listen"].rsplit(":", 1)[1])


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _round_trips(port: int, count: int, seed: int) -> int:
    """``count`` round trips of varied sizes (1 B to 64 KiB) through the proxy on
    ``port``; returns the bytes sent."""
    rng = random.Random(seed)
    sizes = [1, 64 * 1024, 2, 1460, 1461, 4096, 65535]
    sizes += [rng.choice((rng.randint(1, 512), rng.randint(1, 64 * 1024)))
              for _ in range(count - len(sizes))]
    total = 0
    with _connect(port) as sock:
        for size in sizes:
            payload = rng.randbytes(size)
            sock.sendall(payload)
            got = _recv_exactly(sock, size)
            assert got == payload, f"{size}-byte round trip came back different"
            total += size
    return total


def test_thread_engine_never_spins(echo_server: Any) -> None:
    before = _poll_state(link.POLL)
    assert before[0] is False
    with start_thread() as engine:
        port = _proxy(engine, echo_server.address, "poll-thread")
        assert _round_trips(port, 40, seed=1) > 64 * 1024
    assert _poll_state(link.POLL) == before


class CountingTouches(Recording):
    """Counts the packets that asked for a spin."""

    def __init__(self) -> None:
        super().__init__()
        self.touches = 0

    def touch(self, loop: asyncio.AbstractEventLoop) -> None:
        self.touches += 1
        super().touch(loop)


def test_only_connections_without_toxics_spin(
    echo_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clean proxy spins after its packets; a proxy with a toxic in either direction
    keeps its CPU for the toxic's timers. (Switched on here in the thread engine, which
    never spins on its own, to watch it from the test.)"""
    poll = CountingTouches()
    poll.enabled = True
    monkeypatch.setattr(link, "POLL", poll)
    with start_thread() as engine:
        clean = _proxy(engine, echo_server.address, "poll-clean")
        _round_trips(clean, 20, seed=2)
        # Each request and each answer (the last answer's may still be on its way: the
        # engine touches after it has written the answer the client already read).
        assert poll.touches >= 2 * 20 - 1
        for stream in ("upstream", "downstream"):
            name = f"poll-toxic-{stream}"
            port = _proxy(engine, echo_server.address, name)
            httpx.post(
                f"{engine.url}/proxies/{name}/toxics",
                json={"type": "latency", "stream": stream, "attributes": {"latency": 1}},
                timeout=15,
            ).raise_for_status()
            before = poll.touches
            _round_trips(port, 20, seed=3)
            assert poll.touches == before, f"a proxy with a {stream} toxic spun"


@pytest.fixture
def engines() -> Iterator[Callable[..., EngineHandle]]:
    started: list[EngineHandle] = []

    def start(**kwargs: Any) -> EngineHandle:
        started.append(start_process(**kwargs))
        return started[-1]

    yield start
    for engine in started:
        engine.stop()


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def _main_thread(pid: int) -> tuple[str, int]:
    """The engine's loop thread (its main thread): its state letter and its count of
    voluntary context switches (each time it blocked)."""
    status = Path(f"/proc/{pid}/task/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return fields["State"].split()[0], int(fields["voluntary_ctxt_switches"])


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("busy_poll", [True, False], ids=["busy-poll", "no-busy-poll"])
def test_process_engine_forwards_bytes_intact(
    engines: Callable[..., EngineHandle], echo_server: Any, busy_poll: bool
) -> None:
    engine = engines() if busy_poll else engines(busy_poll=False)  # busy_poll: the default
    assert engine.mode == "process"
    assert ("--no-busy-poll" in _cmdline(engine.pid)) is not busy_poll

    port = _proxy(engine, echo_server.address, "poll-direct")
    sent = _round_trips(port, 100, seed=2)  # no toxics: the direct path
    assert sent > 2 * 64 * 1024
    # Through a toxic chain (a latency toxic): the stage path, precise timers and all.
    chained = _proxy(engine, echo_server.address, "poll-chain")
    response = httpx.post(
        f"{engine.url}/proxies/poll-chain/toxics",
        json={"type": "latency", "stream": "downstream", "attributes": {"latency": 1}},
        timeout=15,
    )
    assert response.status_code == 200, response.text
    assert _round_trips(chained, 100, seed=3) > 2 * 64 * 1024
    response = httpx.get(f"{engine.url}/proxies/poll-chain", timeout=15)
    assert response.status_code == 200
    assert engine.running

    # Idle, the engine sleeps: its loop thread blocks again and again (on the parent
    # watch timer), where a loop stuck turning would never block. Bounded, not timed.
    _, switches = _main_thread(engine.pid)
    deadline = time.monotonic() + 5.0
    seen_asleep = False
    while True:
        state, now_switches = _main_thread(engine.pid)
        seen_asleep = seen_asleep or state == "S"
        if seen_asleep and now_switches > switches:
            break
        assert time.monotonic() < deadline, (
            f"the idle engine did not sleep within 5 s (state {state}, "
            f"voluntary switches {switches} -> {now_switches})"
        )
        time.sleep(0.01)  # (between looks at /proc: the condition is what is waited on)
