"""Helpers shared by the pgwire tests (a module of its own: ``from conftest import``
picks whichever conftest came first under xdist)."""

from __future__ import annotations

import time

import psycopg

from pytest_resilience.services.postgres import PostgresDatabase


def wait_backends(db: PostgresDatabase, where: str, want: int = 0,
                  timeout: float = 5.0) -> list[tuple[object, ...]]:
    """Backends of ``db`` matching ``where`` (seen from a direct connection), polled until
    there are ``want`` of them (a closed client's backend exits asynchronously)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        while True:
            rows = conn.execute(
                "SELECT pid, state, query FROM pg_stat_activity WHERE datname = %s "
                f"AND pid <> pg_backend_pid() AND ({where})", (db.dbname,)).fetchall()
            if len(rows) == want or time.monotonic() > deadline:
                return rows
            conn.execute("SELECT pg_sleep(0.01)")
