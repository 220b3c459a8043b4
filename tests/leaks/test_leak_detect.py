"""Real leaks are caught and named, each with where it was created.

Every inner run leaks on purpose, so it runs in a subprocess: its
ResourceWarnings never reach the outer run (``filterwarnings = error``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from leak_helpers import InnerRun, run_inner

RUN_TIMEOUT = 120

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""

LEAKS = '''
import asyncio
import socket
import threading

import aiohttp
import httpx
import pytest

pytestmark = pytest.mark.no_leaks

KEEP = []
STOP = threading.Event()


@pytest.mark.asyncio
async def test_aiohttp_session():
    session = aiohttp.ClientSession()  # LEAK-AIOHTTP


@pytest.mark.asyncio
async def test_aiohttp_session_kept():
    KEEP.append(aiohttp.ClientSession())  # LEAK-AIOHTTP-KEPT


@pytest.mark.asyncio
async def test_httpx_async_client():
    client = httpx.AsyncClient()  # LEAK-HTTPX


def test_httpx_client_kept():
    KEEP.append(httpx.Client())  # LEAK-HTTPX-SYNC


def test_file(tmp_path):
    handle = open(tmp_path / "data.txt", "w")  # LEAK-FILE
    handle.write("x")


def test_file_kept(tmp_path):
    KEEP.append(open(tmp_path / "kept.txt", "w"))  # LEAK-FILE-KEPT


@pytest.mark.asyncio
async def test_task():
    asyncio.create_task(asyncio.Event().wait(), name="forgotten")  # LEAK-TASK


def test_thread():
    thread = threading.Thread(target=STOP.wait, name="left-running", daemon=True)
    thread.start()  # LEAK-THREAD


def test_socket():
    sock = socket.socket()  # LEAK-SOCKET
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    KEEP.append(sock)
'''


@pytest.fixture(scope="module")
def leaks_run(tmp_path_factory: pytest.TempPathFactory) -> InnerRun:
    directory: Path = tmp_path_factory.mktemp("leaks")
    return run_inner(directory, {"test_leaks.py": LEAKS})


def test_every_leak_is_an_error_at_teardown(leaks_run: InnerRun) -> None:
    assert leaks_run.ret == 1, leaks_run.text
    leaks_run.fnmatch_lines(["*= resilience =*", "*= 9 passed, 9 errors in *"])
    # one summary line per leak verdict, built from the verdicts (not from report text)
    assert len([line for line in leaks_run.text.splitlines()
                if line.startswith("test_leaks.py::") and " FAILED leaks: " in line]) == 9


@pytest.mark.parametrize(
    ("test", "kind", "what", "marker"),
    [
        ("test_aiohttp_session", "session", "Unclosed client session*", "LEAK-AIOHTTP"),
        ("test_aiohttp_session_kept", "session", "aiohttp.ClientSession never closed",
         "LEAK-AIOHTTP-KEPT"),
        ("test_httpx_async_client", "session",
         "unclosed httpx.AsyncClient*garbage-collected without being closed", "LEAK-HTTPX"),
        ("test_httpx_client_kept", "session", "httpx.Client never closed", "LEAK-HTTPX-SYNC"),
        ("test_file", "file", "unclosed file*data.txt*", "LEAK-FILE"),
        ("test_file_kept", "file", "file left open: fd *: file *kept.txt", "LEAK-FILE-KEPT"),
        ("test_task", "task", "task 'forgotten' (Event.wait) still pending", "LEAK-TASK"),
        ("test_thread", "thread", "thread 'left-running' still running*", "LEAK-THREAD"),
        ("test_socket", "socket",
         "socket left open: fd *: socket tcp 127.0.0.1:* (listening or unconnected)",
         "LEAK-SOCKET"),
    ],
)
def test_leak_is_named_with_its_origin(
    leaks_run: InnerRun, test: str, kind: str, what: str, marker: str
) -> None:
    lines = leaks_run.section(test)
    pytest.LineMatcher(lines).fnmatch_lines(
        [
            f"resource leak check failed: 1 leaked (1 {kind})*",
            "*- resilience: leaks -*",
            f"test_leaks.py::{test}: 1 leaked (1 {kind})",
            f"  [[]{kind}] {what}",
        ]
    )
    source = LEAKS.splitlines()
    lineno = next(i for i, line in enumerate(source, 1) if f"# {marker}" in line)
    pytest.LineMatcher(lines).fnmatch_lines([f"*created at test_leaks.py:{lineno} in {test}*"])


def test_thread_shows_where_it_is_now(leaks_run: InnerRun) -> None:
    pytest.LineMatcher(leaks_run.section("test_thread")).fnmatch_lines(
        ["*now at threading.py:* in wait"]
    )


def test_task_shows_where_it_is_suspended(leaks_run: InnerRun) -> None:
    pytest.LineMatcher(leaks_run.section("test_task")).fnmatch_lines(
        ["*suspended at asyncio/locks.py:* in wait"]
    )


def test_leak_fails_even_when_the_marker_is_on_the_test(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.no_leaks(kinds=["file"])
        def test_only_files(tmp_path):
            open(tmp_path / "f", "w")

        @pytest.mark.no_leaks(kinds=["thread"])
        def test_files_not_checked(tmp_path):
            open(tmp_path / "f", "w")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=RUN_TIMEOUT)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_only_files*"])


def test_connection_through_a_test_proxy(tmp_path: Path) -> None:
    result = run_inner(tmp_path, {"test_proxy.py": '''
import socket
import pytest

KEEP = []


@pytest.fixture(scope="session")
def upstream():
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.mark.no_leaks
def test_leaks_a_proxied_connection(proxy_for, upstream):
    proxy = proxy_for("127.0.0.1", upstream)
    KEEP.append(socket.create_connection(("127.0.0.1", proxy.port)))  # LEAK


@pytest.mark.no_leaks
def test_closes_it(proxy_for, upstream):
    proxy = proxy_for("127.0.0.1", upstream)
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"x")
'''}, "--resilience-toxiproxy-engine=thread")
    assert result.ret == 1, result.text[-3000:]
    result.fnmatch_lines([
        "*ERROR at teardown of test_leaks_a_proxied_connection*",
        "*[[]socket] *127.0.0.1:* -> 127.0.0.1:*",
        "*created at test_proxy.py:17 in test_leaks_a_proxied_connection*",
        "*2 passed, 1 error*",
    ])
