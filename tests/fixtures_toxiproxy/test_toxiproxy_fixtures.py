"""The ``toxiproxy``, ``proxy_for`` and ``pg_proxy`` fixtures, run in inner pytest sessions."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_resilience.toxiproxy.client import Client

RUN_TIMEOUT = 120


@pytest.fixture(scope="module")
def shared_engine() -> Iterator[str]:
    """One built-in engine that inner sessions reach as an ``external`` server."""
    from pytest_resilience.toxiproxy.server import start_thread

    with start_thread("127.0.0.1", 0, seed=7) as handle:
        yield handle.url


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=RUN_TIMEOUT)


def test_proxy_for_puts_a_proxy_in_front_of_a_tcp_service(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os, socket

        def test_proxy(proxy_for, toxiproxy):
            with socket.create_server(("127.0.0.1", 0)) as upstream:
                port = upstream.getsockname()[1]
                proxy = proxy_for("127.0.0.1", port, name="svc")
                assert proxy.name == "svc"
                assert proxy.host == "127.0.0.1"
                assert proxy.listen == f"127.0.0.1:{proxy.port}"
                assert proxy.upstream == f"127.0.0.1:{port}"
                # (an outer xdist run leaks PYTEST_XDIST_WORKER into this session)
                worker = os.environ.get("PYTEST_XDIST_WORKER") or "main"
                assert toxiproxy.namespace == f"{worker}-{os.getpid()}"
                assert toxiproxy.server_name("svc") == f"{worker}-{os.getpid()}.svc"
                with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as c:
                    served, _ = upstream.accept()
                    with served:
                        c.sendall(b"hi")
                        assert served.recv(10) == b"hi"
                with proxy.latency(10) as toxic:
                    assert [t.name for t in proxy.list_toxics()] == [toxic.name]
                assert proxy.list_toxics() == []
                auto = proxy_for("localhost", port)
                assert auto.name != proxy.name
                assert sorted(toxiproxy.list_proxies()) == sorted([proxy.name, auto.name])
                assert proxy.events()  # the built-in engine keeps an event log
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1)


def test_proxies_and_toxics_do_not_survive_a_failing_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket
        import pytest

        seen = {}

        def test_a_fails_with_faults_left_on(proxy_for):
            proxy = proxy_for("127.0.0.1", 9, name="svc")
            proxy.latency(1000)              # plain calls, never removed
            proxy.timeout(0, stream="upstream")
            proxy.down()
            seen["port"] = proxy.port
            assert False, "deliberate failure"

        def test_b_sees_a_clean_server(toxiproxy):
            assert toxiproxy.list_proxies() == {}
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", seen["port"]), timeout=5).close()

        def test_c_pg_fails_with_latency_on(pg_proxy):
            pg_proxy.latency(5000)
            pg_proxy.down()
            assert False, "deliberate failure"

        def test_d_pg_proxy_is_fresh(pg_proxy):
            assert pg_proxy.enabled
            assert pg_proxy.list_toxics() == []
            import psycopg
            with psycopg.connect(pg_proxy.dsn, connect_timeout=5) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        """
    )
    result = run(pytester, "-p", "no:randomly")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*deliberate failure*"])


