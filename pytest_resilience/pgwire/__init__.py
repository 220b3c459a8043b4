"""A Postgres-protocol fault stage: make the real server raise SQLSTATEs, send FATALs,
refuse startups, cut responses and hold statements until the client cancels, for chosen
statements (issue 16).

    from pytest_resilience import pgwire

    with pgwire.start(postgres.host, postgres.port) as proxy:
        dsn = proxy.dsn_for(postgres_db.dsn)
        with proxy.sqlstate("40001", match=r"UPDATE accounts", nth=3):
            ...
        assert [i.sqlstate for i in proxy.injections] == ["40001"]

Importing this package starts nothing.
"""

from __future__ import annotations

from pytest_resilience.pgwire.proxy import Cancel, PgFaultProxy, start
from pytest_resilience.pgwire.rules import Hang, Injection, PgRule

__all__ = ["Cancel", "Hang", "Injection", "PgFaultProxy", "PgRule", "start"]


def __dir__() -> list[str]:
    return list(__all__)
