"""Resource snapshots: file descriptors, threads, child processes, asyncio tasks,
client sessions and Postgres server sessions, with where each was created.

This module only *observes*; deciding what counts as a leak lives in
``pytest_resilience.verdicts.leaks``. Nothing here imports a client library:
aiohttp, httpx, asyncpg and psycopg are looked up in ``sys.modules`` and only
watched if the code under test already imported them.

Attribution ("where was it created") comes from, in order of preference:

* ``tracemalloc`` when it is tracing (``-X tracemalloc=20`` / ``PYTHONTRACEMALLOC``);
* a short stack recorded by wrapping the constructors of the watched classes
  (client sessions, DB connections and pools, ``socket.socket``,
  ``threading.Thread.start``, ``subprocess.Popen``) while a check is active;
* a task factory installed on event loops the plugin sees being created.

Connections taken from a pool (asyncpg ``Pool.acquire``/``release``, psycopg_pool
``getconn``/``putconn`` and the ``connection()`` context managers built on them,
SQLAlchemy's ``checkout``/``checkin`` pool events) are recorded as
:class:`Checkout` with the acquiring call site while a check is active, so a
connection checked out and never returned is seen even when its pool predates
the check.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import re
import socket
import sys
import sysconfig
import threading
import time
import tracemalloc
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pytest_resilience.services import registry as _registry

__all__ = [
    "SERVICE_THREAD_PREFIX",
    "SERVICE_THREAD_PREFIXES",
    "Checkout",
    "FdInfo",
    "Origin",
    "PgBackend",
    "PoolState",
    "Snapshot",
    "TrackedObject",
    "Tracker",
    "describe_fd",
    "fd_targets",
    "pending_tasks",
    "plugin_service",
    "pool_state",
    "register_service",
    "service_registry",
    "take_snapshot",
    "tracker",
]

#: Threads whose name starts with this belong to the plugin's own services.
SERVICE_THREAD_PREFIX = _registry.MARK
#: Also accepted for thread names (``resilience-http-engine``...).
SERVICE_THREAD_PREFIXES = (SERVICE_THREAD_PREFIX, "resilience-")
#: Unix sockets under a path containing this belong to plugin services.
SERVICE_PATH_MARK = _registry.MARK

Frame = tuple[str, int, str]  # (filename, lineno, function)

_STACK_LIMIT = 16
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    dirs.add(_OWN_DIR)
    return tuple(sorted(d.rstrip(os.sep) + os.sep for d in dirs if d))


_LIBRARY_DIRS = _library_dirs()


def is_library_file(filename: str) -> bool:
    """True for the stdlib, installed packages, pytest/pluggy and this plugin."""
    return filename.startswith(_LIBRARY_DIRS) or filename.startswith("<")


# ---------------------------------------------------------------------------
# where a resource was created


@dataclass(frozen=True)
class Origin:
    """Where a resource was created: a short stack, outermost frame first."""

    frames: tuple[Frame, ...]
    via: str = "stack"  # "stack" (constructor wrapper), "tracemalloc", "asyncio debug"

    def user_frame(self) -> Frame | None:
        """The innermost frame outside the stdlib, installed packages and this plugin."""
        for frame in reversed(self.frames):
            if not is_library_file(frame[0]):
                return frame
        return None

    def headline(self) -> str:
        frame = self.user_frame() or (self.frames[-1] if self.frames else None)
        if frame is None:
            return "unknown"
        return f"{_short_path(frame[0])}:{frame[1]} in {frame[2]}"

    def format(self, limit: int = 6) -> list[str]:
        """From the innermost user frame down to the call that created the resource."""
        frames = list(self.frames)
        start = 0
        for i in range(len(frames) - 1, -1, -1):
            if not is_library_file(frames[i][0]):
                start = i
                break
        frames = frames[start:]
        lines = [f"{_short_path(f)}:{n} in {fn}" for f, n, fn in frames]
        if len(lines) > limit:
            lines = [lines[0], "...", *lines[-(limit - 2):]]
        return lines


def _short_path(filename: str) -> str:
    for prefix in _LIBRARY_DIRS:
        if filename.startswith(prefix):
            return filename[len(prefix):]
    with contextlib.suppress(ValueError):
        rel = os.path.relpath(filename)
        if not rel.startswith(".." + os.sep):
            return rel
    return filename


def capture_stack(skip: int = 1) -> Origin:
    """A cheap stack of the caller (no source lines read): ~2 µs."""
    frames: list[Frame] = []
    f: Any = sys._getframe(skip + 1)
    while f is not None and len(frames) < _STACK_LIMIT:
        code = f.f_code
        frames.append((code.co_filename, f.f_lineno, code.co_name))
        f = f.f_back
    frames.reverse()
    return Origin(tuple(frames))


def tracemalloc_origin(obj: object) -> Origin | None:
    """The allocation traceback of *obj* when tracemalloc is tracing."""
    if not tracemalloc.is_tracing():
        return None
    try:
        tb = tracemalloc.get_object_traceback(obj)
    except Exception:
        return None
    if tb is None:
        return None
    # tracemalloc frames are most-recent-last when sorted "oldest first".
    frames = tuple((fr.filename, fr.lineno, "?") for fr in reversed(tb))
    return Origin(frames, via="tracemalloc")


# ---------------------------------------------------------------------------
# constructor wrapping


@dataclass
class TrackedObject:
    """A watched object created while a check was active."""

    kind: str  # "session", "db", "socket", "thread", "process"
    type_name: str
    seq: int
    origin: Origin
    ref: Callable[[], object | None]
    owned: bool = False  # created by another watched object (a session's connector...)
    obj_id: int = 0
    plugin: bool = False  # created inside plugin_service(): the plugin's own, never a leak
    # for sockets: the client (connection pool) that opened it, if any
    owner: Callable[[], object | None] | None = None

    def get(self) -> object | None:
        return self.ref()


# (module, dotted attribute, kind, method to wrap)
_WATCHED: tuple[tuple[str, str, str, str], ...] = (
    ("aiohttp", "ClientSession", "session", "__init__"),
    ("aiohttp", "BaseConnector", "session", "__init__"),
    ("httpx", "Client", "session", "__init__"),
    ("httpx", "AsyncClient", "session", "__init__"),
    ("asyncpg.connection", "Connection", "db", "__init__"),
    ("asyncpg.pool", "Pool", "db", "__init__"),
    ("psycopg", "Connection", "db", "__init__"),
    ("psycopg", "AsyncConnection", "db", "__init__"),
    ("psycopg_pool", "ConnectionPool", "db", "__init__"),
    ("psycopg_pool", "AsyncConnectionPool", "db", "__init__"),
    ("socket", "socket", "socket", "__init__"),
    ("subprocess", "Popen", "process", "__init__"),
    ("threading", "Thread", "thread", "start"),
)

# A connector created inside ClientSession.__init__ belongs to that session; a DB
# connection opened by a pool belongs to the pool: only the owner is reported.
_OWNERS: dict[str, tuple[str, str | None]] = {
    "TCPConnector": ("aiohttp" + os.sep + "client.py", "__init__"),
    "UnixConnector": ("aiohttp" + os.sep + "client.py", "__init__"),
    "Connection": ("asyncpg" + os.sep + "pool.py", None),
}
_OWNERS_PSYCOPG = "psycopg_pool" + os.sep


def _is_owned(obj: object, origin: Origin) -> bool:
    cls = type(obj)
    if cls.__module__.startswith("psycopg") and not cls.__module__.startswith("psycopg_pool"):
        return any(_OWNERS_PSYCOPG in f[0] for f in origin.frames)
    rule = _OWNERS.get(cls.__name__)
    if rule is None:
        return False
    filename, func = rule
    return any(filename in f[0] and (func is None or f[2] == func) for f in origin.frames)


_POOL_FILES = tuple(
    os.sep + name + os.sep for name in ("httpx", "httpcore", "aiohttp", "asyncpg", "psycopg")
)
_POOL_TYPES = ("Client", "AsyncClient", "ConnectionPool", "AsyncConnectionPool",
               "BaseConnector", "TCPConnector", "UnixConnector", "ClientSession", "Pool")


def _pool_owner() -> Callable[[], object | None] | None:
    """The client / connection pool on the stack that is opening a socket."""
    f: Any = sys._getframe(3)
    depth = 0
    owner: object = None
    while f is not None and depth < 40:
        if f.f_code.co_filename.find(os.sep + "site-packages" + os.sep) != -1 and any(
            p in f.f_code.co_filename for p in _POOL_FILES
        ):
            candidate = f.f_locals.get("self")
            if candidate is not None and type(candidate).__name__ in _POOL_TYPES:
                owner = candidate  # keep walking: the outermost pool/client wins
        f = f.f_back
        depth += 1
    if owner is None:
        return None
    try:
        return weakref.ref(owner)
    except TypeError:
        return None


class Tracker:
    """Wraps constructors of watched classes and records who created each object.

    Installed lazily for the modules already imported when a check starts, and
    re-checked at every snapshot, so a library imported in the middle of a run
    is picked up by the next check. Records are kept only while at least one
    check is active (``active > 0``).
    """

    def __init__(self) -> None:
        self.seq = 0
        self.active = 0
        self.records: dict[int, TrackedObject] = {}
        # objects that died recently: a ResourceWarning raised from __del__
        # during a cyclic GC arrives after weakrefs were cleared.
        self.dead: dict[int, TrackedObject] = {}
        self._patched: dict[tuple[str, str], tuple[object, str, Any, bool]] = {}
        self._lock = threading.Lock()
        # connections checked out of a pool while a check was active, by holder id
        self.checkouts: dict[int, Checkout] = {}
        # SQLAlchemy pool event listeners: (target, event name, function)
        self._listeners: list[tuple[Any, str, Callable[..., None]]] = []

    # -- install / uninstall
    def install(self) -> None:
        if ("builtins", "open") not in self._patched:
            self._wrap_open()
        for module_name, attr, kind, method in _WATCHED:
            key = (module_name, attr)
            if key in self._patched:
                continue
            module = sys.modules.get(module_name)
            if module is None:
                continue
            cls = getattr(module, attr, None)
            if not isinstance(cls, type):
                continue
            self._wrap(key, cls, kind, method)
        self._install_pools()

    def installed(self, module_name: str) -> bool:
        return any(key[0] == module_name for key in self._patched)

    def uninstall(self) -> None:
        for cls, method, original, own in self._patched.values():
            if own:
                setattr(cls, method, original)
            else:
                with contextlib.suppress(AttributeError):
                    delattr(cls, method)
        self._patched.clear()
        if self._listeners:
            event = sys.modules.get("sqlalchemy.event")
            for target, name, fn in self._listeners:
                with contextlib.suppress(Exception):
                    event.remove(target, name, fn)  # type: ignore[union-attr]
            self._listeners.clear()
        # returns are no longer seen: what is outstanding now cannot be judged later
        self.checkouts.clear()

    def _wrap_open(self) -> None:
        import builtins
        import io

        original = builtins.open
        tracker = self

        @functools.wraps(original)
        def open_wrapper(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if tracker.active:
                tracker.record(result, "file")
            return result

        for module in (builtins, io):
            if getattr(module, "open", None) is original:
                self._patched[(module.__name__, "open")] = (
                    module, "open", original, True
                )
                setattr(module, "open", open_wrapper)  # noqa: B010

    def _wrap(self, key: tuple[str, str], cls: type, kind: str, method: str) -> None:
        own = method in cls.__dict__
        original = cls.__dict__[method] if own else getattr(cls, method)
        tracker = self

        @functools.wraps(original)
        def wrapper(obj: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(obj, *args, **kwargs)
            if tracker.active:
                tracker.record(obj, kind)
            return result

        setattr(cls, method, wrapper)
        self._patched[key] = (cls, method, original, own)
        if kind in ("session", "db") and not hasattr(cls, "__del__"):
            self._add_finalizer(key, cls)

    def _add_finalizer(self, key: tuple[str, str], cls: type) -> None:
        """Give classes that never warn (httpx clients, asyncpg pools) the
        ``ResourceWarning`` aiohttp and asyncpg emit when an open one is collected."""
        tracker = self

        def __del__(obj: Any) -> None:
            if not tracker.active:
                return
            rec = tracker.lookup(id(obj))
            if rec is None or rec.owned or is_closed(obj) is not False:
                return
            warnings.warn(
                f"unclosed {rec.type_name} {object.__repr__(obj)} garbage-collected "
                "without being closed",
                ResourceWarning,
                source=obj,
                stacklevel=1,
            )

        cls.__del__ = __del__  # type: ignore[attr-defined]
        self._patched[(key[0], key[1] + ".__del__")] = (cls, "__del__", None, False)

    # -- records
    def record(self, obj: object, kind: str) -> None:
        origin = capture_stack(skip=2)
        type_name = type(obj).__module__.split(".")[0] + "." + type(obj).__qualname__
        owned = _is_owned(obj, origin)
        # the plugin's own: made inside plugin_service(), or on a thread a service declared
        plugin = _plugin_service.get() or service_registry.owns_thread(threading.current_thread())
        owner = _pool_owner() if kind == "socket" else None
        key = id(obj)

        def gone(_ref: object, key: int = key) -> None:
            rec = self.records.pop(key, None)
            if rec is not None:
                self.dead[key] = rec

        try:
            ref: Callable[[], object | None] = weakref.ref(obj, gone)
        except TypeError:
            return
        with self._lock:
            self.seq += 1
            self.records[key] = TrackedObject(
                kind, type_name, self.seq, origin, ref, owned or plugin, key, plugin, owner
            )

    def lookup(self, obj_id: int) -> TrackedObject | None:
        rec = self.records.get(obj_id)
        if rec is None or rec.get() is None:
            rec = self.dead.get(obj_id)
        return rec

    def created_since(self, seq: int) -> list[TrackedObject]:
        return [r for r in list(self.records.values()) if r.seq > seq and r.get() is not None]

    def find(self, kind: str, predicate: Callable[[object], bool]) -> TrackedObject | None:
        for rec in reversed(list(self.records.values())):
            if rec.kind != kind:
                continue
            obj = rec.get()
            if obj is not None:
                with contextlib.suppress(Exception):
                    if predicate(obj):
                        return rec
        return None

    def prune(self, older_than_seq: int) -> None:
        """Forget records no check can ask about any more."""
        self.dead.clear()
        if not self.active:
            for key, rec in list(self.records.items()):
                if rec.seq <= older_than_seq:
                    self.records.pop(key, None)
            for key, co in list(self.checkouts.items()):
                if co.seq <= older_than_seq:
                    self.checkouts.pop(key, None)

    # -- pool checkouts
    def checkout(
        self, library: str, pool: object, holder: object, origin: Origin, *,
        plugin: bool, token: int = 0,
    ) -> None:
        """Record that *holder* (the connection, or the pool's slot for it) was
        checked out of *pool* at *origin*."""
        key = id(holder)

        def lost(_ref: object, key: int = key) -> None:
            co = self.checkouts.get(key)
            if co is not None and not co.returned:
                co.lost = True  # collected while checked out: the pool never got it back

        try:
            holder_ref: Callable[[], object | None] = weakref.ref(holder, lost)
        except TypeError:
            return
        pool_ref: Callable[[], object | None]
        try:
            pool_ref = weakref.ref(pool)
        except TypeError:
            # asyncpg pools are not weak-referenceable: reach it through its slot
            if getattr(holder, "_pool", None) is not pool:
                return

            def pool_ref() -> object | None:
                return getattr(holder_ref(), "_pool", None)
        with self._lock:
            self.seq += 1
            self.checkouts[key] = Checkout(
                library, self.seq, origin, pool_ref, holder_ref, token, plugin,
                pool_label(pool),
            )

    def checkin(self, holder: object) -> None:
        """*holder* went back to its pool."""
        co = self.checkouts.pop(id(holder), None)
        if co is not None:
            co.returned = True

    def outstanding_checkouts(self, since_seq: int = -1) -> list[Checkout]:
        """Checkouts made after *since_seq* whose connection is still out of an open pool."""
        return [
            co for co in list(self.checkouts.values())
            if co.seq > since_seq and co.outstanding()
        ]

    def _install_pools(self) -> None:
        """Wrap the checkout/return methods of the pool classes already imported."""
        if ("asyncpg.pool", "Pool._acquire") not in self._patched:
            module = sys.modules.get("asyncpg.pool")
            cls = getattr(module, "Pool", None) if module is not None else None
            if isinstance(cls, type) and callable(getattr(cls, "_acquire", None)) \
                    and callable(getattr(cls, "release", None)):
                self._wrap_asyncpg(cls)
        module = sys.modules.get("psycopg_pool")
        if module is not None:
            for name, is_async in (("ConnectionPool", False), ("AsyncConnectionPool", True)):
                cls = getattr(module, name, None)
                if ("psycopg_pool", name + ".getconn") in self._patched:
                    continue
                if isinstance(cls, type) and callable(getattr(cls, "getconn", None)) \
                        and callable(getattr(cls, "putconn", None)):
                    self._wrap_psycopg_pool(cls, name, is_async)
        if not self._listeners and "sqlalchemy.pool" in sys.modules \
                and "sqlalchemy.event" in sys.modules:
            self._listen_sqlalchemy()

    def _patch(self, key: tuple[str, str], cls: type, method: str, wrapper: Any) -> None:
        own = method in cls.__dict__
        original = cls.__dict__[method] if own else getattr(cls, method)
        setattr(cls, method, wrapper)
        self._patched[key] = (cls, method, original, own)

    def _wrap_asyncpg(self, cls: type) -> None:
        tracker = self
        acquire = _method(cls, "_acquire")
        release = _method(cls, "release")

        @functools.wraps(acquire)
        def _acquire(pool: Any, *args: Any, **kwargs: Any) -> Any:
            # Pool.acquire() returns a PoolAcquireContext; both ``await pool.acquire()``
            # and ``async with pool.acquire()`` create this coroutine from the caller's
            # frame, so the stack taken here holds the acquiring call site.
            coro = acquire(pool, *args, **kwargs)
            if not tracker.active:
                return coro
            origin = capture_stack(skip=1)
            plugin = _plugin_service.get()

            async def tracked() -> Any:
                proxy = await coro
                holder = getattr(proxy, "_holder", None)
                if tracker.active and holder is not None:
                    tracker.checkout("asyncpg", pool, holder, origin, plugin=plugin,
                                     token=id(proxy))
                return proxy

            return tracked()

        @functools.wraps(release)
        async def release_wrapper(pool: Any, connection: Any, *args: Any, **kwargs: Any) -> Any:
            holder = getattr(connection, "_holder", None)
            result = await release(pool, connection, *args, **kwargs)
            if holder is not None:
                tracker.checkin(holder)
            return result

        self._patch(("asyncpg.pool", "Pool._acquire"), cls, "_acquire", _acquire)
        self._patch(("asyncpg.pool", "Pool.release"), cls, "release", release_wrapper)

    def _wrap_psycopg_pool(self, cls: type, name: str, is_async: bool) -> None:
        tracker = self
        getconn = _method(cls, "getconn")
        putconn = _method(cls, "putconn")

        def note(pool: Any, conn: Any, origin: Origin, plugin: bool) -> None:
            if tracker.active and conn is not None:
                tracker.checkout("psycopg_pool", pool, conn, origin, plugin=plugin)

        if is_async:
            @functools.wraps(getconn)
            async def agetconn(pool: Any, *args: Any, **kwargs: Any) -> Any:
                origin = capture_stack(skip=1) if tracker.active else None
                plugin = _plugin_service.get()
                conn = await getconn(pool, *args, **kwargs)
                if origin is not None:
                    note(pool, conn, origin, plugin)
                return conn

            @functools.wraps(putconn)
            async def aputconn(pool: Any, conn: Any, *args: Any, **kwargs: Any) -> Any:
                result = await putconn(pool, conn, *args, **kwargs)
                tracker.checkin(conn)
                return result

            get_wrapper: Any = agetconn
            put_wrapper: Any = aputconn
        else:
            @functools.wraps(getconn)
            def sgetconn(pool: Any, *args: Any, **kwargs: Any) -> Any:
                origin = capture_stack(skip=1) if tracker.active else None
                plugin = _plugin_service.get()
                conn = getconn(pool, *args, **kwargs)
                if origin is not None:
                    note(pool, conn, origin, plugin)
                return conn

            @functools.wraps(putconn)
            def sputconn(pool: Any, conn: Any, *args: Any, **kwargs: Any) -> Any:
                result = putconn(pool, conn, *args, **kwargs)
                tracker.checkin(conn)
                return result

            get_wrapper = sgetconn
            put_wrapper = sputconn
        self._patch(("psycopg_pool", name + ".getconn"), cls, "getconn", get_wrapper)
        self._patch(("psycopg_pool", name + ".putconn"), cls, "putconn", put_wrapper)

    def _listen_sqlalchemy(self) -> None:
        pool_cls = getattr(sys.modules["sqlalchemy.pool"], "Pool", None)
        event = sys.modules["sqlalchemy.event"]
        if not isinstance(pool_cls, type) or not callable(getattr(event, "listen", None)):
            return
        tracker = self

        def on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
            if not tracker.active:
                return
            pool = getattr(record, "_ConnectionRecord__pool", None)
            if pool is None:
                return
            tracker.checkout("sqlalchemy", pool, record, capture_stack(skip=1),
                             plugin=_plugin_service.get())

        def on_checkin(dbapi_connection: Any, record: Any) -> None:
            tracker.checkin(record)

        try:
            event.listen(pool_cls, "checkout", on_checkout)
            self._listeners.append((pool_cls, "checkout", on_checkout))
            event.listen(pool_cls, "checkin", on_checkin)
            self._listeners.append((pool_cls, "checkin", on_checkin))
        except Exception:
            return


def _method(cls: type, name: str) -> Any:
    """The function behind *cls.name* (its own, or inherited)."""
    return cls.__dict__[name] if name in cls.__dict__ else getattr(cls, name)


@dataclass
class Checkout:
    """A connection taken from a pool while a check was active."""

    library: str  # "asyncpg", "psycopg_pool", "sqlalchemy"
    seq: int
    origin: Origin
    pool: Callable[[], object | None]
    holder: Callable[[], object | None]  # the connection, or the pool's slot for it
    token: int = 0  # asyncpg: id() of the proxy handed out (a slot is reused)
    plugin: bool = False  # taken inside plugin_service() (a wider fixture set up lazily)
    label: str = "pool"
    returned: bool = False
    lost: bool = False  # the connection object was collected without being returned

    def outstanding(self) -> bool:
        """Still out of a pool that is still open."""
        if self.returned:
            return False
        pool = self.pool()
        if pool is None or is_closed(pool) is True:
            return False  # the pool is gone or closed: nothing is held from it
        if self.lost:
            return True  # psycopg: collected without putconn(), its slot is lost
        holder = self.holder()
        if holder is None:
            return False
        if self.library == "asyncpg":
            # the pool's slot: in use, and still by the proxy handed out then
            proxy = getattr(holder, "_proxy", None)
            return getattr(holder, "_in_use", None) is not None and proxy is not None \
                and id(proxy) == self.token
        if self.library == "sqlalchemy":
            # a pool entry checked in (or its fairy collected) drops its fairy reference
            return getattr(holder, "fairy_ref", None) is not None
        return True  # psycopg_pool: only putconn() (or closing the pool) gives it back


@dataclass(frozen=True)
class PoolState:
    """Size of a connection pool at snapshot time (``None``: not exposed)."""

    label: str
    size: int | None
    idle: int | None
    checked_out: int  # checkouts recorded by the tracker and still out

    def describe(self) -> str:
        if self.size is None:
            return self.label
        idle = f", {self.idle} idle" if self.idle is not None else ""
        return f"{self.label} of {self.size}{idle}"


def pool_label(pool: object) -> str:
    module = type(pool).__module__.split(".")[0]
    if module == "sqlalchemy":
        return f"sqlalchemy {type(pool).__name__}"
    if module == "psycopg_pool":
        return f"psycopg_pool {type(pool).__name__}"
    return f"{module} pool"


def pool_state(pool: object, checked_out: int = 0) -> PoolState:
    """Current size and idle count of an asyncpg, psycopg_pool or SQLAlchemy pool."""
    size: int | None = None
    idle: int | None = None
    obj: Any = pool
    with contextlib.suppress(Exception):
        if callable(getattr(obj, "get_idle_size", None)):  # asyncpg
            size, idle = int(obj.get_size()), int(obj.get_idle_size())
        elif callable(getattr(obj, "get_stats", None)):  # psycopg_pool
            stats = obj.get_stats()
            size = int(stats.get("pool_size", 0))
            idle = int(stats.get("pool_available", 0))
        elif callable(getattr(obj, "checkedin", None)):  # sqlalchemy
            idle = int(obj.checkedin())
            size = idle + int(obj.checkedout())
    return PoolState(pool_label(pool), size, idle, checked_out)


tracker = Tracker()

_plugin_service: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "pytest_resilience_plugin_service", default=False
)


def plugin_owned_begin() -> contextvars.Token[bool]:
    return _plugin_service.set(True)


def plugin_owned_end(token: contextvars.Token[bool]) -> None:
    _plugin_service.reset(token)


@contextlib.contextmanager
def plugin_service() -> Iterator[None]:
    """Mark what the block creates (sockets, threads, processes, clients) as the
    plugin's own: services started lazily in the middle of a test use this so
    the leak check never blames the test for them."""
    token = _plugin_service.set(True)
    try:
        yield
    finally:
        _plugin_service.reset(token)


def application_name(obj: object) -> str | None:
    """The ``application_name`` of a live asyncpg/psycopg connection, if known."""
    try:
        info = getattr(obj, "info", None)
        if info is not None and hasattr(info, "parameter_status"):
            value = info.parameter_status("application_name")
            return value.decode() if isinstance(value, bytes) else value
        settings = getattr(obj, "get_settings", None)
        if callable(settings):
            return getattr(settings(), "application_name", None)
    except Exception:
        return None
    return None


def is_closed(obj: object) -> bool | None:
    """Whether a watched session/connection/pool is closed (None: cannot tell)."""
    name = type(obj).__mro__
    names = {c.__name__ for c in name}
    try:
        if "ClientSession" in names or "BaseConnector" in names:
            return bool(obj.closed)  # type: ignore[attr-defined]
        if "BaseClient" in names:  # httpx
            return bool(obj.is_closed)  # type: ignore[attr-defined]
        if "Pool" in names and type(obj).__module__.startswith("asyncpg"):
            return bool(obj.is_closing())  # type: ignore[attr-defined]
        if "Connection" in names and type(obj).__module__.startswith("asyncpg"):
            return bool(obj.is_closed())  # type: ignore[attr-defined]
        if type(obj).__module__.startswith(("psycopg", "psycopg_pool")):
            return bool(obj.closed)  # type: ignore[attr-defined]
    except Exception:
        return None
    return None


# ---------------------------------------------------------------------------
# plugin services (excluded from leak verdicts)


#: The plugin's own resources (:mod:`pytest_resilience.services.registry`).
ServiceRegistry = _registry.Ownership
service_registry = _registry.owned


def register_service(
    *, ports: Iterable[int] = (), paths: Iterable[str] = (), pids: Iterable[int] = ()
) -> None:
    """Declare a plugin service so the leak check never blames a test for it (same as
    :func:`pytest_resilience.services.registry.declare`)."""
    _registry.declare(ports=ports, paths=paths, pids=pids)


# ---------------------------------------------------------------------------
# file descriptors


@dataclass(frozen=True)
class FdInfo:
    """One open file descriptor, described."""

    fd: int
    kind: str  # "file", "socket", "pipe", "fd"
    target: str  # readlink of /proc/self/fd/N
    detail: str = ""  # path, or "tcp 127.0.0.1:5000 -> 127.0.0.1:8080", ...
    local: object = None
    peer: object = None

    def describe(self) -> str:
        return f"fd {self.fd}: {self.kind} {self.detail or self.target}"


_FD_DIR = "/proc/self/fd"


def fd_targets() -> dict[int, str]:
    """fd number -> readlink target, for every open fd of the process."""
    out: dict[int, str] = {}
    try:
        names = os.listdir(_FD_DIR)
    except OSError:
        return out
    for name in names:
        try:
            out[int(name)] = os.readlink(f"{_FD_DIR}/{name}")
        except (OSError, ValueError):
            continue  # the listdir fd itself, or closed meanwhile
    return out


def _fd_kind(target: str) -> str:
    if target.startswith("socket:"):
        return "socket"
    if target.startswith("pipe:"):
        return "pipe"
    if target.startswith("/"):
        return "file"
    return "fd"


_FAMILY = {socket.AF_INET: "tcp", socket.AF_INET6: "tcp6", socket.AF_UNIX: "unix"}


def _fmt_addr(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    if isinstance(addr, bytes):
        addr = addr.decode(errors="replace")
    return str(addr) if addr else "(unnamed)"


def describe_fd(fd: int, target: str) -> FdInfo:
    """Describe one fd; sockets get their local and peer address."""
    kind = _fd_kind(target)
    if kind == "file":
        return FdInfo(fd, kind, target, target)
    if kind != "socket":
        return FdInfo(fd, kind, target, target)
    try:
        dup = os.dup(fd)
    except OSError:
        return FdInfo(fd, kind, target, target)
    try:
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return FdInfo(fd, kind, target, target)
    try:
        family = _FAMILY.get(sock.family, str(sock.family))
        if sock.type == socket.SOCK_DGRAM:
            family = family.replace("tcp", "udp") if family.startswith("tcp") else family + "/dgram"
        local: object = None
        peer: object = None
        with contextlib.suppress(OSError):
            local = sock.getsockname()
        with contextlib.suppress(OSError):
            peer = sock.getpeername()
        if peer is None:
            detail = f"{family} {_fmt_addr(local)} (listening or unconnected)"
        else:
            detail = f"{family} {_fmt_addr(local)} -> {_fmt_addr(peer)}"
        return FdInfo(fd, kind, target, detail, local, peer)
    finally:
        sock.close()


# ---------------------------------------------------------------------------
# threads, child processes, tasks


def _child_pids() -> set[int]:
    pid = os.getpid()
    out: set[int] = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
                out.update(int(p) for p in fh.read().split())
        except (OSError, ValueError):
            continue
    return out


def process_state(pid: int) -> tuple[str, str] | None:
    """(state letter, command line) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            stat = fh.read()
        state = stat.rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fb:
            cmd = fb.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = ""
    return state, cmd


def library_cache_pids() -> set[int]:
    """Helper processes the stdlib starts once and keeps (multiprocessing)."""
    pids: set[int] = set()
    rt = sys.modules.get("multiprocessing.resource_tracker")
    if rt is not None:
        pid = getattr(getattr(rt, "_resource_tracker", None), "_pid", None)
        if isinstance(pid, int):
            pids.add(pid)
    fs = sys.modules.get("multiprocessing.forkserver")
    if fs is not None:
        pid = getattr(getattr(fs, "_forkserver", None), "_forkserver_pid", None)
        if isinstance(pid, int):
            pids.add(pid)
    return pids


def library_cache_fds() -> set[int]:
    """fds the stdlib keeps open on purpose (multiprocessing helpers)."""
    fds: set[int] = set()
    rt = sys.modules.get("multiprocessing.resource_tracker")
    if rt is not None:
        fd = getattr(getattr(rt, "_resource_tracker", None), "_fd", None)
        if isinstance(fd, int):
            fds.add(fd)
    fs = sys.modules.get("multiprocessing.forkserver")
    if fs is not None:
        server = getattr(fs, "_forkserver", None)
        for name in ("_forkserver_alive_fd",):
            fd = getattr(server, name, None)
            if isinstance(fd, int):
                fds.add(fd)
    fds |= _default_loop_fds()
    return fds


def _default_loop_fds() -> set[int]:
    """fds of the event loop asyncio's policy keeps as this thread's default loop.

    ``asyncio.get_event_loop()`` creates it on first call and the policy holds it for
    the thread's lifetime (pytest-asyncio < 1.5 calls it while setting up a test), so
    its self-pipe and selector are a per-thread cache, not something the test leaked.
    """
    events = sys.modules.get("asyncio.events")
    policy = getattr(events, "_event_loop_policy", None) if events is not None else None
    loop = getattr(getattr(policy, "_local", None), "_loop", None)
    if loop is None or loop.is_closed() or loop.is_running():
        return set()
    fds: set[int] = set()
    for name in ("_ssock", "_csock"):
        sock = getattr(loop, name, None)
        fileno = getattr(sock, "fileno", None)
        if callable(fileno):
            with contextlib.suppress(OSError, ValueError):
                fd = fileno()
                if isinstance(fd, int) and fd >= 0:
                    fds.add(fd)
    selector = getattr(loop, "_selector", None)
    fileno = getattr(selector, "fileno", None)
    if callable(fileno):
        with contextlib.suppress(OSError, ValueError):
            fd = fileno()
            if isinstance(fd, int) and fd >= 0:
                fds.add(fd)
    return fds


def pending_tasks() -> list[asyncio.Task[Any]]:
    """Every not-done asyncio task of every event loop in the process."""
    tasks: list[asyncio.Task[Any]] = []
    for name in ("_all_tasks", "_scheduled_tasks"):  # 3.11 / 3.12+
        registry = getattr(asyncio.tasks, name, None)
        if registry is None:
            continue
        for _ in range(3):
            try:
                tasks = [t for t in list(registry) if not t.done()]
                break
            except RuntimeError:  # changed size during iteration (another thread)
                continue
        eager = getattr(asyncio.tasks, "_eager_tasks", None)
        if eager is not None:
            with contextlib.suppress(RuntimeError):
                tasks.extend(t for t in list(eager) if not t.done())
        return tasks
    return tasks


def task_location(task: asyncio.Task[Any]) -> str:
    """Where a pending task is suspended right now."""
    coro: Any = task.get_coro()
    frame = None
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or frame
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if coro is not None and getattr(coro, "cr_frame", None) is None and getattr(
            coro, "gi_frame", None
        ) is None:
            break
    if frame is None:
        return "not started"
    return f"{_short_path(frame.f_code.co_filename)}:{frame.f_lineno} in {frame.f_code.co_name}"


_task_origins: weakref.WeakKeyDictionary[asyncio.Task[Any], Origin] = (
    weakref.WeakKeyDictionary()
)


def task_origin(task: asyncio.Task[Any]) -> Origin | None:
    origin = _task_origins.get(task)
    if origin is not None:
        return origin
    source_tb = getattr(task, "_source_traceback", None)
    if source_tb:
        frames = tuple((fs.filename, fs.lineno or 0, fs.name) for fs in source_tb)
        return Origin(frames, via="asyncio debug")
    return None


def install_task_factory(loop: asyncio.AbstractEventLoop) -> bool:
    """Record where each task of *loop* is created (only if it has no factory)."""
    if loop.is_closed() or loop.get_task_factory() is not None:
        return False

    def factory(
        loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any
    ) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, **kwargs)
        if tracker.active:
            _task_origins[task] = capture_stack(skip=2)
        return task

    loop.set_task_factory(factory)
    return True


