"""Repeat fault-schedule campaigns and print the figures of issue 17 (not part of the
suite: about a minute per campaign pair).

    .venv/bin/python tests/explore/campaigns.py --campaigns 20

For each seed: a campaign against the planted bug (a client that drops its backoff after
a timeout, then hammers a 503 outage: it needs two faults) and one against the correct
client. Prints faults in each shrunk schedule, campaign times, and the counts."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_explore import make_run_once, strategy

from pytest_resilience.explore import explore
from pytest_resilience.services.http_backend import HttpBackend


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaigns", type=int, default=20)
    parser.add_argument("--examples", type=int, default=60)
    parser.add_argument("--max-time", type=float, default=110.0)
    args = parser.parse_args()
    if not 1 <= args.campaigns <= 200:
        raise SystemExit("--campaigns: 1..200")
    backend = HttpBackend(name="api", assert_all_used=False).start()
    backend.route("GET", "/x", "200 x*")
    sizes: list[int] = []
    times: list[float] = []
    false_alarms = 0
    try:
        for seed in range(1, args.campaigns + 1):
            started = time.monotonic()
            found = explore(make_run_once(backend, buggy=True), strategy(),
                            max_examples=args.examples, max_time=args.max_time, seed=seed,
                            rate_runs=3)
            times.append(time.monotonic() - started)
            size = len(found.schedule) if found.schedule is not None else -1
            sizes.append(size)
            clean = explore(make_run_once(backend, buggy=False), strategy(),
                            max_examples=args.examples, max_time=args.max_time, seed=seed)
            false_alarms += clean.found
            verdict = "FOUND " + clean.schedule.describe() if clean.schedule else "nothing"
            print(f"seed {seed:3}: buggy -> {size} fault(s) in {times[-1]:.1f} s "
                  f"({found.examples} examples, rate {found.reproduced}/{found.replayed}); "
                  f"correct -> {verdict}", flush=True)
    finally:
        backend.close()
    small = sum(1 for s in sizes if 0 < s <= 2)
    print(f"\nshrunk to <= 2 faults: {small} of {len(sizes)} campaigns; not found: "
          f"{sizes.count(-1)}; campaign time median {statistics.median(times):.1f} s, "
          f"max {max(times):.1f} s; correct client: {false_alarms} false alarms in "
          f"{len(sizes)} campaigns")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
