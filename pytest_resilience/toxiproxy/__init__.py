"""The built-in Toxiproxy-compatible engine and the typed Toxiproxy client.

Importing this package is cheap: it starts nothing and imports neither uvloop,
the engine modules nor httpx until a name is first used.

    from pytest_resilience.toxiproxy import start_thread

    with start_thread() as engine:          # or start_process()
        print(engine.url)                   # http://127.0.0.1:<port>, Toxiproxy v2 API
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_resilience.toxiproxy.client import (
        TOXIC_TYPES,
        AlreadyExists,
        AsyncClient,
        AsyncFailFirst,
        AsyncProxy,
        AsyncToxic,
        BadRequest,
        Client,
        Conflict,
        Connection,
        Event,
        ExtensionUnsupported,
        FailFirst,
        FailFirstState,
        NeedsBuiltinEngine,
        NotFound,
        Proxy,
        ProxySpec,
        ServerError,
        Toxic,
        ToxiproxyError,
        ToxiproxyUnreachable,
        validate_toxic,
    )
    from pytest_resilience.toxiproxy.server import EngineHandle, start_process, start_thread

__all__ = [
    "TOXIC_TYPES",
    "AlreadyExists",
    "AsyncClient",
    "AsyncFailFirst",
    "AsyncProxy",
    "AsyncToxic",
    "BadRequest",
    "Client",
    "Conflict",
    "Connection",
    "EngineHandle",
    "Event",
    "ExtensionUnsupported",
    "FailFirst",
    "FailFirstState",
    "NeedsBuiltinEngine",
    "NotFound",
    "Proxy",
    "ProxySpec",
    "ServerError",
    "Toxic",
    "ToxiproxyError",
    "ToxiproxyUnreachable",
    "start_process",
    "start_thread",
    "validate_toxic",
]

_LAZY = {
    "AlreadyExists": "pytest_resilience.toxiproxy.client",
    "AsyncClient": "pytest_resilience.toxiproxy.client",
    "AsyncFailFirst": "pytest_resilience.toxiproxy.client",
    "FailFirst": "pytest_resilience.toxiproxy.client",
    "FailFirstState": "pytest_resilience.toxiproxy.client",
    "NeedsBuiltinEngine": "pytest_resilience.toxiproxy.client",
    "AsyncProxy": "pytest_resilience.toxiproxy.client",
    "AsyncToxic": "pytest_resilience.toxiproxy.client",
    "BadRequest": "pytest_resilience.toxiproxy.client",
    "Client": "pytest_resilience.toxiproxy.client",
    "Conflict": "pytest_resilience.toxiproxy.client",
    "Connection": "pytest_resilience.toxiproxy.client",
    "Event": "pytest_resilience.toxiproxy.client",
    "ExtensionUnsupported": "pytest_resilience.toxiproxy.client",
    "NotFound": "pytest_resilience.toxiproxy.client",
    "Proxy": "pytest_resilience.toxiproxy.client",
    "ProxySpec": "pytest_resilience.toxiproxy.client",
    "ServerError": "pytest_resilience.toxiproxy.client",
    "TOXIC_TYPES": "pytest_resilience.toxiproxy.client",
    "Toxic": "pytest_resilience.toxiproxy.client",
    "ToxiproxyError": "pytest_resilience.toxiproxy.client",
    "ToxiproxyUnreachable": "pytest_resilience.toxiproxy.client",
    "validate_toxic": "pytest_resilience.toxiproxy.client",

    "EngineHandle": "pytest_resilience.toxiproxy.server",
    "start_process": "pytest_resilience.toxiproxy.server",
    "start_thread": "pytest_resilience.toxiproxy.server",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
