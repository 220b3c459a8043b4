"""The script vocabulary: compact strings, mappings, the typed API and their errors."""

from __future__ import annotations

import random
import re
import statistics
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_resilience.errors import ConfigError
from pytest_resilience.services.http_routes import BackendCore
from pytest_resilience.services.http_script import (
    Dribble,
    Fault,
    Fixed,
    LogNormal,
    Response,
    Step,
    Uniform,
    forever,
    parse_delay,
    parse_duration,
    parse_script,
    parse_step,
    retry_after,
    times,
    too_many_requests,
)


def reply_of(step: Step) -> Any:
    assert isinstance(step.action, Response | Fault)
    return step.action.reply(random.Random(0))


@pytest.mark.parametrize(
    ("text", "status", "count", "body", "ctype"),
    [
        ("503", 503, 1, b"", None),
        ("503 x3", 503, 3, b"", None),
        ("200 x*", 200, None, b"", None),
        ("200 forever ok", 200, None, b"ok", "text/plain; charset=utf-8"),
        ('200 {"ok": true}', 200, 1, b'{"ok": true}', "application/json"),
        ("200 x2 [1, 2]", 200, 2, b"[1, 2]", "application/json"),
        ("404 not here at all", 404, 1, b"not here at all", "text/plain; charset=utf-8"),
        ("200 content-type=text/csv a,b", 200, 1, b"a,b", "text/csv"),
    ],
)
def test_compact_strings(text: str, status: int, count: int | None, body: bytes,
                         ctype: str | None) -> None:
    step = parse_step(text, "GET /x step 1")
    assert step.count == count
    reply = reply_of(step)
    assert (reply.kind, reply.status, reply.body) == ("response", status, body)
    assert dict(reply.headers).get("Content-Type") == ctype
    assert step.describe() == text


def test_string_options() -> None:
    reply = reply_of(parse_step("429 retry-after=2 delay=150ms slow down", "s"))
    assert reply.status == 429
    assert dict(reply.headers)["Retry-After"] == "2"
    assert reply.delay == pytest.approx(0.150)
    assert reply.body == b"slow down"
    step = parse_step("200 dribble=5/1s x2 abcdefghij", "s")
    assert step.count == 2
    assert reply_of(step).dribble == Dribble(5, 1.0)
    assert isinstance(parse_step("200 delay=uniform(50ms,150ms)", "s").action, Response)


@pytest.mark.parametrize("kind", ["empty", "malformed", "truncated", "garbage", "reset",
                                  "hang"])
