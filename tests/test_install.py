"""The README's install instructions cover its examples (fast: no network, no venv).

Every third-party module a README example imports, and pytest-asyncio for an async test,
and respx for ``http_mock``, must come from the package's own dependencies or from the
``[all]`` extra the Quick start documents; and the ``needs:`` line directly above an
example names it. ``scripts/check_readme_install.py`` (run by CI) proves the same by
installing ``[all]`` into a fresh venv and running the examples there.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# as tests/test_readme.py: a ``# file: test_*.py`` or ``# script: name.py`` python block,
# with the line above its fence
EXAMPLE = re.compile(r"(?:^|\n)([^\n]*)\n```python\n# (?:file|script): (\w+\.py)\n(.*?)```", re.S)
NEEDS = re.compile(r"^needs: `pip install ([^`]+)`")
# the module names of the README's examples whose distributions differ from or have no
# installed twin in the test venv
KNOWN = {"yaml": "pyyaml", "psycopg": "psycopg", "pytest_resilience": "pytest-resilience"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> str:
    m = re.match(r"[A-Za-z0-9._-]+", req)
    assert m, req
    return _norm(m.group(0))


def _extra(name: str) -> set[str]:
    return {_req_name(r) for r in PYPROJECT["optional-dependencies"][name]}


def examples() -> list[tuple[str, str, str]]:
    """(line above the fence, file name, code) of every README example."""
    return EXAMPLE.findall(README.read_text())


@functools.cache
def _dists() -> dict[str, list[str]]:
    return dict(packages_distributions())


def needed(code: str) -> set[str]:
    """The distributions (normalised names) an example needs beyond the standard library."""
    dists = _dists()
    out: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            mods = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [node.module.split(".")[0]]
        else:
            continue
        for mod in mods:
            if mod in sys.stdlib_module_names or mod == "__future__":
                continue
            names = [KNOWN[mod]] if mod in KNOWN else dists.get(mod)
            assert names, f"no installed distribution provides {mod!r}: add it to KNOWN"
            out.add(_norm(names[0]))
    if re.search(r"async def test_|pytest\.mark\.asyncio|pytest_asyncio", code):
        out.add("pytest-asyncio")
    if re.search(r"\bhttp_mock\b|mode=\"respx\"", code):
        out.add("respx")
    return out - {"pytest-resilience", "pytest"}


def base() -> set[str]:
    return {_req_name(r) for r in PYPROJECT["dependencies"]}


def test_readme_has_examples_to_check() -> None:
    assert len(examples()) >= 10


def test_all_extra_covers_every_readme_example() -> None:
    missing = {
        name: sorted(needed(code) - base() - _extra("all")) for _, name, code in examples()
    }
    assert not any(missing.values()), {k: v for k, v in missing.items() if v}


def test_all_extra_holds_every_user_extra() -> None:
    dev = {"all", "main", "test", "lint", "bench", "locust", "release"}
    for extra in set(PYPROJECT["optional-dependencies"]) - dev:
        assert _extra(extra) <= _extra("all"), extra


@pytest.mark.parametrize(
    ("above", "name", "code"), examples(), ids=[n for _, n, _ in examples()]
)
def test_needs_line_names_what_the_example_needs(above: str, name: str, code: str) -> None:
    need = needed(code) - base()
    m = NEEDS.match(above)
    if not need:
        assert not m, f"{name} needs nothing beyond `pip install pytest-resilience`: drop {above!r}"
        return
    assert m, (f"{name} needs {sorted(need)}: put a line directly above its fence: "
               f"needs: `pip install ...`")
    named: set[str] = set()
    for word in m.group(1).replace("'", "").split():
        pkg, _, extras = word.partition("[")
        if _norm(pkg) == "pytest-resilience":
            for extra in extras.rstrip("]").split(","):
                named |= _extra(extra.strip())
        else:
            named.add(_req_name(word))
    assert need <= named, f"{name}: {above!r} does not cover {sorted(need - named)}"


def test_quick_start_shows_the_install_and_the_ini_line() -> None:
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "pytest-resilience[all]" in quick
    assert "asyncio_default_fixture_loop_scope = function" in quick
    assert "Linux" in quick
