"""Scenario YAML files as pytest items: collection, node ids, -k, markers, parametrize,
xdist, --lf, and the JSON record of a run that mixes Python tests and scenarios."""

from __future__ import annotations

import json
import textwrap

import pytest

pytestmark = pytest.mark.timeout(240)

TARGETS = '''
import time

def answer(value=1):
    return value

def boom():
    raise RuntimeError("boom")

def add(a, b):
    return a + b

async def slow_answer(delay=0.0):
    import asyncio
    await asyncio.sleep(delay)
    return "done"

def fetch(api_url, tries=3):
    import httpx
    for _ in range(tries):
        response = httpx.get(api_url + "/x", timeout=5)
        if response.status_code < 500:
            return response.status_code
    return "fallback"
'''

TWO_DOCS = """
name: First claim holds
target: {call: "targets:answer"}
expect: {returns: 1}
---
name: second claim fails
target: {call: "targets:boom"}
expect: {returns: 1}
"""

ELSEWHERE = """
name: anywhere
target: {call: "targets:answer", args: {value: 2}}
expect: {returns: 2}
"""


def _setup(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(targets=TARGETS)
    (pytester.path / "scenarios").mkdir()
    (pytester.path / "scenarios" / "claims.yaml").write_text(TWO_DOCS)
    (pytester.path / "other").mkdir()
    (pytester.path / "other" / "more.resilience.yaml").write_text(ELSEWHERE)
    (pytester.path / "other" / "config.yaml").write_text("not: a scenario\n")


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "pytest_resilience", "-p", "no:randomly",
                                         *args, timeout=180)


def test_collection_and_node_ids(pytester: pytest.Pytester) -> None:
    _setup(pytester)
    result = _run(pytester, "--co", "-q", "scenarios", "other")
    result.stdout.fnmatch_lines([
        "scenarios/claims.yaml::first_claim_holds",
        "scenarios/claims.yaml::second_claim_fails",
        "other/more.resilience.yaml::anywhere",
    ])
    assert "config.yaml" not in result.stdout.str()


def test_run_k_and_last_failed(pytester: pytest.Pytester) -> None:
    _setup(pytester)
    result = _run(pytester, "scenarios", "other")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*scenario second_claim_fails*",
        "*returns verdict FAILED: every call returns 1*",
        "*raised RuntimeError: boom*",
    ])
    only = _run(pytester, "scenarios", "-k", "first")
    only.assert_outcomes(passed=1)
    again = _run(pytester, "scenarios", "other", "--lf")
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*run-last-failure: rerun previous 1 failure*"])


def test_markers_parametrize_and_usefixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(targets=TARGETS)
    pytester.makeini("[pytest]\nmarkers =\n    slow: a slow scenario\n")
    pytester.makeconftest(
        "import pytest\n\n@pytest.fixture\ndef prepared(tmp_path):\n"
        "    (tmp_path / 'marker').write_text('x')\n"
    )
    (pytester.path / "scenarios").mkdir()
    (pytester.path / "scenarios" / "marks.yaml").write_text(textwrap.dedent("""
        name: skipped one
        marks: [{skip: {reason: not today}}]
        target: {call: "targets:boom"}
        expect: {returns: 1}
        ---
        name: known bug
        marks: [{xfail: {reason: "issue 7", strict: true}}]
        target: {call: "targets:boom"}
        expect: {returns: 1}
        ---
        name: slow one
        marks: [slow]
        usefixtures: [prepared]
        target: {call: "targets:answer"}
        expect: {returns: 1}
        ---
        name: sums
        parametrize: {a: [1, 2], b: [10]}
        target: {call: "targets:add"}
        expect: {returns: 11}
    """))
    result = _run(pytester, "scenarios", "-v", "--strict-markers", "-rsx")
    result.stdout.fnmatch_lines([
        "*marks.yaml::skipped_one SKIPPED*",
        "*marks.yaml::known_bug XFAIL*",
        "*marks.yaml::slow_one PASSED*",
        "*marks.yaml::sums[[]1-10[]] PASSED*",
        "*marks.yaml::sums[[]2-10[]] FAILED*",
    ])
    result.assert_outcomes(passed=2, failed=1, skipped=1, xfailed=1)
    selected = _run(pytester, "scenarios", "-m", "slow")
    selected.assert_outcomes(passed=1)


