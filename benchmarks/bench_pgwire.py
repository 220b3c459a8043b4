"""Benchmark of the Postgres fault stage (pytest_resilience.pgwire) with no rule armed,
against a direct connection and the built-in Toxiproxy engine (a plain TCP proxy).

    .venv/bin/python benchmarks/bench_pgwire.py [--quick] [--pg-dsn postgresql://...]

Without ``--pg-dsn`` a local Postgres is started as the ``postgres`` fixture does. Prints
one table: ``SELECT 1`` round trips (psycopg, extended protocol; median / p99 over >= 5,000
sequential queries) and the throughput of a large ``COPY ... TO STDOUT``, for each path,
with the ratios the goals are stated in (stage's added latency / plain proxy's added
latency <= 1.3; stage's COPY throughput / plain proxy's >= 0.8). Both proxies run on a
thread of this process (uvloop); the clients run in helper processes (this script with
``--_helper``). Each ``SELECT 1`` helper holds one connection per path and alternates
blocks of 10 queries between them (in forward, then reverse order), so that machine noise,
which drifts on a scale of milliseconds to seconds, hits every column alike; the COPY
helpers run in interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_resilience import pgwire  # noqa: E402
from pytest_resilience.toxiproxy import EngineHandle, start_thread  # noqa: E402

COPY_SQL = ("COPY (SELECT g, md5(g::text), now() FROM generate_series(1, {rows}) g) "
            "TO STDOUT")


BLOCK = 10


def _helper_pg(targets: str, count: int) -> None:
    """``count`` timed ``SELECT 1`` per path of ``targets`` (JSON name -> DSN), in blocks
    of :data:`BLOCK` alternating between the paths."""
    import psycopg

    dsns: dict[str, str] = json.loads(targets)
    conns = {name: psycopg.connect(dsn, autocommit=True) for name, dsn in dsns.items()}
    try:
        for conn in conns.values():
            for _ in range(50):
                conn.execute("SELECT 1").fetchone()
        samples: dict[str, list[float]] = {name: [] for name in conns}
        order = list(conns.items())
        for block in range(max(1, count // BLOCK)):
            for name, conn in order if block % 2 else reversed(order):
                out = samples[name]
                for _ in range(BLOCK):
                    start = time.perf_counter()
                    conn.execute("SELECT 1").fetchone()
                    out.append(time.perf_counter() - start)
    finally:
        for conn in conns.values():
            conn.close()
    print(json.dumps(samples))


def _helper_copy(dsn: str, rows: int) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        total = 0
        start = time.perf_counter()
        with cur.copy(COPY_SQL.format(rows=rows)) as copy:
            for block in copy:
                total += len(block)
        print(json.dumps([total, time.perf_counter() - start]))


def _run_helper(args: list[str]) -> Any:
    result = subprocess.run([sys.executable, __file__, "--_helper", *args],
                            capture_output=True, text=True, check=False, timeout=600)
    if result.returncode:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        sys.exit(f"{args[0]} helper failed: {last}")
    return json.loads(result.stdout)


def _toxiproxy(engine: EngineHandle, upstream: str) -> int:
    import httpx

    with httpx.Client(base_url=engine.url, timeout=10) as api:
        api.delete("/proxies/pg")
        response = api.post("/proxies", json={"name": "pg", "upstream": upstream,
                                               "listen": "127.0.0.1:0"})
        response.raise_for_status()
        return int(response.json()["listen"].rsplit(":", 1)[1])


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, smaller COPY")
    parser.add_argument("--pg-dsn", help="Postgres to use (default: start a local one)")
    parser.add_argument("--_helper", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._helper:
        kind, target, n = args._helper
        (_helper_pg if kind == "pg" else _helper_copy)(target, int(n))
        return

    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    rtts = 1000 if args.quick else 5000
    rows = 300_000 if args.quick else 2_000_000
    rounds = 5
    server = None
    if args.pg_dsn:
        dsn = args.pg_dsn
    else:
        from pytest_resilience.services.postgres import start_postgres

        server = start_postgres("local")
        dsn = server.dsn
    info = conninfo_to_dict(dsn)
    host, port = str(info.get("host", "127.0.0.1")), int(str(info.get("port", 5432)))
    engine = start_thread()
    stage = pgwire.start(host, port)
    try:
        dsns = {
            "direct": dsn,
            "toxiproxy": make_conninfo(dsn, host="127.0.0.1",
                                       port=str(_toxiproxy(engine, f"{host}:{port}"))),
            "pgwire": make_conninfo(dsn, host=stage.host, port=str(stage.port)),
        }
        rtt: dict[str, list[float]] = {k: [] for k in dsns}
        copy: dict[str, list[float]] = {k: [] for k in dsns}
        size = 0
        for _ in range(rounds):
            for name, samples in _run_helper(["pg", json.dumps(dsns),
                                              str(rtts // rounds)]).items():
                rtt[name] += samples
        for _ in range(3):
            for name, target in dsns.items():
                size, seconds = _run_helper(["copy", target, str(rows)])
                copy[name].append(size / seconds)
        assert stage.injections == []
    finally:
        stage.close()
        engine.stop()
        if server is not None:
            server.close()

    base_med, base_p99 = statistics.median(rtt["direct"]), _pct(rtt["direct"], 0.99)
    added = {k: (statistics.median(v) - base_med, _pct(v, 0.99) - base_p99)
             for k, v in rtt.items()}
    tput = {k: statistics.median(v) for k, v in copy.items()}
    ratio_lat = added["pgwire"][0] / added["toxiproxy"][0] if added["toxiproxy"][0] > 0 \
        else float("inf")
    ratio_tput = tput["pgwire"] / tput["toxiproxy"]

    def us(pair: tuple[float, float]) -> str:
        return f"{pair[0] * 1e6:+.0f} / {pair[1] * 1e6:+.0f} us"

    rows_out = [
        (f"SELECT 1 x{rtts}: median / p99", f"{base_med * 1e6:.0f} / {base_p99 * 1e6:.0f} us",
         "", "", ""),
        ("  added by the proxy: median / p99", "", us(added["toxiproxy"]), us(added["pgwire"]),
         f"{ratio_lat:.2f}x (<= 1.3x)"),
        (f"COPY TO STDOUT, {rows:,} rows ({size / 1e6:.0f} MB), median of 3",
         f"{tput['direct'] / 1e6:.0f} MB/s", f"{tput['toxiproxy'] / 1e6:.0f} MB/s",
         f"{tput['pgwire'] / 1e6:.0f} MB/s", f"{ratio_tput:.2f}x (>= 0.8x)"),
    ]
    header = ("measurement", "direct", "toxiproxy (thread)", "pgwire stage (thread)",
              "stage / toxiproxy")
    widths = [max(len(r[i]) for r in [header, *rows_out]) for i in range(5)]
    line = "  ".join("-" * w for w in widths)
    print(line)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print(line)
    for row in rows_out:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print(line)


if __name__ == "__main__":
    main()
