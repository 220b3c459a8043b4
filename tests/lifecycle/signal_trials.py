"""Trials: kill a pytest run that holds every kind of service, count what is left.

Each trial starts an inner pytest whose test uses ``pg_proxy`` (a local Postgres and
the built-in engine in its own process) and ``http_backend``, records the pids and
directories of what the plugin started, and then waits. The trial ends the run one way:

* ``sigkill``        SIGKILL to pytest
* ``sigterm``        SIGTERM to pytest
* ``sigint-group``   SIGINT to pytest's whole process group (a terminal's Ctrl-C)
* ``sigkill-xdist``  SIGKILL to the controller of ``-p xdist -n 2``
* ``sigkill-fork``   SIGKILL to pytest while a child the test forked is still alive

and counts the plugin's processes still running (zombies waiting for init are not
running) and its directories still present, 1 s and 10 s after the signal.

Run by hand (20 trials of each, the figures in the issue's closing note)::

    .venv/bin/python tests/lifecycle/signal_trials.py --trials 20

``tests/lifecycle/test_signals.py`` runs one trial of each in the suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

SCENARIOS = ("sigkill", "sigterm", "sigint-group", "sigkill-xdist", "sigkill-fork")

INNER = textwrap.dedent(
    """
    import json, os, threading, time
    from pathlib import Path

    import httpx

    from pytest_resilience.services.supervise import reaper_pid

    FORK = {fork!r}

    def test_holds_everything(pg_proxy, postgres_db, http_backend, toxiproxy):
        base = Path(postgres_db.server.unix_socket).parent
        postmaster = int((base / "data" / "postmaster.pid").read_text().split()[0])
        info = httpx.get(toxiproxy.url + "/x-resilience/info", timeout=10).json()
        with postgres_db.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        forked = None
        if FORK:
            forked = os.fork()
            if forked == 0:  # the child keeps every inherited fd open, then leaves
                threading.Event().wait(30)
                os._exit(0)
        record = {{
            "pids": {{"postmaster": postmaster, "engine": info["pid"],
                      "reaper": reaper_pid(),
                      "xdist worker": os.getpid() if os.environ.get("PYTEST_XDIST_WORKER")
                      else None}},
            "paths": [str(base)],
            "pytest": os.getpid(),
            "forked": forked,
        }}
        out = Path({info_dir!r}) / f"info-{{os.getpid()}}.json"
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.rename(out)
        threading.Event().wait(120)  # until the trial ends the run
    """
)


def alive(pid: int) -> bool:
    """Running: exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


@dataclass
class Outcome:
    scenario: str
    exit_code: int | None
    left: dict[float, list[str]] = field(default_factory=dict)  # seconds -> what is left
    output: str = ""


def _leftovers(records: list[dict[str, object]]) -> list[str]:
    left: list[str] = []
    for record in records:
        for name, pid in record["pids"].items():  # type: ignore[attr-defined]
            if isinstance(pid, int) and alive(pid):
                left.append(f"{name} {pid}")
        for path in record["paths"]:  # type: ignore[attr-defined]
            if Path(path).exists():
                left.append(f"dir {path}")
    return left


def _restore_sigint() -> None:
    # The suite may run with SIGINT ignored (nohup, '&'): the inner pytest must not.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_trial(scenario: str, python: str = sys.executable, checks: tuple[float, ...] = (1.0, 10.0),
              start_timeout: float = 90.0) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="resilience-trial-") as tmp:
        work = Path(tmp)
        (work / "test_trial.py").write_text(
            INNER.format(fork=scenario == "sigkill-fork", info_dir=str(work))
        )
        args = [python, "-m", "pytest", "-p", "pytest_resilience", "-q", "-p", "no:randomly",
                "-p", "no:cacheprovider", "-o", "asyncio_default_fixture_loop_scope=function",
                "test_trial.py"]
        if scenario == "sigkill-xdist":
            args[3:3] = ["-p", "xdist", "-n", "2"]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYTEST_XDIST", "PYTEST_ADDOPTS", "PYTEST_CURRENT"))}
        # Output to a file: a forked child or an xdist worker may hold it open for a while.
        log = work / "output.txt"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                args, cwd=work, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, preexec_fn=_restore_sigint,
            )
        records: list[dict[str, object]] = []
        try:
            deadline = time.monotonic() + start_timeout
            while not list(work.glob("info-*.json")):
                if proc.poll() is not None or time.monotonic() > deadline:
                    text = log.read_text(errors="replace")
                    raise RuntimeError(f"{scenario}: the inner test did not start:\n{text}")
                time.sleep(0.02)  # polling another process's file, bounded
            records = [json.loads(p.read_text()) for p in work.glob("info-*.json")]
            signalled = time.monotonic()
            if scenario == "sigint-group":
                os.killpg(proc.pid, signal.SIGINT)
            elif scenario == "sigterm":
                proc.terminate()
            else:
                proc.kill()
            proc.wait(60)
            outcome = Outcome(scenario, proc.returncode)
            for at in checks:
                while time.monotonic() - signalled < at:
                    time.sleep(0.01)  # measuring at a fixed time after the signal
                outcome.left[at] = _leftovers(records)
            outcome.output = log.read_text(errors="replace")
            return outcome
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
            for record in records:
                forked = record.get("forked")
                if isinstance(forked, int) and forked > 0:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(forked, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--scenario", action="append", choices=SCENARIOS)
    args = parser.parse_args(argv)
    failed = False
    print(f"{'scenario':<14} {'trials':>6} {'left@1s':>8} {'left@10s':>9}  exit codes")
    for scenario in args.scenario or SCENARIOS:
        at1 = at10 = 0
        codes: dict[int | None, int] = {}
        for _ in range(args.trials):
            outcome = run_trial(scenario)
            at1 += len(outcome.left[1.0])
            at10 += len(outcome.left[10.0])
            codes[outcome.exit_code] = codes.get(outcome.exit_code, 0) + 1
            if outcome.left[1.0]:
                print(f"  {scenario}: left at 1 s: {outcome.left[1.0]}")
        failed |= bool(at1 or at10)
        print(f"{scenario:<14} {args.trials:>6} {at1:>8} {at10:>9}  {codes}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
