"""The respx twin: same vocabulary in-process, sleeps a virtual clock can patch."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from pytest_resilience.errors import ConfigError
from pytest_resilience.fixtures.http import HttpBackends
from pytest_resilience.services.http_backend import HttpBackend
from pytest_resilience.services.http_respx import HttpMock
from pytest_resilience.services.http_routes import RecordedRequest
from pytest_resilience.services.http_script import Response


def test_sequences_and_request_log(http_mock: HttpMock) -> None:
    http_mock.route("POST", "/orders/{id}", "503 x2", '201 {"id": 7}')
    with httpx.Client(base_url=http_mock.url) as client:
        statuses = [client.post("/orders/7?q=1", json={"i": i}).status_code for i in range(3)]
    assert statuses == [503, 503, 201]
    log = http_mock.requests_for("POST", "/orders/{id}")
    assert [r.json() for r in log] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert [r.step for r in log] == [1, 1, 2]
    assert log[0].query == "q=1"
    assert log[0].path_params == {"id": "7"}
    assert log[0].headers["content-type"] == "application/json"


def test_delays_go_through_time_sleep(http_mock: HttpMock,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    http_mock.route("GET", "/x", "200 delay=2s", "200 dribble=4/8s abcd")
    with httpx.Client(base_url=http_mock.url, timeout=10) as client:
        client.get("/x")
        assert client.get("/x").text == "abcd"
    assert slept == [2.0, 2.0, 2.0, 2.0, 2.0]


@pytest.mark.asyncio
async def test_delays_go_through_asyncio_sleep(http_mock: HttpMock,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    http_mock.route("GET", "/x", "200 delay=900ms", "hang")
    async with httpx.AsyncClient(base_url=http_mock.url, timeout=30) as client:
        await client.get("/x")
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/x")
    assert slept == [0.9, 30.0]  # hang waits for the client's read timeout


def test_real_delay_timing(http_mock: HttpMock) -> None:
    http_mock.route("GET", "/x", Response(204, delay=0.1))
    with httpx.Client(base_url=http_mock.url) as client:
        start = time.monotonic()
        client.get("/x")
    assert 0.1 <= time.monotonic() - start < 0.5


@pytest.mark.asyncio
async def test_async_callable_step(http_mock: HttpMock) -> None:
    async def answer(req: RecordedRequest) -> Response:
        await asyncio.sleep(0)
        return Response(200, json={"path": req.path})

    http_mock.route("GET", "/a/{x}", answer)
    async with httpx.AsyncClient() as client:
        r = await client.get(http_mock.url + "/a/b")
    assert r.json() == {"path": "/a/b"}


def test_async_callable_with_a_sync_client_is_reported(http_mock: HttpMock) -> None:
    async def answer(req: RecordedRequest) -> str:
        return "200"

    http_mock.route("GET", "/a", answer)
    with httpx.Client() as client:
        r = client.get(http_mock.url + "/a")
    assert r.status_code == 500
    assert "an async callable step cannot answer a sync httpx client" in r.text
    http_mock.errors.clear()


def test_other_hosts_pass_through_to_a_real_backend(http_backends: HttpBackends) -> None:
    mock = http_backends(mode="respx", name="payments")
    real: HttpBackend = http_backends()
    mock.route("GET", "/pay", "402")
    real.route("GET", "/real", "200 real")
    with httpx.Client() as client:
        assert client.get(mock.url + "/pay").status_code == 402
        assert client.get(real.url + "/real").text == "real"
    assert mock.url == "http://payments.http-mock.test"


def test_unscripted_request_answers_404(http_mock: HttpMock) -> None:
    http_mock.assert_all_expected = False
    with httpx.Client() as client:
        r = client.get(http_mock.url + "/nope")
    assert r.status_code == 404
    assert "pytest-resilience http_mock: no route for GET /nope" in r.text


def test_via_proxy_needs_a_socket(http_mock: HttpMock) -> None:
    with pytest.raises(ConfigError, match="via_proxy\\(\\) needs a real server"):
        http_mock.via_proxy()


def test_standalone_mock_cleans_up() -> None:
    with HttpMock(routes={"GET /x": "200 hi"}) as mock, httpx.Client() as client:
        assert client.get(mock.url + "/x").text == "hi"
    with httpx.Client() as client, pytest.raises(httpx.ConnectError):
        client.get(mock.url + "/x")  # respx stopped: the .test host does not resolve


def test_coexists_with_a_tests_own_respx_router(http_mock: HttpMock, http_backend: HttpBackend,
                                                respx_mock: Any) -> None:
    respx_mock.get("https://api.example.com/v1").respond(200, text="theirs")
    http_mock.route("GET", "/mine", "200 mine")
    http_backend.route("GET", "/real", "200 real")
    with httpx.Client() as client:
        assert client.get("https://api.example.com/v1").text == "theirs"
        assert client.get(http_mock.url + "/mine").text == "mine"
        assert client.get(http_backend.url + "/real").text == "real"


def test_other_hosts_are_not_mocked(http_mock: HttpMock) -> None:
    import respx

    with httpx.Client() as client, pytest.raises(respx.models.AllMockedAssertionError):
        client.get("https://elsewhere.example.com/")
