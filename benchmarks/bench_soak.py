"""Soak driver cost, as ratios against baselines measured in the same run (medians over
rounds; which side runs first alternates):

1. driver overhead: calls/s of a trivial async target (``await asyncio.sleep(0)``)
   under the soak driver (closed model, ``--iterations`` calls) over a plain ``for``
   loop awaiting it, both under ``asyncio.run``; concurrency 1 and 8 (8 plain tasks);
2. HTTP load against the fake HTTP backend (``HttpBackend``, run in its own process
   so it takes no CPU from the clients): requests/s of the soak driver with an
   ``httpx.AsyncClient`` and with a raw asyncio HTTP/1.1 keep-alive client, over
   Locust ``FastHttpUser`` in one process (a subprocess; locust must never be
   imported here: it monkeypatches with gevent). Same target, duration and users;
3. sampling cost: microseconds per ``process_resources()`` and per
   ``Sampler().sample()``, as a fraction of a 1 s sampling interval.

    .venv/bin/python benchmarks/bench_soak.py [--rounds 3] [--duration 5] [--users 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from pytest_resilience.soak.driver import Driver, LoadPlan, run_sync
from pytest_resilience.soak.sampler import Sampler, process_resources

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
PATH = "/x"
ROUTE = '200 x* {"ok": true}'
MAX_BACKEND_LIFETIME = 1800  # the backend process exits on its own after this

# The backend process: starts one HttpBackend (own engine thread), prints its port,
# then answers "stats" (requests served so far, CPU seconds) and "clear" on stdin;
# exits at EOF or after MAX_BACKEND_LIFETIME seconds.
BACKEND = f"""
import asyncio, os, sys, threading
if sys.argv[1] == "uvloop":
    import uvloop
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
from pytest_resilience.services.http_backend import HttpBackend
threading.Timer({MAX_BACKEND_LIFETIME}, os._exit, (3,)).start()
b = HttpBackend(routes={{"GET {PATH}": {ROUTE!r}}}, assert_all_used=False,
                assert_all_expected=False).start()