def thread_location(thread: threading.Thread) -> str:
    """Where a running thread is right now."""
    ident = thread.ident
    frame = sys._current_frames().get(ident) if ident is not None else None
    if frame is None:
        return "unknown"
    return f"{_short_path(frame.f_code.co_filename)}:{frame.f_lineno} in {frame.f_code.co_name}"


# ---------------------------------------------------------------------------
# Postgres server sessions


@dataclass(frozen=True)
class PgBackend:
    """One row of ``pg_stat_activity``."""

    pid: int
    application_name: str
    client_addr: str | None
    client_port: int | None
    backend_start: str
    state: str
    query: str
    datname: str

    def describe(self) -> str:
        where = (
            f"{self.client_addr}:{self.client_port}"
            if self.client_addr
            else "unix socket"
        )
        app = f", application_name={self.application_name!r}" if self.application_name else ""
        query = self.query.strip().replace("\n", " ")
        if len(query) > 60:
            query = query[:57] + "..."
        return (
            f"server session pid {self.pid} (db {self.datname}, client {where}{app}, "
            f"{self.state or 'unknown'} since {self.backend_start}, last query {query!r})"
        )


_PG_QUERY = """
SELECT pid, coalesce(application_name, ''), host(client_addr), client_port,
       to_char(backend_start, 'HH24:MI:SS.MS'), coalesce(state, ''),
       coalesce(query, ''), coalesce(datname, '')
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
"""


