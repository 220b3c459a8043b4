"""A small content service with the resilience features the examples check.

* :mod:`.store` - articles on Postgres: asyncpg pool, a timeout on every query, DB retries;
* :mod:`.trends` - trends API client (httpx): retries, circuit breaker, last-good fallback;
* :mod:`.retry`, :mod:`.breaker` - exponential backoff with jitter; the circuit breaker;
* :mod:`.health` - pool-health monitor (healthy / degraded / critical);
* :mod:`.tasks` - task executor with a 15-minute limit per task;
* :mod:`.app` - the service and its ASGI HTTP API (``/livez``, ``/readyz``, ...);
* :mod:`.config` - production settings and the scaled-down ``TESTING`` ones;
* :mod:`.defects` - ``CONTENT_SERVICE_DEFECT=<name>`` plants one known defect;
* :mod:`.claims` - one entry point per claim, for the tests and a scenario runner.
"""
