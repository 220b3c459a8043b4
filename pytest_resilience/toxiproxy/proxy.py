"""Proxies: a listener, its live connections and its toxic chains.

Listen-address handling follows toxiproxy-server (Go ``net``): ``localhost:0``
resolves to ``127.0.0.1:<ephemeral>``; an empty host (``""``, ``":0"``,
``0.0.0.0``, ``::``) binds all interfaces dual-stack and is reported as
``[::]:<port>``; a disabled proxy keeps ``listen`` exactly as given.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from pytest_resilience.toxiproxy.events import EventLog
from pytest_resilience.toxiproxy.gojson import ApiError
from pytest_resilience.toxiproxy.toxics import ToxicConfig

if TYPE_CHECKING:
    from pytest_resilience.toxiproxy.link import Connection

__all__ = ["FailFirst", "Proxy", "ProxyCollection", "resolve_listen", "split_host_port"]

log = logging.getLogger("pytest_resilience.toxiproxy")

DIRECTIONS = ("upstream", "downstream")


class ListenError(Exception):
    """A Go-style ``listen``/``lookup`` error (answered as 500 with this text)."""


def split_host_port(address: str) -> tuple[str, str]:
    """Go's ``net.SplitHostPort``."""
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise ListenError(f"address {address}: missing ']' in address")
        host = address[1:end]
        rest = address[end + 1 :]
        if not rest.startswith(":"):
            if not rest:
                raise ListenError(f"address {address}: missing port in address")
            raise ListenError(f"address {address}: unexpected ']' in address")
        return host, rest[1:]
    colon = address.rfind(":")
    if colon < 0:
        raise ListenError(f"address {address}: missing port in address")
    host = address[:colon]
    if ":" in host:
        raise ListenError(f"address {address}: too many colons in address")
    return host, address[colon + 1 :]


def _parse_port(port: str) -> int:
    if port.isdigit() and port.isascii():
        value = int(port)
        if value > 65535:
            raise ListenError(f"address {port}: invalid port")
        return value
    if not port:
        return 0
    try:
        return socket.getservbyname(port, "tcp")
    except (OSError, UnicodeError, ValueError):
        raise ListenError(f"lookup tcp/{port}: unknown port") from None


def _format(host: str | None, port: int) -> str:
    if not host:
        return f":{port}"
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


async def resolve_listen(loop: asyncio.AbstractEventLoop, address: str) -> tuple[str, int]:
    """Resolve like ``net.ResolveTCPAddr``: ``("", port)`` means all interfaces."""
    if address == "":
        return "", 0
    host, port_text = split_host_port(address)
    port = _parse_port(port_text)
    if host == "":
        return "", port
    if host == "localhost":
        return "127.0.0.1", port
    try:
        ip = ipaddress.ip_address(host)
        return str(ip), port
    except ValueError:
        pass
    if "\x00" in host or len(host) > 253:
        raise ListenError(f"lookup {host}: no such host")
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        raise ListenError(f"lookup {host}: no such host") from None
    for family in (socket.AF_INET, socket.AF_INET6):
        for info in infos:
            if info[0] == family:
                return str(info[4][0]), port
    raise ListenError(f"lookup {host}: no such host")


REMOTE_LISTEN_HELP = (
    "the built-in engine listens only on loopback addresses (127.0.0.0/8, ::1, "
    "localhost), so nothing it proxies is reachable from other machines; start it with "
    "--allow-remote-listen (python -m pytest_resilience.toxiproxy) or "
    "allow_remote_listen=True to allow other addresses"
)


def refuse_remote(host: str, shown: str) -> None:
    """Raise a 400 :class:`ApiError` unless ``host`` (resolved) is a loopback address."""
    if host not in WILDCARDS:
        try:
            if ipaddress.ip_address(host.split("%", 1)[0]).is_loopback:
                return
        except ValueError:
            pass
    raise ApiError(400, f"listen address {shown} is not a loopback address: {REMOTE_LISTEN_HELP}")


async def check_listen(collection: ProxyCollection, listen: str) -> None:
    """Refuse a non-loopback ``listen`` before a running proxy is stopped for it; an
    address that does not resolve is left to the bind, which reports it as Toxiproxy does.
    A disabled proxy may keep any ``listen``: it is checked when it is enabled."""
    if collection.allow_remote_listen:
        return
    try:
        host, _ = await resolve_listen(collection.loop, listen)
    except ListenError:
        return
    refuse_remote(host, listen or ":0")


