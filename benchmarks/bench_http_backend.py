"""Benchmark the fake HTTP backend: per-test overhead and request throughput.

Run: ``.venv/bin/python benchmarks/bench_http_backend.py [--quick]``

1. set-up + teardown of one backend on a running engine (what ``http_backend``
   adds to a test), against baselines: an empty function and a
   ``socket.create_server`` + close;
2. the same measured through pytest: set-up + teardown durations of tests using
   ``http_backend`` / ``http_mock`` against tests using an empty fixture;
3. sequential requests/s from one ``httpx.Client`` (keep-alive), to this server,
   to an ``aiohttp.web`` server in a thread (the baseline in measurements.md),
   and to the respx twin;
4. how late a scripted 50 ms delay is, as the client sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from pytest_resilience.services.http_backend import HttpBackend, HttpEngine
from pytest_resilience.services.http_respx import HttpMock


def timed(fn: Callable[[], object], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def fmt(samples: list[float]) -> str:
    s = sorted(samples)
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))]
    return (f"min {s[0] * 1e3:7.3f}  median {statistics.median(s) * 1e3:7.3f}  "
            f"p99 {p99 * 1e3:7.3f} ms")


def bench_lifecycle(rounds: int) -> None:
    print(f"\n== set-up + teardown, {rounds} rounds (direct) ==")
    with HttpEngine() as engine:
        def backend_cycle() -> None:
            b = HttpBackend(engine=engine, seed="bench")
            b.start()
            b.route("GET", "/x", "503 x3", "200")
            b.assert_all_used = False
            b.close()
            b.unmet()

        def socket_cycle() -> None:
            s = socket.create_server(("127.0.0.1", 0))
            s.close()

        for _ in range(50):
            backend_cycle()  # warm up
        empty = timed(lambda: None, rounds)
        sock = timed(socket_cycle, rounds)
        backend = timed(backend_cycle, rounds)
        print(f"empty function           {fmt(empty)}")
        print(f"socket.create_server     {fmt(sock)}")
        print(f"HttpBackend start+close  {fmt(backend)}")
        print(f"ratio backend / socket baseline (median): "
              f"{statistics.median(backend) / statistics.median(sock):.1f}x")
        start = time.perf_counter()
        HttpEngine().start().stop()
        print(f"engine start+stop (once per session): "
              f"{(time.perf_counter() - start) * 1e3:.2f} ms")


CONFTEST = """
import json, os

durations = {}

def pytest_runtest_logreport(report):
    if report.when in ("setup", "teardown"):
        name = report.nodeid.split("::")[1].split("[")[0]
        durations.setdefault(name, []).append(report.duration)

def pytest_unconfigure(config):
    with open(os.environ["BENCH_OUT"], "w") as f:
        json.dump(durations, f)
"""

TESTS = """
import pytest

@pytest.fixture
def empty():
    yield None

@pytest.mark.parametrize("i", range({n}))
def test_empty(empty, i):
    pass

@pytest.mark.parametrize("i", range({n}))
def test_http_backend(http_backend, i):
    pass

@pytest.mark.parametrize("i", range({n}))
def test_http_mock(http_mock, i):
    pass
"""


def bench_pytest(n: int) -> None:
    print(f"\n== through pytest: set-up + teardown per test, {n} tests each ==")
    import json
    import os

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "conftest.py").write_text(CONFTEST)
        Path(tmp, "test_bench.py").write_text(TESTS.format(n=n))
        out = Path(tmp, "out.json")
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "-p", "no:postgresql", "test_bench.py"],
            cwd=tmp, capture_output=True, text=True, check=False,
            env={**os.environ, "BENCH_OUT": str(out)})
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:])
            raise SystemExit("the pytest run failed")
        raw: dict[str, list[float]] = json.loads(out.read_text())
    per_test = {}
    for name, values in raw.items():
        pairs = [a + b for a, b in zip(values[::2], values[1::2], strict=True)][10:]
        per_test[name] = pairs
        print(f"{name:18s} {fmt(pairs)}")
    base = statistics.median(per_test["test_empty"])
    for name in ("test_http_backend", "test_http_mock"):
        extra = statistics.median(per_test[name]) - base
        print(f"overhead of {name[5:]} over an empty fixture (median): {extra * 1e3:.2f} ms "
              f"(target < 5 ms); ratio {statistics.median(per_test[name]) / base:.1f}x")


def _throughput(url: str, n: int) -> float:
    with httpx.Client() as client:
        for _ in range(50):
            client.get(url)
        start = time.perf_counter()
        for _ in range(n):
            client.get(url)
        return n / (time.perf_counter() - start)


def _aiohttp_server() -> tuple[str, Callable[[], None]]:
    from aiohttp import web

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, object] = {}

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def start() -> None:
        app = web.Application()
        app.router.add_get("/x", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["runner"] = runner
        holder["port"] = runner.addresses[0][1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)

    def stop() -> None:
        async def cleanup() -> None:
            await holder["runner"].cleanup()  # type: ignore[attr-defined]

        asyncio.run_coroutine_threadsafe(cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    return f"http://127.0.0.1:{holder['port']}/x", stop


def bench_throughput(n: int) -> None:
    print(f"\n== sequential requests/s, one httpx.Client, {n} requests ==")
    with HttpBackend(routes={"GET /x": "200 x* ok"}) as backend:
        ours = _throughput(backend.url + "/x", n)
    url, stop = _aiohttp_server()
    try:
        base = _throughput(url, n)
    finally:
        stop()
    with HttpMock(routes={"GET /x": "200 x* ok"}) as mock:
        twin = _throughput(mock.url + "/x", n)
    print(f"HttpBackend (asyncio streams)  {ours:8.0f} req/s")
    print(f"aiohttp.web baseline           {base:8.0f} req/s   ratio {ours / base:.2f}x")
    print(f"HttpMock (respx, no socket)    {twin:8.0f} req/s")


def bench_delay_accuracy(n: int) -> None:
    print(f"\n== delay accuracy: 'delay=50ms' seen by an httpx client, {n} requests ==")
    with HttpBackend(routes={"GET /fast": "200 x*", "GET /slow": "200 x* delay=50ms"}) as b, \
            httpx.Client(base_url=b.url) as client:
        for _ in range(20):
            client.get("/fast")
        fast = timed(lambda: client.get("/fast"), n)
        slow = timed(lambda: client.get("/slow"), n)
    rtt = statistics.median(fast)
    late = [t - 0.050 - rtt for t in slow]
    print(f"round trip without delay    {fmt(fast)}")
    print(f"lateness (elapsed - 50 ms - median round trip) {fmt(late)}; "
          f"never early: {min(t - 0.050 for t in slow) >= 0}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    quick = args.quick
    bench_lifecycle(200 if quick else 2000)
    bench_throughput(500 if quick else 3000)
    bench_delay_accuracy(50 if quick else 200)
    bench_pytest(100 if quick else 500)


if __name__ == "__main__":
    main()
