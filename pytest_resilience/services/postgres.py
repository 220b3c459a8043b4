"""A real Postgres server for tests: local throwaway cluster, Docker, or external.

Local mode, step by step (figures from this machine, see benchmarks/bench_postgres.py):

1. Find the binaries: ``--resilience-pg-bin``, then ``PATH``, then
   ``/usr/lib/postgresql/*/bin`` newest first. ``postgres --version`` (about 15 ms)
   runs while the data directory is copied: the cache is keyed by the binaries'
   identity (path, size, mtime, inode), not by the version it prints.
2. Get an initialised data directory: copy it from the cache (``cp -a``, about
   0.05 s) or, on a cold cache, run ``initdb`` (about 0.6 s) and fill the cache
   atomically (write to a private name, then ``rename``; the loser of a race
   throws its copy away). Only the WAL segment of the last checkpoint is kept (the
   recycled ones are a sixth of the copy).
   The cluster lives in ``/dev/shm`` when it has room (``$RESILIENCE_PG_TMPDIR``
   overrides): on a RAM-backed tmpfs, creating and dropping a database per test
   costs about 12 + 4 ms instead of waiting on a disk filesystem's metadata.
3. Start ``postgres`` directly (no ``pg_ctl``, which polls every 100 ms) on
   127.0.0.1 and a unix socket in a 0700 directory, as a supervised child
   (:mod:`pytest_resilience.services.supervise`): in its own session, so the
   terminal's Ctrl-C does not kill it before teardown, and watched by the reaper,
   which stops it (fast shutdown) and removes the temporary directory when the
   pytest process dies however it dies - also when a test forked a child that
   keeps pytest's pipes open. So no server outlives pytest by more than a moment.
4. Wait for the ``ready`` status in ``postmaster.pid`` (polled every 2 ms,
   bounded), then open one admin connection and set the session password (its SCRAM
   verifier was computed during the copy); when the session will use ``postgres_db``,
   the pool creates the first test database meanwhile, on its own connection.

``initdb`` and ``postgres`` refuse to run as root: when pytest runs as root,
both run as the ``postgres`` account (or ``$RESILIENCE_PG_USER``).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import importlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pytest_resilience.errors import ConfigError, ServiceError
from pytest_resilience.services import registry
from pytest_resilience.services.supervise import PathGuard, log_tail, propose_port, spawn

if TYPE_CHECKING:
    from concurrent.futures import Future

    import psycopg

__all__ = [
    "APPLICATION_NAME",
    "PgBinaries",
    "PostgresDatabase",
    "PostgresServer",
    "find_binaries",
    "start_postgres",
]

#: ``application_name`` of every server-side connection the plugin itself opens.
APPLICATION_NAME = "pytest-resilience"
README = "see 'Postgres' in the pytest-resilience README"

#: Settings that make a throwaway server fast; durability is not wanted here.
SERVER_SETTINGS: tuple[tuple[str, str], ...] = (
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("max_connections", "200"),
    ("shared_buffers", "32MB"),
    ("checkpoint_timeout", "1h"),
    ("max_wal_size", "1GB"),
    ("logging_collector", "off"),
    ("log_min_messages", "warning"),
    ("password_encryption", "scram-sha-256"),
)
#: Who may connect how. Written into every cluster at start (never trusted from the
#: cache): the unix socket lives in a 0700 directory only this account (and root) can
#: enter; TCP - which every local account reaches - needs the per-session password.
PG_HBA = """\
# pytest-resilience: written at start, see 'Security' in the README
local   all   all                  trust
host    all   all   127.0.0.1/32   scram-sha-256
host    all   all   ::1/128        scram-sha-256
"""
INITDB_ARGS: tuple[str, ...] = (
    "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8",
    "--no-locale", "-U", "postgres", "--wal-segsize=1",
)
#: Bump when the cached data directory layout or initdb arguments change.
CACHE_FORMAT = 3
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
PORT_ATTEMPTS = 5


# --------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class PgBinaries:
    """Where the Postgres server binaries are and which version they are."""

    bindir: Path
    version: str  # e.g. "15.18"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def path(self, name: str) -> Path:
        return self.bindir / name


def _candidate_dirs(pg_bin: Path | None) -> list[Path]:
    if pg_bin is not None:
        return [pg_bin]
    out: list[Path] = []
    found = shutil.which("initdb")
    if found:
        out.append(Path(found).resolve().parent)

    def major(path: Path) -> tuple[int, ...]:
        version = path.parent.name
        return tuple(int(p) for p in version.split(".") if p.isdigit())

    out.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True))
    return out


def _version(returncode: int, output: str) -> str | None:
    """The version ``postgres --version`` printed, if it succeeded."""
    match = re.search(r"(\d+(?:\.\d+)*)", output)
    return match.group(1) if returncode == 0 and match else None


def _has_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in ("initdb", "postgres"))


class _VersionProbe:
    """``postgres --version`` of the first candidate directory, started at once and
    read later: it runs while the data directory is copied, off the critical path."""

    def __init__(self, pg_bin: Path | None) -> None:
        self.bindir = next((d for d in _candidate_dirs(pg_bin) if _has_binaries(d)), None)
        self.proc: subprocess.Popen[str] | None = None
        self._binaries: PgBinaries | None = None
        if self.bindir is not None:
            with contextlib.suppress(OSError):
                self.proc = subprocess.Popen(
                    [str(self.bindir / "postgres"), "--version"], stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                )

    def result(self, pg_bin: Path | None) -> PgBinaries:
        """The binaries (the full search of :func:`find_binaries` if the probe failed)."""
        proc, self.proc = self.proc, None
        if proc is not None and self.bindir is not None:
            out, _ = proc.communicate()
            version = _version(proc.returncode, out)
            if version is not None:
                self._binaries = PgBinaries(bindir=self.bindir, version=version)
        if self._binaries is None:
            self._binaries = find_binaries(pg_bin)
        return self._binaries

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.kill()
            proc.communicate()


@functools.lru_cache(maxsize=8)
def find_binaries(pg_bin: Path | None = None) -> PgBinaries:
    """Locate ``initdb`` and ``postgres``; a clear :class:`ServiceError` if there are none.

    Memoized per process: the report header and the fixture ask for the same answer."""
    searched = _candidate_dirs(pg_bin)
    for bindir in searched:
        if _has_binaries(bindir):
            out = subprocess.run(
                [str(bindir / "postgres"), "--version"],
                capture_output=True, text=True, check=False,
            )
            version = _version(out.returncode, out.stdout)
            if version is not None:
                return PgBinaries(bindir=bindir, version=version)
    where = ", ".join(str(d) for d in searched) or "nothing"
    if pg_bin is None:
        where = f"PATH, /usr/lib/postgresql/*/bin (found: {where})"
    raise ServiceError(
        f"no Postgres server binaries (initdb, postgres) found; searched {where}.\n"
        "Fix: install them (Debian/Ubuntu: apt-get install postgresql; macOS: brew install "
        "postgresql), or pass --resilience-pg-bin=/path/to/bin, or use "
        "--resilience-postgres=docker or --resilience-postgres=external with "
        f"--resilience-postgres-dsn ({README})"
    )


# --------------------------------------------------------------------------- accounts


@dataclass(frozen=True)
class _RunAs:
    """The account initdb and postgres run as (None: this process's own)."""

    name: str | None = None
    uid: int | None = None
    gid: int | None = None

    def popen_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def command(self, args: list[str]) -> tuple[list[str], dict[str, Any]]:
        """``args`` and the Popen keyword arguments that run them as this account.

        With ``user=``/``group=`` CPython cannot use ``vfork`` and forks the whole
        pytest process (5-15 ms for a large one, on the session start's critical path);
        util-linux's ``setpriv`` switches the account in the child instead, after a
        cheap ``vfork`` + ``exec``. Same result: real, effective and saved ids of the
        account, no supplementary groups, no capabilities left."""
        if self.uid is None:
            return args, {}
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            return args, self.popen_kwargs()
        return [setpriv, f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                "--", *args], {}

    def chown(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


def run_as_account() -> _RunAs:
    """Postgres refuses to run as root: pick an unprivileged account when we are root."""
    if os.geteuid() != 0:
        return _RunAs()
    import pwd

    name = os.environ.get("RESILIENCE_PG_USER", "postgres")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ServiceError(
            f"pytest runs as root and Postgres refuses to run as root, but there is no "
            f"'{name}' account to run it as.\nFix: create one (useradd --system {name}), "
            "set $RESILIENCE_PG_USER to an unprivileged account, or run pytest as a normal "
            f"user ({README})"
        ) from None
    return _RunAs(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


# --------------------------------------------------------------------------- servers


@dataclass
class PostgresServer:
    """A running Postgres server (the ``postgres`` fixture)."""

    host: str
    port: int
    user: str
    dbname: str
    version: str
    mode: str
    #: Never shown in ``repr`` (tracebacks, ``--showlocals``); the DSNs carry it.
    password: str | None = field(default=None, repr=False)
    unix_socket: str | None = None
    _stop: Any = field(default=None, repr=False)
    _admin: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _counter: int = field(default=0, repr=False)
    _pool: DatabasePool | None = field(default=None, repr=False)

    @property
    def major(self) -> int:
        """The server's major version (0 when unknown)."""
        head = self.version.split(".")[0]
        return int(head) if head.isdigit() else 0

    @property
    def dsn(self) -> str:
        """``postgresql://`` DSN of the server's default database, over TCP."""
        return self.dsn_for(self.dbname)

    def dsn_for(self, dbname: str, host: str | None = None, port: int | None = None) -> str:
        """A DSN for another database, or for the same server behind a proxy."""
        auth = quote(self.user, safe="")
        if self.password is not None:
            auth += ":" + quote(self.password, safe="")
        return f"postgresql://{auth}@{host or self.host}:{port or self.port}/{quote(dbname)}"

    def connect(self, dbname: str | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
        """A psycopg 3 connection (unix socket when there is one), tagged with our
        ``application_name`` unless you pass your own."""
        import psycopg

        kwargs.setdefault("application_name", APPLICATION_NAME)
        kwargs.setdefault("connect_timeout", 10)
        host = self.unix_socket or self.host
        return psycopg.connect(
            host=host, port=self.port, user=self.user, password=self.password,
            dbname=dbname or self.dbname, **kwargs,
        )

    # -- per-test databases -------------------------------------------------

    def _admin_conn(self) -> psycopg.Connection[Any]:
        if self._admin is None or self._admin.closed:
            self._admin = self.connect(
                autocommit=True, application_name=APPLICATION_NAME + "/admin"
            )
        return self._admin  # type: ignore[no-any-return]

    def create_database(
        self, prefix: str = "test", template: str = "template1",
        admin: psycopg.Connection[Any] | None = None,
    ) -> str:
        """Create a fresh, uniquely named database from ``template``; returns its name.

        ``admin`` is the connection to run it on (default: the server's own admin
        connection, under its lock)."""
        from psycopg import sql

        with self._lock:
            self._counter += 1
            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            name = f"{prefix}_{worker}_{os.getpid()}_{self._counter}"
        # FILE_COPY (PG 15+) copies the template's files directly: about 12 ms here,
        # against 18 ms for the default WAL_LOG, which writes every page to WAL.
        strategy = sql.SQL(" STRATEGY FILE_COPY" if self.major >= 15 else "")
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}{}").format(
            sql.Identifier(name), sql.Identifier(template), strategy
        )
        try:
            if admin is not None:
                admin.execute(statement)
            else:
                with self._lock:
                    self._admin_conn().execute(statement)
        except Exception as exc:
            raise ServiceError(
                f"could not create test database {name!r} from template {template!r} on "
                f"{self.host}:{self.port} as {self.user!r}: {exc}\n"
                "The user needs the CREATEDB privilege, and nobody may be connected to "
                f"the template ({README})"
            ) from exc
        return name

    def connected_sessions(self, dbname: str) -> list[str]:
        """The sessions connected to ``dbname`` (``application_name@client:port``)."""
        with self._lock:
            rows = self._admin_conn().execute(
                "SELECT coalesce(application_name, ''), coalesce(client_addr::text, 'local'),"
                " coalesce(client_port, 0) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            ).fetchall()
        return [f"{app or '?'}@{addr}:{port}" for app, addr, port in rows]

    def drop_database(self, name: str, admin: psycopg.Connection[Any] | None = None) -> list[str]:
        """Drop a test database. Returns the sessions that were still connected
        (``application_name@client``); they are terminated so the drop succeeds."""
        from psycopg import sql

        leftover = self.connected_sessions(name)
        statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)
        )
        if admin is not None:
            admin.execute(statement)
        else:
            with self._lock:
                self._admin_conn().execute(statement)
        return leftover

    @property
    def pool(self) -> DatabasePool:
        """The per-test database pool (created on first use)."""
        with self._lock:
            if self._pool is None:
                self._pool = DatabasePool(self)
            return self._pool

    def describe(self) -> str:
        """``PostgreSQL <version> (<mode>) at host:port`` - never the password."""
        return f"PostgreSQL {self.version} ({self.mode}) at {self.host}:{self.port}"

    def stop(self) -> None:
        """The :class:`~pytest_resilience.services.base.Service` name for :meth:`close`."""
        self.close()

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the admin connection and stop the server if we started it."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.close()
        stop, self._stop = self._stop, None
        if stop is not None:
            stop()


class DatabasePool:
    """Hands out fresh test databases with creation and dropping off the critical path.

    While a test runs, a background thread (``pytest-resilience-pg-pool``, with its own
    admin connection) creates the next test's database from the template; after the
    test, the used database is checked for sessions still connected (synchronously, so
    they can be reported) and then dropped by a second thread on a second connection
    (``pytest-resilience-pg-drop``), so a drop never delays the next creation. Per test
    this takes a CREATE (about 12 ms) and a DROP (about 5 ms) off the critical path;
    back-to-back trivial tests wait only for the CREATE.

    When the pool has time to spare (it was idle for longer than two connections take
    when the last database was handed out), it also connects to the next database once,
    so Postgres builds its relation cache file and the test's first connection is a few
    ms faster. When tests follow each other faster than the pool creates databases, that
    connection (about 5 ms, more under load) would only make every test wait longer, so
    it is left out. The first database, which the session start waits for, is never
    warmed: the test's own first connection costs less than warming it would. A database
    the pool created but never handed out is dropped at close.
    """

    def __init__(self, server: PostgresServer, template: str = "template1") -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._server = server
        self._template = template
        self._creator = ThreadPoolExecutor(1, thread_name_prefix="pytest-resilience-pg-pool")
        self._dropper = ThreadPoolExecutor(1, thread_name_prefix="pytest-resilience-pg-drop")
        self._next: Future[str] | None = None
        # One connection per thread, each used on its own thread only.
        self._conns: dict[str, psycopg.Connection[Any]] = {}
        self._lock = threading.Lock()
        self._busy = 0  # tasks submitted and not finished
        self._idle_since = time.monotonic()
        self._warm_cost = 0.01  # seconds a warming connection takes (running estimate)

    def prefetch(self) -> None:
        """Start creating the first database now (idempotent)."""
        if self._next is None:
            self._next = self._submit(self._creator, self._create, False)

    def acquire(self) -> str:
        """A fresh database's name (raises :class:`ServiceError` if it cannot be made)."""
        pending, self._next = self._next, None
        if pending is None:
            pending = self._submit(self._creator, self._create, False)
        name = pending.result()
        with self._lock:
            spare = time.monotonic() - self._idle_since if self._busy == 0 else 0.0
        self._next = self._submit(self._creator, self._create, spare > 2 * self._warm_cost)
        return name

    def release(self, name: str) -> list[str]:
        """Schedule ``name`` for dropping; returns the sessions still connected to it
        (they are terminated by the drop)."""
        leftover = self._server.connected_sessions(name)
        self._submit(self._dropper, self._drop, name)
        return leftover

    def wait_for_drops(self, timeout: float = 30.0) -> None:
        """Block until every drop scheduled so far has run (the drop thread takes them in
        order), or ``timeout`` seconds (then :class:`TimeoutError`)."""
        self._dropper.submit(lambda: None).result(timeout)

    def close(self) -> None:
        """Wait for pending drops, then drop the prefetched database nobody used."""
        pending, self._next = self._next, None
        if pending is not None:
            # Waited for here: a callback could only submit the drop after shutdown.
            with contextlib.suppress(Exception):
                self._dropper.submit(self._drop, pending.result())
        for executor, role in ((self._creator, "pool"), (self._dropper, "drop")):
            executor.submit(self._close_conn, role)
            executor.shutdown(wait=True)

    def _submit(self, executor: Any, fn: Any, *args: Any) -> Future[Any]:
        with self._lock:
            self._busy += 1
        return executor.submit(self._run, fn, *args)  # type: ignore[no-any-return]

    def _run(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        finally:
            with self._lock:
                self._busy -= 1
                if self._busy == 0:
                    self._idle_since = time.monotonic()

    def _admin(self, role: str) -> psycopg.Connection[Any]:
        conn = self._conns.get(role)
        if conn is None or conn.closed:
            conn = self._conns[role] = self._server.connect(
                autocommit=True, application_name=f"{APPLICATION_NAME}/{role}"
            )
        return conn

    def _create(self, warm: bool) -> str:
        name = self._server.create_database(template=self._template, admin=self._admin("pool"))
        if warm:
            start = time.monotonic()
            with contextlib.suppress(Exception):  # warming is an optimisation only
                self._server.connect(name).close()
            self._warm_cost = 0.5 * self._warm_cost + 0.5 * (time.monotonic() - start)
        return name

    def _drop(self, name: str) -> None:
        from psycopg import sql

        # No session check here: release() made it, on the critical path, to report it.
        with contextlib.suppress(Exception):  # the server may be going away
            self._admin("drop").execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def _close_conn(self, role: str) -> None:
        conn = self._conns.pop(role, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


@dataclass
class PostgresDatabase:
    """A fresh database for one test (the ``postgres_db`` fixture)."""

    server: PostgresServer
    dbname: str

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def user(self) -> str:
        return self.server.user

    @property
    def password(self) -> str | None:
        return self.server.password

    @property
    def dsn(self) -> str:
        return self.server.dsn_for(self.dbname)

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return self.server.connect(self.dbname, **kwargs)


# --------------------------------------------------------------------------- local


def _cache_root(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return cache_dir
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("pytest-resilience")) / "pgdata"


def _cache_hash(bindir: Path) -> str:
    """What identifies the binaries without running them: their path and the size,
    mtime and inode of ``initdb`` and ``postgres`` (an upgrade changes all three)."""
    stats = []
    for name in ("initdb", "postgres"):
        st = (bindir / name).stat()
        stats.append((st.st_size, st.st_mtime_ns, st.st_ino))
    text = repr((CACHE_FORMAT, str(bindir), stats, INITDB_ARGS))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _cache_key(binaries: PgBinaries) -> str:
    return f"pg{binaries.version}-{_cache_hash(binaries.bindir)}"


def _cached_entry(root: Path, bindir: Path) -> Path | None:
    """The cached data directory for these binaries (found by hash: the version in its
    name is not known yet while ``postgres --version`` runs)."""
    suffix = "-" + _cache_hash(bindir)
    try:
        names = os.listdir(root)
    except OSError:
        return None
    for name in names:
        if name.startswith("pg") and name.endswith(suffix):
            entry = root / name
            if (entry / "PG_VERSION").is_file():
                return entry
    return None


def _copy_tree(src: Path, dst: Path) -> None:
    # cp -a is the fastest copy measured here, and it keeps the owner when run as root.
    out = subprocess.run(["cp", "-a", str(src), str(dst)], capture_output=True, text=True)
    if out.returncode != 0:
        raise ServiceError(f"copying {src} to {dst} failed: {out.stderr.strip()}")


def _initdb(bindir: Path, data: Path, run_as: _RunAs) -> None:
    out = subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), *INITDB_ARGS],
        capture_output=True, text=True, cwd=data.parent, check=False,
        env=_server_env(), **run_as.popen_kwargs(),
    )
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-15:])
        raise ServiceError(f"initdb failed (exit {out.returncode}):\n{tail}")


