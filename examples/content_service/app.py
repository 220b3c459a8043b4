"""The service and its HTTP API: a tiny hand-written ASGI app (no framework).

Routes: ``GET /livez`` (the process answers), ``GET /readyz`` (the pool-health grade;
503 when critical), ``GET /trends`` (live or last good answer), ``GET /articles/{id}``.
ASGI lifespan startup/shutdown start and stop :class:`ContentService`, which owns the
Postgres pool, the trends API client, the task executor and the access log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import IO, Any

from .config import TESTING, Settings
from .defects import planted
from .health import PoolHealthMonitor
from .store import ArticleStore
from .tasks import TaskExecutor
from .trends import TrendsClient, TrendsUnavailable

Json = dict[str, Any]


class ContentService:
    """Everything the API needs; :meth:`start` opens it, :meth:`stop` closes all of it."""

    def __init__(self, dsn: str, api_url: str, workdir: Path, settings: Settings = TESTING,
                 *, defect: str | None = None) -> None:
        self.dsn, self.api_url, self.workdir = dsn, api_url, Path(workdir)
        self.settings = settings
        self.defect = defect

    async def start(self) -> None:
        """Open everything, registering each closer as its resource opens (LIFO on stop)."""
        self._closers = contextlib.AsyncExitStack()
        try:
            self.store = await ArticleStore.open(self.dsn, self.settings, defect=self.defect)
            self._closers.push_async_callback(self.store.close)
            await self.store.migrate()
            self.trends = TrendsClient(self.api_url, self.settings, defect=self.defect)
            if not planted("leaked_session", self.defect):  # DEFECT: the client is never closed
                self._closers.push_async_callback(self.trends.aclose)
            log_path = self.workdir / "access.log"
            self.access_log: IO[str] = open(log_path, "a", encoding="utf-8")  # noqa: SIM115
            if not planted("leaked_file", self.defect):  # DEFECT: the log file is never closed
                self._closers.callback(self.access_log.close)
            self.tasks = TaskExecutor(self.settings.task_timeout, defect=self.defect)
            self._closers.push_async_callback(self.tasks.shutdown)
            self.health = PoolHealthMonitor(self.store, self.settings, defect=self.defect)
        except BaseException:
            await self._closers.aclose()
            raise

    async def stop(self) -> None:
        """Cancel running tasks, then close the log file, the API client and the pool."""
        await self._closers.aclose()

    def log(self, method: str, path: str, status: int) -> None:
        self.access_log.write(f"{time.time():.3f} {method} {path} {status}\n")


class ContentApp:
    """ASGI 3 application over a :class:`ContentService`."""

    def __init__(self, service: ContentService) -> None:
        self.service = service

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        status, body = await self.route(scope["method"], scope["path"])
        self.service.log(scope["method"], scope["path"], status)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    async def route(self, method: str, path: str) -> tuple[int, Json]:
        service = self.service
        if method != "GET":
            return 405, {"error": "method not allowed"}
        if path == "/livez":
            return 200, {"status": "alive"}
        if path == "/readyz":
            health = await service.health.check()
            return (503 if health.grade == "critical" else 200), {
                "status": health.grade, "in_use": health.in_use, "max_size": health.max_size}
        if path == "/trends":
            try:
                trends = await service.trends.get_trends()
            except TrendsUnavailable as exc:
                return 503, {"error": str(exc)}
            return 200, {"items": trends.items, "stale": trends.stale}
        if path.startswith("/articles/") and path.removeprefix("/articles/").isdigit():
            try:
                title = await service.store.title(int(path.removeprefix("/articles/")))
            except TimeoutError:
                return 504, {"error": "query timed out"}
            return (404, {"error": "no such article"}) if title is None else (200, {"title": title})
        return 404, {"error": "not found"}

    async def _lifespan(self, receive: Any, send: Any) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup", message
        try:
            await self.service.start()
        except Exception as exc:
            await send({"type": "lifespan.startup.failed", "message": repr(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        assert message["type"] == "lifespan.shutdown", message
        await self.service.stop()
        await send({"type": "lifespan.shutdown.complete"})


@contextlib.asynccontextmanager
async def lifespan(app: ContentApp, timeout: float = 30.0) -> AsyncIterator[ContentApp]:
    """Run the app's ASGI lifespan as a server does: startup on entry, shutdown on exit."""
    inbox: asyncio.Queue[Json] = asyncio.Queue()
    outbox: asyncio.Queue[Json] = asyncio.Queue()
    task = asyncio.create_task(app({"type": "lifespan"}, inbox.get, outbox.put))
    try:
        await inbox.put({"type": "lifespan.startup"})
        reply = await asyncio.wait_for(outbox.get(), timeout)
        if reply["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"startup failed: {reply.get('message')}")
        yield app
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, timeout)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
