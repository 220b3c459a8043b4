"""Scenario load runs (``drive`` with rate/concurrency/soak): the soak driver under a
YAML file, its drift/error-rate/latency verdicts, its schema errors, repeating faults as
stages of the record, ``target.setup`` and ``--resilience-soak`` re-bounding. Each
inner run lasts 1-3 s."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_resilience.soak.record import load

pytestmark = pytest.mark.timeout(180)

TARGETS = '''
import asyncio
import json
import socket
from pathlib import Path

KEPT = []
N = {"calls": 0}


async def leaky(every=5):
    """Keeps one open socket per `every` calls."""
    N["calls"] += 1
    if N["calls"] % every == 0:
        KEPT.append(socket.socket())
    await asyncio.sleep(0.001)


async def clean():
    with socket.socket():
        await asyncio.sleep(0.001)


async def flaky():
    N["calls"] += 1
    await asyncio.sleep(0.001)
    if N["calls"] % 2:
        raise ConnectionResetError("peer reset")


async def slow():
    await asyncio.sleep(0.03)


async def fetch(api_url):
    import httpx
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(api_url + "/x")
    response.raise_for_status()


class Counter:
    def __init__(self):
        self.calls = 0


async def counter():
    box = Counter()
    yield box
    Path("setup.json").write_text(json.dumps({"calls": box.calls}))


async def count(context):
    assert isinstance(context, Counter), context
    context.calls += 1
    await asyncio.sleep(0)
'''

LOAD = "drive: {rate: 50, concurrency: 2, duration: 2s, warmup: 500ms, sample_every: 100ms}\n"


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(load_targets=TARGETS)
    return pytester.runpytest_subprocess("-p", "pytest_resilience", "-p", "no:randomly",
                                         *args, timeout=150)


def _write(pytester: pytest.Pytester, name: str, text: str) -> Path:
    path = pytester.path / "scenarios" / name  # where scenario files are collected
    path.parent.mkdir(exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_drift_error_rate_and_latency_verdicts(pytester: pytest.Pytester) -> None:
    _write(pytester, "load.yaml", f"""
        name: leaky sockets
        target: {{call: "load_targets:leaky"}}
        {LOAD}
        expect: {{error_rate: 0, drift: {{no_growth: [fds_socket]}}}}
        ---
        name: clean sockets
        target: {{call: "load_targets:clean"}}
        {LOAD}
        expect: {{error_rate: 0, latency: {{p99: 1500ms}}, drift: {{no_growth: [fds_socket]}}}}
        ---
        name: flaky calls
        target: {{call: "load_targets:flaky"}}
        drive: {{rate: 40, duration: 1s, sample_every: 100ms}}
        expect: {{error_rate: 0.1}}
        ---
        name: slow calls
        target: {{call: "load_targets:slow"}}
        drive: {{rate: 20, concurrency: 2, duration: 1s, sample_every: 100ms}}
        expect: {{latency: {{p50: 5ms}}}}
        """)
    out = pytester.path / "out"
    result = _run(pytester, "scenarios/load.yaml", f"--resilience-report={out}")
    result.assert_outcomes(passed=1, failed=3)
    text = result.stdout.str()
    assert "Traceback" not in text
    result.stdout.fnmatch_lines([
        "*FAILED scenarios/load.yaml::leaky_sockets*",
        "*FAILED scenarios/load.yaml::flaky_calls*",
        "*FAILED scenarios/load.yaml::slow_calls*",
    ])
    failures = text.split("short test summary", 1)[0]
    leaky = failures.split("scenario 'leaky sockets'", 1)[1].split("scenario '", 1)[0]
    assert "1 of 2 expectations failed" in leaky, leaky
    assert "socket" in leaky, leaky
    result.stdout.fnmatch_lines([  # the verdict summary at the end
        "*load.yaml::leaky_sockets FAILED drift: open sockets do not grow after the*",
        "*load.yaml::clean_sockets PASSED drift: open sockets do not grow*",
        "*load.yaml::flaky_calls FAILED error-rate: at most 10.0% of calls fail -- * failed "
        "(*): * ConnectionResetError",
        "*load.yaml::slow_calls FAILED latency: *",
    ])
    slow = failures.split("scenario 'slow calls'", 1)[1]
    assert "p50" in slow
    assert "5ms" in slow.replace(" ", ""), slow

    records = {r.name.split("::")[-1]: r for r in map(load, (out / "soak").glob("*.json"))}
    assert set(records) == {"leaky_sockets", "clean_sockets", "flaky_calls", "slow_calls"}
    sockets = [v for v in records["leaky_sockets"].column("fds_socket") if v is not None]
    assert sockets[-1] - sockets[0] >= 5, sockets
    assert records["flaky_calls"].totals["error_types"] == {
        "ConnectionResetError": records["flaky_calls"].totals["errors"]}


SCHEMA_ERRORS = {
    "drift_calls.yaml": ("""
        name: x
        target: {call: "load_targets:clean"}
        drive: {calls: 3}
        expect: {drift: {no_growth: [fds]}}
        """, "*drift_calls.yaml:*expect.drift judges a load run: give drive.rate, "
         "drive.concurrency above 1 or drive.soak: true*"),
    "returns_load.yaml": ("""
        name: x
        target: {call: "load_targets:clean"}
        drive: {rate: 10, duration: 1s}
        expect: {returns: null}
        """, "*returns_load.yaml:*a load run does not keep every call's value: use "
         "expect.error_rate instead of returns/raises*"),
    "every_no_for.yaml": ("""
        name: x
        services: {api: {routes: {"GET /x": "200 forever"}}}
        target: {call: "load_targets:clean"}
        faults: [{on: api, fault: latency, latency: 100, every: 1s}]
        drive: {rate: 10, duration: 2s}
        expect: {error_rate: 0}
        """, "*every_no_for.yaml:*faults[[]0[]]*a repeating fault ('every') needs 'for' "
         "shorter than 'every'*"),
    "warmup_long.yaml": ("""
        name: x
        target: {call: "load_targets:clean"}
        drive: {rate: 10, duration: 2s, warmup: 2s}
        expect: {error_rate: 0}
        """, "*warmup_long.yaml:*drive*warmup (2.0 s) must be shorter than the duration "
         "(2.0 s)*"),
}


def test_schema_errors_of_load_runs(pytester: pytest.Pytester) -> None:
    for name, (text, _) in SCHEMA_ERRORS.items():
        _write(pytester, name, text)
    result = _run(pytester, *(f"scenarios/{name}" for name in SCHEMA_ERRORS))
    result.assert_outcomes(failed=len(SCHEMA_ERRORS))
    for _, pattern in SCHEMA_ERRORS.values():
        result.stdout.fnmatch_lines([pattern])
    text = result.stdout.str()
    assert "Traceback" not in text
    assert "INTERNALERROR" not in text


def test_a_repeating_fault_marks_stages_in_the_record(pytester: pytest.Pytester) -> None:
    _write(pytester, "stages.yaml", """
        name: latency every 700ms
        services: {api: {routes: {"GET /x": "200 forever"}}}
        target: {call: "load_targets:fetch"}
        faults: [{on: api, fault: latency, latency: 50, at: 200ms, for: 300ms, every: 700ms}]
        drive: {rate: 20, concurrency: 4, duration: 2s, sample_every: 100ms}
        expect: {error_rate: 0}
        """)
    out = pytester.path / "out"
    result = _run(pytester, "scenarios/stages.yaml", f"--resilience-report={out}")
    result.assert_outcomes(passed=1)
    (path,) = (out / "soak").glob("*.json")
    record = json.loads(path.read_text())
    stages = record["stages"]
    # due at 0.2, 0.9, 1.6 s; the driver ticks every 20 ms, on a slow machine later (and
    # it goes on ticking while calls drain after the run: see test_driver.py)
    within = [s for s in stages if s["start"] < 2.0]
    assert 2 <= len(within) <= 3, stages
    for stage in stages:
        assert stage["label"] == "faults[0] latency on api (latency=50)", stage
        assert stage["end"] is not None, stage
        assert stage["end"] > stage["start"], stage
    assert stages[0]["start"] >= 0.19, stages
    assert stages[1]["start"] >= stages[0]["start"] + 0.6, stages
    labels = {s for s in record["series"].get("stage", []) if s}
    assert labels == {"faults[0] latency on api (latency=50)"}, record["series"].get("stage")
    assert record["totals"]["attempts"] >= record["totals"]["calls"] > 0, record["totals"]


def test_setup_context_reaches_the_call(pytester: pytest.Pytester) -> None:
    _write(pytester, "setup.yaml", """
        name: counted
        target: {setup: "load_targets:counter", call: "load_targets:count"}
        drive: {soak: true, calls: 25, sample_every: 100ms}
        expect: {error_rate: 0}
        """)
    result = _run(pytester, "scenarios/setup.yaml")
    result.assert_outcomes(passed=1)
    assert json.loads((pytester.path / "setup.json").read_text()) == {"calls": 25}


def test_the_soak_option_rebounds_a_scenario(pytester: pytest.Pytester) -> None:
    _write(pytester, "long.yaml", """
        name: half a minute
        target: {call: "load_targets:clean"}
        drive: {rate: 20, duration: 30s, warmup: 10s, sample_every: 250ms}
        expect: {error_rate: 0}
        """)
    out = pytester.path / "out"
    began = time.monotonic()
    result = _run(pytester, "scenarios/long.yaml", "--resilience-soak=2s",
                  f"--resilience-report={out}")
    took = time.monotonic() - began
    result.assert_outcomes(passed=1)
    assert took < 25, took
    (path,) = (out / "soak").glob("*.json")
    record: dict[str, Any] = json.loads(path.read_text())
    assert record["plan"]["duration_s"] == 2.0
    assert record["warmup_s"] == 1.0  # kept shorter than the new duration
    assert record["ended"] == "duration"
    assert 1.9 <= record["totals"]["elapsed_s"] < 15
