"""``PgFaultProxy.settle()``: after a client closes its connection, the stage's server
session is closed before ``settle()`` returns, even when the stage's thread had not had
the CPU to see the close (here: its loop is held until ``settle()`` is waiting)."""

from __future__ import annotations

import threading

import psycopg

from pytest_resilience.pgwire import PgFaultProxy
from pytest_resilience.services.postgres import PostgresDatabase

BOUND = 10.0


def _hold_loop(stage: PgFaultProxy) -> tuple[threading.Event, threading.Event]:
    """Block the stage's loop thread until the returned *release* is set."""
    held, release = threading.Event(), threading.Event()

    def block() -> None:
        held.set()
        release.wait(BOUND)

    loop = stage._thread.loop
    assert loop is not None
    loop.call_soon_threadsafe(block)
    assert held.wait(BOUND)
    return held, release


def _server_sessions(db: PostgresDatabase, pid: int) -> int:
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                           (pid,)).fetchone()
    assert row is not None
    return int(row[0])


def test_settle_closes_a_closed_clients_server_side(stage: PgFaultProxy,
                                                    dsn: str) -> None:
    conn = psycopg.connect(dsn, autocommit=True)
    assert conn.execute("SELECT 1").fetchone() == (1,)
    assert stage.connections == 1
    _, release = _hold_loop(stage)
    conn.close()  # the stage cannot see it: its loop is held
    assert stage.connections == 1
    done = threading.Event()
    waiting: list[int] = []

    def settle() -> None:
        waiting.append(stage.settle())
        done.set()

    settler = threading.Thread(target=settle)
    settler.start()
    release.set()
    assert done.wait(BOUND)
    settler.join(BOUND)
    assert waiting == [0]
    assert stage.connections == 0  # no longer proxied: the server side was closed


def test_settle_leaves_an_open_client_alone(stage: PgFaultProxy, dsn: str,
                                            postgres_db: PostgresDatabase) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        pid = conn.info.backend_pid
        assert stage.settle(timeout=0.5) == 0  # nothing to wait for: returns at once
        assert stage.connections == 1
        assert _server_sessions(postgres_db, pid) == 1
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_settle_on_an_idle_stage(stage: PgFaultProxy) -> None:
    assert stage.connections == 0
    assert stage.settle() == 0
