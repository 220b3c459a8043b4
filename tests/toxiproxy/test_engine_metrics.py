"""``/metrics`` exists only when asked for, as toxiproxy-server's ``-proxy-metrics``."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from pytest_resilience.toxiproxy import EngineHandle, start_process, start_thread
from pytest_resilience.toxiproxy.client import Client, NotFound

STARTS: dict[str, Callable[..., EngineHandle]] = {
    "thread": start_thread, "process": start_process,
}


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_metrics_off_by_default(mode: str) -> None:
    with STARTS[mode]() as engine, httpx.Client(base_url=engine.url, timeout=10) as api:
        for method in ("GET", "POST", "DELETE"):
            response = api.request(method, "/metrics")
            assert response.status_code == 404
            assert response.content == b"404 page not found\n"
            assert "x-toxiproxy-request-id" not in response.headers  # mux's own answer
        assert api.get("/version").status_code == 200
        with Client(engine.url) as client, pytest.raises(NotFound, match="-proxy-metrics"):
            client.metrics()


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_proxy_metrics_serves_metrics_on_any_method(mode: str) -> None:
    with (
        STARTS[mode](proxy_metrics=True) as engine,
        httpx.Client(base_url=engine.url, timeout=10) as api,
    ):
        for method in ("GET", "POST", "DELETE"):
            response = api.request(method, "/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert "toxiproxy_proxy_received_bytes_total" in response.text
            assert response.headers["x-toxiproxy-request-id"]
        with Client(engine.url) as client:
            assert "toxiproxy_proxy_sent_bytes_total" in client.metrics()


def test_cli_help_describes_proxy_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_resilience.toxiproxy.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--proxy-metrics serve the proxies' byte counters on GET /metrics" in help_text
