"""Collection: one pytest item per scenario (and per parameter set); a malformed file or
document is one failed item whose message names file:line:column."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_resilience.scenarios.loader import Document, ScenarioSyntaxError, load_documents
from pytest_resilience.scenarios.schema import Scenario, ValidationError, known_keys, suggest

__all__ = ["ScenarioFile", "format_errors", "slug"]


def slug(name: str) -> str:
    """The node-id form of a scenario name: words joined by underscores."""
    text = re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower()
    return text or "scenario"


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


def _real_path(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The part of a pydantic ``loc`` that exists in the document (drops union-member
    and validator names; ``for_`` is the document's ``for``)."""
    out: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str):
            key = part[:-1] if part not in node and part.endswith("_") else part
            if key in node:
                out.append(key)
                node = node[key]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
    return tuple(out)


def format_errors(path: Path | str, document: Document, exc: ValidationError) -> str:
    """One line per problem: ``file:line:col: path.inside: what is wrong (and the fix)``."""
    lines: list[str] = []
    seen: set[str] = set()
    for error in exc.errors():
        loc = tuple(error.get("loc", ()))
        kind = error.get("type", "")
        real = _real_path(document.data, loc)
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        where = document.where
        if kind == "extra_forbidden":
            key = loc[-1] if loc else "?"
            real = _real_path(document.data, loc)
            message = f"unknown key {key!r}{suggest(str(key), known_keys())}"
            where = document.where_key
        elif kind == "missing":
            key = loc[-1] if loc else "?"
            message = f"missing required key {str(key).rstrip('_')!r}"
            real = _real_path(document.data, loc[:-1])
        line, column = where(real)
        text = f"{path}:{line}:{column}: {_dotted(real)}: {message}"
        if text not in seen:
            seen.add(text)
            lines.append(text)
    return "\n".join(lines)


class ScenarioError(Exception):
    """A scenario file or document that cannot run (shown without a traceback)."""


class ScenarioFile(pytest.File):
    """A YAML file of one or more scenarios."""

    def collect(self) -> Iterator[pytest.Item | pytest.Collector]:
        shown = self.path.relative_to(self.config.rootpath) \
            if self.path.is_relative_to(self.config.rootpath) else self.path
        try:
            documents = load_documents(self.path)
        except ScenarioSyntaxError as exc:
            yield _broken(self, "invalid", f"{shown}:{exc.line}:{exc.column}: {exc.message}")
            return
        names: dict[str, int] = {}
        for document in documents:
            if not isinstance(document.data, dict):
                yield _broken(self, f"document_{document.index + 1}",
                              f"{shown}:{document.line}:1: a scenario is a mapping "
                              "(name:, target:, ...)")
                continue
            raw_name = document.data.get("name")
            base = slug(str(raw_name)) if isinstance(raw_name, str) and raw_name.strip() \
                else f"document_{document.index + 1}"
            if base in names:
                line, column = document.where(("name",))
                yield _broken(self, f"{base}_{document.index + 1}",
                              f"{shown}:{line}:{column}: name: another scenario in this file "
                              f"is already called {raw_name!r} (line {names[base]})")
                continue
            names[base] = document.line
            try:
                scenario = Scenario.model_validate(document.data)
            except ValidationError as exc:
                yield _broken(self, base, format_errors(shown, document, exc))
                continue
            problem = _import_target(scenario)
            if problem is not None:
                where = ("target", "call") if scenario.target.call else ("target", "http", "app")
                line, column = document.where(where)
                yield _broken(self, base, f"{shown}:{line}:{column}: {'.'.join(where)}: "
                                          f"{problem}", document.line)
                continue
            yield from _items(self, base, scenario, document)


def _import_target(scenario: Scenario) -> str | None:
    """Import the target's module now, as pytest imports a test module at collection: a
    bad import path is a collection-time failure naming the line, and the import's cost
    is not counted in the scenario's run time."""
    from pytest_resilience.scenarios.runner import ScenarioUsageError, resolve

    path = scenario.target.call or (scenario.target.http.app if scenario.target.http else None)
    if path is None:  # a command: started when the scenario runs
        return None
    try:
        obj = resolve(path)
    except ScenarioUsageError as exc:
        return str(exc)
    return None if callable(obj) else f"{path!r} is not callable"


class ScenarioItem(pytest.Function):
    """A scenario (or a malformed document) as a test; reported by file and line."""

    scenario_line: int = 1

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.scenario_line - 1, f"scenario {self.name}"


def _broken(parent: ScenarioFile, name: str, message: str, line: int = 1) -> pytest.Item:
    def broken() -> None:
        pytest.fail(message, pytrace=False)

    item = ScenarioItem.from_parent(parent, name=name, callobj=broken)
    item.scenario_line = line
    return item


def _marks(scenario: Scenario) -> list[pytest.MarkDecorator]:
    out: list[pytest.MarkDecorator] = []
    for mark in scenario.marks:
        if isinstance(mark, str):
            out.append(getattr(pytest.mark, mark))
        else:
            for name, kwargs in mark.items():
                decorator = getattr(pytest.mark, name)
                out.append(decorator(**kwargs) if isinstance(kwargs, dict) else decorator(kwargs))
    if scenario.usefixtures:
        out.append(pytest.mark.usefixtures(*scenario.usefixtures))
    if scenario.clock == "virtual":
        out.append(pytest.mark.virtual_time)
    leaks = scenario.expect.no_leaks
    if leaks:
        out.append(pytest.mark.no_leaks(kinds=leaks) if isinstance(leaks, list)
                   else pytest.mark.no_leaks)
    return out


def _items(parent: ScenarioFile, base: str, scenario: Scenario,
           document: Document) -> Iterator[pytest.Item]:
    keys = list(scenario.parametrize)
    combos = list(itertools.product(*(scenario.parametrize[k] for k in keys))) or [()]
    for combo in combos:
        params = dict(zip(keys, combo, strict=True))
        name = base + (f"[{'-'.join(str(v) for v in combo)}]" if combo else "")

        def run(request: pytest.FixtureRequest, _params: dict[str, Any] = params) -> None:
            from pytest_resilience.scenarios.runner import run_scenario

            __tracebackhide__ = True
            run_scenario(scenario, request, _params)

        run.pytestmark = _marks(scenario)  # type: ignore[attr-defined]
        item = ScenarioItem.from_parent(parent, name=name, callobj=run)
        item.scenario_line = document.line
        item.user_properties.append(("resilience_scenario", scenario.name))
        yield item
