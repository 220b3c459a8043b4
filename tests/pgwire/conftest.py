"""The plugin's Postgres fault stage (the one behind ``pg_fault``), for the pgwire
tests, with a check that no backend is left idle in a transaction."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from pgwire_helpers import wait_backends

from pytest_resilience.pgwire import PgFaultProxy
from pytest_resilience.services.postgres import PostgresDatabase


@pytest.fixture(scope="session")
def pg_stage(_resilience_pg_stage: PgFaultProxy) -> PgFaultProxy:
    """The plugin's session stage in front of the server (the one ``pg_fault`` uses)."""
    return _resilience_pg_stage


@pytest.fixture
def stage(pg_stage: PgFaultProxy, postgres_db: PostgresDatabase) -> Iterator[PgFaultProxy]:
    """The stage with no rules armed; after the test: rules cleared, and no backend of the
    test's database left idle in a transaction."""
    pg_stage.reset()
    try:
        yield pg_stage
    finally:
        pg_stage.settle()
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
