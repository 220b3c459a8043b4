"""Leak verdicts: compare two resource snapshots and say what leaked, and where from.

Data first (:class:`Leak`, :class:`LeakVerdict`), then text (:meth:`LeakVerdict.message`).

False-positive rules (a resource is *not* a leak when...):

1. it existed at the "before" snapshot: everything created by session-, package-,
   module- and class-scoped fixtures, by earlier tests and by pytest itself
   predates the window, because the window opens before the test's first
   function-scoped fixture is set up and closes after its last one is torn down;
2. it was created while a wider-scoped fixture was being set up lazily inside
   the window (first use by this test, or ``request.getfixturevalue`` from a
   function fixture): the fixture's setup is subtracted from the window;
3. it is closed by then: function-scoped fixtures (including factory fixtures
   such as ``aiohttp_client`` or ``tmp_path``) may open and close what they like;
4. it belongs to a plugin service: threads named ``pytest-resilience*`` or
   ``resilience-*``, sockets whose local or peer port (or unix path) a service
   registered with :func:`~pytest_resilience.observe.resources.register_service`
   (the ``postgres`` and ``toxiproxy`` fixtures are registered automatically),
   unix sockets under a path containing ``pytest-resilience``, anything created
   inside :func:`~pytest_resilience.observe.resources.plugin_service`, and DB
   connections / Postgres sessions whose ``application_name`` starts with
   ``pytest-resilience``;
5. it is a connection-pool socket of a client that predates the test (a
   module-scoped ``httpx.Client`` reconnecting), or the server end of a
   connection accepted by a listening socket that predates the test;
6. it is a stdlib helper kept on purpose (multiprocessing's resource tracker and
   forkserver), a zombie child (exited, only not reaped yet), or a task of an
   event loop running in another thread (a service's loop);
7. warm-up (the ``python -m test -R`` rule): a regular file under the
   interpreter, site-packages or system directories (``/usr``, ``/etc``,
   ``/dev``, ``/proc``, ``/sys``), and a pipe or other fd that no Python object
   holds (a C library's lazy global, such as libuv's signal pipe), is tolerated
   the first time its kind of growth is seen in the process; growth that
   repeats in a later test counts;
8. a Postgres server session (or a connection through a Toxiproxy proxy) is
   counted only while this process still holds the client end of it (matched
   by client port; unix sockets by count), so sessions of other xdist workers
   and sessions still shutting down after a clean ``close()`` are never blamed;
9. the test itself failed (or xfailed): its traceback keeps its locals alive,
   so the verdict is attached to the report but not raised;
10. a pool checkout (kind ``pool-checkout``) counts only if it was taken inside the
   window, from a pool that is still open at its end, and was not returned: a
   connection checked out before the test (a session fixture's) and returned
   during it, and every checkout of a pool the test closes, are never blamed.

Threads and sockets get a bounded settle time (``SETTLE_SECONDS``, spent only
when something looks leaked) to finish closing before they are called leaked.
"""

from __future__ import annotations

import asyncio
import fnmatch
import gc
import io
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_resilience.errors import ConfigError
from pytest_resilience.observe import resources as r
from pytest_resilience.verdicts.core import Verdict

__all__ = [
    "IMPLIED_KINDS",
    "KINDS",
    "CapturedWarning",
    "Leak",
    "LeakOptions",
    "LeakVerdict",
    "ResourceLeakWarning",
    "commit_warmups",
    "diff",
    "own_socket_ports",
    "warning_kind",
]

#: Every resource kind a leak check knows, in report order.
KINDS = ("session", "db", "pool-checkout", "task", "thread", "process", "socket", "file",
         "pipe", "fd")

#: Asking for a kind also checks these (a pool checkout is a DB connection held).
IMPLIED_KINDS: Mapping[str, tuple[str, ...]] = {"db": ("pool-checkout",)}

README = "see the 'Leak checks' section of the pytest-resilience README"