_WAL_NAME = re.compile(r"[0-9A-F]{24}")


def _trim_wal(bindir: Path, data: Path, run_as: _RunAs) -> None:
    """Remove the WAL segments a cleanly shut down cluster does not need: all but the
    one holding its last checkpoint (initdb leaves recycled ones, a sixth of the data
    directory, that every session would copy). Postgres creates new ones as it needs
    them. Left alone if anything is unexpected."""
    try:
        out = subprocess.run(
            [str(bindir / "pg_controldata"), str(data)], capture_output=True, text=True,
            check=False, env=_server_env() | {"LC_ALL": "C"}, **run_as.popen_kwargs(),
        )
    except OSError:  # no pg_controldata next to initdb: keep everything
        return
    fields = dict(
        line.split(":", 1) for line in out.stdout.splitlines() if ":" in line
    )
    state = fields.get("Database cluster state", "").strip()
    redo = fields.get("Latest checkpoint's REDO WAL file", "").strip()
    if out.returncode != 0 or state != "shut down" or not _WAL_NAME.fullmatch(redo):
        return
    wal = data / "pg_wal"
    if not (wal / redo).is_file():
        return
    for entry in wal.iterdir():
        if _WAL_NAME.fullmatch(entry.name) and entry.name != redo:
            with contextlib.suppress(OSError):
                entry.unlink()


