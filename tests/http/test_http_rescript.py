"""``rescript``: a route's answers changed mid-test and put back, also when windows of
re-scripts overlap and end in any order (the scenario timeline's HTTP faults)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from pytest_resilience.errors import ConfigError


def statuses(backend: Any, n: int) -> list[int]:
    with httpx.Client(base_url=backend.url, timeout=5) as client:
        return [client.get("/x").status_code for _ in range(n)]


def test_rescript_and_restore_keeps_the_position(http_backend: Any) -> None:
    http_backend.route("GET", "/x", ["200 x2", "201 forever"])
    assert statuses(http_backend, 1) == [200]
    restore = http_backend.rescript("GET /x", ["503 x2", "429 forever"])
    assert statuses(http_backend, 3) == [503, 503, 429]
    restore()
    assert statuses(http_backend, 2) == [200, 201]  # where the script was


@pytest.mark.parametrize("order", ["lifo", "fifo"])
def test_overlapping_rescripts_end_in_any_order(http_backend: Any, order: str) -> None:
    http_backend.route("GET", "/x", "200 forever")
    first = http_backend.rescript(None, ["503 forever"])
    second = http_backend.rescript(None, ["429 forever"])
    assert statuses(http_backend, 1) == [429]
    if order == "lifo":
        second()
        assert statuses(http_backend, 1) == [503]
        first()
    else:
        first()  # the window below ends first: the one on top still answers
        assert statuses(http_backend, 1) == [429]
        second()
    assert statuses(http_backend, 1) == [200]


def test_reset_starts_the_scripts_over_and_forgets_the_log(http_backend: Any) -> None:
    http_backend.assert_all_used = False  # reset() starts the counts over too
    http_backend.route("GET", "/x", ["500", "200 forever"])
    assert statuses(http_backend, 2) == [500, 200]
    http_backend.reset()
    assert http_backend.requests == []
    assert statuses(http_backend, 1) == [500]


def test_rescript_of_a_route_that_is_not_scripted_names_the_routes(http_backend: Any) -> None:
    http_backend.assert_all_used = False
    http_backend.route("GET", "/x", "200 forever")
    with pytest.raises(ConfigError,
                       match=r"no route 'GET /y' on this backend \(scripted: GET /x\)"):
        http_backend.rescript("GET /y", ["503"])
