"""Helpers for the leak-check tests: run an inner pytest session in a subprocess.

Inner runs that leak on purpose must not make the outer run see their
ResourceWarnings, so they always run in a child process; the helper is
module-scoped so one inner run can feed many assertions.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

INNER_TIMEOUT = 240

INI = """
[pytest]
asyncio_mode = {mode}
asyncio_default_fixture_loop_scope = function
"""


class InnerRun:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.ret = proc.returncode
        self.text = proc.stdout + proc.stderr
        self.lines = self.text.splitlines()

    def fnmatch_lines(self, lines: list[str]) -> None:
        pytest.LineMatcher(self.lines).fnmatch_lines(lines)

    def section(self, test: str) -> list[str]:
        start = self.text.index(f"ERROR at teardown of {test} ")
        end = self.text.find("ERROR at teardown of", start + 10)
        return self.text[start:end if end != -1 else None].splitlines()


RunInner = Callable[..., InnerRun]


def run_inner(
    directory: Path, files: dict[str, str], *args: str, mode: str = "strict",
    ini_extra: str = "",
) -> InnerRun:
    """Write *files* into *directory* and run pytest there in a child process."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pytest.ini").write_text(INI.format(mode=mode) + ini_extra)
    for name, source in files.items():
        (directory / name).write_text(source)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:postgresql",
         "-rE", *args],
        cwd=directory, env=env, capture_output=True, text=True, timeout=INNER_TIMEOUT,
        check=False,
    )
    return InnerRun(proc)
