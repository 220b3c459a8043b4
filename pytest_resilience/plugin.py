"""The pytest plugin: options, markers, report header and fixture wiring.

Thin on purpose: every fixture lives in ``pytest_resilience.fixtures.*`` and
delegates to the module that does the work. Nothing heavy is imported here,
so ``pytest --co`` on a project that uses none of the fixtures stays fast.

PYTEST_DONT_REWRITE (loaded at every pytest start; no user-facing asserts).
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_resilience import config as _config

#: The plugin's fixture and hook modules, registered by :func:`pytest_addhooks` (not
#: with ``pytest_plugins``: pytest would scan every installed distribution's entry points
#: once per name - ten scans, 50-200 ms at every start).
PLUGIN_MODULES = (
    "pytest_resilience.fixtures.postgres",
    "pytest_resilience.fixtures.toxiproxy",
    "pytest_resilience.fixtures.http",
    "pytest_resilience.fixtures.verdicts",
    "pytest_resilience.fixtures.clock",
    "pytest_resilience.fixtures.leaks",
    "pytest_resilience.fixtures.soak",
    "pytest_resilience.fixtures.pgwire",
    "pytest_resilience.report.plugin",
    "pytest_resilience.scenarios.plugin",
)

MARKERS = (
    "virtual_time(start=None, auto_advance=True): run the test on the virtual clock "
    "(asyncio loop time, time.*, datetime.*) so long timeouts pass in milliseconds",
    "no_leaks(kinds=None, allow=None, ignore=()): fail the test if it leaks file "
    "descriptors, sockets, threads, tasks, client sessions or database connections",
    "soak(duration=None, iterations=None, rate=None, concurrency=1, warmup=0, interval=1): "
    "a load/soak test: the plan of its `soak` fixture runs (--resilience-soak overrides "
    "the bound); deselect with -m 'not soak'",
)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    import importlib

    for name in PLUGIN_MODULES:
        if pluginmanager.get_plugin(name) is None and not pluginmanager.is_blocked(name):
            pluginmanager.register(importlib.import_module(name), name)


def pytest_addoption(parser: pytest.Parser) -> None:
    _config.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    settings = _config.from_config(config)
    config.stash[_config.settings_key] = settings
    if getattr(config, "workerinput", None) is None and not config.option.collectonly:
        config.pluginmanager.register(_SeedSaver(config), "resilience-seed")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(settings), "resilience-xdist")


def pytest_report_header(config: pytest.Config) -> list[str]:
    return config.stash[_config.settings_key].header_lines()


class _SeedSaver:
    """Remembers the seed for ``--resilience-seed=last`` when the first test starts.

    Only runs that run tests write it (not ``--co``, not an empty directory), and at
    the first test rather than at the end, so a run killed half-way can be replayed.
    Under xdist the controller sees every test start (the workers have no cache to
    write). Unregisters itself once done, so later tests cost nothing."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config

    def pytest_runtest_logstart(self) -> None:
        config = self._config
        config.pluginmanager.unregister(self)
        cache = getattr(config, "cache", None)
        if cache is not None:
            cache.set("resilience/seed", config.stash[_config.settings_key].seed)


class _XdistHooks:
    """Registered only when pytest-xdist is loaded: hand the seed to every worker."""

    def __init__(self, settings: _config.Settings) -> None:
        self._settings = settings

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["resilience_seed"] = self._settings.seed