def test_unregistered_marker_under_strict_markers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(targets=TARGETS)
    (pytester.path / "scenarios").mkdir()
    (pytester.path / "scenarios" / "m.yaml").write_text(
        "name: unknown mark\nmarks: [nosuchmark]\ntarget: {call: 'targets:answer'}\n"
        "expect: {returns: 1}\n"
    )
    result = _run(pytester, "scenarios", "--strict-markers")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*'nosuchmark' not found in `markers` configuration option*"])
    assert "INTERNALERROR" not in result.stdout.str()


def test_xdist_and_the_json_record_with_python_tests(pytester: pytest.Pytester) -> None:
    _setup(pytester)
    pytester.makepyfile(test_plain="""
        from pytest_resilience import Verdict
        def test_python(resilience_verdicts):
            Verdict(kind="custom", claim="a python check", passed=True).check()
    """)
    pytester.makepyfile(targets=TARGETS)
    (pytester.path / "scenarios" / "api.yaml").write_text(textwrap.dedent("""
        name: api falls back
        services:
          api: {routes: {GET /x: "503 x3"}}
        target: {call: "targets:fetch"}
        expect:
          returns: fallback
          attempts: {service: api, route: GET /x, exactly: 3}
    """))
    out = pytester.path / "report"
    result = _run(pytester, "scenarios", "other", "test_plain.py", "-p", "xdist", "-n", "2",
                  f"--resilience-report={out}")
    result.assert_outcomes(passed=4, failed=1)
    record = json.loads((out / "results.json").read_text())
    by_test = {t["nodeid"]: t for t in record["tests"]}
    kinds = {nodeid: [v["kind"] for v in t["verdicts"]] for nodeid, t in by_test.items()}
    assert kinds["test_plain.py::test_python"] == ["custom"]
    assert kinds["scenarios/api.yaml::api_falls_back"] == ["returns", "attempts"]
    assert kinds["scenarios/claims.yaml::second_claim_fails"] == ["returns"]
    assert by_test["scenarios/claims.yaml::second_claim_fails"]["outcome"] == "failed"
    # the summary says what was proven, one line per verdict
    result.stdout.fnmatch_lines([
        "*= resilience =*",
    ])
    assert "scenarios/api.yaml::api_falls_back PASSED attempts: requests reaching api GET /x" \
        in result.stdout.str()


def test_an_async_target(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(targets=TARGETS)
    (pytester.path / "scenarios").mkdir()
    (pytester.path / "scenarios" / "a.yaml").write_text(textwrap.dedent("""
        name: async on the virtual clock
        clock: virtual
        target: {call: "targets:slow_answer", args: {delay: 900}}
        drive: {calls: 2, every: 60s}
        expect:
          returns: done
          latency: {max: 900s}
    """))
    result = _run(pytester, "scenarios", "--durations=1")
    result.assert_outcomes(passed=1)


def test_a_target_that_does_not_import_fails_at_collection(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(targets=TARGETS)
    (pytester.path / "scenarios").mkdir()
    (pytester.path / "scenarios" / "t.yaml").write_text(textwrap.dedent("""
        name: missing module
        target: {call: "nosuchmodule:run"}
        expect: {returns: 1}
        ---
        name: missing function
        target: {call: "targets:nosuchfunction"}
        expect: {returns: 1}
        ---
        name: fine
        target: {call: "targets:answer"}
        expect: {returns: 1}
    """))
    result = _run(pytester, "scenarios")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines([
        "*scenarios/t.yaml:3:16: target.call: cannot import 'nosuchmodule': "
        "ModuleNotFoundError*",
    ])
    result.stdout.fnmatch_lines(["*scenarios/t.yaml:7:16: target.call: 'targets' has no "
                                 "'nosuchfunction'"])
    assert "Traceback" not in result.stdout.str()
