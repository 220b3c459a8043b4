"""One way to run a service's asyncio loop on a background thread.

Used by the built-in engine's thread mode and by the fake HTTP backends. The thread:

* is a daemon thread, so a forgotten service never blocks interpreter exit, and is
  stopped by an ``atexit`` hook while it is still running (atexit handlers run after
  non-daemon threads are joined and before daemon threads are frozen) - no private
  ``threading`` hooks;
* declares itself and the service's modules in the ownership registry, so the leak
  check and the virtual clock know it is the plugin's;
* runs ``setup`` on the loop before it reports ready (errors are raised in the caller),
  and on stop runs ``teardown``, cancels what is still pending, shuts down async
  generators and the default executor, and closes the loop.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from pytest_resilience.errors import ServiceError
from pytest_resilience.services import registry

__all__ = ["LoopThread", "new_event_loop"]


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A fresh uvloop loop when uvloop is importable, else the default asyncio loop (the
    loop factory of the built-in engine and of the Postgres-protocol stage)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


T = TypeVar("T")
R = TypeVar("R")

_LIVE: weakref.WeakSet[LoopThread[Any]] = weakref.WeakSet()


class LoopThread(Generic[T]):
    """An event loop on a background thread, owned by one service."""

    def __init__(
        self,
        name: str,
        *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
        modules: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.loop_factory = loop_factory
        self.modules = tuple(modules)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self._teardown: Callable[[], Awaitable[None]] | None = None
        self._lock = threading.Lock()

    def start(
        self,
        setup: Callable[[asyncio.AbstractEventLoop], Awaitable[T]] | None = None,
        teardown: Callable[[], Awaitable[None]] | None = None,
        timeout: float = 30.0,
    ) -> T | None:
        """Start the thread; returns what ``setup(loop)`` returned on the loop."""
        ready = threading.Event()
        box: dict[str, Any] = {}
        self._teardown = teardown

        def run() -> None:
            loop = self.loop_factory()
            asyncio.set_event_loop(loop)
            try:
                if setup is not None:
                    box["result"] = loop.run_until_complete(setup(loop))
            except BaseException as exc:
                box["error"] = exc
                self._close(loop)
                ready.set()
                return
            box["loop"] = loop
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                self._close(loop)

        thread = threading.Thread(target=run, name=self.name, daemon=True)
        registry.declare(threads=[thread], modules=self.modules)
        thread.start()
        if not ready.wait(timeout):
            raise ServiceError(f"the {self.name} thread did not start within {timeout} s")
        if "error" in box:
            thread.join()
            raise box["error"]
        self.loop, self.thread = box["loop"], thread
        _LIVE.add(self)
        return box.get("result")

    def _close(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            if self._teardown is not None:  # the service shuts down first...
                with contextlib.suppress(Exception):
                    loop.run_until_complete(self._teardown())
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in tasks:  # ...then what it left pending is cancelled
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    @property
    def running(self) -> bool:
        return self.loop is not None

    def run(self, coro: Coroutine[Any, Any, R], timeout: float = 10.0) -> R:
        """Run ``coro`` on the loop and wait for its result."""
        loop = self.loop
        if loop is None:
            coro.close()
            raise ServiceError(f"the {self.name} loop is not running")
        fut: Future[R] = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise ServiceError(f"the {self.name} loop did not answer within {timeout} s") from None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop (pending tasks cancelled, ``teardown`` run) and join the thread.
        Idempotent; safe from the loop's own thread (then it does not join)."""
        with self._lock:
            loop, thread = self.loop, self.thread
            self.loop = self.thread = None
        if loop is None or thread is None:
            return
        _LIVE.discard(self)
        with contextlib.suppress(RuntimeError):  # closed meanwhile
            loop.call_soon_threadsafe(loop.stop)
        if thread is not threading.current_thread():
            thread.join(timeout)


@atexit.register
def _stop_forgotten() -> None:
    for loop_thread in list(_LIVE):
        loop_thread.stop()
