"""The one lifecycle shape every service has.

start (a function or ``start()``, which returns the running service) -> address
(``url``/``dsn``/``host``+``port``) and :meth:`Service.describe` -> :meth:`Service.stop`
(idempotent), and the context-manager form of the same. What a service owns is
declared in :mod:`pytest_resilience.services.registry` as it starts; child processes
come from :func:`pytest_resilience.services.supervise.spawn`; a background event loop
from :class:`pytest_resilience.services.loop_thread.LoopThread`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["Service"]


@runtime_checkable
class Service(Protocol):
    """A running service: describe it, stop it (also as a context manager)."""

    def describe(self) -> str:
        """One line: what it is and where it listens (no secrets)."""
        ...

    def stop(self) -> None:
        """Stop it and release what it owns; calling it again does nothing."""
        ...

    def __enter__(self) -> Service: ...

    def __exit__(self, *exc: object) -> None: ...
