"""``python -m pytest_resilience.soak``: soak records from the command line.

``merge A.json B.json ... --out merged.json`` combines records of one run measured from
several workers or machines (histograms added, counters summed per sample);
``summary A.json`` prints a record's key figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pytest_resilience.soak.record import load, merge


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_resilience.soak",
                                     description=__doc__.splitlines()[0] if __doc__ else "")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("merge", help="merge records of one run from several sources")
    m.add_argument("records", nargs="+", type=Path)
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--name", default=None, help="name of the merged record")
    s = sub.add_parser("summary", help="print a record's key figures as JSON")
    s.add_argument("record", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "merge":
            merged = merge([load(p) for p in args.records], name=args.name)
            merged.write(args.out)
            print(json.dumps(merged.summary(), indent=1))
        else:
            print(json.dumps(load(args.record).summary(), indent=1))
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
