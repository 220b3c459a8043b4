"""Demo (main job): the trends client's retries, breaker and fallback against a fake API.

Claims: "transient failures are retried 3 times, 50 ms then 100 ms apart"; "after 5
failed calls the breaker opens and calls fail fast for 60 s, then one trial decides";
"while the API is down, the last good answer is served"; "sessions are closed".
"""

from __future__ import annotations

import pytest
from content_service.trends import BREAKER_RESET_TIMEOUT, RETRY_ATTEMPTS, TrendsClient

from pytest_resilience import expect_backoff, expect_transitions, from_requests, observe_pybreaker
from pytest_resilience.verdicts import backoff as models

pytestmark = pytest.mark.no_leaks


def test_transient_errors_are_retried(http_backend):
    http_backend.route("GET", "/trends", ["503 x2", '200 {"items": ["a"]}'])
    with TrendsClient(http_backend.url) as client:
        assert client.get_trends() == ["a"]
    # 50 ms then 100 ms between arrivals at the API (plus one round trip, and some
    # scheduling slack for a busy CI machine: the late edge is widened explicitly).
    expect_backoff(
        from_requests(http_backend.requests_for("GET", "/trends")),
        models.tenacity_wait_exponential(multiplier=0.05),
        attempts=RETRY_ATTEMPTS,
        tolerance=(0.002, 0.1),
    )


@pytest.mark.virtual_time
def test_breaker_opens_serves_fallback_and_recovers(http_backend, virtual_clock):
    http_backend.route(
        "GET", "/trends",
        ['200 {"items": ["cached"]}', "503 x15", '200 {"items": ["fresh"]}'],
    )
    with TrendsClient(http_backend.url) as client:
        observer = observe_pybreaker(client.breaker)
        assert client.get_trends() == ["cached"]
        for _ in range(5):  # 5 failed calls x 3 attempts each
            assert client.get_trends() == ["cached"]  # the fallback, nothing raises
        assert client.breaker.current_state == "open"
        reached = len(http_backend.requests)
        assert client.get_trends() == ["cached"]  # fails fast...
        assert len(http_backend.requests) == reached  # ...without reaching the API
        virtual_clock.advance(BREAKER_RESET_TIMEOUT)
        assert client.get_trends() == ["fresh"]  # the trial call succeeds
    # On the virtual clock the recovery timeout is checked exactly.
    expect_transitions(
        observer, ["closed", "open", "half_open", "closed"],
        recovery_timeout=BREAKER_RESET_TIMEOUT,
    )
    assert len(http_backend.requests) == 1 + 15 + 1
