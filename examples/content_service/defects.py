"""One switch that plants one known defect at a time, to prove the checks catch it.

Select a defect with the environment variable ``CONTENT_SERVICE_DEFECT=<name>``
(read at call time, so a test run can set it once) or, in-process, with the
``defect=`` argument every component takes (``defect=""`` means "none", whatever
the environment says). Each defect is one ``if planted(...)`` line in the code.
"""

from __future__ import annotations

import os

ENV = "CONTENT_SERVICE_DEFECT"

#: name -> the claim it breaks (what a failing check should say)
DEFECTS: dict[str, str] = {
    "no_jitter": "retries back off exponentially *with jitter*",
    "wrong_breaker_threshold": "the breaker opens after 5 consecutive failures",
    "no_fallback": "the last good answer is served while the trends API is down",
    "no_query_timeout": "every query times out after query_timeout",
    "no_server_cancel": "a timed-out query stops on the server too (no query runs on "
                        "after the caller gave up)",
    "blocking_call": "nothing blocks the event loop",
    "leaked_session": "the API client session is closed on shutdown",
    "leaked_file": "the access log file is closed on shutdown",
    "no_task_timeout": "a task is cut off after 15 minutes",
    "health_always_healthy": "the pool-health monitor reports degraded and critical pools",
    "slow_session_leak": "every Postgres session the service opens is closed (none piles up "
                         "under load)",
}


def active(defect: str | None = None) -> str:
    """The planted defect's name, or ``""`` for none (*defect* wins over the environment)."""
    name = os.environ.get(ENV, "") if defect is None else defect
    if name and name not in DEFECTS:
        raise ValueError(f"unknown defect {name!r} (from {ENV} or defect=); "
                         f"valid: {', '.join(DEFECTS)}")
    return name


def planted(name: str, defect: str | None = None) -> bool:
    """True when the defect *name* is planted."""
    assert name in DEFECTS, name
    return active(defect) == name
