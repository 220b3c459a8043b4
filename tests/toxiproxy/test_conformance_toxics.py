"""Data-plane conformance: each toxic's effect measured over real sockets.

Timing bounds are deliberately generous (the machine has 2 cores shared with
other test runs): a lower bound that the toxic must cause, and an upper bound
that only a broken implementation misses. ``time.sleep`` appears only where a
delay between writes is the behaviour under test.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

SLACK = 0.6  # seconds an overloaded machine may add on top of an expected delay


def test_noop_passes_data(api: Any, echo_server: Any, h: Any) -> None:
    proxy = api.proxy(echo_server.address)
    api.toxic(proxy["name"], type="noop")
    with h.connect(proxy["listen"]) as client:
        payload = bytes(range(256)) * 400
        client.sendall(payload)
        assert h.recv_exactly(client, len(payload)) == payload


def test_latency_downstream(api: Any, echo_server: Any, h: Any) -> None:
    proxy = api.proxy(echo_server.address)
    api.toxic(proxy["name"], type="latency", attributes={"latency": 200})
    with h.connect(proxy["listen"]) as client:
        rtt = h.round_trip(client)
    assert 0.195 <= rtt < 0.2 + SLACK


def test_latency_stacks_across_directions(api: Any, echo_server: Any, h: Any) -> None:
    proxy = api.proxy(echo_server.address)
    api.toxic(proxy["name"], type="latency", attributes={"latency": 150})
    api.toxic(proxy["name"], type="latency", stream="upstream", attributes={"latency": 100})
    with h.connect(proxy["listen"]) as client:
        rtt = h.round_trip(client)
    assert 0.245 <= rtt < 0.25 + SLACK


def test_latency_applies_to_live_connection(api: Any, echo_server: Any, h: Any) -> None:
    proxy = api.proxy(echo_server.address)
    with h.connect(proxy["listen"]) as client:
        assert h.round_trip(client) < 0.1 + SLACK
        api.toxic(proxy["name"], type="latency", attributes={"latency": 150})
        assert h.round_trip(client) >= 0.145
        api.delete(f"/proxies/{proxy['name']}/toxics/latency_downstream")
        assert h.round_trip(client) < 0.1 + SLACK


def test_latency_is_pipelined_and_ordered(api: Any, echo_server: Any, h: Any) -> None:
    proxy = api.proxy(echo_server.address)
    api.toxic(proxy["name"], type="latency", attributes={"latency": 300})
    with h.connect(proxy["listen"]) as client:
        start = time.perf_counter()
        for i in range(5):
            client.sendall(b"%d" % i)
            time.sleep(0.01)  # the writes are meant to be 10 ms apart
        data = h.recv_exactly(client, 5)
        elapsed = time.perf_counter() - start
    assert data == b"01234"
    # paid once, not five times: 5 x 300 ms would be 1.5 s
    assert 0.3 <= elapsed < 0.35 + SLACK


def test_latency_jitter_range(api: Any, echo_server: Any, h: Any) -> None:
    proxy = api.proxy(echo_server.address)
    api.toxic(proxy["name"], type="latency", attributes={"latency": 100, "jitter": 50})
    with h.connect(proxy["listen"]) as client:
        samples = [h.round_trip(client) for _ in range(12)]
    assert min(samples) >= 0.049
    assert max(samples) < 0.15 + SLACK
    assert max(samples) - min(samples) > 0.005  # it does vary


def test_bandwidth(api: Any, tcp_server: Any, h: Any) -> None:
    size = 50_000

    def source(conn: socket.socket) -> None:
        conn.sendall(b"x" * size)

    server = tcp_server(source)
    proxy = api.proxy(server.address)
    api.toxic(proxy["name"], type="bandwidth", attributes={"rate": 100})  # 100 KB/s
    with h.connect(proxy["listen"]) as client:
        start = time.perf_counter()
        data = h.recv_exactly(client, size)
        elapsed = time.perf_counter() - start
    assert len(data) == size
    assert 0.35 <= elapsed < 0.5 + SLACK * 2


def test_slow_close(api: Any, tcp_server: Any, h: Any) -> None:
    def greet_and_close(conn: socket.socket) -> None:
        conn.sendall(b"bye")

    server = tcp_server(greet_and_close)
    proxy = api.proxy(server.address)
    api.toxic(proxy["name"], type="slow_close", attributes={"delay": 400})
    with h.connect(proxy["listen"]) as client:
        start = time.perf_counter()
        assert h.recv_exactly(client, 3) == b"bye"
        assert client.recv(10) == b""
        elapsed = time.perf_counter() - start
    assert 0.39 <= elapsed < 0.4 + SLACK


def test_timeout_drops_data_and_closes_when_idle(api: Any, echo_server: Any, h: Any) -> None:
    proxy = api.proxy(echo_server.address)
    api.toxic(proxy["name"], type="timeout", stream="upstream", attributes={"timeout": 300})
    with h.connect(proxy["listen"]) as client:
        start = time.perf_counter()
        client.sendall(b"lost")
        assert client.recv(10) == b""  # nothing echoed, then EOF
        elapsed = time.perf_counter() - start
    assert 0.29 <= elapsed < 0.3 + SLACK


def test_timeout_zero_holds_until_removed(api: Any, echo_server: Any, h: Any) -> None:
    proxy = api.proxy(echo_server.address)
    with h.connect(proxy["listen"]) as client:
        assert h.round_trip(client) < 0.1 + SLACK
        api.toxic(proxy["name"], type="timeout", attributes={"timeout": 0})
        client.sendall(b"dropped")
        client.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.recv(10)  # held open, nothing arrives (0.3 s is the behaviour)
        client.settimeout(10)
        assert api.delete(f"/proxies/{proxy['name']}/toxics/timeout_downstream").status_code == 204
        assert client.recv(10) == b""  # removing a timeout toxic closes the connection


def test_reset_peer_present_at_accept_sends_rst(api: Any, echo_server: Any, h: Any) -> None:
    proxy = api.proxy(echo_server.address)
    api.toxic(proxy["name"], type="reset_peer", stream="upstream", attributes={"timeout": 200})
    with h.connect(proxy["listen"]) as client:
        start = time.perf_counter()
        client.sendall(b"boom")
        with pytest.raises(ConnectionResetError):
            client.recv(10)
        elapsed = time.perf_counter() - start
    assert 0.19 <= elapsed < 0.2 + SLACK


def test_reset_peer_waits_for_data(api: Any, echo_server: Any, h: Any) -> None:
    proxy = api.proxy(echo_server.address)
    api.toxic(proxy["name"], type="reset_peer", attributes={"timeout": 0})
    with h.connect(proxy["listen"]) as client:
        client.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.recv(10)  # idle connections are left alone (0.3 s is the behaviour)
        client.settimeout(10)
        client.sendall(b"x")  # echoed back downstream: the first downstream chunk triggers it
        with pytest.raises(ConnectionResetError):
            client.recv(10)


def test_reset_peer_added_live_is_plain_eof(api: Any, echo_server: Any, h: Any) -> None:
    proxy = api.proxy(echo_server.address)
    with h.connect(proxy["listen"]) as client:
        assert h.round_trip(client) < 0.1 + SLACK
        api.toxic(proxy["name"], type="reset_peer", stream="upstream", attributes={"timeout": 0})
        client.sendall(b"x")
        assert client.recv(10) == b""


def test_slicer(api: Any, tcp_server: Any, h: Any) -> None:
    size = 1000

    def source(conn: socket.socket) -> None:
        conn.sendall(b"s" * size)

    server = tcp_server(source)
    proxy = api.proxy(server.address)
    api.toxic(
        proxy["name"], type="slicer",
        attributes={"average_size": 100, "size_variation": 10, "delay": 20_000},
    )
    with h.connect(proxy["listen"]) as client:
        start = time.perf_counter()
        data = h.recv_exactly(client, size)
        elapsed = time.perf_counter() - start
    assert data == b"s" * size
    # 1000 B in ~55-110 B pieces, 20 ms apart: at least 9 gaps
    assert 0.17 <= elapsed < 0.35 + SLACK


def test_limit_data(api: Any, tcp_server: Any, h: Any) -> None:
    def source(conn: socket.socket) -> None:
        conn.recv(10)
        conn.sendall(b"r" * 5000)
        conn.recv(10)

    server = tcp_server(source)
    proxy = api.proxy(server.address)
    api.toxic(proxy["name"], type="limit_data", attributes={"bytes": 1000})
    with h.connect(proxy["listen"]) as client:
        client.sendall(b"go")
        assert h.recv_until_eof(client) == b"r" * 1000


def test_limit_data_zero_closes_on_first_data(api: Any, echo_server: Any, h: Any) -> None:
    proxy = api.proxy(echo_server.address)
    api.toxic(proxy["name"], type="limit_data", stream="upstream", attributes={"bytes": 0})
    with h.connect(proxy["listen"]) as client:
        client.sendall(b"x")
        assert client.recv(10) == b""


def test_upstream_unreachable_gives_eof(api: Any, h: Any) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there any more
    proxy = api.proxy(f"127.0.0.1:{port}")
    with h.connect(proxy["listen"]) as client:
        assert client.recv(10) == b""  # connect succeeded, then EOF (not a reset)


def test_disabled_proxy_refuses(api: Any, echo_server: Any, h: Any) -> None:
    proxy = api.proxy(echo_server.address)
    api.patch(f"/proxies/{proxy['name']}", json={"enabled": False})
    with pytest.raises(ConnectionRefusedError):
        h.connect(proxy["listen"]).close()


def test_toxicity_zero_and_above_one(api: Any, echo_server: Any, h: Any) -> None:
    proxy = api.proxy(echo_server.address)
    api.toxic(proxy["name"], type="latency", name="never", toxicity=-1,
              attributes={"latency": 1000})
    api.toxic(proxy["name"], type="latency", name="always", toxicity=7,
              attributes={"latency": 120})
    with h.connect(proxy["listen"]) as client:
        rtt = h.round_trip(client)
    assert 0.115 <= rtt < 0.12 + SLACK
