"""Shared test configuration for the plugin's own suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest


@pytest.fixture(autouse=True)
def _quiet_inner_pytest_runs(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pytester's inner runs have no ini of their own: give them pytest-asyncio's loop
    scope so it does not warn, and keep slow unrelated plugins out."""
    if "pytester" in request.fixturenames:
        request.getfixturevalue("pytester")  # it clears PYTEST_ADDOPTS when it starts
        monkeypatch.setenv(
            "PYTEST_ADDOPTS", "-o asyncio_default_fixture_loop_scope=function -p no:postgresql"
        )
        # Under xdist the outer worker's id would leak into the inner runs; and on CI
        # (CI=true) pytest would print whole failure messages in the short summary too,
        # which the tests that count what an inner run printed must not see.
        for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "CI",
                     "BUILD_NUMBER"):
            monkeypatch.delenv(name, raising=False)


class OtherAccount:
    """Runs stdlib-only Python code as another local account (``nobody``)."""

    def __init__(self, python: str, uid: int, gid: int, name: str) -> None:
        self.python = python
        self.uid = uid
        self.gid = gid
        self.name = name

    def run(self, code: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.python, "-I", "-c", code], capture_output=True, text=True,
            timeout=timeout, user=self.uid, group=self.gid, extra_groups=[], cwd="/",
            env={"PATH": "/usr/bin:/bin"}, check=False,
        )


@pytest.fixture(scope="session")
def other_account() -> OtherAccount:
    """Another local account to attack the plugin's services from (skipped, with the
    reason, where this process cannot act as one)."""
    import pwd

    if os.geteuid() != 0:
        pytest.skip("acting as another local account needs root (run the suite as root)")
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("this machine has no 'nobody' account to act as")
    for python in (sys.executable, "/usr/bin/python3", shutil.which("python3") or ""):
        if not python:
            continue
        account = OtherAccount(python, entry.pw_uid, entry.pw_gid, "nobody")
        try:
            if account.run("print('ok')", timeout=30).stdout.strip() == "ok":
                return account
        except (OSError, subprocess.SubprocessError):
            continue
    pytest.skip("no Python interpreter the 'nobody' account can run")
