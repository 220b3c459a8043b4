"""report.html: one self-contained page (inline CSS and SVG plots, no external resource,
no JavaScript) written next to results.json, readable without the terminal log."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

INNER = '''
import contextlib, math, os, random, time
from pathlib import Path

import pybreaker
import pytest

from pytest_resilience import expect_backoff, expect_transitions, observe_pybreaker, track
from pytest_resilience.report.state import attach
from pytest_resilience.soak.record import SoakRecord, Stage, slug
from pytest_resilience.verdicts import backoff as models
from pytest_resilience.verdicts.core import Verdict

REPORT = Path(os.environ["HTML_TEST_REPORT_DIR"])


def _attempts(delays):
    dependency = track(lambda: None)
    dependency()
    for delay in delays:
        time.sleep(delay)
        dependency()
    return dependency.timeline


@pytest.mark.virtual_time
def test_backoff_fails():
    expect_backoff(_attempts([0.1, 0.1, 0.1]), models.exponential(0.1, 2), attempts=4)


def test_breaker_passes():
    breaker = pybreaker.CircuitBreaker(fail_max=3, reset_timeout=60)
    observer = observe_pybreaker(breaker)
    guarded = observer.backend(lambda: (_ for _ in ()).throw(ConnectionError("down")))
    for _ in range(4):
        with contextlib.suppress(Exception):
            observer.call(breaker.call, guarded)
    expect_transitions(observer, ["closed", "open"], opens_after=3)


def _soak(name, samples, leak):
    rng = random.Random(samples)
    record = SoakRecord(name=name, started=time.time(), interval=1.0, warmup=30.0,
                        source="inner", plan={"duration_s": samples, "rate": 50.0},
                        stages=[Stage(200.0, 260.0, "latency 200ms on postgres"),
                                Stage(400.0, None, "reset_peer on <postgres>")])
    calls = errors = 0
    for i in range(samples):
        faulty = 200 <= i < 260 or i >= 400
        base = 0.2 if faulty else 0.01
        for _ in range(5):
            record.histogram.record(base * (1 + rng.random()))
        calls += 50
        errors += 1 if faulty else 0
        record.add_sample({
            "t": float(i), "calls": calls, "errors": errors, "rate": 50.0 + rng.random(),
            "error_rate": 0.02 if faulty else 0.0, "p50_s": base, "p95_s": base * 1.5,
            "p99_s": base * 1.9, "fds": 40 + (i // 20 if leak else 0),
            "pg_sessions": 5, "tasks": 3, "threads": 4,
            "rss_bytes": 80 * 2**20 + i * 4096 if i % 50 else None,
        })
    record.totals = {"calls": calls, "errors": errors, "elapsed_s": float(samples)}
    file = Path("soak") / (slug(name) + ".json")
    record.write(REPORT / file)
    return record, str(file)


def test_soak_with_drift_and_faults(request, resilience_verdicts):
    record, file = _soak(request.node.nodeid, 600, leak=True)
    attach(request.node, "soak", file=file, summary=record.summary())
    attach(request.node, "fault-timeline", events=[
        [0.0, "applied faults[0] latency on postgres (latency=200)"],
        [2.5, "removed faults[0] latency on postgres"],
        [3.0, "applied faults[1] reset_peer on postgres"],
        [4.0, "healed faults[1] reset_peer on postgres (end)"],
    ])
    resilience_verdicts.add(Verdict(
            "drift", "open file descriptors stay flat after warm-up", passed=False,
            expected={"slope_max": 0.0}, observed={"slope": 0.05},
            headers=["series", "slope", ""], rows=[["fds", "+0.05/s", "<--"]], blame=[0],
            notes=["a <b>leak</b> of one descriptor every 20 s"],
            data={"series": "fds", "slope": 0.05, "intercept": 40.0,
                  "window": [30.0, 599.0]}, severity="warning"))
    Verdict("custom", "claims are escaped: <script>alert(1)</script>", passed=True).check()


def test_second_soak(request):
    record, file = _soak(request.node.nodeid, 120, leak=False)
    attach(request.node, "soak", file=file, summary=record.summary())
'''

#: plot kind -> the inner test whose section shows it (None: run level)
PLOTS = {"backoff": "test_backoff_fails", "breaker": "test_breaker_passes",
         "soak": "test_soak_with_drift_and_faults", "fault-timeline":
         "test_soak_with_drift_and_faults", "merged-latency": None}


def _report(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    out = pytester.path / "out"
    monkeypatch.setenv("HTML_TEST_REPORT_DIR", str(out))
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess(
        "-p", "pytest_resilience", f"--resilience-report={out}", "-p", "no:randomly",
        timeout=120)
    result.assert_outcomes(passed=3, failed=1)
    assert "report.html not written" not in result.stdout.str()
    return out


def _sections(page: str) -> dict[str, str]:
    """Each test's section of the page by test name."""
    out = {}
    for m in re.finditer(r'<section class="test[^"]*" id="[^"]*">(.*?)</section>', page,
                         re.S):
        name = re.search(r"<h2>([^<]*)</h2>", m.group(1))
        assert name
        out[name.group(1).split("::")[-1]] = m.group(1)
    return out


