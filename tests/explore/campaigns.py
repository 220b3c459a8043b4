"""Repeat fault-schedule campaigns and print the figures of issue 17 (not part of the
suite: a minute or so per campaign).

    .venv/bin/python tests/explore/campaigns.py --campaigns 20 --save /tmp/records
    .venv/bin/python tests/explore/campaigns.py --mode replay --records /tmp/records
    .venv/bin/python tests/explore/campaigns.py --mode flaky --campaigns 10

``bug`` (the default): for each seed, a campaign against the planted bug (a client that
drops its backoff after a timeout, then hammers a 503 outage: it needs two faults) and
one against the correct client; prints the faults of each shrunk schedule (and of the
schedule Hypothesis left before the deterministic pass), campaign times and the counts;
``--save DIR`` writes each campaign's JSON record. ``replay``: replays every record in
``--records DIR`` 10 times with its seed and counts byte-identical injection logs.
``flaky``: the bug strikes in half of the runs; prints the shrunk size and the reported
reproduction rate against the true 50 %."""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_explore import make_run_once, strategy

from pytest_resilience.explore import explore, replay
from pytest_resilience.services.http_backend import HttpBackend


def bug(backend: HttpBackend, args: argparse.Namespace) -> None:
    sizes: list[int] = []
    times: list[float] = []
    false_alarms = 0
    for seed in range(args.first, args.first + args.campaigns):
        started = time.monotonic()
        found = explore(make_run_once(backend, buggy=True), strategy(),
                        max_examples=args.examples, max_time=args.max_time, seed=seed,
                        rate_runs=3)
        times.append(time.monotonic() - started)
        if args.save is not None:
            args.save.mkdir(parents=True, exist_ok=True)
            found.save(args.save / f"seed{seed}.json")
        size = len(found.schedule) if found.schedule is not None else -1
        searched = len(found.searched) if found.searched is not None else -1
        sizes.append(size)
        clean = explore(make_run_once(backend, buggy=False), strategy(),
                        max_examples=args.examples, max_time=args.max_time, seed=seed)
        false_alarms += clean.found
        verdict = "FOUND " + clean.schedule.describe() if clean.schedule else "nothing"
        print(f"seed {seed:3}: buggy -> {size} fault(s) (search left {searched}, pass "
              f"{found.shrink_runs} runs) in {times[-1]:.1f} s ({found.examples} examples, "
              f"rate {found.reproduced}/{found.replayed}); correct -> {verdict} in "
              f"{clean.elapsed:.1f} s", flush=True)
    small = sum(1 for s in sizes if 0 < s <= 2)
    print(f"\nshrunk to <= 2 faults: {small} of {len(sizes)} campaigns; not found: "
          f"{sizes.count(-1)}; campaign time median {statistics.median(times):.1f} s, "
          f"max {max(times):.1f} s; correct client: {false_alarms} false alarms in "
          f"{len(sizes)} campaigns")


def replays(backend: HttpBackend, args: argparse.Namespace) -> None:
    if args.records is None:
        raise SystemExit("--mode replay needs --records DIR (written by --save DIR)")
    identical = total = 0
    for path in sorted(args.records.glob("*.json")):
        started = time.monotonic()
        # a 0.3 s client timeout: a loaded machine does not turn an answer into a timeout
        again = replay(make_run_once(backend, buggy=True, timeout=0.3), path, runs=10)
        total += 1
        identical += again.identical and again.reproduced == 10
        print(f"{path.name}: seed {again.seed}, {len(again)} fault(s): failed "
              f"{again.reproduced} of 10, {len({log.to_json() for log in again.logs})} "
              f"distinct injection log(s), {time.monotonic() - started:.1f} s", flush=True)
    print(f"\nbyte-identical injection logs in 10 of 10 replays: {identical} of {total} "
          "records")


def flaky(backend: HttpBackend, args: argparse.Namespace) -> None:
    errors: list[float] = []
    sizes: list[int] = []
    for seed in range(args.first, args.first + args.campaigns):
        started = time.monotonic()
        run_once = make_run_once(backend, buggy=True, flaky=0.5, rng=random.Random(seed))
        found = explore(run_once, strategy(), max_examples=args.examples,
                        max_time=args.max_time, seed=seed, replays=(1, 3),
                        rate_runs=args.rate_runs)
        size = len(found.schedule) if found.schedule is not None else -1
        sizes.append(size)
        if found.found:
            errors.append(found.rate - 0.5)
        print(f"seed {seed:3}: {size} fault(s), reported rate {found.reproduced}/"
              f"{found.replayed} = {found.rate:.0%} (true 50 %) in "
              f"{time.monotonic() - started:.1f} s", flush=True)
    within = sum(1 for e in errors if abs(e) <= 0.15)
    print(f"\nflaky bug (50 %): shrunk to <= 2 faults {sum(1 for s in sizes if 0 < s <= 2)} "
          f"of {len(sizes)}; reported rate within 15 points of 50 %: {within} of "
          f"{len(errors)}; worst error {max(map(abs, errors), default=0):.0%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mode", choices=["bug", "replay", "flaky"], default="bug")
    parser.add_argument("--campaigns", type=int, default=20)
    parser.add_argument("--first", type=int, default=1, help="the first seed")
    parser.add_argument("--examples", type=int, default=60)
    parser.add_argument("--max-time", type=float, default=110.0)
    parser.add_argument("--rate-runs", type=int, default=60)
    parser.add_argument("--save", type=Path, help="bug: write each JSON record here")
    parser.add_argument("--records", type=Path, help="replay: the records to replay")
    args = parser.parse_args()
    if not 1 <= args.campaigns <= 200:
        raise SystemExit("--campaigns: 1..200")
    backend = HttpBackend(name="api", assert_all_used=False).start()
    backend.route("GET", "/x", "200 x*")
    try:
        {"bug": bug, "replay": replays, "flaky": flaky}[args.mode](backend, args)
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
