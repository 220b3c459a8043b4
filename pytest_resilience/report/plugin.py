"""The report hooks - the only ``pytest_runtest_makereport`` and
``pytest_terminal_summary`` of the plugin (see the package docstring)."""

from __future__ import annotations

import json
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_resilience.config import settings_key
from pytest_resilience.report.state import (
    ATTACHMENT_PROPERTY,
    PROPERTY_NAME,
    attachments_of_report,
    log_for,
    outcomes_key,
    verdicts_of_report,
)
from pytest_resilience.verdicts.core import Verdict, pop_sink, push_sink

if TYPE_CHECKING:
    from pytest_resilience.report.record import RunRecord

#: Checks that run around every test when switched on: their passing verdicts get no
#: report section and are counted, not listed, in the terminal summary.
AMBIENT = frozenset({"leaks", "clock-sources"})
#: Report-section titles by kind (others: "resilience verdicts (<phase>)").
SECTIONS = {"leaks": "resilience: leaks", "clock-sources": "virtual clock"}

#: Sections other parts of the plugin add (``item.add_report_section(when, key, ...)``
#: titles them ``Captured <key> <when>``) that a failure's message may repeat in full:
#: a failed scenario's message ends with its fault timeline.
OWN_SECTIONS = frozenset(f"Captured fault timeline {when}"
                         for when in ("setup", "call", "teardown"))

record_key: pytest.StashKey[RunRecord] = pytest.StashKey()


def _quiet(verdict: Verdict) -> bool:
    """A leak check that found nothing worth a section of its own (the virtual clock's
    section is always shown: elapsed virtual time and the clocks read)."""
    return (
        verdict.kind == "leaks" and verdict.passed
        and not (verdict.data.get("tolerated") if isinstance(verdict.data, dict) else None)
    )


def _lines(text: str) -> list[str]:
    """*text*'s lines as a failure shows them, without the ``E`` prefix pytest puts
    before an exception's message and without surrounding blanks."""
    return [line[1:].strip() if line[:2] in ("E", "E ") else line.strip()
            for line in text.splitlines()]


def _quotes(failure: list[str], text: str) -> bool:
    """Whether the failure's lines (:func:`_lines`) hold *text* whole: its first line
    at the end of one line (after the exception's name), the others as they follow."""
    first, *rest = [line.strip() for line in text.splitlines()] or [""]
    if not first:
        return False
    for i, line in enumerate(failure):
        if line.endswith(first) and failure[i + 1:i + 1 + len(rest)] == rest:
            return True
    return False


@pytest.hookimpl(trylast=True)  # after the plugin's own configure put the settings
def pytest_configure(config: pytest.Config) -> None:
    from pytest_resilience.report.record import RunRecord  # not needed before: lazily

    record = RunRecord(seed=config.stash[settings_key].seed, started=time.time())
    config.stash[record_key] = record
    config.pluginmanager.register(Reporter(config, record), "resilience-report")


class Reporter:
    """The report hooks of one pytest run (registered per config, so state lives
    with the run, not in module globals)."""

    def __init__(self, config: pytest.Config, record: RunRecord) -> None:
        self.config = config
        self.record = record

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
        """Collect the verdicts checked during the whole protocol of ``item``."""
        log = log_for(item)
        push_sink(log.verdicts)
        try:
            return (yield)
        finally:
            pop_sink(log.verdicts)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """Put the verdicts checked since the last phase on this phase's report, and
        note how the phase ended (fixtures read it: ``report.phase_failed``)."""
        log = log_for(item)
        new = log.verdicts[log.reported:]
        properties = [(PROPERTY_NAME, json.dumps(v.as_dict())) for v in new]
        properties += [(ATTACHMENT_PROPERTY, json.dumps(a))
                       for a in log.attachments[log.attached:]]
        item.user_properties.extend(properties)
        report = yield
        log.reported += len(new)
        log.attached = len(log.attachments)
        for prop in properties:
            if prop not in report.user_properties:
                report.user_properties.append(prop)
        outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
        item.stash.setdefault(outcomes_key, {})[call.when] = outcome
        shown = [v for v in new if not _quiet(v)]
        if report.failed and shown:
            # the failure already prints them (a VerdictFailed's message, a scenario's
            # pytest.fail text): a section would show the same table a second time
            failure = _lines(report.longreprtext)
            shown = [v for v in shown if not _quotes(failure, v.text())]
            report.sections = [
                (title, content) for title, content in report.sections
                if title not in OWN_SECTIONS or not _quotes(failure, content)
            ]
        plain = [v for v in shown if v.kind not in SECTIONS]
        if plain:
            report.sections.append(
                (f"resilience verdicts ({call.when})", "\n\n".join(v.text() for v in plain))
            )
        for verdict in shown:
            if verdict.kind in SECTIONS:
                report.sections.append((SECTIONS[verdict.kind], verdict.text()))
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Gather every test's verdicts (on the xdist controller too: reports carry
        them in ``user_properties``)."""
        self.record.add_report(
            report.nodeid, report.when, report.outcome, getattr(report, "duration", 0.0),
            verdicts_of_report(report), xfail=hasattr(report, "wasxfail"),
            attachments=attachments_of_report(report),
        )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """One line per verdict (passing ambient checks counted in one line)."""
        lines, quiet = self.record.summary_lines(AMBIENT)
        if not lines and not quiet:
            return
        terminalreporter.write_sep("=", "resilience")
        for line in lines:
            terminalreporter.write_line(line)
        if quiet:
            counted = ", ".join(f"{n} {kind}" for kind, n in sorted(quiet.items()))
            terminalreporter.write_line(f"passed without findings: {counted} checks")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if getattr(self.config, "workerinput", None) is not None:
            return  # xdist workers: the controller writes the record
        directory = self.config.stash[settings_key].report
        if directory is None:
            return
        results = self.record.write(directory / "results.json", int(session.exitstatus))
        try:
            from pytest_resilience.report.html import write_html  # matplotlib: lazily

            write_html(results, directory)
        except Exception as exc:  # the JSON record is written: say why the page is not
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            text = f"resilience: report.html not written: {type(exc).__name__}: {exc}"
            if reporter is not None:
                reporter.write_line(text, red=True)
            else:
                import warnings

                warnings.warn(text, stacklevel=1)
