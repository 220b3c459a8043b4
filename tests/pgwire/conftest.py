"""A Postgres fault stage in front of the session's server, for the pgwire tests.

Test-local wiring: the plugin's own ``pg_fault`` fixture is to be added by the fixtures'
owner (see pytest_resilience.pgwire)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from pgwire_helpers import wait_backends

from pytest_resilience.pgwire import PgFaultProxy, start
from pytest_resilience.services.postgres import PostgresDatabase, PostgresServer


@pytest.fixture(scope="session")
def pg_stage(postgres: PostgresServer) -> Iterator[PgFaultProxy]:
    proxy = start(postgres.host, postgres.port)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def stage(pg_stage: PgFaultProxy, postgres_db: PostgresDatabase) -> Iterator[PgFaultProxy]:
    """The stage with no rules armed; after the test: rules cleared, and no backend of the
    test's database left idle in a transaction."""
    pg_stage.reset()
    try:
        yield pg_stage
    finally:
        pg_stage.reset()
        stuck = wait_backends(postgres_db, "state LIKE 'idle in transaction%%'")
        assert stuck == [], f"backends left idle in transaction: {stuck}"


@pytest.fixture
def dsn(stage: PgFaultProxy, postgres_db: PostgresDatabase) -> str:
    """The test database's DSN through the stage (no SSL attempt needed: it answers N)."""
    return stage.dsn_for(postgres_db.dsn)


@pytest.fixture
def accounts(postgres_db: PostgresDatabase) -> str:
    with psycopg.connect(postgres_db.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)")
        conn.execute("INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 10) g")
    return "accounts"
