"""What a user sees when they get the plugin wrong (issue 15, "Errors users see").

Every case runs a small test file in a pytester subprocess and checks the failure
block: the user's own line is shown, the message appears once, no frame of the
plugin (no ``pytest_resilience/`` path), nothing chained ("During handling of
the above exception...") and the block stays short.
"""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.timeout(180)

RUN_TIMEOUT = 120
#: the longest acceptable failure block (the test's header, its source, the E line)
MAX_BLOCK_LINES = 12


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_user=source)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly",
                                         *args, timeout=RUN_TIMEOUT)


def block(result: pytest.RunResult, test: str) -> list[str]:
    """The lines of ``test``'s failure or error section (without its header)."""
    lines = result.stdout.lines
    header = re.compile(rf"^_+ (ERROR at \w+ of )?{re.escape(test)} _+$")
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    assert start is not None, f"no section for {test}:\n" + result.stdout.str()
    end = start + 1
    while end < len(lines) and not re.match(r"^(_{3,} .* _{3,}|={3,}.*)$", lines[end]):
        end += 1
    return lines[start + 1:end]


def check_clean(result: pytest.RunResult, test: str, message: str,
                user_line: str | None) -> list[str]:
    """The common assertions; returns the block for case-specific ones."""
    out = result.stdout.str()
    section = block(result, test)
    text = "\n".join(section)
    assert "pytest_resilience/" not in out, out
    assert "During handling of the above exception" not in out, out
    assert "INTERNALERROR" not in out, out
    assert text.count(message) == 1, text
    if user_line is not None:
        assert user_line in text, text
    assert len(section) <= MAX_BLOCK_LINES, f"{len(section)} lines:\n{text}"
    return section


# ------------------------------------------------------------------ (1) toxics


@pytest.mark.parametrize(("call", "message"), [
    ('p.add_toxic("latency", {"latncy": 100})',
     "latency toxic: unknown attribute 'latncy' (valid attributes: latency, jitter)"),
    ('p.latency("100")', "latency toxic: 'ms' must be an integer, got '100'"),
    ('p.add_toxic("latncy", {"latency": 100})', "got 'latncy'"),
    ('p.latency(100, stream="sideways")', "'sideways'"),
])
def test_a_wrong_toxic_argument_shows_the_users_line(
    pytester: pytest.Pytester, call: str, message: str
) -> None:
    result = run(pytester, f"""
        def test_toxic(proxy_for):
            p = proxy_for("127.0.0.1", 9)
            {call}
        """)
    result.assert_outcomes(failed=1)
    section = check_clean(result, "test_toxic", message, "test_user.py:3: ConfigError")
    assert f">       {call}" in section


def test_a_wrong_argument_on_the_session_client_shows_the_users_line(
    pytester: pytest.Pytester,
) -> None:
    result = run(pytester, """
        def test_client(toxiproxy):
            toxiproxy.create_proxy("x", upstream="nowhere")
        """)
    result.assert_outcomes(failed=1)
    check_clean(result, "test_client", "'upstream' must be 'host:port'",
                "test_user.py:2: ConfigError")


# -------------------------------------------------------------- (2) HTTP scripts


@pytest.mark.parametrize(("call", "message"), [
    ('http_backends({"GET /x": ["503 x3x"]})',
     "GET /x step 1 '503 x3x': 'x3x' is not a count"),
    ('http_backend.get("/x", "200", "503 X3")', "GET /x step 2 '503 X3': 'X3' is not a count"),
    ('http_backend.route("FETCH", "/x", "200")', "route method 'FETCH' is not one of"),
    ('http_backend.get("/x", "999")', "GET /x step 1 '999': '999' is not a status code"),
    ('http_backends({"GET /x": "200"}, mode="respx").get("/y", "5O3")',
     "GET /y step 1 '5O3': '5O3' is not a status code"),
    ("Response(999)", "Response: status must be an integer 100-599, got 999"),
])
def test_an_http_script_typo_is_rejected_at_the_users_line(
    pytester: pytest.Pytester, call: str, message: str
) -> None:
    result = run(pytester, f"""
        from pytest_resilience.http import Response

        def test_script(http_backend, http_backends):
            {call}
        """)
    result.assert_outcomes(failed=1)
    section = check_clean(result, "test_script", message, "test_user.py:4: ConfigError")
    assert f">       {call}" in section


