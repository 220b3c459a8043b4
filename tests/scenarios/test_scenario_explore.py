"""``explore:`` in a scenario: Hypothesis searches fault timelines against the target and
judges ``expect`` each time; a bug that needs two faults together is reported as the
smallest schedule, with a replay file that fails the same way; a correct client passes."""

from __future__ import annotations

import re
import textwrap

import pytest

pytestmark = pytest.mark.timeout(300)

TARGETS = '''
import contextlib

import httpx


class Client:
    """Retries 5xx answers at most 3 times per call. The planted bug: after a timeout
    it stops counting (up to 20 attempts), so a later outage multiplies the requests."""

    def __init__(self, url, buggy):
        self.url, self.buggy, self.counting = url + "/x", buggy, True
        self.http = httpx.AsyncClient(timeout=0.1)

    async def fetch(self):
        limit = 3 if self.counting else 20
        for _ in range(limit):
            try:
                if (await self.http.get(self.url)).status_code < 500:
                    return "ok"
            except httpx.TimeoutException:
                if self.buggy:
                    self.counting = False  # BUG: the attempt budget is gone for good
            except httpx.TransportError:
                pass
        return "gave up"


@contextlib.asynccontextmanager
async def client(api_url, buggy=True):
    c = Client(api_url, buggy)
    try:
        yield c
    finally:
        await c.http.aclose()


async def fetch(context, buggy=True):  # buggy: a parameter of the setup (parametrize)
    return await context.fetch()
'''

SCENARIO = """
    name: retries stay within their budget under any outage
    seed: 3
    services:
      api:
        routes:
          GET /x: ['200 x*']
    target:
      setup: targets:client
      call: targets:fetch
    drive: {{calls: 4}}
    expect:
      attempts: {{service: api, at_most: 12}}
    explore:
      faults: [status, hang]
      max_faults: 3
      examples: {examples}
      max_time: 100s
      rate_runs: 2
"""


def _run(pytester: pytest.Pytester, yaml: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(targets=TARGETS)
    scenarios = pytester.path / "scenarios"
    scenarios.mkdir(exist_ok=True)
    (scenarios / "x.yaml").write_text(textwrap.dedent(yaml))
    return pytester.runpytest_subprocess("-p", "pytest_resilience", "-p", "no:randomly",
                                         *args, timeout=280)


def test_the_smallest_breaking_schedule_and_its_replay(pytester: pytest.Pytester) -> None:
    report = pytester.path / "out"
    result = _run(pytester, SCENARIO.format(examples=40), "scenarios",
                  f"--resilience-report={report}")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "the smallest schedule that breaks the claims has" in out, out
    faults = re.findall(r"^\s+- \{on: api, fault: (\w+)", out, re.M)
    assert 1 <= len(faults) <= 2, out
    assert set(faults) == {"hang", "status"}, out
    assert "requests reaching api" in out  # the verdict that failed, in the claim's words
    replays = list((report / "replay").glob("*.resilience.yaml"))
    assert len(replays) == 1, out
    again = pytester.runpytest_subprocess("-p", "pytest_resilience", "-p", "no:randomly",
                                          str(replays[0]), timeout=120)
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*FAILED attempts: requests reaching api*"])
    # the JSON record beside it, given to the scenario itself: no search, the same failure
    records = list((report / "replay").glob("*.explore.json"))
    assert len(records) == 1, out
    replayed = _run(pytester, SCENARIO.format(examples=40), "scenarios",
                    f"--resilience-replay={records[0]}")
    replayed.assert_outcomes(failed=1)
    text = replayed.stdout.str()
    assert "schedules explored" not in text, text
    assert "injection log" in text.lower(), text
    # the same record against the correct client: it does not reproduce, the test passes
    correct = SCENARIO.format(examples=40).replace(
        "    seed: 3", "    seed: 3\n    parametrize: {buggy: [false]}")
    _run(pytester, correct, "scenarios",
         f"--resilience-replay={records[0]}").assert_outcomes(passed=1)


def test_a_correct_client_survives_the_search(pytester: pytest.Pytester) -> None:
    yaml = SCENARIO.format(examples=15).replace("    seed: 3",
                                                "    seed: 3\n    parametrize: {buggy: [false]}")
    result = _run(pytester, yaml, "scenarios")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*PASSED explore: no fault schedule*15 schedules explored*"])


@pytest.mark.parametrize(("extra", "words"), [
    ("faults:\n  - {on: api, fault: reset}\n", "explore generates the fault timeline"),
    ("explore:\n  on: [apx]\n", "explore.on: no service 'apx'; did you mean 'api'?"),
])
def test_explore_misuse_is_one_clear_message(pytester: pytest.Pytester, extra: str,
                                             words: str) -> None:
    yaml = textwrap.dedent(SCENARIO.format(examples=5))
    if extra.startswith("explore"):
        yaml = yaml.split("explore:")[0] + extra
    else:
        yaml += extra
    result = _run(pytester, yaml, "scenarios")
    result.assert_outcomes(failed=1)
    assert words in result.stdout.str()
    assert "Traceback" not in result.stdout.str()
