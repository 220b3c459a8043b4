"""The fallback verdict against real breakers (pybreaker, aiobreaker) and a real HTTP
backend that goes down: correct code serves the last good answer; planted defects fail
with the defect named.

Test ids say which is which (``correct`` / ``defect-...``): benchmarks/verdict_repeats.py
counts false alarms on the former and misses on the latter.

Every breaker here has a recovery timeout of 60 s: it stays open for the whole outage,
so no test waits for time to pass (no sleeps, nothing timing-dependent).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pytest_resilience.errors import ConfigError
from pytest_resilience.verdicts.fallback import (
    FallbackCall,
    FallbackMismatch,
    FallbackRecorder,
    expect_fallback,
)

FAIL_MAX = 3
OUTAGE_CALLS = 8
GOOD = ['200 {"items": ["a"]}', '200 {"items": ["a", "b"]}']


class TrendsClient:
    """httpx + pybreaker + a fallback to the last good answer, with planted defects.

    ``no_fallback``: the error reaches the caller; ``stale_default``: serves ``[]``;
    ``first_answer``: keeps the first good answer, not the last; ``only_when_open``:
    falls back on the breaker's error only, so the first failures reach the caller.
    """

    def __init__(self, url: str, defect: str | None = None) -> None:
        import pybreaker

        self.pybreaker = pybreaker
        self.http = httpx.Client(base_url=url, timeout=5)
        self.breaker = pybreaker.CircuitBreaker(fail_max=FAIL_MAX, reset_timeout=60)
        self.defect = defect
        self.last_good: list[str] | None = None

    def close(self) -> None:
        self.http.close()

    def fetch(self) -> list[str]:
        response = self.http.get("/trends")
        response.raise_for_status()
        return [str(item) for item in response.json()["items"]]

    def get_trends(self) -> list[str]:
        caught: tuple[type[Exception], ...] = (self.pybreaker.CircuitBreakerError,
                                               httpx.HTTPError)
        if self.defect == "only_when_open":
            caught = (self.pybreaker.CircuitBreakerError,)
        try:
            items: list[str] = self.breaker.call(self.fetch)
        except caught:
            if self.defect == "no_fallback" or self.last_good is None:
                raise
            if self.defect == "stale_default":
                return []
            return self.last_good
        if self.defect != "first_answer" or self.last_good is None:
            self.last_good = items
        return items


def run_outage(http_backend: Any, defect: str | None) -> FallbackRecorder:
    """Two good answers, then the backend answers 503 to everything."""
    http_backend.route("GET", "/trends", GOOD)
    client = TrendsClient(http_backend.url, defect)
    try:
        recorder = FallbackRecorder(breaker_state=lambda: client.breaker.current_state,
                                    what="get_trends()")
        for _ in GOOD:
            recorder.call(client.get_trends)
        with recorder.outage():
            http_backend.rescript("GET /trends", "503 forever")
            for _ in range(OUTAGE_CALLS):
                recorder.call(client.get_trends)
    finally:
        client.close()
    return recorder


@pytest.mark.parametrize("while_", ["down", "open"], ids=["correct-down", "correct-open"])
def test_pybreaker_fallback_correct(http_backend: Any, while_: Any) -> None:
    recorder = run_outage(http_backend, None)
    verdict = expect_fallback(recorder, served="last_good", while_=while_)
    assert verdict.passed
    assert verdict.claim.startswith("get_trends() serves the last good answer (['a', 'b'])")
    judged = OUTAGE_CALLS if while_ == "down" else OUTAGE_CALLS - FAIL_MAX
    assert verdict.outcome.startswith(f"{judged} of {judged} calls")
    # the backend really was down: failures reached it until the breaker opened
    assert len(http_backend.requests_for("GET", "/trends")) == len(GOOD) + FAIL_MAX


@pytest.mark.parametrize(
    ("defect", "words"),
    [
        pytest.param("no_fallback", "the error reached the caller on 8 of 8 calls while the "
                     "dependency is down (first: call #3, HTTPStatusError",
                     id="defect-no_fallback"),
        pytest.param("stale_default", "served [] instead of the last good answer (['a', 'b']) "
                     "on 8 of 8", id="defect-stale_default"),
        pytest.param("first_answer", "served ['a'] instead of the last good answer "
                     "(['a', 'b']) on 8 of 8", id="defect-first_answer"),
        pytest.param("only_when_open", "the error reached the caller on 2 of 8 calls while "
                     "the dependency is down", id="defect-only_when_open"),
    ],
)
def test_pybreaker_fallback_defect(http_backend: Any, defect: str, words: str) -> None:
    recorder = run_outage(http_backend, defect)
    with pytest.raises(FallbackMismatch) as failed:
        expect_fallback(recorder, served="last_good")
    verdict = failed.value.verdict
    assert not verdict.passed
    assert words in verdict.outcome
    assert "<--" in str(failed.value)
    if defect == "first_answer":
        assert any("an older good answer, not the last one: a stale fallback" in n
                   for n in verdict.notes)
    if defect == "only_when_open":
        assert any(n.startswith("no fallback until the breaker opened") for n in verdict.notes)


def test_only_when_open_passes_the_weaker_claim_defect_only_when_open(
    http_backend: Any,
) -> None:
    """'Served while the breaker is open' holds for it; 'always' does not (above)."""
    recorder = run_outage(http_backend, "only_when_open")
    verdict = expect_fallback(recorder, while_="open")
    assert verdict.passed
    assert [row[-1] for row in verdict.rows[len(GOOD):len(GOOD) + 2]] == [
        "(not judged: breaker not open)"] * 2


# -- aiobreaker + httpx.AsyncClient ---------------------------------------------------------


class AsyncTrends:
    def __init__(self, url: str, defect: str | None) -> None:
        import aiobreaker

        self.aiobreaker = aiobreaker
        self.http = httpx.AsyncClient(base_url=url, timeout=5)
        self.breaker = aiobreaker.CircuitBreaker(
            fail_max=FAIL_MAX, timeout_duration=datetime.timedelta(seconds=60))
        self.defect = defect
        self.last_good: list[str] | None = None

    async def fetch(self) -> list[str]:
        response = await self.http.get("/trends")
        response.raise_for_status()
        return [str(item) for item in response.json()["items"]]

    async def get_trends(self) -> list[str]:
        try:
            items: list[str] = await self.breaker.call_async(self.fetch)
        except (self.aiobreaker.CircuitBreakerError, httpx.HTTPError):
            if self.last_good is None or self.defect == "no_fallback":
                raise
            return self.last_good
        self.last_good = items
        return items


@pytest.mark.asyncio
@pytest.mark.parametrize("defect", [None, "no_fallback"],
                         ids=["correct", "defect-no_fallback"])
async def test_aiobreaker_fallback(http_backend: Any, defect: str | None) -> None:
    http_backend.route("GET", "/trends", GOOD)
    client = AsyncTrends(http_backend.url, defect)
    recorder = FallbackRecorder(breaker_state=lambda: client.breaker.current_state)
    try:
        for _ in GOOD:
            await recorder.acall(client.get_trends)
        with recorder.outage():
            http_backend.rescript("GET /trends", "503 forever")
            for _ in range(OUTAGE_CALLS):
                await recorder.acall(client.get_trends)
    finally:
        await client.http.aclose()
    if defect is None:
        assert expect_fallback(recorder).passed
    else:
        with pytest.raises(FallbackMismatch, match="the error reached the caller on 8 of 8"):
            expect_fallback(recorder)


# -- never passes by default ----------------------------------------------------------------


def test_no_good_answer_before_the_outage_is_not_measured() -> None:
    recorder = FallbackRecorder()
    with recorder.outage():
        recorder.call(lambda: ["x"])
    with pytest.raises(FallbackMismatch) as failed:
        expect_fallback(recorder)
    assert "the last good answer: not measured" in failed.value.verdict.outcome


def test_no_call_during_the_outage_is_not_measured() -> None:
    recorder = FallbackRecorder()
    recorder.call(lambda: ["x"])
    with pytest.raises(FallbackMismatch, match="no call was made inside"):
        expect_fallback(recorder)


def test_a_breaker_never_open_is_not_measured_for_while_open() -> None:
    recorder = FallbackRecorder(breaker_state=lambda: "closed")
    recorder.call(lambda: ["x"])
    with recorder.outage():
        recorder.call(lambda: ["x"])
    with pytest.raises(FallbackMismatch, match=r"breaker was never\s+open"):
        expect_fallback(recorder, while_="open")


def test_while_open_needs_the_breaker_state() -> None:
    recorder = FallbackRecorder()
    recorder.call(lambda: 1)
    with pytest.raises(ConfigError, match="breaker_state="):
        expect_fallback(recorder, while_="open")


def test_a_coroutine_function_needs_acall() -> None:
    async def fetch() -> int:
        return 1

    with pytest.raises(ConfigError, match="acall"):
        FallbackRecorder().call(fetch)


def test_each_outage_has_its_own_last_good_answer() -> None:
    answers: list[Callable[[], Any]] = [lambda: 1, lambda: 1, lambda: 2, lambda: 2]
    recorder = FallbackRecorder(value=lambda v: v)
    recorder.call(answers[0])
    with recorder.outage():
        recorder.call(answers[1])
    recorder.call(answers[2])
    with recorder.outage():
        recorder.call(answers[3])
    verdict = expect_fallback(recorder)
    assert verdict.claim == "the call serves the last good answer while the dependency is down"


def test_served_as_a_value_or_a_predicate_from_recorded_calls() -> None:
    calls = [FallbackCall(1, "up", 0.0, value=[1]),
             FallbackCall(2, "down", 1.0, value={"items": [1], "stale": True})]

    def stale(value: Any) -> bool:
        return bool(value["stale"])

    assert expect_fallback(calls, served=stale).passed
    assert expect_fallback(calls, served={"items": [1], "stale": True}).passed
    with pytest.raises(FallbackMismatch, match="instead of \\{'stale': False\\}"):
        expect_fallback(calls, served={"stale": False})


def test_a_sync_call_returning_a_coroutine_needs_acall() -> None:
    async def fetch() -> int:
        return 1

    recorder = FallbackRecorder()
    with pytest.raises(ConfigError, match="returned an awaitable"):
        recorder.call(lambda: fetch())
    assert recorder.calls == []