def test_a_valid_script_still_works(pytester: pytest.Pytester) -> None:
    result = run(pytester, """
        import httpx

        def test_ok(http_backend):
            http_backend.get("/x", "503 x2", "200 xylophone")
            got = [httpx.get(http_backend.url_for("/x")) for _ in range(3)]
            assert [r.status_code for r in got] == [503, 503, 200]
            assert got[-1].text == "xylophone"
        """)
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(("marker", "message"), [
    ('{"GET /x": ["503 x3x"]}',
     "test_user.py::test_marked: @pytest.mark.http_backend routes: GET /x step 1 '503 x3x': "
     "'x3x' is not a count"),
    ("rutes={}", "test_user.py::test_marked: @pytest.mark.http_backend: unknown argument "
                 "'rutes'"),
])
def test_an_http_marker_typo_is_one_line(
    pytester: pytest.Pytester, marker: str, message: str
) -> None:
    result = run(pytester, f"""
        import pytest

        @pytest.mark.http_backend({marker})
        def test_marked(http_backend):
            pass
        """)
    result.assert_outcomes(errors=1)
    section = check_clean(result, "test_marked", message, None)
    assert len(section) == 1, section


# ------------------------------------------------------------- (3) virtual_time


def test_a_virtual_time_marker_typo_is_one_line(pytester: pytest.Pytester) -> None:
    result = run(pytester, """
        import pytest

        @pytest.mark.virtual_time(strat=0)
        def test_clock(virtual_clock):
            pass
        """)
    result.assert_outcomes(errors=1)
    section = check_clean(
        result, "test_clock",
        "test_user.py::test_clock: @pytest.mark.virtual_time got an unknown argument 'strat' "
        "(did you mean 'start'?)", None)
    assert len(section) == 1, section


# ---------------------------------------------------------- (4) duplicate proxies


def test_a_duplicate_proxy_name_is_named_with_the_fix(pytester: pytest.Pytester) -> None:
    result = run(pytester, """
        def test_dup(proxy_for):
            proxy_for("127.0.0.1", 9, name="backend")
            proxy_for("127.0.0.1", 10, name="backend")
        """)
    result.assert_outcomes(failed=1)
    section = check_clean(result, "test_dup", "a proxy named 'backend' already exists",
                          "test_user.py:3: ConfigError")
    assert "pass a different name=" in "\n".join(section)


def test_the_client_names_a_duplicate_proxy_too(pytester: pytest.Pytester) -> None:
    result = run(pytester, """
        def test_dup(toxiproxy):
            toxiproxy.create_proxy("twice", upstream="127.0.0.1:9")
            try:
                toxiproxy.create_proxy("twice", upstream="127.0.0.1:9")
            finally:
                toxiproxy.delete_proxy("twice")
        """)
    result.assert_outcomes(failed=1)
    check_clean(result, "test_dup", "a proxy named 'twice' already exists",
                "test_user.py:4: Conflict")


# --------------------------------------------------------------- (5) cache dir


def test_a_cache_dir_that_cannot_be_created_is_a_usage_error(
    pytester: pytest.Pytester,
) -> None:
    blocker = pytester.path / "a-file"
    blocker.write_text("not a directory")
    result = run(pytester, "def test_nothing():\n    pass\n",
                 f"--resilience-cache-dir={blocker}/sub")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        f"ERROR: --resilience-cache-dir='{blocker}/sub': cannot create {blocker}/sub: "
        f"{blocker} is a file, not a directory",
    ])
    assert "Traceback" not in result.stderr.str()


def test_a_cache_dir_that_is_a_file_is_a_usage_error(pytester: pytest.Pytester) -> None:
    blocker = pytester.path / "a-file"
    blocker.write_text("not a directory")
    result = run(pytester, "def test_nothing():\n    pass\n", f"--resilience-cache-dir={blocker}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: *{blocker} is a file, not a directory"])


def test_a_cache_dir_still_to_be_made_is_not_created_at_configure_time(
    pytester: pytest.Pytester,
) -> None:
    later = pytester.path / "later" / "cache"
    result = run(pytester, "def test_nothing():\n    pass\n", f"--resilience-cache-dir={later}")
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "later").exists()


# ------------------------------------------------------ (6) Toxiproxy start-up


@pytest.mark.parametrize(("args", "message"), [
    (("--resilience-toxiproxy=binary", "--resilience-toxiproxy-bin=/nonexistent"),
     "--resilience-toxiproxy=binary: no toxiproxy-server found"),
    (("--resilience-toxiproxy=external", "--resilience-toxiproxy-url=http://127.0.0.1:1"),
     "the external Toxiproxy at http://127.0.0.1:1 did not answer GET /version"),
])
def test_a_toxiproxy_start_up_error_is_said_once(
    pytester: pytest.Pytester, args: tuple[str, ...], message: str
) -> None:
    result = run(pytester, "def test_proxy(toxiproxy):\n    pass\n", *args)
    result.assert_outcomes(errors=1)
    section = check_clean(result, "test_proxy", message, None)
    assert len(section) == 1, section
