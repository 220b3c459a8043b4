"""Benchmark of the built-in Toxiproxy engine against a direct connection.

    .venv/bin/python benchmarks/bench_toxiproxy.py [--quick] [--pg-dsn postgresql://...]

Prints one table: added round-trip latency (median / p99 over >= 5,000
sequential small round trips to a TCP echo server, and to Postgres
``SELECT 1`` when ``--pg-dsn`` is given), throughput of a large transfer in
1 MiB writes into a sink, and the error of a 100 ms latency toxic (median /
p99 / max over 120 round trips, one per target in turn) while this process idles
and while one of its threads is CPU-bound, for the engine in a thread of this
process and in a child process.

Baselines in the same run: the direct connection for round trips and throughput;
the process engine without its busy-poll window after packets (``busy_poll=False``,
as before ``link.PacketPoll``), with the engines' CPU time per round trip; for the
latency toxic, an echo server that sleeps 100 ms itself before each answer (the
machine's own timer and wake-up lateness, no proxy: the "direct" column) and the
process engine with plain timers (``precise_timers=False``, as before the early
wake-up of ``toxics.TimerPrecision``). With ``$TOXIPROXY_URL`` (a running
toxiproxy-server) or ``$TOXIPROXY_BIN`` (its binary, started here on a free loopback
port) the real server gets a column of its own. The load average is printed with the
table.

Clients, echo and sink servers run as separate helper processes (this same
script with a ``--_helper`` argument), so the figures measure the engine, not
the GIL fights of a client living next to it. The "busy" rows spin a pure
Python thread in *this* process, the one hosting a thread-mode engine, like a
CPU-bound test would.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_resilience.toxiproxy import EngineHandle, start_process, start_thread  # noqa: E402

MiB = 1024 * 1024


# -- helper processes -----------------------------------------------------------------------
def _helper_echo(delay: float = 0.0) -> None:
    """An echo server; with ``delay`` it answers each read after sleeping that long (a
    plain timer: the machine's own wake-up lateness, the latency rows' baseline)."""
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)

    def serve(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while data := conn.recv(65536):
                if delay:
                    time.sleep(delay)
                conn.sendall(data)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def _helper_sink() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)

    def serve(conn: socket.socket) -> None:
        with conn:
            header = b""
            while len(header) < 8:
                header += conn.recv(8 - len(header))
            remaining = int.from_bytes(header, "big")
            buf = bytearray(4 * MiB)
            while remaining > 0:
                n = conn.recv_into(buf)
                if not n:
                    return
                remaining -= n
            conn.sendall(b"k")

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _round_trip(sock: socket.socket, payload: bytes = b"x" * 16) -> float:
    """Send ``payload`` to an echo and read it back; returns the seconds it took."""
    start = time.perf_counter()
    sock.sendall(payload)
    got = 0
    while got < len(payload):
        got += len(sock.recv(len(payload) - got))
    return time.perf_counter() - start


def _helper_rtt(port: int, count: int, warmup: int = 50) -> None:
    with _connect(port) as sock:
        for _ in range(warmup):
            _round_trip(sock)
        samples = [_round_trip(sock) for _ in range(count)]
    print(json.dumps(samples))


def _helper_rr(ports: str, count: int, warmup: int) -> None:
    """Round trips to several targets in turn, one sample each per turn, so that a
    burst of noise on the machine hits every target alike."""
    socks = {name: _connect(port) for name, port in json.loads(ports).items()}
    samples: dict[str, list[float]] = {name: [] for name in socks}
    for turn in range(warmup + count):
        for name, sock in socks.items():
            seconds = _round_trip(sock)
            if turn >= warmup:
                samples[name].append(seconds)
    for sock in socks.values():
        sock.close()
    print(json.dumps(samples))


def _helper_send(port: int, total: int) -> None:
    chunk = b"\0" * MiB
    with socket.create_connection(("127.0.0.1", port)) as sock:
        start = time.perf_counter()
        sock.sendall(total.to_bytes(8, "big"))
        for _ in range(total // MiB):
            sock.sendall(chunk)
        assert sock.recv(1) == b"k"
        print(json.dumps(time.perf_counter() - start))


def _helper_pg(dsn: str, count: int) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(50):
            conn.execute("SELECT 1").fetchone()
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            samples.append(time.perf_counter() - start)
    print(json.dumps(samples))


class HelperFailed(Exception):
    pass


def _run_helper(args: list[str]) -> Any:
    result = subprocess.run(
        [sys.executable, __file__, "--_helper", *args],
        capture_output=True, text=True, check=False, timeout=600,
    )
    if result.returncode:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise HelperFailed(f"{args[0]} helper failed: {last}")
    return json.loads(result.stdout)


@contextmanager
def _server(kind: str, *args: str) -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--_helper", kind, *args], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# -- measurements -----------------------------------------------------------------------------
def _proxy(engine: EngineHandle | _RealServer, name: str, upstream: str) -> int:
    import httpx

    with httpx.Client(base_url=engine.url, timeout=10) as api:
        api.delete(f"/proxies/{name}")
        response = api.post(
            "/proxies", json={"name": name, "upstream": upstream, "listen": "127.0.0.1:0"}
        )
        response.raise_for_status()
        return int(response.json()["listen"].rsplit(":", 1)[1])


def _toxic(engine: EngineHandle | _RealServer, name: str, body: dict[str, Any]) -> None:
    import httpx

    httpx.post(f"{engine.url}/proxies/{name}/toxics", json=body, timeout=10).raise_for_status()


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process, all its threads, in ns resolution (``schedstat``)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):  # a thread that just ended
            continue
    return total / 1e9


def _interleaved(
    targets: dict[str, Any], kind: str, total: int, rounds: int = 5, *extra: str,
    pids: dict[str, int] | None = None,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Samples per target, and the CPU seconds each process in ``pids`` spent while its
    target was measured (warm-up included: it is a few percent of the round trips)."""
    samples: dict[str, list[float]] = {name: [] for name in targets}
    cpu: dict[str, float] = dict.fromkeys(pids or {}, 0.0)
    for _ in range(rounds):
        for name, target in targets.items():
            pid = (pids or {}).get(name)
            before = _cpu_seconds(pid) if pid is not None else 0.0
            samples[name] += _run_helper([kind, str(target), str(total // rounds), *extra])
            if pid is not None:
                cpu[name] += _cpu_seconds(pid) - before
    return samples, cpu


def _added(samples: dict[str, list[float]], modes: list[str]) -> list[str]:
    base = samples["direct"]
    cells = []
    for mode in modes:
        med = statistics.median(samples[mode]) - statistics.median(base)
        p99 = _pct(samples[mode], 0.99) - _pct(base, 0.99)
        cells.append(f"{med * 1e6:+.0f} / {p99 * 1e6:+.0f} us")
    return cells


def _cells(columns: list[str], **values: str) -> list[str]:
    """One row's engine cells: ``values`` by column name, empty elsewhere."""
    return [values.get(column, "") for column in columns]


class _RealServer:
    """A toxiproxy-server to compare with (duck-types the parts of EngineHandle used)."""

    def __init__(self, url: str, pid: int | None) -> None:
        self.url = url.rstrip("/")
        self.pid = pid


@contextmanager
def _real_toxiproxy() -> Iterator[_RealServer | None]:
    """``$TOXIPROXY_URL``: that server; ``$TOXIPROXY_BIN``: started on a free loopback
    port; neither: None. The pid is known (CPU per round trip) only when started here."""
    url = os.environ.get("TOXIPROXY_URL")
    binary = os.environ.get("TOXIPROXY_BIN")
    if url:
        yield _RealServer(url, None)
        return
    if not binary:
        yield None
        return
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Go's flag package takes --host as well as -host (so does our own engine's CLI).
    proc = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        server = _RealServer(f"http://127.0.0.1:{port}", proc.pid)
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"{server.url}/version", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"$TOXIPROXY_BIN {binary} did not start (exit {proc.poll()})")
                time.sleep(0.05)  # polling a child's readiness: there is no event to wait on
        yield server
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def _busy(enabled: bool) -> Iterator[None]:
    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i * i

    thread = threading.Thread(target=spin, name="bench-cpu-bound")
    if enabled:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if enabled:
            thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, smaller transfer")
    parser.add_argument("--pg-dsn", help="also time SELECT 1 against this Postgres")
    parser.add_argument("--_helper", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._helper:
        kind, *rest = args._helper
        if kind == "echo":
            _helper_echo()
        elif kind == "sink":
            _helper_sink()
        elif kind == "delay_echo":
            _helper_echo(float(rest[0]))
        elif kind == "rtt":
            _helper_rtt(int(rest[0]), int(rest[1]), *map(int, rest[2:3]))
        elif kind == "rr":
            _helper_rr(rest[0], int(rest[1]), int(rest[2]))
        elif kind == "send":
            _helper_send(int(rest[0]), int(rest[1]))
        elif kind == "pg":
            _helper_pg(rest[0], int(rest[1]))
        return

    rtts = 1000 if args.quick else 5000
    transfer = (256 if args.quick else 2048) * MiB
    toxic_rtts = 40 if args.quick else 120
    rows: list[tuple[str, ...]] = []

    with _server("echo") as echo_port, _server("sink") as sink_port, \
            _server("delay_echo", "0.1") as delayed_port, _real_toxiproxy() as real:
        echo = f"127.0.0.1:{echo_port}"
        sink = f"127.0.0.1:{sink_port}"
        engines: dict[str, Any] = {"thread": start_thread(), "process": start_process()}
        if real is not None:
            engines["toxiproxy-server"] = real
        columns = list(engines)
        plain = start_process(precise_timers=False)
        no_poll = start_process(busy_poll=False)
        try:
            # Direct and proxied samples are taken in interleaved rounds, so that load
            # from elsewhere on the machine hits all columns alike.
            echo_ports = {"direct": echo_port}
            echo_ports.update({m: _proxy(e, "echo", echo) for m, e in engines.items()})
            echo_ports["no_poll"] = _proxy(no_poll, "echo", echo)
            cpu_pids = {m: e.pid for m, e in engines.items() if e.pid is not None}
            cpu_pids["no_poll"] = no_poll.pid
            rtt, cpu = _interleaved(echo_ports, "rtt", rtts, pids=cpu_pids)
            d_med, d_p99 = statistics.median(rtt["direct"]), _pct(rtt["direct"], 0.99)
            rows.append((
                f"echo RTT, {rtts} round trips: direct median / p99",
                f"{d_med * 1e6:.0f} / {d_p99 * 1e6:.0f} us", *[""] * len(columns), "",
            ))
            rows.append((
                "  added by the proxy: median / p99", "", *_added(rtt, columns),
                "<= 60 / 150 us",
            ))
            rows.append((
                "  baseline: process engine without the busy-poll window", "",
                *_cells(columns, process=_added(rtt, ["no_poll"])[0]), "",
            ))
            per_rtt = {m: f"{cpu[m] / len(rtt[m]) * 1e6:.1f} us" for m in cpu}
            rows.append((
                "  engine CPU per round trip (with its sleeps and wake-ups)", "",
                *[per_rtt.get(m, "") for m in columns], "",
            ))
            rows.append((
                "  baseline: process engine without the busy-poll window", "",
                *_cells(columns, process=per_rtt["no_poll"]), "",
            ))

            if args.pg_dsn:
                from psycopg.conninfo import conninfo_to_dict, make_conninfo

                info = conninfo_to_dict(args.pg_dsn)
                pg_up = f"{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}"
                dsns = {"direct": args.pg_dsn}
                for mode, engine in engines.items():
                    port = _proxy(engine, "pg", pg_up)
                    dsns[mode] = make_conninfo(args.pg_dsn, host="127.0.0.1", port=str(port))
                try:
                    pg, _ = _interleaved(dsns, "pg", rtts)
                except HelperFailed as exc:
                    sys.exit(f"cannot run SELECT 1 through --pg-dsn: {exc}")
                pd_med, pd_p99 = statistics.median(pg["direct"]), _pct(pg["direct"], 0.99)
                rows.append((
                    f"Postgres SELECT 1 x{rtts}: direct median / p99",
                    f"{pd_med * 1e6:.0f} / {pd_p99 * 1e6:.0f} us", *[""] * len(columns), "",
                ))
                rows.append((
                    "  added by the proxy: median / p99", "", *_added(pg, columns),
                    "<= 60 / 150 us",
                ))
            else:
                rows.append(
                    ("Postgres SELECT 1", "skipped (no --pg-dsn)", *[""] * len(columns), "")
                )

            direct_s = _run_helper(["send", str(sink_port), str(transfer)])
            cells = []
            for engine in engines.values():
                port = _proxy(engine, "sink", sink)
                seconds = _run_helper(["send", str(port), str(transfer)])
                cells.append(f"{transfer / seconds / 1e6:.0f} MB/s")
            rows.append((
                f"throughput, {transfer // MiB} MiB in 1 MiB writes",
                f"{transfer / direct_s / 1e6:.0f} MB/s", *cells, ">= 900 MB/s",
            ))

            lat_ports = {"direct": delayed_port}
            for mode, engine in (*engines.items(), ("plain", plain), ("no_poll", no_poll)):
                lat_ports[mode] = _proxy(engine, "lat", echo)
                _toxic(engine, "lat", {"type": "latency", "attributes": {"latency": 100}})

            def error(samples: list[float]) -> str:
                errors = [(s - 0.1) * 1e3 for s in samples]
                return (f"{statistics.median(errors):+.2f} / {_pct(errors, 0.99):+.2f} / "
                        f"{max(errors):+.2f} ms")

            for busy in (False, True):
                with _busy(busy):
                    # 2 warm-up round trips, not 50: each one takes 100 ms here.
                    # One sample per target in turn (a burst of noise hits all alike).
                    lat = _run_helper(["rr", json.dumps(lat_ports), str(toxic_rtts), "2"])
                label = "busy thread in this process" if busy else "this process idle"
                rows.append((
                    f"latency 100 ms error, {toxic_rtts} RTTs, {label}: med / p99 / max",
                    error(lat["direct"]), *[error(lat[m]) for m in columns],
                    "p99 <= 2 ms (process)",
                ))
                rows.append((
                    "  baseline: process engine with plain timers", "",
                    *_cells(columns, process=error(lat["plain"])), "",
                ))
                rows.append((
                    "  baseline: process engine without the busy-poll window", "",
                    *_cells(columns, process=error(lat["no_poll"])), "",
                ))
        finally:
            for engine in (engines["thread"], engines["process"], plain, no_poll):
                engine.stop()

    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; direct column of the "
          "latency rows: an echo server sleeping 100 ms itself (no proxy)")
    header = ("measurement", "direct", *(f"engine: {m}" if m != "toxiproxy-server" else m
                                          for m in columns), "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print(line)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print(line)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print(line)


if __name__ == "__main__":
    main()
