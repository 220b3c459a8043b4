"""The real server: sequences, the request log, timing, dribble, HTTP details."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
import requests

from pytest_resilience.fixtures.http import HttpBackends
from pytest_resilience.services.http_backend import HttpBackend
from pytest_resilience.services.http_routes import RecordedRequest
from pytest_resilience.services.http_script import (
    LogNormal,
    Response,
    Uniform,
    too_many_requests,
)

# Generous: a 2-core machine shared with other test runs.
LATE = 0.25


def test_sequence_then_success_and_request_log(http_backend: HttpBackend) -> None:
    http_backend.route("POST", "/orders/{id}", ["503 x3", '200 {"ok": true}'])
    with httpx.Client(base_url=http_backend.url) as client:
        statuses = [client.post("/orders/7?x=1", json={"n": i}, headers={"X-Try": str(i)})
                    .status_code for i in range(4)]
    assert statuses == [503, 503, 503, 200]
    log = http_backend.requests_for("POST", "/orders/7")
    assert log == http_backend.requests_for("POST", "/orders/{id}") == http_backend.requests
    assert [r.step for r in log] == [1, 1, 1, 2]
    assert [r.answer for r in log] == ["503 x3"] * 3 + ['200 {"ok": true}']
    first = log[0]
    assert (first.method, first.path, first.query, first.params) == (
        "POST", "/orders/7", "x=1", {"x": ["1"]})
    assert first.path_params == {"id": "7"}
    assert first.json() == {"n": 0}
    assert first.headers["x-try"] == "0"
    assert first.headers["Content-Type"] == "application/json"
    assert [r.headers["X-Try"] for r in log] == ["0", "1", "2", "3"]
    arrivals = [r.arrived for r in log]
    assert arrivals == sorted(arrivals)
    assert {r.connection for r in log} == {1}  # keep-alive: one connection


def test_json_text_bytes_and_headers(http_backend: HttpBackend) -> None:
    http_backend.route("GET", "/a", Response(201, json=[1, 2], headers={"X-Id": "9"}),
                       Response(200, text="héllo"), Response(200, body=b"\x00\x01"),
                       too_many_requests(retry_after=3))
    with httpx.Client(base_url=http_backend.url) as client:
        r1, r2, r3, r4 = (client.get("/a") for _ in range(4))
    assert (r1.status_code, r1.json(), r1.headers["x-id"]) == (201, [1, 2], "9")
    assert r1.headers["content-type"] == "application/json"
    assert (r2.text, r2.headers["content-type"]) == ("héllo", "text/plain; charset=utf-8")
    assert r3.content == b"\x00\x01"
    assert (r4.status_code, r4.headers["retry-after"]) == (429, "3")


def test_unscripted_route_answers_404_with_a_clear_body(http_backend: HttpBackend) -> None:
    http_backend.assert_all_expected = False
    http_backend.assert_all_used = False
    http_backend.route("GET", "/known", "200 forever")
    with httpx.Client(base_url=http_backend.url) as client:
        r = client.get("/unknown")
    assert r.status_code == 404
    assert "no route for GET /unknown; scripted routes: GET /known" in r.text
    assert http_backend.unexpected[0].reason == "no route"
    assert http_backend.requests[0].route is None


def test_callable_steps_sync_and_async(http_backend: HttpBackend) -> None:
    def echo(req: RecordedRequest) -> Response:
        return Response(200, json={"got": req.json(), "id": req.path_params["id"]})

    async def later(req: RecordedRequest) -> str:
        await asyncio.sleep(0)
        return "202 accepted"

    def broken(req: RecordedRequest) -> str:
        raise RuntimeError("boom")

    http_backend.route("POST", "/items/{id}", echo, later, broken)
    with httpx.Client(base_url=http_backend.url) as client:
        r1 = client.post("/items/3", json={"a": 1})
        r2 = client.post("/items/3", json={})
        r3 = client.post("/items/3", json={})
    assert r1.json() == {"got": {"a": 1}, "id": "3"}
    assert (r2.status_code, r2.text) == (202, "accepted")
    assert r3.status_code == 500
    assert "the callable raised RuntimeError: boom" in r3.text
    assert http_backend.errors == [
        "POST /items/{id} step 3: the callable raised RuntimeError: boom"]
    http_backend.errors.clear()  # handled: do not fail this test at teardown


def test_fixed_delay_and_client_backoff_gaps(http_backend: HttpBackend) -> None:
    http_backend.route("GET", "/slow", Response(200, delay=0.2))
    http_backend.route("GET", "/retry", "503 x2", "200")
    with httpx.Client(base_url=http_backend.url) as client:
        start = time.monotonic()
        client.get("/slow")
        elapsed = time.monotonic() - start
        for wait in (0.1, 0.2):  # a client backing off 100 ms then 200 ms
            client.get("/retry")
            time.sleep(wait)
        client.get("/retry")
    assert 0.2 <= elapsed < 0.2 + LATE
    gaps = http_backend.arrival_gaps("GET", "/retry")
    assert len(gaps) == 2
    for gap, intended in zip(gaps, (0.1, 0.2), strict=True):
        assert intended <= gap < intended + LATE


def test_random_delays_are_reproducible(http_backends: HttpBackends) -> None:
    def run(seed: int) -> list[float]:
        backend = http_backends(seed=seed)
        backend.route("GET", "/u", Response(204, delay=Uniform(0.0, 0.03)).times(3))
        backend.route("GET", "/l", Response(204, delay=LogNormal(0.005, 0.5)).times(2))
        with httpx.Client(base_url=backend.url) as client:
            for _ in range(3):
                client.get("/u")
            for _ in range(2):
                client.get("/l")
        return [backend.routes[0].rng.random(), backend.routes[1].rng.random()]

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_dribble_spreads_the_body(http_backend: HttpBackend) -> None:
    http_backend.route("GET", "/drip", Response(200, body=b"abcdefgh", dribble=(4, 0.4)))
    with httpx.Client(base_url=http_backend.url) as client, client.stream("GET", "/drip") as r:
        headers_at = time.monotonic()
        chunks = [(time.monotonic(), c) for c in r.iter_raw()]
    assert b"".join(c for _, c in chunks) == b"abcdefgh"
    # Usually one read per chunk (TCP_NODELAY, 100 ms apart); a descheduled client may
    # read two at once, so check the first and the last arrival.
    assert 2 <= len(chunks) <= 4
    offsets = [t - headers_at for t, _ in chunks]
    assert 0.1 - 0.02 <= offsets[0] < 0.1 + LATE
    assert 0.4 - 0.02 <= offsets[-1] < 0.4 + LATE


def test_dribble_slower_than_the_read_timeout(http_backend: HttpBackend) -> None:
    http_backend.route("GET", "/drip", "200 dribble=2/1s ab")
    with httpx.Client(base_url=http_backend.url, timeout=httpx.Timeout(5, read=0.1)) as client, \
            pytest.raises(httpx.ReadTimeout):
        client.get("/drip")


def test_keep_alive_head_chunked_body_and_connection_close(http_backend: HttpBackend) -> None:
    http_backend.route("HEAD", "/h", "200 x2 body-not-sent")
    http_backend.route("PUT", "/c", "204")
    with requests.Session() as session:
        r = session.head(http_backend.url + "/h")
        assert (r.status_code, r.headers["content-length"], r.content) == (200, "13", b"")
        session.head(http_backend.url + "/h", headers={"Connection": "close"})
        r = session.put(http_backend.url + "/c", data=iter([b"ab", b"cd"]))  # chunked
        assert r.status_code == 204
    log = http_backend.requests
    assert log[2].body == b"abcd"
    assert log[2].headers["transfer-encoding"] == "chunked"
    assert [r.connection for r in log] == [1, 1, 2]


def test_tcp_nodelay_keeps_keep_alive_requests_fast(http_backend: HttpBackend) -> None:
    http_backend.route("POST", "/x", "200 x* ok")
    with requests.Session() as session:
        session.post(http_backend.url + "/x", data=b"warm")
        start = time.perf_counter()
        for _ in range(20):
            session.post(http_backend.url + "/x", data=b"x" * 100)
        per_request = (time.perf_counter() - start) / 20
    assert per_request < 0.03  # Nagle + delayed ACK would make it ~40 ms


def test_raw_socket_sees_exact_bytes(http_backend: HttpBackend) -> None:
    http_backend.route("GET", "/raw", "200 hi")
    with socket.create_connection((http_backend.host, http_backend.port), timeout=5) as sock:
        sock.sendall(b"GET /raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    b"Content-Length: 2\r\nConnection: close\r\n\r\nhi")


def test_wait_for_requests_and_standalone_use() -> None:
    with HttpBackend(routes={"GET /x": "200"}) as backend:
        with httpx.Client() as client:
            client.get(backend.url + "/x")
        assert len(backend.wait_for_requests(1, timeout=1)) == 1
        with pytest.raises(TimeoutError, match=r"1 requests after 0\.05 s, waited for 2"):
            backend.wait_for_requests(2, timeout=0.05)
        assert backend.unmet() == []


@pytest.mark.asyncio
async def test_async_clients_in_strict_mode(http_backend: HttpBackend) -> None:
    import aiohttp

    http_backend.route("GET", "/a", "503", "200 x3 fine")
    async with httpx.AsyncClient(base_url=http_backend.url) as client:
        statuses = [(await client.get("/a")).status_code for _ in range(2)]
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.get(http_backend.url + "/a") as resp:
                statuses.append(resp.status)
                assert await resp.text() == "fine"
    assert statuses == [503, 200, 200, 200]


def test_accepted_sockets_have_tcp_nodelay(http_backend: HttpBackend) -> None:
    http_backend.route("GET", "/x", "200")
    with httpx.Client(base_url=http_backend.url) as client:
        client.get("/x")
        (writer,) = http_backend._writers  # white box: the server end of the connection
        sock = writer.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_unparsable_request_is_reported(http_backend: HttpBackend) -> None:
    with socket.create_connection((http_backend.host, http_backend.port), timeout=5) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nContent-Length: lots\r\n\r\n")
        assert sock.recv(100) == b""  # the server closed the connection
    assert http_backend.errors == [
        "connection 1: ValueError: invalid literal for int() with base 10: 'lots'"]
    assert http_backend.unmet()[0] == "http_backend: 1 error while answering:"
    http_backend.errors.clear()


def test_routes_mapping_with_default_and_cycle() -> None:
    routes = {
        "GET /a": {"steps": ["503"], "default": "200 fine"},
        "GET /b": {"steps": ["503", "200"], "cycle": True},
        "GET /c": [{"status": 201, "times": 2}],
    }
    with HttpBackend(routes=routes) as backend, httpx.Client(base_url=backend.url) as client:
        got = [client.get(p).status_code for p in ("/a", "/a", "/a", "/b", "/b", "/b",
                                                     "/c", "/c")]
        assert got == [503, 200, 200, 503, 200, 503, 201, 201]
        assert backend.unmet() == []


def test_scripted_connection_close_closes(http_backend: HttpBackend) -> None:
    http_backend.route("GET", "/x", Response(200, headers={"Connection": "close"}), "204")
    with httpx.Client(base_url=http_backend.url) as client:
        client.get("/x")
        assert client.get("/x").status_code == 204
    assert [r.connection for r in http_backend.requests] == [1, 2]


def test_urllib3_honours_the_scripted_retry_after(http_backend: HttpBackend) -> None:
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    http_backend.route("GET", "/limited", "429 retry-after=1", "200 done")
    retry = Retry(total=2, status_forcelist=[429], backoff_factor=0,
                  respect_retry_after_header=True)
    with requests.Session() as session:
        session.mount("http://", HTTPAdapter(max_retries=retry))
        assert session.get(http_backend.url + "/limited", timeout=5).text == "done"
    (gap,) = http_backend.arrival_gaps("GET", "/limited")
    assert 1.0 <= gap < 1.0 + LATE
