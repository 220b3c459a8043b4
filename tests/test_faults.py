"""The fault vocabulary (``pytest_resilience.faults``) and its consumers.

The consumers — the Toxiproxy client, the built-in engine's validation and the
HTTP script parser — read fault names and rules from ``faults``: the last tests
register a new fault there and show each of them knows it.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any, get_args, get_type_hints

import httpx
import pytest

from pytest_resilience import faults
from pytest_resilience.errors import ConfigError
from pytest_resilience.faults import Attribute, FaultDef
from pytest_resilience.services import http_script
from pytest_resilience.services.http_script import Fault, FaultKind, Reply, parse_step
from pytest_resilience.toxiproxy import client as toxiproxy_client
from pytest_resilience.toxiproxy import start_thread, toxics
from pytest_resilience.toxiproxy.client import TOXIC_TYPES, validate_toxic
from pytest_resilience.toxiproxy.proxy import DIRECTIONS

#: Toxiproxy 2.12's toxics and their attributes (reference/toxiproxy-v2.md, section 2).
TOXIPROXY = {
    "latency": {"latency": "ms", "jitter": "ms"},
    "bandwidth": {"rate": "KB/s"},
    "slow_close": {"delay": "ms"},
    "timeout": {"timeout": "ms"},
    "reset_peer": {"timeout": "ms"},
    "slicer": {"average_size": "bytes", "size_variation": "bytes", "delay": "µs"},
    "limit_data": {"bytes": "bytes"},
    "noop": {},
}
SOCKET_FAULTS = ("empty", "malformed", "truncated", "garbage", "reset", "hang")


# --------------------------------------------------------------------- the vocabulary


def test_every_fault_is_named_once() -> None:
    assert faults.names("network") == (*TOXIPROXY, "down", "fail_first")
    assert faults.names("http") == ("status", *SOCKET_FAULTS)
    assert faults.names("postgres") == ("sqlstate", "fatal", "refuse_startup",
                                        "cut_mid_response", "hang_query")
    assert len(set(faults.names())) == len(faults.names())
    assert faults.toxic_types() == tuple(TOXIPROXY)
    assert faults.socket_faults() == SOCKET_FAULTS


@pytest.mark.parametrize("name", faults.names())
def test_each_fault_is_described(name: str) -> None:
    fault = faults.get(name)
    assert fault.name == name
    assert fault.description
    assert "\n" not in fault.description
    for attr in fault.all_attributes:
        assert attr.description, (name, attr.name)
        assert attr.type in get_args(faults.ValueType)
        assert attr.bounds  # every attribute's rule reads as words
    assert faults.validate({"fault": name, **fault.example})["fault"] == name


def test_toxics_match_toxiproxy() -> None:
    for name, units in TOXIPROXY.items():
        fault = faults.get(name)
        assert fault.toxic
        assert fault.layer == "network"
        assert {a.name: a.unit for a in fault.attributes} == units  # Go field order too
        assert all(a.type == "integer" and a.default == 0 for a in fault.attributes)
        assert [o.name for o in fault.options] == ["stream", "toxicity", "name"]
    down = faults.get("down")
    assert (down.toxic, down.attributes, down.options) == (False, (), ())


def test_consumers_agree_with_the_vocabulary() -> None:
    assert dict(TOXIC_TYPES) == {n: tuple(u) for n, u in TOXIPROXY.items()}
    assert toxiproxy_client.STREAMS == DIRECTIONS == faults.STREAM.choices
    for name in TOXIPROXY:
        layout = toxics.toxic_layout(name)
        assert layout is not None
        assert layout[1] == tuple(TOXIPROXY[name])
    assert toxics.toxic_layout("reset_peer") == ("ResetToxic", ("timeout",))
    assert toxics.toxic_layout("limit_data") == ("LimitDataToxic", ("bytes",))
    assert toxics.toxic_layout("down") is None  # not a toxic: PATCH enabled=false
    # The HTTP side's Literal types are static: they must list the same faults.
    assert get_args(FaultKind) == faults.socket_faults() == http_script.FAULT_KINDS
    assert get_args(get_type_hints(Reply)["kind"]) == ("response", *faults.socket_faults())


def test_defaults_units_and_bounds() -> None:
    assert faults.with_defaults("latency") == {
        "latency": 0, "jitter": 0, "stream": "downstream", "toxicity": 1.0}
    assert faults.with_defaults("garbage", {"size": 8}) == {"size": 8, "times": 1}
    slicer = faults.get("slicer")
    average = slicer.attribute("average_size")
    variation = slicer.attribute("size_variation")
    assert average is not None
    assert variation is not None
    assert (average.required, average.minimum, average.bounds) == (True, 1, ">= 1")
    assert variation.bounds == "between 0 and average_size"
    status = faults.get("status").attribute("status")
    assert status is not None
    assert (status.minimum, status.maximum, status.default) == (100, 599, 200)
    assert faults.string_options() == {"delay": "delay", "dribble": "dribble",
                                       "retry-after": "retry_after",
                                       "content-type": "content_type", "size": "size"}
    assert list(faults.DELAY_KINDS) == ["fixed", "uniform", "lognormal"]


def test_durations_delays_and_dribbles() -> None:
    assert faults.parse_duration("250us") == pytest.approx(250e-6)
    assert faults.parse_duration("2m") == 120
    assert faults.delay_parts("uniform(50ms,150ms)") == ("uniform", (0.05, 0.15))
    assert faults.delay_parts({"lognormal": ["100ms", 0.5]}) == ("lognormal", (0.1, 0.5))
    assert faults.delay_parts(0.2) == ("fixed", (0.2,))
    assert faults.dribble_parts("5/1s") == (5, 1.0)
    assert faults.dribble_parts({"chunks": 2, "over": "10ms"}) == (2, 0.01)
    assert faults.parse_times("forever") is None
    assert faults.parse_times(3) == 3
    with pytest.raises(ConfigError, match=r"delay '100' needs a unit"):
        faults.delay_parts("100", unit_required=True)
    with pytest.raises(ConfigError, match="unknown delay kind 'gauss'; use fixed, uniform"):
        faults.delay_parts({"gauss": [1, 2]})


# ------------------------------------------------------------------------ validation


def test_validate_returns_the_spec_normalised() -> None:
    assert faults.validate({"fault": "latency", "latency": 100, "stream": "UPSTREAM"}) == {
        "fault": "latency", "latency": 100, "stream": "upstream"}
    assert faults.validate("bandwidth", rate=10, toxicity=1) == {
        "fault": "bandwidth", "rate": 10, "toxicity": 1.0}
    assert faults.validate({"fault": "status", "status": 503, "times": 3,
                            "retry_after": 2, "delay": "uniform(10ms,20ms)"})["status"] == 503
    assert faults.validate({"fault": "garbage", "size": 128, "times": "forever"})["size"] == 128
    assert faults.validate({"fault": "down"}) == {"fault": "down"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"fault": "latency", "latency": -5},
         "latency toxic: 'latency' must be >= 0, got -5"),
        ({"fault": "latency", "jitter": 1.5},
         "latency toxic: 'jitter' must be an integer, got 1.5"),
        ({"fault": "latency", "delay": 1},
         "latency toxic: unknown attribute 'delay' (valid attributes: latency, jitter, "
         "stream, toxicity, name)"),
        ({"fault": "timeout", "stream": "sideways"},
         "timeout toxic: 'stream' must be one of upstream, downstream, got 'sideways'"),
        ({"fault": "timeout", "toxicity": 2},
         "timeout toxic: 'toxicity' must be a number from 0 to 1, got 2"),
        ({"fault": "timeout", "name": "a/b"},
         "timeout toxic: 'name' must be a non-empty name without '/', got 'a/b'"),
        ({"fault": "slicer"}, "slicer toxic: 'average_size' is required (>= 1)"),
        ({"fault": "slicer", "average_size": 0},
         "slicer toxic: 'average_size' must be >= 1, got 0"),
        ({"fault": "slicer", "average_size": 10, "size_variation": 11},
         "slicer toxic: 'size_variation' (11) must not exceed 'average_size' (10)"),
        ({"fault": "bandwidth", "rate": True}, "bandwidth toxic: 'rate' must be an integer"),
        ({"fault": "down", "rate": 1},
         "down fault: unknown attribute 'rate' (valid attributes: none)"),
        ({"fault": "status", "status": 700},
         "status fault: 'status' must be an integer 100-599, got 700"),
        ({"fault": "status", "json": {}, "text": "x"},
         "status fault: give only one of json, text or body (got json and text)"),
        ({"fault": "status", "times": 0},
         "status fault: 'times' must be a positive integer or 'forever', got 0"),
        ({"fault": "status", "delay": "-5ms"}, "status fault: 'delay' '-5ms' is negative"),
        ({"fault": "status", "delay": "uniform(2s,1s)"},
         "status fault: 'delay': uniform delay: high (1.0) is below low (2.0)"),
        ({"fault": "status", "dribble": "0/1s"},
         "status fault: 'dribble': chunks must be a positive integer, got 0"),
        ({"fault": "status", "retry_after": 1.5},
         "status fault: 'retry_after': Retry-After must be whole seconds >= 0"),
        ({"fault": "status", "headers": {"bad name": "x"}},
         "status fault: 'bad name' is not a valid header name"),
        ({"fault": "garbage", "size": 0},
         "garbage fault: 'size' must be a positive integer, got 0"),
        ({"fault": "reset", "size": 8},
         "reset fault: unknown attribute 'size' (valid attributes: delay, times)"),
        ({"fault": "explode"}, "unknown fault 'explode'; known faults: latency, bandwidth"),
        ({"latency": 5}, "has no 'fault' key"),
    ],
)
def test_validate_names_fault_attribute_value_and_rule(spec: dict[str, Any],
                                                       message: str) -> None:
    with pytest.raises(ConfigError) as err:
        faults.validate(spec)
    assert message in str(err.value)


def test_crash_rules_are_the_engines() -> None:
    assert faults.crash_violation("latency", {"latency": -5, "jitter": -1}) is None
    assert faults.crash_violation("bandwidth", {"rate": 0}) is None
    bad = faults.crash_violation("bandwidth", {"rate": -1})
    assert bad == faults.Violation("bandwidth", "rate", -1, ">= 0",
                                   "a negative rate crashes toxiproxy-server")
    assert faults.crash_violation("slicer", {})  # average_size 0, the server's default
    bad = faults.crash_violation("slicer", {"average_size": 5, "size_variation": 6})
    assert bad is not None
    assert (bad.attribute, bad.rule) == ("size_variation", "between 0 and average_size")


def test_check_value_lets_callers_name_their_argument() -> None:
    assert faults.check_value("latency", "latency", 5) == 5
    with pytest.raises(ConfigError, match=re.escape("latency toxic: 'ms' must be >= 0, got -1")):
        faults.check_value("latency", "latency", -1, shown="'ms'")
    with pytest.raises(ConfigError, match=r"^Response: status must be an integer 100-599"):
        faults.check_value("status", "status", 99, label="Response", shown="status")


# -------------------------------------------------------------------------- schema


def _matches(schema: dict[str, Any], value: Any) -> bool:
    """A small JSON Schema checker: the keywords ``json_schema()`` uses."""
    if "oneOf" in schema:
        return sum(_matches(s, value) for s in schema["oneOf"]) >= 1
    if "const" in schema and value != schema["const"]:
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        python = {"integer": int, "number": int | float, "string": str, "object": dict,
                  "array": list, "boolean": bool}
        if isinstance(value, bool) and "boolean" not in kinds:
            return False
        if not any(isinstance(value, python[k]) for k in kinds):
            return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < schema.get("minimum", -float("inf")):
            return False
        if value > schema.get("maximum", float("inf")):
            return False
    if isinstance(value, str) and "pattern" in schema \
            and re.search(schema["pattern"], value) is None:
        return False
    if isinstance(value, dict):
        if any(k not in value for k in schema.get("required", ())):
            return False
        props = schema.get("properties", {})
        for key, item in value.items():
            if key in props:
                if not _matches(props[key], item):
                    return False
            elif schema.get("additionalProperties") is False:
                return False
    return True


@pytest.mark.parametrize("name", faults.names())
def test_json_schema_of_each_fault(name: str) -> None:
    fault = faults.get(name)
    schema = faults.json_schema(name)
    json.dumps(schema)  # plain JSON
    assert schema["properties"]["fault"] == {"const": name}
    assert set(schema["properties"]) == {"fault", *(a.name for a in fault.all_attributes)}
    assert schema["additionalProperties"] is False
    example = {"fault": name, **fault.example}
    assert _matches(schema, example)
    assert _matches(faults.json_schema(), example)
    assert not _matches(schema, {**example, "no_such_attribute": 1})
    assert not _matches(schema, {**example, "fault": "other"})


def test_json_schema_carries_the_rules() -> None:
    latency = faults.json_schema("latency")
    assert latency["properties"]["latency"] == {
        "type": "integer", "minimum": 0, "default": 0, "description": "added delay (unit: ms)"}
    assert not _matches(latency, {"fault": "latency", "latency": -1})
    assert not _matches(latency, {"fault": "latency", "stream": "sideways"})
    assert faults.json_schema("slicer")["required"] == ["fault", "average_size"]
    status = faults.json_schema("status")
    assert _matches(status, {"fault": "status", "status": 503, "delay": "100ms",
                             "dribble": "5/1s", "retry_after": 2, "times": "forever"})
    assert not _matches(status, {"fault": "status", "status": 700})
    assert not _matches(status, {"fault": "status", "delay": "100"})  # no unit
    assert len(faults.json_schema()["oneOf"]) == len(faults.names())


def test_import_is_cheap() -> None:
    code = ("import sys, pytest_resilience.faults; "
            "print(sorted(m for m in ('asyncio', 'httpx', 'socket', 'email') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------ a new fault is known to every consumer


@pytest.fixture
def stall() -> Iterator[FaultDef]:
    """A new toxic, ``stall`` (one attribute ``ms``, negative values "crash")."""
    fault = faults.register(FaultDef(
        "stall", "network", "hold the data (a test toxic)",
        (Attribute("ms", "integer", "how long", "ms", 0, minimum=0,
                   crash="a negative stall crashes the test server"),),
        faults.TOXIC_OPTIONS, toxic=True, example={"ms": 5},
    ))
    try:
        yield fault
    finally:
        faults.unregister("stall")


@pytest.fixture
def slam() -> Iterator[FaultDef]:
    """A new HTTP socket fault, ``slam``."""
    delay = faults.get("reset").attribute("delay")
    assert delay is not None
    fault = faults.register(FaultDef("slam", "http", "close at once (a test fault)",
                                     (delay,), (faults.TIMES,)))
    try:
        yield fault
    finally:
        faults.unregister("slam")


def test_register_rejects_a_taken_name() -> None:
    with pytest.raises(ConfigError, match="a fault named 'latency' exists already"):
        faults.register(faults.get("latency"))


def test_a_new_toxic_is_known_to_the_client(stall: FaultDef) -> None:
    assert TOXIC_TYPES["stall"] == ("ms",)
    assert "stall" in list(TOXIC_TYPES)
    assert validate_toxic("stall", {"ms": 5})["attributes"] == {"ms": 5}
    with pytest.raises(ConfigError, match=re.escape("stall toxic: 'ms' must be >= 0, got -1")):
        validate_toxic("stall", {"ms": -1})
    assert faults.validate({"fault": "stall", "ms": 5, "stream": "upstream"})["ms"] == 5
    faults.unregister("stall")
    with pytest.raises(ConfigError, match="'type' must be one of latency"):
        validate_toxic("stall", {"ms": 5})


def test_a_new_toxic_is_known_to_the_engine(stall: FaultDef,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine takes its toxic types, attributes, defaults and crash rules from
    ``faults``; to *run* a toxic it also needs a stage, so a toxic registered in
    ``faults`` alone is ``400 invalid toxic type`` (as an unknown type is on the
    real server) until ``toxics._STAGES`` has one. Here the noop stage stands in."""
    with start_thread() as engine, httpx.Client(base_url=engine.url) as api:
        proxy = api.post("/proxies", json={"name": "p", "upstream": "127.0.0.1:9",
                                           "listen": "127.0.0.1:0"})
        assert proxy.status_code == 201, proxy.text
        toxics_url = "/proxies/p/toxics"
        refused = api.post(toxics_url, json={"type": "stall", "attributes": {"ms": 5}})
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid toxic type")

        monkeypatch.setitem(toxics._STAGES, "stall", toxics.Stage)
        created = api.post(toxics_url, json={"type": "stall", "attributes": {"ms": 5}})
        assert created.status_code == 200, created.text
        assert created.json()["attributes"] == {"ms": 5}
        assert api.post(toxics_url, json={"type": "stall", "name": "d"}).json()[
            "attributes"] == {"ms": 0}  # the default from faults
        crash = api.post(toxics_url, json={"type": "stall", "name": "x",
                                           "attributes": {"ms": -1}})
        assert (crash.status_code, crash.json()["error"]) == (
            400, "invalid toxic attributes: stall ms must be >= 0 "
                 "(a negative stall crashes the test server)")
        typed = api.post(toxics_url, json={"type": "stall", "name": "y",
                                           "attributes": {"ms": "5"}})
        assert "Go struct field StallToxic.attributes.ms of type int64" in typed.json()["error"]


