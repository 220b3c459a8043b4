"""The local cluster on a shared machine: TCP needs the session password, the unix
socket is this account's only, the cache holds no secret, no output shows it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pytest_resilience.services import postgres as pg
from pytest_resilience.services.postgres import PostgresDatabase, PostgresServer

pytestmark = pytest.mark.timeout(180)


def _local_only(postgres: PostgresServer) -> None:
    if postgres.mode != "local":
        pytest.skip("checks the cluster the plugin starts itself (--resilience-postgres=local)")


def test_tcp_login_needs_the_session_password(postgres_db: PostgresDatabase) -> None:
    _local_only(postgres_db.server)
    common = {"host": "127.0.0.1", "port": postgres_db.port, "user": "postgres",
              "dbname": postgres_db.dbname, "connect_timeout": 10}
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(**common, password="").close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(**common, password="postgres").close()
    with psycopg.connect(postgres_db.dsn) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


def test_through_pg_proxy_too(pg_proxy: Any) -> None:
    port = pg_proxy.port
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(host="127.0.0.1", port=port, user="postgres", password="",
                        dbname=pg_proxy.dbname, connect_timeout=10).close()
    with psycopg.connect(pg_proxy.dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_unix_socket_directory_is_private(postgres: PostgresServer) -> None:
    _local_only(postgres)
    assert postgres.unix_socket is not None
    for path in (Path(postgres.unix_socket), Path(postgres.unix_socket).parent):
        assert os.stat(path).st_mode & 0o077 == 0, f"{path} is reachable by other accounts"


def test_password_not_in_repr(postgres_db: PostgresDatabase, pg_proxy: Any) -> None:
    password = postgres_db.password
    assert password
    for obj in (postgres_db.server, postgres_db, pg_proxy):
        assert password not in repr(obj)


# A raw StartupMessage over TCP, stdlib only: what does the server ask of a stranger?
PROBE = textwrap.dedent(
    """
    import json, socket, struct
    out = {}
    def startup(port):
        s = socket.create_connection(("127.0.0.1", port), timeout=15)
        params = b"user\\0postgres\\0database\\0postgres\\0\\0"
        s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        head = s.recv(5)
        kind, length = head[:1].decode(), struct.unpack("!i", head[1:5])[0]
        body = b""
        while len(body) < length - 4:
            chunk = s.recv(length - 4 - len(body))
            if not chunk:
                break
            body += chunk
        s.close()
        code = struct.unpack("!i", body[:4])[0] if kind == "R" else None
        return [kind, code]
    for label, port in PORTS.items():
        out[label] = startup(port)
    try:
        u = socket.socket(socket.AF_UNIX)
        u.connect(SOCKET)
        out["unix"] = "connected"
    except OSError as e:
        out["unix"] = type(e).__name__
    print(json.dumps(out))
    """
)


def test_other_local_account_is_refused(other_account: Any, pg_proxy: Any,
                                        postgres_db: PostgresDatabase) -> None:
    server = postgres_db.server
    _local_only(server)
    sock_file = os.path.join(server.unix_socket or "", f".s.PGSQL.{server.port}")
    ports = {"direct": server.port, "pg_proxy": pg_proxy.port}
    result = other_account.run(f"PORTS = {ports!r}\nSOCKET = {sock_file!r}\n" + PROBE)
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    for label in ports:
        kind, code = answers[label]
        # 'R' 0 would be AuthenticationOk: logged in with no password at all.
        assert (kind, code) == ("R", 10), f"{label}: server answered {kind} {code}, not SASL"
    assert answers["unix"] == "PermissionError"


def test_cache_holds_no_secret(tmp_path: Path) -> None:
    """Two servers from the same cache get different passwords; the cache has none."""
    cache = tmp_path / "cache"
    first, _ = pg.start_local(cache_dir=cache)
    try:
        second, timings = pg.start_local(cache_dir=cache)
        try:
            assert "data_dir_copied" in timings
            assert first.password
            assert second.password
            assert first.password != second.password
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(second.dsn_for("postgres").replace(
                    second.password, first.password), connect_timeout=10).close()
        finally:
            second.close()
    finally:
        first.close()
    blobs = [p.read_bytes() for p in cache.rglob("*") if p.is_file()]
    assert blobs, "the cache was not filled"
    assert not any(b"SCRAM-SHA-256$" in blob for blob in blobs)


INNER = """
import os
from pathlib import Path

def test_leaky(postgres_db, pg_proxy):
    Path(os.environ["PW_FILE"]).write_text(postgres_db.password)
    server, proxy, database = postgres_db.server, pg_proxy, postgres_db
    assert server.port < 0, "boom"
"""


def test_no_output_shows_the_password(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pw_file = tmp_path / "pw"
    pytester.makepyfile(INNER)
    env = {**os.environ, "PW_FILE": str(pw_file)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "pytest_resilience", "-l", "-rA",
         "--tb=long", "-vv"],
        cwd=pytester.path, env=env, capture_output=True, text=True, timeout=150,
    )
    assert proc.returncode == 1, proc.stdout[-3000:]
    password = pw_file.read_text()
    assert len(password) >= 20
    assert "boom" in proc.stdout
    assert password not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://u:hunter2secret@localhost:abc/db",
         "*DSN 'postgresql://u:***@localhost:abc/db' has port 'abc'; the port must be a "
         "number 1-65535*"),
        ("host=localhost port=abc user=u password=hunter2secret dbname=db",
         "*bad Postgres DSN 'host=localhost port=abc user=u password=*** dbname=db': port "
         "'abc' is not a number 1-65535*"),
    ],
    ids=["url", "keywords"],
)
def test_bad_dsn_port_is_one_line_without_the_password(
    pytester: pytest.Pytester, dsn: str, expected: str
) -> None:
    pytester.makepyfile("def test_db(postgres):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "pytest_resilience",
                                           "--resilience-postgres=external",
                                           f"--resilience-postgres-dsn={dsn}", timeout=120)
    output = result.stdout.str() + result.stderr.str()
    assert "hunter2secret" not in output
    assert "Traceback" not in output
    assert "INTERNALERROR" not in output
    (result.stderr if "://" in dsn else result.stdout).fnmatch_lines([expected])