_KIND_HELP = {
    "session": "HTTP client sessions (aiohttp ClientSession/connectors, httpx Client/AsyncClient)",
    "db": "database connections and pools (asyncpg, psycopg) and Postgres server sessions",
    "pool-checkout": "connections checked out of a pool (asyncpg, psycopg_pool, SQLAlchemy) "
                     "and never returned",
    "task": "asyncio tasks still pending",
    "thread": "threads still running",
    "process": "child processes still running",
    "socket": "open sockets",
    "file": "open regular files",
    "pipe": "open pipes",
    "fd": "other file descriptors (epoll, eventfd, ...)",
}


class ResourceLeakWarning(UserWarning):
    """Emitted instead of a failure under ``--resilience-leaks=warn``."""


IgnoreRule = str | Callable[["Leak"], bool]


@dataclass(frozen=True)
class LeakOptions:
    """What to check: the merged, validated ``no_leaks`` marker arguments."""

    kinds: frozenset[str] = frozenset(KINDS)
    allow: Mapping[str, int] = field(default_factory=dict)
    ignore: tuple[IgnoreRule, ...] = ()

    @classmethod
    def build(
        cls,
        kinds: Iterable[str] | str | None = None,
        allow: Mapping[str, int] | None = None,
        ignore: Iterable[IgnoreRule] | IgnoreRule = (),
        *,
        where: str = "no_leaks",
    ) -> LeakOptions:
        """Validate the arguments, raising :class:`ConfigError` naming a bad one."""
        __tracebackhide__ = True
        valid = ", ".join(KINDS)
        if kinds is None:
            chosen = frozenset(KINDS)
        else:
            if isinstance(kinds, str):
                kinds = (kinds,)
            chosen_list = list(kinds)
            for kind in chosen_list:
                if kind not in KINDS:
                    raise ConfigError(
                        f"{where}: unknown leak kind {kind!r} in kinds=; "
                        f"valid kinds: {valid} ({README})"
                    )
            for kind in list(chosen_list):
                chosen_list.extend(IMPLIED_KINDS.get(kind, ()))
            chosen = frozenset(chosen_list)
        allowed: dict[str, int] = {}
        if allow is not None:
            if not isinstance(allow, Mapping):
                raise ConfigError(
                    f"{where}: allow= must be a mapping of kind to count, e.g. "
                    f"allow={{'thread': 1}}; got {allow!r}"
                )
            for kind, count in allow.items():
                if kind not in KINDS:
                    raise ConfigError(
                        f"{where}: unknown leak kind {kind!r} in allow=; "
                        f"valid kinds: {valid} ({README})"
                    )
                if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                    raise ConfigError(
                        f"{where}: allow[{kind!r}] must be a non-negative integer, "
                        f"got {count!r}"
                    )
                allowed[kind] = count
        if isinstance(ignore, str) or callable(ignore):
            ignore = (ignore,)
        rules: list[IgnoreRule] = []
        for rule in ignore:
            if not (isinstance(rule, str) or callable(rule)):
                raise ConfigError(
                    f"{where}: ignore= takes glob patterns (matched against the "
                    f"leak's description) or callables Leak -> bool; got {rule!r}"
                )
            rules.append(rule)
        return cls(chosen, allowed, tuple(rules))

    @classmethod
    def from_markers(cls, kwargs_list: Sequence[tuple[Sequence[Any], Mapping[str, Any]]],
                     where: str) -> LeakOptions:
        """Merge ``no_leaks`` markers closest-first (each kwarg from the closest one)."""
        __tracebackhide__ = True
        merged: dict[str, Any] = {}
        for args, kwargs in kwargs_list:
            if args:
                raise ConfigError(
                    f"{where} takes keyword arguments only "
                    "(kinds=None, allow=None, ignore=())"
                )
            for key, value in kwargs.items():
                if key not in ("kinds", "allow", "ignore"):
                    raise ConfigError(
                        f"{where} got an unknown argument {key!r}; "
                        "it takes kinds=None, allow=None, ignore=()"
                    )
                merged.setdefault(key, value)
        return cls.build(where=where, **merged)


