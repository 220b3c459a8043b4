"""Scenario YAML files become pytest items (cheap to import: the loader, pydantic and
the runner are imported when a scenario file is collected).

PYTEST_DONT_REWRITE (loaded at every pytest start; no user-facing asserts).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import pytest

INI = "resilience_scenarios"
PATTERNS = ("*.resilience.yaml", "*.resilience.yml")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        INI, type="paths", default=[],
        help="directories whose *.yaml / *.yml files are scenarios (default: scenarios/); "
        "*.resilience.yaml files are scenarios anywhere",
    )


def _scenario_dirs(config: pytest.Config) -> list[Path]:
    configured = config.getini(INI)
    if configured:
        return [Path(p).resolve() for p in configured]
    return [(config.rootpath / "scenarios").resolve()]


def is_scenario_file(config: pytest.Config, path: Path) -> bool:
    if path.suffix not in (".yaml", ".yml"):
        return False
    if any(fnmatch.fnmatch(path.name, pattern) for pattern in PATTERNS):
        return True
    resolved = path.resolve()
    return any(resolved.is_relative_to(d) for d in _scenario_dirs(config))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> Any:
    if not is_scenario_file(parent.config, file_path):
        return None
    from pytest_resilience.scenarios.collect import ScenarioFile

    return ScenarioFile.from_parent(parent, path=file_path)
