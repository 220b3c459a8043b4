"""One lifecycle shape for every service, and one ownership registry.

The last two tests add a *fourth* service - a tiny ticker with a background loop
thread, a child process and a socket - using only the service building blocks
(``LoopThread``, ``spawn``, ``registry.declare``). Neither the leak check nor the
virtual clock knows about it, yet the leak check does not blame the test for it and
its code keeps real time under the virtual clock; the same service built without the
registry is reported as a leak.
"""

from __future__ import annotations

import pytest

from pytest_resilience.services.base import Service
from pytest_resilience.services.http_backend import HttpBackend, HttpEngine
from pytest_resilience.services.postgres import PostgresServer
from pytest_resilience.services.toxiproxy import start_builtin
from pytest_resilience.toxiproxy import start_thread


def test_every_service_has_the_same_shape(postgres: PostgresServer) -> None:
    backend = HttpBackend(routes={"GET /": "200"}, name="shape").start()
    engine = HttpEngine()
    toxiproxy = start_builtin("thread")
    handle = start_thread()
    try:
        for service in (postgres, backend, engine, toxiproxy, handle):
            assert isinstance(service, Service), type(service)
            text = service.describe()
            assert text
            if isinstance(service, PostgresServer) and service.password:
                assert service.password not in text
    finally:
        handle.stop()
        toxiproxy.stop()
        toxiproxy.stop()  # idempotent
        backend.stop()
        backend.stop()
        engine.stop()
    with start_builtin("thread") as again:  # the context-manager form
        assert again.describe().startswith("built-in engine")


FOURTH_SERVICE = '''
import asyncio, subprocess, sys, threading, time

import pytest

from pytest_resilience.services import registry
from pytest_resilience.services.loop_thread import LoopThread
from pytest_resilience.services.supervise import spawn

CHILD = [sys.executable, "-c", "import time; time.sleep(60)"]


class Ticker:
    """A fourth service. On demand (in the middle of a test) it starts a worker: a loop
    thread and a child process, as the Postgres pool or the engine do."""

    def __init__(self, declare: bool) -> None:
        self.declare = declare
        self.stops = []

    def start_worker(self):
        if self.declare:  # the building blocks declare what they own
            thread = LoopThread("ticker-loop", modules=[__name__])
            thread.start()
            child = spawn(CHILD, name="ticker-child")
            self.stops += [child.stop, thread.stop]
        else:  # the same, hand-made: nobody knows it is the plugin's
            loop = asyncio.new_event_loop()
            raw = threading.Thread(target=loop.run_forever, name="ticker-raw", daemon=True)
            raw.start()
            child = subprocess.Popen(CHILD)
            self.stops += [lambda: (child.kill(), child.wait()),
                           lambda: (loop.call_soon_threadsafe(loop.stop), raw.join(),
                                    loop.close())]

    def now(self):
        # the service's own code: real time, also while a test runs on virtual time
        return time.time()

    def stop(self):
        for stop in self.stops:
            stop()


@pytest.fixture(scope="session")
def ticker(request):
    service = Ticker(declare=request.config.getoption("--declare") == "yes")
    service.check_clock = request.config.getoption("--clock") == "yes"
    yield service
    service.stop()


def pytest_addoption(parser):
    parser.addoption("--declare", default="yes")
    parser.addoption("--clock", default="yes")
'''

USE_IT = '''
import datetime, time
import pytest

Y2K = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)

@pytest.mark.no_leaks
@pytest.mark.virtual_time(start=Y2K)
def test_uses_the_fourth_service(ticker):
    ticker.start_worker()
    assert time.time() < 1e9                 # the test: on virtual time, in 2000
    if ticker.check_clock:
        assert ticker.now() > 1.6e9, "the service's code ran on virtual time"
'''


def test_a_fourth_service_needs_no_change_to_leaks_or_clock(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FOURTH_SERVICE)
    pytester.makepyfile(USE_IT)
    result = pytester.runpytest_subprocess("-p", "pytest_resilience", timeout=120)
    result.assert_outcomes(passed=1)


def test_the_same_service_undeclared_is_a_leak(pytester: pytest.Pytester) -> None:
    """The registry is what tells them apart: undeclared, the same service is blamed."""
    pytester.makeconftest(FOURTH_SERVICE)
    pytester.makepyfile(USE_IT)
    result = pytester.runpytest_subprocess("-p", "pytest_resilience", "--declare=no",
                                           timeout=120)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the service's code ran on virtual time*"])
    # (a failing test is not judged for leaks: a second run without the clock check)
    leaks = pytester.runpytest_subprocess("-p", "pytest_resilience", "--declare=no",
                                          "--clock=no", timeout=120)
    leaks.assert_outcomes(passed=1, errors=1)
    leaks.stdout.fnmatch_lines(["*[[]thread[]] thread 'ticker-raw'*"])
    leaks.stdout.fnmatch_lines(["*[[]process[]] child process * still running*"])


FORGETFUL = """
import sys
from pytest_resilience.toxiproxy import start_thread
from pytest_resilience.services.http_backend import HttpEngine
engine = start_thread()
http_engine = HttpEngine().start()
print(engine.port, flush=True)
"""  # ...and exits without stopping either


def test_forgotten_loop_threads_do_not_block_exit() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-X", "dev", "-c", FORGETFUL], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().isdigit()
    assert "Traceback" not in done.stderr
    assert "Warning" not in done.stderr, done.stderr
