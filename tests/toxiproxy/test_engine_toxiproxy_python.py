"""toxiproxy-python (unchanged, unmaintained since 2019) drives the built-in engine."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

toxiproxy = pytest.importorskip("toxiproxy")
from toxiproxy.api import APIConsumer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def server(builtin_engine: Any) -> Iterator[Any]:
    """A ``Toxiproxy()`` pointed at the engine; the class-level global is restored after."""
    saved = (APIConsumer.host, APIConsumer.port)
    client = toxiproxy.Toxiproxy()
    client.update_api_consumer(builtin_engine.host, builtin_engine.port)
    try:
        yield client
    finally:
        APIConsumer.host, APIConsumer.port = saved


def test_create_toxic_down_destroy(server: Any, echo_server: Any, h: Any) -> None:
    assert server.running()
    assert b'"version"' in server.version()
    name = f"tp-python-{time.monotonic_ns()}"
    proxy = server.create(upstream=echo_server.address, name=name)
    try:
        assert proxy.name == name
        assert proxy.enabled is True
        with h.connect(proxy.listen) as client:
            assert h.round_trip(client) < 1.0
        proxy.add_toxic(type="latency", attributes={"latency": 150})
        assert set(proxy.toxics()) == {"latency_downstream"}
        assert proxy.get_toxic("latency_downstream").attributes["latency"] == 150
        with h.connect(proxy.listen) as client:
            assert h.round_trip(client) >= 0.145
        proxy.destroy_toxic("latency_downstream")
        assert proxy.toxics() == {}
        with proxy.down(), pytest.raises(ConnectionRefusedError):
            h.connect(proxy.listen).close()
        with h.connect(proxy.listen) as client:  # enabled again, same port
            h.round_trip(client)
        with pytest.raises(toxiproxy.exceptions.ProxyExists):
            server.create(upstream=echo_server.address, name=name)
        with pytest.raises(toxiproxy.exceptions.InvalidToxic):
            proxy.add_toxic(type="bogus")
        assert name in server.proxies()
    finally:
        assert server.destroy(proxy)
    assert server.get_proxy(name) is None
    with pytest.raises(toxiproxy.exceptions.NotFound):
        proxy.destroy_toxic("latency_downstream")


def test_reset_and_populate(server: Any, echo_server: Any) -> None:
    name = f"tp-populate-{time.monotonic_ns()}"
    created = server.populate(
        [{"name": name, "upstream": echo_server.address, "listen": "127.0.0.1:0"}]
    )
    try:
        assert [p.name for p in created] == [name]
        created[0].add_toxic(type="timeout", attributes={"timeout": 0})
        created[0].disable()
        assert server.reset()
        proxy = server.get_proxy(name)
        assert proxy.enabled is True
        assert proxy.toxics() == {}
        port = int(proxy.listen.rsplit(":", 1)[1])
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    finally:
        server.destroy(server.get_proxy(name))
