"""What a soak run samples at each interval besides its own call counts: the test
process's resources (RSS, open fds by kind, threads), the driver loop's asyncio tasks,
Postgres server sessions, and whatever the target's probe reports (pool size, breaker
state).

Every reading that cannot be taken is ``None`` ("not measured"), never 0: a drift
verdict on a series that was never measured fails instead of passing.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Sampler", "process_resources"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_FD_DIR = "/proc/self/fd"


def _rss() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        pass
    try:  # elsewhere: psutil, when the user has it
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return None


def _fds() -> dict[str, int | None]:
    try:
        names = os.listdir(_FD_DIR)
    except OSError:
        return {"fds": None, "fds_socket": None, "fds_file": None, "fds_pipe": None,
                "fds_other": None}
    kinds = {"socket": 0, "file": 0, "pipe": 0, "other": 0}
    total = 0
    for name in names:
        try:
            target = os.readlink(f"{_FD_DIR}/{name}")
        except OSError:
            continue  # the listdir fd itself, or closed meanwhile
        total += 1
        if target.startswith("socket:"):
            kinds["socket"] += 1
        elif target.startswith("pipe:"):
            kinds["pipe"] += 1
        elif target.startswith("/"):
            kinds["file"] += 1
        else:
            kinds["other"] += 1
    return {"fds": total, **{f"fds_{k}": v for k, v in kinds.items()}}


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def process_resources() -> dict[str, Any]:
    """RSS, open fds by kind and threads of this process (``None`` where unreadable)."""
    return {"rss_bytes": _rss(), **_fds(), "threads": _threads()}


@dataclass
class Sampler:
    """Readings beyond the driver's own counters.

    ``pg_sessions``: a callable counting the run's Postgres server sessions (the
    ``soak`` fixture passes one reading ``pg_stat_activity`` of the test database when
    ``postgres_db``/``pg_proxy`` is in use); it is called on a worker thread.
    ``probe``: the target's own figures, e.g. ``lambda: {"pool_size": pool.get_size(),
    "pool_idle": pool.get_idle_size(), "breaker": breaker.current_state}``.
    ``attempts``: a callable returning requests that reached the watched backends so
    far (retry amplification = attempts / calls).
    """

    pg_sessions: Callable[[], int | None] | None = None
    probe: Callable[[], dict[str, Any]] | None = None
    attempts: Callable[[], int | None] | None = None
    resources: bool = True
    own_tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    problems: dict[str, str] = field(default_factory=dict)

    async def sample(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.resources:
            out.update(process_resources())
        try:
            tasks = asyncio.all_tasks()
            current = asyncio.current_task()
            out["tasks"] = sum(1 for t in tasks if t not in self.own_tasks and t is not current)
        except RuntimeError:
            out["tasks"] = None
        if self.pg_sessions is not None:
            out["pg_sessions"] = await self._read("pg_sessions", self.pg_sessions,
                                                  thread=True)
        if self.attempts is not None:
            out["attempts"] = await self._read("attempts", self.attempts)
        if self.probe is not None:
            figures = await self._read("probe", self.probe)
            if isinstance(figures, dict):
                out.update(figures)
            elif figures is not None and "probe" not in self.problems:
                self.problems["probe"] = (f"the probe returned {type(figures).__name__}, "
                                          "not a dict of figures")
        return out

    async def _read(self, what: str, fn: Callable[[], Any], thread: bool = False) -> Any:
        try:
            value = await asyncio.to_thread(fn) if thread else fn()
            if asyncio.iscoroutine(value):
                value = await value
            return value
        except Exception as exc:  # recorded once, the series says "not measured"
            self.problems.setdefault(what, f"{type(exc).__name__}: {exc}")
            return None
