"""Demo: the fixtures give a real Postgres (run with the README's main command)."""

from __future__ import annotations


def test_server_answers(postgres):
    with postgres.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_each_test_gets_its_own_database(postgres_db):
    with postgres_db.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int)")
        conn.execute("INSERT INTO orders VALUES (1), (2)")
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (2,)