def test_fault_strings(kind: str) -> None:
    step = parse_step(f"{kind} x2 delay=10ms", "s")
    assert step.count == 2
    assert reply_of(step).kind == kind
    assert reply_of(step).delay == pytest.approx(0.010)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5O3", r"GET /x step 2 '5O3': '5O3' is not a status code \(100-599\) or a fault"),
        ("600", r"'600' is not a status code"),
        ("", r"empty step"),
        ("200 delay=-5ms", r"GET /x step 2 '200 delay=-5ms': delay '-5ms' is negative"),
        ("200 delay=100", r"delay '100' needs a unit: e\.g\. 100ms or 100s"),
        ("200 dely=100ms", r"unknown option 'dely'; valid options: xN, x\*, forever"),
        ("200 x0", r"x0: the count must be at least 1"),
        ("200 {not json", r"body starts like JSON but is not valid JSON"),
        ("reset hello", r"the fault 'reset' takes no body"),
        ("reset retry-after=1", r"option 'retry-after' does not apply to the fault 'reset'"),
        ("200 dribble=0/1s x", r"dribble: chunks must be a positive integer"),
        ("200 delay=uniform(50ms, 150ms)", r"uniform\(\) takes two arguments|not a duration"),
        ("429 retry-after=1.5", r"Retry-After must be whole seconds"),
    ],
)
def test_bad_strings_name_the_step(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_script(["200", text], "GET /x")


def test_mapping_steps() -> None:
    step = parse_step({"status": 503, "times": 3, "delay": "100ms",
                       "headers": {"X-A": "1"}, "json": {"e": 1}}, "s")
    assert step.count == 3
    reply = reply_of(step)
    assert reply.status == 503
    assert reply.delay == pytest.approx(0.1)
    assert ("X-A", "1") in reply.headers
    assert reply.body == b'{"e": 1}'
    assert parse_step({"fault": "reset", "times": "forever"}, "s").count is None
    assert reply_of(parse_step({"status": 429, "retry_after": 3}, "s")).headers == (
        ("Retry-After", "3"),)
    assert parse_delay({"uniform": ["10ms", "20ms"]}) == Uniform(0.01, 0.02)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"status": 200, "jsn": {}}, r"step 1 \{'status': 200, 'jsn': \{\}\}: unknown key 'jsn'"),
        ({"status": 200, "delay": -1}, r"delay must be a finite number >= 0"),
        ({"fault": "explode"}, r"unknown kind 'explode'"),
        ({"fault": "reset", "json": {}}, r"key 'json' does not apply to a fault"),
        ({"times": 0}, r"times must be a positive integer or 'forever'"),
        ({"status": 200, "json": {}, "text": "x"}, r"only one of json, text or body"),
        (3.5, r"is not a step"),
    ],
)
def test_bad_mappings(step: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_script([step], "GET /x")


def test_typed_api() -> None:
    assert Response(503).times(3) == Step(Response(503), 3)
    assert Response(200, json={"a": 1}).forever().count is None
    assert times("503", 2).count == 2
    assert forever(Fault.reset()).count is None
    assert parse_step(204, "s").action == Response(204)
    r = too_many_requests(retry_after=5, json={"error": "slow down"})
    assert r.status == 429
    assert dict(r.reply(random.Random(0)).headers)["Retry-After"] == "5"
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert dict(retry_after(when).reply(random.Random(0)).headers)["Retry-After"] == (
        "Wed, 02 Jan 2030 03:04:05 GMT")
    with pytest.raises(ConfigError, match="status must be an integer 100-599"):
        Response(700)
    with pytest.raises(ConfigError, match="delay must be a finite number >= 0"):
        Response(200, delay=-0.1)
    with pytest.raises(ConfigError, match="not JSON-serialisable"):
        Response(200, json={1, 2})
    with pytest.raises(ConfigError, match="not a valid header name"):
        Response(200, headers={"bad name": "x"})
    with pytest.raises(ConfigError, match="times must be a positive integer"):
        Response(200).times(0)


def test_script_structure_errors() -> None:
    with pytest.raises(ConfigError, match=r"GET /x step 1 '200 x\*' repeats forever"):
        parse_script(["200 x*", "503"], "GET /x")
    with pytest.raises(ConfigError, match="the script is empty"):
        parse_script([], "GET /x")
    with pytest.raises(ConfigError, match="cycle=True needs a finite count"):
        parse_script(["200 x*"], "GET /x", cycle=True)
    with pytest.raises(ConfigError, match="a default answers every request left over"):
        parse_script(["200"], "GET /x", default="503 x2")


def test_durations() -> None:
    assert parse_duration("250us") == pytest.approx(250e-6)
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("2m") == 120
    assert parse_duration(0.2) == 0.2
    with pytest.raises(ConfigError, match="needs a unit"):
        parse_duration(5, unit_required=True)


def test_random_delays_are_seeded_and_shaped() -> None:
    lognormal = LogNormal(0.1, 0.5)
    draws = [lognormal.draw(random.Random(f"7:{i}")) for i in range(2000)]
    assert draws == [lognormal.draw(random.Random(f"7:{i}")) for i in range(2000)]
    assert statistics.median(draws) == pytest.approx(0.1, rel=0.1)
    uniform = Uniform(0.05, 0.15)
    rng = random.Random(1)
    values = [uniform.draw(rng) for _ in range(500)]
    assert min(values) >= 0.05
    assert max(values) <= 0.15
    assert Fixed(0.2).draw(rng) == 0.2
    with pytest.raises(ConfigError, match=r"high .* is below low"):
        Uniform(0.2, 0.1)


def test_route_cursor_sequences_cycles_and_defaults() -> None:
    core = BackendCore()
    seq = core.route("GET", "/seq", "503 x2", "200")
    cyc = core.route("GET", "/cyc", "503", "200", cycle=True)
    dflt = core.route("GET", "/dflt", "503", default="204")
    answers = {}
    for path in ("/seq", "/cyc", "/dflt"):
        answers[path] = [core.dispatch("GET", path, "", [], b"", 0.0)[0].answer
                         for _ in range(5)]
    assert answers["/seq"] == ["503 x2", "503 x2", "200"] + ["500 script exhausted"] * 2
    assert answers["/cyc"] == ["503", "200", "503", "200", "503"]
    assert answers["/dflt"] == ["503"] + ["default 204"] * 4
    assert [r.step for r in seq.requests] == [1, 1, 2, None, None]
    assert cyc.unused() == []
    assert dflt.unused() == []
    assert len(core.unexpected) == 2
    assert any("script exhausted" in line for line in core.unmet())


def test_route_patterns() -> None:
    core = BackendCore(routes={"GET /users/{id}": "200", "PUT /files/{rest:path}": "201"})
    core.route("*", re.compile(r"/v\d+/ping"), "204")
    rec = core.dispatch("GET", "/users/42", "a=1", [], b"", 0.0)[0]
    assert (rec.route, rec.path_params, rec.params) == ("GET /users/{id}", {"id": "42"},
                                                         {"a": ["1"]})
    assert core.dispatch("GET", "/users/4/2", "", [], b"", 0.0)[0].route is None
    rec = core.dispatch("PUT", "/files/a/b.txt", "", [], b"", 0.0)[0]
    assert rec.path_params == {"rest": "a/b.txt"}
    assert core.dispatch("DELETE", "/v2/ping", "", [], b"", 0.0)[0].route == "* /v\\d+/ping"
    assert [r.path for r in core.requests_for("GET", "/users/{id}")] == ["/users/42"]
    with pytest.raises(ConfigError, match="is already scripted"):
        core.route("GET", "/users/{id}", "200")
    with pytest.raises(ConfigError, match="must start with '/'"):
        core.route("GET", "users", "200")
    with pytest.raises(ConfigError, match="method 'FETCH' is not one of"):
        core.route("FETCH", "/x", "200")
    with pytest.raises(ConfigError, match="routes key 'GET' must be 'METHOD /path'"):
        core.add_routes({"GET": "200"})


@given(st.text(max_size=40))
def test_any_string_is_a_step_or_a_config_error(text: str) -> None:
    error = None
    try:
        step = parse_step(text, "s")
    except ConfigError as exc:
        error = str(exc)
    if error is None:
        assert isinstance(step, Step)
    else:
        assert error.startswith("s ")
