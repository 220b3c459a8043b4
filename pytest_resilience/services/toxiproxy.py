"""A running Toxiproxy for the session's settings, and per-test proxies in front of services.

Four ways to get a Toxiproxy (``--resilience-toxiproxy``):

``builtin`` (default)
    The plugin's own Toxiproxy-compatible engine, in a child process or a
    thread (``--resilience-toxiproxy-engine``), seeded with the session seed.
``binary``
    A real ``toxiproxy-server``: ``--resilience-toxiproxy-bin`` (the file, or a
    directory holding it), else ``PATH``. It is started on ``-port 0`` and its
    actual port is read from ``/proc`` (Linux), so no port is ever guessed;
    elsewhere a free port is proposed and a clash retried. It runs as a
    supervised child (:mod:`pytest_resilience.services.supervise`) that the reaper
    stops when the pytest process goes away, however it dies.
``docker``
    The ``ghcr.io/shopify/toxiproxy`` image with host networking (so proxies on
    ``127.0.0.1:0`` are reachable and can reach services on the host; Linux
    only). Skipped when no Docker engine answers.
``external``
    A server you run (``--resilience-toxiproxy-url`` / ``$TOXIPROXY_URL``);
    checked with ``GET /version``.

Every mode is polled for readiness with a bounded deadline; failures raise
:class:`~pytest_resilience.errors.ServiceError` saying what was tried and how to fix it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_resilience.errors import ConfigError, ServiceError
from pytest_resilience.services import registry
from pytest_resilience.services.supervise import log_tail, propose_port, spawn
from pytest_resilience.toxiproxy.client import (
    Client,
    Conflict,
    ExtensionUnsupported,
    NotFound,
    Proxy,
    ToxiproxyError,
    user_facing,
)

if TYPE_CHECKING:
    from pytest_resilience.config import Settings

__all__ = [
    "DOCKER_IMAGE",
    "BinaryNotFound",
    "DockerUnavailable",
    "PgProxy",
    "ProxyFactory",
    "ProxyHandle",
    "ToxiproxyServer",
    "connect_external",
    "docker_available",
    "find_binary",
    "session_namespace",
    "start_binary",
    "start_builtin",
    "start_docker",
    "start_toxiproxy",
]

README = "see 'Toxiproxy' in the pytest-resilience README"
DOCKER_IMAGE = "ghcr.io/shopify/toxiproxy:2.12.0"
BINARY_NAME = "toxiproxy-server"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


class BinaryNotFound(ServiceError):
    """``--resilience-toxiproxy=binary`` and no toxiproxy-server was found."""


class DockerUnavailable(ServiceError):
    """``--resilience-toxiproxy=docker`` and no Docker engine answers (tests skip)."""


@dataclass
class ToxiproxyServer:
    """A running Toxiproxy: its API ``url`` and how to stop it. A context manager."""

    url: str
    mode: str
    description: str
    #: the server's output (``binary`` mode), removed when the server stops
    log: Path | None = None
    _stop: Callable[[], None] | None = field(default=None, repr=False)

    def describe(self) -> str:
        return self.description

    def stop(self) -> None:
        """Stop the server (nothing for ``external``). Idempotent."""
        stop, self._stop = self._stop, None
        if stop is not None:
            stop()

    def client(self, namespace: str = "") -> Client:
        """A new :class:`Client` for this server (close it when done)."""
        return Client(self.url, namespace=namespace)

    def __enter__(self) -> ToxiproxyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def session_namespace() -> str:
    """Proxy-name namespace of this pytest process: ``<xdist worker or 'main'>-<pid>``.

    Workers (and concurrent sessions) sharing one server never collide.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER") or "main"
    return f"{worker}-{os.getpid()}"


def _wait_ready(url: str, deadline: float, alive: Callable[[], bool] | None = None) -> str:
    """Poll ``GET /version`` until it answers; return the version."""
    delay = 0.002
    last = "no answer yet"
    with Client(url, timeout=2.0) as client:
        while True:
            try:
                return client.version()
            except ToxiproxyError as exc:
                last = str(exc)
            if alive is not None and not alive():
                raise ServiceError(f"the Toxiproxy server exited before it answered ({last})")
            if time.monotonic() >= deadline:
                raise ServiceError(f"Toxiproxy at {url} did not answer in time: {last}")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


