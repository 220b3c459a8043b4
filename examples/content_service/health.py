"""Pool-health monitor: grades the Postgres pool healthy / degraded / critical.

* critical: every connection is in use (a new query would queue), or a ping fails;
* degraded: ``health_busy_share`` of the pool is in use, or a ping is slower than
  ``health_slow_ping``;
* healthy otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .config import TESTING, Settings
from .defects import planted
from .store import ArticleStore

Grade = Literal["healthy", "degraded", "critical"]


@dataclass(frozen=True)
class Health:
    grade: Grade
    in_use: int
    max_size: int
    ping: float | None  # seconds; None: failed, timed out or not tried (pool exhausted)


class PoolHealthMonitor:
    def __init__(self, store: ArticleStore, settings: Settings = TESTING, *,
                 defect: str | None = None) -> None:
        self.store = store
        self.settings = settings
        self.defect = defect

    async def check(self) -> Health:
        pool = self.store.pool
        in_use = pool.get_size() - pool.get_idle_size()
        max_size = pool.get_max_size()
        ping = None
        if in_use < max_size:
            ping = await self.store.ping(self.settings.health_ping_timeout)
        return Health(self.grade(in_use, max_size, ping), in_use, max_size, ping)

    def grade(self, in_use: int, max_size: int, ping: float | None) -> Grade:
        if planted("health_always_healthy", self.defect):  # DEFECT: a monitor that never warns
            return "healthy"
        if ping is None or in_use >= max_size:
            return "critical"
        busy = in_use >= self.settings.health_busy_share * max_size
        if busy or ping > self.settings.health_slow_ping:
            return "degraded"
        return "healthy"