print(b.port, flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "stats":
        t = os.times()
        print(len(b.requests), t.user + t.system, flush=True)
    elif cmd == "clear":
        b.clear()
        print("ok", flush=True)
b.close()
os._exit(0)
"""

LOCUSTFILE = f"""
from locust import FastHttpUser, constant, task


class Bench(FastHttpUser):
    wait_time = constant(0)

    @task
    def get(self):
        self.client.get({PATH!r})
"""


# ---------------------------------------------------------------- 1. driver overhead

async def trivial() -> None:
    await asyncio.sleep(0)


async def _plain(n: int, tasks: int) -> None:
    async def loop(count: int) -> None:
        for _ in range(count):
            await trivial()

    if tasks == 1:
        await loop(n)
    else:
        share = [n // tasks + (1 if i < n % tasks else 0) for i in range(tasks)]
        await asyncio.gather(*(loop(k) for k in share))


def plain_rate(n: int, tasks: int) -> float:
    start = time.perf_counter()
    asyncio.run(_plain(n, tasks))
    return n / (time.perf_counter() - start)


def driver_rate(n: int, concurrency: int) -> float:
    start = time.perf_counter()
    driver = Driver(trivial, LoadPlan(iterations=n, concurrency=concurrency))
    record = run_sync(driver)
    elapsed = time.perf_counter() - start
    calls = record.totals["calls"]
    if calls != n or record.totals["errors"]:
        raise SystemExit(f"the driver made {calls} calls ({record.totals['errors']} errors), "
                         f"expected {n}")
    return n / elapsed


def bench_overhead(rounds: int, n: int) -> list[tuple[str, float, float, str]]:
    rows = []
    for conc in (1, 8):
        plain_runs: list[float] = []
        driver_runs: list[float] = []
        plain_rate(n // 10, conc)  # warm up both
        driver_rate(n // 10, conc)
        for r in range(rounds):
            pair: list[tuple[list[float], Callable[[], float]]] = [
                (plain_runs, lambda c=conc: plain_rate(n, c)),
                (driver_runs, lambda c=conc: driver_rate(n, c))]
            for runs, fn in pair if r % 2 == 0 else reversed(pair):
                runs.append(fn())
        p, d = statistics.median(plain_runs), statistics.median(driver_runs)
        rows.append((f"driver, closed c={conc}, {n} x sleep(0)", d, p,
                     f"plain {'for loop' if conc == 1 else f'{conc} tasks'}"))
    return rows


# ---------------------------------------------------------------- 2. HTTP load

class Backend:
    """The fake HTTP backend in its own process."""

    def __init__(self, loop: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BACKEND, loop], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.close()
            raise SystemExit(f"the backend process did not start: {line!r}")
        self.port = int(line)
        self.url = f"http://{HOST}:{self.port}"

    def _ask(self, cmd: str) -> str:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stats(self) -> tuple[int, float]:
        served, cpu = self._ask("stats").split()
        return int(served), float(cpu)

    def clear(self) -> None:
        self._ask("clear")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class RawPool:
    """Keep-alive HTTP/1.1 GETs over raw asyncio streams, one connection per caller."""

    def __init__(self, port: int, path: str) -> None:
        self.port = port
        self.request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
        self.free: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.all: list[asyncio.StreamWriter] = []

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(HOST, self.port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.all.append(writer)
        return reader, writer

    async def get(self) -> None:
        conn = self.free.pop() if self.free else await self._open()
        reader, writer = conn
        try:
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            at = head.lower().find(b"\r\ncontent-length:")
            length = int(head[at + 17:head.index(b"\r\n", at + 2)]) if at >= 0 else 0
            if length:
                await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        self.free.append(conn)
        if status != 200:
            raise RuntimeError(f"HTTP {status}")

    async def close(self) -> None:
        for writer in self.all:
            writer.close()
        for writer in self.all:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@contextlib.contextmanager
def _no_sniffio_lookups() -> Any:
    """httpcore runs ``import sniffio`` on every request (``current_async_library``);
    without sniffio installed (anyio 4.16 here does not require it) each is a failed
    import, a sys.path search of ~80 us, several per request. ``sys.modules[name] =
    None`` makes the import fail at once: what installing sniffio would give."""
    try:
        import sniffio  # noqa: F401
    except ImportError:
        sys.modules["sniffio"] = None  # type: ignore[assignment]
        try:
            yield
        finally:
            del sys.modules["sniffio"]
    else:
        yield


def soak_http(url: str, port: int, client: str, users: int, duration: float) -> float:
    if client == "httpx-cached":
        with _no_sniffio_lookups():
            return soak_http(url, port, "httpx", users, duration)

    async def main() -> float:
        plan = LoadPlan(duration=duration, concurrency=users)
        if client == "httpx":
            limits = httpx.Limits(max_connections=users, max_keepalive_connections=users)
            async with httpx.AsyncClient(base_url=url, limits=limits) as http:
                async def target() -> None:
                    (await http.get(PATH)).raise_for_status()

                record = await Driver(target, plan).run()
        else:
            pool = RawPool(port, PATH)
            try:
                record = await Driver(pool.get, plan).run()
            finally:
                await pool.close()
        totals = record.totals
        if totals["errors"]:
            raise SystemExit(f"soak {client}: {totals['errors']} errors: "
                             f"{totals.get('error_types')}")
        return totals["calls"] / totals["elapsed_s"]

    return asyncio.run(main())


def locust_http(url: str, users: int, duration: float, tmp: str) -> float:
    locustfile = Path(tmp, "locustfile.py")
    locustfile.write_text(LOCUSTFILE)
    prefix = str(Path(tmp, "run"))
    cmd = [str(Path(sys.executable).with_name("locust")), "-f", str(locustfile), "--headless",
           "-u", str(users), "-r", str(users * 100), "-t", f"{duration:g}s", "--host", url,
           "--only-summary", "--csv", prefix, "--loglevel", "WARNING"]
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False,
                          timeout=duration + 60)
    stats = Path(prefix + "_stats.csv")
    if not stats.exists():
        raise SystemExit(f"locust wrote no CSV (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    with stats.open(newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["Name"] == "Aggregated")
    if int(row["Failure Count"]):
        raise SystemExit(f"locust: {row['Failure Count']} failures")
    return float(row["Requests/s"])


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def bench_http(rounds: int, users: int, duration: float, backend_loop: str,
               ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    backend = Backend(backend_loop)
    rates: dict[str, list[float]] = {"soak+httpx": [], "soak+httpx*": [], "soak+raw": [],
                                     "locust": []}
    util: dict[str, list[float]] = {k: [] for k in rates}
    client_cpu: dict[str, list[float]] = {k: [] for k in rates}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            runs: dict[str, Callable[[], float]] = {
                "soak+httpx": lambda: soak_http(backend.url, backend.port, "httpx", users,
                                                duration),
                "soak+httpx*": lambda: soak_http(backend.url, backend.port, "httpx-cached",
                                                 users, duration),
                "soak+raw": lambda: soak_http(backend.url, backend.port, "raw", users,
                                              duration),
                "locust": lambda: locust_http(backend.url, users, duration, tmp),
            }
            soak_http(backend.url, backend.port, "httpx", users, 1.0)  # warm up
            soak_http(backend.url, backend.port, "raw", users, 1.0)
            for r in range(rounds):
                order = list(runs) if r % 2 == 0 else list(reversed(runs))
                for name in order:
                    backend.clear()
                    served0, cpu0 = backend.stats()
                    own0, kids0 = time.process_time(), _children_cpu()
                    start = time.perf_counter()
                    rates[name].append(runs[name]())
                    wall = time.perf_counter() - start
                    own, kids = time.process_time() - own0, _children_cpu() - kids0
                    served, cpu = backend.stats()
                    # the backend busy share over the client's whole wall (locust's
                    # includes its start-up, when the backend idles)
                    util[name].append((cpu - cpu0) / wall)
                    client_cpu[name].append((own + kids) / max(served - served0, 1) * 1e6)
    finally:
        backend.close()
    med = {k: statistics.median(v) for k, v in rates.items()}
    extra = {k: {"backend_cpu": statistics.median(util[k]),
                 "client_us_per_req": statistics.median(client_cpu[k]),
                 "min": min(rates[k]), "max": max(rates[k])} for k in rates}
    return med, extra


# ---------------------------------------------------------------- 3. sampling cost

def _per_call(fn: Callable[[], Any], n: int, batch: int = 20) -> float:
    out = []
    for _ in range(n // batch):
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        out.append((time.perf_counter() - start) / batch)
    return statistics.median(out)


def bench_sampling(n: int) -> list[tuple[str, float]]:
    resources = _per_call(process_resources, n)

    async def sampler_cost() -> float:
        sampler = Sampler()
        out = []
        for _ in range(n):
            start = time.perf_counter()
            await sampler.sample()
            out.append(time.perf_counter() - start)
        return statistics.median(out)

    sample = asyncio.run(sampler_cost())
    fds = process_resources()["fds"]
    return [(f"process_resources() ({fds} open fds)", resources),
            ("Sampler().sample() (resources + task count)", sample)]


# ---------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=200_000,
                        help="calls per driver-overhead run")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per HTTP run")
    parser.add_argument("--users", type=int, default=8, help="HTTP concurrency / users")
    parser.add_argument("--backend-loop", choices=("asyncio", "uvloop"), default="uvloop",
                        help="event loop of the backend process (its HttpEngine thread)")
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    if not (1 <= args.rounds <= 50 and 1 <= args.users <= 1000
            and 0 < args.duration <= 60 and 1000 <= args.iterations <= 10_000_000):
        raise SystemExit("out of bounds: rounds 1..50, users 1..1000, duration 0..60 s, "
                         "iterations 1000..10M")
    command = shlex.join([os.path.relpath(sys.executable, ROOT),
                          os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    print(f"$ {command}\n(python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"{args.rounds} rounds, medians; order alternates)")
    started = time.perf_counter()

    print("\n== 1. driver overhead: calls/s, soak driver / plain loop (goal >= 0.9) ==")
    for label, driver, plain, base in bench_overhead(args.rounds, args.iterations):
        print(f"{label:40s} {driver:10.0f}/s  vs {base:12s} {plain:10.0f}/s  "
              f"ratio {driver / plain:.2f}")

    print(f"\n== 2. HTTP GET {PATH} on the fake backend (own process, {args.backend_loop} "
          f"loop), {args.users} users, {args.duration:g} s each; soak / locust "
          "(goal >= 1.0) ==")
    med, extra = bench_http(args.rounds, args.users, args.duration, args.backend_loop)
    for name, rate in med.items():
        e = extra[name]
        ratio = f"ratio {rate / med['locust']:.2f}" if name != "locust" else "baseline"
        print(f"{name:12s} {rate:8.0f} req/s (min {e['min']:.0f}, max {e['max']:.0f})  "
              f"{ratio:10s}  backend CPU {e['backend_cpu']:4.0%}  "
              f"client CPU {e['client_us_per_req']:5.0f} us/req")
    best = max(("soak+httpx", "soak+httpx*", "soak+raw"), key=med.__getitem__)
    print(f"fastest soak client: {best} (ratio {med[best] / med['locust']:.2f}); "
          "httpx* = httpx with the per-request failed 'import sniffio' short-cut (as with "
          "sniffio installed);\nlocust's client CPU includes its start-up (~1 s); backend "
          "CPU = its CPU s / client wall, near 100% means backend-bound")

    print(f"\n== 3. sampling cost, median of {args.samples} ==")
    for label, seconds in bench_sampling(args.samples):
        print(f"{label:45s} {seconds * 1e6:8.1f} us/sample = {seconds:.5%} of a 1 s interval")
    print(f"\nruntime {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