def test_a_new_http_fault_is_known_to_the_script_parser(slam: FaultDef) -> None:
    """The parser knows ``slam`` in every form. The backends still need code for it
    (``http_backend._send``, ``http_respx._response``) to answer with it."""
    step = parse_step("slam x2 delay=10ms", "s")
    assert (step.action, step.count) == (
        Fault("slam", http_script.Fixed(0.01)), 2)  # type: ignore[arg-type]
    assert parse_step({"fault": "slam", "times": "forever"}, "s").count is None
    with pytest.raises(ConfigError, match="option 'retry-after' does not apply to the fault"):
        parse_step("slam retry-after=1", "s")
    with pytest.raises(ConfigError, match=r"key 'size' does not apply to a fault \(the fault "
                                          r"'slam' takes fault, delay, times\)"):
        parse_step({"fault": "slam", "size": 3}, "s")
    faults.unregister("slam")
    with pytest.raises(ConfigError, match=r"'slam' is not a status code \(100-599\) or a "
                                          r"fault \(empty, malformed"):
        parse_step("slam", "s")
    with pytest.raises(ConfigError, match="unknown kind 'slam'"):
        parse_step({"fault": "slam"}, "s")


def test_the_parser_reads_options_and_bounds_from_the_vocabulary(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_step("garbage size=8", "s").action == Fault("garbage", size=8)
    with pytest.raises(ConfigError, match="option 'size' does not apply to the fault 'reset'"):
        parse_step("reset size=8", "s")
    with pytest.raises(ConfigError, match="option 'size' does not apply to a status response"):
        parse_step("200 size=8", "s")
    step = parse_step({"fault": "status", "status": 503, "content_type": "text/csv",
                       "text": "a,b"}, "s")
    assert isinstance(step.action, http_script.Response)
    assert step.action.reply(random.Random(0)).headers == (("Content-Type", "text/csv"),)
    # Narrow the status range in the vocabulary: the parser follows.
    status = faults.get("status")
    narrowed = Attribute("status", "integer", "the HTTP status code", default=200,
                         minimum=200, maximum=599, rule="an integer 200-599")
    monkeypatch.setitem(faults.HTTP_FAULTS, "status", FaultDef(
        "status", "http", status.description, (narrowed, *status.attributes[1:]),
        status.options, exclusive=status.exclusive))
    with pytest.raises(ConfigError, match=r"'100' is not a status code \(200-599\)"):
        parse_step("100", "s")
    with pytest.raises(ConfigError, match="Response: status must be an integer 200-599"):
        parse_step({"status": 100}, "s")
