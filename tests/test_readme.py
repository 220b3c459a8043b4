"""README code blocks are runnable examples. A block whose first line is
``# file: test_*.py`` is a test module: all of them are collected into one pytester
directory and must pass. A block whose first line is ``# script: name.py`` is a
program: it runs with ``-W error`` and must exit 0."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
TESTS = re.compile(r"```python\n# file: (test_\w+\.py)\n(.*?)```", re.S)
SCRIPTS = re.compile(r"```python\n# script: (\w+\.py)\n(.*?)```", re.S)

pytestmark = pytest.mark.timeout(300)


def test_readme_has_examples() -> None:
    assert len(TESTS.findall(README.read_text())) >= 3


def test_readme_test_examples_pass(pytester: pytest.Pytester) -> None:
    examples = dict(TESTS.findall(README.read_text()))
    for name, body in examples.items():
        pytester.makepyfile(**{name[:-3]: body})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=240)
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, result.stdout.str()
    assert outcomes.get("errors", 0) == 0, result.stdout.str()
    assert outcomes.get("passed", 0) >= len(examples)


@pytest.mark.parametrize("name", [name for name, _ in SCRIPTS.findall(README.read_text())])
def test_readme_script_examples_run(pytester: pytest.Pytester, name: str) -> None:
    body = dict(SCRIPTS.findall(README.read_text()))[name]
    script = pytester.makepyfile(**{name[:-3]: body})
    result = pytester.run(sys.executable, "-W", "error", str(script), timeout=120)
    assert result.ret == 0, result.stderr.str()
