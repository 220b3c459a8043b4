"""pytest-resilience: prove that retries, breakers, timeouts and cleanup work.

The public API is what ``__all__`` lists; everything else is internal.
"""

from __future__ import annotations

from pytest_resilience.errors import ConfigError, ResilienceError, ServiceError

__all__ = ["ConfigError", "ResilienceError", "ServiceError", "__version__"]

__version__ = "0.1.0.dev0"
