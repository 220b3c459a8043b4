"""The fixtures' plugin behaviour, seen from a pytest run (pytester)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(180)

INI = "[pytest]\nfilterwarnings = error\nasyncio_default_fixture_loop_scope = function\n"


@pytest.fixture
def tester(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    return pytester


def test_unused_scripted_steps_fail_at_teardown(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        """
        import httpx

        def test_client_gives_up_early(http_backend):
            http_backend.route("GET", "/trends", ["503 x3", '200 {"ok": true}'])
            with httpx.Client(base_url=http_backend.url) as client:
                assert client.get("/trends").status_code == 503  # no retry at all
        """
    )
    result = tester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_client_gives_up_early*",
            "http_backend: 2 scripted steps never answered (did the client give up before "
            "retrying?):",
            "  GET /trends step 1 of 2 '503 x3': answered 1 times, scripted 3 times",
            "  GET /trends step 2 of 2 '200 {\"ok\": true}': answered 0 times, scripted 1 times",
            "  opt out: @pytest.mark.http_backend(assert_all_used=False) or "
            "backend.assert_all_used = False (README: 'Fake HTTP backends')",
        ],
        consecutive=True,
    )


def test_opting_out_of_unused_steps(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        """
        import pytest

        @pytest.mark.http_backend(assert_all_used=False)
        def test_marker(http_backend):
            http_backend.route("GET", "/x", "503 x3")

        def test_attribute(http_backend):
            http_backend.route("GET", "/x", "503 x3")
            http_backend.assert_all_used = False

        def test_factory_keyword(http_backends):
            http_backends(assert_all_used=False).route("GET", "/x", "503")
            http_backends(mode="respx", assert_all_used=False).route("GET", "/x", "503")

        pytestmark = pytest.mark.http_backend(assert_all_used=False)

        @pytest.mark.http_backend(assert_all_used=True)
        def test_closest_marker_wins(http_mock):
            http_mock.route("GET", "/x", "503")
        """
    )
    result = tester.runpytest()
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(["ERROR *::test_closest_marker_wins*"])
    result.stdout.fnmatch_lines(["http_mock: 1 scripted step never answered*"])


def test_unscripted_requests_fail_at_teardown_and_can_opt_out(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        """
        import httpx, pytest

        def test_unscripted(http_backend):
            http_backend.route("GET", "/known", "200")
            with httpx.Client(base_url=http_backend.url) as client:
                assert client.get("/known").status_code == 200
                assert client.get("/typo").status_code == 404
                assert client.get("/known").status_code == 500

        @pytest.mark.http_backend(assert_all_expected=False)
        def test_opted_out(http_backend):
            with httpx.Client(base_url=http_backend.url) as client:
                assert client.get("/typo").status_code == 404
        """
    )
    result = tester.runpytest()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "http_backend: 2 requests not scripted:",
            "  #1 GET /typo: no route",
            "  #2 GET /known: script exhausted: all 1 steps of GET /known were used",
            "  opt out: @pytest.mark.http_backend(assert_all_expected=False) or "
            "backend.assert_all_expected = False (README: 'Fake HTTP backends')",
        ],
        consecutive=True,
    )


def test_a_test_that_did_not_pass_gets_no_extra_teardown_error(tester: pytest.Pytester
                                                               ) -> None:
    tester.makepyfile(
        """
        import pytest

        def test_fails(http_backend):
            http_backend.route("GET", "/x", "503 x3")
            assert False, "the test's own failure"

        def test_skips(http_backend):
            http_backend.route("GET", "/x", "503 x3")
            pytest.skip("not today")

        @pytest.mark.xfail(strict=True)
        def test_xfails(http_mock):
            http_mock.route("GET", "/x", "503 x3")
            assert False
        """
    )
    result = tester.runpytest()
    result.assert_outcomes(failed=1, skipped=1, xfailed=1)
    result.stdout.no_fnmatch_line("*never answered*")


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ('["503 x2", "5O3"]',
         "*ConfigError: GET /x step 2 '5O3': '5O3' is not a status code (100-599) or a fault "
         "(empty, malformed, truncated, garbage, reset, hang)*"),
        ('["200 delay=-10ms"]',
         "*ConfigError: GET /x step 1 '200 delay=-10ms': delay '-10ms' is negative*"),
        ('[{"status": 200, "jsn": {}}]',
         "*ConfigError: GET /x step 1 {'status': 200, 'jsn': {}}: unknown key 'jsn'; valid "
         "keys: status, json, text, body, headers, delay, dribble, retry_after, content_type, "
         "times, fault, size*"),
    ],
)
def test_bad_scripts_are_config_errors(tester: pytest.Pytester, script: str,
                                       message: str) -> None:
    tester.makepyfile(
        f"""
        def test_bad(http_backend):
            http_backend.route("GET", "/x", {script})
        """
    )
    result = tester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([message])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")


def test_bad_marker_is_a_config_error_at_setup(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        """
        import pytest

        @pytest.mark.http_backend(assert_all_usd=False)
        def test_bad(http_backend):
            pass

        @pytest.mark.http_backend(routes={"GET /x": ["200 dely=1s"]})
        def test_bad_routes(http_backend):
            pass
        """
    )
    result = tester.runpytest()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines([
        "*::test_bad: @pytest.mark.http_backend: unknown argument 'assert_all_usd'; valid: "
        "routes, assert_all_used, assert_all_expected, seed",
    ])
    result.stdout.fnmatch_lines(["*::test_bad_routes: @pytest.mark.http_backend routes: "
                                 "GET /x step 1 '200 dely=1s': unknown option 'dely'*"])


def test_marker_routes_and_seeded_delays_replay(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        """
        import httpx, pytest

        @pytest.mark.http_backend(routes={"GET /r": ["200 x3 delay=uniform(0ms,5ms)"]})
        def test_draws(http_backend):
            with httpx.Client(base_url=http_backend.url) as client:
                for _ in range(3):
                    client.get("/r")
            print("DRAW", http_backend.routes[0].rng.random())
        """
    )
    first = tester.runpytest("-s", "--resilience-seed=5")
    again = tester.runpytest("-s", "--resilience-seed=5")
    other = tester.runpytest("-s", "--resilience-seed=6")
    draws = [[line.partition("DRAW")[2] for line in r.outlines if "DRAW" in line]
             for r in (first, again, other)]
    first.assert_outcomes(passed=1)
    assert len(draws[0]) == 1
    assert draws[0] == draws[1]
    assert draws[0] != draws[2]


ASYNC_TESTS = """
import aiohttp, httpx, pytest

