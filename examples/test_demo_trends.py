"""Demo (main job): the trends client's retries, breaker and fallback against a fake API.

Claims: "transient failures are retried 3 times, 50 ms then 100 ms apart"; "after 5
failed calls the breaker opens and calls fail fast for 60 s, then one trial decides";
"while the API is down, the last good answer is served".
"""

from __future__ import annotations

import pytest
from content_service.trends import TrendsClient


def test_transient_errors_are_retried(http_backend):
    http_backend.route("GET", "/trends", ["503 x2", '200 {"items": ["a"]}'])
    with TrendsClient(http_backend.url) as client:
        assert client.get_trends() == ["a"]
    gaps = http_backend.arrival_gaps("GET", "/trends")
    assert len(gaps) == 2
    # 50 ms then 100 ms, plus one request's round trip (never less than asked).
    assert 0.050 <= gaps[0] < 0.050 + 0.1
    assert 0.100 <= gaps[1] < 0.100 + 0.1


@pytest.mark.virtual_time
def test_breaker_opens_serves_fallback_and_recovers(http_backend, virtual_clock):
    http_backend.route(
        "GET", "/trends",
        ['200 {"items": ["cached"]}', "503 x15", '200 {"items": ["fresh"]}'],
    )
    with TrendsClient(http_backend.url) as client:
        assert client.get_trends() == ["cached"]
        for _ in range(5):  # 5 failed calls x 3 attempts each
            assert client.get_trends() == ["cached"]  # the fallback, nothing raises
        assert client.breaker.current_state == "open"
        reached = len(http_backend.requests)
        assert client.get_trends() == ["cached"]  # fails fast...
        assert len(http_backend.requests) == reached  # ...without reaching the API
        virtual_clock.advance(60)
        assert client.get_trends() == ["fresh"]  # the trial call succeeds
        assert client.breaker.current_state == "closed"
    assert len(http_backend.requests) == 1 + 15 + 1
