"""Postgres start-up and per-test cost: pytest-resilience vs pytest-postgresql.

Both are measured the same way, in one run, on this machine: a generated test
file with N tests that each run ``SELECT 1`` on the plugin's per-test database
fixture. A conftest stamps ``time.perf_counter()`` at ``pytest_sessionstart`` and
at the start of every test body, so

* session start -> first query  = first test's stamp - session start
  (server start, or the cached data dir copy, plus the first database), and
* per-test database cost       = (last stamp - first stamp) / (N - 1)
  (create from template, connect, SELECT 1, drop: the whole fixture cycle).

psycopg is imported by the conftest before the first stamp on both sides:
pytest-postgresql imports it when its plugin loads (before the session starts), ours
only when a test needs it, and the driver's import is the test's cost, not the fixture's.

Baselines measured in the same run, so the figures can be judged on a loaded machine:
the same file with tests that use no fixture (pytest's own start and per-test cost),
and the floors of the work itself on a bare server: ``cp -a`` of the cached data
directory, spawn -> ready -> first ``SELECT 1``, ``CREATE DATABASE ... TEMPLATE`` and
``DROP DATABASE``. A timeline of ``start_local``'s steps (in this process) shows where
the session start goes.

Run:  .venv/bin/python benchmarks/bench_postgres.py [--tests 30] [--rounds 3]
(``--help`` explains the rows and how to get the pytest-postgresql reference row).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

CONFTEST = """
import json, os, time
import psycopg  # the driver's own import (~0.15 s) is not the fixture's cost: keep it out
STAMPS = []
def pytest_sessionstart(session):
    STAMPS.append(time.perf_counter())
def pytest_sessionfinish(session):
    with open(os.environ["BENCH_OUT"], "w") as f:
        json.dump(STAMPS, f)
"""

OURS = """
import conftest, time
def _q(db):
    with db.connect() as conn:
        conn.execute("SELECT 1").fetchone()
{tests}
"""
OURS_TEST = """
def test_{i}(postgres_db):
    conftest.STAMPS.append(time.perf_counter())
    _q(postgres_db)
"""

BARE_TEST = """
def test_{i}():
    conftest.STAMPS.append(time.perf_counter())
"""

THEIRS = """
import conftest, time
{tests}
"""
THEIRS_TEST = """
def test_{i}(postgresql):
    conftest.STAMPS.append(time.perf_counter())
    postgresql.execute("SELECT 1").fetchone()
"""


DESCRIPTION = """\
Postgres start-up and per-test cost: pytest-resilience vs pytest-postgresql.

