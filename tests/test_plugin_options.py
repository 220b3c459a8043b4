"""Plugin loading, options, ini twins, validation and the report header (pytester)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(120)


def test_autoloaded_fixtures_are_listed(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--fixtures")
    result.stdout.fnmatch_lines(["postgres [[]session scope[]] -- *", "postgres_db -- *"])
    assert result.ret == 0


def test_dash_p_loads_the_plugin_without_autoload(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile("def test_ok(postgres_db):\n    assert postgres_db.dbname\n")
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    missing = pytester.runpytest_subprocess("-q", timeout=60)
    loaded = pytester.runpytest_subprocess("-q", "-p", "pytest_resilience", timeout=60)
    missing.stdout.fnmatch_lines(["*fixture 'postgres_db' not found*"])
    loaded.assert_outcomes(passed=1)


def test_header_shows_effective_configuration(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nresilience_leaks = warn\n")
    result = pytester.runpytest("--resilience-seed=123", "--co")
    result.stdout.fnmatch_lines([
        "resilience: postgres=local, toxiproxy=builtin (process), leaks=warn, seed=123 "
        "(replay with --resilience-seed=123)",
    ])


def test_flag_wins_over_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nresilience_leaks = fail\nresilience_seed = 7\n")
    result = pytester.runpytest("--resilience-leaks=off", "--resilience-seed=0", "--co")
    result.stdout.fnmatch_lines(["*leaks=off, seed=0 *"])


def test_seed_last_replays_the_previous_seed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_ok():\n    pass\n")
    pytester.runpytest("--resilience-seed=4242").assert_outcomes(passed=1)
    pytester.runpytest("--resilience-seed=99", "--co")  # ran no test: remembers nothing
    result = pytester.runpytest("--resilience-seed=last", "--co")
    result.stdout.fnmatch_lines(["*seed=4242 *"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resilience-postgres=mysql"],
         "ERROR: --resilience-postgres='mysql' is not valid; choose one of: local, docker, "
         "external *"),
        (["--resilience-toxiproxy=proxy"],
         "ERROR: --resilience-toxiproxy='proxy' is not valid; choose one of: builtin, binary, "
         "docker, external *"),
        (["--resilience-leaks=yes"],
         "ERROR: --resilience-leaks='yes' is not valid; choose one of: off, warn, fail *"),
        (["--resilience-seed=abc"],
         "ERROR: --resilience-seed='abc' is not valid; pass an integer or 'last'"),
        (["--resilience-pg-bin=/no/such/dir"],
         "ERROR: --resilience-pg-bin='/no/such/dir': no such directory"),
        (["--resilience-postgres=external"],
         "ERROR: --resilience-postgres=external needs a DSN: *"),
        (["--resilience-postgres=external", "--resilience-postgres-dsn=mysql://u@h/db"],
         "ERROR: --resilience-postgres-dsn: DSN 'mysql://u@h/db' has scheme 'mysql'; expected*"),
        (["--resilience-postgres-dsn=just-a-word"],
         "ERROR: --resilience-postgres-dsn: 'just-a-word' is not a DSN; expected*"),
        (["--resilience-toxiproxy=external"],
         "ERROR: --resilience-toxiproxy=external needs an URL: *"),
        (["--resilience-toxiproxy-url=localhost:8474"],
         "ERROR: --resilience-toxiproxy-url='localhost:8474' is not an URL; *"),
    ],
)
def test_bad_option_is_a_usage_error(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_bad_ini_value_names_the_ini_key(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nresilience_postgres = sqlite\n")
    result = pytester.runpytest()
    result.stderr.fnmatch_lines(["ERROR: ini resilience_postgres='sqlite' is not valid; *"])


def test_dsn_from_environment(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESILIENCE_POSTGRES_DSN", "postgresql://u:secret@127.0.0.1:1/db")
    result = pytester.runpytest("--resilience-postgres=external", "--co")
    result.stdout.fnmatch_lines(["*postgres=external (postgresql://u:***@127.0.0.1:1/db)*"])
    assert "secret" not in result.stdout.str()
