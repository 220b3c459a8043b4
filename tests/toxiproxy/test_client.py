"""The typed Toxiproxy client against the built-in engine (and a real server when
``$TOXIPROXY_URL`` is set): every API method, error mapping, context managers."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_resilience.errors import ConfigError, ResilienceError, ServiceError
from pytest_resilience.toxiproxy.client import (
    TOXIC_TYPES,
    AlreadyExists,
    BadRequest,
    Client,
    Conflict,
    Down,
    ExtensionUnsupported,
    NotFound,
    Proxy,
    ProxySpec,
    ServerError,
    Toxic,
    ToxiproxyError,
    ToxiproxyUnreachable,
    _Call,
    validate_toxic,
)

TIMEOUT = 5.0


class EchoServer:
    """A TCP echo server on 127.0.0.1 (one thread per connection), closed cleanly."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
                thread = threading.Thread(target=self._echo, args=(conn,), daemon=True)
                self._threads.append(thread)
            thread.start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                    if not data:
                        return
                    conn.sendall(data)
                except OSError:
                    return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        self.sock.close()
        self._accept.join(TIMEOUT)
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(TIMEOUT)


def round_trip(port: int, payload: bytes = b"ping") -> float:
    """Seconds for one echo round trip through a fresh connection (after connecting)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        start = time.perf_counter()
        conn.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = conn.recv(65536)
            assert chunk, "connection closed before the echo came back"
            got += chunk
        return time.perf_counter() - start


def free_closed_port() -> socket.socket:
    """A bound but not listening socket: its port refuses connections while it is held."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


# Every test runs against the built-in engine, and also against a real
# toxiproxy-server when $TOXIPROXY_URL names one.
REAL_URL = os.environ.get("TOXIPROXY_URL", "").rstrip("/")
SERVERS = ["builtin", "real"] if REAL_URL else ["builtin"]


def test_real_server_given() -> None:
    if not REAL_URL:
        pytest.skip("set TOXIPROXY_URL to run the client tests against a real toxiproxy-server")


@pytest.fixture(scope="module", params=SERVERS)
def api_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "real":
        yield REAL_URL
        return
    from pytest_resilience.toxiproxy.server import start_thread

    with start_thread("127.0.0.1", 0, seed=1234, proxy_metrics=True) as handle:
        yield handle.url


@pytest.fixture
def is_builtin(api_url: str, request: pytest.FixtureRequest) -> bool:
    return bool(request.node.callspec.params["api_url"] == "builtin")


@pytest.fixture
def client(api_url: str) -> Iterator[Client]:
    # A namespace per test keeps tests apart even on a shared real server.
    with Client(api_url, namespace="t" + uuid.uuid4().hex[:10]) as c:
        try:
            yield c
        finally:
            c.delete_all()


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def proxy(client: Client, echo: EchoServer) -> Proxy:
    return client.create_proxy("echo", f"127.0.0.1:{echo.port}")


# --------------------------------------------------------------------------- proxies


def test_version(client: Client) -> None:
    version = client.version()
    assert isinstance(version, str)
    assert version


def test_create_get_list_delete_proxy(client: Client, echo: EchoServer) -> None:
    proxy = client.create_proxy("svc", f"127.0.0.1:{echo.port}")
    assert proxy.name == "svc"
    assert proxy.host == "127.0.0.1"
    assert proxy.port > 0
    assert proxy.listen == f"127.0.0.1:{proxy.port}"
    assert proxy.upstream == f"127.0.0.1:{echo.port}"
    assert proxy.enabled is True
    assert proxy.toxics == []
    assert client.server_name("svc") == f"{client.namespace}.svc"

    got = client.get_proxy("svc")
    assert (got.name, got.listen, got.upstream, got.enabled) == (
        "svc", proxy.listen, proxy.upstream, True)
    assert list(client.list_proxies()) == ["svc"]
    assert round_trip(proxy.port) < TIMEOUT

    client.delete_proxy("svc")
    assert client.list_proxies() == {}
    with pytest.raises(ConnectionRefusedError):
        round_trip(proxy.port)


def test_list_proxies_is_scoped_to_the_namespace(api_url: str, client: Client) -> None:
    client.create_proxy("mine", "127.0.0.1:9")
    with Client(api_url, namespace="other" + uuid.uuid4().hex[:8]) as other:
        try:
            other.create_proxy("mine", "127.0.0.1:9")  # same local name, no collision
            assert list(other.list_proxies()) == ["mine"]
            assert list(client.list_proxies()) == ["mine"]
            with Client(api_url) as plain:
                names = set(plain.list_proxies())
            assert {client.server_name("mine"), other.server_name("mine")} <= names
        finally:
            other.delete_all()


