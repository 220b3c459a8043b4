"""The one report path of the plugin.

Every check produces a :class:`~pytest_resilience.verdicts.core.Verdict`; while a test
runs, verdicts are collected (``verdicts.core.collect``) and this package attaches them
to the test's report - JSON in ``user_properties`` (so they travel through
pytest-xdist and land in JUnit XML as ``<property name="resilience_verdict">``) and a
text section - then lists them in one terminal summary section (``resilience``) and
writes every verdict of the run to ``results.json`` (``--resilience-report=DIR``).
Nothing here parses rendered text: the summary and the record are built from the
verdicts' data.

Fixture modules keep only fixtures; they ask this package how a test's phases ended
(:func:`phase_failed`) instead of hooking ``pytest_runtest_makereport`` themselves.
"""

from __future__ import annotations

from pytest_resilience.report.state import (
    PROPERTY_NAME,
    phase_failed,
    phase_outcome,
    verdicts_of_report,
)

__all__ = ["PROPERTY_NAME", "phase_failed", "phase_outcome", "verdicts_of_report"]
