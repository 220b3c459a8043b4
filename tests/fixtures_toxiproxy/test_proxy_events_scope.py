"""A test's proxies see only their own events, and ``from_toxiproxy_events`` takes what
``Proxy.events()`` returns.

Proxy names repeat from test to test (``pg_proxy`` is always ``postgres``) while the
engine's event log keeps everything, so ``events()`` starts at the sequence number the
engine had reached when the proxy was made.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from pytest_resilience import from_toxiproxy_events
from pytest_resilience.services.toxiproxy import ProxyFactory
from pytest_resilience.toxiproxy.client import Client, Event, ExtensionUnsupported

RUN_TIMEOUT = 180

OPENS = '''
def test_opens_three_connections(pg_proxy, http_backend):
    import psycopg, httpx
    for _ in range(3):
        with psycopg.connect(pg_proxy.dsn, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    assert from_toxiproxy_events(pg_proxy.events()).count == 3
    http_backend.route("GET", "/x", "200 x3 ok")
    url, proxy = http_backend.via_proxy(name="api")
    for _ in range(3):
        with httpx.Client(base_url=url) as client:
            assert client.get("/x").text == "ok"
    assert from_toxiproxy_events(proxy.events()).count == 3
'''

COUNTS = '''
def test_counts_only_its_own_attempts(pg_proxy, http_backend, toxiproxy):
    import psycopg, httpx
    for _ in range(2):
        with psycopg.connect(pg_proxy.dsn, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    assert from_toxiproxy_events(pg_proxy.events()).count == 2
    assert from_toxiproxy_events(pg_proxy.events(since=0)).count == 2  # never before creation
    assert from_toxiproxy_events(pg_proxy.events(), proxy="postgres").count == 2
    history = toxiproxy.events(proxy="postgres")  # the name's whole history
    assert from_toxiproxy_events(history).count in (2, 5)
    http_backend.route("GET", "/x", "200 ok")
    via = http_backend.via_proxy(name="api")
    with httpx.Client(base_url=via.url) as client:
        assert client.get("/x").text == "ok"
    assert from_toxiproxy_events(via.events()).count == 1
    assert from_toxiproxy_events(via.proxy.events()).count == 1
'''


def _inner(pytester: pytest.Pytester, *tests: str) -> None:
    pytest.importorskip("psycopg")
    pytest.importorskip("httpx")
    pytester.makepyfile(
        test_scope="from pytest_resilience import from_toxiproxy_events\n" + "\n".join(tests)
    )


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "pytest_resilience", "-p", "no:cacheprovider", *args, timeout=RUN_TIMEOUT
    )


@pytest.mark.parametrize("order", ["opens_first", "counts_first"])
def test_earlier_tests_events_do_not_leak(pytester: pytest.Pytester, order: str) -> None:
    tests = (OPENS, COUNTS) if order == "opens_first" else (COUNTS, OPENS)
    _inner(pytester, *tests)
    result = _run(pytester, "-p", "no:randomly", "-v")
    result.assert_outcomes(passed=2)
    first = "opens_three" if order == "opens_first" else "counts_only"
    result.stdout.fnmatch_lines([f"*::test_{first}* PASSED*"])


@pytest.mark.parametrize("seed", [1, 2])
def test_earlier_tests_events_do_not_leak_in_random_order(
    pytester: pytest.Pytester, seed: int
) -> None:
    _inner(pytester, OPENS, COUNTS)
    result = _run(pytester, "-p", "randomly", f"--randomly-seed={seed}")
    result.assert_outcomes(passed=2)


# --------------------------------------------------------------------------- in-process


@pytest.fixture(scope="module")
def engine() -> Iterator[Client]:
    from pytest_resilience.toxiproxy.server import start_thread

    with start_thread("127.0.0.1", 0, seed=3) as handle, Client(handle.url) as client:
        yield client


def _connect(port: int) -> None:
    socket.create_connection(("127.0.0.1", port), timeout=5).close()


def _accepted(client: Client, name: str, since: int, count: int) -> list[Event]:
    """Wait (bounded) until ``count`` accepted events of ``name`` after ``since`` exist:
    long-polls the engine's event log (``wait=``), no sleeping."""
    import time

    import httpx

    deadline = time.monotonic() + 5
    cursor, seen = since, 0
    while seen < count and (remaining := deadline - time.monotonic()) > 0:
        answer = httpx.get(
            f"{client.url}/x-resilience/events",
            params={"proxy": name, "since": cursor, "kind": "accepted",
                    "wait": min(remaining, 5)},
            timeout=10,
        ).json()["events"]
        if answer:
            seen += len(answer)
            cursor = answer[-1]["seq"]
    return [e for e in client.events(proxy=name, since=since) if e.kind == "accepted"]