class PgProbe:
    """Reads ``pg_stat_activity`` through one connection kept for the session.

    ``connect`` is the postgres fixture's ``.connect`` (psycopg). The probe's own
    connection is named ``pytest-resilience-leak-check`` and, like every
    connection whose ``application_name`` starts with ``pytest-resilience``,
    is never reported.
    """

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is None or getattr(self._conn, "closed", True):
            conn = self._connect()
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SET application_name = 'pytest-resilience-leak-check'")
            self._conn = conn
        return self._conn

    def backends(self) -> dict[int, PgBackend]:
        conn = self._connection()
        with conn.cursor() as cur:
            cur.execute(_PG_QUERY)
            rows = cur.fetchall()
        out: dict[int, PgBackend] = {}
        for pid, app, addr, port, start, state, query, datname in rows:
            if str(app).startswith(SERVICE_THREAD_PREFIX):
                continue
            out[int(pid)] = PgBackend(
                int(pid), str(app), addr, int(port) if port is not None else None,
                str(start), str(state), str(query), str(datname),
            )
        return out

    def fileno(self) -> int | None:
        """The probe connection's socket (never reported as leaked)."""
        conn = self._conn
        if conn is None:
            return None
        fd = getattr(getattr(conn, "pgconn", None), "socket", None)
        return fd if isinstance(fd, int) and fd >= 0 else None

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


