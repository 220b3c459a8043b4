"""The data plane of one proxied connection: two links, each with a toxic chain.

``upstream`` carries client -> server bytes, ``downstream`` server -> client.
With no active toxic a link is a direct pump (``data_received`` writes
straight to the other transport); otherwise bytes flow through the link's
stages (:mod:`pytest_resilience.toxiproxy.toxics`) into its :class:`Sink`.

Backpressure: a link pauses reading its source while the destination
transport is above its write high-water mark or while its stages hold more
than :data:`STAGE_HIGH` bytes, and resumes below the low marks, so memory stays
flat under a slow reader.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import time
from typing import TYPE_CHECKING, Any, cast

from pytest_resilience.toxiproxy.toxics import (
    CLOSE,
    EOF,
    Item,
    Receiver,
    SpinBudget,
    Stage,
    ToxicConfig,
    make_stage,
)

if TYPE_CHECKING:
    from pytest_resilience.toxiproxy.proxy import Proxy

__all__ = [
    "POLL", "ClientSide", "Connection", "Link", "PacketPoll", "Sink", "UpstreamSide",
    "fail_connection",
]

log = logging.getLogger("pytest_resilience.toxiproxy")

STAGE_HIGH = 8 * 1024 * 1024
STAGE_LOW = 2 * 1024 * 1024
WRITE_HIGH = 1024 * 1024
WRITE_LOW = 256 * 1024
_LINGER_0 = struct.pack("ii", 1, 0)


class PacketPoll(SpinBudget):
    """After each packet the engine forwards, keep its loop turning (polling with a zero
    timeout) for :attr:`WINDOW`, so the answer that usually follows within tens of
    microseconds finds the engine awake.

    Why: measured on a 2-vCPU VM, 86 % of the engine's CPU per proxied round trip was
    the kernel putting it to sleep and waking it (twice per round trip), and its p99
    round trip was 2-5x its median: a loop that blocks wakes when the (virtual) CPU gets
    round to it. While traffic flows, spinning costs about what those sleeps and
    wake-ups cost on a quiet machine (the engine's CPU per round trip rose 9-17 % for an
    echo server, more for Postgres, whose answers take longer); only the last stretch
    after the final packet is pure waste, and that is what the :class:`SpinBudget`
    charges (at most :attr:`BUDGET` of each second).

    Spinning only pays while there is a spare CPU. So every :attr:`CHECK_EVERY` of
    spinning, the engine reads the kernel's CPU pressure (``/proc/pressure/cpu``: the
    share of time some task waited for a CPU) and backs off for :attr:`BACKOFF` seconds
    when it exceeds :attr:`STALL_MAX` (measured: 0.02-0.19 on a quiet 2-vCPU machine
    with the engine spinning, 0.11-0.39 with one CPU-bound process besides). It also
    backs off when a spin was off the CPU for more than :attr:`LOST_SHARE` of its time
    (and more than :attr:`PREEMPTED`). Where the pressure cannot be read (no PSI), it
    never spins: it could not tell when to stop.

    Only connections with no toxic in either direction spin: a clean proxy gets out of
    the way as fast as it can, while a proxy with toxics keeps its CPU for their timers.
    Measured with a 100 ms latency toxic, clients taking turns with other traffic: an
    engine that spun after packets was +0.1 ms later on the median, presumably because
    the scheduler (EEVDF) carries a task's use of the CPU across its sleeps and wakes it
    later for its timer.

    Only the process engine spins (``--no-busy-poll`` / ``start_process(busy_poll=
    False)`` switch it off); the thread engine never does, it would hold the GIL.
    """

    __slots__ = ("cpu_start", "deadline", "pressure_at", "pressure_total", "running", "started")

    WINDOW = 0.0001
    LOST_SHARE = 0.25
    CHECK_EVERY = 0.02  # how often a spin checks the CPU pressure (and lost CPU)
    STALL_MAX = 0.25
    PRESSURE = "/proc/pressure/cpu"
    PREEMPTED = 0.001

    def __init__(self) -> None:
        super().__init__()
        self.running = False
        self.deadline = 0.0
        self.started = 0.0
        self.cpu_start = 0.0
        self.pressure_at = 0.0  # when the CPU pressure was last read
        self.pressure_total = 0  # its "some" total then (microseconds of stall)

    def switch_on(self) -> bool:
        """Enable spinning if the CPU pressure can be read; returns whether it is on."""
        total = self._pressure()
        self.enabled = total is not None
        if total is not None:
            self.pressure_at, self.pressure_total = time.monotonic(), total
        return self.enabled

    def _pressure(self) -> int | None:
        """The kernel's total CPU stall time ("some", microseconds), None if unknown."""
        try:
            with open(self.PRESSURE, "rb") as f:
                return int(f.readline().rsplit(b"=", 1)[1])
        except (OSError, ValueError, IndexError):
            return None

    def _stalled(self, now: float) -> bool:
        """Did tasks wait for a CPU more than :attr:`STALL_MAX` of the time since the
        last reading? Read at most every :attr:`CHECK_EVERY`."""
        elapsed = now - self.pressure_at
        if elapsed < self.CHECK_EVERY:
            return False
        total = self._pressure()
        if total is None:  # the pressure went away: stop spinning for good
            self.enabled = False
            return True
        stall = (total - self.pressure_total) / 1e6
        self.pressure_at, self.pressure_total = now, total
        return stall > self.STALL_MAX * elapsed

    def touch(self, loop: asyncio.AbstractEventLoop) -> None:
        """A packet was forwarded: spin for :attr:`WINDOW` from now."""
        if not self.enabled:
            return
        now = time.monotonic()
        if self.running:
            self.deadline = now + self.WINDOW
            return
        if not self.allowed(now):
            return
        self.running = True
        self.deadline = now + self.WINDOW
        self.started, self.cpu_start = now, time.process_time()
        loop.call_soon(self._turn, loop)

    def _turn(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        if now < self.deadline:
            if now - self.started < self.CHECK_EVERY:
                loop.call_soon(self._turn, loop)
                return
            # Steady traffic keeps one spin going: check it for lost CPU as it goes.
            if self._lost(now):
                self.running = False
                return
            self.started, self.cpu_start = now, time.process_time()
            loop.call_soon(self._turn, loop)
            return
        self.running = False
        self.charge(self.WINDOW)  # the stretch after the last packet found nothing
        self._lost(now)

    def _lost(self, now: float) -> bool:
        """Was the spin since :attr:`started` off the CPU too long, or do others wait
        for a CPU? (Then back off.)"""
        wall = now - self.started
        self.lost_cpu(
            wall, time.process_time() - self.cpu_start, max(self.PREEMPTED, wall * self.LOST_SHARE)
        )
        if self._stalled(now):
            self.paused_until = max(self.paused_until, now + self.BACKOFF)
        return now < self.paused_until


#: One per process: the event loop of an engine process is its only user.
POLL = PacketPoll()


def _tune_socket(transport: asyncio.BaseTransport, linger0: bool = False) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if linger0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
    except OSError:
        pass


class Sink:
    """The end of a chain: writes to the destination transport."""

    __slots__ = ("done", "link", "pending", "transport")

    def __init__(self, link: Link) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.done = False
        #: items that arrived before the destination was connected
        self.pending: list[tuple[Item, float]] = []

    def feed(self, item: Item, ts: float) -> None:
        if self.done:
            return
        if self.transport is None:
            self.pending.append((item, ts))
            return
        if type(item) is bytes:
            self.transport.write(item)
            self.link.bytes_out += len(item)
            return
        self.done = True
        if item is EOF:
            self.link.conn.link_eof(self.link)
        else:
            self.link.conn.close("closed by toxic")


class Link:
    __slots__ = (
        "buffered",
        "bytes_in",
        "bytes_out",
        "conn",
        "direct",
        "direction",
        "eof_done",
        "head",
        "loop",
        "other",
        "paused_buffer",
        "paused_writer",
        "sink",
        "source",
        "source_eof",
        "source_paused",
        "stages",
    )

    def __init__(self, conn: Connection, direction: str) -> None:
        self.conn = conn
        self.loop: asyncio.AbstractEventLoop = conn.loop
        self.direction = direction
        self.sink = Sink(self)
        self.stages: list[Stage] = []
        self.other: Link = self  # the opposite direction (set by the Connection)
        self.head: Receiver = self.sink
        self.direct: asyncio.Transport | None = None
        self.source: asyncio.Transport | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.buffered = 0
        self.paused_writer = False
        self.paused_buffer = False
        self.source_paused = False
        self.source_eof = False
        self.eof_done = False

    # -- chain management -----------------------------------------------------
    def rewire(self) -> None:
        stages = self.stages
        for index, stage in enumerate(stages):
            stage.next = stages[index + 1] if index + 1 < len(stages) else self.sink
        self.head = stages[0] if stages else self.sink
        if not self.sink.done and not any(s.active or s.q for s in stages):
            self.direct = self.sink.transport
        else:
            self.direct = None

    def draw(self, cfg: ToxicConfig) -> bool:
        toxicity = cfg.toxicity
        if toxicity >= 1.0:
            active = True
        elif toxicity <= 0.0:
            active = False
        else:
            active = self.conn.rng().random() < toxicity
        if active:
            self.conn.toxic_applied(cfg)
        return active

    def start_chain(self, configs: list[ToxicConfig]) -> None:
        for cfg in configs:
            stage = make_stage(self, cfg)
            self.stages.append(stage)
        self.rewire()
        for stage in self.stages:
            stage.active = self.draw(stage.cfg)
        self.rewire()
        for stage in self.stages:
            if stage.active:
                stage.start()

    def add_toxic(self, cfg: ToxicConfig) -> None:
        stage = make_stage(self, cfg)
        self.stages.append(stage)
        self.direct = None
        self.rewire()
        stage.active = self.draw(cfg)
        if stage.active:
            stage.start()
        if len(self.stages) > 1:
            # The previous last stub is interrupted and restarted: its draw is re-made.
            last = self.stages[-2]
            last.restart(self.draw(last.cfg))
        self.rewire()

    def remove_toxic(self, name: str) -> None:
        index = next((i for i, s in enumerate(self.stages) if s.cfg.name == name), -1)
        if index < 0:
            return
        stage = self.stages[index]
        self.direct = None
        stage.remove()
        del self.stages[index]
        self.rewire()
        if index > 0:
            previous = self.stages[index - 1]
            previous.restart(self.draw(previous.cfg))
        self.rewire()

    def update_toxic(self, cfg: ToxicConfig) -> None:
        for stage in self.stages:
            if stage.cfg.name == cfg.name:
                stage.cfg = cfg
                self.direct = None
                stage.restart(self.draw(cfg))
                break
        self.rewire()

    # -- flow control -----------------------------------------------------------
    def adjust(self, delta: int) -> None:
        self.buffered += delta
        if delta > 0:
            if self.buffered > STAGE_HIGH and not self.paused_buffer:
                self.paused_buffer = True
                self.update_flow()
        elif self.paused_buffer and self.buffered <= STAGE_LOW:
            self.paused_buffer = False
            self.update_flow()

    def set_writer_paused(self, paused: bool) -> None:
        self.paused_writer = paused
        self.update_flow()

    def update_flow(self) -> None:
        want = self.paused_writer or self.paused_buffer
        source = self.source
        if source is None or self.source_eof or want == self.source_paused:
            return
        self.source_paused = want
        try:
            if want:
                source.pause_reading()
            else:
                source.resume_reading()
        except (RuntimeError, AttributeError):
            pass

    def first_byte(self) -> None:
        self.conn.proxy.events.record(
            self.conn.proxy.name, self.conn.id, "first_byte", direction=self.direction
        )


class Connection:
    __slots__ = (
        "_rng",
        "client",
        "client_addr",
        "closed",
        "dial_task",
        "down",
        "id",
        "index",
        "linger0",
        "loop",
        "opened_at",
        "proxy",
        "up",
        "upstream",
    )

    def __init__(self, proxy: Proxy, client: asyncio.Transport) -> None:
        self.proxy = proxy
        self.loop: asyncio.AbstractEventLoop = proxy.loop
        self.id = proxy.engine_next_conn_id()
        self.index = proxy.next_index()
        self.client = client
        self.upstream: asyncio.Transport | None = None
        self.up = Link(self, "upstream")
        self.down = Link(self, "downstream")
        self.up.other, self.down.other = self.down, self.up
        self.closed = False
        self.linger0 = False
        self.dial_task: asyncio.Task[None] | None = None
        self.opened_at = time.monotonic()
        self._rng: random.Random | None = None
        peer = client.get_extra_info("peername")
        self.client_addr: tuple[str, int] = (
            (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("", 0)
        )

    def rng(self) -> random.Random:
        if self._rng is None:
            self._rng = random.Random(f"{self.proxy.seed}:{self.proxy.name}:{self.index}")
        return self._rng

    def toxic_applied(self, cfg: ToxicConfig) -> None:
        self.proxy.events.record(
            self.proxy.name, self.id, "toxic_applied",
            toxic=cfg.name, type=cfg.type, stream=cfg.direction,
        )

    def toxic_fired(self, cfg: ToxicConfig, what: str) -> None:
        self.proxy.events.record(
            self.proxy.name, self.id, "toxic_fired",
            toxic=cfg.name, type=cfg.type, stream=cfg.direction, effect=what,
        )

    # -- life cycle -------------------------------------------------------------
    def start(self) -> None:
        self.client.pause_reading()
        self.up.source = self.client
        self.down.sink.transport = self.client
        self.proxy.events.record(
            self.proxy.name, self.id, "accepted",
            client=self.client_addr[0], client_port=self.client_addr[1], index=self.index,
        )
        if log.isEnabledFor(logging.INFO):
            log.info(
                "Accepted client name=%s client=%s:%d proxy=%s upstream=%s",
                self.proxy.name, self.client_addr[0], self.client_addr[1],
                self.proxy.listen, self.proxy.upstream,
            )
        self.dial_task = self.loop.create_task(self._dial())

    async def _dial(self) -> None:
        host, port = self.proxy.upstream_addr()
        try:
            if port is None:
                raise OSError(f"address {self.proxy.upstream}: missing port in address")
            transport, _ = await self.loop.create_connection(
                lambda: UpstreamSide(self), host, port
            )
        except (OSError, ValueError, UnicodeError) as exc:
            if self.closed:
                return
            log.error(
                "Unable to open connection to upstream name=%s upstream=%s error=%s",
                self.proxy.name, self.proxy.upstream, exc,
            )
            self.proxy.events.record(
                self.proxy.name, self.id, "upstream_failed", error=str(exc)
            )
            self.close("upstream unreachable")
            return
        finally:
            self.dial_task = None
        if self.closed:
            transport.abort()

    def upstream_made(self, transport: asyncio.Transport) -> None:
        if self.closed:
            transport.abort()
            return
        self.upstream = transport
        chains = self.proxy.toxics
        self.linger0 = any(
            t.type == "reset_peer" for chain in chains.values() for t in chain
        )
        _tune_socket(transport, self.linger0)
        _tune_socket(self.client, self.linger0)
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        early, self.up.sink.pending = self.up.sink.pending, []
        self.up.sink.transport = transport
        self.down.source = transport
        self.proxy.events.record(self.proxy.name, self.id, "upstream_connected")
        self.up.start_chain(list(chains["upstream"]))
        self.down.start_chain(list(chains["downstream"]))
        for item, ts in early:
            self.up.head.feed(item, ts)
        if not self.closed:
            self.client.resume_reading()

    def link_eof(self, link: Link) -> None:
        link.eof_done = True
        transport = link.sink.transport
        if transport is not None and not transport.is_closing():
            try:
                if transport.can_write_eof():
                    transport.write_eof()
            except (OSError, RuntimeError):
                pass
        if self.up.eof_done and self.down.eof_done:
            self.close("eof")

    def source_eof(self, link: Link) -> None:
        link.source_eof = True
        link.head.feed(EOF, time.monotonic())

    def transport_lost(self, link: Link, exc: BaseException | None) -> None:
        """``link``'s source transport is gone (peer reset, or closed under us)."""
        if self.closed:
            return
        other = self.down if link is self.up else self.up
        other.sink.done = True  # nothing more can be written to that socket
        other.direct = None
        link.source_eof = True
        if exc is None and link.eof_done:
            self.close("eof")
            return
        link.head.feed(CLOSE, time.monotonic())

    def close(self, reason: str, reset: bool = False, drop: bool = False) -> None:
        """Close both sockets: RST if ``reset`` or SO_LINGER 0 was set at accept.

        ``drop`` (proxy disabled/deleted, engine stopped) does not wait for a
        peer that is not reading to drain our write buffer.
        """
        if self.closed:
            return
        self.closed = True
        for link in (self.up, self.down):
            link.direct = None
            link.sink.done = True
            for stage in link.stages:
                stage.shutdown()
        if self.dial_task is not None:
            self.dial_task.cancel()
        self.proxy.connection_closed(self)
        abort = reset or self.linger0
        for transport in (self.client, self.upstream):
            if transport is not None:
                if abort or (drop and transport.get_write_buffer_size()):
                    transport.abort()
                else:
                    transport.close()
        self.proxy.events.record(
            self.proxy.name, self.id, "closed", reason=reason,
            bytes_up=self.up.bytes_in, bytes_down=self.down.bytes_in,
        )

    def describe(self) -> dict[str, Any]:
        upstream_local = None
        if self.upstream is not None:
            sockname = self.upstream.get_extra_info("sockname")
            if isinstance(sockname, tuple):
                upstream_local = f"{sockname[0]}:{sockname[1]}"
        buffered = self.up.buffered + self.down.buffered
        for transport in (self.client, self.upstream):
            if transport is not None:
                buffered += transport.get_write_buffer_size()
        return {
            "conn": self.id,
            "index": self.index,
            "client": self.client_addr[0],
            "client_port": self.client_addr[1],
            "upstream_local": upstream_local,
            "opened_at": self.opened_at,
            "bytes_up": self.up.bytes_in,
            "bytes_down": self.down.bytes_in,
            "buffered": buffered,
            "connected": self.upstream is not None,
        }


class _Side(asyncio.Protocol):
    """What both ends of a proxied connection do with the bytes they read: feed them
    into their link's toxic chain (or straight through while the chain is empty)."""

    __slots__ = ("conn", "link")

    conn: Connection
    link: Link

    def data_received(self, data: bytes) -> None:
        link = self.link
        seen = link.bytes_in
        link.bytes_in = seen + len(data)
        if not seen:
            link.first_byte()
        direct = link.direct
        if direct is not None:
            direct.write(data)
            link.bytes_out += len(data)
            if POLL.enabled and link.other.direct is not None:  # a connection with no toxic
                POLL.touch(link.loop)
        else:
            link.head.feed(data, time.monotonic())

    def eof_received(self) -> bool:
        self.conn.source_eof(self.link)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.transport_lost(self.link, exc)


class ClientSide(_Side):
    """Protocol of an accepted client socket (source of the upstream link)."""

    __slots__ = ("proxy",)

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # uvloop transports are not asyncio.Transport subclasses, but quack alike.
        transport = cast("asyncio.Transport", base)
        failure = self.proxy.take_failure()
        if failure is not None:
            fail_connection(self.proxy, transport, *failure)
            return
        _tune_socket(transport)
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        self.conn = Connection(self.proxy, transport)
        self.link = self.conn.up
        self.proxy.connection_opened(self.conn)
        self.conn.start()

    def pause_writing(self) -> None:
        self.conn.down.set_writer_paused(True)

    def resume_writing(self) -> None:
        self.conn.down.set_writer_paused(False)


class _Discard(asyncio.Protocol):
    """Protocol of a connection failed by ``fail_first``: whatever still arrives is dropped."""


def fail_connection(
    proxy: Proxy, transport: asyncio.Transport, mode: str, nth: int, count: int
) -> None:
    """Fail a just-accepted connection for ``fail_first`` (the upstream is never dialled):
    ``reset`` sends RST at once, ``close`` closes it without a byte (FIN; the kernel sends
    RST instead if the client's first bytes have already arrived)."""
    conn_id = proxy.engine_next_conn_id()
    index = proxy.next_index()
    peer = transport.get_extra_info("peername")
    client, port = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("", 0)
    transport.set_protocol(_Discard())
    if mode == "reset":
        _tune_socket(transport, linger0=True)
        transport.abort()
    else:
        transport.close()
    events = proxy.events
    events.record(proxy.name, conn_id, "accepted", client=client, client_port=port, index=index)
    events.record(proxy.name, conn_id, "fail_first", mode=mode, nth=nth, count=count)
    events.record(proxy.name, conn_id, "closed", reason=f"fail_first {mode} ({nth} of {count})",
                  bytes_up=0, bytes_down=0)
    log.info(
        "Failed new connection (fail_first %d of %d, %s) name=%s client=%s:%d",
        nth, count, mode, proxy.name, client, port,
    )


class UpstreamSide(_Side):
    """Protocol of the dialled upstream socket (source of the downstream link)."""

    __slots__ = ()

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.link = conn.down

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # uvloop transports are not asyncio.Transport subclasses, but quack alike.
        transport = cast("asyncio.Transport", base)
        self.conn.upstream_made(transport)

    def pause_writing(self) -> None:
        self.conn.up.set_writer_paused(True)

    def resume_writing(self) -> None:
        self.conn.up.set_writer_paused(False)