@dataclass(frozen=True)
class Leak:
    """One leaked resource."""

    kind: str
    what: str
    origin: r.Origin | None = None
    details: tuple[str, ...] = ()
    tolerated: str | None = None  # why it is not counted

    def text(self) -> str:
        return " ".join((self.kind, self.what, *self.details))

    def format(self) -> list[str]:
        lines = [f"[{self.kind}] {self.what}"]
        lines.extend(f"    {d}" for d in self.details)
        if self.origin is not None:
            lines.append(f"    created at {self.origin.headline()}  (via {self.origin.via})")
            stack = self.origin.format()
            if len(stack) > 1:
                lines.append("    stack (most recent call last):")
                lines.extend(f"      {s}" for s in stack)
        else:
            lines.append(
                "    created at: unknown (run with -X tracemalloc=20 or "
                "PYTHONTRACEMALLOC=20 to see where)"
            )
        if self.tolerated:
            lines.append(f"    not counted: {self.tolerated}")
        return lines


@dataclass(frozen=True)
class LeakVerdict:
    """Expected: nothing of the checked kinds outlives the window. Observed: ``leaks``."""

    leaks: tuple[Leak, ...]
    tolerated: tuple[Leak, ...]
    kinds: frozenset[str]
    window: str = "from before the test's function-scoped fixtures to after their teardown"
    warmed: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.leaks

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for leak in self.leaks:
            out[leak.kind] = out.get(leak.kind, 0) + 1
        return out

    def message(self, title: str = "resource leak check") -> str:
        checked = ", ".join(k for k in KINDS if k in self.kinds)
        if self.passed:
            head = f"{title}: no leaks ({checked})"
        else:
            counts = ", ".join(f"{n} {k}" for k, n in self.by_kind().items())
            head = f"{title}: {len(self.leaks)} leaked ({counts})"
        lines = [head, f"  window: {self.window}; checked: {checked}"]
        for leak in self.leaks:
            lines.extend("  " + line for line in leak.format())
        if self.tolerated:
            lines.append(f"  tolerated ({len(self.tolerated)}):")
            for leak in self.tolerated:
                lines.append(f"    [{leak.kind}] {leak.what} -- {leak.tolerated}")
        if not self.passed:
            lines.append(
                "  fix: close, cancel or join each of them in the test or its fixtures; "
                "opt out with @pytest.mark.no_leaks(kinds=[...], allow={kind: n}, "
                f"ignore=['glob']) ({README})"
            )
        return "\n".join(lines)

    def as_verdict(
        self, title: str = "resilience leak check", *, judged: bool = True,
        severity: str = "error",
    ) -> Verdict:
        """This result as the plugin's one result type (``kind="leaks"``): one table row
        per leak, all rows blamed; ``judged=False`` when the test itself failed (its
        traceback keeps objects alive), recorded with severity ``info``; ``severity``
        ``warning`` for ``--resilience-leaks=warn``."""
        checked = [k for k in KINDS if k in self.kinds]
        counts = self.by_kind()
        outcome = (
            f"{len(self.leaks)} leaked ({', '.join(f'{n} {k}' for k, n in counts.items())})"
            if self.leaks else "no leaks"
        )
        if self.tolerated:
            outcome += f"; {len(self.tolerated)} tolerated"
        message = self.message(title)
        if not judged and not self.passed:
            message += "\n  (not judged: the test itself failed)"
            outcome += " (not judged: the test itself failed)"
        rows = [
            [leak.kind, leak.what, leak.origin.headline() if leak.origin else "unknown"]
            for leak in self.leaks
        ]
        return Verdict(
            kind="leaks",
            claim="no leaked resources",
            passed=self.passed,
            expected={"leaked": 0},
            observed={"leaked": len(self.leaks), "by_kind": counts,
                      "tolerated": len(self.tolerated)},
            tolerance="warm-up growth of a lazy cache, once per process" if self.warmed else "",
            headers=["kind", "leaked", "created at"] if rows else [],
            rows=rows,
            blame=list(range(len(rows))),
            outcome=outcome,
            message=message,
            severity=severity if judged else "info",
            data={**self.as_dict(), "checked": checked},
        )

    def as_dict(self) -> dict[str, Any]:
        """For the JSON report."""
        def one(leak: Leak) -> dict[str, Any]:
            return {
                "kind": leak.kind,
                "what": leak.what,
                "details": list(leak.details),
                "created_at": leak.origin.headline() if leak.origin else None,
                "stack": leak.origin.format() if leak.origin else [],
                "tolerated": leak.tolerated,
            }

        return {
            "passed": self.passed,
            "kinds": sorted(self.kinds),
            "leaks": [one(x) for x in self.leaks],
            "tolerated": [one(x) for x in self.tolerated],
        }