def test_a_factory_proxy_starts_at_its_creation(engine: Client) -> None:
    with socket.create_server(("127.0.0.1", 0)) as upstream:
        port = upstream.getsockname()[1]
        first = ProxyFactory(engine)
        old = first("127.0.0.1", port, name="svc")
        _connect(old.port)
        assert len(_accepted(engine, "svc", 0, 1)) == 1
        first.close()

        second = ProxyFactory(engine)
        try:
            new = second("127.0.0.1", port, name="svc")
            assert new.events_since == engine.last_event_seq()
            assert new.events() == []
            assert new.events(since=0) == []  # an explicit since never reaches back further
            _connect(new.port)
            mine = _accepted(engine, "svc", new.events_since, 1)
            assert [e.seq for e in mine] == [
                e.seq for e in new.events() if e.kind == "accepted"
            ]
            assert from_toxiproxy_events(new.events()).count == 1
            assert from_toxiproxy_events(engine.events(proxy="svc")).count == 2
            assert new.events(since=mine[0].seq) == [
                e for e in new.events() if e.seq > mine[0].seq
            ]
        finally:
            second.close()


def test_a_proxy_from_the_client_keeps_the_whole_history(engine: Client) -> None:
    proxy = engine.create_proxy("plain", "127.0.0.1:9")
    try:
        assert proxy.events_since == 0
        with pytest.raises(Exception, match="'since' must be >= 0"):
            proxy.events(since=-1)
    finally:
        proxy.delete()


def test_a_server_without_an_event_log_marks_nothing(
    engine: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def unsupported() -> int:
        calls.append(1)
        raise ExtensionUnsupported("no event log", status=404, method="GET", url="/x")

    monkeypatch.setattr(engine, "last_event_seq", unsupported)
    factory = ProxyFactory(engine)
    try:
        assert factory("127.0.0.1", 9).events_since == 0
        assert factory("127.0.0.1", 9).events_since == 0
    finally:
        factory.close()
    assert calls == [1]  # asked once per factory


# --------------------------------------------------------------------------- from_toxiproxy_events


def test_from_toxiproxy_events_takes_event_objects_and_dicts() -> None:
    raw: list[dict[str, Any]] = [
        {"seq": 1, "time": 10.0, "proxy": "pg", "conn": 1, "kind": "accepted",
         "client": "127.0.0.1"},
        {"seq": 2, "time": 10.1, "proxy": "pg", "conn": 1, "kind": "toxic_applied",
         "type": "reset_peer"},
        {"seq": 3, "time": 10.2, "proxy": "pg", "conn": 1, "kind": "closed"},
        {"seq": 4, "time": 10.5, "proxy": "api", "conn": 2, "kind": "accepted"},
        {"seq": 5, "time": 10.9, "proxy": "pg", "conn": 3, "kind": "accepted"},
    ]
    objects = [
        Event(seq=r["seq"], time=r["time"], kind=r["kind"], proxy=r["proxy"], conn=r["conn"],
              data={k: v for k, v in r.items()
                    if k not in ("seq", "time", "kind", "proxy", "conn")})
        for r in raw
    ]

    def starts(events: Iterable[Any], kind: str = "accepted",
               proxy: str | None = None) -> list[float]:
        timeline = from_toxiproxy_events(events, kind=kind, proxy=proxy)
        return [a.started for a in timeline.attempts]

    assert starts(raw) == starts(objects) == [10.0, 10.5, 10.9]
    assert starts(raw, proxy="pg") == starts(objects, proxy="pg") == [10.0, 10.9]
    assert starts(raw, kind="closed") == starts(objects, kind="closed") == [10.2]
    assert starts([*objects[:2], *raw[2:]], proxy="pg") == [10.0, 10.9]  # mixed
    timeline = from_toxiproxy_events(objects, proxy="pg")
    assert timeline.delays() == pytest.approx([0.9])
    assert timeline.clock == "real"
    assert timeline.source == from_toxiproxy_events(raw, proxy="pg").source
    # the legacy shape keeps working: "type" when there is no "kind"
    assert starts([{"time": 1.0, "type": "connection_accepted"}]) == [1.0]
