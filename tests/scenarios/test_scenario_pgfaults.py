"""Postgres-protocol faults on a scenario's timeline: the real server raises the SQLSTATE
for the matching statement (through the ``pg_fault`` stage), so a client that retries
serialization failures passes and one that does not fails in the claim's words; with
network faults on the same Postgres, the stage sits in front of the proxy and both
apply."""

from __future__ import annotations

import json
import textwrap

import pytest

pytestmark = pytest.mark.timeout(180)

TARGETS = '''
import time

import psycopg


def probe(postgres_dsn):
    """Two attempts at most (40001 is retried); how it went and whether it was slow."""
    started = time.monotonic()
    for attempt in ("first", "retried"):
        try:
            with psycopg.connect(postgres_dsn, autocommit=True) as conn:
                conn.execute("SELECT 42")
            break
        except psycopg.errors.SerializationFailure:
            continue
    slow = time.monotonic() - started >= 0.2
    return f"{attempt} {'slow' if slow else 'fast'}"


def transfer(postgres_dsn, retry=True):
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, n int)")
        conn.execute("INSERT INTO accounts VALUES (1, 0) ON CONFLICT DO NOTHING")
    for attempt in range(3):
        try:
            with psycopg.connect(postgres_dsn) as conn:
                conn.execute("UPDATE accounts SET n = n + 1 WHERE id = 1")
                conn.commit()
            return "committed"
        except psycopg.errors.SerializationFailure:
            if not retry:
                raise
    return "gave up"
'''


def _run(pytester: pytest.Pytester, body: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(targets=TARGETS)
    scenarios = pytester.path / "scenarios"
    scenarios.mkdir(exist_ok=True)
    (scenarios / "pg.yaml").write_text(textwrap.dedent(body))
    return pytester.runpytest_subprocess("-p", "pytest_resilience", "-p", "no:randomly",
                                         "-p", "no:cacheprovider", "scenarios", *args,
                                         timeout=120)


SCENARIO = """
    name: serialization failures are retried
    services:
      postgres: {{}}
    target:
      call: targets:transfer
      args: {{retry: {retry}}}
    faults:
      - {{on: postgres, fault: sqlstate, code: "40001", match: UPDATE accounts, nth: 1}}
    drive: {{calls: 2}}
    expect:
      returns: committed
"""


def test_a_client_that_retries_passes(pytester: pytest.Pytester) -> None:
    report = pytester.path / "out"
    result = _run(pytester, SCENARIO.format(retry="true"), f"--resilience-report={report}")
    result.assert_outcomes(passed=1)
    tests = json.loads((report / "results.json").read_text())["tests"]
    events = [what for a in tests[0]["attachments"] if a["kind"] == "fault-timeline"
              for _, what in a["events"]]
    assert any(e.startswith("applied faults[0] sqlstate on postgres") for e in events), events


def test_a_client_that_does_not_retry_fails_naming_the_error(
        pytester: pytest.Pytester) -> None:
    result = _run(pytester, SCENARIO.format(retry="false"))
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "raised SerializationFailure" in out, out
    assert "1 of 2 calls did not" in out, out


def test_protocol_faults_belong_on_postgres(pytester: pytest.Pytester) -> None:
    result = _run(pytester, """
        name: wrong service
        services:
          api: {routes: {GET /x: ['200 x*']}}
        target:
          call: targets:transfer
        faults:
          - {on: api, fault: sqlstate, code: "40001"}
        expect:
          error_rate: 0
    """)
    result.assert_outcomes(failed=1)
    assert "put it on the service named 'postgres'" in result.stdout.str()


def test_protocol_and_network_faults_on_one_postgres(pytester: pytest.Pytester) -> None:
    body = """
        name: a serialization failure on a slow network
        services:
          postgres: {}
        target:
          call: targets:probe
        faults:
          - {on: postgres, fault: sqlstate, code: "40001", match: SELECT 42, nth: 1}
          - {on: postgres, fault: latency, latency: 100}
        expect:
          returns: %s
          attempts: {service: postgres, exactly: 2}
    """
    result = _run(pytester, body % "retried slow", "-rA")
    result.assert_outcomes(passed=1)
    # the same scenario without the latency: fast, so the network fault above did apply
    fast = body.replace("          - {on: postgres, fault: latency, latency: 100}\n", "")
    fast = fast.replace("          attempts: {service: postgres, exactly: 2}\n", "")
    result = _run(pytester, fast % "retried fast")
    result.assert_outcomes(passed=1)
