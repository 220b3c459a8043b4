"""Claims about the trends API client and the DB retries: backoff with jitter, the
circuit breaker, the fallback. Each test calls one entry point of ``content_service.claims``.
"""

from __future__ import annotations

import pytest
from content_service import claims
from content_service.config import TESTING, RetryPolicy
from content_service.trends import Trends

from pytest_resilience import (
    expect_backoff,
    expect_transitions,
    from_requests,
    from_timestamps,
    from_waits,
)
from pytest_resilience.toxiproxy import ExtensionUnsupported
from pytest_resilience.verdicts import backoff as models

pytestmark = [pytest.mark.asyncio, pytest.mark.no_leaks]

# Measured delays (real clock): up to 2 ms early - a retry that did not wait is caught -
# and up to 500 ms late: a round trip plus a loaded 2-core CI machine waking the client
# late (one wake-up 113 ms past a 100 ms allowance was seen there). The curve itself, and
# its jitter, are checked exactly on the requested waits.
REAL = (0.002, 0.5)


def curve(policy: RetryPolicy) -> models.BackoffModel:
    """The claimed curve: retry n waits t/2 .. t, t = initial x 2^(n-1) (equal jitter)."""
    return models.exponential(policy.initial, policy.multiplier, cap=policy.cap, jitter="equal")


def assert_jittered(waits: list[float], policy: RetryPolicy, what: str) -> None:
    # expect_backoff cannot see missing jitter: a curve without it lies on the top edge
    # of every jitter band. So: the waits asked for must not all be the bare curve.
    bare = [policy.ceiling(n) for n in range(1, len(waits) + 1)]
    if waits == bare:
        shown = ", ".join(f"{w * 1000:g} ms" for w in bare)
        pytest.fail(f"{what} retries have no jitter: every call waits exactly {shown}, "
                    "so clients that failed together retry together", pytrace=False)


async def test_api_retries_back_off_exponentially_with_jitter(http_backend):
    ok = '200 {"items": ["a"]}'
    http_backend.route("GET", "/trends", ["503 x3", ok, "503 x3", ok])
    run = await claims.api_retry_backoff(trends_api_url=http_backend.url, calls=2)

    assert run.served == [["a"], ["a"]]
    policy = TESTING.api_retry
    arrivals = http_backend.requests_for("GET", "/trends")
    for call, waits in enumerate(run.waits):
        mine = arrivals[call * policy.attempts:(call + 1) * policy.attempts]
        expect_backoff(from_requests(mine), curve(policy), attempts=policy.attempts,
                       tolerance=REAL)
        expect_backoff(from_waits(waits), curve(policy), attempts=policy.attempts)
        assert_jittered(waits, policy, "API")


async def test_db_retries_back_off_through_connection_resets(pg_proxy):
    # events() of a fixture proxy starts where the engine's log stood when the proxy was
    # made (this test's events only); the mark below also skips the setup's connections
    try:
        earlier = pg_proxy.events()
    except ExtensionUnsupported:
        pytest.skip("needs the built-in engine's event log (--resilience-toxiproxy=builtin)")
    with pg_proxy.reset_peer():  # every connection to Postgres is reset at once
        run = await claims.db_retry_backoff(postgres_dsn=pg_proxy.dsn)

    (served,) = run.served
    assert isinstance(served, claims.Failed), f"expected the DB error after retries: {served}"
    policy = TESTING.db_retry
    # one accepted connection per attempt
    since = earlier[-1].seq if earlier else 0
    accepted = [e.time for e in pg_proxy.events(since=since) if e.kind == "accepted"]
    expect_backoff(from_timestamps(accepted), curve(policy), attempts=policy.attempts,
                   tolerance=REAL)
    expect_backoff(from_waits(run.waits[0]), curve(policy), attempts=policy.attempts)
    assert_jittered(run.waits[0], policy, "DB")


@pytest.mark.virtual_time
async def test_breaker_opens_fails_fast_and_recovers(http_backend):
    policy = TESTING.breaker
    down = policy.fail_max * TESTING.api_retry.attempts  # requests of fail_max failed calls
    http_backend.route("GET", "/trends", [f"reset x{down}", '200 x* {"items": ["fresh"]}'])
    run = await claims.breaker_opens_and_recovers(trends_api_url=http_backend.url)

    # on the virtual clock the 60 s recovery timeout is checked exactly, in milliseconds
    expect_transitions(run.observer, ["closed", "open", "half_open", "closed"],
                       opens_after=policy.fail_max, recovery_timeout=policy.reset_timeout)
    rejected = [o for o in run.outcomes if isinstance(o, claims.Failed)
                and o.error.startswith("BreakerOpen")]
    assert len(rejected) == 3, f"expected 3 fail-fast calls while open: {run.outcomes}"
    assert len(http_backend.requests) == down + 2, "calls reached the API while open"
    assert run.outcomes[-2:] == [["fresh"], ["fresh"]]


@pytest.mark.virtual_time
async def test_last_good_answer_is_served_while_the_api_is_down(http_backend):
    http_backend.route("GET", "/trends", ['200 {"items": ["a", "b"]}', "reset forever"])
    served = await claims.fallback_while_api_down(trends_api_url=http_backend.url,
                                                  calls=8)

    good = Trends(["a", "b"], stale=False)
    expected = [good] + [Trends(good.items, stale=True)] * 7
    wrong = [(n + 1, s) for n, (s, e) in enumerate(zip(served, expected, strict=True)) if s != e]
    assert not wrong, (
        "the last good answer was not served while the trends API was down: "
        + "; ".join(f"call {n} got {s}" for n, s in wrong[:3])
    )