@dataclass(frozen=True)
class CapturedWarning:
    """A ResourceWarning (or loop exception-handler report) seen inside the window.

    Only the source's ``id`` and a kind hint are kept: holding the object itself
    would resurrect it from its ``__del__``.
    """

    message: str
    source_id: int | None = None
    kind_hint: str | None = None
    origin: r.Origin | None = None
    via: str = "ResourceWarning"

    @classmethod
    def from_source(cls, message: str, source: object, via: str) -> CapturedWarning:
        origin = None
        hint = None
        if source is not None:
            origin = r.tracemalloc_origin(source)
            rec = r.tracker.lookup(id(source))
            if origin is None and rec is not None:
                origin = rec.origin
            if isinstance(source, socket.socket):
                hint = "socket"
            elif isinstance(source, io.IOBase):
                hint = "pipe" if "pipe" in message.lower() else "file"
            elif isinstance(source, asyncio.Task):
                hint = "task"
                origin = origin or r.task_origin(source)
        return cls(message, id(source) if source is not None else None, hint, origin, via)


# ---------------------------------------------------------------------------
# the diff

_SYSTEM_PREFIXES = ("/usr/", "/etc/", "/dev/", "/proc/", "/sys/", "/lib/", "/lib64/", "/opt/")
_warmed_up: set[str] = set()


def _library_path(path: str) -> bool:
    return r.is_library_file(path) or path.startswith(_SYSTEM_PREFIXES)


def commit_warmups(verdict: LeakVerdict) -> None:
    """Remember the lazy caches this verdict tolerated: their next growth counts."""
    _warmed_up.update(verdict.warmed)


_PORT_IN_TEXT = re.compile(r":(\d{2,5})\b")


_FD_IN_TEXT = re.compile(r"\bfd=(\d+)")
_LADDR = re.compile(r"laddr=\('[^']*', (\d+)")
_RADDR = re.compile(r"raddr=\('[^']*', (\d+)")


def _addr_ports(text: str) -> tuple[int | None, int | None]:
    laddr = _LADDR.search(text)
    raddr = _RADDR.search(text)
    return (int(laddr.group(1)) if laddr else None, int(raddr.group(1)) if raddr else None)


def _port_in(text: str) -> int | None:
    match = _PORT_IN_TEXT.search(text)
    return int(match.group(1)) if match else None


def note_db_ports(since_seq: int, into: dict[int, r.TrackedObject]) -> None:
    """Remember the local port of each live watched DB connection created since *since_seq*."""
    for rec in r.tracker.created_since(since_seq):
        if rec.kind != "db":
            continue
        obj = rec.get()
        if obj is None or r.is_closed(obj) is not False:
            continue
        port = db_local_port(obj)
        if port is not None:
            owner = rec
            into.setdefault(port, owner)


def _has_pid(pid: int) -> Callable[[object], bool]:
    return lambda obj: getattr(obj, "pid", None) == pid


def _socket_record(fd: int) -> r.TrackedObject | None:
    return r.tracker.find("socket", lambda s: isinstance(s, socket.socket) and s.fileno() == fd)


def _port(address: object) -> int | None:
    if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[1], int):
        return address[1]
    return None


def _listening_ports(before: Mapping[int, str], after: Mapping[int, str]) -> set[int]:
    """Local ports of listening sockets that predate the window and are still open."""
    ports: set[int] = set()
    for fd, target in before.items():
        if not target.startswith("socket:") or after.get(fd) != target:
            continue
        info = r.describe_fd(fd, target)
        port = _port(info.local)
        if info.peer is None and port:
            ports.add(port)
    return ports


def _pooled_by_older_client(rec: r.TrackedObject, since_seq: int) -> bool:
    if rec.owner is None:
        return False
    owner = rec.owner()
    if owner is None or r.is_closed(owner) is True:
        return False
    owner_rec = r.tracker.lookup(id(owner))
    return owner_rec is None or owner_rec.seq <= since_seq


def _socket_origin(fd: int) -> r.Origin | None:
    rec = _socket_record(fd)
    if rec is not None:
        obj = rec.get()
        return (r.tracemalloc_origin(obj) if obj is not None else None) or rec.origin
    return None


