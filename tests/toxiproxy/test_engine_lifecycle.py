"""Starting and stopping the built-in engine: thread, child process, CLI."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from pytest_resilience.errors import ConfigError
from pytest_resilience.services.registry import owned
from pytest_resilience.toxiproxy import start_process, start_thread
from pytest_resilience.toxiproxy.server import THREAD_NAME

ROOT = Path(__file__).resolve().parents[2]


def _fds() -> set[str]:
    """Open fds, minus the plugin's own long-lived ones (the reaper's pipe)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        if int(fd) in owned.fds:
            continue
        try:
            out.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            continue  # the fd of the listdir itself
    return out


@pytest.fixture(scope="module", autouse=True)
def _warm_up() -> None:
    """libuv keeps one process-wide pipe once a first loop ran: create it before counting."""
    start_thread().stop()


def _engine_threads() -> set[threading.Thread]:
    """Engine threads, minus any that existed before this test (a session engine)."""
    return {t for t in threading.enumerate() if t.name == THREAD_NAME} - _BASELINE


_BASELINE: set[threading.Thread] = set()


@pytest.fixture(autouse=True)
def _thread_baseline() -> None:
    _BASELINE.clear()
    _BASELINE.update(t for t in threading.enumerate() if t.name == THREAD_NAME)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def _wait_pid_exit(pid: int, timeout: float) -> bool:
    """Wait for any process (not only a child) to exit, via a pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def _exercise(url: str, upstream: str) -> tuple[int, socket.socket]:
    with httpx.Client(base_url=url, timeout=10) as client:
        response = client.post(
            "/proxies", json={"name": "life", "upstream": upstream, "listen": "127.0.0.1:0"}
        )
        assert response.status_code == 201, response.text
        port = int(response.json()["listen"].rsplit(":", 1)[1])
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(b"hi")
    assert conn.recv(2) == b"hi"
    return port, conn


def test_thread_engine_leaves_nothing_behind(echo_server: Any) -> None:
    assert not _engine_threads()
    before = _fds()
    engine = start_thread()
    assert engine.url == f"http://127.0.0.1:{engine.port}"
    assert len(_engine_threads()) == 1
    # a daemon thread (never blocks interpreter exit), stopped by LoopThread's atexit hook
    assert next(iter(_engine_threads())).daemon
    proxy_port, conn = _exercise(engine.url, echo_server.address)
    try:
        engine.stop()
        assert conn.recv(10) == b""  # live proxied connection closed by stop()
    finally:
        conn.close()
    engine.stop()  # idempotent
    for thread in echo_server.threads:  # the upstream side sees EOF and closes its socket
        thread.join(10)
    assert not _engine_threads()
    assert _refused(engine.port)
    assert _refused(proxy_port)
    assert _fds() <= before


def test_thread_engine_context_manager_and_seed() -> None:
    with start_thread(seed=99) as engine:
        info = httpx.get(f"{engine.url}/x-resilience/info", timeout=10).json()
        assert info["seed"] == 99
        assert engine.seed == 99
    assert not engine.running
    assert not _engine_threads()


def test_process_engine_leaves_nothing_behind(echo_server: Any) -> None:
    before = _fds()
    engine = start_process(seed=5)
    assert engine.mode == "process"
    assert engine.pid != os.getpid()
    info = httpx.get(f"{engine.url}/x-resilience/info", timeout=10).json()
    assert info["pid"] == engine.pid
    assert info["seed"] == 5
    proxy_port, conn = _exercise(engine.url, echo_server.address)
    try:
        engine.stop()
        assert conn.recv(10) == b""
    finally:
        conn.close()
    engine.stop()
    for thread in echo_server.threads:
        thread.join(10)
    assert _wait_pid_exit(engine.pid, 0)
    assert _refused(engine.port)
    assert _refused(proxy_port)
    assert _fds() <= before


def test_thread_bind_conflict_is_a_clear_error() -> None:
    with start_thread() as engine, pytest.raises(Exception, match="cannot listen"):
        start_thread(port=engine.port)
    assert not _engine_threads()


def test_process_bind_conflict_is_a_clear_error() -> None:
    with start_thread() as engine, pytest.raises(Exception, match="cannot listen"):
        start_process(port=engine.port)


def test_config_file(tmp_path: Path, echo_server: Any) -> None:
    config = tmp_path / "proxies.json"
    config.write_text(json.dumps([{"name": "cfg", "upstream": echo_server.address,
                                   "listen": "127.0.0.1:0"}]))
    for starter in (start_thread, start_process):
        with starter(config=config) as engine:
            proxies = httpx.get(f"{engine.url}/proxies", timeout=10).json()
            assert list(proxies) == ["cfg"]


def test_null_config_file_loads_no_proxies(tmp_path: Path) -> None:
    """As toxiproxy-server: a config file holding ``null`` is an empty list."""
    config = tmp_path / "null.json"
    config.write_text("null")
    with start_thread(config=config) as engine:
        assert httpx.get(f"{engine.url}/proxies", timeout=10).json() == {}


def test_bad_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        start_thread(config=tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        start_process(config=bad)
    assert not _engine_threads()


def test_process_dies_with_its_parent() -> None:
    script = textwrap.dedent(
        """
        import sys, threading
        from pytest_resilience.toxiproxy import start_process
        engine = start_process()
        print(engine.pid, flush=True)
        threading.Event().wait()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert parent.stdout is not None
        engine_pid = int(parent.stdout.readline())
        assert not _wait_pid_exit(engine_pid, 0)
        parent.kill()  # SIGKILL: no cleanup code runs in the parent
        parent.wait(10)
        assert _wait_pid_exit(engine_pid, 10), "the engine outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def _cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pytest_resilience.toxiproxy", *args],
        capture_output=True, text=True, timeout=30, env=env, check=False, **kwargs,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "invalid port 99999"),
        (["--port", "abc"], "invalid port 'abc'"),
        (["--seed", "x"], "--seed"),
        (["--bogus"], "unrecognized arguments"),
        (["--port", "0", "--config", "/nonexistent/proxies.json"], "cannot read config file"),
    ],
)
def test_cli_bad_input(args: list[str], message: str) -> None:
    result = _cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_runs_and_stops_on_sigterm(tmp_path: Path, echo_server: Any) -> None:
    config = tmp_path / "proxies.json"
    config.write_text(json.dumps([{"name": "cli", "upstream": echo_server.address,
                                   "listen": "127.0.0.1:0"}]))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest_resilience.toxiproxy", "--port", "0",
         "--config", str(config), "--seed", "3"],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stderr is not None
        url = None
        for line in proc.stderr:
            if "listening url=" in line:
                url = line.split("url=", 1)[1].split()[0]
                break
        assert url is not None
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/version").status_code == 200
            assert list(client.get("/proxies").json()) == ["cli"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        rest = proc.stderr.read()
        assert "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_package_import_is_light() -> None:
    code = (
        "import sys, pytest_resilience.toxiproxy as t; "
        "print(sorted(m for m in ('uvloop', 'pytest_resilience.toxiproxy.server') "
        "if m in sys.modules)); print(t.__all__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    first, second = result.stdout.splitlines()
    assert first == "[]"
    assert "start_thread" in second
