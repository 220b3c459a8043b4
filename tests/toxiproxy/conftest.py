"""Fixtures for the engine and conformance tests: engines, API clients, TCP peers."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from pytest_resilience.toxiproxy import EngineHandle, start_thread

_names = itertools.count(1)


# -- TCP peers ---------------------------------------------------------------------------
class TcpServer:
    """A threaded TCP server on 127.0.0.1 running ``handler(conn)`` per connection."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.handler = handler
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port: int = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.conns: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.accepted = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, name="test-tcp-accept")
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.conns.append(conn)
                thread = threading.Thread(target=self._run, args=(conn,), name="test-tcp-conn")
                self.threads.append(thread)
            thread.start()
            self.accepted.release()

    def _run(self, conn: socket.socket) -> None:
        try:
            with contextlib.suppress(OSError):
                self.handler(conn)
        finally:
            conn.close()  # returning from the handler closes the connection

    def close(self) -> None:
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._acceptor.join(5)
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(5)
        for conn in self.conns:
            conn.close()


def echo_handler(conn: socket.socket) -> None:
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


def sink_handler(conn: socket.socket) -> None:
    while conn.recv(1 << 20):
        pass


@pytest.fixture
def tcp_server() -> Iterator[Callable[[Callable[[socket.socket], None]], TcpServer]]:
    servers: list[TcpServer] = []

    def make(handler: Callable[[socket.socket], None]) -> TcpServer:
        server = TcpServer(handler)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def echo_server(tcp_server: Callable[[Callable[[socket.socket], None]], TcpServer]) -> TcpServer:
    return tcp_server(echo_handler)


@pytest.fixture
def sockets() -> Iterator[Callable[[str, float], socket.socket]]:
    """Connect to a ``listen`` string as Toxiproxy reports it; closed at teardown."""
    opened: list[socket.socket] = []

    def connect(listen: str, timeout: float = 10.0) -> socket.socket:
        port = int(listen.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        opened.append(sock)
        return sock

    yield connect
    for sock in opened:
        sock.close()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def recv_until_eof(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def round_trip(sock: socket.socket, payload: bytes = b"ping") -> float:
    start = time.perf_counter()
    sock.sendall(payload)
    got = recv_exactly(sock, len(payload))
    assert got == payload
    return time.perf_counter() - start


# -- engines and API clients -------------------------------------------------------------
@pytest.fixture(scope="session")
def builtin_engine() -> Iterator[EngineHandle]:
    # With /metrics, like a toxiproxy-server started with -proxy-metrics, so the metrics
    # conformance test runs; test_engine_metrics.py checks the default (404).
    handle = start_thread(seed=1234, proxy_metrics=True)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(params=["builtin", "real"])
def toxiproxy_api_url(request: pytest.FixtureRequest) -> str:
    """The API of the built-in engine, and of a real toxiproxy-server if TOXIPROXY_URL is set."""
    if request.param == "real":
        url = os.environ.get("TOXIPROXY_URL")
        if not url:
            pytest.skip("TOXIPROXY_URL is not set (no real toxiproxy-server to compare with)")
        return url.rstrip("/")
    engine: EngineHandle = request.getfixturevalue("builtin_engine")
    return engine.url


@pytest.fixture
def is_builtin(toxiproxy_api_url: str, request: pytest.FixtureRequest) -> bool:
    return "builtin" in request.node.callspec.id


class Api:
    """An httpx client on the API that deletes the proxies it created at teardown."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = httpx.Client(base_url=url, timeout=15.0)
        self.created: set[str] = set()

    def name(self, stem: str = "p") -> str:
        return f"t{os.getpid()}-{next(_names)}-{stem}"

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.request(method, path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        response = self.client.post(path, **kwargs)
        if path == "/proxies" and response.status_code == 201:
            self.created.add(response.json()["name"])
        if path == "/populate":
            for proxy in (response.json().get("proxies") or []):
                self.created.add(proxy["name"])
        return response

    def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.patch(path, **kwargs)

    def delete(self, path: str) -> httpx.Response:
        return self.client.delete(path)

    def proxy(self, upstream: str, *, listen: str = "127.0.0.1:0", **extra: Any) -> dict[str, Any]:
        body = {"name": self.name(), "upstream": upstream, "listen": listen, **extra}
        response = self.post("/proxies", json=body)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    def toxic(self, proxy: str, **body: Any) -> dict[str, Any]:
        response = self.post(f"/proxies/{proxy}/toxics", json=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def close(self) -> None:
        for name in self.created:
            self.client.delete(f"/proxies/{name}")
        self.client.close()


@pytest.fixture
def api(toxiproxy_api_url: str) -> Iterator[Api]:
    client = Api(toxiproxy_api_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def remote_listen_api() -> Iterator[Api]:
    """A built-in engine started with ``allow_remote_listen=True``."""
    with start_thread(seed=1234, allow_remote_listen=True) as handle:
        client = Api(handle.url)
        try:
            yield client
        finally:
            client.close()


@pytest.fixture
def builtin_api(builtin_engine: EngineHandle) -> Iterator[Api]:
    client = Api(builtin_engine.url)
    try:
        yield client
    finally:
        client.close()


def wait_event(
    api: Api, proxy: str, kind: str, since: int = 0, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Long-poll the built-in engine's event log until an event of ``kind`` arrives."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {kind!r} event for proxy {proxy} within {timeout} s"
        response = api.get(
            "/x-resilience/events",
            params={"proxy": proxy, "since": since, "kind": kind, "wait": min(remaining, 10)},
        )
        assert response.status_code == 200, response.text
        events: list[dict[str, Any]] = response.json()["events"]
        if events:
            return events


class Helpers:
    """Socket and API helpers, handed to tests through the ``h`` fixture."""

    recv_exactly = staticmethod(recv_exactly)
    recv_until_eof = staticmethod(recv_until_eof)
    round_trip = staticmethod(round_trip)
    wait_event = staticmethod(wait_event)

    @staticmethod
    def port_of(listen: str) -> int:
        return int(listen.rsplit(":", 1)[1])

    @staticmethod
    def connect(listen: str, timeout: float = 10.0) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", int(listen.rsplit(":", 1)[1])), timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


@pytest.fixture
def h() -> Helpers:
    return Helpers()
