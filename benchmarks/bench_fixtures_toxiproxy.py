"""Per-test overhead of the Toxiproxy fixtures (target: ``pg_proxy`` adds < 5 ms per test).

Runs without pytest: times N cycles of what each fixture does per test, against
one engine (and, unless ``--no-postgres``, one local Postgres), and prints
min / median / p95 in milliseconds with ratios.

    .venv/bin/python benchmarks/bench_fixtures_toxiproxy.py [-n 300] [--engine process|thread]

Cycles:
  baseline            nothing (the timer's own cost)
  proxy_for           create a proxy + delete it (what ``proxy_for`` adds per test)
  proxy_for+toxic     the same with one latency toxic added and removed
  proxy_for+conn      the same plus one TCP connection through the proxy
  postgres_db         CREATE DATABASE from template + DROP (the lead's per-test fixture)
  pg_proxy            postgres_db + proxy create/delete (what a pg_proxy test pays)
  pg_proxy+query      pg_proxy + connect through the proxy, SELECT 1, close
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import threading
import time
from collections.abc import Callable

from pytest_resilience.services.toxiproxy import PgProxy, ProxyFactory, start_builtin
from pytest_resilience.toxiproxy.client import Client


def _accept_and_close(sock: socket.socket) -> None:
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        conn.close()


def measure(n: int, cycle: Callable[[], None], warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        cycle()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        cycle()
        out.append((time.perf_counter() - start) * 1000)
    return out


def row(name: str, ms: list[float], ref: float | None) -> str:
    ms = sorted(ms)
    med = statistics.median(ms)
    p95 = ms[int(len(ms) * 0.95) - 1]
    ratio = f"{med / ref:6.2f}x" if ref else "     -"
    return f"{name:<18} {ms[0]:8.3f} {med:8.3f} {p95:8.3f}   {ratio}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="cycles per measurement")
    parser.add_argument("--engine", choices=("process", "thread"), default="process")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()

    upstream = socket.create_server(("127.0.0.1", 0))
    up_port = upstream.getsockname()[1]
    sink = threading.Thread(target=_accept_and_close, args=(upstream,), daemon=True)
    sink.start()
    start = time.perf_counter()
    server = start_builtin(args.engine, seed=1)
    started = (time.perf_counter() - start) * 1000
    results: dict[str, list[float]] = {}
    try:
        with Client(server.url, namespace="bench") as client:
            def proxy_cycle() -> None:
                factory = ProxyFactory(client)
                factory("127.0.0.1", up_port)
                factory.close()

            def proxy_toxic_cycle() -> None:
                factory = ProxyFactory(client)
                factory("127.0.0.1", up_port).latency(100)
                factory.close()

            def proxy_conn_cycle() -> None:
                factory = ProxyFactory(client)
                proxy = factory("127.0.0.1", up_port)
                socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()
                factory.close()

            results["baseline"] = measure(args.n, lambda: None)
            results["proxy_for"] = measure(args.n, proxy_cycle)
            results["proxy_for+toxic"] = measure(args.n, proxy_toxic_cycle)
            results["proxy_for+conn"] = measure(args.n, proxy_conn_cycle)
            if not args.no_postgres:
                _postgres_cycles(client, args.n, results)
    finally:
        server.stop()
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        upstream.close()
        sink.join(5)

    ref = statistics.median(results.get("postgres_db", [])) if "postgres_db" in results else None
    print(f"engine: built-in ({args.engine}), started in {started:.1f} ms; "
          f"{args.n} cycles each; times in ms")
    print(f"{'cycle':<18} {'min':>8} {'median':>8} {'p95':>8}   vs postgres_db")
    for name, ms in results.items():
        print(row(name, ms, ref))
    if "pg_proxy" in results and ref:
        added = statistics.median(results["pg_proxy"]) - ref
        print(f"pg_proxy adds {added:.3f} ms per test over postgres_db "
              f"(proxy_for alone: {statistics.median(results['proxy_for']):.3f} ms; "
              f"target < 5 ms)")


def _postgres_cycles(client: Client, n: int, results: dict[str, list[float]]) -> None:
    from pytest_resilience.services.postgres import PostgresDatabase, running_postgres

    with running_postgres("local") as pg:
        def db_cycle() -> None:
            name = pg.create_database()
            pg.drop_database(name)

        def pg_proxy_cycle() -> None:
            name = pg.create_database()
            factory = ProxyFactory(client)
            proxy: PgProxy = factory.pg_proxy(PostgresDatabase(pg, name))
            assert proxy.dsn
            factory.close()
            pg.drop_database(name)

        def pg_proxy_query_cycle() -> None:
            import psycopg

            name = pg.create_database()
            factory = ProxyFactory(client)
            proxy = factory.pg_proxy(PostgresDatabase(pg, name))
            with psycopg.connect(proxy.dsn, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
            factory.close()
            pg.drop_database(name)

        cycles = max(20, n // 5)  # database cycles are ~25 ms each
        results["postgres_db"] = measure(cycles, db_cycle, warmup=3)
        results["pg_proxy"] = measure(cycles, pg_proxy_cycle, warmup=3)
        results["pg_proxy+query"] = measure(cycles, pg_proxy_query_cycle, warmup=3)


if __name__ == "__main__":
    main()
