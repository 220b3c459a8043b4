"""Task executor: every task is cut off after ``task_timeout`` (15 minutes)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .defects import planted

T = TypeVar("T")


class TaskTimedOut(TimeoutError):
    """A task ran past its time limit and was cancelled."""


class TaskExecutor:
    def __init__(self, timeout: float = 15 * 60.0, *, defect: str | None = None) -> None:
        self.timeout = timeout
        self.defect = defect
        self._running: set[asyncio.Task[object]] = set()

    async def run(self, name: str, work: Callable[[], Awaitable[T]]) -> T:
        """``await work()``, cancelled with :class:`TaskTimedOut` after ``timeout`` seconds."""
        limit: float | None = self.timeout
        if planted("no_task_timeout", self.defect):  # DEFECT no_task_timeout: runs forever
            limit = None
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                return await work()
        except TimeoutError:
            if deadline.expired():
                raise TaskTimedOut(
                    f"task {name!r} ran past its {self.timeout / 60:g}-minute limit"
                ) from None
            raise

    def submit(self, name: str, work: Callable[[], Awaitable[object]]) -> asyncio.Task[object]:
        """Run a task in the background (cancelled on :meth:`shutdown`)."""
        task: asyncio.Task[object] = asyncio.create_task(self.run(name, work), name=name)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    async def shutdown(self) -> None:
        """Cancel the running tasks and wait for them."""
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