{marker}
async def test_async(http_backend, http_mock):
    http_backend.route("GET", "/a", "503", "200 ok")
    http_mock.route("GET", "/a", "reset", "200 ok")
    async with aiohttp.ClientSession() as session:
        async with session.get(http_backend.url + "/a") as resp:
            assert resp.status == 503
    async with httpx.AsyncClient() as client:
        assert (await client.get(http_backend.url + "/a")).text == "ok"
        with pytest.raises(httpx.ReadError):
            await client.get(http_mock.url + "/a")
        assert (await client.get(http_mock.url + "/a")).text == "ok"

def test_sync(http_backend):
    http_backend.route("GET", "/s", "204")
    assert httpx.get(http_backend.url + "/s").status_code == 204
"""


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_pytest_asyncio_modes(tester: pytest.Pytester, mode: str) -> None:
    marker = "@pytest.mark.asyncio" if mode == "strict" else ""
    tester.makepyfile(ASYNC_TESTS.format(marker=marker))
    result = tester.runpytest_subprocess(f"--asyncio-mode={mode}", timeout=120)
    result.assert_outcomes(passed=2)


def test_xdist_two_workers(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        """
        import httpx, pytest

        @pytest.mark.parametrize("i", range(8))
        def test_many(http_backend, http_mock, i):
            http_backend.route("GET", "/x", f"200 {i}")
            http_mock.route("GET", "/x", f"201 {i}")
            with httpx.Client() as client:
                assert client.get(http_backend.url + "/x").text == str(i)
                assert client.get(http_mock.url + "/x").status_code == 201

        def test_unused_fails_on_a_worker_too(http_backend):
            http_backend.route("GET", "/never", "200")
        """
    )
    result = tester.runpytest_subprocess("-p", "xdist", "-n", "2", timeout=120)
    result.assert_outcomes(passed=9, errors=1)
    result.stdout.fnmatch_lines(["*GET /never step 1 of 1 '200': answered 0 times*"])
