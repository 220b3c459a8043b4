"""Driver x SQLSTATE matrix of the Postgres fault stage (a script, not part of the suite).

    .venv/bin/python tests/pgwire/matrix.py [--trials 200] [--pg-dsn postgresql://...]

Without ``--pg-dsn`` a local Postgres is started as the ``postgres`` fixture does (the same
approach as ``benchmarks/bench_pgwire.py``); the stage runs on a thread of this process.
For every driver (psycopg 3 sync, async, pipeline mode; asyncpg; SQLAlchemy with the
asyncpg and the psycopg dialect) and SQLSTATE (40001, 40P01, 57014, 23505: ERROR; 57P01:
FATAL mid-statement; 53300: refused startup; 08006: response cut) it runs ``--trials``
trials, each on a new connection, and counts per cell:

* ``own``: the driver raised its own exception class for that SQLSTATE (psycopg:
  ``psycopg.errors.lookup(code)``; asyncpg: the ``asyncpg.exceptions`` class whose
  ``sqlstate`` it is; through SQLAlchemy: that class as the wrapped ``.orig`` or its
  cause); ``cause``: it was only the cause of what was raised (asyncpg reports a FATAL
  mid-query as ``ConnectionDoesNotExistError`` caused by ``AdminShutdownError``);
* ``sel1``: (ERROR class) after ``ROLLBACK`` the same connection ran ``SELECT 1``;
* ``08P01``: protocol violations in the server log during the cell (must be 0);
* ``idle tx``: backends ``idle in transaction`` after the cell's connections closed (0).

With ``--pg-dsn`` the server log is not readable and the 08P01 column shows ``-``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import psycopg  # noqa: E402
import psycopg.errors as pe  # noqa: E402

from pytest_resilience import pgwire  # noqa: E402

DRIVERS = ("psycopg", "psycopg-async", "psycopg-pipeline", "asyncpg", "sqla-asyncpg",
           "sqla-psycopg")
CODES = ("40001", "40P01", "57014", "23505", "57P01", "53300", "08006")
ERROR_CLASS = ("40001", "40P01", "57014", "23505")
UPDATE = "UPDATE m_accounts SET balance = balance + 1 WHERE id = 1"
SELECT = "SELECT g FROM generate_series(1, 500) g"


def _asyncpg_class(code: str) -> type[BaseException]:
    import asyncpg.exceptions as ae

    for name in dir(ae):
        cls = getattr(ae, name)
        if isinstance(cls, type) and issubclass(cls, BaseException) \
                and getattr(cls, "sqlstate", None) == code:
            return cls
    return cast("type[BaseException]", ae.PostgresError)


def expected(driver: str, code: str) -> type[BaseException]:
    if "asyncpg" in driver:
        return _asyncpg_class(code)
    return pe.lookup(code)


def _chain(exc: BaseException | None) -> Iterator[tuple[str, BaseException]]:
    """The raised exception, SQLAlchemy's wrapped ``.orig``, and their causes."""
    seen: set[int] = set()
    todo: list[tuple[str, BaseException | None]] = [("raised", exc)]
    while todo:
        how, e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield how, e
        orig = getattr(e, "orig", None)
        if isinstance(orig, BaseException):
            todo.append(("raised", orig))
        todo.append(("cause", e.__cause__))


class Cell:
    def __init__(self) -> None:
        self.own = self.cause = self.sel1 = 0
        self.raised: collections.Counter[str] = collections.Counter()

    def note(self, driver: str, code: str, exc: BaseException | None, sel1: bool) -> None:
        cls = expected(driver, code)
        self.raised[type(exc).__name__ if exc is not None else "nothing"] += 1
        hows = {how for how, e in _chain(exc) if isinstance(e, cls)}
        if "raised" in hows:
            self.own += 1
        elif "cause" in hows:
            self.cause += 1
        self.sel1 += sel1


def _arm(stage: pgwire.PgFaultProxy, code: str) -> pgwire.PgRule:
    if code in ERROR_CLASS:
        return stage.sqlstate(code, match=r"UPDATE m_accounts", times=1)
    if code == "57P01":
        return stage.fatal("57P01", match=r"UPDATE m_accounts", times=1)
    if code == "53300":
        return stage.refuse_startup(n=1)
    return stage.cut_mid_response(match=r"generate_series", times=1)


# -- one trial per driver: returns (exception, SELECT 1 after ROLLBACK worked) -------------
def _statement(code: str) -> str:
    return SELECT if code == "08006" else UPDATE