def test_update_proxy_disable_enable_keeps_port(proxy: Proxy) -> None:
    port = proxy.port
    proxy.disable()
    assert proxy.enabled is False
    with pytest.raises(ConnectionRefusedError):
        round_trip(port)
    proxy.enable()
    assert proxy.enabled is True
    assert proxy.port == port
    assert round_trip(port) < TIMEOUT


def test_update_proxy_upstream(client: Client, proxy: Proxy, echo: EchoServer) -> None:
    updated = client.update_proxy("echo", upstream=f"localhost:{echo.port}")
    assert updated.upstream == f"localhost:{echo.port}"
    assert proxy.refresh().upstream == f"localhost:{echo.port}"
    assert round_trip(proxy.port) < TIMEOUT


def test_populate(client: Client, echo: EchoServer) -> None:
    made = client.populate([
        ProxySpec("a", f"127.0.0.1:{echo.port}"),
        {"name": "b", "upstream": f"127.0.0.1:{echo.port}", "enabled": False},
    ])
    assert [p.name for p in made] == ["a", "b"]
    assert made[0].port > 0
    assert made[1].enabled is False
    assert sorted(client.list_proxies()) == ["a", "b"]
    assert client.populate([]) == []
    assert round_trip(made[0].port) < TIMEOUT


def test_proxy_errors_map_to_exceptions(client: Client, proxy: Proxy) -> None:
    with pytest.raises(Conflict) as conflict:
        client.create_proxy("echo", "127.0.0.1:9")
    assert conflict.value.status == 409
    assert conflict.value.message == "proxy already exists"
    assert isinstance(conflict.value, AlreadyExists)
    assert isinstance(conflict.value, ToxiproxyError)
    assert isinstance(conflict.value, ResilienceError)
    assert "POST" in str(conflict.value)
    assert "/proxies" in str(conflict.value)

    with pytest.raises(NotFound) as missing:
        client.get_proxy("nope")
    assert missing.value.status == 404
    assert missing.value.message == "proxy not found"
    with pytest.raises(NotFound):
        client.delete_proxy("nope")
    with pytest.raises(NotFound):
        client.update_proxy("nope", enabled=False)


def test_bind_failure_is_a_server_error(client: Client) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(ServerError) as err:
            client.create_proxy("clash", "127.0.0.1:9", listen=f"127.0.0.1:{port}")
    assert err.value.status == 500
    assert "address already in use" in err.value.message


def test_bad_request_from_the_server(client: Client, proxy: Proxy) -> None:
    # The client validates its own arguments, so send a raw body it would refuse.
    body = {"type": "latency", "attributes": {"latency": "slow"}}
    call = _Call("POST", f"/proxies/{client.server_name('echo')}/toxics", lambda r: None, body)
    with pytest.raises(BadRequest) as err:
        client._run(call)
    assert err.value.status == 400
    assert "bad request body" in err.value.message


def test_unreachable_server_names_the_url() -> None:
    with free_closed_port() as sock:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with Client(url) as c, pytest.raises(ToxiproxyUnreachable) as err:
            c.version()
    assert url in str(err.value)
    assert isinstance(err.value, ServiceError)
    assert isinstance(err.value, ToxiproxyError)


# --------------------------------------------------------------------------- toxics