def _server_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.setdefault("PATH", "/usr/bin:/bin")
    return env


def _prepare_data_dir(
    probe: _VersionProbe, pg_bin: Path | None, base: Path, run_as: _RunAs,
    cache_dir: Path | None,
) -> tuple[Path, bool, PgBinaries]:
    """Put an initialised data directory at ``base/data``; returns (path, from_cache,
    binaries). The version probe runs meanwhile; the cache is found without it."""
    data = base / "data"
    root = _cache_root(cache_dir)
    cached = _cached_entry(root, probe.bindir) if probe.bindir is not None else None
    if cached is not None:
        _copy_tree(cached, data)
        _write_hba(data, run_as)
        binaries = probe.result(pg_bin)
        if binaries.bindir == probe.bindir and cached.name == _cache_key(binaries):
            return data, True, binaries
        # The probed directory's postgres is broken and the search picked another one:
        # this copy belongs to other binaries, start over from an empty directory.
        shutil.rmtree(data)
    else:
        binaries = probe.result(pg_bin)
    _initdb(binaries.bindir, data, run_as)
    _trim_wal(binaries.bindir, data, run_as)
    _write_hba(data, run_as)
    cached = root / _cache_key(binaries)
    with contextlib.suppress(OSError, ServiceError):
        # Fill the cache atomically: private name first, then rename.
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _copy_tree(data, tmp)
        for leftover in ("postmaster.pid", "postmaster.opts"):
            (tmp / leftover).unlink(missing_ok=True)
        try:
            os.rename(tmp, cached)
        except OSError:  # another process filled it first
            shutil.rmtree(tmp, ignore_errors=True)
    return data, False, binaries


