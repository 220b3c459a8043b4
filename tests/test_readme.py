"""Every README code block that starts with ``# file: test_*.py`` is a runnable example:
collect them all into one pytester directory and run them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
BLOCK = re.compile(r"```python\n# file: (test_\w+\.py)\n(.*?)```", re.S)

pytestmark = pytest.mark.timeout(300)


def _examples() -> dict[str, str]:
    return dict(BLOCK.findall(README.read_text()))


def test_readme_has_examples() -> None:
    assert len(_examples()) >= 2


def test_readme_examples_pass(pytester: pytest.Pytester) -> None:
    examples = _examples()
    for name, body in examples.items():
        pytester.makepyfile(**{name[:-3]: body})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=240)
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, result.stdout.str()
    assert outcomes.get("errors", 0) == 0, result.stdout.str()
    assert outcomes.get("passed", 0) >= len(examples)
