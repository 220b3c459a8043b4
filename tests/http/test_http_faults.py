"""Each socket-level fault is seen by httpx, requests and aiohttp as the error it imitates,
and the respx twin raises exactly what httpx raised against the real server."""

from __future__ import annotations

import time

import aiohttp
import httpx
import pytest
import requests

from pytest_resilience.fixtures.http import HttpBackends
from pytest_resilience.services.http_backend import HttpBackend
from pytest_resilience.services.http_script import Fault, FaultKind

FAULTS: list[FaultKind] = ["empty", "malformed", "truncated", "garbage", "reset", "hang"]

HTTPX = {
    "empty": httpx.RemoteProtocolError,
    "malformed": httpx.RemoteProtocolError,
    "truncated": httpx.RemoteProtocolError,
    "garbage": httpx.RemoteProtocolError,
    "reset": httpx.ReadError,
    "hang": httpx.ReadTimeout,
}
REQUESTS = {
    "empty": requests.ConnectionError,
    "malformed": requests.exceptions.ChunkedEncodingError,
    "truncated": requests.exceptions.ChunkedEncodingError,  # IncompleteRead
    "garbage": requests.ConnectionError,
    "reset": requests.ConnectionError,
    "hang": requests.ReadTimeout,
}
AIOHTTP = {
    "empty": aiohttp.ServerDisconnectedError,
    # The bad chunk arrives with the head, so aiohttp's parser rejects the response.
    "malformed": aiohttp.ClientResponseError,
    "truncated": aiohttp.ClientPayloadError,
    "garbage": aiohttp.ClientResponseError,
    "reset": aiohttp.ClientOSError,
    "hang": aiohttp.SocketTimeoutError,
}
# aiohttp silently retries an idempotent request once when the connection drops
# (ServerDisconnectedError / ClientOSError): a retry test counting attempts must know.
AIOHTTP_ATTEMPTS_FOR_GET = {"empty": 2, "reset": 2}

READ_TIMEOUT = 0.3


@pytest.mark.parametrize("fault", FAULTS)
def test_httpx_sync(http_backend: HttpBackend, fault: str) -> None:
    http_backend.route("GET", "/f", "200 warm", fault, "200 recovered")
    with httpx.Client(base_url=http_backend.url, timeout=READ_TIMEOUT) as client:
        assert client.get("/f").status_code == 200  # a pooled keep-alive connection
        with pytest.raises(HTTPX[fault]):
            client.get("/f")
        assert client.get("/f").text == "recovered"  # a new connection works
    log = http_backend.requests
    assert [r.answer for r in log] == ["200 warm", fault, "200 recovered"]
    assert [r.connection for r in log] == [1, 1, 2]


@pytest.mark.parametrize("fault", FAULTS)
def test_requests(http_backend: HttpBackend, fault: str) -> None:
    http_backend.route("GET", "/f", fault)
    with requests.Session() as session, pytest.raises(REQUESTS[fault]) as info:
        session.get(http_backend.url + "/f", timeout=READ_TIMEOUT)
    if fault == "reset":
        assert "Connection reset by peer" in str(info.value)
    assert len(http_backend.requests) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("fault", FAULTS)
async def test_aiohttp(http_backend: HttpBackend, fault: FaultKind, method: str) -> None:
    http_backend.route(method, "/f", Fault(fault).forever())
    timeout = aiohttp.ClientTimeout(sock_read=READ_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with pytest.raises(AIOHTTP[fault]):
            async with session.request(method, http_backend.url + "/f") as resp:
                await resp.read()
    attempts = AIOHTTP_ATTEMPTS_FOR_GET.get(fault, 1) if method == "GET" else 1
    assert len(http_backend.requests) == attempts


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", FAULTS)
async def test_httpx_async(http_backend: HttpBackend, fault: str) -> None:
    http_backend.route("GET", "/f", fault)
    async with httpx.AsyncClient(base_url=http_backend.url, timeout=READ_TIMEOUT) as client:
        with pytest.raises(HTTPX[fault]):
            await client.get("/f")


def test_reset_is_a_real_rst(http_backend: HttpBackend) -> None:
    import socket

    http_backend.route("GET", "/f", "reset")
    with socket.create_connection((http_backend.host, http_backend.port), timeout=5) as sock:
        sock.sendall(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            sock.recv(1)


def test_hang_holds_until_the_client_gives_up(http_backend: HttpBackend) -> None:
    http_backend.route("GET", "/f", "hang")
    with httpx.Client(base_url=http_backend.url, timeout=READ_TIMEOUT) as client:
        start = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            client.get("/f")
    assert READ_TIMEOUT <= time.monotonic() - start < READ_TIMEOUT + 0.5


def _outcome(client: httpx.Client, url: str) -> tuple[str, str]:
    try:
        r = client.get(url)
    except httpx.HTTPError as exc:
        return type(exc).__name__, str(exc)
    return "response", f"{r.status_code} {r.text}"


@pytest.mark.parametrize("fault", [*FAULTS, "200 delay=1s", "200 dribble=2/2s ab"])
def test_respx_twin_raises_what_httpx_raises_against_the_server(
        http_backends: HttpBackends, fault: str) -> None:
    server = http_backends(seed=1)
    mock = http_backends(mode="respx", seed=1)
    for backend in (server, mock):
        backend.route("GET", "/f", fault, "200 after")
    with httpx.Client(timeout=READ_TIMEOUT) as client:
        real = [_outcome(client, server.url + "/f") for _ in range(2)]
        twin = [_outcome(client, mock.url + "/f") for _ in range(2)]
    assert twin == real
    assert real[1] == ("response", "200 after")
    assert [r.answer for r in mock.requests] == [r.answer for r in server.requests]


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", FAULTS)
async def test_respx_twin_async_matches_the_server(http_backends: HttpBackends,
                                                   fault: str) -> None:
    server = http_backends(seed=1)
    mock = http_backends.mock(seed=1)
    outcomes = []
    for backend in (server, mock):
        backend.route("GET", "/f", fault)
        async with httpx.AsyncClient(timeout=READ_TIMEOUT) as client:
            try:
                await client.get(backend.url + "/f")
            except httpx.HTTPError as exc:
                outcomes.append((type(exc).__name__, str(exc)))
    assert outcomes[0] == outcomes[1]
