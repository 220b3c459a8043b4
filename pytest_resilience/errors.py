"""Exception classes raised for *misuse* of the plugin or failed services.

Injected faults never raise these: they surface as the exception the real
dependency would raise (``ConnectionResetError``, the driver's own errors...).
"""

from __future__ import annotations

__all__ = ["ConfigError", "ResilienceError", "ServiceError"]


class ResilienceError(Exception):
    """Base class for every error the plugin raises on its own account."""


class ConfigError(ResilienceError):
    """A setting, marker argument or scenario field is invalid."""


class ServiceError(ResilienceError):
    """A real component (Postgres, Toxiproxy, a fake backend) failed to start or stop."""
