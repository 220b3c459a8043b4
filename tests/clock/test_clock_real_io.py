"""Virtual time next to real I/O: no spurious timeouts while a real answer is on its way.

Rule (see ``pytest_resilience.clock``): the loop jumps only when it waits for timers
alone; while a socket, pipe or executor job is outstanding, real time passes and
virtual time follows it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from pytest_resilience.clock import VirtualClock

DELAY = 0.2  # the server answers 200 ms (real time) after the request
SELECT_SLACK = 0.02  # real time spent outside select(), which virtual time does not count


@pytest.fixture
def slow_tcp_server() -> Iterator[tuple[str, int]]:
    """A real TCP server in another thread: reads a line, waits 200 ms, answers ``pong``."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                if stop.is_set():
                    return
                if conn.recv(64):
                    stop.wait(DELAY)  # another thread: real time
                    conn.sendall(b"pong\n")

    thread = threading.Thread(target=serve, name="slow-tcp-server")
    thread.start()
    try:
        yield server.getsockname()[:2]
    finally:
        stop.set()
        # wake the accept() call up: closing the socket would not
        socket.create_connection(server.getsockname()[:2], timeout=5).close()
        thread.join(timeout=5)
        server.close()


async def _ask(host: str, port: int) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"ping\n")
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.asyncio
@pytest.mark.virtual_time
async def test_a_pending_real_read_is_not_jumped_over(
    virtual_clock: VirtualClock, slow_tcp_server: tuple[str, int]
) -> None:
    began = time.monotonic()
    assert await asyncio.wait_for(_ask(*slow_tcp_server), timeout=1) == b"pong\n"
    waited = time.monotonic() - began
    # Virtual time follows real time while the loop waits in select() for the read; time
    # the loop spends outside select() (callbacks, a busy CPU) is not added, so under
    # load it can lag real time by a few milliseconds: hence the explicit tolerance.
    assert DELAY - SELECT_SLACK <= waited < 1
    assert virtual_clock.real_io_wait >= DELAY - SELECT_SLACK


@pytest.mark.asyncio
@pytest.mark.virtual_time
async def test_a_real_timeout_still_fires_in_real_time(
    virtual_clock: VirtualClock, slow_tcp_server: tuple[str, int]
) -> None:
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_ask(*slow_tcp_server), timeout=0.05)
    assert time.monotonic() - began >= 0.05
    assert virtual_clock.real_io_wait >= 0.04


@pytest.mark.asyncio
@pytest.mark.virtual_time
async def test_after_the_socket_closes_time_jumps_again(
    virtual_clock: VirtualClock, slow_tcp_server: tuple[str, int]
) -> None:
    assert await asyncio.wait_for(_ask(*slow_tcp_server), timeout=1) == b"pong\n"
    held = virtual_clock.real_io_wait
    await asyncio.sleep(600)  # nothing real outstanding: no wall time passes
    assert virtual_clock.real_io_wait == held
    report = virtual_clock.report()
    assert any("socket to 127.0.0.1" in what for what in report.held_by)


@pytest.mark.asyncio
@pytest.mark.virtual_time
async def test_an_in_loop_server_waiting_on_a_virtual_timer(virtual_clock: VirtualClock) -> None:
    """Server and client share the loop: the server's 200 ms sleep passes in real time
    because the client's read is outstanding, and the 1 s timeout does not fire."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        await asyncio.sleep(DELAY)
        writer.write(b"pong\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        host, port = server.sockets[0].getsockname()[:2]
        assert await asyncio.wait_for(_ask(host, port), timeout=1) == b"pong\n"


@pytest.fixture
def postgres_dsn(request: pytest.FixtureRequest) -> str:
    """The lead's real Postgres (``postgres_db``); skipped until that fixture exists."""
    try:
        db = request.getfixturevalue("postgres_db")
    except pytest.FixtureLookupError:
        pytest.skip("the postgres_db fixture is not available yet")
    dsn = getattr(db, "dsn", None)
    if not isinstance(dsn, str):
        pytest.skip("postgres_db has no dsn")
    return dsn


@pytest.mark.asyncio
@pytest.mark.virtual_time
async def test_real_postgres_query_under_virtual_time(
    virtual_clock: VirtualClock, postgres_dsn: str
) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    conn = await asyncpg.connect(postgres_dsn)
    try:
        rows = await asyncio.wait_for(conn.fetch("select pg_sleep(0.3)"), timeout=1)
        assert len(rows) == 1
        assert virtual_clock.real_io_wait >= 0.3
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.fetch("select pg_sleep(5)"), timeout=0.2)
    finally:
        await conn.close(timeout=5)
    # the connection is closed: virtual time jumps again
    held = virtual_clock.real_io_wait
    await asyncio.sleep(60)
    assert virtual_clock.real_io_wait == held


@pytest.fixture
def black_hole() -> Iterator[tuple[str, int]]:
    """A TCP port that completes the handshake (listen backlog) and never answers."""
    server = socket.create_server(("127.0.0.1", 0), backlog=8)
    try:
        yield server.getsockname()[:2]
    finally:
        server.close()


@pytest.mark.virtual_time
def test_sync_driver_timeouts_still_fire_on_the_real_clock(
    virtual_clock: VirtualClock, black_hole: tuple[str, int]
) -> None:
    """psycopg's sync connect waits with a monotonic deadline around real select() calls;
    on a frozen clock it would wait forever. Its wait loops read the real clock."""
    psycopg = pytest.importorskip("psycopg")
    host, port = black_hole
    began = time.perf_counter()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"host={host} port={port} user=x dbname=x connect_timeout=2")
    assert virtual_clock.elapsed == 0  # sync real I/O takes no virtual time
    assert time.perf_counter() == began


@pytest.mark.asyncio
@pytest.mark.virtual_time
async def test_real_time_block_for_work_the_clock_cannot_see(virtual_clock: VirtualClock) -> None:
    """A thread that answers through call_soon_threadsafe is invisible to the clock:
    inside ``real_time()`` the loop waits for it in real time instead of jumping."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()
    go = threading.Event()

    def worker() -> None:
        go.wait(timeout=5)
        loop.call_soon_threadsafe(answer.set_result, "answer")

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        with virtual_clock.real_time():
            loop.call_soon(go.set)
            assert await asyncio.wait_for(answer, timeout=5) == "answer"
        assert virtual_clock.elapsed < 5
        assert "a clock.real_time() block" in virtual_clock.report().held_by
    finally:
        go.set()
        thread.join(timeout=5)
