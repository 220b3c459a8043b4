"""``backend.via_proxy()``: a Toxiproxy proxy in front of the backend, TCP and HTTP faults
combined."""

from __future__ import annotations

import time

import httpx
import pytest

from pytest_resilience.services.http_backend import HttpBackend

pytestmark = pytest.mark.timeout(120)


def test_requests_cross_the_proxy(http_backend: HttpBackend) -> None:
    http_backend.route("GET", "/x", "503", "200 through")
    via = http_backend.via_proxy()
    url, proxy = via
    assert url == via.url == f"http://127.0.0.1:{proxy.port}"
    assert proxy.port != http_backend.port
    with httpx.Client(base_url=url) as client:
        assert client.get("/x").status_code == 503
        assert client.get("/x").text == "through"
    assert [r.answer for r in http_backend.requests] == ["503", "200 through"]


def test_proxy_latency_adds_to_the_backend_delay(http_backend: HttpBackend) -> None:
    http_backend.route("GET", "/x", "200 x2 delay=100ms")
    via = http_backend.via_proxy(name="slow-backend")
    with httpx.Client(base_url=via.url) as client:
        client.get("/x")  # warm the connection through the proxy
        with via.latency(150):  # the proxy's fault helpers are reachable on `via`
            start = time.monotonic()
            client.get("/x")
            elapsed = time.monotonic() - start
    assert 0.25 <= elapsed < 0.25 + 0.5


def test_proxy_down_then_backend_fault(http_backend: HttpBackend) -> None:
    http_backend.route("GET", "/x", "reset", "200 back")
    url, proxy = http_backend.via_proxy()
    with httpx.Client(base_url=url, timeout=5) as client:
        with proxy.down(), pytest.raises(httpx.ConnectError):
            client.get("/x")
        assert http_backend.requests == []  # never reached the backend
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            client.get("/x")  # the backend's RST, relayed by the proxy
        assert client.get("/x").text == "back"