def _file_objects(fds: set[int]) -> dict[int, object]:
    """Open io objects holding one of *fds* (a gc scan, done only when files leak)."""
    found: dict[int, object] = {}
    for obj in gc.get_objects():
        if isinstance(obj, io.IOBase):
            try:
                fd = obj.fileno()
            except (OSError, ValueError):
                continue
            if fd in fds and fd not in found:
                found[fd] = obj
    return found


def _thread_leak(thread: threading.Thread) -> Leak | None:
    target = getattr(thread, "_target", None)
    target_name = getattr(target, "__qualname__", None) or type(thread).__qualname__
    rec = r.tracker.find("thread", lambda t: t is thread)
    if rec is not None and rec.plugin:
        return None
    return Leak(
        "thread",
        f"thread {thread.name!r} still running (target {target_name}, daemon={thread.daemon})",
        (r.tracemalloc_origin(thread) or (rec.origin if rec else None)),
        (f"now at {r.thread_location(thread)}",),
    )


def task_leak(task: asyncio.Task[Any]) -> Leak:
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", None) or repr(coro)
    return Leak(
        "task",
        f"task {task.get_name()!r} ({name}) still pending",
        r.task_origin(task),
        (f"suspended at {r.task_location(task)}",),
    )


def _warning_kind(message: str, hint: str | None) -> str:
    low = message.lower()
    if "client session" in low or "connector" in low:
        return "session"
    if hint is not None:
        return hint
    if "unclosed connection" in low or "asyncpg" in low or "psycopg" in low:
        return "db"
    if "transport" in low or "socket" in low:
        return "socket"
    if "subprocess" in low or "process" in low:
        return "process"
    if "unclosed file" in low:
        return "file"
    if "task was destroyed" in low:
        return "task"
    return "fd"


def warning_kind(w: CapturedWarning) -> str:
    """The leak kind a captured ResourceWarning is about."""
    rec = r.tracker.lookup(w.source_id) if w.source_id is not None else None
    if rec is None:
        obj_id = r.object_id_in_message(w.message)
        rec = r.tracker.lookup(obj_id) if obj_id is not None else None
    if rec is not None and rec.kind in KINDS:
        return rec.kind
    return _warning_kind(w.message, w.kind_hint)


def db_local_port(obj: object) -> int | None:
    """The local TCP port of an asyncpg/psycopg connection (to match server sessions)."""
    transport = getattr(obj, "_transport", None)
    if transport is not None:
        name = transport.get_extra_info("sockname")
        if isinstance(name, tuple) and len(name) >= 2:
            return int(name[1])
    pgconn = getattr(obj, "pgconn", None)
    fd = getattr(pgconn, "socket", None) if pgconn is not None else None
    if isinstance(fd, int) and fd >= 0:
        info = r.describe_fd(fd, "socket:")
        if isinstance(info.local, tuple) and len(info.local) >= 2:
            return int(info.local[1])
    return None


@dataclass
class Observation:
    """What the checker saw at the end of the window, beyond the 'after' snapshot."""

    warnings: list[CapturedWarning] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] | None = None  # pending at the end of the window
    # tasks judged just before their (function-scoped) loop was closed: the loop
    # cancels them silently, so they are described while still pending
    closed_loop_tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    closed_loop_leaks: list[Leak] = field(default_factory=list)
    own_tcp_ports: set[int] = field(default_factory=set)  # at the time of the pg query
    own_pg_unix: int = 0
    ignore_fds: set[int] = field(default_factory=set)
    # local port -> watched DB connection, noted while the objects were alive
    db_ports: dict[int, r.TrackedObject] = field(default_factory=dict)
    # sessions a fixture found still connected and terminated (postgres_db)
    terminated: list[str] = field(default_factory=list)
    # server sessions found owned by this process in any pass: pid -> (port, text)
    sessions_seen: dict[int, tuple[int | None, str]] = field(default_factory=dict)
    # connections through the test's Toxiproxy proxies still open, owned by this
    # process: (proxy, conn id) -> (client port, text)
    proxy_conns: dict[tuple[str, int], tuple[int | None, str]] = field(default_factory=dict)