def trial_psycopg(dsn: str, code: str, pipeline: bool = False) -> tuple[Any, bool]:
    exc: BaseException | None = None
    try:
        conn = psycopg.connect(dsn)
    except psycopg.Error as e:
        return e, False
    with conn:
        try:
            if pipeline:
                with conn.pipeline():
                    conn.execute("SELECT 1")
                    conn.execute(_statement(code))
            else:
                conn.execute(_statement(code)).fetchall() if code == "08006" else \
                    conn.execute(_statement(code))
        except psycopg.Error as e:
            exc = e
        sel1 = False
        if code in ERROR_CLASS and not conn.closed:
            try:
                conn.rollback()
                sel1 = conn.execute("SELECT 1").fetchone() == (1,)
                conn.commit()
            except psycopg.Error:
                pass
        else:
            conn.rollback() if not (conn.closed or conn.broken) else None
    return exc, sel1


async def trial_psycopg_async(dsn: str, code: str) -> tuple[Any, bool]:
    exc: BaseException | None = None
    try:
        conn = await psycopg.AsyncConnection.connect(dsn)
    except psycopg.Error as e:
        return e, False
    async with conn:
        try:
            cur = await conn.execute(_statement(code))
            if code == "08006":
                await cur.fetchall()
        except psycopg.Error as e:
            exc = e
        sel1 = False
        if code in ERROR_CLASS and not conn.closed:
            try:
                await conn.rollback()
                cur = await conn.execute("SELECT 1")
                sel1 = await cur.fetchone() == (1,)
                await conn.commit()
            except psycopg.Error:
                pass
    return exc, sel1


async def trial_asyncpg(dsn: str, code: str) -> tuple[Any, bool]:
    exc: BaseException | None = None
    try:
        conn = await asyncpg.connect(dsn)
    except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as e:
        return e, False
    try:
        tx = conn.transaction()
        await tx.start()
        try:
            if code == "08006":
                await conn.fetch(SELECT)
            else:
                await conn.execute(UPDATE)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as e:
            exc = e
        sel1 = False
        if not conn.is_closed():
            try:
                await tx.rollback()
                sel1 = code in ERROR_CLASS and await conn.fetchval("SELECT 1") == 1
            except (asyncpg.PostgresError, asyncpg.InterfaceError):
                pass
    finally:
        if conn.is_closed():
            conn.terminate()
        else:
            await asyncio.wait_for(conn.close(), 10)
    return exc, sel1


def trial_sqla_psycopg(engine: Any, code: str) -> tuple[Any, bool]:
    from sqlalchemy import exc as sa_exc
    from sqlalchemy import text

    exc: BaseException | None = None
    sel1 = False
    try:
        with engine.connect() as conn:
            try:
                conn.execute(text(_statement(code))).fetchall() if code == "08006" else \
                    conn.execute(text(UPDATE))
            except sa_exc.DBAPIError as e:
                exc = e
            if code in ERROR_CLASS:
                try:
                    conn.rollback()
                    sel1 = conn.execute(text("SELECT 1")).scalar() == 1
                    conn.commit()
                except sa_exc.DBAPIError:
                    pass
    except sa_exc.DBAPIError as e:
        exc = exc or e
    return exc, sel1


async def trial_sqla_asyncpg(engine: Any, code: str) -> tuple[Any, bool]:
    from sqlalchemy import exc as sa_exc
    from sqlalchemy import text

    exc: BaseException | None = None
    sel1 = False
    try:
        async with engine.connect() as conn:
            try:
                result = await conn.execute(text(_statement(code)))
                if code == "08006":
                    result.fetchall()
            except sa_exc.DBAPIError as e:
                exc = e
            if code in ERROR_CLASS:
                try:
                    await conn.rollback()
                    sel1 = (await conn.execute(text("SELECT 1"))).scalar() == 1
                    await conn.commit()
                except sa_exc.DBAPIError:
                    pass
    except sa_exc.DBAPIError as e:
        exc = exc or e
    return exc, sel1


# -- the run -------------------------------------------------------------------------------
def run_cell(driver: str, code: str, stage: pgwire.PgFaultProxy, dsn: str,
             trials: int) -> Cell:
    cell = Cell()
    url = dsn.replace("postgresql://", "postgresql+{}://")

    def record(out: tuple[Any, bool]) -> None:
        cell.note(driver, code, out[0], out[1])

    if driver in ("psycopg", "psycopg-pipeline"):
        for _ in range(trials):
            with _arm(stage, code):
                record(trial_psycopg(dsn, code, pipeline=driver == "psycopg-pipeline"))
    elif driver == "sqla-psycopg":
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        engine = create_engine(url.format("psycopg"), poolclass=NullPool)
        try:
            for _ in range(trials):
                with _arm(stage, code):
                    record(trial_sqla_psycopg(engine, code))
        finally:
            engine.dispose()
    else:
        async def main() -> None:
            engine = None
            if driver == "sqla-asyncpg":
                from sqlalchemy.ext.asyncio import create_async_engine
                from sqlalchemy.pool import NullPool

                engine = create_async_engine(url.format("asyncpg"), poolclass=NullPool)
            try:
                for _ in range(trials):
                    with _arm(stage, code):
                        if driver == "psycopg-async":
                            record(await trial_psycopg_async(dsn, code))
                        elif driver == "asyncpg":
                            record(await trial_asyncpg(dsn, code))
                        else:
                            record(await trial_sqla_asyncpg(engine, code))
            finally:
                if engine is not None:
                    await engine.dispose()

        asyncio.run(main())
    return cell