def resolved_string(host: str, port: int) -> str:
    return _format(host or None, port)


WILDCARDS = ("", "::", "0.0.0.0")


def _bind(host: str, port: int, shown: str) -> socket.socket:
    if host in WILDCARDS:
        host = ""
    if host:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
    else:
        family = socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and not host:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        reason = reason[:1].lower() + reason[1:]
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise ListenError(f"listen tcp {shown}: bind: {reason}") from None
        raise ListenError(f"listen tcp {shown}: {reason}") from None
    return sock


class FailFirst:
    """One arming of the ``fail_first`` extension: the next ``count`` new connections
    fail (``mode``: ``reset`` or ``close``); ``failed`` counts those failed so far."""

    __slots__ = ("count", "failed", "mode")

    def __init__(self, count: int, mode: str) -> None:
        self.count = count
        self.mode = mode
        self.failed = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "armed": True,
            "count": self.count,
            "mode": self.mode,
            "failed": self.failed,
            "remaining": self.count - self.failed,
        }


#: ``GET .../fail_first`` of a proxy with nothing armed.
FAIL_FIRST_DISARMED: dict[str, Any] = {
    "armed": False, "count": 0, "mode": None, "failed": 0, "remaining": 0,
}


class Proxy:
    def __init__(
        self, collection: ProxyCollection, name: str, listen: str, upstream: str
    ) -> None:
        self.collection = collection
        self.loop = collection.loop
        self.events: EventLog = collection.events
        self.seed = collection.seed
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.toxics: dict[str, list[ToxicConfig]] = {d: [] for d in DIRECTIONS}
        self.connections: dict[int, Connection] = {}
        self.server: asyncio.AbstractServer | None = None
        self._index = 0
        self._upstream_addr: tuple[str, tuple[str, int | None]] | None = None
        #: the armed ``fail_first`` extension fault, if any
        self.fail_first: FailFirst | None = None

    # -- helpers used by connections ----------------------------------------------
    def engine_next_conn_id(self) -> int:
        self.collection.conn_seq += 1
        return self.collection.conn_seq

    def next_index(self) -> int:
        index = self._index
        self._index += 1
        return index

    def upstream_addr(self) -> tuple[str, int | None]:
        cached = self._upstream_addr
        if cached is not None and cached[0] == self.upstream:
            return cached[1]
        try:
            host, port_text = split_host_port(self.upstream)
            port: int | None = _parse_port(port_text)
        except ListenError:
            host, port = self.upstream, None
        if host == "":
            host = "localhost"
        value = (host, port)
        self._upstream_addr = (self.upstream, value)
        return value

    def take_failure(self) -> tuple[str, int, int] | None:
        """For a new connection: ``(mode, nth, count)`` if ``fail_first`` fails it (and
        counts it), else ``None``."""
        armed = self.fail_first
        if armed is None or armed.failed >= armed.count:
            return None
        armed.failed += 1
        return armed.mode, armed.failed, armed.count

    def connection_opened(self, conn: Connection) -> None:
        self.connections[conn.id] = conn

    def connection_closed(self, conn: Connection) -> None:
        self.connections.pop(conn.id, None)
        self.collection.count_bytes(self, conn)

    # -- JSON -------------------------------------------------------------------
    def toxic_list(self) -> list[ToxicConfig]:
        return [*self.toxics["upstream"], *self.toxics["downstream"]]

    def find_toxic(self, name: str) -> ToxicConfig | None:
        for toxic in self.toxic_list():
            if toxic.name == name:
                return toxic
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "Logger": {},
            "toxics": [t.to_json() for t in self.toxic_list()],
        }

    # -- start / stop -------------------------------------------------------------
    async def start(self) -> None:
        """Bind and serve; raises ListenError. Already running is a no-op."""
        if self.enabled:
            return
        from pytest_resilience.toxiproxy.link import ClientSide

        try:
            host, port = await resolve_listen(self.loop, self.listen)
        except ListenError as exc:
            raise ListenError(f"listen tcp: {exc}") from None
        shown = resolved_string(host, port)
        if not self.collection.allow_remote_listen:
            refuse_remote(host, self.listen or shown)
        sock = _bind(host, port, shown)
        try:
            self.server = await self.loop.create_server(
                lambda: ClientSide(self), sock=sock, backlog=1024
            )
        except BaseException:
            sock.close()
            raise
        bound_port = sock.getsockname()[1]
        if host in WILDCARDS:
            self.listen = f"[::]:{bound_port}"
        else:
            self.listen = resolved_string(host, bound_port)
        self.enabled = True
        log.info(
            "Started proxy name=%s proxy=%s upstream=%s", self.name, self.listen, self.upstream
        )

    def stop(self, reason: str = "proxy stopped") -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        was_enabled = self.enabled
        self.enabled = False
        for conn in list(self.connections.values()):
            conn.close(reason, drop=True)
        if was_enabled:
            log.info(
                "Terminated proxy name=%s proxy=%s upstream=%s",
                self.name, self.listen, self.upstream,
            )

    # -- toxics -------------------------------------------------------------------
    def _live(self) -> list[Connection]:
        return [c for c in self.connections.values() if c.upstream is not None and not c.closed]

    def add_toxic(self, cfg: ToxicConfig) -> None:
        self.toxics[cfg.direction].append(cfg)
        for conn in self._live():
            (conn.up if cfg.direction == "upstream" else conn.down).add_toxic(cfg)

    def remove_toxic(self, name: str) -> bool:
        cfg = self.find_toxic(name)
        if cfg is None:
            return False
        self.toxics[cfg.direction] = [t for t in self.toxics[cfg.direction] if t is not cfg]
        for conn in self._live():
            (conn.up if cfg.direction == "upstream" else conn.down).remove_toxic(name)
        return True

    def update_toxic(self, old: ToxicConfig, new: ToxicConfig) -> None:
        chain = self.toxics[old.direction]
        chain[chain.index(old)] = new
        for conn in self._live():
            (conn.up if new.direction == "upstream" else conn.down).update_toxic(new)

    def reset_toxics(self) -> None:
        for direction in DIRECTIONS:
            while self.toxics[direction]:
                self.remove_toxic(self.toxics[direction][0].name)