def test_report_html_shows_every_verdict_and_plot(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _report(pytester, monkeypatch)
    page = (out / "report.html").read_text(encoding="utf-8")
    results = json.loads((out / "results.json").read_text())
    # every verdict's claim (escaped as the page shows it), blamed rows highlighted
    for test in results["tests"]:
        for verdict in test["verdicts"]:
            claim = verdict["claim"].replace("<", "&lt;").replace(">", "&gt;")
            assert claim in page, verdict["claim"]
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a &lt;b&gt;leak&lt;/b&gt; of one descriptor" in page  # notes too
    assert page.count('<tr class="blame">') >= 3  # backoff: 2 rows, drift: 1
    # one plot of each kind, as inline SVG, in the right section
    sections = _sections(page)
    assert set(sections) == {"test_backoff_fails", "test_breaker_passes",
                             "test_soak_with_drift_and_faults", "test_second_soak"}
    for kind, test in PLOTS.items():
        where = page if test is None else sections[test]
        assert re.search(rf'<figure class="plot" data-plot="{kind}"><svg', where), kind
    assert len(re.findall(r'data-plot="soak"><svg', page)) == 2
    assert page.count("<svg") == 6  # backoff, breaker, timeline, 2 soak, merged
    assert "drift fit" in sections["test_soak_with_drift_and_faults"]  # the fitted line
    # the run header and the merged percentiles table
    assert f"<dd>{results['seed']}</dd>" in page
    assert "pytest exit status</dt><dd>1 (not ok)" in page
    assert re.search(r"<td>merged</td><td>3600</td>", page)  # 600*5 + 120*5 calls
    # self-contained: nothing fetched, no script
    refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', page)
    assert all(r.startswith("#") for r in refs), refs
    assert not re.search(r"url\(\s*['\"]?(?!#)", page)
    assert "@import" not in page


def test_without_matplotlib_the_page_keeps_the_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_resilience.report.html import MATPLOTLIB_NOTE, write_html

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    results: dict[str, Any] = {
        "seed": 7, "started": 0.0, "duration_s": 1.0, "exit_status": 1,
        "summary": {"tests": 1, "verdicts": 1, "passed": 0, "failed": 1},
        "tests": [{"nodeid": "t.py::test_x", "outcome": "failed", "duration_s": 0.1,
                   "attachments": [{"kind": "fault-timeline", "events": [[0.5, "applied x"]]}],
                   "verdicts": [{
                       "kind": "backoff", "claim": "waits <longer>", "passed": False,
                       "status": "FAILED", "table": [["attempt", "delay"], ["2", "1 ms"]],
                       "blame": [0], "expected": {"bands": [[0.1, 0.2]]},
                       "observed": {"delays": [0.001]}}]}],
    }
    page = write_html(results, tmp_path).read_text()
    assert MATPLOTLIB_NOTE.replace("'", "&#x27;") in page
    assert "<svg" not in page
    assert "waits &lt;longer&gt;" in page
    assert '<tr class="blame"><td>2</td><td>1 ms</td></tr>' in page
    assert "applied x" in page


def _page_requests(netlog: Path) -> set[str]:
    """URLs other than file:/data: that a file:// page requested (chromium's NetLog)."""
    text = netlog.read_text()
    try:
        events = json.loads(text)["events"]
    except ValueError:  # cut short: a NetLog is valid JSON once its list is closed
        events = json.loads(text.rstrip().rstrip(",") + "]}")["events"]
    urls = set()
    for event in events:
        params = event.get("params") or {}
        url, key = params.get("url"), str(params.get("network_isolation_key", ""))
        if isinstance(url, str) and key.startswith("file://") \
                and not url.startswith(("file:", "data:")):
            urls.add(url)
    return urls


def test_chromium_renders_the_page_without_failed_loads(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian package chromium not installed; .ci/run installs it")
    page = _report(pytester, monkeypatch) / "report.html"
    shot, netlog = tmp_path / "report.png", tmp_path / "netlog.json"
    try:
        done = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}",
             "--no-first-run", "--disable-extensions", f"--screenshot={shot}",
             f"--log-net-log={netlog}",
             "--window-size=1200,3000", page.as_uri()],
            capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"chromium did not finish its screenshot in 60 s: {exc}")
    log = done.stdout + done.stderr
    assert shot.exists(), (done.returncode, log[-3000:])
    assert shot.stat().st_size > 20_000, (done.returncode, log[-3000:])
    for failure in ("Failed to load resource", "net::ERR"):
        assert failure not in log, log[-3000:]
    # headless chromium does not always log a failed load: its network log shows every
    # request the page made (the browser's own background requests are not the page's)
    assert _page_requests(netlog) == set()

    # the pixels, read in a fresh interpreter: numpy cannot be imported twice in one
    # process, and in-process pytester runs elsewhere may have unloaded it from this one
    code = """if True:
        import json, sys
        from matplotlib.image import imread
        rgb = imread(sys.argv[1])[..., :3]
        flat = rgb.reshape(-1, 3)
        sample = {tuple(p) for p in (flat[::97] * 16).astype(int).tolist()}
        print(json.dumps({"shape": list(rgb.shape[:2]), "colours": len(sample),
                          "spread": float(flat.std(axis=0).max())}))
    """
    measured = subprocess.run([sys.executable, "-c", code, str(shot)], capture_output=True,
                              text=True, timeout=60, check=True)
    pixels = json.loads(measured.stdout)
    assert pixels["shape"] == [3000, 1200], pixels
    assert pixels["spread"] > 0.05, f"the screenshot is a single colour: {pixels}"
    # the plots were drawn: pixels of the plots' own colours, not only text and tables
    assert pixels["colours"] > 40, pixels