def idle_in_transaction(admin: psycopg.Connection[Any], dbname: str) -> int:
    deadline = time.monotonic() + 5
    while True:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> "
            "pg_backend_pid() AND state LIKE 'idle in transaction%%'", (dbname,)).fetchone()
        n = int(row[0]) if row else 0
        if n == 0 or time.monotonic() > deadline:
            return n
        admin.execute("SELECT pg_sleep(0.02)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--pg-dsn", help="Postgres to use (default: start a local one)")
    parser.add_argument("--drivers", default=",".join(DRIVERS))
    parser.add_argument("--codes", default=",".join(CODES))
    args = parser.parse_args()
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    server = None
    if args.pg_dsn:
        dsn = args.pg_dsn
    else:
        from pytest_resilience.services.postgres import start_postgres

        server = start_postgres("local")
        dsn = server.dsn
    info = conninfo_to_dict(dsn)
    host, port = str(info.get("host", "127.0.0.1")), int(str(info.get("port", 5432)))
    dbname = str(info.get("dbname", "postgres"))
    stage = pgwire.start(host, port)
    started = time.monotonic()
    results: dict[tuple[str, str], tuple[Cell, int | None, int]] = {}
    log: Path | None = None
    try:
        with psycopg.connect(dsn, autocommit=True) as admin:
            if server is not None:
                admin.execute("ALTER SYSTEM SET log_error_verbosity = 'verbose'")
                admin.execute("SELECT pg_reload_conf()")
                row = admin.execute("SHOW data_directory").fetchone()
                assert row is not None
                log = Path(str(row[0])).parent / "postgres.log"
                if not log.exists():
                    log = None
            admin.execute("DROP TABLE IF EXISTS m_accounts")
            admin.execute("CREATE TABLE m_accounts (id int PRIMARY KEY, balance int)")
            admin.execute("INSERT INTO m_accounts VALUES (1, 0)")
            staged = make_conninfo(dsn, host=stage.host, port=str(stage.port))
            staged_url = stage.dsn_for(dsn) if dsn.startswith("postgresql://") else staged
            for driver in args.drivers.split(","):
                for code in args.codes.split(","):
                    offset = log.stat().st_size if log is not None else 0
                    t0 = time.monotonic()
                    cell = run_cell(driver, code, stage, staged_url, args.trials)
                    violations = None
                    if log is not None:
                        with log.open("rb") as f:
                            f.seek(offset)
                            violations = f.read().count(b"08P01")
                    results[driver, code] = (cell, violations,
                                             idle_in_transaction(admin, dbname))
                    print(f"{driver:17} {code}: own {cell.own}/{args.trials} cause "
                          f"{cell.cause} sel1 {cell.sel1} 08P01 {violations} "
                          f"({time.monotonic() - t0:.1f} s) {dict(cell.raised)}",
                          file=sys.stderr, flush=True)
    finally:
        stage.close()
        if server is not None:
            server.close()
    wall = time.monotonic() - started
    print(f"\n{args.trials} trials per cell; own = the driver's own class for the SQLSTATE "
          f"raised (+N: only as the cause); sel1 = SELECT 1 on the same connection after "
          f"ROLLBACK (ERROR class); 08P01 = protocol violations in the server log; "
          f"itx = backends idle in transaction after the cell. Wall time {wall:.0f} s.\n")
    codes = args.codes.split(",")
    header = ["driver", *codes]
    rows: list[list[str]] = []
    for driver in args.drivers.split(","):
        line = [driver]
        for code in codes:
            cell, v, itx = results[driver, code]
            own = f"{cell.own}" + (f"+{cell.cause}" if cell.cause else "")
            sel = f" sel1 {cell.sel1}" if code in ERROR_CLASS else ""
            line.append(f"own {own}{sel} 08P01 {'-' if v is None else v} itx {itx}")
        rows.append(line)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print("\nraised (top-level class, count) per cell:")
    for (driver, code), (cell, _, _) in results.items():
        print(f"  {driver:17} {code}: {dict(cell.raised)}")


if __name__ == "__main__":
    main()