def diff(
    before: r.Snapshot,
    after: r.Snapshot,
    options: LeakOptions,
    observed: Observation | None = None,
) -> LeakVerdict:
    """Everything of the checked kinds that exists after and did not before."""
    obs = observed or Observation()
    kinds = options.kinds
    found: list[Leak] = []
    tolerated: list[Leak] = []
    registry = r.service_registry
    reported_ids: set[int] = set()
    warmed: list[str] = []

    # -- Postgres server sessions (rule 6), matched to client objects by port
    server_sessions: list[tuple[int | None, str]] = []  # (client port, description)
    if "db" in kinds:
        if before.pg is not None and after.pg is not None:
            unix_budget = obs.own_pg_unix
            for pid, backend in sorted(after.pg.items()):
                if pid in before.pg or pid in obs.sessions_seen:
                    continue
                if backend.client_port is not None and backend.client_port >= 0:
                    if backend.client_port not in obs.own_tcp_ports:
                        continue
                elif unix_budget > 0:
                    unix_budget -= 1
                else:
                    continue
                # sticky: if a later forced GC closes the client end, it still leaked
                obs.sessions_seen[pid] = (backend.client_port, backend.describe())
        server_sessions.extend(obs.sessions_seen.values())
        unix_left = obs.own_pg_unix
        for text in obs.terminated:
            # counted only if this process still holds the client end (rule 6): a
            # session whose client closed cleanly may linger a few ms at the server
            port = _port_in(text.rsplit("@", 1)[-1])
            if port:
                if port not in obs.own_tcp_ports:
                    continue
            elif unix_left > 0:
                unix_left -= 1
            else:
                continue
            server_sessions.append((port, text))

    # -- client sessions, DB connections and pools (watched constructors)
    port_of: dict[int, int] = {rec.obj_id: port for port, rec in obs.db_ports.items()}
    matched_ports: set[int] = set()
    if kinds & {"session", "db"}:
        for rec in r.tracker.created_since(before.seq):
            if rec.kind not in ("session", "db") or rec.kind not in kinds or rec.owned:
                continue
            obj = rec.get()
            if obj is None or r.is_closed(obj) is not False:
                continue
            if rec.kind == "db":
                app = r.application_name(obj)
                if app is not None and registry.owns_application_name(app):
                    continue  # the plugin's own connection (rule 3)
            reported_ids.add(rec.obj_id)
            port = port_of.get(rec.obj_id)
            if port is None and rec.kind == "db":
                port = db_local_port(obj)
            details = tuple(d for p, d in server_sessions if p is not None and p == port)
            if details and port is not None:
                matched_ports.add(port)
            found.append(
                Leak(rec.kind, f"{rec.type_name} never closed",
                     r.tracemalloc_origin(obj) or rec.origin, details)
            )
    for port, description in server_sessions:
        if port is not None and port in matched_ports:
            continue
        match = obs.db_ports.get(port) if port is not None else None
        details_list = [description]
        if match is not None:
            reported_ids.add(match.obj_id)
            details_list.append(f"client side: {match.type_name}")
        found.append(Leak("db", "Postgres server session still open at the end of the test",
                          match.origin if match is not None else None, tuple(details_list)))

    # -- connections checked out of a pool and never returned (rule 10)
    if "pool-checkout" in kinds:
        found.extend(pool_checkout_leaks(before.seq))

    # -- pending tasks
    if "task" in kinds:
        found.extend(obs.closed_loop_leaks)
        tasks = obs.tasks if obs.tasks is not None else r.pending_tasks()
        for task in tasks:
            if task in before.tasks or task.done() or task in obs.closed_loop_tasks:
                continue
            loop = task.get_loop()
            if loop.is_running():
                continue  # a loop serving in another thread (rule 4)
            found.append(task_leak(task))

    # -- threads
    if "thread" in kinds:
        for ident, thread in sorted(after.threads.items()):
            if before.threads.get(ident) is thread or not thread.is_alive():
                continue
            if registry.owns_thread(thread):
                continue
            thread_leak = _thread_leak(thread)
            if thread_leak is not None:
                found.append(thread_leak)

    # -- child processes
    if "process" in kinds:
        cached = r.library_cache_pids()
        for pid in sorted(after.children - before.children):
            if pid in registry.pids or pid in cached:
                continue
            state = r.process_state(pid)
            if state is None or state[0] in ("Z", "X"):
                continue  # gone, or exited and only waiting to be reaped
            proc_rec = r.tracker.find("process", _has_pid(pid))
            if proc_rec is not None and proc_rec.plugin:
                continue
            found.append(
                Leak("process", f"child process {pid} still running: {state[1][:80]}",
                     proc_rec.origin if proc_rec else None)
            )

    # -- file descriptors
    fd_kinds = kinds & {"socket", "file", "pipe", "fd"}
    if fd_kinds:
        cached_fds = r.library_cache_fds() | obs.ignore_fds | registry.fds
        new = {
            fd: target
            for fd, target in after.fds.items()
            if before.fds.get(fd) != target and fd not in cached_fds
        }
        infos = [r.describe_fd(fd, target) for fd, target in sorted(new.items())]
        infos = [i for i in infos if i.kind in fd_kinds]
        file_fds = {i.fd for i in infos if i.kind in ("file", "pipe")}
        holders = _file_objects(file_fds) if file_fds else {}
        proxied_ports: set[int] = set()
        if "socket" in kinds:
            by_port = {_port(i.local): i for i in infos if i.kind == "socket"}
            for port, text in obs.proxy_conns.values():
                info_for = by_port.get(port)
                proxied_ports.add(port or -1)
                found.append(Leak("socket", text, _socket_origin(info_for.fd)
                                  if info_for is not None else None))
        server_ports: set[int] | None = None
        for info in infos:
            if info.kind == "socket":
                if registry.owns_address(info.local) or registry.owns_address(info.peer):
                    continue
                if _port(info.local) in proxied_ports:
                    continue  # reported above as a proxied connection
                sock_rec = _socket_record(info.fd)
                if sock_rec is not None and sock_rec.plugin:
                    continue
                if sock_rec is not None and _pooled_by_older_client(sock_rec, before.seq):
                    continue  # a keep-alive connection of a client that predates the test
                if info.peer is not None:
                    if server_ports is None:
                        server_ports = _listening_ports(before.fds, after.fds)
                    if _port(info.local) in server_ports:
                        continue  # accepted by a server that predates the test
                found.append(Leak("socket", f"socket left open: {info.describe()}",
                                  _socket_origin(info.fd)))
                continue
            holder = holders.get(info.fd)
            origin = None
            if holder is not None:
                origin = r.tracemalloc_origin(holder)
                file_rec = r.tracker.lookup(id(holder))
                if origin is None and file_rec is not None:
                    origin = file_rec.origin
            held: tuple[str, ...] = (f"held by {holder!r}",) if holder is not None else ()
            leak = Leak(info.kind, f"{info.kind} left open: {info.describe()}", origin, held)
            signature = None
            if info.kind == "file" and _library_path(info.target):
                signature = "file:" + info.target
            elif info.kind in ("pipe", "fd") and holder is None:
                # no Python object holds it: a C library's lazy global (libuv's
                # signal pipe...) or an os.pipe() -- judged from its second growth on
                kind_of = info.target.split("[")[0].rstrip(":")
                signature = f"{info.kind}:{kind_of}"
            if signature is not None and signature not in _warmed_up:
                if signature not in warmed:
                    warmed.append(signature)
                tolerated.append(_replace(leak, "warm-up: the first growth of "
                                                f"{signature!r} in this process is tolerated "
                                                "(a lazy cache); growth that repeats counts"))
                continue
            found.append(leak)

    # -- ResourceWarnings and loop exception-handler reports inside the window
    warned_ids: set[int] = set()
    warned_fds: set[int] = set()
    session_ports = {p for p, _ in server_sessions if p is not None}
    owner_reported = bool(reported_ids)
    for w in obs.warnings:
        obj_id = w.source_id if w.source_id is not None else r.object_id_in_message(w.message)
        if obj_id is not None and (obj_id in reported_ids or obj_id in warned_ids):
            continue
        wrec = r.tracker.lookup(obj_id) if obj_id is not None else None
        if wrec is not None and wrec.owned and owner_reported:
            continue  # its owner (a session, a pool) is reported instead
        kind = wrec.kind if wrec is not None and wrec.kind in KINDS else _warning_kind(
            w.message, w.kind_hint)
        fd_match = _FD_IN_TEXT.search(w.message)
        if fd_match is not None:
            fd_no = int(fd_match.group(1))
            if fd_no in warned_fds:
                continue  # the transport and its socket: one leak
            warned_fds.add(fd_no)
        if kind == "socket":
            laddr, raddr = _addr_ports(w.message)
            if laddr is not None and laddr in session_ports:
                continue  # the client end of a server session reported above
            if raddr is not None and raddr in registry.ports:
                kind = "db" if "db" in kinds else kind  # a connection to a plugin service
        if kind not in kinds:
            continue
        if obj_id is not None:
            warned_ids.add(obj_id)
        origin = w.origin
        if origin is None and wrec is not None:
            origin = wrec.origin
        first = w.message.strip().splitlines()[0] if w.message.strip() else w.via
        if len(first) > 160:
            first = first[:157] + "..."
        found.append(Leak(kind, f"{first}", origin, (f"reported by {w.via}",)))

    # -- allow= and ignore=
    counted: list[Leak] = []
    allowance = dict(options.allow)
    for leak in found:
        rule = _ignored(leak, options.ignore)
        if rule is not None:
            tolerated.append(_replace(leak, f"ignored by no_leaks(ignore={rule!r})"))
            continue
        if allowance.get(leak.kind, 0) > 0:
            allowance[leak.kind] -= 1
            tolerated.append(_replace(leak, f"allowed by no_leaks(allow={dict(options.allow)!r})"))
            continue
        counted.append(leak)
    order = {k: i for i, k in enumerate(KINDS)}
    counted.sort(key=lambda x: order.get(x.kind, len(KINDS)))
    return LeakVerdict(tuple(counted), tuple(tolerated), kinds, warmed=tuple(warmed))