class ProxyCollection:
    """All proxies of one engine, plus engine-wide state shared by them."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, events: EventLog, seed: int,
        *, allow_remote_listen: bool = False,
    ) -> None:
        self.loop = loop
        #: False: proxies may listen on loopback addresses only (400 otherwise).
        self.allow_remote_listen = allow_remote_listen
        self.events = events
        self.seed = seed
        self.proxies: dict[str, Proxy] = {}
        self.conn_seq = 0
        #: (proxy, direction, listener, upstream) -> [received, sent]
        self.metrics: dict[tuple[str, str, str, str], list[int]] = {}

    def count_bytes(self, proxy: Proxy, conn: Connection) -> None:
        for link in (conn.up, conn.down):
            key = (proxy.name, link.direction, proxy.listen, proxy.upstream)
            counters = self.metrics.setdefault(key, [0, 0])
            counters[0] += link.bytes_in
            counters[1] += link.bytes_out

    def get(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise ApiError(404, "proxy not found")
        return proxy

    def sorted(self) -> list[Proxy]:
        return [self.proxies[name] for name in sorted(self.proxies)]

    async def add(self, name: str, listen: str, upstream: str, enabled: bool) -> Proxy:
        if name in self.proxies:
            raise ApiError(409, "proxy already exists")
        proxy = Proxy(self, name, listen, upstream)
        if enabled:
            await proxy.start()
        self.proxies[name] = proxy
        return proxy

    async def add_or_replace(
        self, name: str, listen: str, upstream: str, enabled: bool
    ) -> Proxy:
        if enabled:  # refuse before the running proxy is stopped
            await check_listen(self, listen)
        existing = self.proxies.get(name)
        if existing is not None:
            try:
                host, port = await resolve_listen(self.loop, listen)
                wanted = resolved_string(host, port)
            except ListenError:
                wanted = listen
            if wanted == existing.listen and upstream == existing.upstream:
                return existing
            existing.stop("proxy replaced")
        proxy = Proxy(self, name, listen, upstream)
        if enabled:
            await proxy.start()
        self.proxies[name] = proxy
        return proxy

    def remove(self, name: str) -> None:
        proxy = self.get(name)
        proxy.stop("proxy deleted")
        del self.proxies[name]

    def stop_all(self) -> None:
        for proxy in list(self.proxies.values()):
            proxy.stop("engine stopped")
