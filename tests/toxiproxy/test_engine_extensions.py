"""What the built-in engine adds or does differently from toxiproxy-server.

Event log and open-connection listing, seeded toxicity, 400 instead of a
crash, bounded memory under a slow reader.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
import pytest

from pytest_resilience.toxiproxy import start_thread


def test_event_log(builtin_api: Any, echo_server: Any, h: Any) -> None:
    proxy = builtin_api.proxy(echo_server.address)
    name = proxy["name"]
    builtin_api.toxic(name, type="latency", attributes={"latency": 1})
    since = builtin_api.get("/x-resilience/info").json()["events_next"] - 1
    before = time.monotonic()
    with h.connect(proxy["listen"]) as client:
        h.round_trip(client)
        client_port = client.getsockname()[1]
    closed = h.wait_event(builtin_api, name, "closed", since=since)
    after = time.monotonic()
    events = builtin_api.get(
        "/x-resilience/events", params={"proxy": name, "since": since}
    ).json()["events"]
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "accepted"
    assert kinds[-1] == "closed"
    assert {"upstream_connected", "first_byte", "toxic_applied"} <= set(kinds)
    accepted = events[0]
    assert accepted["client"] == "127.0.0.1"
    assert accepted["client_port"] == client_port
    assert {e["conn"] for e in events} == {accepted["conn"]}
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    # the engine's clock is this process's time.monotonic()
    assert all(before <= e["time"] <= after for e in events)
    directions = [e["direction"] for e in events if e["kind"] == "first_byte"]
    assert directions == ["upstream", "downstream"]
    applied = next(e for e in events if e["kind"] == "toxic_applied")
    assert applied["toxic"] == "latency_downstream"
    assert closed[0]["bytes_up"] == 4
    assert closed[0]["bytes_down"] == 4
    newest = seqs[-1]
    rest = builtin_api.get("/x-resilience/events", params={"proxy": name, "since": newest})
    assert rest.json()["events"] == []


def test_event_log_is_a_ring_buffer() -> None:
    from pytest_resilience.toxiproxy.events import EventLog

    log = EventLog(capacity=3)
    for i in range(5):
        log.record("p", i, "accepted")
    result = log.query(since=0)
    assert [e["seq"] for e in result["events"]] == [3, 4, 5]
    assert result["dropped"] == 2
    assert log.query(since=4)["dropped"] == 0


def test_open_connections_listing(builtin_api: Any, echo_server: Any, h: Any) -> None:
    proxy = builtin_api.proxy(echo_server.address)
    name = proxy["name"]
    url = "/x-resilience/connections"
    assert builtin_api.get(url, params={"proxy": name}).json()["proxies"] == {name: []}
    client = h.connect(proxy["listen"])
    try:
        h.round_trip(client)
        listed = builtin_api.get(url, params={"proxy": name}).json()["proxies"][name]
        assert len(listed) == 1
        assert listed[0]["client_port"] == client.getsockname()[1]
        assert listed[0]["connected"] is True
        since = builtin_api.get("/x-resilience/info").json()["events_next"] - 1
    finally:
        client.close()
    h.wait_event(builtin_api, name, "closed", since=since)
    assert builtin_api.get(url, params={"proxy": name}).json()["proxies"] == {name: []}
    assert builtin_api.get(url, params={"proxy": "nope-missing"}).status_code == 404
    bad = builtin_api.get("/x-resilience/events", params={"since": "x"})
    assert bad.status_code == 400


@pytest.mark.parametrize(
    ("toxic", "attributes", "fragment"),
    [
        ("bandwidth", {"rate": -1}, "rate must be >= 0"),
        ("slicer", {"average_size": 0}, "average_size must be >= 1"),
        ("slicer", {"average_size": 10, "size_variation": 11}, "size_variation"),
        ("slicer", {"average_size": 10, "size_variation": -1}, "size_variation"),
    ],
)
def test_crash_values_are_400(
    builtin_api: Any, echo_server: Any, h: Any, toxic: str, attributes: dict[str, int],
    fragment: str,
) -> None:
    proxy = builtin_api.proxy(echo_server.address)
    url = f"/proxies/{proxy['name']}/toxics"
    response = builtin_api.post(url, json={"type": toxic, "attributes": attributes})
    assert response.status_code == 400
    assert fragment in response.json()["error"]
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    # and through a PATCH of a valid toxic
    valid = {"bandwidth": {"rate": 1}, "slicer": {"average_size": 10}}[toxic]
    created = builtin_api.toxic(proxy["name"], type=toxic, name="ok", attributes=valid)
    response = builtin_api.patch(f"{url}/ok", json={"attributes": attributes})
    assert response.status_code == 400
    assert fragment in response.json()["error"]
    assert builtin_api.get(f"{url}/ok").json() == created  # unchanged
    with h.connect(proxy["listen"]) as client:  # the engine keeps serving
        h.round_trip(client)


def _applied_indexes(seed: int, connections: int, echo: Any, h: Any) -> list[int]:
    with start_thread(seed=seed) as engine, httpx.Client(base_url=engine.url, timeout=10) as api:
        proxy = api.post(
            "/proxies", json={"name": "dice", "upstream": echo.address, "listen": "127.0.0.1:0"}
        ).json()
        api.post("/proxies/dice/toxics", json={"type": "noop", "toxicity": 0.5})
        for _ in range(connections):
            with h.connect(proxy["listen"]) as client:
                h.round_trip(client)
        events = api.get(
            "/x-resilience/events", params={"proxy": "dice", "kind": "toxic_applied"}
        ).json()["events"]
        accepted = api.get(
            "/x-resilience/events", params={"proxy": "dice", "kind": "accepted"}
        ).json()["events"]
        index_of = {e["conn"]: e["index"] for e in accepted}
        return sorted(index_of[e["conn"]] for e in events)


def test_seeded_toxicity_replays(echo_server: Any, h: Any) -> None:
    first = _applied_indexes(42, 40, echo_server, h)
    again = _applied_indexes(42, 40, echo_server, h)
    other = _applied_indexes(43, 40, echo_server, h)
    assert first == again
    assert first != other
    # toxicity 0.5 over 40 connections: binomial, 8..32 is > 99.99 % likely
    assert 8 <= len(first) <= 32


def test_toxicity_redrawn_on_patch(builtin_api: Any, echo_server: Any, h: Any) -> None:
    proxy = builtin_api.proxy(echo_server.address)
    name = proxy["name"]
    builtin_api.toxic(name, type="noop", toxicity=0.5)
    clients = [h.connect(proxy["listen"]) for _ in range(20)]
    try:
        for client in clients:
            h.round_trip(client)
        since = builtin_api.get("/x-resilience/info").json()["events_next"] - 1
        response = builtin_api.patch(f"/proxies/{name}/toxics/noop_downstream", json={})
        assert response.status_code == 200
        redrawn = builtin_api.get(
            "/x-resilience/events",
            params={"proxy": name, "since": since, "kind": "toxic_applied"},
        ).json()["events"]
        assert 1 <= len(redrawn) <= 19  # each live connection drew again
    finally:
        for client in clients:
            client.close()


def test_memory_flat_under_slow_reader(builtin_api: Any, tcp_server: Any, h: Any) -> None:
    total = 64 * 1024 * 1024
    sent: list[int] = []

    def firehose(conn: socket.socket) -> None:
        conn.settimeout(1.0)  # blocked this long = the proxy stopped reading from us
        chunk = b"f" * (1 << 20)
        count = 0
        try:
            while count < total:
                count += conn.send(chunk)
        except TimeoutError:
            pass
        finally:
            sent.append(count)

    server = tcp_server(firehose)
    proxy = builtin_api.proxy(server.address)
    builtin_api.toxic(proxy["name"], type="latency", attributes={"latency": 10})
    client = h.connect(proxy["listen"])
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        assert client.recv(1)  # the stream started; now we stop reading
        server.threads[0].join(30)
        assert sent, "the upstream never blocked"
        assert sent[0] < total  # backpressure reached the upstream
        listed = builtin_api.get(
            "/x-resilience/connections", params={"proxy": proxy["name"]}
        ).json()["proxies"][proxy["name"]]
        assert listed[0]["buffered"] < 16 * 1024 * 1024
        # Deleting the proxy drops the connection even though nobody drains it.
        since = builtin_api.get("/x-resilience/info").json()["events_next"] - 1
        assert builtin_api.delete(f"/proxies/{proxy['name']}").status_code == 204
        closed = h.wait_event(builtin_api, proxy["name"], "closed", since=since)
        assert closed[0]["reason"] == "proxy deleted"
    finally:
        client.close()