# --------------------------------------------------------------------------- builtin


def start_builtin(engine: str = "process", seed: int | None = None) -> ToxiproxyServer:
    """Start the built-in engine in a child process or a thread."""
    try:
        from pytest_resilience.toxiproxy import server
    except ImportError as exc:  # pragma: no cover - only while the engine is missing
        raise ServiceError(f"the built-in Toxiproxy engine is not available: {exc}") from exc
    if engine == "process":
        handle = server.start_process("127.0.0.1", 0, seed=seed)
    elif engine == "thread":
        handle = server.start_thread("127.0.0.1", 0, seed=seed)
    else:
        raise ConfigError(f"unknown built-in engine mode {engine!r}; choose process or thread")
    return ToxiproxyServer(url=handle.url, mode="builtin",
                           description=f"built-in engine ({engine}) at {handle.url}",
                           _stop=handle.stop)


# --------------------------------------------------------------------------- binary


def find_binary(toxiproxy_bin: Path | None = None) -> Path:
    """The toxiproxy-server to run: ``toxiproxy_bin`` (file or directory), else PATH."""
    searched: list[str] = []
    if toxiproxy_bin is not None:
        candidate = toxiproxy_bin / BINARY_NAME if toxiproxy_bin.is_dir() else toxiproxy_bin
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
        searched.append(f"--resilience-toxiproxy-bin={toxiproxy_bin} "
                        f"({'not executable' if candidate.is_file() else 'no such file'})")
    else:
        found = shutil.which(BINARY_NAME)
        if found is not None:
            return Path(found)
        searched.append(f"{BINARY_NAME} on PATH ({os.environ.get('PATH', '')})")
    raise BinaryNotFound(
        f"--resilience-toxiproxy=binary: no toxiproxy-server found; searched "
        f"{'; '.join(searched)}. Install it (https://github.com/Shopify/toxiproxy/releases, "
        f"or 'brew install toxiproxy'), pass --resilience-toxiproxy-bin=/path/to/{BINARY_NAME}, "
        f"or use the built-in engine: --resilience-toxiproxy=builtin ({README})"
    )


