"""Having the plugin installed costs nothing the run does not use (issue 15).

``pytest --co`` in an empty directory, with the plugin auto-loaded: none of the heavy
modules is imported, no ``postgres`` process is spawned, nothing is written under
``.pytest_cache/v/resilience``. Not a timing test: ``benchmarks/bench_import.py``
measures the time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

#: Modules a collect-only run of an empty directory must not import.
HEAVY = (
    "pytest_resilience.fixtures._leakcheck",
    "pytest_resilience.fixtures._http",
    "pytest_resilience.observe.resources",
    "pytest_resilience.verdicts.leaks",
    "pytest_resilience.services",
    "pytest_resilience.soak",
    "pytest_resilience.clock",
    "psycopg",
    "httpx",
    "pydantic",
    "yaml",
    "hdrh",
    "matplotlib",
)

PROBE = """
import json, subprocess, sys
import pytest

spawned = []
real_init = subprocess.Popen.__init__

def recording_init(self, args, *a, **kw):
    spawned.append(args if isinstance(args, str) else [str(x) for x in args])
    real_init(self, args, *a, **kw)

subprocess.Popen.__init__ = recording_init
code = pytest.main(sys.argv[1:])
print("PROBE " + json.dumps({
    "code": int(code),
    "modules": sorted(sys.modules),
    "spawned": spawned,
}))
"""


def _probe(directory: Path, *args: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "RESILIENCE_"))}
    # plugins that other packages of the environment auto-load import what they
    # please (psycopg, httpx...): only this plugin is under test
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "-p", "pytest_resilience.plugin", *args],
        cwd=directory, env=env, capture_output=True, text=True, timeout=100, check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("PROBE "):
            result: dict[str, object] = json.loads(line[len("PROBE "):])
            return result
    raise AssertionError(f"probe failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def _heavy(modules: object) -> list[str]:
    assert isinstance(modules, list)
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


@pytest.mark.parametrize("args", [("--co", "-q"), ("--co",), ("--co", "-v")],
                         ids=["quiet", "normal", "verbose"])
def test_collect_only_in_an_empty_directory_imports_nothing_heavy(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = _probe(tmp_path, *args)
    assert result["code"] == pytest.ExitCode.NO_TESTS_COLLECTED
    assert "pytest_resilience.plugin" in result["modules"]  # type: ignore[operator]
    if "-v" not in args:
        assert _heavy(result["modules"]) == []
        assert result["spawned"] == []
    assert not (tmp_path / ".pytest_cache" / "v" / "resilience").exists()


def test_a_run_that_runs_tests_remembers_its_seed(tmp_path: Path) -> None:
    (tmp_path / "test_one.py").write_text("def test_ok():\n    pass\n")
    result = _probe(tmp_path, "-q", "--resilience-seed=31337")
    assert result["code"] == pytest.ExitCode.OK
    assert _heavy(result["modules"]) == []
    assert result["spawned"] == []
    seed = tmp_path / ".pytest_cache" / "v" / "resilience" / "seed"
    assert json.loads(seed.read_text()) == 31337


LAZY_NAMES = """
import sys
from pytest_resilience.fixtures import http, leaks

for module in (leaks, http):
    for probe in ("_mock_name", "__wrapped__", "pytest_plugins", "pytestmark"):
        assert not hasattr(module, probe), (module.__name__, probe)
assert "pytest_resilience.fixtures._leakcheck" not in sys.modules
assert "pytest_resilience.fixtures._http" not in sys.modules
from pytest_resilience import LeakChecker
from pytest_resilience.fixtures.http import HttpBackends
from pytest_resilience.fixtures._leakcheck import LeakChecker as real_checker
from pytest_resilience.fixtures._http import HttpBackends as real_backends
assert LeakChecker is real_checker and leaks.LeakCheck.__name__ == "LeakCheck"
assert HttpBackends is real_backends
print("OK")
"""


def test_the_machinery_behind_the_shims_loads_on_first_use_only() -> None:
    """``fixtures.leaks`` and ``fixtures.http`` serve their heavy names lazily; the
    attribute probes of pytest's fixture scan neither find nor import anything."""
    proc = subprocess.run([sys.executable, "-c", LAZY_NAMES], capture_output=True, text=True,
                          timeout=100, check=False)
    assert proc.stdout.strip() == "OK", proc.stderr[-3000:]
