"""Lifecycle of the local server: nothing outlives a pytest run, however it ends."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_resilience.errors import ServiceError
from pytest_resilience.services import postgres as pg

pytestmark = pytest.mark.timeout(180)

# The inner test records where its server lives, then does what the case asks.
INNER = """
import json, os, signal, threading
from pathlib import Path

def test_uses_postgres(postgres_db):
    server = postgres_db.server
    base = Path(server.unix_socket).parent
    pid = int((base / "data" / "postmaster.pid").read_text().split()[0])
    Path({info!r}).write_text(json.dumps({{"base": str(base), "pid": pid}}))
    with postgres_db.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    {action}
"""


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)  # polling for an external process to finish, bounded
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _assert_gone(info_file: Path, timeout: float = 10.0) -> None:
    info = json.loads(info_file.read_text())
    _wait_for(lambda: not _alive(info["pid"]), timeout, f"postmaster {info['pid']} to exit")
    _wait_for(lambda: not Path(info["base"]).exists(), timeout, f"{info['base']} removal")


@pytest.mark.parametrize(
    ("action", "outcome"),
    [("pass", {"passed": 1}), ("assert False", {"failed": 1})],
    ids=["passing", "failing"],
)
def test_nothing_remains_after_run(
    pytester: pytest.Pytester, action: str, outcome: dict[str, int]
) -> None:
    info = pytester.path / "info.json"
    pytester.makepyfile(INNER.format(info=str(info), action=action))
    result = pytester.runpytest()
    result.assert_outcomes(**outcome)
    _assert_gone(info, timeout=1.0)  # stopped at session end, not by the watchdog


def test_nothing_remains_after_ctrl_c(pytester: pytest.Pytester) -> None:
    info = pytester.path / "info.json"
    # Python keeps SIGINT ignored when it starts ignored (nohup, '&'): the inner test
    # restores Python's handler first, so this test does not depend on how it was started.
    action = ("signal.signal(signal.SIGINT, signal.default_int_handler); "
              "os.kill(os.getpid(), signal.SIGINT)")
    pytester.makepyfile(INNER.format(info=str(info), action=action))
    result = pytester.runpytest_subprocess(timeout=120)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*KeyboardInterrupt*"])
    _assert_gone(info, timeout=5.0)


def test_sigkilled_pytest_leaves_no_server(pytester: pytest.Pytester) -> None:
    info = pytester.path / "info.json"
    pytester.makepyfile(INNER.format(
        info=str(info), action="threading.Event().wait(120)  # until killed"
    ))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=pytester.path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(info.exists, 60, "the inner test to start its server")
        _wait_for(lambda: info.read_text().endswith("}"), 5, "the info file")
        assert _alive(json.loads(info.read_text())["pid"])
        proc.kill()
        proc.wait(10)
        killed_at = time.monotonic()
        _assert_gone(info, timeout=5.0)
        assert time.monotonic() - killed_at < 5.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_missing_binaries_is_one_clear_error(pytester: pytest.Pytester, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    pytester.makepyfile("def test_db(postgres_db):\n    pass\n")
    result = pytester.runpytest(f"--resilience-pg-bin={empty}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at setup of test_db*",
        f"no Postgres server binaries (initdb, postgres) found; searched {empty}.",
        "Fix: install them (Debian/Ubuntu: apt-get install postgresql; *",
    ], consecutive=True)
    assert "Traceback" not in result.stdout.str()
    assert "During handling" not in result.stdout.str()
    assert not list(Path("/tmp").glob(f"pytest-resilience-pg-*/{empty.name}"))


def test_unreachable_external_dsn_is_a_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_db(postgres):\n    pass\n")
    dsn = "postgresql://someone:hunter2@127.0.0.1:1/nodb"
    result = pytester.runpytest("--resilience-postgres=external",
                                f"--resilience-postgres-dsn={dsn}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([
        "cannot connect to the external Postgres "
        "'postgresql://someone:***@127.0.0.1:1/nodb': *",
    ])
    assert "hunter2" not in result.stdout.str()


def test_external_mode_uses_the_given_server(
    pytester: pytest.Pytester, postgres: pg.PostgresServer
) -> None:
    pytester.makepyfile("""
        def test_db(postgres, postgres_db):
            assert postgres.mode == "external"
            with postgres_db.connect() as conn:
                assert conn.execute("SELECT current_database()").fetchone()[0].startswith("test_")
    """)
    result = pytester.runpytest("--resilience-postgres=external",
                                f"--resilience-postgres-dsn={postgres.dsn}")
    result.assert_outcomes(passed=1)


def test_docker_mode_skips_cleanly_without_engine(pytester: pytest.Pytester) -> None:
    if pg.docker_available() is None:
        pytest.skip("a Docker engine is reachable here; the skip path cannot be shown")
    pytester.makepyfile("def test_db(postgres):\n    pass\n")
    result = pytester.runpytest("--resilience-postgres=docker", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED * --resilience-postgres=docker: *"])


def test_port_clash_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        real = pg.propose_port
        monkeypatch.setattr(pg, "propose_port", lambda: next(ports, None) or real())
        server, _ = pg.start_local()
    try:
        with server.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.close()


def test_port_clash_everywhere_shows_the_log_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(pg, "propose_port", lambda: port)
        before = set(Path("/tmp").glob("pytest-resilience-pg-*"))
        with pytest.raises(
            ServiceError, match=r"(?s)could not bind a free port .*Address already in use"
        ):
            pg.start_local()
    assert set(Path("/tmp").glob("pytest-resilience-pg-*")) <= before


def test_xdist_workers_each_get_a_server(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import os
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_db(postgres_db, i):
            with postgres_db.connect(autocommit=True) as conn:
                conn.execute("CREATE TABLE t (worker text)")
                conn.execute("INSERT INTO t VALUES (%s)", (os.environ["PYTEST_XDIST_WORKER"],))
                assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
    """)
    result = pytester.runpytest_subprocess("-p", "xdist", "-n", "2", timeout=120)
    result.assert_outcomes(passed=4)


def test_cache_is_filled_once_and_reused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first, t1 = pg.start_local(cache_dir=cache)
    first.close()
    second, t2 = pg.start_local(cache_dir=cache)
    second.close()
    assert "initdb" in t1
    assert "data_dir_copied" in t2
    entries = [p.name for p in cache.iterdir()]
    assert len(entries) == 1
    assert entries[0].startswith(f"pg{first.version}-")