def _listening_ports(pid: int) -> list[int] | None:
    """TCP ports ``pid`` listens on, from /proc; None where /proc cannot tell."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        ports = []
        for table in ("tcp", "tcp6"):
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                        ports.append(int(cols[1].rsplit(":", 1)[1], 16))
        return ports
    except (OSError, StopIteration, IndexError, ValueError):
        return None


class _Server:
    """toxiproxy-server as a supervised child (:mod:`.supervise`): its own session, its
    output in ``log``, stopped (and its directory removed) by the reaper if pytest dies."""

    def __init__(self, binary: Path, port: int, log: Path) -> None:
        self.port = port
        args = [str(binary), "-host", "127.0.0.1", "-port", str(port)]
        with open(log, "ab") as out:
            self.child = spawn(
                args, name="toxiproxy-server", stop_signal=signal.SIGTERM,
                grace=STOP_TIMEOUT, remove=log.parent, stdout=out, stderr=subprocess.STDOUT,
            )
        self.pid: int | None = self.child.pid

    def alive(self) -> bool:
        return self.child.alive()

    def stop(self) -> None:
        self.child.stop()


def start_binary(toxiproxy_bin: Path | None = None, *,
                 startup_timeout: float = START_TIMEOUT) -> ToxiproxyServer:
    """Run a real toxiproxy-server on 127.0.0.1 and a port the OS picks."""
    binary = find_binary(toxiproxy_bin)
    tmp = Path(tempfile.mkdtemp(prefix="resilience-toxiproxy-"))
    log = tmp / "toxiproxy.log"
    use_proc = Path("/proc/self/net/tcp").exists()
    attempts = 1 if use_proc else 3
    keeper: _Server | None = None
    try:
        for attempt in range(attempts):
            keeper = _Server(binary, 0 if use_proc else propose_port(), log)
            deadline = time.monotonic() + startup_timeout
            port = _discover_port(keeper, deadline) if use_proc else keeper.port
            if port is not None:
                url = f"http://127.0.0.1:{port}"
                try:
                    version = _wait_ready(url, deadline, keeper.alive)
                except ServiceError:
                    if attempt + 1 < attempts and not keeper.alive():
                        keeper.stop()
                        continue  # most likely a port clash: try another port
                    raise
                return ToxiproxyServer(
                    url=url, mode="binary",
                    description=f"{binary} {version} at {url}", log=log,
                    _stop=functools.partial(_stop_binary, keeper, tmp),
                )
        raise ServiceError("no listening port appeared")
    except BaseException as exc:
        tail = log_tail(log, 15)
        if keeper is not None:
            keeper.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, ServiceError) and not isinstance(exc, BinaryNotFound):
            raise ServiceError(
                f"{binary} did not start: {exc}\nits output:\n{tail}\n({README})"
            ) from None
        raise


def _discover_port(keeper: _Server, deadline: float) -> int | None:
    delay = 0.002
    while time.monotonic() < deadline and keeper.pid is not None:
        ports = _listening_ports(keeper.pid)
        if ports:
            return ports[0]
        if not keeper.alive():
            raise ServiceError("the server exited before it listened")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    raise ServiceError("the server did not listen in time")


def _stop_binary(keeper: _Server, tmp: Path) -> None:
    try:
        keeper.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- docker


def docker_available() -> str | None:
    """None when a Docker engine answers; otherwise why not (one raw ``/_ping``)."""
    from pytest_resilience.services.docker import docker_unavailable_reason

    return docker_unavailable_reason()


def start_docker(image: str = DOCKER_IMAGE, *,
                 startup_timeout: float = 60.0) -> ToxiproxyServer:
    """Run toxiproxy-server in a container with host networking."""
    reason = docker_available()
    if reason is not None:
        raise DockerUnavailable(f"--resilience-toxiproxy=docker: {reason}")
    from testcontainers.core.container import DockerContainer

    last: Exception | None = None
    for _ in range(3):
        port = propose_port()  # host networking: a clash makes the server exit; retried
        container: Any = (
            DockerContainer(image)
            .with_kwargs(network_mode="host")
            .with_command(f"-host 127.0.0.1 -port {port}")
        )
        container.start()
        url = f"http://127.0.0.1:{port}"
        try:
            version = _wait_ready(url, time.monotonic() + startup_timeout)
        except ServiceError as exc:
            last = exc
            container.stop()
            continue
        except BaseException:
            container.stop()
            raise
        return ToxiproxyServer(url=url, mode="docker",
                               description=f"{image} ({version}) at {url}",
                               _stop=container.stop)
    raise ServiceError(f"the Toxiproxy container did not answer: {last} ({README})")


# --------------------------------------------------------------------------- external


def connect_external(url: str) -> ToxiproxyServer:
    """Check that a Toxiproxy answers at ``url``."""
    try:
        with Client(url, timeout=5.0) as client:
            version = client.version()
    except ToxiproxyError as exc:
        raise ServiceError(
            f"the external Toxiproxy at {url} did not answer GET /version: {exc}. Start it, or "
            f"fix --resilience-toxiproxy-url / ini resilience_toxiproxy_url / $TOXIPROXY_URL "
            f"({README})"
        ) from None
    return ToxiproxyServer(url=url, mode="external",
                           description=f"external toxiproxy {version} at {url}")


def start_toxiproxy(settings: Settings) -> ToxiproxyServer:
    """A running Toxiproxy for the session's settings (stop it when done)."""
    mode = settings.toxiproxy
    if mode == "builtin":
        server = start_builtin(settings.toxiproxy_engine, seed=settings.seed)
    elif mode == "binary":
        server = start_binary(settings.toxiproxy_bin)
    elif mode == "docker":
        server = start_docker()
    elif mode == "external":
        if settings.toxiproxy_url is None:
            raise ConfigError("--resilience-toxiproxy=external needs --resilience-toxiproxy-url")
        server = connect_external(settings.toxiproxy_url)
    else:
        raise ConfigError(
            f"unknown Toxiproxy mode {mode!r}; choose builtin, binary, docker or external"
        )
    declare_server(server)
    return server


def declare_server(server: ToxiproxyServer) -> None:
    """Tell the ownership registry about this Toxiproxy: its API port (the plugin's
    own connections to it are not a test's leak) and the modules that talk to it."""
    from urllib.parse import urlsplit

    port = urlsplit(server.url).port
    registry.declare(
        ports=[port] if port else [],
        modules=[__name__, "pytest_resilience.toxiproxy", "pytest_resilience.services.docker",
                 "pytest_resilience.services.supervise"],
    )