def _write_hba(data: Path, run_as: _RunAs) -> None:
    """Put our access rules in place, whatever the cached copy held."""
    hba = data / "pg_hba.conf"
    hba.unlink(missing_ok=True)
    fd = os.open(hba, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(PG_HBA)
    run_as.chown(hba)


SCRAM_ITERATIONS = 4096  # libpq's and the server's default


def scram_verifier(password: str, salt: bytes | None = None,
                   iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier Postgres stores for ``password`` (RFC 5802/7677, the
    format ``PQencryptPasswordConn`` builds), so it can be computed on another thread
    while the data directory is copied. ``password`` must be ASCII without control
    characters (SASLprep leaves it unchanged); the session password always is."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _new_password() -> tuple[str, str]:
    """A fresh session password and its SCRAM verifier."""
    password = secrets.token_urlsafe(24)
    return password, scram_verifier(password)


def _set_session_password(server: PostgresServer, secret: tuple[str, str]) -> None:
    """Give the superuser a fresh random password for this session, over the unix
    socket. Only its SCRAM verifier reaches the server (not the log, not the cache);
    until it is set the role has no password, so TCP logins fail rather than pass."""
    from psycopg import sql

    password, verifier = secret
    server._admin_conn().execute(
        sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(server.user), sql.Literal(verifier)
        )
    )
    server.password = password


def _temp_root() -> str | None:
    """Where throwaway clusters live: ``$RESILIENCE_PG_TMPDIR``, else ``/dev/shm`` (a
    RAM-backed tmpfs: creating and dropping databases there does not wait on a disk
    filesystem's metadata) when it has room, else the system temp dir."""
    explicit = os.environ.get("RESILIENCE_PG_TMPDIR")
    if explicit:
        return explicit
    shm = "/dev/shm"
    try:
        st = os.statvfs(shm)
    except OSError:
        return None
    if os.access(shm, os.W_OK) and st.f_bavail * st.f_frsize > 1 << 30:
        return shm
    return None


class _Postmaster:
    """The postmaster as a supervised child (see :mod:`.supervise`): in its own session,
    stopped with SIGINT (fast shutdown), its directory removed after it; the reaper does
    the same if pytest dies first."""

    def __init__(
        self, binaries: PgBinaries, base: Path, data: Path, sock: Path, port: int,
        run_as: _RunAs, log: Path,
    ) -> None:
        args = [str(binaries.path("postgres")), "-D", str(data), "-p", str(port),
                "-k", str(sock), "-h", "127.0.0.1"]
        for key, value in SERVER_SETTINGS:
            args += ["-c", f"{key}={value}"]
        cmd, as_account = run_as.command(args)
        with open(log, "ab") as out:
            self.child = spawn(
                cmd, name="postgres", stop_signal=signal.SIGINT, grace=STOP_TIMEOUT,
                remove=base, stdout=out, stderr=subprocess.STDOUT, cwd=base,
                env=_server_env(),
                **as_account,
            )
        self.pid = self.child.pid

    def postmaster_alive(self) -> bool:
        return self.child.alive()

    def stop(self) -> None:
        self.child.stop()


def _wait_ready(postmaster: _Postmaster, data: Path, deadline: float) -> bool:
    """Poll postmaster.pid for the 'ready' status; False if the postmaster died."""
    pidfile = data / "postmaster.pid"
    while time.monotonic() < deadline:
        try:
            lines = pidfile.read_text().splitlines()
        except OSError:
            lines = []
        if len(lines) >= 8 and lines[7].strip() == "ready":
            return True
        if not postmaster.postmaster_alive():
            return False
        time.sleep(0.002)  # polling a local file, not synchronising a test
    return False


def start_local(
    pg_bin: Path | None = None, cache_dir: Path | None = None, *, prefetch: bool = False,
) -> tuple[PostgresServer, dict[str, float]]:
    """Start a throwaway local cluster. Returns the server and timings of each step
    (seconds since the call, in the order they happen).

    ``prefetch``: the session will use ``postgres_db``; the pool starts creating the
    first test database as soon as the server is ready, while the password is set."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    secret: list[tuple[str, str]] = []

    def preload() -> None:
        # Importing psycopg costs ~0.1 s and the verifier's PBKDF2 a few ms: both
        # happen while the data dir is copied and the server starts (other processes).
        secret.append(_new_password())
        importlib.import_module("psycopg")

    thread = threading.Thread(target=preload, name="pytest-resilience-preload")
    thread.start()
    probe = _VersionProbe(pg_bin)
    try:
        return _start_local(pg_bin, cache_dir, timings, t0, probe, thread, secret, prefetch)
    finally:
        probe.close()
        thread.join()


def _start_local(
    pg_bin: Path | None, cache_dir: Path | None, timings: dict[str, float], t0: float,
    probe: _VersionProbe, preload: threading.Thread, secret: list[tuple[str, str]],
    prefetch: bool,
) -> tuple[PostgresServer, dict[str, float]]:
    if probe.bindir is None:
        find_binaries(pg_bin)  # raises the error that says how to get them
    run_as = run_as_account()
    timings["find"] = time.perf_counter() - t0
    for _attempt in range(PORT_ATTEMPTS):
        base = Path(tempfile.mkdtemp(prefix="pytest-resilience-pg-", dir=_temp_root()))
        guard = PathGuard(base)  # removed by the reaper if pytest dies while it is filled
        postmaster: _Postmaster | None = None
        try:
            run_as.chown(base)
            sock = base / "sock"
            sock.mkdir(mode=0o700)
            run_as.chown(sock)
            data, from_cache, binaries = _prepare_data_dir(
                probe, pg_bin, base, run_as, cache_dir
            )
            timings["data_dir_copied" if from_cache else "initdb"] = time.perf_counter() - t0
            log = base / "postgres.log"
            port = propose_port()
            postmaster = _Postmaster(binaries, base, data, sock, port, run_as, log)
            guard.release()  # the postmaster's entry removes base now
            if _wait_ready(postmaster, data, time.monotonic() + START_TIMEOUT):
                timings["ready"] = time.perf_counter() - t0
                server = PostgresServer(
                    host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                    version=binaries.version, mode="local", unix_socket=str(sock),
                    _stop=postmaster.stop,
                )
                try:
                    if prefetch:
                        server.pool.prefetch()
                    preload.join()
                    _set_session_password(server, secret[0] if secret else _new_password())
                except BaseException:
                    server.close()
                    raise
                timings["password"] = time.perf_counter() - t0
                return server, timings
            tail = log_tail(log)
        except BaseException:
            if postmaster is not None:
                postmaster.stop()
            shutil.rmtree(base, ignore_errors=True)
            guard.release()
            raise
        postmaster.stop()  # also removes base
        shutil.rmtree(base, ignore_errors=True)
        if "could not bind" not in tail and "already in use" not in tail:
            raise ServiceError(
                f"Postgres {binaries.version} ({binaries.bindir}) failed to start on "
                f"127.0.0.1:{port}; server log:\n{tail}"
            )
        # The port was taken between proposing and binding it: try another one.
    raise ServiceError(
        f"Postgres could not bind a free port on 127.0.0.1 in {PORT_ATTEMPTS} attempts; "
        f"last server log:\n{tail}"
    )


# --------------------------------------------------------------------------- external / docker


def connect_external(dsn: str) -> PostgresServer:
    """Describe a server you already run; checks the DSN by connecting once."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from pytest_resilience.config import redact_dsn

    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"bad Postgres DSN {redact_dsn(dsn)!r}: {exc}") from None
    host = str(params.get("host") or "127.0.0.1")
    port_text = str(params.get("port") or "5432")
    port = int(port_text) if port_text.isdigit() else 0
    if not 0 < port < 65536:  # never int() here: its traceback would show the DSN
        raise ConfigError(
            f"bad Postgres DSN {redact_dsn(dsn)!r}: port {port_text!r} is not a number "
            f"1-65535 ({README})"
        )
    server = PostgresServer(
        host=host, port=port,
        user=str(params.get("user") or os.environ.get("USER", "postgres")),
        dbname=str(params.get("dbname") or "postgres"),
        password=str(params["password"]) if params.get("password") else None,
        version="?", mode="external",
        unix_socket=host if host.startswith("/") else None,
    )
    try:
        with server.connect(connect_timeout=5) as conn:
            server.version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    except psycopg.Error as exc:
        raise ServiceError(
            f"cannot connect to the external Postgres {redact_dsn(dsn)!r}: "
            f"{str(exc).strip()}\nCheck --resilience-postgres-dsn / $RESILIENCE_POSTGRES_DSN "
            f"({README})"
        ) from None
    return server


