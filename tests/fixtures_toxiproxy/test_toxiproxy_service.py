"""The Toxiproxy service lifecycle: builtin, binary (with stand-in binaries), external."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from pytest_resilience.config import Settings
from pytest_resilience.errors import ConfigError, ServiceError
from pytest_resilience.services import toxiproxy as service
from pytest_resilience.toxiproxy.client import Client

# A stand-in for toxiproxy-server: parses -host/-port like the real one and
# answers GET /version; it binds the port it is given (0 = the OS picks).
FAKE_SERVER = """\
#!{python}
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"version": "fake-2.12.0"}}).encode() + b"\\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass

HTTPServer((args["-host"], int(args["-port"])), Handler).serve_forever()
"""


def make_executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def refused(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except (ConnectionRefusedError, ConnectionResetError):
        # A reset: the connection hit a listener that was closing as the server died.
        return True
    return False


@pytest.mark.parametrize("engine", ["process", "thread"])
def test_builtin(engine: str) -> None:
    settings = Settings(toxiproxy="builtin", toxiproxy_engine=engine, seed=5)
    with service.running_toxiproxy(settings) as server:
        assert server.mode == "builtin"
        assert server.url.startswith("http://127.0.0.1:")
        with server.client() as client:
            assert client.version()
    assert refused(server.url)
    server.stop()  # idempotent


def test_binary_runs_on_an_os_picked_port_and_stops(tmp_path: Path) -> None:
    fake = make_executable(tmp_path / "toxiproxy-server", FAKE_SERVER.format(python=sys.executable))
    server = service.start_binary(tmp_path)  # a directory holding toxiproxy-server
    try:
        assert server.mode == "binary"
        assert "fake-2.12.0" in server.description
        assert str(fake) in server.description
        with Client(server.url) as client:
            assert client.version() == "fake-2.12.0"
    finally:
        server.stop()
    assert refused(server.url)
    server.stop()


def test_binary_found_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_executable(tmp_path / "toxiproxy-server", FAKE_SERVER.format(python=sys.executable))
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert service.find_binary() == tmp_path / "toxiproxy-server"
    with (
        service.running_toxiproxy(Settings(toxiproxy="binary")) as server,
        Client(server.url) as client,
    ):
        assert client.version() == "fake-2.12.0"


def test_binary_that_exits_shows_its_output(tmp_path: Path) -> None:
    script = "#!/bin/sh\necho 'flag provided but not defined: -bogus' >&2\nexit 2\n"
    broken = make_executable(tmp_path / "toxiproxy-server", script)
    with pytest.raises(ServiceError) as err:
        service.start_binary(broken, startup_timeout=10)
    text = str(err.value)
    assert f"{broken} did not start" in text
    assert "flag provided but not defined" in text


def test_missing_binary_says_what_was_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(service.BinaryNotFound) as err:
        service.find_binary()
    assert f"toxiproxy-server on PATH ({tmp_path})" in str(err.value)
    assert "--resilience-toxiproxy=builtin" in str(err.value)
    (tmp_path / "plain").write_text("")
    with pytest.raises(service.BinaryNotFound, match="not executable"):
        service.find_binary(tmp_path / "plain")


def test_external(tmp_path: Path) -> None:
    with service.running_toxiproxy(Settings(toxiproxy="builtin", seed=1)) as engine:
        external = service.start_toxiproxy(Settings(toxiproxy="external",
                                                    toxiproxy_url=engine.url))
        assert external.mode == "external"
        external.stop()  # nothing to stop: the engine keeps running
        with Client(engine.url) as client:
            assert client.version()


def test_external_not_answering() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(ServiceError, match="did not answer GET /version"):
            service.connect_external(url)


def test_docker_unavailable_is_its_own_error() -> None:
    if service.docker_available() is None:
        pytest.skip("a Docker engine is reachable here")
    with pytest.raises(service.DockerUnavailable, match="--resilience-toxiproxy=docker"):
        service.start_docker()


def test_unknown_mode() -> None:
    with pytest.raises(ConfigError, match="unknown Toxiproxy mode"):
        service.start_toxiproxy(Settings(toxiproxy="bogus"))


def test_session_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    assert service.session_namespace() == f"gw3-{os.getpid()}"
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert service.session_namespace() == f"main-{os.getpid()}"


def test_listening_ports_of_this_process() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        ports = service._listening_ports(os.getpid())
        if ports is None:
            pytest.skip("no /proc here")
        assert sock.getsockname()[1] in ports


def test_binary_dies_with_the_pytest_process(tmp_path: Path) -> None:
    import subprocess
    import time

    make_executable(tmp_path / "toxiproxy-server", FAKE_SERVER.format(python=sys.executable))
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from pytest_resilience.services.toxiproxy import start_binary\n"
        f"server = start_binary(Path({str(tmp_path)!r}))\n"
        "print(server.url, flush=True)\n"
        "print('LOGDIR', server.log.parent, file=sys.stderr, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    url = proc.stdout.strip()
    assert url.startswith("http://127.0.0.1:"), proc.stderr
    deadline = time.monotonic() + 10  # the keeper notices its stdin closing at once
    while not refused(url):
        assert time.monotonic() < deadline, f"{url} still answers after its parent died"
        time.sleep(0.01)
    log_dirs = [line.split(" ", 1)[1] for line in proc.stderr.splitlines()
                if line.startswith("LOGDIR ")]
    assert log_dirs, proc.stderr
    while Path(log_dirs[0]).exists():  # the keeper removes it after the server exits
        assert time.monotonic() < deadline, f"{log_dirs[0]} was left behind"
        time.sleep(0.01)
