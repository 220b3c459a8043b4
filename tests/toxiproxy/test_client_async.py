"""The AsyncClient against the built-in engine: same API, awaited; faults are
awaitables and async context managers."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from pytest_resilience.errors import ConfigError
from pytest_resilience.toxiproxy.client import (
    AsyncClient,
    AsyncDown,
    AsyncProxy,
    AsyncToxic,
    Conflict,
    NotFound,
    ProxySpec,
    ToxiproxyUnreachable,
)

TIMEOUT = 5.0


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    from pytest_resilience.toxiproxy.server import start_thread

    with start_thread("127.0.0.1", 0, seed=99) as handle:
        yield handle.url


@pytest_asyncio.fixture
async def echo_port() -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest_asyncio.fixture
async def client(api_url: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(api_url, namespace="a" + uuid.uuid4().hex[:10]) as c:
        try:
            yield c
        finally:
            await c.delete_all()


async def round_trip(port: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        start = time.perf_counter()
        writer.write(b"ping")
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(4), TIMEOUT)
        assert got == b"ping"
        return time.perf_counter() - start
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@pytest.mark.asyncio
async def test_proxy_lifecycle(client: AsyncClient, echo_port: int) -> None:
    assert await client.version()
    proxy = await client.create_proxy("svc", f"127.0.0.1:{echo_port}")
    assert isinstance(proxy, AsyncProxy)
    assert proxy.port > 0
    assert list(await client.list_proxies()) == ["svc"]
    assert (await client.get_proxy("svc")).listen == proxy.listen
    await proxy.disable()
    assert proxy.enabled is False
    await proxy.enable()
    assert (await proxy.refresh()).enabled is True
    assert await round_trip(proxy.port) < TIMEOUT
    made = await client.populate([ProxySpec("other", f"127.0.0.1:{echo_port}")])
    assert [p.name for p in made] == ["other"]
    with pytest.raises(Conflict):
        await client.create_proxy("svc", "127.0.0.1:9")
    await proxy.delete()
    with pytest.raises(NotFound):
        await client.get_proxy("svc")


@pytest.mark.asyncio
async def test_toxic_crud(client: AsyncClient, echo_port: int) -> None:
    proxy = await client.create_proxy("svc", f"127.0.0.1:{echo_port}")
    toxic = await proxy.latency(50, jitter=5)
    assert isinstance(toxic, AsyncToxic)
    assert toxic.attributes == {"latency": 50, "jitter": 5}
    await toxic.update({"jitter": 0}, toxicity=0.5)
    assert (toxic.attributes, toxic.toxicity) == ({"latency": 50, "jitter": 0}, 0.5)
    got = await client.get_toxic("svc", toxic.name)
    assert got.toxicity == 0.5
    assert [t.name for t in await client.list_toxics("svc")] == [toxic.name]
    await client.delete_toxic("svc", toxic.name)
    await toxic.remove()  # idempotent
    assert await proxy.list_toxics() == []


@pytest.mark.asyncio
async def test_async_context_managers(client: AsyncClient, echo_port: int) -> None:
    proxy = await client.create_proxy("svc", f"127.0.0.1:{echo_port}")
    async with proxy.latency(120) as toxic:
        assert [t.name for t in await proxy.list_toxics()] == [toxic.name]
        slow = await round_trip(proxy.port)
    assert await proxy.list_toxics() == []
    assert 0.119 <= slow < 3.0, f"latency(120) round trip took {slow * 1000:.1f} ms"

    async with proxy.down() as down:
        assert isinstance(down, AsyncDown)
        with pytest.raises(ConnectionRefusedError):
            await round_trip(proxy.port)
    assert await round_trip(proxy.port) < TIMEOUT

    down = await proxy.down()
    assert (await proxy.refresh()).enabled is False
    await down.remove()
    assert (await proxy.refresh()).enabled is True

    await proxy.timeout(100)
    await proxy.bandwidth(10, stream="upstream")
    await client.reset()
    assert await proxy.list_toxics() == []


@pytest.mark.asyncio
async def test_validation_is_eager(client: AsyncClient) -> None:
    proxy = await client.create_proxy("svc", "127.0.0.1:9")
    with pytest.raises(ConfigError, match="'ms' must be >= 0"):
        proxy.latency(-10)  # raises at the call, before any await
    with pytest.raises(ConfigError, match="'stream' must be one of"):
        proxy.timeout(10, stream="both")
    with pytest.raises(ConfigError, match="'type' must be one of"):
        await proxy.add_toxic("nope")
    assert await proxy.list_toxics() == []


@pytest.mark.asyncio
async def test_unreachable() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with AsyncClient(url) as c:
            with pytest.raises(ToxiproxyUnreachable, match=url):
                await c.version()


@pytest.mark.asyncio
async def test_events(client: AsyncClient, echo_port: int) -> None:
    proxy = await client.create_proxy("svc", f"127.0.0.1:{echo_port}")
    await round_trip(proxy.port)
    kinds = [e.kind for e in await proxy.events()]
    assert "accepted" in kinds
    assert isinstance(await client.connections(), list)


@pytest.mark.asyncio
async def test_events_since_hides_an_earlier_proxy_of_the_same_name(
        client: AsyncClient, echo_port: int) -> None:
    old = await client.create_proxy("svc", f"127.0.0.1:{echo_port}")
    await round_trip(old.port)
    await old.delete()
    new = await client.create_proxy("svc", f"127.0.0.1:{echo_port}")
    assert len([e for e in await new.events() if e.kind == "accepted"]) == 1  # the old one
    new.events_since = await client.last_event_seq()
    assert [e for e in await new.events() if e.kind == "accepted"] == []
    await round_trip(new.port)
    mine = [e for e in await new.events() if e.kind == "accepted"]
    assert len(mine) == 1
    assert all(e.seq > new.events_since for e in await new.events(since=0))
    with pytest.raises(ConfigError, match="since"):
        await new.events(since="x")  # type: ignore[arg-type]