# --------------------------------------------------------------------------- proxies


#: What ``proxy_for`` returns: a client :class:`Proxy` (faults, ``events()``, ``listen``...).
ProxyHandle = Proxy


@dataclass(eq=False)
class PgProxy(Proxy):
    """A proxy in front of the test's Postgres database.

    ``dsn`` connects through the proxy (faults apply), ``direct_dsn`` bypasses it.
    """

    # The DSNs carry the session password: kept out of repr (tracebacks, --showlocals).
    dsn: str = field(default="", kw_only=True, repr=False)
    direct_dsn: str = field(default="", kw_only=True, repr=False)
    dbname: str = field(default="", kw_only=True)
    user: str = field(default="", kw_only=True)


def _upstream(host: str, port: int) -> str:
    if not isinstance(host, str) or not host:
        raise ConfigError(f"proxy_for: 'host' must be a host name or address, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"proxy_for: 'port' must be a TCP port 1-65535, got {port!r}")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@user_facing
class ProxyFactory:
    """Creates proxies for one test and deletes them all in :meth:`close`.

    Each proxy's ``events()`` starts at the engine's event sequence number of its
    creation (:attr:`Proxy.events_since`): names repeat from test to test
    (``pg_proxy`` is always ``postgres``), the engine's event log does not forget.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.proxies: list[Proxy] = []
        self._counter = 0
        self._has_events = True

    def __call__(self, host: str, port: int, name: str | None = None) -> Proxy:
        """A proxy listening on ``127.0.0.1:<free port>`` in front of ``host:port``."""
        upstream = _upstream(host, port)
        if name is None:
            self._counter += 1
            name = f"proxy{self._counter}-{port}"
        mark = self._last_event_seq()
        try:
            proxy = self.client.create_proxy(name, upstream, listen="127.0.0.1:0")
        except Conflict:
            taken = ("; pg_proxy uses the name 'postgres'" if name == "postgres" else "")
            raise ConfigError(
                f"proxy_for({host!r}, {port!r}, name={name!r}): a proxy named {name!r} "
                f"already exists (made earlier in this test, or by toxiproxy.create_proxy()"
                f"{taken}); pass a different name= (or none: unnamed proxies get unique names)"
            ) from None
        proxy.events_since = mark
        self.proxies.append(proxy)
        return proxy

    def _last_event_seq(self) -> int:
        """The engine's latest event sequence number; 0 on a server without an event log."""
        if self._has_events:
            try:
                return self.client.last_event_seq()
            except ExtensionUnsupported:
                self._has_events = False
        return 0

    def add(self, proxy: Proxy) -> None:
        """Track a proxy created elsewhere so :meth:`close` deletes it too."""
        self.proxies.append(proxy)

    def close(self) -> None:
        """Delete every proxy made here (live connections close). Raises the first
        error other than "already gone" after trying them all."""
        errors: list[Exception] = []
        proxies, self.proxies = self.proxies, []
        for proxy in proxies:
            try:
                self.client.delete_proxy(proxy.name)
            except NotFound:
                pass
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def pg_proxy(self, database: Any) -> PgProxy:
        """A :class:`PgProxy` in front of ``database`` (a ``postgres_db`` object)."""
        proxy = self(database.host, database.port, name="postgres")
        server = database.server
        pg = PgProxy(
            name=proxy.name, listen=proxy.listen, upstream=proxy.upstream,
            enabled=proxy.enabled, toxics=proxy.toxics, client=proxy.client,
            events_since=proxy.events_since,
            dsn=server.dsn_for(database.dbname, host=proxy.host, port=proxy.port),
            direct_dsn=database.dsn, dbname=database.dbname, user=database.user,
        )
        self.proxies[-1] = pg
        return pg


@contextlib.contextmanager
def running_toxiproxy(settings: Settings) -> Iterator[ToxiproxyServer]:
    """Context manager form of :func:`start_toxiproxy` (for scripts and benchmarks)."""
    server = start_toxiproxy(settings)
    try:
        yield server
    finally:
        server.stop()
