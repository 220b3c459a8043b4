"""Shared test configuration for the plugin's own suite."""

from __future__ import annotations

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
        # Under xdist the outer worker's id would leak into the inner runs.
        for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
            monkeypatch.delenv(name, raising=False)
