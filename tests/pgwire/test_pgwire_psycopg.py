"""The Postgres fault stage with psycopg 3: sync, async, pipeline, prepared statements,
SQLAlchemy."""

from __future__ import annotations

import psycopg
import psycopg.errors as pe
import pytest

from pytest_resilience.pgwire import PgFaultProxy
from pytest_resilience.services.postgres import PostgresDatabase

CODES = [
    ("40001", pe.SerializationFailure),
    ("40P01", pe.DeadlockDetected),
    ("57014", pe.QueryCanceled),
    ("23505", pe.UniqueViolation),
    ("53100", pe.DiskFull),
    ("53200", pe.OutOfMemory),
    ("XX001", pe.DataCorrupted),
]


def _balance(db: PostgresDatabase, account: int = 1) -> int:
    with psycopg.connect(db.dsn) as conn:
        row = conn.execute("SELECT balance FROM accounts WHERE id = %s", (account,)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.usefixtures("accounts")
def test_statement_prepared_before_the_rule_is_armed(stage: PgFaultProxy, dsn: str) -> None:
    """The Parse went through the no-rule fast path; a rule armed later still matches the
    statement executed by name, and the connection goes on after it is disarmed."""
    query = "SELECT balance FROM accounts WHERE id = %s"
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        assert conn.execute(query, (1,)).fetchone() == (100,)  # prepared, no rule armed
        with stage.sqlstate("40001", match=r"SELECT balance") as rule, \
                pytest.raises(pe.SerializationFailure):
            conn.execute(query, (1,)).fetchone()
        assert (rule.seen, rule.fired) == (1, 1)
        assert conn.execute(query, (1,)).fetchone() == (100,)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert [i.statement for i in stage.injections] == [
        "SELECT balance FROM accounts WHERE id = $1"]


@pytest.mark.usefixtures("accounts")
@pytest.mark.parametrize(("code", "error"), CODES)
def test_each_sqlstate_is_the_drivers_own_error(
    stage: PgFaultProxy, dsn: str, postgres_db: PostgresDatabase, code: str,
    error: type[Exception],
) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT 1")
        with stage.sqlstate(code, match=r"UPDATE accounts"), pytest.raises(error) as info:
            conn.execute("UPDATE accounts SET balance = balance - 1 WHERE id = %s", (1,))
        assert getattr(info.value, "sqlstate", None) == code
        assert "injected by pytest-resilience" in str(info.value)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert _balance(postgres_db) == 100
    [injection] = stage.injections[-1:]
    assert (injection.sqlstate, injection.kind) == (code, "sqlstate")
    assert injection.statement is not None
    assert "UPDATE accounts" in injection.statement


@pytest.mark.usefixtures("accounts")
def test_simple_protocol_in_a_transaction(stage: PgFaultProxy, dsn: str,
                                          postgres_db: PostgresDatabase) -> None:
    with psycopg.connect(dsn) as conn, stage.sqlstate("40P01", match="WHERE id = 1"):
        cur = psycopg.ClientCursor(conn)  # the simple query protocol
        cur.execute("UPDATE accounts SET balance = 0 WHERE id = 2")
        with pytest.raises(pe.DeadlockDetected):
            cur.execute("UPDATE accounts SET balance = 0 WHERE id = 1")
        conn.rollback()
        assert cur.execute("SELECT 1").fetchone() == (1,)
    assert _balance(postgres_db, 2) == 100


@pytest.mark.usefixtures("accounts")
def test_commit_time_serialization_failure_ends_the_transaction(
    stage: PgFaultProxy, dsn: str, postgres_db: PostgresDatabase
) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE accounts SET balance = 0 WHERE id = 1")
        with stage.sqlstate("40001", match=r"^COMMIT$"), pytest.raises(pe.SerializationFailure):
            conn.commit()
        # as after a real failed COMMIT: the transaction is over, nothing was committed
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.commit()
    assert _balance(postgres_db) == 100
    assert [i.statement for i in stage.injections[-1:]] == ["COMMIT"]


@pytest.mark.usefixtures("accounts")
def test_nth_with_prepared_statements(stage: PgFaultProxy, dsn: str) -> None:
    """psycopg prepares a statement (Parse with a name) and then only binds it: the match
    is on the text remembered from the Parse."""
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn, \
            stage.sqlstate("40001", match=r"SELECT balance", nth=3) as rule:
        outcomes = []
        for _ in range(6):
            try:
                conn.execute("SELECT balance FROM accounts WHERE id = %s", (1,)).fetchone()
                outcomes.append("ok")
            except pe.SerializationFailure:
                outcomes.append("40001")
        assert outcomes == ["ok", "ok", "40001", "ok", "ok", "ok"]
        assert (rule.seen, rule.fired) == (6, 1)
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.usefixtures("accounts")
def test_times_and_counting_across_connections(stage: PgFaultProxy, dsn: str) -> None:
    with stage.sqlstate("40001", match="SELECT balance", nth=2, times=2) as rule:
        results = []
        for _ in range(2):
            with psycopg.connect(dsn, autocommit=True) as conn:
                for _ in range(2):
                    try:
                        conn.execute("SELECT balance FROM accounts WHERE id = 1")
                        results.append("ok")
                    except pe.SerializationFailure:
                        results.append("40001")
    assert results == ["ok", "40001", "40001", "ok"]
    assert rule.fired == 2
    assert len({i.connection for i in stage.injections}) == 2


@pytest.mark.usefixtures("accounts")
def test_probability_is_reproducible_with_a_seed(stage: PgFaultProxy, dsn: str) -> None:
    def run() -> list[bool]:
        out = []
        with stage.sqlstate("40001", match="SELECT balance", probability=0.5, seed=7), \
                psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(20):
                try:
                    conn.execute("SELECT balance FROM accounts WHERE id = 1")
                    out.append(False)
                except pe.SerializationFailure:
                    out.append(True)
        return out

    first = run()
    assert 0 < sum(first) < 20
    assert run() == first


@pytest.mark.usefixtures("accounts")
def test_pipeline_mode(stage: PgFaultProxy, dsn: str, postgres_db: PostgresDatabase) -> None:
    with psycopg.connect(dsn) as conn:
        def batch() -> None:
            with conn.pipeline():
                conn.execute("SELECT 1")
                conn.execute("UPDATE accounts SET balance = 0 WHERE id = 1")
                conn.execute("UPDATE accounts SET balance = 0 WHERE id = 2")

        with stage.sqlstate("40001", match="UPDATE accounts"), \
                pytest.raises(pe.SerializationFailure):
            batch()
        conn.rollback()
        with conn.pipeline():
            cur = conn.execute("SELECT balance FROM accounts WHERE id = 1")
            two = conn.execute("SELECT 2")
        assert cur.fetchone() == (100,)
        assert two.fetchone() == (2,)
        conn.commit()
    assert _balance(postgres_db, 2) == 100


@pytest.mark.usefixtures("accounts")
def test_pipeline_commit_failure(stage: PgFaultProxy, dsn: str,
                                 postgres_db: PostgresDatabase) -> None:
    with psycopg.connect(dsn) as conn:
        with conn.pipeline():
            conn.execute("UPDATE accounts SET balance = 0 WHERE id = 1")
            with stage.sqlstate("40001", match="^COMMIT$"), \
                    pytest.raises(pe.SerializationFailure):
                conn.commit()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.rollback()
    assert _balance(postgres_db) == 100


@pytest.mark.asyncio
@pytest.mark.usefixtures("accounts")
async def test_psycopg_async(stage: PgFaultProxy, dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        with stage.sqlstate("40001", match="UPDATE accounts", nth=2):
            await conn.execute("UPDATE accounts SET balance = 1 WHERE id = 1")
            with pytest.raises(pe.SerializationFailure):
                await conn.execute("UPDATE accounts SET balance = 2 WHERE id = 1")
        await conn.rollback()
        cur = await conn.execute("SELECT 1")
        assert await cur.fetchone() == (1,)


def test_fatal_admin_shutdown_closes(stage: PgFaultProxy, dsn: str,
                                     postgres_db: PostgresDatabase) -> None:
    conn = psycopg.connect(dsn)
    try:
        conn.execute("SELECT 1")
        with stage.fatal("57P01", match="pg_sleep"), pytest.raises(pe.AdminShutdown):
            conn.execute("SELECT pg_sleep(0)")
        assert conn.closed
    finally:
        conn.close()
    assert stage.injections[-1].kind == "fatal"
    assert wait_backends(postgres_db, "application_name = ''") == []


def test_terminate_every_connection(stage: PgFaultProxy, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn) as b:
        b.execute("SELECT 1")  # b is idle in a transaction
        assert stage.terminate() >= 2
        for conn in (a, b):
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")


def test_pool_replaces_a_terminated_connection(stage: PgFaultProxy, dsn: str) -> None:
    from psycopg_pool import ConnectionPool

    with ConnectionPool(dsn, min_size=1, max_size=1, open=True,
                        check=ConnectionPool.check_connection, timeout=10) as pool:
        with pool.connection() as conn:
            first = conn.info.backend_pid
        stage.terminate()
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.info.backend_pid != first


def test_refused_startup_is_too_many_connections(stage: PgFaultProxy, dsn: str) -> None:
    with stage.refuse_startup(n=1) as rule:
        with pytest.raises(psycopg.OperationalError, match="too many clients"):
            psycopg.connect(dsn)
        with psycopg.connect(dsn) as conn:  # only the first one
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert rule.fired == 1
    assert stage.injections[-1].sqlstate == "53300"


def test_cut_mid_response(stage: PgFaultProxy, dsn: str) -> None:
    with psycopg.connect(dsn) as conn, stage.cut_mid_response(match="generate_series"):
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT g FROM generate_series(1, 1000) g").fetchall()
        assert conn.closed or conn.broken
    assert stage.injections[-1].sqlstate == "08006"


def test_copy_passes_untouched(stage: PgFaultProxy, dsn: str,
                               postgres_db: PostgresDatabase) -> None:
    query = "COPY (SELECT g, md5(g::text) FROM generate_series(1, 20000) g) TO STDOUT"
    with psycopg.connect(postgres_db.dsn) as direct, direct.cursor() as cur, \
            cur.copy(query) as copy:
        expected = b"".join(bytes(b) for b in copy)
    # a rule armed on another statement: the stage parses every message
    with stage.sqlstate("40001", match="never matches"), psycopg.connect(dsn) as conn:
        with conn.cursor() as cur, cur.copy(query) as copy:
            got = b"".join(bytes(b) for b in copy)
        conn.execute("CREATE TEMP TABLE t (a int, b text)")
        with conn.cursor() as cur, cur.copy("COPY t FROM STDIN") as copy:
            copy.write(got)
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (20000,)
    assert got == expected


@pytest.mark.usefixtures("accounts")
def test_sqlalchemy(stage: PgFaultProxy, dsn: str, postgres_db: PostgresDatabase) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from sqlalchemy import exc, text

    engine = sqlalchemy.create_engine(dsn.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            with stage.sqlstate("40001", match="UPDATE accounts"), \
                    pytest.raises(exc.OperationalError) as info:
                conn.execute(text("UPDATE accounts SET balance = 0 WHERE id = 1"))
            assert isinstance(info.value.orig, pe.SerializationFailure)
            conn.rollback()
            assert conn.execute(text("SELECT 1")).scalar() == 1
            with stage.sqlstate("23505", match="INSERT"), pytest.raises(exc.IntegrityError):
                conn.execute(text("INSERT INTO accounts VALUES (99, 1)"))
            conn.rollback()
    finally:
        engine.dispose()
    assert _balance(postgres_db) == 100


def wait_backends(db: PostgresDatabase, where: str) -> list[tuple[object, ...]]:
    from pgwire_helpers import wait_backends as wait

    return wait(db, where)
