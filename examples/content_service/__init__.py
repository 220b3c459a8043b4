"""A small content service with the resilience features the shipped demos check.

* :mod:`.trends` calls a trends HTTP API with retries (tenacity, exponential
  backoff), a circuit breaker (pybreaker) and a cached fallback.
* :mod:`.store` reads articles from Postgres through an asyncpg pool with a
  per-query timeout.
"""