def docker_available() -> str | None:
    """None when a Docker engine answers; otherwise the reason it does not."""
    from pytest_resilience.services.docker import docker_unavailable_reason

    return docker_unavailable_reason()


def start_docker(image: str = "postgres:15-alpine") -> PostgresServer:
    """Start Postgres in a container through testcontainers."""
    from testcontainers.postgres import PostgresContainer

    # Docker publishes the port on every interface: a random password, not a known one.
    password = secrets.token_urlsafe(24)
    container = PostgresContainer(image, username="postgres", password=password,
                                  dbname="postgres")
    container.start()
    try:
        server = PostgresServer(
            host=container.get_container_host_ip(),
            port=int(container.get_exposed_port(5432)),
            user="postgres", dbname="postgres", password=password,
            version=image.split(":")[-1], mode="docker", _stop=container.stop,
        )
        with server.connect() as conn:
            server.version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    except BaseException:
        container.stop()
        raise
    return server


def start_postgres(
    mode: str, *, pg_bin: Path | None = None, dsn: str | None = None,
    cache_dir: Path | None = None, prefetch: bool = False,
) -> PostgresServer:
    """Give a running server for ``mode`` (local, docker or external).

    ``prefetch``: per-test databases will be wanted (local mode: the first one is made
    while the server finishes starting)."""
    if mode == "local":
        server = start_local(pg_bin, cache_dir, prefetch=prefetch)[0]
    elif mode == "external":
        if dsn is None:
            raise ConfigError("--resilience-postgres=external needs --resilience-postgres-dsn")
        server = connect_external(dsn)
    elif mode == "docker":
        server = start_docker()
    else:
        raise ConfigError(f"unknown Postgres mode {mode!r}; choose local, docker or external")
    declare_server(server)
    return server


def declare_server(server: PostgresServer) -> None:
    """Tell the ownership registry what this server is: its port and socket directory
    (connections to it are judged by the session checks, not as stray sockets), the
    ``application_name`` of the plugin's own sessions, and this module (its waits keep
    real time under the virtual clock)."""
    registry.declare(
        ports=[server.port],
        paths=[server.unix_socket] if server.unix_socket else [],
        application_names=[APPLICATION_NAME],
        modules=[__name__, "pytest_resilience.services.docker",
                 "pytest_resilience.services.supervise"],
    )


@contextlib.contextmanager
def running_postgres(mode: str = "local", **kwargs: Any) -> Iterator[PostgresServer]:
    """Context manager form of :func:`start_postgres` (for scripts and benchmarks)."""
    server = start_postgres(mode, **kwargs)
    try:
        yield server
    finally:
        server.close()