def test_toxic_crud(client: Client, proxy: Proxy) -> None:
    toxic = client.add_toxic("echo", "latency", {"latency": 1000, "jitter": 10})
    assert isinstance(toxic, Toxic)
    assert (toxic.name, toxic.type, toxic.stream, toxic.toxicity) == (
        "latency_downstream", "latency", "downstream", 1.0)
    assert toxic.attributes == {"latency": 1000, "jitter": 10}
    assert toxic.proxy == "echo"

    up = proxy.bandwidth(50, stream="upstream", name="slow-up", toxicity=0.5)
    assert (up.name, up.stream, up.toxicity, up.attributes) == (
        "slow-up", "upstream", 0.5, {"rate": 50})

    # Upstream toxics are listed first, then downstream, each in insertion order.
    assert [t.name for t in client.list_toxics("echo")] == ["slow-up", "latency_downstream"]
    assert [t.name for t in proxy.refresh().toxics] == ["slow-up", "latency_downstream"]
    assert client.get_toxic("echo", "slow-up").attributes == {"rate": 50}

    updated = client.update_toxic("echo", "latency_downstream", attributes={"jitter": 0})
    assert updated.attributes == {"latency": 1000, "jitter": 0}  # merged
    assert updated.toxicity == 1.0
    up.update(toxicity=0.25)
    assert up.toxicity == 0.25
    assert up.attributes == {"rate": 50}

    proxy.latency(5, stream="upstream")  # "latency_upstream" is new: fine
    with pytest.raises(Conflict) as dup:
        proxy.latency(5, stream="upstream")
    assert dup.value.message == "toxic already exists"

    client.delete_toxic("echo", "latency_downstream")
    with pytest.raises(NotFound) as gone:
        client.get_toxic("echo", "latency_downstream")
    assert gone.value.message == "toxic not found"
    with pytest.raises(NotFound):
        client.delete_toxic("echo", "latency_downstream")
    with pytest.raises(NotFound):
        client.list_toxics("nope")


def test_every_fault_helper_sends_the_right_attributes(proxy: Proxy) -> None:
    made = [
        proxy.latency(10, jitter=2),
        proxy.bandwidth(100, stream="upstream"),
        proxy.slow_close(20, name="sc"),
        proxy.timeout(30, name="to"),
        proxy.reset_peer(40, name="rp", stream="upstream"),
        proxy.slicer(100, 10, 500, name="sl"),
        proxy.limit_data(1000, name="ld"),
        proxy.add_toxic("noop", name="nothing"),
    ]
    by_name = {t.name: t for t in proxy.list_toxics()}
    assert by_name["latency_downstream"].attributes == {"latency": 10, "jitter": 2}
    assert by_name["bandwidth_upstream"].attributes == {"rate": 100}
    assert by_name["sc"].attributes == {"delay": 20}
    assert by_name["to"].attributes == {"timeout": 30}
    assert by_name["rp"].attributes == {"timeout": 40}
    assert by_name["sl"].attributes == {"average_size": 100, "size_variation": 10, "delay": 500}
    assert by_name["ld"].attributes == {"bytes": 1000}
    assert by_name["nothing"].type == "noop"
    for toxic in made:
        toxic.remove()
        toxic.remove()  # idempotent
    assert proxy.list_toxics() == []


def test_toxic_context_manager_adds_and_removes(proxy: Proxy) -> None:
    baseline = round_trip(proxy.port)
    assert baseline < 0.1
    with proxy.latency(150) as toxic:
        assert [t.name for t in proxy.list_toxics()] == [toxic.name]
        slow = round_trip(proxy.port)
    assert proxy.list_toxics() == []
    assert 0.149 <= slow < 3.0, f"latency(150) round trip took {slow * 1000:.1f} ms"
    assert round_trip(proxy.port) < 0.1


def test_toxic_context_manager_removes_on_error(proxy: Proxy) -> None:
    seen: list[int] = []

    def fail_inside() -> None:
        with proxy.timeout(0):
            seen.append(len(proxy.list_toxics()))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert seen == [1]
    assert proxy.list_toxics() == []


def test_down_refuses_connections_and_comes_back(proxy: Proxy) -> None:
    with proxy.down() as down:
        assert isinstance(down, Down)
        with pytest.raises(ConnectionRefusedError):
            round_trip(proxy.port)
    assert proxy.refresh().enabled is True
    assert round_trip(proxy.port) < TIMEOUT

    cut = proxy.down()  # plain call: stays until removed
    assert proxy.refresh().enabled is False
    cut.remove()
    cut.remove()
    assert proxy.refresh().enabled is True


def test_timeout_toxic_stalls_then_closes(proxy: Proxy) -> None:
    with proxy.timeout(300), socket.create_connection(
        ("127.0.0.1", proxy.port), timeout=TIMEOUT
    ) as conn:
        start = time.perf_counter()
        conn.sendall(b"hello")
        assert conn.recv(100) == b""  # data dropped, then EOF
        elapsed = time.perf_counter() - start
    assert 0.29 <= elapsed < 3.0, f"timeout(300) closed after {elapsed * 1000:.1f} ms"


def test_reset_peer_resets_new_connections(proxy: Proxy) -> None:
    with proxy.reset_peer(0), socket.create_connection(
        ("127.0.0.1", proxy.port), timeout=TIMEOUT
    ) as conn:
        conn.sendall(b"hello")
        with pytest.raises(ConnectionResetError):
            conn.recv(100)


