"""pytest-resilience: prove that retries, breakers, timeouts and cleanup work.

The public API is what ``__all__`` lists; everything else is internal. Names other
than the error classes are imported on first use, so importing the plugin stays cheap
(the verdict and clock modules pull in asyncio and friends only when you use them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_resilience.errors import ConfigError, ResilienceError, ServiceError

if TYPE_CHECKING:
    from pytest_resilience import faults
    from pytest_resilience.clock import (
        ClockReport,
        VirtualClock,
        VirtualClockError,
        current_clock_kind,
    )
    from pytest_resilience.fixtures.leaks import (
        LeakChecker,
    )
    from pytest_resilience.observe.attempts import (
        Attempt,
        BackoffWaits,
        StaminaWaits,
        TenacityWaits,
        Timeline,
        from_requests,
        from_timestamps,
        from_toxiproxy_events,
        from_waits,
        track,
    )
    from pytest_resilience.observe.breaker import (
        BreakerObserver,
        observe_aiobreaker,
        observe_circuitbreaker,
        observe_purgatory,
        observe_pybreaker,
    )
    from pytest_resilience.observe.resources import (
        plugin_service,
        register_service,
    )
    from pytest_resilience.soak.drift import DriftFailed
    from pytest_resilience.soak.driver import LoadPlan
    from pytest_resilience.soak.record import SoakRecord
    from pytest_resilience.soak.schedule import FaultSchedule
    from pytest_resilience.verdicts.backoff import (
        BackoffMismatch,
        BackoffModel,
        JitterMismatch,
        amplification,
        expect_amplification,
        expect_backoff,
        expect_jitter,
    )
    from pytest_resilience.verdicts.breaker import (
        BreakerMismatch,
        ConformanceReport,
        acheck_breaker_conformance,
        check_breaker_conformance,
        expect_transitions,
    )
    from pytest_resilience.verdicts.cancel import CancelMismatch, expect_hung_query_cancelled
    from pytest_resilience.verdicts.core import (
        Tolerance,
        Verdict,
        VerdictFailed,
    )
    from pytest_resilience.verdicts.fallback import (
        FallbackMismatch,
        FallbackRecorder,
        expect_fallback,
    )
    from pytest_resilience.verdicts.health import (
        HealthMismatch,
        HealthRecorder,
        expect_health_grades,
    )
    from pytest_resilience.verdicts.leaks import (
        Leak,
        LeakOptions,
        LeakVerdict,
        ResourceLeakWarning,
    )
    from pytest_resilience.verdicts.timeout import (
        LoopBlocked,
        LoopLagProbe,
        TimeoutMismatch,
        aexpect_query_cancelled,
        aexpect_recovers,
        expect_no_blocking,
        expect_query_cancelled,
        expect_timeout,
        expect_timeout_call,
    )

__all__ = [
    "Attempt",
    "BackoffMismatch",
    "BackoffModel",
    "BackoffWaits",
    "BreakerMismatch",
    "BreakerObserver",
    "CancelMismatch",
    "ClockReport",
    "ConfigError",
    "ConformanceReport",
    "DriftFailed",
    "FallbackMismatch",
    "FallbackRecorder",
    "FaultSchedule",
    "HealthMismatch",
    "HealthRecorder",
    "JitterMismatch",
    "Leak",
    "LeakChecker",
    "LeakOptions",
    "LeakVerdict",
    "LoadPlan",
    "LoopBlocked",
    "LoopLagProbe",
    "ResilienceError",
    "ResourceLeakWarning",
    "ServiceError",
    "SoakRecord",
    "StaminaWaits",
    "TenacityWaits",
    "Timeline",
    "TimeoutMismatch",
    "Tolerance",
    "Verdict",
    "VerdictFailed",
    "VirtualClock",
    "VirtualClockError",
    "__version__",
    "acheck_breaker_conformance",
    "aexpect_query_cancelled",
    "aexpect_recovers",
    "amplification",
    "check_breaker_conformance",
    "current_clock_kind",
    "expect_amplification",
    "expect_backoff",
    "expect_fallback",
    "expect_health_grades",
    "expect_hung_query_cancelled",
    "expect_jitter",
    "expect_no_blocking",
    "expect_query_cancelled",
    "expect_timeout",
    "expect_timeout_call",
    "expect_transitions",
    "faults",
    "from_requests",
    "from_timestamps",
    "from_toxiproxy_events",
    "from_waits",
    "observe_aiobreaker",
    "observe_circuitbreaker",
    "observe_purgatory",
    "observe_pybreaker",
    "plugin_service",
    "register_service",
    "track",
]

__version__ = "0.1.0.dev0"

_LAZY = {
    "LeakChecker": "pytest_resilience.fixtures.leaks",
    "plugin_service": "pytest_resilience.observe.resources",
    "register_service": "pytest_resilience.observe.resources",
    "Leak": "pytest_resilience.verdicts.leaks",
    "LeakOptions": "pytest_resilience.verdicts.leaks",
    "LeakVerdict": "pytest_resilience.verdicts.leaks",
    "ResourceLeakWarning": "pytest_resilience.verdicts.leaks",
    "Attempt": "pytest_resilience.observe.attempts",
    "BackoffWaits": "pytest_resilience.observe.attempts",
    "StaminaWaits": "pytest_resilience.observe.attempts",
    "TenacityWaits": "pytest_resilience.observe.attempts",
    "Timeline": "pytest_resilience.observe.attempts",
    "from_requests": "pytest_resilience.observe.attempts",
    "from_timestamps": "pytest_resilience.observe.attempts",
    "from_toxiproxy_events": "pytest_resilience.observe.attempts",
    "from_waits": "pytest_resilience.observe.attempts",
    "track": "pytest_resilience.observe.attempts",
    "BackoffMismatch": "pytest_resilience.verdicts.backoff",
    "BackoffModel": "pytest_resilience.verdicts.backoff",
    "amplification": "pytest_resilience.verdicts.backoff",
    "expect_amplification": "pytest_resilience.verdicts.backoff",
    "expect_backoff": "pytest_resilience.verdicts.backoff",
    "JitterMismatch": "pytest_resilience.verdicts.backoff",
    "expect_jitter": "pytest_resilience.verdicts.backoff",
    "BreakerObserver": "pytest_resilience.observe.breaker",
    "observe_aiobreaker": "pytest_resilience.observe.breaker",
    "observe_circuitbreaker": "pytest_resilience.observe.breaker",
    "observe_purgatory": "pytest_resilience.observe.breaker",
    "observe_pybreaker": "pytest_resilience.observe.breaker",
    "BreakerMismatch": "pytest_resilience.verdicts.breaker",
    "ConformanceReport": "pytest_resilience.verdicts.breaker",
    "acheck_breaker_conformance": "pytest_resilience.verdicts.breaker",
    "check_breaker_conformance": "pytest_resilience.verdicts.breaker",
    "expect_transitions": "pytest_resilience.verdicts.breaker",
    "LoopBlocked": "pytest_resilience.verdicts.timeout",
    "LoopLagProbe": "pytest_resilience.verdicts.timeout",
    "expect_no_blocking": "pytest_resilience.verdicts.timeout",
    "TimeoutMismatch": "pytest_resilience.verdicts.timeout",
    "aexpect_query_cancelled": "pytest_resilience.verdicts.timeout",
    "aexpect_recovers": "pytest_resilience.verdicts.timeout",
    "expect_query_cancelled": "pytest_resilience.verdicts.timeout",
    "expect_timeout": "pytest_resilience.verdicts.timeout",
    "expect_timeout_call": "pytest_resilience.verdicts.timeout",
    "CancelMismatch": "pytest_resilience.verdicts.cancel",
    "expect_hung_query_cancelled": "pytest_resilience.verdicts.cancel",
    "FallbackMismatch": "pytest_resilience.verdicts.fallback",
    "FallbackRecorder": "pytest_resilience.verdicts.fallback",
    "expect_fallback": "pytest_resilience.verdicts.fallback",
    "HealthMismatch": "pytest_resilience.verdicts.health",
    "HealthRecorder": "pytest_resilience.verdicts.health",
    "expect_health_grades": "pytest_resilience.verdicts.health",
    "Tolerance": "pytest_resilience.verdicts.core",
    "Verdict": "pytest_resilience.verdicts.core",
    "VerdictFailed": "pytest_resilience.verdicts.core",
    "DriftFailed": "pytest_resilience.soak.drift",
    "LoadPlan": "pytest_resilience.soak.driver",
    "SoakRecord": "pytest_resilience.soak.record",
    "FaultSchedule": "pytest_resilience.soak.schedule",
    "ClockReport": "pytest_resilience.clock",
    "VirtualClock": "pytest_resilience.clock",
    "VirtualClockError": "pytest_resilience.clock",
    "current_clock_kind": "pytest_resilience.clock",
}


#: Public submodules, imported on first use (``from pytest_resilience import faults``).
_SUBMODULES = {"faults"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
