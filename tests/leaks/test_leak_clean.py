"""No false positives: the same code with each leak fixed passes, 20 runs in a row,
under pytest-asyncio strict and auto modes and under pytest-xdist.

The inner suite also has the shapes that naive leak checks flag: function
fixtures that open in setup and close in teardown, factory fixtures that close
what the test made, a session fixture started lazily by the first test (a
server thread and a listening socket), servers with keep-alive connections,
executor threads, subprocesses, and sockets closed by the loop after the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from leak_helpers import InnerRun, run_inner

RUNS = 20

CLEAN = '''
import asyncio
import contextlib
import http.server
import socket
import subprocess
import sys
import threading

import aiohttp
import httpx
import pytest
import pytest_asyncio
from aiohttp import web

pytestmark = [pytest.mark.no_leaks, pytest.mark.parametrize("run", range(RUNS))]


class _Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def thread_server():
    """A session-scoped server (thread + listening socket), started by the first test."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, name="session-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="session")
def lazy_server():
    """Session-scoped, but only ever requested through getfixturevalue from a
    function fixture: it starts inside the first test's leak-check window."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Quiet)  # HTTP/1.0 closes
    thread = threading.Thread(target=server.serve_forever, name="lazy-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def lazy_url(request):
    return request.getfixturevalue("lazy_server")


@pytest.fixture(scope="module")
def module_client():
    """A client that predates the tests: its pool opens new sockets during them."""
    with httpx.Client() as client:
        yield client


@pytest.fixture
def function_server():
    """A function-scoped server: started in setup, stopped in teardown."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest_asyncio.fixture
async def aio_server():
    async def hello(request):
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture
async def session_factory():
    """Like pytest-aiohttp's aiohttp_client: the test makes sessions, teardown closes them."""
    made = []

    def make():
        made.append(aiohttp.ClientSession())
        return made[-1]

    yield make
    for session in made:
        await session.close()


@pytest.fixture
def open_file(tmp_path):
    handle = open(tmp_path / "fixture.txt", "w")
    yield handle
    handle.close()


@pytest.mark.asyncio
async def test_aiohttp_session(run, aio_server):
    async with aiohttp.ClientSession() as session:
        async with session.get(aio_server) as response:
            assert await response.text() == "ok"


@pytest.mark.asyncio
async def test_aiohttp_session_closed_without_context_manager(run, thread_server):
    session = aiohttp.ClientSession()
    async with session.get(thread_server) as response:
        assert await response.text() == "ok"
    await session.close()


@pytest.mark.asyncio
async def test_factory_fixture_closes_sessions(run, session_factory, aio_server):
    session = session_factory()
    async with session.get(aio_server) as response:
        assert response.status == 200


@pytest.mark.asyncio
async def test_httpx_async(run, aio_server):
    async with httpx.AsyncClient() as client:
        assert (await client.get(aio_server)).text == "ok"


def test_httpx_sync(run, function_server, thread_server):
    with httpx.Client() as client:
        assert client.get(function_server).text == "ok"
        assert client.get(thread_server).text == "ok"


def test_lazy_session_fixture_and_older_client_pool(run, lazy_url, module_client):
    assert module_client.get(lazy_url).text == "ok"


def test_file(run, tmp_path, open_file):
    open_file.write("x")
    with open(tmp_path / "data.txt", "w") as handle:
        handle.write("x")


@pytest.mark.asyncio
async def test_task_cancelled_and_awaited(run):
    task = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.mark.asyncio
async def test_executor_threads(run):
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, sum, [1, 2]) == 3
    assert await asyncio.to_thread(len, "abc") == 3


def test_thread_joined(run):
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    stop.set()
    thread.join(10)


def test_thread_finishing_on_its_own(run):
    done = threading.Event()
    thread = threading.Thread(target=done.set)
    thread.start()
    assert done.wait(10)  # not joined: it is exiting while the check runs


def test_socket(run):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
    a, b = socket.socketpair()
    a.close()
    b.close()


def test_subprocess(run):
    out = subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True, check=True)
    assert out.stdout.strip() == b"1"
'''.replace("RUNS", str(RUNS))

CLEAN_TESTS = 13


def _check(result: InnerRun) -> None:
    passed = CLEAN_TESTS * RUNS
    assert result.ret == 0, result.text[-6000:]
    result.fnmatch_lines([f"*{passed} passed in *"])
    assert "resilience: leaks" not in result.text


def test_no_false_positives_strict_mode(tmp_path: Path) -> None:
    _check(run_inner(tmp_path, {"test_clean.py": CLEAN}, "-q", "-W", "error"))


def test_no_false_positives_auto_mode(tmp_path: Path) -> None:
    _check(run_inner(tmp_path, {"test_clean.py": CLEAN}, "-q", "-W", "error", mode="auto"))


def test_no_false_positives_every_test_checked(tmp_path: Path) -> None:
    # the same suite under --resilience-leaks=fail (markers removed): same result
    source = CLEAN.replace("pytest.mark.no_leaks, ", "")
    _check(run_inner(tmp_path, {"test_clean.py": source}, "-q", "--resilience-leaks=fail"))


def test_no_false_positives_under_xdist(tmp_path: Path) -> None:
    _check(run_inner(tmp_path, {"test_clean.py": CLEAN}, "-q", "-p", "xdist", "-n", "2"))


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_leaks_still_caught_under_xdist(tmp_path: Path, mode: str) -> None:
    fixed = (
        "    async with session.get(thread_server) as response:\n"
        '        assert await response.text() == "ok"\n'
        "    await session.close()\n"
    )
    assert fixed in CLEAN
    source = CLEAN.replace(fixed, fixed.replace("await session.close()", "LEAKED.append(session)"))
    source += "\nLEAKED = []\n"
    result = run_inner(
        tmp_path, {"test_clean.py": source}, "-q", "-p", "xdist", "-n", "2", mode=mode
    )
    assert result.ret == 1, result.text[-4000:]
    result.fnmatch_lines([
        "*ERROR at teardown of test_aiohttp_session_closed_without_context_manager*",
        "*- resilience: leaks -*",
        "*[[]session] aiohttp.ClientSession never closed",
        "*created at test_clean.py:* in test_aiohttp_session_closed_without_context_manager*",
    ])
    result.fnmatch_lines([f"*{RUNS} errors*"])