What it measures: a generated test file of N tests (--tests), each running SELECT 1 on
a fresh per-test database, run by pytest in a subprocess, --rounds times; the median of
the rounds is shown for two figures:
  start->1st query  session start to the first test body: server start (or the cached
                    data directory's copy) plus the first database
  per test          one whole fixture cycle: create the database from a template,
                    connect, SELECT 1, drop it
The rows:
  pytest-resilience postgres_db (cold)  empty cache (--resilience-cache-dir): initdb
  pytest-resilience postgres_db (warm)  the data directory the cold run cached
  pytest-postgresql postgresql          the reference row, from the same machine and run

The baseline is that reference row: the figures are also printed as ratios
pytest-postgresql / pytest-resilience (warm), so they mean the same on a slow or loaded
machine; the goals are warm start->1st query <= 200 ms and <= 25 ms per test.
"""

EPILOG = """\
the reference row (pytest-postgresql) is left out, with the reason printed, when:
  * pytest-postgresql is not installed: it comes with the bench extra
      pip install -e '.[bench]'      (or: scripts/run bench, which installs it)
  * no pg_ctl is found (on PATH or /usr/lib/postgresql/*/bin): apt-get install postgresql
  * it would run as root: pg_ctl refuses root and pytest-postgresql has no run-as
    option, so as root this script runs that side as the 'postgres' account (runuser),
    and that account must be able to execute this Python and import its packages. A
    Python under /root (pyenv, or a venv made from one: /root is drwx------) is out of
    its reach. Use a venv made from the system Python, outside /root (the checkout must
    be readable by 'postgres' too):
      /usr/bin/python3 -m venv /opt/resilience-bench
      /opt/resilience-bench/bin/pip install -e '.[bench]'
      /opt/resilience-bench/bin/python benchmarks/bench_postgres.py
    or run the script as a normal user, or (throwaway machines only) chmod o+x /root.
"""


ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _pg_ctl() -> str | None:
    found = shutil.which("pg_ctl") or next(
        iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True)), None
    )
    return str(found) if found else None


def _closed_dirs(path: Path) -> list[str]:
    """Directories on the way to *path* (and to what its symlinks point at) that other
    accounts cannot enter (no ``o+x``)."""
    closed: list[str] = []
    for target in dict.fromkeys([path.absolute(), path.resolve()]):
        for parent in reversed(target.parents):
            try:
                mode = parent.stat().st_mode
            except OSError:
                continue
            if not mode & stat.S_IXOTH and str(parent) not in closed:
                closed.append(str(parent))
    return closed


def _no_reference() -> str | None:
    """Why the pytest-postgresql reference row cannot be measured here (None: it can)."""
    try:
        import pytest_postgresql  # noqa: F401
    except ImportError:
        return ("pytest-postgresql is not installed: pip install -e '.[bench]' "
                "(or scripts/run bench)")
    if _pg_ctl() is None:
        return "pytest-postgresql needs pg_ctl and none was found: apt-get install postgresql"
    if os.geteuid() != 0:
        return None
    probe = subprocess.run(
        ["runuser", "-u", "postgres", "--", sys.executable, "-c",
         "import pytest, pytest_postgresql, psycopg"],
        capture_output=True, text=True,
    )
    if probe.returncode == 0:
        return None
    closed = _closed_dirs(Path(sys.executable))
    why = (f"{', '.join(closed)} cannot be entered by other accounts" if closed
           else (probe.stderr.strip().splitlines() or ["?"])[-1])
    return (
        "running as root: pg_ctl refuses root, so pytest-postgresql runs as the 'postgres' "
        f"account, which cannot run {sys.executable} ({why}). To get the row, use a venv "
        "made from the system Python outside /root:\n"
        "  /usr/bin/python3 -m venv /opt/resilience-bench\n"
        "  /opt/resilience-bench/bin/pip install -e '.[bench]'\n"
        "  /opt/resilience-bench/bin/python benchmarks/bench_postgres.py\n"
        "or run as a normal user, or (throwaway machines only) chmod o+x "
        + (closed[0] if closed else "the directories on the way to this Python")
    )


def _run(kind: str, n: int, workdir: Path, env: dict[str, str]) -> tuple[float, float]:
    template, test = {
        "ours": (OURS, OURS_TEST), "bare": (OURS, BARE_TEST), "theirs": (THEIRS, THEIRS_TEST),
    }[kind]
    tests = "".join(test.format(i=i) for i in range(n))
    (workdir / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (workdir / "test_bench.py").write_text(template.format(tests=tests))
    out = workdir / "stamps.json"
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_bench.py"]
    if kind in ("ours", "bare"):
        args += ["-p", "no:postgresql"]
    else:
        args += ["-p", "no:pytest_resilience", f"--postgresql-exec={_pg_ctl()}"]
    cmd: list[str] = args
    if os.geteuid() == 0 and kind == "theirs":
        # pg_ctl refuses root; pytest-postgresql has no run-as option.
        cmd = ["runuser", "-u", "postgres", "--", *args]
    env = env | {"BENCH_OUT": str(out)}
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    stamps = json.loads(out.read_text())
    start, first, last = stamps[0], stamps[1], stamps[-1]
    return first - start, (last - first) / (n - 1)


def _floors(cache: Path, rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """The work's own floors on a bare server, and ``start_local``'s step timeline."""
    import psycopg

    from pytest_resilience.services import postgres as pg
    from pytest_resilience.services.supervise import log_tail, propose_port

    floors: dict[str, list[float]] = {}
    steps: dict[str, list[float]] = {}
    binaries = pg.find_binaries()
    run_as = pg.run_as_account()
    cached = next(p for p in cache.iterdir() if (p / "PG_VERSION").is_file())
    for _ in range(rounds):
        base = Path(tempfile.mkdtemp(prefix="bench-pg-floor-", dir=pg._temp_root()))
        try:
            run_as.chown(base)
            sock = base / "sock"
            sock.mkdir(mode=0o700)
            run_as.chown(sock)
            t0 = time.perf_counter()
            pg._copy_tree(cached, base / "data")
            t1 = time.perf_counter()
            port = propose_port()
            postmaster = pg._Postmaster(binaries, base, base / "data", sock, port, run_as,
                                        base / "log")
            try:
                if not pg._wait_ready(postmaster, base / "data", time.monotonic() + 30):
                    raise SystemExit(f"bare postgres did not start: {log_tail(base / 'log')}")
                with psycopg.connect(host=str(sock), port=port, user="postgres",
                                     dbname="postgres", autocommit=True) as conn:
                    conn.execute("SELECT 1").fetchone()
                    t2 = time.perf_counter()
                    for i in range(5):
                        c0 = time.perf_counter()
                        conn.execute(f"CREATE DATABASE f{i} TEMPLATE template1 STRATEGY FILE_COPY")
                        c1 = time.perf_counter()
                        conn.execute(f"DROP DATABASE f{i} WITH (FORCE)")
                        c2 = time.perf_counter()
                        floors.setdefault("create", []).append(c1 - c0)
                        floors.setdefault("drop", []).append(c2 - c1)
            finally:
                postmaster.stop()
            floors.setdefault("copy", []).append(t1 - t0)
            floors.setdefault("spawn", []).append(t2 - t1)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        # The plugin's own start, step by step (seconds since start_local was called).
        t0 = time.perf_counter()
        server, timings = pg.start_local(cache_dir=cache.parent / cache.name, prefetch=True)
        try:
            assert server._pool is not None
            server._pool.acquire()
            timings["first database"] = time.perf_counter() - t0
        finally:
            server.close()
        for key, value in timings.items():
            steps.setdefault(key, []).append(value)
    return floors, steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tests", type=int, default=30, metavar="N",
                        help="tests per generated file, >= 2 (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, metavar="R",
                        help="runs of each row; the median is shown (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="10 tests, 1 round")
    ns = parser.parse_args()
    if ns.quick:
        ns.tests, ns.rounds = 10, 1
    if ns.tests < 2 or ns.rounds < 1:
        parser.error("--tests must be at least 2 and --rounds at least 1")
    kinds = ["bare", "ours"]
    missing = _no_reference()
    if missing is None:
        kinds.append("theirs")
    else:
        print(f"no pytest-postgresql reference row: {missing}\n(see --help)", file=sys.stderr)
    results: dict[str, dict[str, list[float]]] = {}
    floors: dict[str, list[float]] = {}
    steps: dict[str, list[float]] = {}
    cache_parent = Path(tempfile.mkdtemp(prefix="bench-pg-cache-"))
    try:
        for r in range(ns.rounds):
            for kind in kinds:
                scenarios = {"theirs": ["warm"], "bare": ["-"]}.get(kind, ["cold", "warm"])
                for temp in scenarios:
                    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
                        work = Path(tmp)
                        os.chmod(work, 0o777)
                        env = dict(os.environ)
                        cache = cache_parent / f"round{r}"
                        if temp == "cold":
                            shutil.rmtree(cache, ignore_errors=True)
                        env["PYTEST_ADDOPTS"] = f"--resilience-cache-dir={cache}"
                        if kind == "theirs":
                            env.pop("PYTEST_ADDOPTS")
                        start, per_test = _run(kind, ns.tests, work, env)
                        row = results.setdefault(f"{kind}/{temp}", {"start": [], "test": []})
                        row["start"].append(start)
                        row["test"].append(per_test)
            # The floors in the same round, so they see the same load as the figures.
            round_floors, round_steps = _floors(cache_parent / f"round{r}", 1)
            for target, source in ((floors, round_floors), (steps, round_steps)):
                for key, values in source.items():
                    target.setdefault(key, []).extend(values)
    finally:
        shutil.rmtree(cache_parent, ignore_errors=True)

    def med(values: list[float]) -> float:
        return statistics.median(values)

    load = os.getloadavg()

    print(f"\n{ns.tests} tests per run, {ns.rounds} round(s), median of rounds; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print(f"{'fixture':38} {'start->1st query':>17} {'per test':>10}")
    names = {
        "bare/-": "pytest alone (tests without fixtures)",
        "ours/cold": "pytest-resilience postgres_db (cold)",
        "ours/warm": "pytest-resilience postgres_db (warm)",
        "theirs/warm": "pytest-postgresql postgresql",
    }
    for key, row in results.items():
        start, per_test = med(row["start"]) * 1000, med(row["test"]) * 1000
        print(f"{names[key]:38} {start:14.0f} ms {per_test:7.1f} ms")

    ms = {k: med(v) * 1000 for k, v in floors.items()}
    bare, warm = results["bare/-"], results["ours/warm"]
    start_floor = med(bare["start"]) * 1000 + ms["copy"] + ms["spawn"]
    print("\nsession start, step by step (start_local in this process, ms since the call):")
    print("  " + ", ".join(f"{k} {med(v) * 1000:.0f}" for k, v in steps.items()))
    print("\nfloors on a bare server (same run): "
          f"cp -a of the cached data dir {ms['copy']:.0f} ms, spawn -> ready -> SELECT 1 "
          f"{ms['spawn']:.0f} ms, CREATE DATABASE {ms['create']:.1f} ms, "
          f"DROP DATABASE {ms['drop']:.1f} ms")
    rows = [
        ("warm start -> 1st query", med(warm["start"]) * 1000,
         f"floor {start_floor:.0f} ms (pytest alone {med(bare['start']) * 1000:.0f} + copy "
         f"+ spawn->SELECT 1)", "<= 200 ms"),
        ("per test", med(warm["test"]) * 1000,
         f"pytest alone {med(bare['test']) * 1000:.1f} ms; CREATE + DROP "
         f"{ms['create'] + ms['drop']:.1f} ms (off the critical path)", "<= 25 ms"),
    ]
    print(f"\n{'figure':24} {'measured':>9}  {'baseline, same run':62} goal")
    for name, value, base, goal in rows:
        print(f"{name:24} {value:6.1f} ms  {base:62} {goal}")
    if "theirs/warm" in results:
        ref = results["theirs/warm"]
        ours = results["ours/warm"]
        print(
            f"\nratios (pytest-postgresql / ours, warm cache): session start "
            f"{med(ref['start']) / med(ours['start']):.1f}x, per test "
            f"{med(ref['test']) / med(ours['test']):.1f}x"
        )


if __name__ == "__main__":
    main()
