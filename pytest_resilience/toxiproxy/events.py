"""The engine's event log: a bounded ring buffer of data-plane events.

Toxiproxy has no event stream (``/events`` was proposed upstream and never
merged). The built-in engine records one here and serves it under the
namespaced path ``/x-resilience/events`` (see :mod:`pytest_resilience.toxiproxy.api`).

Every event is a flat JSON object::

    {"seq": 17, "time": 81234.5021, "proxy": "pg", "conn": 4, "kind": "accepted",
     "client": "127.0.0.1", "client_port": 50112}

``time`` is ``time.monotonic()`` in the engine process. On Linux that is
CLOCK_MONOTONIC, which is system-wide, so the test process can compare it with
its own ``time.monotonic()`` even when the engine runs in a child process.
``seq`` increases by one per event across the whole engine; ``conn`` is an
engine-wide connection id (``index`` is the connection's number within its proxy).

``GET /x-resilience/events?proxy=NAME&since=SEQ&kind=KIND&limit=N&wait=SECONDS``
filters by proxy and kind; with ``wait`` it long-polls until a matching event
newer than ``since`` exists (or the wait expires), so tests wait on events
instead of sleeping.

Kinds: ``accepted``, ``upstream_connected``, ``upstream_failed``,
``first_byte`` (with ``direction``: ``upstream`` = client to server,
``downstream`` = server to client), ``toxic_applied`` (with ``toxic``,
``type``, ``stream``; recorded when a toxic is drawn active for a connection,
at connection start or when its stub restarts), ``toxic_fired`` (a toxic
closed or reset the connection: ``timeout``, ``reset_peer``, ``limit_data``),
``closed`` (with ``reason``, ``bytes_up``, ``bytes_down``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

__all__ = ["EventLog"]

JsonDict = dict[str, Any]


class EventLog:
    """A ring buffer of events with engine-wide sequence numbers."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._events: deque[JsonDict] = deque(maxlen=capacity)
        self._next_seq = 1
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def record(self, proxy: str, conn: int | None, kind: str, **fields: Any) -> None:
        event: JsonDict = {
            "seq": self._next_seq,
            "time": time.monotonic(),
            "proxy": proxy,
            "conn": conn,
            "kind": kind,
        }
        event.update(fields)
        self._next_seq += 1
        self._events.append(event)
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait(
        self, proxy: str | None, since: int, timeout: float, kind: str | None = None
    ) -> None:
        """Long poll: return once an event matching the filters with ``seq > since`` exists."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._has(proxy, since, kind):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                return

    def _has(self, proxy: str | None, since: int, kind: str | None) -> bool:
        for event in reversed(self._events):
            if event["seq"] <= since:
                return False
            if (proxy is None or event["proxy"] == proxy) and (
                kind is None or event["kind"] == kind
            ):
                return True
        return False

    def query(
        self,
        proxy: str | None = None,
        since: int = 0,
        limit: int | None = None,
        kind: str | None = None,
    ) -> JsonDict:
        """Events with ``seq > since`` (optionally of one proxy), oldest first.

        ``dropped`` counts events after ``since`` that the ring buffer already
        overwrote; ``next`` is the value to pass as ``since`` next time.
        """
        oldest = self._events[0]["seq"] if self._events else self._next_seq
        dropped = max(0, oldest - since - 1)
        out: list[JsonDict] = []
        for event in self._events:
            if event["seq"] <= since:
                continue
            if proxy is not None and event["proxy"] != proxy:
                continue
            if kind is not None and event["kind"] != kind:
                continue
            out.append(event)
            if limit is not None and len(out) >= limit:
                break
        nxt = out[-1]["seq"] if (limit is not None and out and len(out) >= limit) else (
            self._next_seq - 1
        )
        return {"events": out, "next": nxt, "dropped": dropped, "now": time.monotonic()}