def pool_checkout_leaks(since_seq: int) -> list[Leak]:
    """One leak per connection checked out of a still-open pool after *since_seq* and
    not returned, named with the pool's size and idle count and the acquiring call site."""
    leaks: list[Leak] = []
    for co in sorted(r.tracker.outstanding_checkouts(since_seq), key=lambda c: c.seq):
        if co.plugin:
            continue  # taken by a wider-scoped fixture set up lazily inside the window
        pool = co.pool()
        if pool is None:
            continue
        state = r.pool_state(pool)
        details: tuple[str, ...] = ()
        if co.lost:
            details = ("the connection object was garbage-collected without being returned; "
                       "the pool never gets it back",)
        leaks.append(Leak(
            "pool-checkout",
            f"1 pool connection checked out and never returned ({state.describe()}): "
            f"acquired at {co.origin.headline()}",
            co.origin, details,
        ))
    return leaks


def _ignored(leak: Leak, rules: tuple[IgnoreRule, ...]) -> IgnoreRule | None:
    text = leak.text()
    for rule in rules:
        if isinstance(rule, str):
            if fnmatch.fnmatch(text, rule) or fnmatch.fnmatch(text, f"*{rule}*"):
                return rule
        elif rule(leak):
            return rule
    return None


def _replace(leak: Leak, reason: str) -> Leak:
    return Leak(leak.kind, leak.what, leak.origin, leak.details, reason)


def own_socket_ports(before_fds: Mapping[int, str]) -> tuple[set[int], int]:
    """Local TCP ports of this process's sockets, and how many new unix sockets talk
    to a Postgres server (``.s.PGSQL.<port>``)."""
    ports: set[int] = set()
    pg_unix = 0
    for fd, target in r.fd_targets().items():
        if not target.startswith("socket:"):
            continue
        if before_fds.get(fd) == target:
            # predates the window: only its TCP port matters (a pg session never
            # predates its own client socket)
            continue
        info = r.describe_fd(fd, target)
        if isinstance(info.local, tuple) and len(info.local) >= 2:
            ports.add(int(info.local[1]))
        peer = info.peer
        if isinstance(peer, bytes):
            peer = peer.decode(errors="replace")
        if isinstance(peer, str) and ".s.PGSQL." in os.path.basename(peer):
            pg_unix += 1
    return ports, pg_unix