def test_reset_removes_toxics_and_reenables(client: Client, proxy: Proxy) -> None:
    proxy.latency(100)
    proxy.down()
    client.reset()  # namespaced: only this client's proxies
    fresh = client.get_proxy("echo")
    assert fresh.enabled is True
    assert fresh.toxics == []


def test_global_reset(api_url: str, proxy: Proxy, is_builtin: bool) -> None:
    if not is_builtin:
        pytest.skip("POST /reset would disturb other users of a shared real server")
    proxy.latency(100)
    proxy.disable()
    with Client(api_url) as plain:
        plain.reset()
    assert proxy.refresh().enabled is True
    assert proxy.toxics == []


def test_metrics(client: Client) -> None:
    try:
        text = client.metrics()
    except NotFound as exc:  # a real server without -proxy-metrics
        text = str(exc)
        assert "-proxy-metrics" in text
    assert isinstance(text, str)


def test_events_extension(client: Client, proxy: Proxy, is_builtin: bool) -> None:
    if not is_builtin:
        try:
            client.events()
        except ExtensionUnsupported as exc:
            assert "x-resilience" in str(exc)  # noqa: PT017 - skipped otherwise
            return
        pytest.skip("TOXIPROXY_URL names a pytest-resilience engine, not a toxiproxy-server")
    round_trip(proxy.port)
    events = proxy.events()
    assert events, "the built-in engine should log the connection"
    assert all(e.proxy == "echo" for e in events)
    assert "accepted" in [e.kind for e in events]
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs)
    # The engine may log the connection's close after we read: only newer events follow.
    assert all(e.seq > seqs[-1] for e in proxy.events(since=seqs[-1]))
    assert isinstance(client.connections(), list)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda p: p.latency(-1), "'ms' must be >= 0"),
        (lambda p: p.latency(10, jitter=-5), "'jitter' must be >= 0"),
        (lambda p: p.latency(1.5), "'ms' must be an integer"),
        (lambda p: p.latency(10, stream="sideways"), "'stream' must be one of"),
        (lambda p: p.latency(10, toxicity=1.5), "'toxicity' must be a number from 0 to 1"),
        (lambda p: p.bandwidth(-1), "'rate' must be >= 0"),
        (lambda p: p.slow_close(-1), "'delay' must be >= 0"),
        (lambda p: p.timeout(-1), "'ms' must be >= 0"),
        (lambda p: p.reset_peer(-1), "'ms' must be >= 0"),
        (lambda p: p.slicer(0), "'average_size' must be >= 1"),
        (lambda p: p.slicer(10, 20), "'size_variation' (20) must not exceed 'average_size'"),
        (lambda p: p.limit_data(-1), "'bytes' must be >= 0"),
        (lambda p: p.add_toxic("latencyy"), "'type' must be one of latency"),
        (lambda p: p.add_toxic("latency", {"delay": 1}), "unknown attribute 'delay'"),
        (lambda p: p.add_toxic("latency", name=""), "'name' must be a non-empty name"),
    ],
)
def test_bad_arguments_raise_config_error(call: object, needle: str, proxy: Proxy) -> None:
    with pytest.raises(ConfigError) as err:
        call(proxy)  # type: ignore[operator]
    assert needle in str(err.value)
    assert proxy.list_toxics() == []  # nothing was sent


def test_bad_proxy_arguments(client: Client) -> None:
    with pytest.raises(ConfigError, match="'upstream' must be 'host:port'"):
        client.create_proxy("x", "nohostport")
    with pytest.raises(ConfigError, match="'listen' must be 'host:port'"):
        client.create_proxy("x", "127.0.0.1:1", listen="127.0.0.1:99999")
    with pytest.raises(ConfigError, match="'name'"):
        client.create_proxy("a/b", "127.0.0.1:1")
    with pytest.raises(ConfigError, match="'url'"):
        Client("127.0.0.1:8474")
    with pytest.raises(ConfigError, match="update_toxic needs"):
        client.update_toxic("x", "y")


# --------------------------------------------------------------------------- wire format