def test_works_under_xdist(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_proxy(proxy_for, toxiproxy, i):
            worker = os.environ["PYTEST_XDIST_WORKER"]
            assert toxiproxy.namespace.startswith(worker + "-")
            proxy = proxy_for("127.0.0.1", 9, name="same-name-everywhere")
            with proxy.latency(5):
                assert len(proxy.list_toxics()) == 1

        @pytest.mark.parametrize("i", range(2))
        def test_pg(pg_proxy, i):
            import psycopg
            with pg_proxy.latency(20):
                with psycopg.connect(pg_proxy.dsn, connect_timeout=5) as conn:
                    assert conn.execute("SELECT 1").fetchone() == (1,)
        """
    )
    result = run(pytester, "-p", "xdist", "-n", "2")
    result.assert_outcomes(passed=6)


def test_xdist_workers_share_an_external_server(
    pytester: pytest.Pytester, shared_engine: str
) -> None:
    pytester.makepyfile(
        """
        import os
        import pytest

        @pytest.mark.parametrize("i", range(6))
        def test_proxy(proxy_for, toxiproxy, i):
            proxy = proxy_for("127.0.0.1", 9, name="svc")   # same name on both workers
            proxy.latency(5)
            assert list(toxiproxy.list_proxies()) == ["svc"]  # only this worker's
        """
    )
    result = run(pytester, "-p", "xdist", "-n", "2", "--resilience-toxiproxy=external",
                 f"--resilience-toxiproxy-url={shared_engine}")
    result.assert_outcomes(passed=6)
    with Client(shared_engine) as client:
        assert client.list_proxies() == {}  # every session cleaned up after itself


def test_bad_use_names_the_argument(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_negative(proxy_for):
            proxy_for("127.0.0.1", 9).latency(-5)

        def test_unknown_type(proxy_for):
            proxy_for("127.0.0.1", 9).add_toxic("lag", {"latency": 5})

        def test_bad_stream(proxy_for):
            proxy_for("127.0.0.1", 9).timeout(10, stream="sideways")

        def test_bad_port(proxy_for):
            proxy_for("127.0.0.1", 0)
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=4)
    for line in [  # each on its own: the inner tests may run in any order (-p randomly)
        "*ConfigError: latency toxic: 'ms' must be >= 0, got -5",
        "*ConfigError: 'type' must be one of latency, *got 'lag'",
        "*ConfigError: 'stream' must be one of upstream, downstream, got 'sideways'",
        "*ConfigError: proxy_for: 'port' must be a TCP port 1-65535, got 0",
    ]:
        result.stdout.fnmatch_lines([line])
    assert "INTERNALERROR" not in result.stdout.str()


def test_binary_mode_without_a_binary_is_a_clear_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + "/usr/bin:/bin")
    pytester.makepyfile(
        """
        def test_one(toxiproxy):
            pass

        def test_two(proxy_for):
            pass
        """
    )
    result = run(pytester, "--resilience-toxiproxy=binary")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines([
        "*--resilience-toxiproxy=binary: no toxiproxy-server found; searched "
        "toxiproxy-server on PATH*--resilience-toxiproxy-bin=*--resilience-toxiproxy=builtin*",
    ])
    out = result.stdout.str()
    assert "INTERNALERROR" not in out
    assert "Traceback" not in out

    result = run(pytester, "--resilience-toxiproxy=binary",
                 f"--resilience-toxiproxy-bin={pytester.path / 'nope' / 'toxiproxy-server'}")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*searched --resilience-toxiproxy-bin=*nope*(no such file)*"])


def test_docker_mode_skips_without_a_docker_engine(pytester: pytest.Pytester) -> None:
    from pytest_resilience.services.toxiproxy import docker_available

    if docker_available() is None:
        pytest.skip("a Docker engine is reachable here; this test checks the skip path")
    pytester.makepyfile(
        """
        def test_one(proxy_for):
            raise AssertionError("must not run")
        """
    )
    result = run(pytester, "--resilience-toxiproxy=docker", "-rs")
    result.assert_outcomes(skipped=1)
    # Either no engine answers, or the docker extra (testcontainers) is not installed.
    result.stdout.re_match_lines([r".*SKIPPED.*--resilience-toxiproxy=docker: .*(?i:docker).*"])


def test_external_mode_that_does_not_answer(pytester: pytest.Pytester) -> None:
    import socket

    pytester.makepyfile(
        """
        def test_one(toxiproxy):
            pass
        """
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        result = run(pytester, "--resilience-toxiproxy=external",
                     f"--resilience-toxiproxy-url={url}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*the external Toxiproxy at {url} did not answer GET /version*"])
    assert "INTERNALERROR" not in result.stdout.str()


def test_thread_engine_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        textwrap.dedent(
            """
            def test_one(proxy_for):
                with proxy_for("127.0.0.1", 9).latency(1):
                    pass
            """
        )
    )
    result = run(pytester, "--resilience-toxiproxy-engine=thread")
    result.assert_outcomes(passed=1)


def test_binary_mode_runs_a_toxiproxy_server(pytester: pytest.Pytester) -> None:
    # A stand-in toxiproxy-server: the built-in engine's CLI behind the real
    # server's Go-style flags (-host H -port P).
    wrapper = pytester.path / "bin" / "toxiproxy-server"
    wrapper.parent.mkdir()
    wrapper.write_text(
        "#!/bin/sh\n"
        'while [ $# -gt 0 ]; do case "$1" in -host) host=$2;; -port) port=$2;; esac; '
        "shift 2; done\n"
        f'exec {sys.executable} -m pytest_resilience.toxiproxy --host "$host" --port "$port" '
        "--log-level warning\n"
    )
    wrapper.chmod(0o755)
    pytester.makepyfile(
        """
        import socket

        def test_one(proxy_for, toxiproxy):
            with socket.create_server(("127.0.0.1", 0)) as upstream:
                proxy = proxy_for("127.0.0.1", upstream.getsockname()[1])
                with proxy.down():
                    try:
                        socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()
                    except ConnectionRefusedError:
                        pass
                    else:
                        raise AssertionError("the proxy should be down")
        """
    )
    result = run(pytester, "--resilience-toxiproxy=binary",
                 f"--resilience-toxiproxy-bin={wrapper.parent}", "-s")
    result.assert_outcomes(passed=1)
