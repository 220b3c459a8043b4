"""The breaker conformance check is never vacuous, and injects the failure the breaker counts.

Real time, not the virtual clock: the harness runs racers in threads held at
``threading`` gates and knocks with ``time.sleep`` until the breaker lets a
trial through, so the breaker decides when things happen and every wait is
bounded (``3 * recovery_timeout + 1 s`` for the trial, ``settle`` for the racers).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest

from pytest_resilience.verdicts.breaker import (
    PROPERTIES,
    BackendDown,
    BreakerMismatch,
    ConformanceReport,
    Property,
    acheck_breaker_conformance,
    check_breaker_conformance,
)

RECOVERY = 0.05
SETTLE = 0.2  # pybreaker serialises callers: the racers wait this long behind the trial
RECOVERY_PROPERTIES = [
    "half_open_after_recovery_timeout",
    "reopens_on_failed_trial",
    "half_open_trials",
    "closes_on_successful_trial",
]


def assert_headline_agrees(report: ConformanceReport, allow: Sequence[str] = ()) -> None:
    """PASSED exactly when every row is ok or allowed; every property has a row."""
    verdict = report.verdict(allow=allow)
    assert [row[0] for row in verdict.rows] == list(PROPERTIES)
    rows_ok = all(row[-1] == "ok" or row[-1].startswith("allowed") for row in verdict.rows)
    assert verdict.passed == rows_ok == report.passes(allow)
    first_line = verdict.text().splitlines()[0]
    assert ("verdict PASSED" if rows_ok else "verdict FAILED") in first_line
    for row in verdict.rows:  # a not measured row is never ok
        if row[2].startswith("not measured"):
            assert row[-1] in ("<-- NOT MEASURED", "allowed (not measured)")
    for prop in report.properties:
        assert prop.measured == (not prop.observed.startswith("not measured"))
        assert prop.measured or not prop.passed


def http_status_error(status: int = 503) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "https://backend.invalid/items")
    response = httpx.Response(status, request=request)
    return httpx.HTTPStatusError(f"Server error '{status}'", request=request, response=response)


class HttpErrorBreaker:
    """A pybreaker that counts only HTTP status errors (transport errors pass through)."""

    def __init__(self, fail_max: int, reset_timeout: float) -> None:
        import pybreaker

        self.breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            exclude=[lambda exc: not isinstance(exc, httpx.HTTPStatusError)],
        )

    def call(self, fn: Callable[[], Any]) -> Any:
        return self.breaker.call(fn)


def pybreaker_report(**kwargs: Any) -> ConformanceReport:
    import pybreaker

    breaker = pybreaker.CircuitBreaker(fail_max=3, reset_timeout=RECOVERY)
    return check_breaker_conformance(
        lambda backend: breaker.call(backend), failures_to_open=3, recovery_timeout=RECOVERY,
        settle=SETTLE, name="pybreaker", **kwargs,
    )


# -- (1) a "breaker" that never opens ---------------------------------------------------------


def test_a_pass_through_fails_and_the_recovery_is_not_measured() -> None:
    report = check_breaker_conformance(
        lambda backend: backend(), failures_to_open=3, recovery_timeout=RECOVERY,
        name="pass-through",
    )
    assert_headline_agrees(report)
    assert not report.passed
    assert report["opens_after_failures"].observed == "never opened in 6 calls"
    fail_fast = report["fail_fast_while_open"]
    assert fail_fast.measured
    assert not fail_fast.passed
    assert fail_fast.observed.startswith("5 of 5 reached")
    assert report.not_measured == RECOVERY_PROPERTIES
    assert report.failed == list(PROPERTIES)
    for name in RECOVERY_PROPERTIES:
        assert report[name].observed == "not measured: the breaker never opened"
        assert report[name].status == "not measured"

    text = report.text()
    assert text.startswith("breaker-conformance verdict FAILED: pass-through")
    assert text.count("<-- NOT MEASURED") == 4
    assert text.count("<-- FAILS") == 2
    assert "pass the one it counts: failure=..." in text
    with pytest.raises(BreakerMismatch, match=r"fail_fast_while_open .*5 of 5 reached"):
        report.check()
    # allowing the two measured failures is not enough: not measured still fails
    with pytest.raises(BreakerMismatch, match="NOT MEASURED"):
        report.check(allow=["opens_after_failures", "fail_fast_while_open"])


@pytest.mark.asyncio
async def test_an_async_pass_through_is_not_measured_either() -> None:
    async def through(backend: Callable[[], Any]) -> Any:
        return await backend()

    report = await acheck_breaker_conformance(
        through, failures_to_open=2, recovery_timeout=RECOVERY, name="async pass-through"
    )
    assert_headline_agrees(report)
    assert report.not_measured == RECOVERY_PROPERTIES
    assert not report["fail_fast_while_open"].passed
    assert report.verdict().status == "FAILED"


# -- (2) pybreaker, correctly configured -------------------------------------------------------


def test_pybreaker_passes_twenty_times_in_a_row() -> None:
    for run in range(20):
        report = pybreaker_report()
        assert_headline_agrees(report)
        assert report.passed, f"run {run + 1}:\n{report.text()}"
        assert report.not_measured == []
        assert report["half_open_trials"].value == 1
        report.check()


# -- (3) a breaker that counts only HTTP status errors -----------------------------------------


def test_an_http_only_breaker_never_opens_on_the_default_failure() -> None:
    breaker = HttpErrorBreaker(fail_max=3, reset_timeout=RECOVERY)
    report = check_breaker_conformance(
        breaker.call, failures_to_open=3, recovery_timeout=RECOVERY, settle=SETTLE,
        name="http-only pybreaker",
    )
    assert_headline_agrees(report)
    opens = report["opens_after_failures"]
    assert not opens.passed
    assert "the backend raised BackendDown" in opens.detail
    assert report.not_measured == RECOVERY_PROPERTIES
    with pytest.raises(BreakerMismatch, match="never opened in 6 calls"):
        report.check()


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(http_status_error(), id="instance"),
        pytest.param(http_status_error, id="callable"),
    ],
)
def test_an_http_only_breaker_passes_with_the_failure_it_counts(failure: Any) -> None:
    breaker = HttpErrorBreaker(fail_max=3, reset_timeout=RECOVERY)
    report = check_breaker_conformance(
        breaker.call, failures_to_open=3, recovery_timeout=RECOVERY, settle=SETTLE,
        name="http-only pybreaker", failure=failure,
    )
    assert_headline_agrees(report)
    assert report.passed, report.text()
    assert "the backend raised HTTPStatusError" in report["opens_after_failures"].detail
    assert "HTTPStatusError" in (report.observer.calls[0].error if report.observer else "")
    report.check()


def test_failure_as_an_exception_type() -> None:
    report = pybreaker_report(failure=TimeoutError)
    assert_headline_agrees(report)
    assert report.passed, report.text()
    assert report.observer is not None
    assert report.observer.calls[0].error == "TimeoutError: backend is down (conformance harness)"


def test_default_failure_is_backend_down() -> None:
    report = pybreaker_report()
    assert report.observer is not None
    assert report.observer.calls[0].error is not None
    assert report.observer.calls[0].error.startswith("BackendDown: ")
    assert issubclass(BackendDown, ConnectionError)


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (
            httpx.HTTPStatusError,
            r"cannot create HTTPStatusError\(.*failure=lambda: HTTPStatusError",
        ),
        (KeyboardInterrupt, "expected an Exception subclass"),
        (lambda: "down", "returned 'down', not an Exception instance"),
        (42, "expected an exception type, an exception instance, or a callable"),
    ],
)
def test_a_bad_failure_is_refused_before_any_call(failure: Any, message: str) -> None:
    calls: list[object] = []
    with pytest.raises(TypeError, match=message):
        check_breaker_conformance(
            calls.append, failures_to_open=3, recovery_timeout=RECOVERY, failure=failure
        )
    assert calls == []


@pytest.mark.asyncio
async def test_aiobreaker_with_a_chosen_failure() -> None:
    import aiobreaker

    breaker = aiobreaker.CircuitBreaker(
        fail_max=3, timeout_duration=datetime.timedelta(seconds=RECOVERY)
    )
    report = await acheck_breaker_conformance(
        lambda backend: breaker.call_async(backend), failures_to_open=3,
        recovery_timeout=RECOVERY, settle=SETTLE, name="aiobreaker",
        failure=lambda: http_status_error(502),
    )
    assert_headline_agrees(report)
    assert_headline_agrees(report, allow=["half_open_trials"])
    assert report.failed == ["half_open_trials"]  # the known stampede, measured
    assert report.not_measured == []
    report.check(allow=["half_open_trials"])


# -- (4) allow= ---------------------------------------------------------------------------------


def synthetic_report() -> ConformanceReport:
    """Everything holds except one property the run could not exercise."""
    rows = [Property(name, "expected", "observed", True) for name in PROPERTIES]
    rows[2] = Property(
        "half_open_after_recovery_timeout", "a trial after 50 ms",
        "not measured: no trial call reached the backend", False, measured=False,
    )
    return ConformanceReport("synthetic", rows)


def test_allow_lets_a_not_measured_property_pass_and_says_so() -> None:
    report = synthetic_report()
    assert_headline_agrees(report)
    assert_headline_agrees(report, allow=["half_open_after_recovery_timeout"])
    assert not report.passed
    with pytest.raises(BreakerMismatch, match=r"not measured: no trial.*<-- NOT MEASURED"):
        report.check()

    allow = ["half_open_after_recovery_timeout"]
    assert report.check(allow=allow) is report
    verdict = report.verdict(allow=allow)
    assert verdict.passed
    assert verdict.rows[2][-1] == "allowed (not measured)"
    assert verdict.blamed_rows == []
    assert verdict.text().startswith(
        "breaker-conformance verdict PASSED: synthetic behaves like a circuit breaker "
        "(allowed: half_open_after_recovery_timeout)"
    )
    assert verdict.outcome == "allowed: half_open_after_recovery_timeout"


def test_allow_on_a_real_never_opening_breaker_marks_the_row_allowed() -> None:
    report = check_breaker_conformance(
        lambda backend: backend(), failures_to_open=3, recovery_timeout=RECOVERY,
        name="pass-through",
    )
    allow = ["half_open_after_recovery_timeout"]
    assert_headline_agrees(report, allow=allow)
    verdict = report.verdict(allow=allow)
    assert verdict.rows[2][-1] == "allowed (not measured)"
    assert not verdict.passed  # the other rows still fail, and the headline says so
    assert verdict.text().startswith("breaker-conformance verdict FAILED")

    everything = list(PROPERTIES)
    assert_headline_agrees(report, allow=everything)
    assert [row[-1] for row in report.verdict(allow=everything).rows] == [
        "allowed (fails)", "allowed (fails)", *["allowed (not measured)"] * 4
    ]
    report.check(allow=everything)


def test_allow_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown property 'half_open'; valid names: opens_after"):
        synthetic_report().check(allow=["half_open"])


def test_a_report_missing_properties_does_not_pass() -> None:
    report = ConformanceReport("partial", synthetic_report().properties[:2])
    assert_headline_agrees(report)
    assert not report.passed
    assert report.verdict().rows[5][2] == "not measured: not in the report"
    assert_headline_agrees(ConformanceReport("nothing"))
    assert not ConformanceReport("nothing").passed


def test_a_property_marked_passed_but_not_measured_is_not_ok() -> None:
    report = synthetic_report()
    report.properties[2].passed = True  # measured=False still wins
    assert not report.properties[2].ok
    assert not report.passed
    assert report.verdict().rows[2][-1] == "<-- NOT MEASURED"


# -- lateness needs evidence against the breaker -------------------------------------------


def _probes(*refused_at: float, trial_at: float) -> tuple[list[Any], Any]:
    from pytest_resilience.observe.breaker import CallRecord

    calls = [CallRecord(i, at, at, None, "rejected") for i, at in enumerate(refused_at)]
    trial = CallRecord(len(calls), trial_at, trial_at, trial_at, "ok")
    return [*calls, trial], trial


@pytest.mark.parametrize(("refused", "trial_at", "passed", "measured", "words"), [
    ((0.01, 0.05, 0.09), 0.105, True, True, "first trial 105 ms after opening"),
    # the breaker refused a probe well after the deadline: it is late
    ((0.05, 0.09, 0.4), 0.45, False, True, "too late: a probe 400 ms after opening"),
    # the probes themselves stopped between 90 ms and 450 ms: cannot tell, not measured
    ((0.05, 0.09), 0.45, False, False, "no probe knocked between 90 ms and 450 ms"),
    ((), 0.02, False, True, "too early"),
])
def test_a_late_trial_is_blamed_on_the_breaker_only_with_evidence(
        refused: tuple[float, ...], trial_at: float, passed: bool, measured: bool,
        words: str) -> None:
    from pytest_resilience.verdicts.breaker import _half_open_property, _Plan

    plan = _Plan(3, 0.1, 10, 5, 0.2, 0.1)
    calls, trial = _probes(*refused, trial_at=trial_at)
    prop = _half_open_property(trial, 0.0, plan, calls)
    assert (prop.passed, prop.measured) == (passed, measured), prop
    assert words in f"{prop.observed} {prop.detail}", prop