# ---------------------------------------------------------------------------
# the snapshot


@dataclass
class Snapshot:
    """Everything observable at one instant; cheap enough to take per test."""

    fds: dict[int, str]
    threads: dict[int, threading.Thread]
    children: set[int]
    tasks: weakref.WeakSet[asyncio.Task[Any]]
    seq: int
    taken_at: float
    pg: dict[int, PgBackend] | None = None
    # pools the tracker knows (their connections were checked out during a check):
    # id(pool) -> size, idle and recorded checkouts still out
    pools: dict[int, PoolState] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Resource counts by kind (for growth checks à la ``python -m test -R``)."""
        counts = {"file": 0, "socket": 0, "pipe": 0, "fd": 0}
        for target in self.fds.values():
            counts[_fd_kind(target)] += 1
        counts["thread"] = len(self.threads)
        counts["process"] = len(self.children)
        counts["task"] = len(self.tasks)
        counts["session"] = 0
        counts["db"] = 0
        for rec in tracker.created_since(-1):
            if rec.kind in ("session", "db") and not rec.owned:
                obj = rec.get()
                if obj is not None and is_closed(obj) is False:
                    counts[rec.kind] += 1
        if self.pg is not None:
            counts["db"] += len(self.pg)
        counts["pool-checkout"] = sum(p.checked_out for p in self.pools.values())
        return counts


def _pool_states() -> dict[int, PoolState]:
    out: dict[int, int] = {}
    pools: dict[int, object] = {}
    for co in list(tracker.checkouts.values()):
        pool = co.pool()
        if pool is None:
            continue
        pools[id(pool)] = pool
        out.setdefault(id(pool), 0)
        if not co.plugin and co.outstanding():
            out[id(pool)] += 1
    return {key: pool_state(pools[key], n) for key, n in out.items()}


def take_snapshot(pg: PgProbe | None = None) -> Snapshot:
    """Snapshot fds, threads, children, pending tasks (and Postgres sessions)."""
    tracker.install()
    pg_rows = None
    if pg is not None:
        with contextlib.suppress(Exception):
            pg_rows = pg.backends()
    threads = {t.ident: t for t in threading.enumerate() if t.ident is not None}
    tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet(pending_tasks())
    return Snapshot(
        fds=fd_targets(),
        threads=threads,
        children=_child_pids(),
        tasks=tasks,
        seq=tracker.seq,
        taken_at=time.monotonic(),
        pg=pg_rows,
        pools=_pool_states() if tracker.checkouts else {},
    )


_ADDR_IN_REPR = re.compile(r" at 0x([0-9a-fA-F]+)>")


def object_id_in_message(text: str) -> int | None:
    """The ``id()`` printed in a default repr (``<X object at 0x7f...>``)."""
    match = _ADDR_IN_REPR.search(text)
    return int(match.group(1), 16) if match else None


@contextlib.contextmanager
def active_tracking() -> Iterator[None]:
    """Record constructor calls of watched classes inside the block."""
    tracker.install()
    tracker.active += 1
    try:
        yield
    finally:
        tracker.active -= 1
