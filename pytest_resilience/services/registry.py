"""What belongs to the plugin: one list, written by services as they start.

Every service (Postgres, the engine, fake HTTP backends, the reaper of child
processes...) declares here what it owns when it starts - child pids, listening
ports, paths, file descriptors, threads, the Postgres ``application_name`` of its
own sessions, and the modules whose code runs on its behalf. The leak check reads
this list (the plugin's own resources are never a test's leak) and so does the
virtual clock (code of these modules keeps real time). A new service declares
itself here and touches neither of them.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["MARK", "Ownership", "declare", "owned", "release"]

#: Marker in thread names, ``application_name`` and temporary paths of the plugin.
MARK = "pytest-resilience"


@dataclass
class Ownership:
    """The plugin's own resources in this process (see the module docstring)."""

    pids: set[int] = field(default_factory=set)
    ports: set[int] = field(default_factory=set)
    paths: set[str] = field(default_factory=set)
    fds: set[int] = field(default_factory=set)
    threads: weakref.WeakSet[threading.Thread] = field(default_factory=weakref.WeakSet)
    thread_prefixes: set[str] = field(default_factory=lambda: {MARK, "resilience-"})
    application_names: set[str] = field(default_factory=lambda: {MARK})
    modules: set[str] = field(default_factory=set)
    #: bumped on every change, so readers can cache what they derive from it
    version: int = 0

    def owns_pid(self, pid: int) -> bool:
        return pid in self.pids

    def owns_fd(self, fd: int) -> bool:
        return fd in self.fds

    def owns_thread(self, thread: threading.Thread) -> bool:
        return thread in self.threads or thread.name.startswith(tuple(self.thread_prefixes))

    def owns_application_name(self, name: str | None) -> bool:
        return bool(name) and str(name).startswith(tuple(self.application_names))

    def owns_module(self, module: str) -> bool:
        return any(module == m or module.startswith(m + ".") for m in self.modules)

    def owns_address(self, address: object) -> bool:
        """A socket address (``(host, port, ...)`` or a unix path) of a plugin service."""
        if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[1], int):
            return address[1] in self.ports
        if isinstance(address, str | bytes):
            text = address.decode(errors="replace") if isinstance(address, bytes) else address
            if not text:
                return False
            return MARK in text or any(text.startswith(p) for p in self.paths)
        return False


owned = Ownership()
_lock = threading.Lock()


def declare(
    *,
    pids: Iterable[int] = (),
    ports: Iterable[int] = (),
    paths: Iterable[str | os.PathLike[str]] = (),
    fds: Iterable[int] = (),
    threads: Iterable[threading.Thread] = (),
    thread_prefixes: Iterable[str] = (),
    application_names: Iterable[str] = (),
    modules: Iterable[str] = (),
) -> None:
    """Declare resources a plugin service owns (called by the service as it starts)."""
    with _lock:
        owned.pids.update(int(p) for p in pids)
        owned.ports.update(int(p) for p in ports)
        owned.paths.update(os.fspath(p) for p in paths)
        owned.fds.update(int(f) for f in fds)
        for thread in threads:
            owned.threads.add(thread)
        owned.thread_prefixes.update(thread_prefixes)
        owned.application_names.update(application_names)
        owned.modules.update(modules)
        owned.version += 1


def release(*, pids: Iterable[int] = (), fds: Iterable[int] = (),
            ports: Iterable[int] = ()) -> None:
    """Forget resources that are gone (a stopped child, a closed fd, a freed port:
    the numbers may be reused by the test's own)."""
    with _lock:
        owned.pids.difference_update(pids)
        owned.fds.difference_update(fds)
        owned.ports.difference_update(ports)
        owned.version += 1