def _mock(status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text=text, headers={"content-type": content_type})

    return Client("http://toxiproxy.invalid", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("status", "text", "cls", "message"),
    [
        (400, '{"error":"bad request body: EOF","status":400}\n', BadRequest,
         "bad request body: EOF"),
        (404, '{"error":"proxy not found","status":404}\n', NotFound, "proxy not found"),
        (404, "404 page not found\n", NotFound, "404 page not found"),
        (409, '{"error":"proxy already exists","status":409}\n', Conflict,
         "proxy already exists"),
        (500, '{"error":"listen tcp: address 99999: invalid port","status":500}\n', ServerError,
         "listen tcp: address 99999: invalid port"),
        (503, "", ServerError, "Service Unavailable"),
        (405, "", ToxiproxyError, "Method Not Allowed"),
        (403, "User agent not allowed\n", ToxiproxyError, "User agent not allowed"),
    ],
)
def test_error_mapping(status: int, text: str, cls: type[ToxiproxyError], message: str) -> None:
    with _mock(status, text) as c, pytest.raises(cls) as err:
        c.get_proxy("p")
    assert type(err.value) is cls
    assert err.value.status == status
    assert err.value.message == message
    assert f"-> {status}: {message}" in str(err.value)


def test_populate_error_body_is_json() -> None:
    body = json.dumps({"error": "missing required field: name at proxy 2", "status": 400,
                       "proxies": []})
    with _mock(400, body, "application/json") as c, pytest.raises(BadRequest) as err:
        c.populate([ProxySpec("a", "127.0.0.1:1")])
    assert err.value.message == "missing required field: name at proxy 2"


def test_old_plain_text_version() -> None:
    with _mock(200, "2.1.2\n") as c:
        assert c.version() == "2.1.2"


def test_sends_the_spec_wire_format() -> None:
    seen: list[tuple[str, str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.method, request.url.raw_path.decode(), body))
        assert not request.headers["user-agent"].startswith("Mozilla/")
        if request.url.path.endswith("/toxics"):
            return httpx.Response(200, json={"attributes": {"latency": 5, "jitter": 0},
                                             "name": "latency_downstream", "type": "latency",
                                             "stream": "downstream", "toxicity": 1})
        return httpx.Response(200, json={"name": "ns.p q", "listen": "127.0.0.1:1",
                                         "upstream": "h:2", "enabled": False, "Logger": {},
                                         "toxics": None})

    with Client("http://t.invalid", namespace="ns",
                transport=httpx.MockTransport(handler)) as c:
        proxy = c.update_proxy("p q", enabled=False)
        assert proxy.toxics == []
        proxy.latency(5)
    assert seen == [
        ("PATCH", "/proxies/ns.p%20q", {"enabled": False}),
        ("POST", "/proxies/ns.p%20q/toxics",
         {"type": "latency", "stream": "downstream", "toxicity": 1.0,
          "attributes": {"latency": 5, "jitter": 0}}),
    ]


def test_update_falls_back_to_post_on_old_servers() -> None:
    methods: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        methods.append(request.method)
        if request.method == "PATCH":
            return httpx.Response(405)
        return httpx.Response(200, json={"name": "p", "listen": "127.0.0.1:1",
                                         "upstream": "h:2", "enabled": False})

    with Client("http://t.invalid", transport=httpx.MockTransport(handler)) as c:
        assert c.update_proxy("p", enabled=False).enabled is False
    assert methods == ["PATCH", "POST"]


# --------------------------------------------------------------------------- properties


@given(
    type=st.sampled_from(sorted(TOXIC_TYPES)),
    values=st.lists(st.integers(min_value=-10**6, max_value=10**6), min_size=3, max_size=3),
    stream=st.sampled_from(["upstream", "downstream", "UPSTREAM", "up", ""]),
    toxicity=st.floats(min_value=-1, max_value=2, allow_nan=False),
)
def test_validation_accepts_exactly_the_safe_toxics(
    type: str, values: list[int], stream: str, toxicity: float
) -> None:
    attributes = dict(zip(TOXIC_TYPES[type], values, strict=False))
    slicer_ok = type != "slicer" or (
        attributes["average_size"] >= 1
        and attributes["size_variation"] <= attributes["average_size"]
    )
    safe = (
        all(v >= 0 for v in attributes.values())
        and stream.lower() in ("upstream", "downstream")
        and 0 <= toxicity <= 1
        and slicer_ok
    )
    if safe:
        body = validate_toxic(type, attributes, stream=stream, toxicity=toxicity)
        assert body == {"type": type, "stream": stream.lower(), "toxicity": toxicity,
                        "attributes": attributes}
    else:  # rejected, and the message quotes the argument it is about
        with pytest.raises(ConfigError, match="'"):
            validate_toxic(type, attributes, stream=stream, toxicity=toxicity)
