"""Malformed and hostile scenario files: one failed item each, with file:line:column,
what was expected and a 'did you mean' - never an INTERNALERROR or a traceback, and
the other files still run. The exported JSON Schema agrees."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from pytest_resilience.scenarios.loader import ScenarioSyntaxError, load_text
from pytest_resilience.scenarios.schema import json_schema

pytestmark = pytest.mark.timeout(240)

GOOD = "name: good\ntarget: {call: 'targets:answer'}\nexpect: {returns: 1}\n"
T = "target: {call: 'targets:answer'}\n"

#: (file name, content as bytes or str, the expected message line (fnmatch))
MALFORMED: list[tuple[str, str | bytes, str]] = [
    ("no_target", "name: x\n", "*no_target.yaml:1:1: (document): missing required key 'target'"),
    ("no_name", T, "*no_name.yaml:1:1: (document): missing required key 'name'"),
    ("typo_top", "name: x\n" + T + "expct: {}\n",
     "*typo_top.yaml:3:1: expct: unknown key 'expct'; did you mean 'expect'?"),
    ("typo_nested", "name: x\n" + T + "drive: {calss: 3}\n",
     "*typo_nested.yaml:3:9: drive.calss: unknown key 'calss'; did you mean 'calls'?"),
    ("bad_fault", "name: x\n" + T + "services: {api: {routes: {GET /x: '200'}}}\n"
     "faults: [{on: api, fault: latncy}]\n",
     "*bad_fault.yaml:4:10: faults[[]0[]]: unknown fault 'latncy'; did you mean 'latency'?*"),
    ("fault_attr", "name: x\n" + T + "services: {api: {routes: {GET /x: '200'}}}\n"
     "faults: [{on: api, fault: latency, latency: -5}]\n",
     "*fault_attr.yaml:4:10: faults[[]0[]]: *"),
    ("fault_on", "name: x\n" + T + "services: {api: {routes: {GET /x: '200'}}}\n"
     "faults: [{on: apii, fault: down}]\n",
     "*fault_on.yaml:1:1: (document): faults[[]0[]].on: no service 'apii'; did you mean 'api'?*"),
    ("bad_clock", "name: x\nclock: virtul\n" + T,
     "*bad_clock.yaml:2:8: clock: Input should be 'real' or 'virtual'*"),
    ("bad_duration", "name: x\n" + T + "drive: {every: 2 secs}\n",
     "*bad_duration.yaml:3:16: drive.every: '2 secs' is not a duration*"),
    ("neg_duration", "name: x\n" + T + "drive: {every: -1}\n",
     "*neg_duration.yaml:3:16: drive.every: a duration must not be negative*"),
    ("calls_zero", "name: x\n" + T + "drive: {calls: 0}\n",
     "*calls_zero.yaml:3:16: drive.calls: Input should be greater than or equal to 1*"),
    ("calls_huge", "name: x\n" + T + "drive: {calls: 100000000}\n",
     "*calls_huge.yaml:3:16: drive.calls: Input should be less than or equal to 100000*"),
    ("calls_str", "name: x\n" + T + "drive: {calls: many}\n",
     "*calls_str.yaml:3:16: drive.calls: Input should be a valid integer*"),
    ("target_both", "name: x\ntarget: {call: 'a:b', http: {app: 'a:b'}}\n",
     "*target_both.yaml:2:9: target: give exactly one of 'call'*"),
    ("target_none", "name: x\ntarget: {}\n", "*target_none.yaml:2:9: target: give exactly one of*"),
    ("target_path", "name: x\ntarget: {call: 'not a path'}\n",
     "*target_path.yaml:2:16: target.call: String should match pattern*"),
    ("route_form", "name: x\n" + T + "services: {api: {routes: {'/x': '200'}}}\n",
     "*route_form.yaml:3:26: services.api.routes: route '/x' must read 'METHOD /path'*"),
    ("tcp_form", "name: x\n" + T + "services: {db: {tcp: 'nohost'}}\n",
     "*tcp_form.yaml:3:22: services.db.tcp: String should match pattern*"),
    ("backoff_service", "name: x\n" + T + "expect: {backoff: {service: nope, initial: 1}}\n",
     "*backoff_service.yaml:1:1: (document): expect: no service 'nope'*"),
    ("backoff_model", "name: x\n" + T + "services: {a: {routes: {GET /: '200'}}}\n"
     "expect: {backoff: {service: a, initial: 1, model: expo}}\n",
     "*backoff_model.yaml:4:51: expect.backoff.model: Input should be 'exponential', *"),
    ("backoff_virtual",
     "name: x\nclock: virtual\n" + T + "services: {a: {routes: {GET /: '200'}}}\n"
     "expect: {backoff: {service: a, initial: 1}}\n",
     "*backoff_virtual.yaml:1:1: (document): expect.backoff reads the backend's request log*"),
    ("error_rate", "name: x\n" + T + "expect: {error_rate: 2}\n",
     "*error_rate.yaml:3:22: expect.error_rate: Input should be less than or equal to 1*"),
    ("param_empty", "name: x\n" + T + "parametrize: {a: []}\n",
     "*param_empty.yaml:1:1: (document): parametrize.a: give at least one value*"),
    ("param_notlist", "name: x\n" + T + "parametrize: {a: 3}\n",
     "*param_notlist.yaml:3:18: parametrize.a: Input should be a valid list*"),
    ("marks_form", "name: x\n" + T + "marks: [3]\n", "*marks_form.yaml:3:9: marks[[]0[]]: *"),
    ("name_empty", "name: ''\n" + T, "*name_empty.yaml:1:7: name: String should have at least 1*"),
    ("name_list", "name: [a]\n" + T, "*name_list.yaml:1:7: name: Input should be a valid string*"),
    ("top_list", "- a\n- b\n", "*top_list.yaml:1:1: a scenario is a mapping*"),
    ("top_scalar", "just text\n", "*top_scalar.yaml:1:1: a scenario is a mapping*"),
    ("dup_name", "name: x\n" + T + "expect: {returns: 1}\n---\nname: x\n" + T,
     "*dup_name.yaml:5:7: name: another scenario in this file is already called 'x'*"),
    # hostile YAML
    ("alias_bomb", "a: &a [1, 1]\nb: &b [*a, *a]\nc: [*b, *b]\nname: x\n" + T,
     "*alias_bomb.yaml:2:8: YAML aliases (*name) are not allowed*"),
    ("python_tag", "name: !!python/object/apply:os.system ['id']\n" + T,
     "*python_tag.yaml:1:7: the tag !!python/object/apply:os.system is not allowed*"),
    ("custom_tag", "name: !secret x\n" + T,
     "*custom_tag.yaml:1:7: the tag !secret is not allowed*"),
    ("dup_key", "name: x\nname: y\n" + T,
     "*dup_key.yaml:2:1: duplicate key 'name' (first at line 1)"),
    ("deep", "name: x\n" + T + "expect: {returns: " + "[" * 60 + "]" * 60 + "}\n",
     "*deep.yaml:3:*: nesting deeper than 40 levels"),
    ("huge_int", "name: x\n" + T + "drive: {calls: " + "9" * 60 + "}\n",
     "*huge_int.yaml:3:16: the number 999999999999999999999999999999... is too long*"),
    ("inf_float", "name: x\n" + T + "expect: {error_rate: .inf}\n",
     "*inf_float.yaml:3:22: '.inf' is not a finite number"),
    ("not_utf8", b"name: caf\xe9\n" + T.encode(),
     "*not_utf8.yaml:1:10: the file is not UTF-8 (byte 0xe9)"),
    ("bad_yaml", "name: [x\n" + T, "*bad_yaml.yaml:2:*: invalid YAML: *"),
    ("tab_indent", "name: x\ntarget:\n\tcall: a:b\n", "*tab_indent.yaml:3:1: invalid YAML: *"),
    ("merge_key", "base: {a: 1}\nname: x\nother:\n  <<: {b: 2}\n" + T,
     "*merge_key.yaml:4:3: YAML merge keys (<<) are not allowed"),
    ("complex_key", "? [a, b]\n: 1\nname: x\n" + T,
     "*complex_key.yaml:1:3: mapping keys must be plain strings"),
    ("empty_file_then_bad", "---\n---\nname: x\n", "*empty_file_then_bad.yaml:3:1: *"),
]


def test_at_least_forty_malformed_files() -> None:
    assert len(MALFORMED) >= 40


def test_every_malformed_file_is_one_failed_item(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(targets="def answer():\n    return 1\n")
    scenarios = pytester.path / "scenarios"
    scenarios.mkdir()
    for name, content, _ in MALFORMED:
        path = scenarios / f"{name}.yaml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    (scenarios / "zz_good.yaml").write_text(GOOD)
    result = pytester.runpytest_subprocess("-p", "pytest_resilience", "-p", "no:randomly",
                                           "scenarios", timeout=180)
    text = result.stdout.str()
    assert "INTERNALERROR" not in text
    assert "Traceback" not in text
    outcomes = result.parseoutcomes()
    # the good file still ran, and so did the valid first document of dup_name.yaml
    assert outcomes.get("passed") == 2, text[-3000:]
    assert outcomes.get("failed") == len(MALFORMED), text[-3000:]
    assert "errors" not in outcomes
    for _name, _, expected in MALFORMED:
        result.stdout.fnmatch_lines([expected])  # file:line:column and the fix


def test_loader_rejects_alias_bomb_quickly() -> None:
    bomb = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]\n"
        for i in range(8)
    )
    with pytest.raises(ScenarioSyntaxError, match="aliases"):
        load_text(bomb)


SHIPPED = Path(__file__).resolve().parents[2] / "scenarios"


def test_packaged_schema_is_current() -> None:
    packaged = Path(__file__).resolve().parents[2] / "pytest_resilience" / "scenarios" / \
        "scenario.schema.json"
    assert json.loads(packaged.read_text()) == json.loads(json.dumps(json_schema())), (
        "regenerate: python -m pytest_resilience.scenarios schema "
        "--out pytest_resilience/scenarios/scenario.schema.json"
    )


def _documents(path: Path) -> list[object]:
    return [d.data for d in load_text(path.read_text())]


def test_exported_schema_accepts_every_shipped_scenario() -> None:
    validator = jsonschema.Draft202012Validator(json_schema())
    files = sorted(SHIPPED.glob("*.yaml"))
    if not files:
        pytest.skip("no shipped scenarios yet")
    for path in files:
        for data in _documents(path):
            errors = list(validator.iter_errors(data))
            assert not errors, f"{path.name}: {[e.message for e in errors]}"


@pytest.mark.parametrize(
    "broken",
    [
        {"target": {"call": "a:b"}},  # no name
        {"name": "x"},  # no target
        {"name": "x", "target": {"call": "a:b"}, "expct": {}},
        {"name": "x", "target": {"call": "a:b"}, "clock": "virtul"},
        {"name": "x", "target": {"call": "a:b"}, "drive": {"calls": 0}},
        {"name": "x", "target": {"call": "a:b"}, "drive": {"every": "2 secs"}},
        {"name": "x", "target": {"call": "a:b"}, "faults": [{"on": "a", "fault": "latncy"}]},
        {"name": "x", "target": {"call": "not a path"}},
        {"name": "x", "target": {"call": "a:b"}, "expect": {"error_rate": 2}},
    ],
)
def test_exported_schema_rejects_broken_scenarios(broken: dict[str, object]) -> None:
    validator = jsonschema.Draft202012Validator(json_schema())
    assert list(validator.iter_errors(broken)), broken


def test_schema_command(pytester: pytest.Pytester) -> None:
    import sys

    result = pytester.run(sys.executable, "-m", "pytest_resilience.scenarios", "schema")
    assert result.ret == 0
    assert json.loads(result.stdout.str())["title"] == "pytest-resilience scenario"
    bad = pytester.path / "bad.yaml"
    bad.write_text("name: x\nexpct: 1\n")
    check = pytester.run(sys.executable, "-m", "pytest_resilience.scenarios", "check", str(bad))
    assert check.ret == 1
    check.stdout.fnmatch_lines(["*bad.yaml:2:1: expct: unknown key 'expct'; did you mean*"])


def test_readme_scenario_example_is_valid() -> None:
    import re

    from pytest_resilience.scenarios.schema import Scenario

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(# scenarios/.*?)```", readme, re.S)
    assert blocks
    for block in blocks:
        for data in (d.data for d in load_text(block)):
            Scenario.model_validate(data)
