"""Public API of the fake HTTP backends: the script vocabulary and the backend types.

``from pytest_resilience.http import Response, Fault, too_many_requests`` — see
'Fake HTTP backends' in the README.
"""

from __future__ import annotations

from pytest_resilience.services.http_routes import RecordedRequest
from pytest_resilience.services.http_script import (
    Dribble,
    Fault,
    Fixed,
    LogNormal,
    Response,
    Uniform,
    forever,
    retry_after,
    times,
    too_many_requests,
)

__all__ = [
    "Dribble",
    "Fault",
    "Fixed",
    "LogNormal",
    "RecordedRequest",
    "Response",
    "Uniform",
    "forever",
    "retry_after",
    "times",
    "too_many_requests",
]
