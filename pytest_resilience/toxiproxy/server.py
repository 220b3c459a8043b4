"""Running the built-in engine: in a background thread, or in a child process.

``start_thread`` runs the engine's own event loop (uvloop when importable) on a
background thread of the calling process (the services' one loop-thread helper):
ready in milliseconds, but a CPU-bound test thread delays it through the GIL.
``start_process`` runs ``python -m pytest_resilience.toxiproxy`` as a supervised
child (its own session, watched by the reaper) that reports its bound port on a
pipe (so port 0 works without races) and also exits by itself when the parent
goes away (a watchdog pipe reaching EOF, plus a ``getppid()`` check).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from pytest_resilience.errors import ConfigError, ServiceError
from pytest_resilience.services.loop_thread import LoopThread, new_event_loop
from pytest_resilience.services.peers import PeerPolicy
from pytest_resilience.services.supervise import spawn
from pytest_resilience.toxiproxy.api import TOXIPROXY_VERSION, Api
from pytest_resilience.toxiproxy.events import EventLog
from pytest_resilience.toxiproxy.http import HttpServer, Request
from pytest_resilience.toxiproxy.proxy import ProxyCollection

__all__ = ["Engine", "EngineHandle", "new_event_loop", "start_process", "start_thread"]

log = logging.getLogger("pytest_resilience.toxiproxy")

THREAD_NAME = "pytest-resilience-toxiproxy"


def read_config(config: str | Path | None) -> bytes | None:
    """Read and check a ``-config`` file (a JSON array, the ``/populate`` format)."""
    if config is None:
        return None
    path = Path(config)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        parsed = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    if parsed is None:  # toxiproxy-server loads no proxies from a null config
        return b"[]"
    if not isinstance(parsed, list):
        raise ConfigError(
            f"config file {path} must hold a JSON array of proxies "
            '([{"name": ..., "listen": ..., "upstream": ...}])'
        )
    return data


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind_api(host: str, port: int) -> socket.socket:
    family: int
    if host in ("", "0.0.0.0", "::"):
        family, address = (socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET), "::"
    else:
        address = "127.0.0.1" if host == "localhost" else host
        try:
            family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
        except (OSError, UnicodeError) as exc:
            raise ServiceError(f"cannot resolve API host {host!r}: {exc}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and address == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((address if family != socket.AF_INET or address != "::" else "0.0.0.0", port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ServiceError(
            f"cannot listen on {host}:{port} for the Toxiproxy API: {exc.strerror or exc}"
        ) from None
    return sock


class Engine:
    """The engine on one event loop: API server + proxies + event log."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, seed: int | None = None,
        *, allow_remote_listen: bool = False, proxy_metrics: bool = False,
    ) -> None:
        self.loop = loop
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
        self.events = EventLog()
        self.collection = ProxyCollection(
            loop, self.events, self.seed, allow_remote_listen=allow_remote_listen
        )
        self.api = Api(self.collection, self.events, proxy_metrics=proxy_metrics)
        self.http = HttpServer(loop, self.api.handle)
        self.host = ""
        self.port = 0
        self.stopped = False

    async def start(self, host: str, port: int, config: bytes | None = None) -> int:
        sock = _bind_api(host, port)
        # Other local accounts are refused (403); peers from other machines can only
        # arrive when the API was told to listen beyond loopback.
        self.http.authorize = PeerPolicy(
            "the Toxiproxy API of this pytest-resilience engine",
            remote_ok=not _is_loopback_host(host),
        ).refusal
        try:
            await self.http.start(sock)
        except BaseException:
            sock.close()
            raise
        self.host = host
        self.port = int(sock.getsockname()[1])
        log.info(
            "Starting Toxiproxy HTTP server host=%s port=%d version=%s seed=%d",
            host, self.port, TOXIPROXY_VERSION, self.seed,
        )
        if config is not None:
            await self.populate(config)
        return self.port

    async def populate(self, config: bytes) -> None:
        request = Request("POST", "/populate", "/populate", {}, "HTTP/1.1", {}, config)
        response = await self.api.populate(request)
        if response.status != 201:
            try:
                message = json.loads(response.body)["error"]
            except (ValueError, KeyError, TypeError):
                message = response.body.decode(errors="replace")
            raise ConfigError(f"cannot create the proxies of the config file: {message}")
        log.info("Populated proxies from the config file count=%d", len(self.collection.proxies))

    async def shutdown(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.http.close()
        self.collection.stop_all()
        # Let aborted transports run their connection_lost callbacks.
        for _ in range(5):
            await asyncio.sleep(0)


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def close_loop(loop: asyncio.AbstractEventLoop, engine: Engine | None) -> None:
    try:
        if engine is not None:
            loop.run_until_complete(engine.shutdown())
        _cancel_all(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    if host == "localhost":
        return "127.0.0.1"
    if ":" in host:
        return f"[{host}]"
    return host


class EngineHandle:
    """A running engine. ``stop()`` is idempotent and leaves nothing behind."""

    def __init__(
        self,
        host: str,
        port: int,
        stopper: Callable[[], None],
        *,
        mode: str,
        pid: int,
        seed: int,
    ) -> None:
        self.host = host
        self.port = port
        self.url = f"http://{_url_host(host)}:{port}"
        self.mode = mode
        self.pid = pid
        self.seed = seed
        self._stopper: Callable[[], None] | None = stopper
        self._lock = threading.Lock()

    def stop(self) -> None:
        with self._lock:
            stopper, self._stopper = self._stopper, None
        if stopper is not None:
            stopper()

    @property
    def running(self) -> bool:
        return self._stopper is not None

    def describe(self) -> str:
        return f"built-in Toxiproxy engine ({self.mode}) at {self.url}"

    def __enter__(self) -> EngineHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EngineHandle {self.mode} {self.url} pid={self.pid} {state}>"


def start_thread(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    seed: int | None = None,
    config: str | Path | None = None,
    allow_remote_listen: bool = False,
    proxy_metrics: bool = False,
) -> EngineHandle:
    """Run the engine on its own event loop in a background thread
    (:class:`~pytest_resilience.services.loop_thread.LoopThread`).

    Proxies may listen on loopback addresses only unless ``allow_remote_listen``;
    ``GET /metrics`` is served only with ``proxy_metrics`` (else 404, as
    toxiproxy-server without ``-proxy-metrics``)."""
    config_bytes = read_config(config)
    engines: list[Engine] = []

    async def setup(loop: asyncio.AbstractEventLoop) -> int:
        engine = Engine(
            loop, seed, allow_remote_listen=allow_remote_listen, proxy_metrics=proxy_metrics
        )
        engines.append(engine)
        return await engine.start(host, port, config_bytes)

    async def teardown() -> None:
        for engine in engines:
            await engine.shutdown()

    thread: LoopThread[int] = LoopThread(
        THREAD_NAME, loop_factory=new_event_loop, modules=["pytest_resilience.toxiproxy"]
    )
    try:
        bound = thread.start(setup, teardown, timeout=30.0)
    except (ServiceError, ConfigError):
        raise
    except Exception as error:
        raise ServiceError(f"the built-in Toxiproxy engine failed to start: {error}") from error
    assert bound is not None
    return EngineHandle(
        host, bound, thread.stop, mode="thread", pid=os.getpid(), seed=engines[0].seed
    )


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def start_process(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    seed: int | None = None,
    config: str | Path | None = None,
    startup_timeout: float = 10.0,
    allow_remote_listen: bool = False,
    proxy_metrics: bool = False,
    precise_timers: bool = True,
    busy_poll: bool = True,
) -> EngineHandle:
    """Run the engine as ``python -m pytest_resilience.toxiproxy`` in a child process.

    Proxies may listen on loopback addresses only unless ``allow_remote_listen``;
    ``GET /metrics`` is served only with ``proxy_metrics`` (``--proxy-metrics``).
    ``precise_timers=False`` arms the toxics' timers plainly, as the thread engine does
    (see :class:`~pytest_resilience.toxiproxy.toxics.TimerPrecision`); ``busy_poll=False``
    lets the loop sleep as soon as it is idle, with no polling window after each packet
    (see :class:`~pytest_resilience.toxiproxy.link.PacketPoll`)."""
    if config is not None:
        read_config(config)  # fail fast, in the caller, with a clear error
    ready_r, ready_w = os.pipe()
    watch_r, watch_w = os.pipe()
    cmd = [
        sys.executable, "-m", "pytest_resilience.toxiproxy",
        "--host", host, "--port", str(port),
        "--log-level", "warning",
        "--ready-fd", str(ready_w),
        "--parent-fd", str(watch_r),
        "--parent-pid", str(os.getpid()),
    ]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    if config is not None:
        cmd += ["--config", str(config)]
    if allow_remote_listen:
        cmd.append("--allow-remote-listen")
    if proxy_metrics:
        cmd.append("--proxy-metrics")
    if not precise_timers:
        cmd.append("--plain-timers")
    if not busy_poll:
        cmd.append("--no-busy-poll")
    env = dict(os.environ)
    root = _package_root()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    try:
        # A supervised child: its own session (the terminal's Ctrl-C reaches pytest only,
        # whose teardown then stops the engine) and the reaper's list (stopped if pytest
        # dies, even while a forked test keeps the watchdog pipe open).
        child = spawn(
            cmd, name="toxiproxy-engine", stop_signal=signal.SIGTERM, grace=5.0,
            pass_fds=(ready_w, watch_r), stdout=subprocess.DEVNULL, env=env,
        )
    except BaseException:
        for fd in (ready_r, ready_w, watch_r, watch_w):
            os.close(fd)
        raise
    proc = child.proc
    os.close(ready_w)
    os.close(watch_r)

    watch_open = [True]

    def kill() -> None:
        if watch_open:  # never close the number twice: it may be reused by then
            watch_open.clear()
            with contextlib.suppress(OSError):
                os.close(watch_w)
        child.stop()

    try:
        line = _read_line(ready_r, startup_timeout)
    except BaseException:
        kill()
        raise
    finally:
        os.close(ready_r)
    try:
        info = json.loads(line) if line else {}
    except ValueError:
        info = {}
    if not info.get("ok"):
        kill()
        if not line:
            code = proc.returncode
            raise ServiceError(
                f"the built-in Toxiproxy engine process did not start within "
                f"{startup_timeout} s (exit code {code}); see its stderr above"
            )
        error = info.get("error", line.strip())
        if info.get("kind") == "config":
            raise ConfigError(error)
        raise ServiceError(f"the built-in Toxiproxy engine process failed to start: {error}")
    return EngineHandle(
        host, int(info["port"]), kill, mode="process", pid=proc.pid, seed=int(info["seed"])
    )


def _read_line(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", errors="replace")
