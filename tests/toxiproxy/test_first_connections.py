"""``fail_first``: the first N new connections to a proxy fail, later ones pass (toxiproxy#404).

An extension of the built-in engine (``/x-resilience/proxies/{proxy}/fail_first``), exposed
as ``proxy.fail_first(count, mode=...)``; Toxiproxy's own endpoints never show it. Real
sockets to a real upstream (an echo server, and Postgres through ``pg_proxy``), with the
engine in a thread and in a child process. No sleeps: every wait is a blocking socket call
that the engine's RST, FIN or echo ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pytest_resilience import faults
from pytest_resilience.errors import ConfigError
from pytest_resilience.services import toxiproxy as service
from pytest_resilience.toxiproxy.client import (
    AsyncClient,
    Client,
    ExtensionUnsupported,
    FailFirst,
    NeedsBuiltinEngine,
    NotFound,
    Proxy,
)

_names = itertools.count(1)


def attempt(port: int, payload: bytes = b"ping") -> str:
    """One new connection through the proxy: ``"ok"`` (echoed), ``"reset"`` or ``"eof"``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = sock.recv(len(payload) - len(got))
                if not chunk:
                    return "eof"
                got += chunk
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    assert got == payload
    return "ok"


def closed_without_data(port: int) -> bool:
    """Connect and read before sending: True when the proxy closed with a FIN, no byte."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return sock.recv(16) == b""


# -------------------------------------------------------------------------- engines


@pytest.fixture(scope="module", params=["thread", "process"])
def engine(request: pytest.FixtureRequest) -> Iterator[service.ToxiproxyServer]:
    server = service.start_builtin(request.param)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(engine: service.ToxiproxyServer) -> Iterator[Client]:
    with engine.client(namespace=f"ff{os.getpid()}") as c:
        yield c


@pytest.fixture
def proxy(client: Client, echo_server: Any) -> Iterator[Proxy]:
    made = client.create_proxy(f"echo{next(_names)}", echo_server.address)
    try:
        yield made
    finally:
        with contextlib.suppress(NotFound):
            made.delete()


# --------------------------------------------------------------------------- behaviour


def test_first_connections_reset_then_pass(proxy: Proxy, echo_server: Any) -> None:
    armed = proxy.fail_first(2)
    assert isinstance(armed, FailFirst)
    assert (armed.armed.count, armed.armed.mode, armed.armed.failed) == (2, "reset", 0)
    assert [attempt(proxy.port) for _ in range(4)] == ["reset", "reset", "ok", "ok"]
    state = proxy.fail_first_state()
    assert (state.armed, state.count, state.failed, state.remaining) == (True, 2, 2, 0)
    # the failed connections never reached the upstream
    assert len(echo_server.conns) == 2


def test_close_mode_closes_without_a_byte(proxy: Proxy, echo_server: Any) -> None:
    proxy.fail_first(2, mode="close")
    assert closed_without_data(proxy.port)
    assert closed_without_data(proxy.port)
    assert attempt(proxy.port) == "ok"
    assert proxy.fail_first_state().failed == 2
    assert len(echo_server.conns) == 1


def test_count_is_per_arming_and_observable(proxy: Proxy) -> None:
    armed = proxy.fail_first(3)
    assert attempt(proxy.port) == "reset"
    assert armed.failed() == 1
    assert armed.state().remaining == 2
    proxy.fail_first(1)  # arming again starts a new count
    state = proxy.fail_first_state()
    assert (state.count, state.failed, state.remaining) == (1, 0, 1)
    assert [attempt(proxy.port) for _ in range(2)] == ["reset", "ok"]
    assert proxy.fail_first(0).state().remaining == 0  # 0: nothing fails
    assert attempt(proxy.port) == "ok"


def test_context_manager_disarms(proxy: Proxy) -> None:
    with proxy.fail_first(5) as armed:
        assert attempt(proxy.port) == "reset"
        assert armed.failed() == 1
    state = proxy.fail_first_state()
    assert (state.armed, state.failed, state.remaining) == (False, 0, 0)
    assert attempt(proxy.port) == "ok"


def test_disarm_returns_the_final_count_and_is_idempotent(proxy: Proxy) -> None:
    armed = proxy.fail_first(3, mode="close")
    assert closed_without_data(proxy.port)
    final = armed.disarm()
    assert final is not None
    assert (final.armed, final.count, final.mode, final.failed) == (False, 3, "close", 1)
    assert armed.disarm() is not None  # again: nothing armed, still fine
    armed.remove()
    proxy.delete()
    assert armed.disarm() is None  # the proxy is gone: ignored
    armed.remove()


def test_reset_disarms(engine: service.ToxiproxyServer, proxy: Proxy) -> None:
    proxy.fail_first(2)
    with engine.client() as plain:  # POST /reset: this module's own engine
        plain.reset()
    assert proxy.fail_first_state().armed is False
    assert attempt(proxy.port) == "ok"


def test_failed_connections_are_logged(proxy: Proxy) -> None:
    proxy.fail_first(1)
    assert [attempt(proxy.port) for _ in range(2)] == ["reset", "ok"]
    events = proxy.events()
    failed = [e for e in events if e.kind == "fail_first"]
    assert [(e.data["mode"], e.data["nth"], e.data["count"]) for e in failed] == [
        ("reset", 1, 1)]
    # it was an attempt that reached the network: accepted, then closed by the engine
    conn = failed[0].conn
    assert [e.kind for e in events if e.conn == conn] == ["accepted", "fail_first", "closed"]
    assert len([e for e in events if e.kind == "accepted"]) == 2


def test_async_client(engine: service.ToxiproxyServer, proxy: Proxy) -> None:
    async def main() -> None:
        async with AsyncClient(engine.url, namespace=proxy.client.namespace) as aclient:
            aproxy = await aclient.get_proxy(proxy.name)
            async with aproxy.fail_first(1) as armed:
                assert attempt(proxy.port) == "reset"
                assert await armed.failed() == 1
                assert attempt(proxy.port) == "ok"
            assert (await aproxy.fail_first_state()).armed is False
            plain = await aproxy.fail_first(1, mode="close")
            assert closed_without_data(proxy.port)
            final = await plain.disarm()
            assert final is not None
            assert final.failed == 1
            with pytest.raises(ConfigError, match="'count' must be an integer >= 0"):
                aproxy.fail_first(-2)  # raised at the call, before any await

    asyncio.run(main())


# ------------------------------------------------------------------------- Toxiproxy API


def test_toxiproxy_endpoints_do_not_show_it(engine: service.ToxiproxyServer,
                                            proxy: Proxy) -> None:
    proxy.fail_first(2)
    server_name = proxy.client.server_name(proxy.name)
    with httpx.Client(base_url=engine.url, timeout=10) as http:
        assert http.get(f"/proxies/{server_name}").json()["toxics"] == []
        assert http.get(f"/proxies/{server_name}/toxics").json() == []
        # as on toxiproxy-server: it is not a toxic type
        answer = http.post(f"/proxies/{server_name}/toxics",
                           json={"type": "fail_first", "attributes": {"count": 1}})
        assert (answer.status_code, answer.json()["error"]) == (400, "invalid toxic type")
    assert proxy.list_toxics() == []


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("count", "mode", "message"), [
    (-1, "reset", "fail_first: 'count' must be an integer >= 0, got -1"),
    (1.5, "reset", "fail_first: 'count' must be an integer >= 0, got 1.5"),
    (True, "reset", "fail_first: 'count' must be an integer >= 0, got True"),
    (1, "refuse", "fail_first: 'mode' must be one of reset, close, got 'refuse'"),
])
def test_bad_arguments_are_one_line(proxy: Proxy, count: Any, mode: Any,
                                    message: str) -> None:
    with pytest.raises(ConfigError) as info:
        proxy.fail_first(count, mode=mode)
    assert str(info.value) == message
    assert proxy.fail_first_state().armed is False


@pytest.mark.parametrize(("body", "message"), [
    ({"count": -1}, "fail_first fault: 'count' must be an integer >= 0, got -1"),
    ({"count": 1, "mode": "refuse"},
     "fail_first fault: 'mode' must be one of reset, close, got 'refuse'"),
    ({}, "fail_first fault: 'count' is required (an integer >= 0)"),
    ({"count": 1, "toxicity": 1}, "fail_first fault: unknown attribute 'toxicity' (valid "
     "attributes: count, mode)"),
    ([1], 'fail_first: the body must be a JSON object like {"count": 3, "mode": "reset"}, '
     "got array"),
])
def test_engine_answers_400_with_one_line(engine: service.ToxiproxyServer, proxy: Proxy,
                                          body: Any, message: str) -> None:
    path = f"/x-resilience/proxies/{proxy.client.server_name(proxy.name)}/fail_first"
    with httpx.Client(base_url=engine.url, timeout=10) as http:
        answer = http.post(path, json=body)
        missing = http.get("/x-resilience/proxies/nope/fail_first")
    assert answer.status_code == 400
    assert answer.json() == {"error": message, "status": 400}
    assert (missing.status_code, missing.json()["error"]) == (404, "proxy not found")


def test_add_toxic_points_to_the_method(proxy: Proxy) -> None:
    with pytest.raises(ConfigError, match=r"not a Toxiproxy toxic.*proxy\.fail_first\("):
        proxy.add_toxic("fail_first", {"count": 1})


def test_fault_vocabulary() -> None:
    fault = faults.get("fail_first")
    assert (fault.layer, fault.toxic) == ("network", False)
    assert fault.attribute_names == ("count", "mode")
    assert "fail_first" not in faults.toxic_types()
    assert faults.validate({"fault": "fail_first", "count": 2}) == {
        "fault": "fail_first", "count": 2}
    schema = faults.json_schema("fail_first")
    assert schema["properties"]["mode"]["enum"] == ["reset", "close"]
    assert schema["required"] == ["fault", "count"]


# ------------------------------------------------------------------------------ fixtures


def test_proxy_for_fixture(proxy_for: Any, echo_server: Any) -> None:
    proxy = proxy_for("127.0.0.1", echo_server.port)
    with proxy.fail_first(1):
        assert [attempt(proxy.port) for _ in range(2)] == ["reset", "ok"]
        assert proxy.fail_first_state().failed == 1


def test_pg_proxy_first_connects_fail(pg_proxy: Any) -> None:
    psycopg = pytest.importorskip("psycopg")
    with pg_proxy.fail_first(2):
        for _ in range(2):
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(pg_proxy.dsn, connect_timeout=5)
        with psycopg.connect(pg_proxy.dsn, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert pg_proxy.fail_first_state().failed == 2


# --------------------------------------------------------------------- real toxiproxy-server


@pytest.fixture(scope="module")
def real_server() -> Iterator[str]:
    url = os.environ.get("TOXIPROXY_URL", "").rstrip("/")
    if url:
        yield url
        return
    try:
        server = service.start_binary()
    except service.BinaryNotFound:
        pytest.skip("no toxiproxy-server on PATH and TOXIPROXY_URL is not set")
    try:
        yield server.url
    finally:
        server.stop()


def test_a_server_without_the_extension_gets_a_config_error() -> None:
    """What toxiproxy-server 2.12 answers to an unknown path (gorilla/mux's 404), always
    checked, with or without the binary."""

    def real(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/x-resilience/"):
            return httpx.Response(404, text="404 page not found\n")
        return httpx.Response(200, json={
            "name": "echo", "listen": "127.0.0.1:4000", "upstream": "127.0.0.1:5000",
            "enabled": True, "toxics": []})

    with Client("http://toxiproxy.invalid", transport=httpx.MockTransport(real)) as fake:
        proxy = fake.get_proxy("echo")
        with pytest.raises(ConfigError) as info:
            proxy.fail_first(2)
    assert isinstance(info.value, NeedsBuiltinEngine)
    text = str(info.value)
    assert "fail_first() (proxy 'echo') needs the built-in engine" in text
    assert "--resilience-toxiproxy=builtin" in text
    assert "\n" not in text


def test_real_server_needs_the_builtin_engine(real_server: str, echo_server: Any) -> None:
    with Client(real_server, namespace=f"ff{os.getpid()}") as real:
        with contextlib.suppress(NotFound):
            real.delete_proxy("echo")
        proxy = real.create_proxy("echo", echo_server.address)
        try:
            try:
                proxy.fail_first(1)
            except NeedsBuiltinEngine as exc:
                error: Exception = exc
            else:
                pytest.skip("this server is a pytest-resilience engine, not toxiproxy-server")
            assert isinstance(error, ConfigError)
            assert isinstance(error, ExtensionUnsupported)
            assert "needs the built-in engine" in str(error)
            assert "\n" not in str(error)
            with pytest.raises(NeedsBuiltinEngine, match="needs the built-in engine"):
                proxy.fail_first_state()
            assert attempt(proxy.port) == "ok"  # nothing was armed
        finally:
            proxy.delete()
